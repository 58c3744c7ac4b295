import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from mnist_flax.data import input_pipeline
from tests.conftest import MOCK_EXAMPLES, ROOT, mock_manual_dir


def test_mock_data_loads_as_uint8_arrays_and_is_cached(mock_data_dir):
  assert os.path.exists(input_pipeline.cache_path(mock_data_dir))
  splits = input_pipeline.load_mnist(mock_data_dir)
  for split in ("train", "test"):
    images, labels = splits[split]["image"], splits[split]["label"]
    assert images.shape == (MOCK_EXAMPLES, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (MOCK_EXAMPLES,) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() <= 9


def test_cached_data_loads_without_tensorflow_or_tfds(mock_data_dir):
  code = (
    "import sys; from mnist_flax.data import input_pipeline as ip; "
    f"s = ip.load_mnist({mock_data_dir!r}); "
    "assert s['train']['image'].shape[1:] == (28, 28, 1); "
    "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
    "assert not bad, bad"
  )
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


def test_data_dir_defaults_to_tfds_data_dir_env(monkeypatch, tmp_path):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  assert input_pipeline.resolve_data_dir("") == str(tmp_path)
  assert input_pipeline.resolve_data_dir("/x/y") == "/x/y"
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert input_pipeline.resolve_data_dir(None) == os.path.expanduser("~/tensorflow_datasets")


def test_no_files_and_no_network_says_how_to_provide_them(monkeypatch, tmp_path):
  monkeypatch.setattr(input_pipeline, "_can_download", lambda: False)
  with pytest.raises(input_pipeline.DataError, match="MNIST_MANUAL_DIR") as e:
    input_pipeline.load_mnist(str(tmp_path / "tfds"), None)
  assert "\n" not in str(e.value)
  assert "train-images-idx3-ubyte.gz" in str(e.value)


def test_incomplete_manual_dir_is_refused(tmp_path):
  (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
  with pytest.raises(input_pipeline.DataError, match="lacks train-labels-idx1-ubyte.gz"):
    input_pipeline.load_mnist(str(tmp_path / "tfds"), str(tmp_path))


def test_corrupted_file_fails_its_checksum(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  for name in input_pipeline.MNIST_FILES:
    (manual / name).write_bytes(b"not mnist")
  with pytest.raises(input_pipeline.DataError, match="checksum"):
    input_pipeline.load_mnist(str(tmp_path / "tfds"), str(manual))
  assert not os.path.exists(input_pipeline.cache_path(str(tmp_path / "tfds")))


def test_preparing_leaves_nothing_in_the_system_temp_dir(tmp_path, monkeypatch):
  system_temp = tmp_path / "system_temp"
  system_temp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
  test_corrupted_file_fails_its_checksum(tmp_path)  # A builder for data not yet prepared.
  assert os.listdir(system_temp) == []
  assert tempfile.gettempdir() == str(system_temp)


def _damage(path, how):
  data = open(path, "rb").read()
  if how == "truncated":
    data = data[: len(data) // 2]
  elif how == "empty":
    data = b""
  elif how == "corrupt":  # Flip bytes inside the compressed arrays: the zip CRC no longer matches.
    middle = len(data) // 2
    data = data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]
  with open(path, "wb") as f:
    f.write(data)


@pytest.mark.parametrize("how", ["truncated", "empty", "corrupt"])
def test_a_damaged_cache_is_rebuilt_from_tfds(mock_data_dir, tmp_path, how):
  import shutil

  import tensorflow_datasets as tfds

  data_dir = str(tmp_path / "tfds")
  shutil.copytree(mock_data_dir, data_dir)
  expected = input_pipeline.load_mnist(data_dir)
  _damage(input_pipeline.cache_path(data_dir), how)
  (tmp_path / "manual").mkdir()
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    rebuilt = input_pipeline.load_mnist(data_dir, mock_manual_dir(tmp_path / "manual"), input_pipeline.read_with_tfds)
  for split in ("train", "test"):
    np.testing.assert_array_equal(rebuilt[split]["image"], expected[split]["image"])
  np.testing.assert_array_equal(input_pipeline.load_mnist(data_dir)["test"]["label"], expected["test"]["label"])


def test_a_damaged_cache_that_cannot_be_rebuilt_is_one_line(monkeypatch, tmp_path):
  monkeypatch.setattr(input_pipeline, "_can_download", lambda: False)
  path = input_pipeline.cache_path(str(tmp_path))
  os.makedirs(os.path.dirname(path))
  with open(path, "wb") as f:
    f.write(b"garbage")
  with pytest.raises(input_pipeline.DataError, match="is unreadable .*, and it cannot be rebuilt") as e:
    input_pipeline.load_mnist(str(tmp_path))
  assert "\n" not in str(e.value)
  assert open(path, "rb").read() == b"garbage"  # Left as it was.


def test_real_mnist_splits(real_data_dir):
  splits = input_pipeline.load_mnist(real_data_dir)
  assert splits["train"]["image"].shape == (60_000, 28, 28, 1)
  assert splits["test"]["image"].shape == (10_000, 28, 28, 1)
  assert splits["train"]["image"].max() == 255
  assert np.bincount(splits["test"]["label"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_an_unwritable_cache_only_warns(mock_data_dir, tmp_path, monkeypatch):
  import tensorflow_datasets as tfds

  def refuse(path, splits):
    raise PermissionError(13, "Permission denied", path)

  monkeypatch.setattr(input_pipeline, "_write_cache", refuse)
  (tmp_path / "manual").mkdir()
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    manual = mock_manual_dir(tmp_path / "manual")
    splits = input_pipeline.load_mnist(str(tmp_path / "tfds"), manual, input_pipeline.read_with_tfds)
  assert splits["train"]["image"].shape == (MOCK_EXAMPLES, 28, 28, 1)
  assert not os.path.exists(input_pipeline.cache_path(str(tmp_path / "tfds")))


def test_a_second_load_waits_for_the_first_preparation_and_reads_its_cache(mock_data_dir, tmp_path, monkeypatch):
  """Two runs starting at once on a fresh data dir: one prepares, the other waits and builds nothing."""
  import fcntl
  import shutil
  import threading

  path = input_pipeline.cache_path(str(tmp_path))
  os.makedirs(os.path.dirname(path))
  built = []
  (tmp_path / "manual").mkdir()
  result, manual = {}, mock_manual_dir(tmp_path / "manual")
  with open(os.path.join(os.path.dirname(path), input_pipeline.PREPARE_LOCK), "w") as preparing:
    fcntl.flock(preparing, fcntl.LOCK_EX)  # The first run, preparing.
    waiter = threading.Thread(
      target=lambda: result.update(input_pipeline.load_mnist(str(tmp_path), manual, lambda *a: built.append(a)))
    )
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive() and not built  # Waiting, not building.
    shutil.copy(input_pipeline.cache_path(mock_data_dir), path)  # The first run's cache, then its lock released.
  waiter.join(30)
  assert not waiter.is_alive() and not built
  assert result["test"]["image"].shape == (MOCK_EXAMPLES, 28, 28, 1)


def test_without_tensorflow_a_fresh_data_dir_is_one_line_naming_the_command(tmp_path, monkeypatch):
  real_find_spec = input_pipeline.importlib.util.find_spec
  monkeypatch.setattr(
    input_pipeline.importlib.util,
    "find_spec",
    lambda name, *a: None if name == "tensorflow" else real_find_spec(name, *a),
  )
  (tmp_path / "manual").mkdir()
  with pytest.raises(input_pipeline.DataError, match="tfds needs TensorFlow to prepare MNIST") as e:
    input_pipeline.load_mnist(str(tmp_path / "tfds"), mock_manual_dir(tmp_path / "manual"))
  assert "\n" not in str(e.value)
  assert f"{sys.executable} -m pip install tensorflow-cpu -c <(" in str(e.value)
  assert not os.path.exists(tmp_path / "tfds")  # Nothing written.


def test_the_install_command_keeps_every_installed_version(tmp_path):
  """The command's constraints list every installed distribution at its version, so pip changes none of them."""
  command = input_pipeline.tensorflow_install_command()
  constraints = command.split("-c <(", 1)[1].rstrip(")")
  listed = subprocess.run(["bash", "-c", constraints], capture_output=True, text=True, check=True).stdout.split()
  assert "numpy==" + np.__version__ in listed
  assert any(line.lower().startswith(("jax==", "flax==")) for line in listed)


def test_a_failed_preparation_is_one_line_and_tensorflow_stays_in_the_child(tmp_path):
  """A checksum failure in the child process that prepares MNIST reaches the caller as its one line."""
  manual = tmp_path / "manual"
  manual.mkdir()
  for name in input_pipeline.MNIST_FILES:
    (manual / name).write_bytes(b"not mnist")
  code = (
    "import sys; from mnist_flax.data import input_pipeline as ip\n"
    f"try: ip.load_mnist({str(tmp_path / 'tfds')!r}, {str(manual)!r})\n"
    "except ip.DataError as e: print('error:', e)\n"
    "print('tensorflow imported:', 'tensorflow' in sys.modules)\n"
  )
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
  assert "error: an MNIST file does not match its registered checksum" in out.stdout, out.stderr[-2000:]
  assert "tensorflow imported: False" in out.stdout


def test_a_tensorflow_that_fails_to_import_is_one_line(tmp_path, monkeypatch):
  fake = tmp_path / "site" / "tensorflow"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("raise ImportError('undefined symbol: _ZN10tensorflow')\n")
  monkeypatch.syspath_prepend(str(tmp_path / "site"))
  monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
  with pytest.raises(
    input_pipeline.DataError, match="the installed one fails to import: ImportError: undefined symbol"
  ):
    input_pipeline.read_with_tfds(str(tmp_path / "tfds"), None)


def test_tensorflow_is_kept_off_the_gpus_before_tfds_uses_it(tmp_path, monkeypatch):
  import tensorflow as tf
  import tensorflow_datasets as tfds

  calls = []
  monkeypatch.setattr(tf.config, "set_visible_devices", lambda *a: calls.append(a))
  (tmp_path / "manual").mkdir()
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    input_pipeline.read_with_tfds(str(tmp_path / "tfds"), mock_manual_dir(tmp_path / "manual"))
  assert calls == [([], "GPU")]


def test_the_child_process_gets_its_defaults_and_keeps_the_callers_settings(tmp_path, monkeypatch):
  seen = {}

  def run(args, env, **kwargs):
    seen.update(env)
    return subprocess.CompletedProcess(args, 1, b"", b"why it failed\n")

  monkeypatch.setattr(input_pipeline.subprocess, "run", run)
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
  with pytest.raises(input_pipeline.DataError, match="^why it failed$"):
    input_pipeline.build_in_child_process(str(tmp_path), None)
  assert seen["TF_CPP_MIN_LOG_LEVEL"] == "0"
  assert seen["TEMPORARILY_DISABLE_PROTOBUF_VERSION_CHECK"] == "true"
