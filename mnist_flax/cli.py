"""What every command shares: flag parsing, one-line errors, quiet library logs and the --workdir flags."""

import logging as std_logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

import ml_collections
from absl import app, flags, logging

from mnist_flax import startup
from mnist_flax.errors import UsageError


def one_line(e: BaseException) -> str:
  """An exception as one line of text."""
  while isinstance(e, AttributeError) and e.args and isinstance(e.args[0], KeyError):
    e = e.args[0]  # ml_collections wraps its KeyError for an unknown field in an AttributeError.
  if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str):  # "'name'\nDid you mean ...?"
    name, _, hint = e.args[0].partition("\n")
    hint = hint.strip() or "the config file lists the valid fields"
    return f"unknown config field {name.strip(chr(39))!r}; {hint}"
  if isinstance(e, AttributeError) and "get_config" in str(e):
    return "the config file has no get_config() function returning an ml_collections.ConfigDict"
  return " ".join(str(e).split()) or type(e).__name__


def config_file(flag) -> str:
  """A config-file flag's file, without the optional `:argument` that ml_collections passes to get_config."""
  return flag.config_filename.split(":")[0]


def load_config(holder) -> ml_collections.ConfigDict:
  """The config of a `config_flags.DEFINE_config_file` flag, its `--config.x` overrides applied.

  Raises:
    UsageError: the file is missing, broken, or an override is bad (ml_collections applies them lazily).
  """
  path = config_file(flags.FLAGS[holder.name])
  if not os.path.isfile(path):
    raise UsageError(f"config file {path} does not exist")
  try:
    return holder.value
  except Exception as e:  # noqa: BLE001 - a broken config file or a bad override.
    raise UsageError(f"cannot load config {path}: {one_line(e)}") from e


def fail(prog: str, message: str) -> NoReturn:
  """Ends the process with `PROG: error: MESSAGE` on stderr and exit code 1."""
  sys.exit(f"{prog}: error: {message}")


def _keep(record: std_logging.LogRecord) -> bool:
  """Orbax's warnings, not its per-save INFO lines nor the tracebacks of its background threads.

  A failed save surfaces again in the loop, which reports it in one line.
  """
  if "/orbax/" not in record.pathname.replace(os.sep, "/"):
    return True
  return record.levelno >= std_logging.WARNING and not record.exc_info


def quiet_library_logs() -> None:
  """Keeps orbax's per-save INFO lines and background tracebacks out of the log; its warnings still show."""
  logging.get_absl_handler().addFilter(_keep)
  # jax reports at INFO each accelerator plugin it could not load (libtpu on a CPU machine).
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
  std_logging.getLogger("jax._src.compilation_cache").setLevel(std_logging.WARNING)  # "Resetting cache at ..."


def run(main: Callable[[list[str]], None], prog: str) -> None:
  """Runs `main(argv)` under absl: flag errors and `UsageError`s end in one line and exit code 1."""

  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - every bad flag ends the same way.
      fail(prog, one_line(e))

  def guarded(argv: list[str]) -> None:
    quiet_library_logs()
    try:
      main(argv)
    except UsageError as e:
      fail(prog, one_line(e))
    except KeyboardInterrupt:  # Ctrl-C: outputs are written whole or not at all, so one line is enough.
      startup.interrupted(prog)

  app.run(guarded, flags_parser=parse)


def define_checkpoint_flags() -> None:
  """--workdir (required) and --step, for the commands that read a trained run."""
  flags.DEFINE_string("workdir", None, "A run folder written by main.py.", required=True)
  flags.DEFINE_integer("step", None, "The checkpoint step to use (default: the latest).")


def define_data_flags() -> None:
  """--data_dir and --manual_dir, overriding the run's own config.json for reading MNIST."""
  flags.DEFINE_string("data_dir", None, "tfds data dir (default: the run's config.data_dir).")
  flags.DEFINE_string("manual_dir", None, "Folder with the four MNIST files (default: the run's config).")
