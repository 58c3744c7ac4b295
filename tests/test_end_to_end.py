"""Whole runs of main.py on real MNIST: accuracy, kill -9 and resume, 8 devices against 1."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import ROOT, run_main

EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
CHECKPOINT_EVERY = 100


def seed_args(data_dir, workdir, *extra):
  return (
    "--config=configs/keras_seed.py",
    "--config.num_epochs=1",
    f"--config.checkpoint_every_steps={CHECKPOINT_EVERY}",
    f"--config.data_dir={data_dir}",
    f"--workdir={workdir}",
    *extra,
  )


def records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def without_times(rs):
  return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rs]


def final_params(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(ckpt) if d.isdigit())
  restored = ocp.StandardCheckpointer().restore(os.path.join(ckpt, str(step), "train"))
  return step, restored["state"]["params"]


@pytest.fixture(scope="module")
def reference(real_data_dir, tmp_path_factory):
  """One uninterrupted epoch of the seed network on one device."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  result = run_main(*seed_args(real_data_dir, workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_one_epoch_reaches_97_percent_on_the_full_test_set(reference):
  (record,) = records(reference)
  assert record["test_count"] == 10_000
  assert record["test_accuracy"] >= 0.97, record
  assert record["step"] == 468 and record["epoch"] == 1


def test_kill_9_and_rerun_ends_bit_for_bit_identical(reference, real_data_dir, tmp_path):
  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(
    [sys.executable, os.path.join(ROOT, "main.py"), *seed_args(real_data_dir, workdir)],
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  ckpt = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt) and any(d.isdigit() for d in os.listdir(ckpt)):
      break
    time.sleep(0.2)
  time.sleep(1.5)  # Kill mid-chunk, some way past the first checkpoint.
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))

  result = run_main(*seed_args(real_data_dir, workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert without_times(records(workdir)) == without_times(records(reference))
  step_a, params_a = final_params(reference)
  step_b, params_b = final_params(workdir)
  assert step_a == step_b == 468
  for a, b in zip(jax_leaves(params_a), jax_leaves(params_b), strict=True):
    np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
  import jax

  return jax.tree.leaves(tree)


def test_eight_devices_match_one_and_their_checkpoint_resumes_on_one(reference, real_data_dir, tmp_path):
  workdir = str(tmp_path / "eight")
  result = run_main(*seed_args(real_data_dir, workdir), env=EIGHT_DEVICES)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "8 cpu device(s)" in result.stderr
  (one,), (eight,) = records(reference), records(workdir)
  for key in ("train_loss", "test_loss"):
    assert eight[key] == pytest.approx(one[key], rel=2e-2), key
  for key in ("train_accuracy", "test_accuracy"):
    assert eight[key] == pytest.approx(one[key], abs=3e-3), key

  # The 8-device checkpoint restores onto 1 device and training goes on from it.
  result = run_main(*seed_args(real_data_dir, workdir, "--config.num_epochs=2"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed from the checkpoint at step 468" in result.stderr
  assert "1 cpu device(s)" in result.stderr
  assert [r["epoch"] for r in records(workdir)] == [1, 2]
