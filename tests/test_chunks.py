import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax.data import augment
from mnist_flax.run import chunks, parallel, snapshot
from tests.conftest import assert_script_runs_on_eight_devices


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
  key = jax.random.PRNGKey(0)
  a = np.asarray(chunks.epoch_order(key, 3, 1000))
  assert sorted(a.tolist()) == list(range(1000))
  np.testing.assert_array_equal(a, chunks.epoch_order(key, 3, 1000))
  assert not np.array_equal(a, chunks.epoch_order(key, 4, 1000))
  assert not np.array_equal(a, chunks.epoch_order(jax.random.PRNGKey(1), 3, 1000))


def test_each_member_has_its_own_epoch_order():
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  orders = np.asarray(chunks.epoch_order(keys, 2, 100))
  assert orders.shape == (3, 100)
  for key, order in zip(keys, orders, strict=True):
    np.testing.assert_array_equal(order, chunks.epoch_order(key, 2, 100))
  assert len({tuple(o) for o in orders}) == 3


def test_each_member_trains_as_a_single_model_on_its_own_batches(tiny_config):
  """A chunk of members with their own batches gives each what a chunk of that member alone on its key gives."""
  tiny_config.update(ensemble_size=2, member_batches="own", augment_max_rotation=10.0)
  mesh, n, spe = parallel.create_mesh(), 4, 8
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (spe * tiny_config.batch_size, 28, 28, 1)), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, 10, len(images)), jnp.int32)
  state = snapshot.initial_snapshot(tiny_config, spe, mesh)["state"]
  data_rng = jnp.asarray(snapshot.data_keys(tiny_config))
  order = chunks.epoch_order(data_rng, 0, len(labels))
  chunk = chunks.make_train_chunk(n, tiny_config.batch_size, augment.Augmentation.from_config(tiny_config), False, mesh)
  sums = chunks.zero_sums(parallel.replicated(mesh), (2,))
  ensemble, _ = chunk(jax.tree.map(jnp.copy, state), sums, images, labels, order, jnp.int32(2), data_rng)
  for i in range(2):
    alone = jax.tree.map(lambda x, i=i: x[i], state)
    sums = chunks.zero_sums(parallel.replicated(mesh))
    single, _ = chunk(alone, sums, images, labels, order[i], jnp.int32(2), data_rng[i])
    member = jax.tree.map(lambda x, i=i: x[i], ensemble.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), member, single.params)


OWN_BATCHES_ON_EIGHT_DEVICES = """
import jax, jax.numpy as jnp, numpy as np
from configs import default
from mnist_flax.data import augment
from mnist_flax.run import chunks, parallel, snapshot
from tests.conftest import TINY_OVERRIDES
assert jax.device_count() == 8, jax.devices()
config = default.get_config()
config.update_from_flattened_dict({**TINY_OVERRIDES, "ensemble_size": 2, "member_batches": "own"})
rng = np.random.default_rng(0)
data = (rng.integers(0, 256, (128, 28, 28, 1)).astype(np.uint8), rng.integers(0, 10, 128).astype(np.int32))
params = []
for mesh in (jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)), parallel.create_mesh()):
  item = snapshot.initial_snapshot(config, 8, mesh)
  images, labels, key = parallel.put_replicated((*data, snapshot.data_keys(config)), mesh)
  order = chunks.epoch_order_fn(mesh)(key, 0, 128)
  chunk = chunks.make_train_chunk(4, config.batch_size, augment.Augmentation.from_config(config), False, mesh)
  state, _ = chunk(item["state"], item["epoch_sums"], images, labels, order, jnp.int32(0), key)
  params.append(jax.device_get(state.params))
jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *params)
print("ok")
"""


def test_members_own_batches_split_over_eight_devices_train_as_on_one():
  assert_script_runs_on_eight_devices(OWN_BATCHES_ON_EIGHT_DEVICES)


@pytest.mark.parametrize("shape", [(), (3,)])
def test_sums_start_as_float32_zeros_one_per_metric_and_member(shape):
  sharding = parallel.replicated(parallel.create_mesh())
  sums = chunks.zero_sums(sharding, shape)
  assert sorted(sums) == sorted(chunks.SUM_KEYS) == ["accuracy", "grad_norm", "loss"]
  for value in sums.values():
    assert value.dtype == jnp.float32 and value.shape == shape and value.sharding == sharding
    np.testing.assert_array_equal(value, np.zeros(shape, np.float32))
