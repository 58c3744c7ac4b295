"""Pure, jitted train and eval steps for any Linen or NNX model (see `nnx_interop`) and any optax optimizer."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mnist_flax.core.modes import mode_kwargs
from mnist_flax.core.train_state import TrainState
from mnist_flax.data import input_pipeline

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def _losses_and_hits(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example cross-entropy and hits for int class indices [B] or soft targets [B, classes] (see `as_batch`).

  An index outside 0..classes-1 (negative ones included) gives that example a NaN loss and no hit.
  """
  if jnp.issubdtype(labels.dtype, jnp.floating):
    return optax.softmax_cross_entropy(logits, labels), (logits.argmax(-1) == labels.argmax(-1)).astype(jnp.float32)
  known = (labels >= 0) & (labels < logits.shape[-1])
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(known, labels, 0))
  hits = (jnp.argmax(logits, axis=-1) == labels) & known
  return jnp.where(known, losses, jnp.nan), hits.astype(jnp.float32)


def as_batch(batch: Batch) -> Batch:
  """A batch as the steps use it, decided from its dtypes and shapes when the step is traced.

  - `"image"`: floats are used as they are (MNIST's scale is [0, 1]); integer pixels (uint8
    0..255, as MNIST loaders give them) are scaled to float32 in [0, 1].
  - `"label"`: int class indices [B], or float one-hot or soft targets [B, classes] (the loss is
    then the cross-entropy against them, a hit the argmax of both agreeing).
  - Anything else is a `TypeError` naming the expected form.
  """
  images, labels = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
  if jnp.issubdtype(images.dtype, jnp.integer) and images.dtype != jnp.bool_:
    images = input_pipeline.to_unit_float(images)
  elif not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(f"batch['image'] must be float in [0, 1] or integer pixels 0..255, got {images.dtype}")
  integer = jnp.issubdtype(labels.dtype, jnp.integer) and labels.dtype != jnp.bool_
  soft = jnp.issubdtype(labels.dtype, jnp.floating) and labels.ndim == 2
  if not ((integer and labels.ndim == 1) or soft) or labels.shape[0] != images.shape[0]:
    raise TypeError(
      f"batch['label'] must be int class indices [B] or float one-hot targets [B, classes] for the {images.shape[0]} "
      f"images, got {labels.dtype}{list(labels.shape)}"
    )
  return {**batch, "image": images, "label": labels}


def _slice(batch: Batch, microbatches: int, i: int) -> Batch:
  """Rows `i, i + microbatches, ...` of each array: every slice keeps the batch's spread over devices."""
  return {k: v.reshape(v.shape[0] // microbatches, microbatches, *v.shape[1:])[:, i] for k, v in batch.items()}


@functools.partial(jax.jit, static_argnames="microbatches")
def train_step(state: TrainState, batch: Batch, microbatches: int = 1) -> tuple[TrainState, Metrics]:
  """One optimizer step on a batch.

  Args:
    state: The train state; its dropout key for this step is `fold_in(state.rng, state.step)`. For a
      `BatchNormTrainState` the model normalises with the batch's statistics and the running
      `batch_stats` are updated.
    batch: `{"image": [B, 28, 28, 1], "label": [B]}`: float images in [0, 1] or uint8 pixels, int class
      indices or float one-hot targets [B, classes] (see `as_batch`; an index outside the classes
      makes the loss NaN).
    microbatches: Slices of the batch whose gradients are computed separately and averaged (B must
      divide by it): still the gradient of the batch's mean loss, with each slice's dropout key
      `fold_in(key, i)` and, for batch norm, each slice normalised by its own statistics (the running
      averages take the mean of the slices' updates). The slices are independent computations, which
      XLA:CPU runs on its cores side by side: 4 train the seed CNN about 8 % faster on 2 cores.

  Returns:
    The new state (step + 1) and scalar metrics `loss`, `accuracy` and
    `grad_norm` (global L2 norm of the gradient), all for this batch before the update.
  """
  batch = as_batch(batch)
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  # The state's collections besides the parameters (a BatchNormTrainState's batch_stats) are updated in training.
  mutable = [name for name in state.variables() if name != "params"]
  mode = mode_kwargs(state.apply_fn, train=True)
  slices = [(batch, dropout_rng)]
  if microbatches > 1:
    slices = [(_slice(batch, microbatches, i), jax.random.fold_in(dropout_rng, i)) for i in range(microbatches)]

  def loss_fn(params: Any, batch: Batch, rng: jax.Array) -> tuple[jax.Array, tuple[jax.Array, Any]]:
    logits, updates = state.apply_fn(
      state.variables(params), batch["image"], **mode, rngs={"dropout": rng}, mutable=mutable
    )
    losses, hits = _losses_and_hits(logits, batch["label"])
    return losses.mean(), (hits.mean(), updates)

  def value_fn(params: Any) -> jax.Array:
    """The batch's mean loss at `params` (the same dropout masks): for optimizers that search a line."""
    return sum(loss_fn(params, *args)[0] for args in slices) / microbatches

  parts = [jax.value_and_grad(loss_fn, has_aux=True)(state.params, *args) for args in slices]
  # The slices are the same size, so the mean of their means is the batch's.
  mean = parts[0] if microbatches == 1 else jax.tree.map(lambda *xs: sum(xs) / microbatches, *parts)
  (loss, (accuracy, updates)), grads = mean
  new_state = state.apply_gradients(grads=grads, value=loss, value_fn=value_fn, **updates)
  return new_state, {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}


@functools.partial(jax.jit, static_argnames=("member_batches", "microbatches"))
def ensemble_train_step(
  state: TrainState, batch: Batch, member_batches: bool = False, microbatches: int = 1
) -> tuple[TrainState, Metrics]:
  """`train_step` for every member of a stacked state (see `create_ensemble_state`).

  Each member uses its own parameters, optimizer state and dropout keys; the metrics are [members].

  Args:
    state: Members stacked on a leading axis.
    batch: One batch for every member or, with `member_batches`, one per member (a leading member axis).
    member_batches: Whether `batch` holds one batch per member.
    microbatches: Slices of each member's batch, as for `train_step`.
  """
  step = functools.partial(train_step, microbatches=microbatches)
  return jax.vmap(step, in_axes=(0, 0 if member_batches else None))(state, batch)


def ensemble_logits(apply_fn: Any, variables: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The logits of stacked members (dropout off) and of their ensemble.

  Args:
    apply_fn: The model's apply function.
    variables: Model variables (`TrainState.variables()`) with a leading member axis.
    images: Float images [B, 28, 28, 1].

  Returns:
    `(ensemble, members)`: the log of the mean of the members' class probabilities [B, classes]
    (its softmax is that mean) and each member's logits [members, B, classes].
  """
  members = jax.vmap(lambda v: apply_fn(v, images, **mode_kwargs(apply_fn, train=False)))(variables)
  log_mean = jax.nn.logsumexp(jax.nn.log_softmax(members), axis=0) - jnp.log(members.shape[0])
  return log_mean, members


def eval_metrics(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> Metrics:
  """Loss and accuracy of `logits` against `labels`, counting only rows where `mask` is true.

  Args:
    logits: [B, num_classes] model outputs.
    labels: int [B] true classes, or float one-hot targets [B, num_classes].
    mask: Optional float or bool [B] marking real examples (padded rows are 0).

  Returns:
    Scalar `loss` and `accuracy` (means over the real examples), `count` (number
    of real examples) and `correct` (number classified correctly).
  """
  losses, hits = _losses_and_hits(logits, labels)
  mask = jnp.ones_like(losses) if mask is None else mask.astype(jnp.float32)
  count = mask.sum()
  correct = (hits * mask).sum()
  denominator = jnp.maximum(count, 1.0)
  return {
    "loss": (losses * mask).sum() / denominator,
    "accuracy": correct / denominator,
    "count": count,
    "correct": correct,
  }


@jax.jit
def eval_step(state: TrainState, batch: Batch) -> Metrics:
  """Evaluates the model (dropout off, batch norm with its running statistics) on a batch.

  Args:
    state: The train state.
    batch: `{"image", "label"}` as for `train_step`, plus an optional float or
      bool `"mask"` [B] marking real examples, so that padded batches count only
      their real rows.

  Returns:
    The `eval_metrics` of the batch: `loss`, `accuracy`, `count` and `correct`.
  """
  batch = as_batch(batch)
  logits = state.apply_fn(state.variables(), batch["image"], **mode_kwargs(state.apply_fn, train=False))
  return eval_metrics(logits, batch["label"], batch.get("mask"))
