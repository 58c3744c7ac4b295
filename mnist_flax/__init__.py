"""mnist-flax: train Flax CNNs, or any Linen or NNX network, on MNIST with pure, jitted, sharded steps.

The names below load their modules on first use (PEP 562), so `python -m mnist_flax.<command>`
can answer Ctrl-C before jax is imported.
"""

import importlib
from typing import Any

_EXPORTS = {
  "BatchNormTrainState": "mnist_flax.core.train_state",
  "CNN": "mnist_flax.core.models",
  "Predictor": "mnist_flax.tools.trained_model",
  "TrainState": "mnist_flax.core.train_state",
  "UsageError": "mnist_flax.errors",
  "create_ensemble_state": "mnist_flax.core.train_state",
  "create_model": "mnist_flax.core.models",
  "create_optimizer": "mnist_flax.core.train_state",
  "create_state": "mnist_flax.core.train_state",
  "create_train_state": "mnist_flax.core.train_state",
  "ensemble_train_step": "mnist_flax.core.steps",
  "eval_step": "mnist_flax.core.steps",
  "from_nnx": "mnist_flax.core.train_state",
  "load_checkpoint": "mnist_flax.tools.trained_model",
  "train_and_evaluate": "mnist_flax.train",
  "to_nnx": "mnist_flax.core.train_state",
  "train_step": "mnist_flax.core.steps",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name not in _EXPORTS:
    raise AttributeError(f"module 'mnist_flax' has no attribute {name!r}")
  value = getattr(importlib.import_module(_EXPORTS[name]), name)
  globals()[name] = value  # Later lookups skip this function.
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
