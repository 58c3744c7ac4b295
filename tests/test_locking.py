import errno
import multiprocessing
import os
from unittest import mock

import pytest

from mnist_flax.errors import UsageError
from mnist_flax.run import locking


def _hold_then_wait(workdir, ready, done):
  with locking.workdir_lock(workdir):
    ready.set()
    done.wait(30)


@pytest.fixture
def held(tmp_path):
  """A workdir locked by another live process."""
  ctx = multiprocessing.get_context("spawn")
  ready, done = ctx.Event(), ctx.Event()
  process = ctx.Process(target=_hold_then_wait, args=(str(tmp_path), ready, done))
  process.start()
  assert ready.wait(60)
  yield tmp_path, process
  if process.is_alive():  # A killed holder may have died holding the event's lock: never touch it then.
    done.set()
    process.join(30)


def test_a_second_holder_is_refused_naming_the_first(held):
  workdir, process = held
  with pytest.raises(locking.WorkdirBusy, match=f"is in use by pid {process.pid} on host ") as e:
    with locking.workdir_lock(str(workdir)):
      pass
  assert "\n" not in str(e.value)


def test_a_killed_holder_does_not_block_the_next_run(held):
  workdir, process = held
  process.kill()  # SIGKILL: no clean-up runs.
  process.join(30)
  with locking.workdir_lock(str(workdir)):
    assert os.path.exists(workdir / locking.LOCK_FILE)


def test_the_lock_is_released_after_the_block_and_on_errors(tmp_path):
  with pytest.raises(RuntimeError):
    with locking.workdir_lock(str(tmp_path / "run")):
      raise RuntimeError
  with locking.workdir_lock(str(tmp_path / "run")):
    pass


def test_an_uncreatable_workdir_is_a_usage_error(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(UsageError, match="cannot create"):
    with locking.workdir_lock(str(tmp_path / "file" / "run")):
      pass


def test_disabled_on_other_processes_writes_nothing(tmp_path):
  with locking.workdir_lock(str(tmp_path / "run"), enabled=False):
    pass
  assert not (tmp_path / "run").exists()


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
  def no_locks(fd, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

  monkeypatch.setattr(locking.fcntl, "flock", no_locks)
  with mock.patch.object(locking.logging, "warning") as warning, locking.workdir_lock(str(tmp_path / "run")):
    assert (tmp_path / "run" / locking.LOCK_FILE).exists()
  assert "make sure no other run uses this workdir" in warning.call_args.args[0]


def test_a_waiting_lock_runs_unlocked_where_its_file_cannot_be_made(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with locking.waiting_lock(str(blocker / "sub" / "x.lock"), "the work"):  # A file where its folder should be.
    pass
  assert blocker.read_text() == ""
