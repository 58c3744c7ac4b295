import os
import subprocess
import sys

import numpy as np
import pytest

from mnist_flax import input_pipeline
from tests.conftest import MOCK_EXAMPLES, ROOT


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
    "import sys; from mnist_flax import input_pipeline as ip; "
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


def test_unreadable_cache_is_reported(tmp_path):
  path = input_pipeline.cache_path(str(tmp_path))
  os.makedirs(os.path.dirname(path))
  with open(path, "wb") as f:
    f.write(b"garbage")
  with pytest.raises(input_pipeline.DataError, match="delete it"):
    input_pipeline.load_mnist(str(tmp_path))


def test_real_mnist_splits(real_data_dir):
  splits = input_pipeline.load_mnist(real_data_dir)
  assert splits["train"]["image"].shape == (60_000, 28, 28, 1)
  assert splits["test"]["image"].shape == (10_000, 28, 28, 1)
  assert splits["train"]["image"].max() == 255
  assert np.bincount(splits["test"]["label"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
