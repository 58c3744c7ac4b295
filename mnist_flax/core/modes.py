"""How a model is told whether it trains: `mode_kwargs`, read off its `__call__` when traced."""

import functools
import inspect
from typing import Any

import flax.linen as nn
from flax import nnx


def mode_kwargs(apply_fn: Any, train: bool) -> dict[str, bool]:
  """How to tell the model whether it trains, read off its `__call__` (at trace time: free at run time).

  Args:
    apply_fn: `model.apply` of a Linen module, an `nnx_interop.NNXApply`, a function taking the same
      arguments, or an NNX module itself.
    train: Whether the call is a training one (dropout on, batch statistics updated).

  Returns:
    `{"train": train}` for a `__call__` with a `train` argument (or `**kwargs`, or a plain
    function), `{"deterministic": not train}` for one with `deterministic` instead, and `{}` for a
    `__call__` that takes only the images. An NNX module's `**kwargs` do not count: those (as
    `nnx.Sequential`'s) pass arguments on to its layers, and NNX modules take their mode from
    `.train()` and `.eval()`.
  """
  while isinstance(apply_fn, functools.partial):
    apply_fn = apply_fn.func
  module = getattr(apply_fn, "__self__", None)
  call = type(module).__call__ if isinstance(module, nn.Module) else apply_fn
  if isinstance(apply_fn, nnx.Module):
    call = type(apply_fn).__call__
  try:
    parameters = inspect.signature(call).parameters
  except (TypeError, ValueError):  # No signature to read (a builtin): the library's own convention.
    return {"train": train}
  if "train" in parameters:
    return {"train": train}
  if "deterministic" in parameters:
    return {"deterministic": not train}
  if not isinstance(apply_fn, nnx.Module) and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    return {"train": train}
  return {}
