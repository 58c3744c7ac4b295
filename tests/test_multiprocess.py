"""main.py over several processes (jax.distributed, CPU collectives over gloo) against one process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mnist_flax.run import locking
from mnist_flax.tools import trained_model
from tests.conftest import EIGHT_DEVICES, ROOT, assert_one_line_error, run_main, tiny_flags

EPOCHS = 6
PROCESSES, DEVICES_EACH = 2, 4


def device_env(count: int) -> dict[str, str]:
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start_processes(args: list[str], logs) -> list[subprocess.Popen]:
  """Starts PROCESSES main.py processes of DEVICES_EACH CPU devices each, output to files in `logs`."""
  address = f"--coordinator_address=localhost:{free_port()}"
  procs = []
  for i in range(PROCESSES):
    flags = [address, f"--num_processes={PROCESSES}", f"--process_id={i}"]
    out, err = open(logs / f"{i}.out", "w"), open(logs / f"{i}.err", "w")  # noqa: SIM115 - closed by the child's end.
    procs.append(
      subprocess.Popen(
        [sys.executable, "main.py", *args, *flags], cwd=ROOT, env=device_env(DEVICES_EACH), stdout=out, stderr=err
      )
    )
  return procs


def wait(procs: list[subprocess.Popen], timeout: float = 300) -> list[int]:
  deadline = time.time() + timeout
  for p in procs:
    p.wait(timeout=max(1, deadline - time.time()))
  return [p.returncode for p in procs]


def records(workdir) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def run_args(mock_data_dir, workdir) -> list[str]:
  flags = tiny_flags(num_epochs=EPOCHS, checkpoint_every_steps=3, keep_checkpoints=1000, data_dir=mock_data_dir)
  return [*flags, f"--workdir={workdir}"]


@pytest.fixture(scope="module")
def single(mock_data_dir, tmp_path_factory):
  """The run uninterrupted in one process with 8 devices: its workdir."""
  workdir = tmp_path_factory.mktemp("single") / "run"
  result = run_main(*run_args(mock_data_dir, workdir), env=EIGHT_DEVICES)  # One process, as many devices as the two.
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture(scope="module")
def stopped(mock_data_dir, tmp_path_factory):
  """The run in 2 processes of 4 devices, SIGTERM to process 1 after the first epoch: (workdir, logs, codes)."""
  logs = tmp_path_factory.mktemp("logs")
  workdir = logs / "run"
  procs = start_processes(run_args(mock_data_dir, workdir), logs)
  deadline = time.time() + 300
  while not (workdir / "metrics.jsonl").exists() and time.time() < deadline and procs[1].poll() is None:
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)
  return workdir, logs, wait(procs)


def test_sigterm_to_one_process_stops_both_with_a_checkpoint(stopped):
  workdir, logs, codes = stopped
  assert codes == [128 + signal.SIGTERM] * PROCESSES, [(logs / f"{i}.err").read_text()[-2000:] for i in range(2)]
  last_lines = {(logs / f"{i}.err").read_text().strip().splitlines()[-1] for i in range(PROCESSES)}
  assert len(last_lines) == 1, last_lines  # Both stopped at the same step.
  step = int(last_lines.pop().split("stopped at step ")[1].split()[0])
  assert str(step) in os.listdir(workdir / "checkpoints")
  assert 0 < step < EPOCHS * 10


def test_process_0_alone_writes_the_records(stopped):
  workdir, logs, _ = stopped
  epochs = [r["epoch"] for r in records(workdir)]
  assert epochs == list(range(1, len(epochs) + 1)) and epochs
  assert "epoch 1/" in (logs / "0.out").read_text()
  assert "epoch 1/" not in (logs / "1.out").read_text() + (logs / "1.err").read_text()


def test_the_first_chunk_gives_the_same_parameters_as_one_process(stopped, single):
  several, one = (
    trained_model.load_checkpoint(str(stopped[0]), step=3),
    trained_model.load_checkpoint(str(single), step=3),
  )
  for a, b in zip(jax.tree.leaves(several.state.params), jax.tree.leaves(one.state.params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_the_checkpoint_resumes_on_one_device_and_ends_as_the_uninterrupted_run(mock_data_dir, stopped, single):
  workdir = stopped[0]
  result = run_main(*run_args(mock_data_dir, workdir), env={"XLA_FLAGS": ""})
  assert result.returncode == 0, result.stderr[-3000:]
  resumed, reference = records(workdir), records(single)
  assert [r["epoch"] for r in resumed] == list(range(1, EPOCHS + 1))
  for a, b in zip(resumed, reference, strict=True):
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "learning_rate"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-4, err_msg=f"epoch {a['epoch']} {key}")


def test_an_nnx_network_trains_over_two_processes_as_in_one(mock_data_dir, tmp_path):
  flags = tiny_flags(nnx=True, num_epochs=1, checkpoint_every_steps=3, keep_checkpoints=1000, data_dir=mock_data_dir)
  one = run_main(*flags, f"--workdir={tmp_path / 'one'}", env=EIGHT_DEVICES)
  assert one.returncode == 0, one.stderr[-3000:]
  procs = start_processes([*flags, f"--workdir={tmp_path / 'two'}"], tmp_path)
  assert wait(procs) == [0] * PROCESSES, [(tmp_path / f"{i}.err").read_text()[-2000:] for i in range(PROCESSES)]
  several, single = (trained_model.load_checkpoint(str(tmp_path / name), step=3) for name in ("two", "one"))
  assert "linear1" in several.state.params
  for a, b in zip(jax.tree.leaves(several.state), jax.tree.leaves(single.state), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_process_that_cannot_start_stops_the_others(mock_data_dir, tmp_path):
  workdir = tmp_path / "run"
  with locking.workdir_lock(str(workdir)):  # Held by this test: process 0 is refused.
    codes = wait(start_processes(run_args(mock_data_dir, workdir), tmp_path), timeout=120)
  assert codes == [1, 1]
  stderr = [(tmp_path / f"{i}.err").read_text() for i in range(PROCESSES)]
  assert "Traceback" not in "".join(stderr)
  assert stderr[0].strip().splitlines()[-1].endswith("; wait for that run to end or use another --workdir")
  assert stderr[1].strip().splitlines()[-1] == "main.py: error: process 0 could not start (its output says why)"
  assert not (workdir / "checkpoints").exists()


@pytest.mark.parametrize(
  "args, message",
  [
    (["--num_processes=2", "--process_id=2"], "--process_id=2 must be below --num_processes=2"),
    (["--coordinator_address=nonsense", "--num_processes=1", "--process_id=0"], "is not host:port"),
    (
      [f"--coordinator_address=localhost:{free_port()}", "--num_processes=2", "--process_id=1"],
      "nothing answered for 2 s (Connection refused); start process 0 there",
    ),
    (["--num_processes=2"], "(JAX could not detect --coordinator_address, --process_id: give them"),
  ],
  ids=["process id too large", "address without port", "no process 0", "nothing to detect"],
)
def test_bad_distributed_settings_are_one_line(args, message, tmp_path):
  result = run_main(*args, "--initialization_timeout=2", f"--workdir={tmp_path / 'run'}")
  assert_one_line_error(result, "main.py", message)
  assert not (tmp_path / "run").exists()
