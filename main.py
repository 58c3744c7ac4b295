"""Trains and evaluates a Flax CNN on MNIST: `python main.py --config=configs/default.py`.

Flags:
  --config: a config file with `get_config()`; fields overridable as `--config.FIELD=VALUE`.
  --workdir: checkpoints, metrics.jsonl and config.json (default: workdirs/<config name>).
  --distributed: call `jax.distributed.initialize()` first (multi-host runs).
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mnist_flax import train
from mnist_flax.errors import UsageError

HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(HERE, "configs", "default.py"), "Run config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (default: workdirs/<config name>).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Initialise jax.distributed (multi-host).")


def _fail(message: str) -> None:
  sys.exit(f"main.py: error: {message}")


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags, turning any flag or config error into a one-line message and exit code 1."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, FileNotFoundError, ImportError, SyntaxError, ValueError, TypeError, AttributeError) as e:
    _fail(" ".join(str(e).split()) or type(e).__name__)


def default_workdir() -> str:
  """workdirs/<config file name without .py>, beside main.py (git-ignored)."""
  name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  return os.path.join(HERE, "workdirs", name)


def _quiet_library_logs() -> None:
  """Keeps orbax's per-save INFO lines out of the log; its warnings and errors still show."""
  import logging as std_logging

  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or "/orbax/" not in r.pathname.replace(os.sep, "/")
  )


def main(argv: list[str]) -> None:
  """Entry point after flag parsing."""
  _quiet_library_logs()
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  workdir = _WORKDIR.value or default_workdir()
  logging.info("workdir: %s", workdir)
  try:
    train.train_and_evaluate(_CONFIG.value, workdir)
  except (UsageError, train.Interrupted, train.Diverged) as e:
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
