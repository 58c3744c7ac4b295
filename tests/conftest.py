"""Shared fixtures: configs, tiny models, and real MNIST when MNIST_MANUAL_DIR is set."""

import os
import subprocess
import sys

import pytest

from configs import default, keras_seed, nnx_cnn
from mnist_flax.data import input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_MNIST_REASON = "real MNIST is absent: set MNIST_MANUAL_DIR to a folder with the four original MNIST files"


def pytest_configure(config):
  """One compilation cache for the whole session, in a fresh folder (subprocesses inherit it).

  On a GPU, JAX takes 75 % of its memory per process unless told otherwise; the test workers and
  the runs they start share one GPU, so each takes only what it uses.
  """
  import tempfile

  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if "MNIST_FLAX_COMPILATION_CACHE" not in os.environ:
    os.environ["MNIST_FLAX_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="mnist_flax_jax_cache_")
    config._compilation_cache = os.environ["MNIST_FLAX_COMPILATION_CACHE"]


def pytest_collection_modifyitems(config, items):
  """Marks the tests that use real MNIST `real_mnist`: `pytest -m real_mnist` runs them alone."""
  for item in items:
    if {"manual_dir", "real_data_dir"} & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.real_mnist)


def pytest_unconfigure(config):
  import shutil

  folder = getattr(config, "_compilation_cache", None)
  if folder:
    shutil.rmtree(folder, ignore_errors=True)
    del os.environ["MNIST_FLAX_COMPILATION_CACHE"]


@pytest.fixture
def config():
  return default.get_config()


@pytest.fixture
def seed_config():
  return keras_seed.get_config()


# A small, fast variant of the default config for loop tests on mock data.
TINY_OVERRIDES = {
  "model.features": (4,),
  "model.dense_features": (16,),
  "model.dropout_rate": 0.1,
  "batch_size": 16,
  "runtime.eval_batch_size": 24,
  "num_epochs": 2,
  "runtime.steps_per_dispatch": 3,
  "runtime.checkpoint_every_steps": 5,
  "runtime.manual_dir": "",
  "runtime.stop_at_chance": False,  # Mock labels are random: a tiny run on them stays near chance.
  "runtime.microbatches": 1,  # Slices only pay on CPU for real layer sizes, and compile longer.
}


# The same for configs/nnx_cnn.py, its network (an NNX module named by config.model.factory) as small.
TINY_NNX_MODEL = {"model.features": (4, 8), "model.dense_features": 16, "model.dropout_rate": 0.1}


@pytest.fixture
def tiny_config():
  c = default.get_config()
  c.update_from_flattened_dict(TINY_OVERRIDES)
  return c


@pytest.fixture
def tiny_nnx_config():
  c = nnx_cnn.get_config()
  c.update_from_flattened_dict({**TINY_OVERRIDES, **TINY_NNX_MODEL})
  return c


def tiny_flags(nnx: bool = False, **changes) -> list[str]:
  """The tiny config, with `changes` (fields of the top level or of `runtime`), as `--config.x=v` flags for main.py.

  With `nnx`, the flags start with `--config=configs/nnx_cnn.py` and make its NNX network as small.
  """
  runtime = default.get_config().runtime
  changes = {f"runtime.{k}" if k in runtime else k: v for k, v in changes.items()}
  overrides = {**TINY_OVERRIDES, **(TINY_NNX_MODEL if nnx else {}), **changes}
  return ["--config=configs/nnx_cnn.py"] * nnx + [f"--config.{k}={v}" for k, v in overrides.items()]


@pytest.fixture(scope="session")
def manual_dir():
  path = os.environ.get("MNIST_MANUAL_DIR", "")
  try:
    input_pipeline.check_manual_dir(path)
  except input_pipeline.DataError:
    pytest.skip(REAL_MNIST_REASON)
  return os.path.abspath(path)


@pytest.fixture(scope="session")
def real_data_dir(manual_dir, tmp_path_factory):
  """A tfds data dir with real MNIST prepared (and cached as arrays) once per test run.

  Parallel test workers share it: `load_mnist` lets the first prepare it while the others wait, then
  read its cache.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # The run's folder, above each worker's own.
  data_dir = str(root / "tfds_real")
  input_pipeline.load_mnist(data_dir, manual_dir)
  return data_dir


def assert_train_step_is_pure(state, batch):
  """`train_step` twice on `state` gives equal states and metrics and leaves `state` as it was; returns both."""
  import jax
  import numpy as np

  from mnist_flax import train_step

  before = jax.tree.map(np.array, state)
  new, metrics = train_step(state, batch)
  again, metrics_again = train_step(state, batch)
  for a, b in ((new, again), (metrics, metrics_again), (jax.tree.map(np.array, state), before)):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  assert int(new.step) == 1
  return new, metrics


def run_main(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
  """Runs `python main.py ARGS` from the repository root and returns the finished process."""
  full_env = {**os.environ, **(env or {})}
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, "main.py"), *args],
    cwd=ROOT,
    env=full_env,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


# The environment of a process with 8 simulated CPU devices.
EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def assert_script_runs_on_eight_devices(script: str) -> None:
  """Runs `python -c script` from the repository root on 8 CPU devices; it must exit 0 and print "ok" last."""
  env = {**os.environ, **EIGHT_DEVICES, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run(
    [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith("ok")


MOCK_EXAMPLES = 160


@pytest.fixture(scope="session")
def mock_data_dir(tmp_path_factory):
  """A tfds data dir whose MNIST array cache was built from `tfds.testing.mock_data`."""
  import tensorflow_datasets as tfds

  data_dir = str(tmp_path_factory.mktemp("mock_tfds"))
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    # In this process: the mock lives here, not in the child process that prepares real MNIST.
    input_pipeline.load_mnist(
      data_dir, mock_manual_dir(tmp_path_factory.mktemp("mock_manual")), build=input_pipeline.read_with_tfds
    )
  return data_dir


def mock_manual_dir(folder) -> str:
  """`folder` with four empty MNIST file names: under `tfds.testing.mock_data` tfds builds its mock from them."""
  for name in input_pipeline.MNIST_FILES:
    (folder / name).write_bytes(b"")
  return str(folder)


def run_module(
  module: str, *args: str, env: dict | None = None, cwd: str | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
  """Runs `python -m MODULE ARGS` (from `cwd`, default the repository root) and returns the finished process."""
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=cwd or ROOT,
    env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def assert_one_line_error(result: subprocess.CompletedProcess, prog: str, message: str) -> None:
  """The process failed with exactly one stderr line `PROG: error: ...MESSAGE...` and no traceback."""
  assert result.returncode != 0
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr[-2000:]
  assert lines[0].startswith(f"{prog}: error: ") and message in lines[0], lines[0]
  assert "Traceback" not in result.stderr + result.stdout


def tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """Every scalar in the event files under `logdir`, read with TensorBoard's own reader: tag -> [(step, value)]."""
  from tensorboard.backend.event_processing import event_accumulator

  accumulator = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.SCALARS: 0})
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.fixture(scope="session")
def tiny_run(mock_data_dir, tmp_path_factory):
  """A finished 2-epoch run of the tiny config on mock data: its workdir."""
  from configs import default
  from mnist_flax import train

  config = default.get_config()
  config.update_from_flattened_dict({**TINY_OVERRIDES, "runtime.data_dir": mock_data_dir})
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="session")
def tiny_ensemble_run(mock_data_dir, tmp_path_factory):
  """A finished 2-epoch run of the tiny config with 2 ensemble members on mock data: its workdir."""
  from configs import default
  from mnist_flax import train

  config = default.get_config()
  config.update_from_flattened_dict({**TINY_OVERRIDES, "runtime.data_dir": mock_data_dir, "ensemble_size": 2})
  workdir = str(tmp_path_factory.mktemp("tiny_ensemble_run"))
  train.train_and_evaluate(config, workdir)
  return workdir
