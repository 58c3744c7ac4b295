"""The network a config trains: `config.model.factory`, the built-in CNN or any Linen or NNX module.

`config.model.factory` names a callable as "package.module:attribute", imported as Python imports
from the current folder; the section's other fields are its keyword arguments (lists as tuples).

- A factory that takes `rngs` (as an `nnx.Module` class does) builds an NNX module; it is called
  with `rngs=nnx.Rngs(key)` once per initialisation (each ensemble member its own key).
- Any other factory returns a Linen module (`nn.Module`), initialised with `model.init`.

The module maps float images in [0, 1], shaped [B, 28, 28, 1], to logits [B, 10]. Its `__call__`
may take `train` or `deterministic`; an NNX module may also switch its Dropout and BatchNorm with
`.train()` and `.eval()`. It may use dropout (Linen's "dropout" RNG; any `nnx.Rngs` stream) and batch
norm (Linen's "batch_stats"; NNX's `nnx.BatchStat`), which the train state carries.
"""

import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mnist_flax.core import models, modes, nnx_interop
from mnist_flax.errors import describe

BUILT_IN = "mnist_flax.core.models:CNN"
Model = nn.Module | nnx_interop.NNXModel
# Images through the checks: two, so that a network that mixes up the batch axis is caught.
CHECK_BATCH = 2


def is_built_in(model_config: ml_collections.ConfigDict) -> bool:
  """Whether the config trains the built-in CNN (`models.CNN`, which the CPU kernels can compute)."""
  return model_config.factory == BUILT_IN


def factory_kwargs(model_config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  """The factory's keyword arguments: the model section without `factory`, lists as tuples."""

  def frozen(value: Any) -> Any:
    return tuple(frozen(v) for v in value) if isinstance(value, list | tuple) else value

  items = model_config.items() if isinstance(model_config, dict) else model_config.to_dict().items()
  return {k: frozen(v) for k, v in items if k != "factory"}


def load_factory(spec: str) -> Callable[..., Any]:
  """The callable `spec` names ("package.module:attribute"); `ValueError` with one line when it cannot be had."""
  module_name, _, attribute = spec.partition(":") if isinstance(spec, str) else ("", "", "")
  if not (module_name and attribute):
    raise ValueError(f"config.model.factory must be 'package.module:callable', got {spec!r}")
  if os.getcwd() not in sys.path and "" not in sys.path:
    sys.path.append(os.getcwd())
  try:
    target = importlib.import_module(module_name)
  except Exception as e:  # noqa: BLE001 - importing runs the user's module: any error is theirs to see.
    hint = " (run where it imports, or add its folder to PYTHONPATH)" if isinstance(e, ImportError) else ""
    raise ValueError(
      f"config.model.factory {spec!r}: cannot import {module_name}: {describe(e, with_type=True)}{hint}"
    ) from e
  for name in attribute.split("."):
    if not hasattr(target, name):
      raise ValueError(f"config.model.factory {spec!r}: {module_name} has no {attribute}")
    target = getattr(target, name)
  if not callable(target):
    raise ValueError(f"config.model.factory {spec!r} is a {type(target).__name__}, not a callable")
  return target


def _builds_nnx(factory: Callable[..., Any]) -> bool:
  """Whether `factory` builds an NNX module: an `nnx.Module` class, or a function that takes `rngs`."""
  if isinstance(factory, type):
    return issubclass(factory, nnx.Module)
  try:
    return "rngs" in inspect.signature(factory).parameters
  except (TypeError, ValueError):
    return False


def create(model_config: ml_collections.ConfigDict) -> Model:
  """The config's model: a Linen module, or an `NNXModel` that builds the NNX module from a key.

  Raises:
    ValueError: one line, when the factory cannot be imported or called with the section's arguments.
  """
  spec = model_config.factory
  factory, kwargs = load_factory(spec), factory_kwargs(model_config)
  if _builds_nnx(factory):
    return nnx_interop.NNXModel(functools.partial(factory, **kwargs))
  try:
    model = factory(**kwargs)
  except Exception as e:  # noqa: BLE001 - the user's code: its error, in one line.
    raise ValueError(f"config.model.factory {spec!r} failed: {describe(e, with_type=True)}") from e
  if not isinstance(model, nn.Module):
    raise ValueError(
      f"config.model.factory {spec!r} returned a {type(model).__name__}; it must return a Linen nn.Module, "
      "or take rngs and return an nnx.Module"
    )
  return model


def check(model: Model, spec: str = "the model") -> None:
  """Builds `model` and runs it on zeros, computing nothing; `ValueError` unless it maps images to [B, 10] logits."""
  images = jax.ShapeDtypeStruct((CHECK_BATCH, *models.IMAGE_SHAPE), jnp.float32)
  mode_kwargs = functools.partial(modes.mode_kwargs, train=False)

  def logits(x: jax.Array) -> jax.Array:
    variables = model.init(jax.random.PRNGKey(0), x, **mode_kwargs(model.apply))
    return model.apply(variables, x, **mode_kwargs(model.apply))

  try:
    out = jax.eval_shape(logits, images)
  except Exception as e:  # noqa: BLE001 - the user's code: its error, in one line.
    raise ValueError(
      f"{spec} cannot be built and run on images [{CHECK_BATCH}, 28, 28, 1]: {describe(e, with_type=True)}"
    ) from e
  shape = getattr(out, "shape", None)
  if shape != (CHECK_BATCH, models.NUM_CLASSES) or not jnp.issubdtype(out.dtype, jnp.floating):
    got = f"{out.dtype}{list(shape)}" if shape is not None else type(out).__name__
    raise ValueError(
      f"{spec} maps images [{CHECK_BATCH}, 28, 28, 1] to {got}; it must return float logits "
      f"[{CHECK_BATCH}, {models.NUM_CLASSES}]"
    )


def summary(model: Model) -> str:
  """Flax's table of the model's layers, output shapes and parameter counts for one image."""
  images = jnp.zeros((1, *models.IMAGE_SHAPE), jnp.float32)
  console = {"width": 110, "force_terminal": sys.stdout.isatty(), "force_jupyter": False}
  if isinstance(model, nnx_interop.NNXModel):
    module = model.build(jax.random.PRNGKey(0))
    module.eval()
    return nnx.tabulate(module, images, console_kwargs=console)
  rng = jax.random.PRNGKey(0)
  table = nn.tabulate(model, {"params": rng, "dropout": rng}, console_kwargs=console)
  return table(images, **modes.mode_kwargs(model.apply, train=False))
