import jax
import numpy as np

from mnist_flax.run import parallel
from tests.conftest import assert_script_runs_on_eight_devices


def test_mesh_spans_every_device_on_one_data_axis():
  mesh = parallel.create_mesh()
  assert mesh.axis_names == (parallel.DATA_AXIS,)
  assert mesh.devices.size == jax.device_count()
  assert parallel.batch_sharding(mesh).spec == jax.sharding.PartitionSpec("data")


def test_put_replicated_copies_to_every_device():
  mesh = parallel.create_mesh()
  x = np.arange(12, dtype=np.int32).reshape(3, 4)
  (y,) = parallel.put_replicated((x,), mesh)
  assert y.sharding.is_fully_replicated
  np.testing.assert_array_equal(np.asarray(y), x)


EIGHT_DEVICE_STEP = """
import jax, jax.numpy as jnp, numpy as np
from configs import default
from mnist_flax import create_train_state, train_step
from mnist_flax.run import parallel
assert jax.device_count() == 8, jax.devices()
config = default.get_config(); config.model.dropout_rate = 0.2
state = create_train_state(config, jax.random.PRNGKey(0))
k1, k2 = jax.random.split(jax.random.PRNGKey(1))
batch = {"image": jax.random.uniform(k1, (64, 28, 28, 1)), "label": jax.random.randint(k2, (64,), 0, 10)}
one = jax.devices()[0]
s1, m1 = train_step(jax.device_put(state, one), jax.device_put(batch, one))
mesh = parallel.create_mesh()
s8, m8 = train_step(jax.device_put(state, parallel.replicated(mesh)),
                    jax.device_put(batch, parallel.batch_sharding(mesh)))
assert len(s8.params["Dense_0"]["kernel"].sharding.device_set) == 8
for a, b in zip(jax.tree.leaves((s1, m1)), jax.tree.leaves((s8, m8))):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)  # 1% of one Adam step (lr 1e-3)
print("ok")
"""


def test_a_step_on_eight_devices_matches_one_device():
  assert_script_runs_on_eight_devices(EIGHT_DEVICE_STEP)
