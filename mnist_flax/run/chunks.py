"""Compiled chunks of train steps over the device-resident training set, and each epoch's data order.

Each epoch visits the training set in an order fixed by (data key, epoch); a chunk runs several
steps of it in one host-to-device dispatch and adds their metrics to running epoch sums.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from mnist_flax.core import steps
from mnist_flax.core.train_state import is_ensemble
from mnist_flax.data import augment, input_pipeline
from mnist_flax.run import backend, parallel

SUM_KEYS = ("loss", "accuracy", "grad_norm")


def epoch_order(data_rng: jax.Array, epoch: int, num_examples: int) -> jax.Array:
  """The permutation of the training set for `epoch`, a function of (key, epoch) only.

  With one key per ensemble member ([members, 2]), one permutation per member.
  """
  if data_rng.ndim == 2:
    return jax.vmap(epoch_order, in_axes=(0, None, None))(data_rng, epoch, num_examples)
  return jax.random.permutation(jax.random.fold_in(data_rng, epoch), num_examples)


@functools.cache
def epoch_order_fn(mesh: jax.sharding.Mesh) -> Callable[..., jax.Array]:
  """`epoch_order`, compiled with a replicated output on `mesh`."""
  return jax.jit(epoch_order, static_argnums=2, out_shardings=parallel.replicated(mesh))


def zero_sums(sharding: jax.sharding.Sharding, shape: tuple[int, ...] = ()) -> dict[str, jax.Array]:
  """An epoch's running sums of the train metrics, all zero; `shape` (members,) for an ensemble."""
  return jax.device_put({k: jnp.zeros(shape, jnp.float32) for k in SUM_KEYS}, sharding)


def make_train_chunk(
  num_steps: int,
  batch_size: int,
  augmentation: augment.Augmentation,
  unroll: bool,
  mesh: jax.sharding.Mesh,
  microbatches: int = 1,
) -> Callable:
  """Compiles `num_steps` train steps over device-resident data into one call.

  The returned function maps `(state, sums, images, labels, order, first, data_rng)` to
  `(state, sums)`: it runs steps `first .. first + num_steps - 1` of the epoch whose order is
  `order`, and adds each step's metrics to `sums`. With one key and one order per ensemble member,
  each member trains on its own batches. Each step splits its batch into `microbatches` slices.
  """
  sharding = parallel.batch_sharding(mesh)

  def chunk(state, sums, images, labels, order, first, data_rng):
    def draw(order, data_rng, start, step):
      idx = jax.lax.dynamic_slice_in_dim(order, start, batch_size)
      batch = {"image": input_pipeline.to_unit_float(images[idx]), "label": labels[idx]}
      batch = jax.lax.with_sharding_constraint(batch, sharding)
      batch["image"] = augmentation(jax.random.fold_in(data_rng, step), batch["image"])
      return batch

    own = order.ndim == 2  # One order per member.

    def body(carry, i):
      state, sums = carry
      args = (order, data_rng, (first + i) * batch_size, jnp.ravel(state.step)[0])
      batch = jax.vmap(draw, in_axes=(0, 0, None, None))(*args) if own else draw(*args)
      if is_ensemble(state):
        state, metrics = steps.ensemble_train_step(state, batch, member_batches=own, microbatches=microbatches)
      else:
        state, metrics = steps.train_step(state, batch, microbatches=microbatches)
      return (state, {k: sums[k] + metrics[k] for k in SUM_KEYS}), None

    (state, sums), _ = jax.lax.scan(body, (state, sums), jnp.arange(num_steps), unroll=num_steps if unroll else 1)
    return state, sums

  return jax.jit(chunk, donate_argnums=(0, 1))


def config_train_chunk(
  config: ml_collections.ConfigDict, choices: backend.Choices, num_steps: int, mesh: jax.sharding.Mesh
) -> Callable:
  """`make_train_chunk` of `num_steps` steps with the config's batch and augmentation and the backend's choices."""
  augmentation = augment.Augmentation.from_config(config)
  return make_train_chunk(num_steps, config.batch_size, augmentation, choices.unrolled, mesh, choices.microbatches)
