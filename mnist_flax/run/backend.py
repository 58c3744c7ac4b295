"""Every "auto" of `config.runtime`, resolved for the backend in one place: `choose`.

The figures behind each choice are for the seed network on the 2-core CPU machine; GPUs and TPUs
get Flax's own layers and whole-epoch dispatches.
"""

import dataclasses

import jax
import ml_collections

from mnist_flax import kernels
from mnist_flax.core import networks, scoring, train_state
from mnist_flax.data import input_pipeline

# Steps per dispatch on CPU: chunks short enough for a responsive progress bar and Ctrl-C.
CPU_STEPS_PER_DISPATCH = 16
# Slices of each batch on CPU: XLA:CPU runs them on its cores side by side, about 8 % faster on 2 cores.
CPU_MICROBATCHES = 4


@dataclasses.dataclass(frozen=True)
class Choices:
  """How a run computes on its backend.

  Attributes:
    platform: `jax.default_backend()`: "cpu", "gpu" or "tpu".
    train_conv: The training model's `kernels.IMPLS` entry.
    eval_conv: The same for evaluation and prediction (forward passes only).
    microbatches: Slices each train step splits its batch into (`steps.train_step`).
    steps_per_dispatch: Train steps per compiled chunk.
    unrolled: Whether a chunk's steps are unrolled in the program rather than a `lax.scan` loop.
  """

  platform: str
  train_conv: str
  eval_conv: str
  microbatches: int
  steps_per_dispatch: int
  unrolled: bool

  def describe(self) -> str:
    """One line for the log."""
    loop = "unrolled" if self.unrolled else "rolled"
    layers = f"convolutions {self.train_conv} (evaluation {self.eval_conv})"
    if self.train_conv == self.eval_conv == "flax":
      layers = "the model's own Flax layers"
    return f"{layers}, {self.microbatches} slice(s) per batch, {self.steps_per_dispatch} steps per dispatch ({loop})"


def choose(config: ml_collections.ConfigDict, steps_per_epoch: int | None = None) -> Choices:
  """The config's runtime choices on the default backend: its own values, "auto" (or 0) resolved.

  Args:
    config: A run config.
    steps_per_epoch: Train steps per epoch (default: full batches over the 60,000 training images).
  """
  runtime, platform = config.runtime, jax.default_backend()
  if steps_per_epoch is None:
    steps_per_epoch = input_pipeline.steps_per_epoch(config.batch_size)
  train_conv = _train_conv(config, platform)
  return Choices(
    platform=platform,
    train_conv=train_conv,
    eval_conv=_eval_conv(config, platform, train_conv),
    microbatches=runtime.microbatches or _microbatches(config, platform),
    steps_per_dispatch=steps_per_dispatch(runtime.steps_per_dispatch, steps_per_epoch, platform),
    unrolled=_unrolled(runtime.scan, platform, train_conv),
  )


def _train_conv(config: ml_collections.ConfigDict, platform: str) -> str:
  """For "auto", Flax's layers on GPU, TPU and for other models; for the CNN on CPU, patches and the pooled block.

  On CPU the default network steps in 16 ms pooled, 19 ms with patches, 24 ms with XLA's convolutions
  and 60 ms with Flax's layers; two vmapped members in 48 ms with patches, 137 ms with XLA's
  convolutions (see `mnist_flax.kernels`). The pooled block ran 1.6x slower for members.
  """
  if config.runtime.conv_impl != "auto":
    return config.runtime.conv_impl
  if platform != "cpu" or not networks.is_built_in(config.model):
    return "flax"
  return "patches" if train_state.trains_ensemble(config) else "pooled"


def _eval_conv(config: ml_collections.ConfigDict, platform: str, train_conv: str) -> str:
  """For "auto", XLA's convolutions on CPU for one model (forward only, twice as fast as patch products)."""
  if config.runtime.conv_impl != "auto":
    return config.runtime.conv_impl
  if platform != "cpu" or not networks.is_built_in(config.model):
    return "flax"
  return train_conv if train_state.trains_ensemble(config) else "xla"


def _unrolled(scan: str, platform: str, train_conv: str) -> bool:
  """For "auto", rolled, except on CPU with XLA's convolutions.

  Those run about 9x slower in a rolled loop on CPU (the seed network: 738 against 81 ms per step);
  patch products run as fast rolled and compile 5x faster.
  """
  if scan != "auto":
    return scan == "unrolled"
  return platform == "cpu" and train_conv in ("flax", "xla")


def _microbatches(config: ml_collections.ConfigDict, platform: str) -> int:
  """4 slices on CPU for one model whose batch splits evenly; GPUs and TPUs fill their cores with one batch."""
  split = platform == "cpu" and not train_state.trains_ensemble(config) and config.batch_size % CPU_MICROBATCHES == 0
  return CPU_MICROBATCHES if split else 1


def steps_per_dispatch(configured: int, steps_per_epoch: int, platform: str) -> int:
  """Train steps per compiled chunk: `configured` (capped at the epoch), or for 0 the backend's default.

  On CPU the default is the divisor of `steps_per_epoch` nearest to 16 within [8, 32] (16 itself
  when there is none), so that one compiled chunk serves the whole epoch; elsewhere the epoch.
  """
  if configured:
    return min(configured, steps_per_epoch)
  if platform != "cpu":
    return steps_per_epoch
  divisors = [d for d in range(8, 33) if steps_per_epoch % d == 0]
  best = min(divisors, key=lambda d: (abs(d - CPU_STEPS_PER_DISPATCH), d), default=CPU_STEPS_PER_DISPATCH)
  return min(best, steps_per_epoch)


def train_model(config: ml_collections.ConfigDict, choices: Choices) -> networks.Model:
  """The config's model as training runs it: the built-in CNN with `choices.train_conv`, any other as written."""
  return _model(config, choices.train_conv)


def eval_model(config: ml_collections.ConfigDict, choices: Choices) -> networks.Model:
  """The config's model as evaluation and prediction run it: the same parameters."""
  return _model(config, choices.eval_conv)


def _model(config: ml_collections.ConfigDict, conv_impl: str) -> networks.Model:
  if networks.is_built_in(config.model):
    return kernels.cnn(config.model, conv_impl)
  return networks.create(config.model)


def evaluator(
  config: ml_collections.ConfigDict, choices: Choices, split: dict, mesh: jax.sharding.Mesh
) -> scoring.Evaluator:
  """Scores a state of the config on `split` (e.g. the test set) as the loop does: `eval_model`'s forward pass."""
  return scoring.Evaluator(split, config.runtime.eval_batch_size, mesh, eval_model(config, choices).apply)
