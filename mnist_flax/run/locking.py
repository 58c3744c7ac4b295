"""Advisory locks, released by the kernel when their process ends: one run per workdir, one preparer per folder."""

import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator

from absl import logging

from mnist_flax.errors import UsageError

LOCK_FILE = "lock"


class WorkdirBusy(UsageError):
  """Another live process holds the workdir."""


def _holder(fd: int) -> str:
  """Who holds the lock, from what it wrote into the file: 'pid P on host H since T'."""
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    info = json.loads(os.read(fd, 4096).decode())
    return f"pid {info['pid']} on host {info['host']} since {info['since']}"
  except (OSError, ValueError, KeyError, TypeError):
    return "another process"


def _open_lock_file(path: str) -> int:
  """Opens (creating it and its folder if needed) a lock file; raises OSError where it cannot."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


@contextlib.contextmanager
def workdir_lock(workdir: str, enabled: bool = True) -> Iterator[None]:
  """Holds `<workdir>/lock` for the duration of the block; creates the workdir if needed.

  The lock is `flock`-based: it is released by the kernel when the holding process ends,
  however it ends, so a crashed run never blocks the next one. The file stays in place and
  names the last holder.

  Args:
    workdir: The run folder.
    enabled: False on processes other than the first of a multi-process run (they share it).

  On a file system without locks (some network and FUSE mounts) it warns and goes on unlocked.

  Raises:
    WorkdirBusy: another live process holds the lock (the message names its pid and host).
    UsageError: the workdir or its lock file cannot be created.
  """
  if not enabled:
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = _open_lock_file(path)
  except OSError as e:
    raise UsageError(f"cannot create {path}: {e.strerror or e}") from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirBusy(
        f"workdir {workdir} is in use by {_holder(fd)}; wait for that run to end or use another --workdir"
      ) from None
    except OSError as e:  # Some network and FUSE file systems have no locks (ENOLCK, EOPNOTSUPP).
      logging.warning("Cannot lock %s (%s): make sure no other run uses this workdir.", path, e.strerror or e)
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode(), 0)
    yield
  finally:
    os.close(fd)  # Closing releases the lock.


@contextlib.contextmanager
def waiting_lock(path: str, what: str) -> Iterator[None]:
  """Holds an exclusive lock on the file `path` for the block, waiting while another process holds it.

  For work that several processes may start at once on a shared folder (preparing a dataset): the
  second waits for the first, then finds the work done. Where the file cannot be created or locked
  (a read-only folder, a file system without locks) the block runs unlocked.

  Args:
    path: The lock file; its folder is created if needed.
    what: The work, for the log line of a process that waits ("MNIST's preparation").
  """
  try:
    fd = _open_lock_file(path)
  except OSError:
    yield
    return
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info("Waiting for %s by another process (it holds %s).", what, path)
      fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:
      logging.warning("Cannot lock %s (%s): %s goes on unlocked.", path, e.strerror or e, what)
    yield
  finally:
    os.close(fd)
