import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax import checkpoints, create_train_state, train_step


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
  with pytest.raises(Exception):  # noqa: B017 - orbax raises ValueError or KeyError by version.
    checkpoints.restore_latest(manager, {"state": other})
  manager.close()
