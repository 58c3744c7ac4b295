"""Run configs: one `get_config()` file per recipe."""
