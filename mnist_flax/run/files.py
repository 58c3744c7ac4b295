"""Files written whole or not at all: a temporary file beside the target, synced, then renamed over it."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO

from mnist_flax.errors import UsageError


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
  """Opens a temporary file that replaces `path` when the block ends without an exception.

  The data is synced to disk before the rename, so after a crash `path` holds either its old
  contents or the new ones, never part of them. On any exception, Ctrl-C included, the
  temporary file is removed and `path` is left as it was. The file gets the permissions
  `open` would give a new file (0o666 less the umask).

  Args:
    path: The file to write; its folder must exist.
    mode: A write mode for `open` ("wb" or "w").
    **open_kwargs: More arguments for `open`, e.g. `newline=""`.

  Yields:
    The open temporary file.
  """
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode, **open_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` with `atomic_write`; a failure is a one-line `UsageError` naming the file."""
  try:
    with atomic_write(path, "w", newline="") as f:
      f.write(text)
  except OSError as e:
    raise UsageError(f"cannot write {path}: {e.strerror or e}") from e
