import os
import stat

import pytest

from mnist_flax.run import files


def test_replaces_the_file_whole_with_ordinary_permissions(tmp_path):
  path = tmp_path / "out.csv"
  path.write_text("old\n")
  with files.atomic_write(str(path), "w", newline="") as f:
    f.write("new\r\n")
    assert path.read_text() == "old\n"  # Not yet replaced.
  assert path.read_bytes() == b"new\r\n"
  assert os.listdir(tmp_path) == ["out.csv"]
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_inside_leaves_the_old_file_and_no_temporary(tmp_path, error):
  path = tmp_path / "out.bin"
  path.write_bytes(b"old")
  with pytest.raises(error):
    with files.atomic_write(str(path)) as f:
      f.write(b"half of the new")
      raise error()
  assert path.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["out.bin"]


def test_a_missing_folder_raises_and_creates_nothing(tmp_path):
  with pytest.raises(FileNotFoundError):
    with files.atomic_write(str(tmp_path / "no" / "out.bin")):
      pass
  assert os.listdir(tmp_path) == []
