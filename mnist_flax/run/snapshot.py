"""What a run's checkpoint holds: `{"state": TrainState, "epoch_sums": the epoch's running metric sums}`.

The state at step 0 is a function of the config alone (its seed), so a run can be restarted, resumed
or restored for inference from nothing but `config.json` and a checkpoint.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mnist_flax.core import networks, train_state
from mnist_flax.data import input_pipeline
from mnist_flax.run import chunks, parallel


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """The run's two root PRNG keys: `(init_rng, data_rng)`, for the state and the data order."""
  init_rng, data_rng = jax.random.split(jax.random.PRNGKey(seed))
  return init_rng, data_rng


def data_keys(config: ml_collections.ConfigDict) -> np.ndarray:
  """The key of the run's data order and augmentation, or one key per member ([members, 2]) drawing its own."""
  data_rng = run_keys(config.seed)[1]
  if train_state.own_member_batches(config):
    data_rng = jax.random.split(data_rng, len(train_state.member_learning_rates(config)))
  return np.asarray(data_rng)


def initial_snapshot(
  config: ml_collections.ConfigDict, steps: int, mesh: jax.sharding.Mesh, model: networks.Model | None = None
) -> dict:
  """The snapshot at step 0, replicated on `mesh`: the config's state (`model`'s) and zero sums.

  Args:
    config: A run config.
    steps: Train steps per epoch (`input_pipeline.steps_per_epoch`), for the learning-rate schedule.
    mesh: The devices.
    model: The module to train, as `train_state.create_train_state` takes it.
  """
  init = functools.partial(train_state.create_ensemble_state, config, steps_per_epoch=steps, model=model)
  state = jax.jit(init, out_shardings=parallel.replicated(mesh))(run_keys(config.seed)[0])
  return {"state": state, "epoch_sums": chunks.zero_sums(parallel.replicated(mesh), jnp.shape(state.step))}


def snapshot_target(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict:
  """The shapes, dtypes and shardings of `initial_snapshot`, computing nothing: a restore target."""
  snapshot = jax.eval_shape(lambda: initial_snapshot(config, input_pipeline.steps_per_epoch(config.batch_size), mesh))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), snapshot)


def state_step(state: train_state.TrainState) -> int:
  """The step of a train state (every ensemble member is at the same step)."""
  return int(np.ravel(jax.device_get(state.step))[0])
