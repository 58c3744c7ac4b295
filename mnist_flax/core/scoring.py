"""Evaluation on a whole split: loss, accuracy, class probabilities and the confusion matrix."""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from mnist_flax.core import modes, steps
from mnist_flax.core.models import NUM_CLASSES
from mnist_flax.core.train_state import TrainState, is_ensemble
from mnist_flax.data import input_pipeline
from mnist_flax.run import parallel


def batched_with_mask(split: dict[str, np.ndarray], batch_size: int) -> tuple[np.ndarray, ...]:
  """Pads a split to whole batches: images [nb, bs, 28, 28, 1], labels and mask [nb, bs]."""
  n = len(split["label"])
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  images = np.concatenate([split["image"], np.zeros((pad, *split["image"].shape[1:]), np.uint8)])
  labels = np.concatenate([split["label"], np.zeros((pad,), np.int32)])
  mask = np.arange(num_batches * batch_size) < n
  shape = (num_batches, batch_size)
  return images.reshape(*shape, *images.shape[1:]), labels.reshape(shape), mask.reshape(shape)


def make_evaluate(mesh: jax.sharding.Mesh, apply_fn: Callable[..., jax.Array] | None = None):
  """Compiles evaluation of a padded split shaped [num_batches, batch, ...] with a mask.

  `apply_fn` (default: the state's own) computes the logits from the state's parameters, e.g. the
  same model with other convolutions (`run.backend.eval_model`).

  The returned function maps `(state, images, labels, mask)` to per-batch `steps.eval_metrics`,
  the class probabilities [num_batches, batch, classes] and, for a stacked ensemble state, each
  member's per-batch metrics (leaves [num_batches, members]; empty otherwise), replicated on
  every device. An ensemble's probabilities and metrics are those of the mean of its members'
  probabilities.
  """
  sharding = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)

  def evaluate(state, images, labels, mask):
    apply = apply_fn or state.apply_fn

    def one(batch):
      image, label, m = jax.lax.with_sharding_constraint(batch, sharding)
      x = input_pipeline.to_unit_float(image)
      if not is_ensemble(state):
        logits = apply(state.variables(), x, **modes.mode_kwargs(apply, train=False))
        return steps.eval_metrics(logits, label, m), jax.nn.softmax(logits), {}
      logits, members = steps.ensemble_logits(apply, state.variables(), x)
      per_member = jax.vmap(steps.eval_metrics, in_axes=(0, None, None))(members, label, m)
      return steps.eval_metrics(logits, label, m), jax.nn.softmax(logits), per_member

    return jax.lax.map(one, (images, labels, mask))

  return jax.jit(evaluate, out_shardings=replicated)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
  """Counts [true label, predicted label] pairs into a [num_classes, num_classes] int64 matrix.

  Raises:
    ValueError: the lengths differ or a label is outside `[0, num_classes)`.
  """
  labels, predictions = np.asarray(labels, np.int64).reshape(-1), np.asarray(predictions, np.int64).reshape(-1)
  if len(labels) != len(predictions):
    raise ValueError(f"inconsistent lengths: {len(labels)} labels, {len(predictions)} predictions")
  for name, values in (("labels", labels), ("predictions", predictions)):
    if values.size and (values.min() < 0 or values.max() >= num_classes):
      raise ValueError(f"{name} must be in [0, {num_classes}), got values from {values.min()} to {values.max()}")
  return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
  """The fraction of each true class predicted correctly (NaN for a class with no examples)."""
  totals = confusion.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.diag(confusion) / totals


class Evaluator:
  """Evaluates train states on one split, kept on the devices in fixed, padded batches.

  Every call runs the same compiled program on the same batches, so a state
  evaluated during training and the same state restored later on the same
  devices give identical numbers.
  """

  def __init__(
    self,
    split: dict[str, np.ndarray],
    batch_size: int,
    mesh: jax.sharding.Mesh,
    apply_fn: Callable[..., jax.Array] | None = None,
  ):
    """Places `split` ({"image": uint8 [N, 28, 28, 1], "label": int [N]}) on `mesh` in batches of `batch_size`.

    `apply_fn`, if given, replaces the evaluated states' own (see `make_evaluate`).
    """
    self.labels = np.asarray(split["label"])
    self._batches = parallel.put_replicated(batched_with_mask(split, batch_size), mesh)
    self._evaluate = make_evaluate(mesh, apply_fn)

  def __call__(self, state: TrainState) -> dict[str, Any]:
    """Returns `loss`, `accuracy`, `count` and the `probabilities` [N, classes] (numpy) of `state`.

    For a stacked ensemble state these are the ensemble's, and `members` lists each member's
    `loss` and `accuracy`.
    """
    per_batch, probabilities, per_member = jax.device_get(self._evaluate(state, *self._batches))
    loss, accuracy, count = _totals(per_batch)
    probabilities = np.asarray(probabilities).reshape(-1, probabilities.shape[-1])[: len(self.labels)]
    result = {"loss": float(loss), "accuracy": float(accuracy), "count": float(count), "probabilities": probabilities}
    if per_member:
      losses, accuracies, _ = _totals(per_member)
      result["members"] = [{"loss": float(x), "accuracy": float(a)} for x, a in zip(losses, accuracies, strict=True)]
    return result


def _totals(per_batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Whole-split `(loss, accuracy, count)` from per-batch metrics [num_batches] (or [num_batches, members])."""
  count = np.sum(per_batch["count"], axis=0, dtype=np.float64)
  loss = np.sum(per_batch["loss"].astype(np.float64) * per_batch["count"], axis=0) / count
  accuracy = np.sum(per_batch["correct"], axis=0, dtype=np.float64) / count
  return loss, accuracy, count
