"""What every command shares: flag parsing, one-line errors, quiet library logs and the --workdir flags."""

import logging as std_logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

import ml_collections
from absl import app, flags, logging

from mnist_flax.errors import UsageError, config_field_error, describe
from mnist_flax.tools import startup


def one_line(e: BaseException) -> str:
  """An exception as one line of text."""
  field = config_field_error(e)
  if field is not None:
    name, hint = field
    return f"unknown config field {name!r}; {hint or 'the config file lists the valid fields'}"
  if isinstance(e, AttributeError) and "get_config" in str(e):
    return "the config file has no get_config() function returning an ml_collections.ConfigDict"
  return describe(e, whole=True)


# Set to 1 to see the traceback of an error raised by a config file's own code, above its one line.
TRACEBACK_ENV = "MNIST_FLAX_TRACEBACK"


def config_file_error(e: BaseException, paths: Sequence[str]) -> str | None:
  """An error that a config file's own code raised, as `FILE: get_config() raised Type: message`.

  Follows `e`'s chain (ml_collections and absl wrap what a config file raises) to the exception
  whose traceback passes through one of `paths`; None if none does. With `MNIST_FLAX_TRACEBACK=1`
  set, that exception's traceback is printed first.
  """
  files = {os.path.abspath(p): p for p in paths}
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, SyntaxError) and e.filename and os.path.abspath(e.filename) in files:
      message = f"{files[os.path.abspath(e.filename)]}: {type(e).__name__}: {e.msg} (line {e.lineno})"
      return _with_traceback(e, message)
    frames = [f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) in files]
    if frames:
      outer, inner = frames[0], frames[-1]
      entry = "loading it" if outer.name == "<module>" else f"{outer.name}()"
      where = f"line {inner.lineno}" + ("" if inner.name in ("<module>", outer.name) else f", in {inner.name}")
      text = " ".join(str(e).split())
      message = f"{files[os.path.abspath(outer.filename)]}: {entry} raised {type(e).__name__}" + (
        f": {text}" if text else ""
      )
      return _with_traceback(e, f"{message} ({where})")
    e = e.__cause__ or e.__context__
  return None


def _with_traceback(e: BaseException, message: str) -> str:
  if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
    traceback.print_exception(e)
    return message
  return f"{message}; {TRACEBACK_ENV}=1 shows the traceback"


def config_paths(argv: Sequence[str], name: str = "config") -> list[str]:
  """The config files named by `--NAME=FILE[:arg]` or `--NAME FILE` in `argv`."""
  found = []
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      found.append(arg.split("=", 1)[1].split(":")[0])
    elif arg == f"--{name}" and i + 1 < len(argv):
      found.append(argv[i + 1].split(":")[0])
  return found


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
    config = flags.FLAGS[holder.name].value  # Not holder.value, which refuses None before it can be named.
  except Exception as e:  # noqa: BLE001 - a broken config file or a bad override.
    raise UsageError(config_file_error(e, [path]) or f"cannot load config {path}: {one_line(e)}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise UsageError(
      f"{path}: get_config() returned {'None' if config is None else type(config).__name__}, "
      "not an ml_collections.ConfigDict "
      "(start from the get_config() of configs/default.py)"
    )
  return config


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


def _not_the_none_warning(record: std_logging.LogRecord) -> bool:
  """ml_collections' warning that get_config() returned None: `load_config` stops with it in one line."""
  return not (record.pathname.endswith("config_flags.py") and "returned None" in record.getMessage())


def run(main: Callable[[list[str]], None], prog: str) -> None:
  """Runs `main(argv)` under absl: flag errors and `UsageError`s end in one line and exit code 1."""
  logging.get_absl_logger().addFilter(_not_the_none_warning)

  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - every bad flag ends the same way.
      fail(prog, config_file_error(e, config_paths(argv)) or one_line(e))

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
  flags.DEFINE_string("data_dir", None, "tfds data dir (default: the run's config.runtime.data_dir).")
  flags.DEFINE_string("manual_dir", None, "Folder with the four MNIST files (default: the run's config).")
