"""A trained model from a workdir: its config, its checkpointed state, and a batched predictor."""

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np

from mnist_flax.core import models, modes, networks, steps
from mnist_flax.core.train_state import TrainState, is_ensemble
from mnist_flax.errors import UsageError, describe
from mnist_flax.run import backend, checkpoints, compilation_cache, config_checks, parallel, snapshot

PREDICT_BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A run's config and its train state restored at `step` onto the current devices."""

  config: ml_collections.ConfigDict
  state: TrainState
  step: int
  mesh: jax.sharding.Mesh
  choices: backend.Choices  # How this backend computes the model (`backend.choose`).


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with, from `<workdir>/config.json`; its model's factory must import here."""
  path = os.path.join(workdir, config_checks.CONFIG_FILE)
  if not workdir:
    raise UsageError("--workdir is empty; give the folder of a run")
  if not os.path.isdir(workdir):
    raise UsageError(f"workdir {workdir} is not a folder")
  if not os.path.isfile(path):
    raise UsageError(f"{path} is missing: {workdir} is not a run folder written by main.py")
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise UsageError(f"cannot read {path}: {describe(e)}") from e
  if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
    raise UsageError(f"{path} is not a run config written by main.py")
  if not isinstance(saved.get("runtime"), dict):
    raise UsageError(f"{path} has no runtime section: the run was written by an older mnist-flax; train it again")
  config = ml_collections.ConfigDict(config_checks.as_current(saved))
  try:  # The run's own network, which must import here (a factory of the user's, in their folder).
    networks.create(config.model)
  except ValueError as e:
    raise UsageError(f"{path}: {e}") from e
  return config


def load_checkpoint(workdir: str, step: int | None = None) -> Checkpoint:
  """Restores the latest (or the given) checkpoint of a run onto every current device.

  Safe beside a run that is still training in `workdir`: nothing there is written.

  Args:
    workdir: A run folder written by `train_and_evaluate`.
    step: The checkpoint step; None for the latest.

  Raises:
    UsageError: the folder holds no run, no such checkpoint, or an unreadable one.
  """
  config = load_config(workdir)
  compilation_cache.use(config.runtime.compilation_cache)  # The run's own cache, if it had one.
  directory = checkpoints.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise UsageError(f"no checkpoint in {directory}: the run has not saved one yet")
  manager = checkpoints.open_read_only(workdir)
  try:
    available = list(manager.all_steps())
    if not available:
      raise UsageError(f"no checkpoint in {directory}: the run has not saved one yet")
    if step is not None and step not in available:
      raise UsageError(f"no checkpoint at step {step} in {directory}; there are {', '.join(map(str, available))}")
    mesh = parallel.create_mesh()
    target = snapshot.snapshot_target(config, mesh)
    try:
      if step is None:  # The newest readable one, skipping damaged ones with a warning.
        item, _ = checkpoints.restore_newest_readable(manager, target, workdir, move=False)
      else:
        item, _ = checkpoints.restore_latest(manager, target, step)
    except UsageError:
      raise
    except Exception as e:  # noqa: BLE001 - orbax raises many types for a damaged checkpoint.
      step_name = step if step is not None else manager.latest_step()
      raise UsageError(f"cannot restore the checkpoint {directory}/{step_name}: {describe(e)}") from e
  finally:
    manager.close()
  state = item["state"]
  return Checkpoint(config, state, snapshot.state_step(state), mesh, backend.choose(config))


def as_model_input(images: np.ndarray) -> np.ndarray:
  """Checks a batch of images and returns it as float32 [N, 28, 28, 1] in [0, 1].

  Args:
    images: uint8 [N, 28, 28] or [N, 28, 28, 1] (light digits on black, as in MNIST),
      any integer type with values in 0..255, or floats in [0, 1].
  """
  x = np.asarray(images)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[1:] != models.IMAGE_SHAPE:
    raise ValueError(f"images must be shaped [N, 28, 28] or [N, 28, 28, 1], got {list(np.shape(images))}")
  if np.issubdtype(x.dtype, np.integer) and not np.issubdtype(x.dtype, np.bool_):
    if x.size and (x.min() < 0 or x.max() > 255):
      raise ValueError("integer images must have values in 0..255")
    return x.astype(np.float32) / np.float32(255)
  if np.issubdtype(x.dtype, np.floating):
    if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
      raise ValueError("float images must have finite values in [0, 1]")
    return x.astype(np.float32)
  raise ValueError(f"images must be uint8 or float, got {x.dtype}")


class Predictor:
  """Class probabilities from a trained model (or ensemble: the mean of its members'), for batches of any size.

  Inputs are padded to a fixed batch shape, so the model is compiled once
  whatever the number of images.

  Example:
    predictor = Predictor.from_workdir("workdirs/default")
    probabilities = predictor(images)  # [N, 10]
  """

  def __init__(self, checkpoint: Checkpoint, batch_size: int = PREDICT_BATCH_SIZE):
    """Wraps a restored checkpoint; `batch_size` is rounded up to a multiple of the device count."""
    self.checkpoint = checkpoint
    devices = checkpoint.mesh.size
    self.batch_size = -(-batch_size // devices) * devices
    model = backend.eval_model(checkpoint.config, checkpoint.choices)
    self._variables = checkpoint.state.variables()
    self._batch_sharding = parallel.batch_sharding(checkpoint.mesh)
    self.traces = 0

    ensemble = is_ensemble(checkpoint.state)

    def probabilities(variables, images):
      self.traces += 1
      if ensemble:  # The mean of the members' probabilities.
        return jax.nn.softmax(steps.ensemble_logits(model.apply, variables, images)[0])
      return jax.nn.softmax(model.apply(variables, images, **modes.mode_kwargs(model.apply, train=False)))

    self._probabilities = jax.jit(probabilities, out_shardings=parallel.replicated(checkpoint.mesh))

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None, batch_size: int = PREDICT_BATCH_SIZE) -> "Predictor":
    """Restores the latest (or the given) checkpoint of a run; see `load_checkpoint`."""
    return cls(load_checkpoint(workdir, step), batch_size)

  @property
  def step(self) -> int:
    """The training step of the restored parameters."""
    return self.checkpoint.step

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """Returns float32 [N, 10] class probabilities for `images` (see `as_model_input`)."""
    x = as_model_input(images)
    n, bs = len(x), self.batch_size
    padded = np.zeros((-(-n // bs) * bs, *models.IMAGE_SHAPE), np.float32)
    padded[:n] = x
    out = []
    for i in range(0, len(padded), bs):
      chunk = padded[i : i + bs]
      batch = jax.make_array_from_callback(chunk.shape, self._batch_sharding, lambda index, c=chunk: c[index])
      out.append(np.asarray(jax.device_get(self._probabilities(self._variables, batch))))
    return np.concatenate(out)[:n] if out else np.zeros((0, models.NUM_CLASSES), np.float32)
