"""MNIST through tfds, kept as uint8 arrays in a cache beside the tfds data.

The first load builds tfds's standard `mnist` dataset (downloading it, or offline from the four
original files in `manual_dir`) and saves both splits as one `.npz` file in `<data_dir>/mnist/`.
tfds needs TensorFlow for that, so it runs once in a child process of its own (with TensorFlow kept
off any GPU): the process that trains never imports TensorFlow. Later loads read the cache with
numpy alone.
"""

import contextlib
import glob
import importlib.util
import io
import logging as std_logging
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mnist_flax.errors import UsageError, describe
from mnist_flax.run import files, locking

MNIST_FILES = (
  "train-images-idx3-ubyte.gz",
  "train-labels-idx1-ubyte.gz",
  "t10k-images-idx3-ubyte.gz",
  "t10k-labels-idx1-ubyte.gz",
)
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
CACHE_NAME = "mnist_flax_arrays.npz"
PREPARE_LOCK = "mnist_flax_arrays.lock"  # Beside the cache: one process prepares, the others wait.
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)

Splits = dict[str, dict[str, np.ndarray]]
Builder = Callable[[str, str | None], Splits]  # (data_dir, manual_dir) -> both splits, read through tfds.


class DataError(UsageError):
  """MNIST could not be found, built or read."""


def to_unit_float(images: jax.Array) -> jax.Array:
  """uint8 pixels to float32 in [0, 1], the images `train_step` and `eval_step` expect."""
  return images.astype(jnp.float32) / 255.0


def steps_per_epoch(batch_size: int, num_examples: int = SPLIT_SIZES["train"]) -> int:
  """Train steps per epoch: full batches over `num_examples` images (a partial last batch is dropped)."""
  return num_examples // batch_size


def load_configured(runtime: Any, data_dir: str | None = None, manual_dir: str | None = None) -> Splits:
  """`load_mnist` for a config: `data_dir` and `manual_dir` where given, else `runtime`'s ("" for the defaults)."""
  return load_mnist(data_dir or runtime.data_dir or None, manual_dir or runtime.manual_dir or None)


def how_to_provide() -> str:
  """One sentence on providing the MNIST files offline."""
  return (
    f"put the four MNIST files ({', '.join(MNIST_FILES)}) in a folder and pass "
    "--config.runtime.manual_dir=FOLDER (--manual_dir=FOLDER to evaluate and report) or set MNIST_MANUAL_DIR=FOLDER"
  )


def resolve_data_dir(data_dir: str | None) -> str:
  """The tfds data dir: `data_dir`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return os.path.abspath(os.path.expanduser(data_dir))


def cache_path(data_dir: str | None) -> str:
  """Where the uint8 array cache lives for a tfds data dir."""
  return os.path.join(resolve_data_dir(data_dir), "mnist", CACHE_NAME)


def check_manual_dir(manual_dir: str) -> None:
  """Raises `DataError` unless `manual_dir` is a folder holding the four MNIST files."""
  if not os.path.isdir(manual_dir):
    raise DataError(f"manual_dir {manual_dir} is not a folder; {how_to_provide()}")
  missing = [f for f in MNIST_FILES if not os.path.isfile(os.path.join(manual_dir, f))]
  if missing:
    raise DataError(f"manual_dir {manual_dir} lacks {', '.join(missing)}; {how_to_provide()}")


def load_mnist(data_dir: str | None = None, manual_dir: str | None = None, build: Builder | None = None) -> Splits:
  """Loads both MNIST splits as numpy arrays.

  Args:
    data_dir: tfds data dir (default: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
    manual_dir: Folder with the four original MNIST files, used to build the
      tfds dataset offline (checksums verified by tfds). Unused once prepared.
    build: How to read the splits through tfds when there is no cache: by default
      `build_in_child_process`; `read_with_tfds` reads them in this process.

  Returns:
    `{"train": {"image", "label"}, "test": {...}}` with images uint8
    [N, 28, 28, 1] and labels int32 [N], in tfds's stored order.

  Raises:
    DataError: the data is not prepared and cannot be downloaded or built.
  """
  path = cache_path(data_dir)
  splits, damage = _cached(path)
  if splits is not None:
    return splits
  root = resolve_data_dir(data_dir)
  try:
    _check_source(root, manual_dir)  # Before anything is written.
    with locking.waiting_lock(os.path.join(os.path.dirname(path), PREPARE_LOCK), "MNIST's preparation"):
      splits, _ = _cached(path, quiet=True)  # Another process may have prepared it while this one waited.
      if splits is not None:
        return splits
      splits = (build or build_in_child_process)(root, manual_dir)
      try:
        _write_cache(path, splits)
        logging.info("Cached MNIST arrays in %s", path)
      except OSError as e:  # A read-only data dir: train from tfds's dataset, uncached.
        logging.warning("Could not cache the MNIST arrays in %s (%s); tfds will be read again next time.", path, e)
  except DataError as e:
    raise DataError(f"{damage}, and it cannot be rebuilt: {e}" if damage else str(e)) from e
  return splits


def _cached(path: str, quiet: bool = False) -> tuple[Splits | None, str | None]:
  """The cached splits, or None and why not (None when there is no cache: not yet prepared)."""
  if not os.path.exists(path):
    return None, None
  try:
    return _read_arrays(path, f"the MNIST cache {path}"), None
  except DataError as e:
    if not quiet:
      logging.warning("%s; rebuilding it from tfds.", e)
    return None, str(e)


def _read_arrays(source: str | IO[bytes], name: str) -> Splits:
  """The splits saved in `source` (a path or a file), called `name` in errors.

  Raises:
    DataError: the arrays are damaged (truncated, corrupt, wrong arrays).
  """
  try:
    with np.load(source) as f:
      splits = {s: {"image": f[f"{s}_image"], "label": f[f"{s}_label"]} for s in SPLIT_SIZES}
  except Exception as e:  # noqa: BLE001 - numpy and zipfile report damage with many types.
    raise DataError(f"{name} is unreadable ({describe(e)})") from e
  for s in SPLIT_SIZES:
    images, labels = splits[s]["image"], splits[s]["label"]
    if images.shape[1:] != (28, 28, 1) or labels.shape != images.shape[:1] or images.dtype != np.uint8:
      raise DataError(f"{name} has unexpected shapes or types")
  return splits


def _save(f: IO[bytes], splits: Splits) -> None:
  np.savez(f, **{f"{s}_{k}": v for s, d in splits.items() for k, v in d.items()})


def _write_cache(path: str, splits: Splits) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with files.atomic_write(path, "wb") as f:
    _save(f, splits)


def _can_download() -> bool:
  try:
    socket.create_connection(_DOWNLOAD_HOST, timeout=5).close()
    return True
  except OSError:
    return False


def _tfds_prepared(data_dir: str) -> bool:
  return bool(glob.glob(os.path.join(data_dir, "mnist", "*", "dataset_info.json")))


def _check_source(data_dir: str, manual_dir: str | None) -> None:
  """Raises `DataError` unless tfds can build MNIST: from `manual_dir`, already prepared, or downloaded."""
  if manual_dir:
    check_manual_dir(manual_dir)
  elif not _tfds_prepared(data_dir) and not _can_download():
    raise DataError(f"MNIST is not prepared in {data_dir} and cannot be downloaded; {how_to_provide()}")
  if importlib.util.find_spec("tensorflow") is None:
    raise DataError(
      f"tfds needs TensorFlow to prepare MNIST in {data_dir} (once), and none is installed; "
      f"add one that fits this environment with: {tensorflow_install_command()}"
    )


def tensorflow_install_command() -> str:
  """The pip command that adds TensorFlow's CPU build here, keeping every installed package's version."""
  cpu_build = sys.platform == "win32" or (sys.platform == "linux" and platform.machine() == "x86_64")
  pip = f"{shlex.quote(sys.executable)} -m pip"
  package = "tensorflow-cpu" if cpu_build else "tensorflow"
  if sys.platform == "win32":
    return f"{pip} install {package}"
  return f"{pip} install {package} -c <({pip} list --format=freeze)"


# The child's defaults, unless set already. TensorFlow's start-up notices off. And protobuf's check that
# no generated module is newer than the runtime, which some environments fail as shipped: Colab's GPU
# runtime pairs protobuf 5.29.6 with tensorflow-metadata 1.21.0 (generated by protobuf 6.31), and
# tfds cannot be imported there otherwise. The arrays it builds so are the same, bit for bit.
CHILD_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "TEMPORARILY_DISABLE_PROTOBUF_VERSION_CHECK": "true"}


def build_in_child_process(data_dir: str, manual_dir: str | None) -> Splits:
  """Both splits through tfds, read by a child process so that this one never imports TensorFlow.

  Raises:
    DataError: tfds could not build or read the dataset; the child's last line says why.
  """
  logging.info("Preparing MNIST with tfds in %s (once: the arrays are then cached)", data_dir)
  child = subprocess.run(
    [sys.executable, "-m", __name__, data_dir, manual_dir or ""],
    env={**CHILD_ENVIRONMENT, **os.environ},
    stdin=subprocess.DEVNULL,
    capture_output=True,
    check=False,
  )
  if child.returncode != 0:
    output = child.stderr.decode(errors="replace")
    logging.debug("The output of the process that prepared MNIST:\n%s", output)  # Shown with --verbosity=1.
    lines = [line for line in output.splitlines() if line.strip()]
    raise DataError(lines[-1] if lines else f"preparing MNIST with tfds failed with exit code {child.returncode}")
  return _read_arrays(io.BytesIO(child.stdout), "the arrays of the process that prepared MNIST")


@contextlib.contextmanager
def _quiet_tfds():
  """Keeps tfds's progress bars, per-file INFO lines and TensorFlow's start-up notices off the terminal."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

  def keep(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.ERROR or "tensorflow_datasets" not in record.pathname

  handler = logging.get_absl_handler()
  handler.addFilter(keep)
  try:
    yield
  finally:
    handler.removeFilter(keep)


@contextlib.contextmanager
def _scratch_tempdir():
  """Points `tempfile` at a folder removed on exit.

  tfds's builder for a dataset not yet prepared looks for its metadata online and leaves an empty
  temporary folder behind, offline, in the system's temp dir; this keeps it out of there.
  """
  with tempfile.TemporaryDirectory(prefix="mnist_flax_tfds_") as scratch:
    previous, tempfile.tempdir = tempfile.tempdir, scratch
    try:
      yield
    finally:
      tempfile.tempdir = previous


def read_with_tfds(data_dir: str, manual_dir: str | None) -> Splits:
  """Both splits through tfds in this process, preparing the dataset first if needed.

  Imports TensorFlow, which is kept off any GPU so that it takes no memory from JAX.
  """
  try:
    import tensorflow as tf
  except Exception as e:  # noqa: BLE001 - a broken install fails with many types (ImportError, AttributeError, ...).
    raise DataError(
      "tfds needs TensorFlow to prepare MNIST (once), and the installed one fails to import: "
      + describe(e, with_type=True)
    ) from e
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # This process's TensorFlow already set up its devices (a test, a notebook): leave them.
    pass
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

  tfds.disable_progress_bar()
  with _scratch_tempdir():
    builder = tfds.builder("mnist", data_dir=data_dir)
  if not builder.is_prepared():
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    try:
      builder.download_and_prepare(download_config=download_config)
    except NonMatchingChecksumError as e:
      raise DataError(f"an MNIST file does not match its registered checksum: {describe(e)}") from e
  splits = {}
  for split in SPLIT_SIZES:
    batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=10_000, shuffle_files=False)))
    splits[split] = {
      "image": np.concatenate([b["image"] for b in batches]).astype(np.uint8),
      "label": np.concatenate([b["label"] for b in batches]).astype(np.int32),
    }
  return splits


def _child_main(data_dir: str, manual_dir: str) -> int:
  """`build_in_child_process`'s child: the splits through tfds, as `.npz` bytes on stdout.

  Whatever tfds and TensorFlow print goes to stderr; on failure its last line says why, and the exit code is 1.
  """
  arrays = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
  os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
  try:
    with _quiet_tfds():
      splits = read_with_tfds(data_dir, manual_dir or None)
  except DataError as e:
    sys.stderr.write(f"{e}\n")
    return 1
  except Exception as e:  # noqa: BLE001 - the parent shows one line; the traceback stays above it.
    import traceback

    traceback.print_exc()
    sys.stderr.write(f"preparing MNIST with tfds failed: {describe(e, with_type=True)}\n")
    return 1
  with arrays:
    _save(arrays, splits)
  return 0


if __name__ == "__main__":
  sys.exit(_child_main(*sys.argv[1:]))
