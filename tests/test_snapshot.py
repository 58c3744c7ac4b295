import jax
import numpy as np
import pytest

from mnist_flax.run import parallel, snapshot


def test_every_accepted_seed_has_its_own_keys():
  from mnist_flax.run.config_checks import MAX_SEED

  keys = {tuple(np.asarray(k).ravel()) for s in (0, 1, 2**31, MAX_SEED) for k in snapshot.run_keys(s)}
  assert len(keys) == 8


@pytest.mark.parametrize(
  ("changes", "own"),
  [
    ({}, False),
    ({"ensemble_size": 3}, False),
    ({"ensemble_size": 3, "member_batches": "own"}, True),
    ({"ensemble_size": 2, "member_learning_rates": (1e-3, 1e-2), "member_batches": "own"}, True),
    ({"member_batches": "own"}, False),  # One model: there is nothing to share.
  ],
)
def test_data_keys_give_each_member_its_own_key_only_when_its_batches_are_its_own(config, changes, own):
  config.update_from_flattened_dict(changes)
  keys = snapshot.data_keys(config)
  run_key = np.asarray(snapshot.run_keys(config.seed)[1])
  if own:
    assert keys.shape == (config.ensemble_size, *run_key.shape)
    assert len({tuple(k) for k in keys}) == config.ensemble_size and not (keys == run_key).all(axis=1).any()
  else:
    np.testing.assert_array_equal(keys, run_key)


def test_the_restore_target_has_the_shapes_of_the_initial_snapshot(tiny_config):
  mesh = parallel.create_mesh()
  initial = snapshot.initial_snapshot(tiny_config, 5, mesh)
  target = snapshot.snapshot_target(tiny_config, mesh)

  def shapes(tree):
    return [(jax.tree_util.keystr(k), a.shape, a.dtype) for k, a in jax.tree_util.tree_leaves_with_path(tree)]

  assert shapes(target) == shapes(initial) and snapshot.state_step(initial["state"]) == 0
