"""Trains and evaluates a Flax CNN on MNIST: `python main.py --config=configs/default.py`.

Flags:
  --config: a config file with `get_config()`; fields overridable as `--config.FIELD=VALUE`.
  --workdir: checkpoints, metrics.jsonl and config.json (default: workdirs/<config name>).
  --distributed: join a multi-process run with `jax.distributed.initialize()` first. Its settings
    --coordinator_address, --num_processes and --process_id are detected on TPU pods, Slurm and
    Open MPI; elsewhere give all three (each of them implies --distributed).
  --initialization_timeout: seconds to wait for every process to connect (default 300).

Exit codes: 0 when training is complete; 1 for bad input or a diverged run (one line on stderr);
143 or 130 after SIGTERM or Ctrl-C stopped the run with a checkpoint saved (rerun to resume).
"""

import os
import re
import socket
import sys
import time

PROG = "main.py"
if __name__ == "__main__":
  # Ctrl-C before the loop installs its own handler (which saves a checkpoint first): one line, exit 130.
  # Nothing of value is unwritten then (files are replaced whole, the lock dies with the process).
  from mnist_flax.tools import startup

  startup.exit_on_interrupt(PROG)

import jax
from absl import flags
from ml_collections import config_flags

from mnist_flax import train
from mnist_flax.errors import UsageError
from mnist_flax.run import checkpoints, stopping
from mnist_flax.tools import cli

HERE = os.path.dirname(os.path.abspath(__file__))


def _fail(message: str) -> None:
  cli.fail(PROG, message)


try:  # Defining the flag already applies --config.x overrides from sys.argv to the default config.
  _CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(HERE, "configs", "default.py"), "Run config file.", lock_config=True
  )
except Exception as e:  # noqa: BLE001 - a bad override of the default config.
  _fail(cli.one_line(e))
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (default: workdirs/<config name>).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-process run (jax.distributed.initialize).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --distributed).")
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Processes in the run (implies --distributed).", lower_bound=1
)
_INIT_TIMEOUT = flags.DEFINE_integer(
  "initialization_timeout", 300, "Seconds to wait for every process to connect (with --distributed).", lower_bound=1
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "This process's index from 0 (implies --distributed).", lower_bound=0
)


def default_workdir() -> str:
  """workdirs/<config file name without .py>, beside main.py (git-ignored)."""
  name = os.path.splitext(os.path.basename(cli.config_file(flags.FLAGS["config"])))[0]
  return os.path.join(HERE, "workdirs", name)


def _wait_for_coordinator(address: str, timeout: float) -> None:
  """Waits until process 0 listens at `address` (JAX aborts the process if it never does)."""
  host, port = address.rsplit(":", 1)
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
      return
    except OSError as e:
      if time.monotonic() > deadline:
        _fail(
          f"--coordinator_address={address}: nothing answered for {timeout:g} s ({e.strerror or e}); "
          "start process 0 there, or correct the address"
        )
      time.sleep(0.5)


def initialize_distributed(**settings) -> None:
  """`jax.distributed.initialize(**settings)`; any setting left None is detected by JAX (or is an error)."""
  given = {k: v for k, v in settings.items() if v is not None}
  if given.get("process_id", 0) >= given.get("num_processes", sys.maxsize):
    _fail(f"--process_id={given['process_id']} must be below --num_processes={given['num_processes']}")
  address = given.get("coordinator_address")
  if address is not None and not re.fullmatch(r"\[?[\w.:-]+\]?:\d{1,5}", address):
    _fail(f"--coordinator_address={address} is not host:port (e.g. localhost:12355, the address of process 0)")
  if address is not None and given.get("process_id", 0) > 0:
    _wait_for_coordinator(address, _INIT_TIMEOUT.value)
  try:
    jax.distributed.initialize(**given, initialization_timeout=_INIT_TIMEOUT.value)
  except (ValueError, RuntimeError, TypeError) as e:
    missing = ", ".join(f"--{k}" for k in settings if k not in given)
    hint = f" (JAX could not detect {missing}: give them on the command line)" if missing else ""
    _fail(f"--distributed: jax.distributed.initialize() failed: {cli.one_line(e)}{hint}")


def main(argv: list[str]) -> None:
  """Entry point after flag parsing."""
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  config = cli.load_config(_CONFIG)
  if _WORKDIR.value == "":
    _fail("--workdir is empty; give a folder, or leave the flag out for workdirs/<config name>")
  distributed = {
    "coordinator_address": _COORDINATOR.value,
    "num_processes": _NUM_PROCESSES.value,
    "process_id": _PROCESS_ID.value,
  }
  if _DISTRIBUTED.value or any(v is not None for v in distributed.values()):
    initialize_distributed(**distributed)
  workdir = _WORKDIR.value or default_workdir()
  try:
    train.train_and_evaluate(config, workdir)
  except stopping.Interrupted as e:  # A requested stop, not an error: the shell's code for the signal.
    print(f"{PROG}: {e}", file=sys.stderr)
    sys.exit(128 + e.signum)
  except stopping.Diverged as e:
    raise UsageError(str(e)) from e
  except checkpoints.WriteError as e:
    # Orbax's background save threads can hold a process for minutes after a failed write;
    # everything of value is already on disk (records are synced, the lock dies with the process).
    print(f"{PROG}: error: {cli.one_line(e)}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


if __name__ == "__main__":
  cli.run(main, PROG)
