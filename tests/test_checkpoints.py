import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax import UsageError, create_train_state, train_step
from mnist_flax.run import checkpoints


def test_save_and_restore_round_trip(config, tmp_path):
  state = create_train_state(config, jax.random.PRNGKey(0))
  batch = {"image": jnp.ones((4, 28, 28, 1)) * 0.5, "label": jnp.arange(4)}
  state, _ = train_step(state, batch)
  item = {"state": state, "sums": {"loss": jnp.float32(1.25)}}

  manager = checkpoints.create_manager(str(tmp_path), max_to_keep=2)
  assert checkpoints.restore_latest(manager, item) is None
  for step in (1, 2, 3):
    checkpoints.save(manager, step, item, {"elapsed_s": float(step)})
  manager.wait_until_finished()
  assert list(manager.all_steps()) == [2, 3]
  manager.close()

  fresh = {"state": create_train_state(config, jax.random.PRNGKey(5)), "sums": {"loss": jnp.float32(0)}}
  manager = checkpoints.create_manager(str(tmp_path), max_to_keep=2)
  restored, progress = checkpoints.restore_latest(manager, fresh)
  manager.close()
  assert progress == {"elapsed_s": 3.0}
  assert int(restored["state"].step) == 1
  assert restored["state"].tx is fresh["state"].tx  # Static fields come from the target.
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(item), strict=True):
    np.testing.assert_array_equal(a, b)


def test_restore_into_a_different_tree_fails(config, tmp_path):
  state = create_train_state(config, jax.random.PRNGKey(0))
  manager = checkpoints.create_manager(str(tmp_path), max_to_keep=1)
  checkpoints.save(manager, 1, {"state": state}, {})
  manager.wait_until_finished()
  config.model.dense_features = (64, 32)
  other = create_train_state(config, jax.random.PRNGKey(0))
  with pytest.raises((ValueError, KeyError), match="Dense_2"):  # The layer the checkpoint lacks; type by version.
    checkpoints.restore_latest(manager, {"state": other})
  manager.close()


def _largest_file(folder):
  paths = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
  return max(paths, key=os.path.getsize)


def _truncate_data(step_dir):
  path = _largest_file(os.path.join(step_dir, "train"))
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


DAMAGE = {
  "truncated data": _truncate_data,
  "no _METADATA": lambda d: os.remove(os.path.join(d, "train", "_METADATA")),
  "garbage progress": lambda d: open(os.path.join(d, "progress", "metadata"), "w").write("{garbage"),
  "missing item": lambda d: shutil.rmtree(os.path.join(d, "train")),
  "empty step folder": lambda d: [shutil.rmtree(d), os.mkdir(d)],
}


def _saved_run(config, workdir):
  """Checkpoints at steps 1, 2, 3 of distinct states; returns the items saved."""
  state = create_train_state(config, jax.random.PRNGKey(0))
  batch = {"image": jnp.ones((4, 28, 28, 1)) * 0.5, "label": jnp.arange(4)}
  manager = checkpoints.create_manager(workdir, max_to_keep=5)
  items = {}
  for step in (1, 2, 3):
    state, _ = train_step(state, batch)
    items[step] = {"state": state, "sums": {"loss": jnp.float32(step)}}
    checkpoints.save(manager, step, items[step], {"elapsed_s": float(step)})
  manager.wait_until_finished()
  manager.close()
  return items


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_previous_one_restored(config, tmp_path, damage):
  workdir = str(tmp_path)
  items = _saved_run(config, workdir)
  DAMAGE[damage](os.path.join(checkpoints.checkpoint_dir(workdir), "3"))

  manager = checkpoints.create_manager(workdir, max_to_keep=5)
  target = {"state": create_train_state(config, jax.random.PRNGKey(9)), "sums": {"loss": jnp.float32(0)}}
  restored, progress = checkpoints.restore_newest_readable(manager, target, workdir)
  assert progress == {"elapsed_s": 2.0}
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(items[2]), strict=True):
    np.testing.assert_array_equal(a, b)
  assert list(manager.all_steps()) == [1, 2]
  manager.close()
  (moved,) = os.listdir(tmp_path / checkpoints.DAMAGED_DIR)
  assert moved.startswith("3-")  # Moved, not deleted.


def test_with_no_readable_checkpoint_nothing_is_moved(config, tmp_path):
  workdir = str(tmp_path)
  _saved_run(config, workdir)
  for step in (1, 2, 3):
    _truncate_data(os.path.join(checkpoints.checkpoint_dir(workdir), str(step)))
  manager = checkpoints.create_manager(workdir, max_to_keep=5)
  target = {"state": create_train_state(config, jax.random.PRNGKey(9)), "sums": {"loss": jnp.float32(0)}}
  with pytest.raises(UsageError, match="none of the 3 checkpoints .* can be restored; the newest, step 3") as e:
    checkpoints.restore_newest_readable(manager, target, workdir)
  manager.close()
  assert "\n" not in str(e.value)
  assert not (tmp_path / checkpoints.DAMAGED_DIR).exists()
  assert sorted(os.listdir(checkpoints.checkpoint_dir(workdir))) == ["1", "2", "3"]


@pytest.mark.parametrize(
  "error, reason",
  [
    (ValueError('RESOURCE_EXHAUSTED: Error writing "x": No space left on device [os_error_code=28]'), "No space"),
    (PermissionError(13, "Permission denied"), "Permission denied"),
  ],
)
def test_a_failed_write_is_one_line_naming_the_folder(config, tmp_path, monkeypatch, error, reason):
  manager = checkpoints.create_manager(str(tmp_path), max_to_keep=2)

  def fail(*args, **kwargs):
    raise error

  monkeypatch.setattr(manager, "save", fail)
  item = {"state": create_train_state(config, jax.random.PRNGKey(0))}
  with pytest.raises(checkpoints.WriteError, match=f"cannot write a checkpoint in .*: {reason}") as e:
    checkpoints.save(manager, 1, item, {})
  assert "\n" not in str(e.value)
  monkeypatch.setattr(manager, "wait_until_finished", fail)
  with pytest.raises(checkpoints.WriteError, match=reason):
    checkpoints.finish(manager)
