"""NNX modules through the same pure steps as Linen ones: Linen's `apply(variables, images, ...)` for an NNX graph.

An NNX module holds its parameters; `train_step` wants them in the state. `split` takes them out as
plain nested dicts (`{"params": ..., "batch_stats": ...}`, the layout Linen uses), and `NNXApply`
puts them back into a fresh copy of the module for each call, so that the steps stay pure:

    apply_fn, variables = nnx_interop.split(model)   # or from_nnx(model, tx, rng) for a TrainState
    logits = apply_fn(variables, images, train=False)

What an NNX module may hold: `nnx.Param`s (trained), `nnx.BatchStat`s (batch-norm running statistics,
updated by train steps) and RNG streams (`nnx.Rngs`, e.g. for `nnx.Dropout`). Each call reseeds every
stream from the key it is given (`rngs={"dropout": key}`, as Linen takes it), so dropout masks come
from the train state's key and step. `train` switches the module with `module.train()` or
`module.eval()` (Dropout and BatchNorm), and is passed on to a `__call__` that takes `train` or
`deterministic`.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mnist_flax.core import modes

# The variable collections a train state carries, by NNX variable type (Linen's names).
COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


def _abstract(tree: Any) -> Any:
  """Shapes and dtypes only: nothing traced or on a device is kept."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), tree)


def _typed(key: jax.Array) -> jax.Array:
  """A typed PRNG key (`jax.random.key`), from a raw `jax.random.PRNGKey` or a typed one."""
  return key if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(key)


def _placeholder(x: jax.ShapeDtypeStruct) -> jax.Array:
  """A value of `x`'s shape and dtype for an RNG stream that is reseeded before use."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jnp.broadcast_to(jax.random.key(0), x.shape)
  return jnp.zeros(x.shape, x.dtype)


class NNXApply:
  """Linen's `apply` for an NNX module: `apply(variables, images, train=False, rngs=None, mutable=False)`.

  Holds the module's graph and the shapes of its state, never its arrays: it is a static field of
  a `TrainState`, and two of the same graph compare equal (one compiled step serves both).
  """

  def __init__(self, module: nnx.Module):
    """Reads `module`'s graph; raises `TypeError` for state other than params, batch stats and RNG streams."""
    graphdef, *states, rest = nnx.split(module, *COLLECTIONS.values(), nnx.RngState, ...)
    if jax.tree.leaves(rest):
      kinds = sorted({type(v).__name__ for _, v in nnx.to_flat_state(rest)})
      raise TypeError(
        f"{type(module).__name__} holds NNX variables of type {', '.join(kinds)}; a train state carries "
        "only nnx.Param, nnx.BatchStat and nnx.Rngs"
      )
    self.graphdef = graphdef
    self._states = tuple(_abstract(s) for s in states)
    self._key = (graphdef, *(jax.tree.structure(s) for s in self._states), *jax.tree.leaves(self._states))

  def __eq__(self, other: object) -> bool:
    return isinstance(other, NNXApply) and self._key == other._key

  def __hash__(self) -> int:
    return hash(self._key)

  def merge(self, variables: dict[str, Any]) -> nnx.Module:
    """A new module of this graph holding `variables` (`{"params": ..., "batch_stats": ...}` as `split` gives)."""
    params, batch_stats, rng_state = (jax.tree.map(lambda x: x, s) for s in self._states)  # Fresh copies.
    for state, name in ((params, "params"), (batch_stats, "batch_stats")):
      if name in variables:
        nnx.replace_by_pure_dict(state, variables[name])
    return nnx.merge(self.graphdef, params, batch_stats, jax.tree.map(_placeholder, rng_state))

  def __call__(
    self,
    variables: dict[str, Any],
    images: jax.Array,
    *,
    train: bool = False,
    rngs: dict[str, jax.Array] | None = None,
    mutable: bool | list[str] = False,
  ) -> jax.Array | tuple[jax.Array, dict[str, Any]]:
    """The module's output for `images`; with `mutable`, also the collections it names, as updated."""
    module = self.merge(variables)
    module.train() if train else module.eval()
    if rngs:
      _reseed(module, rngs.get("dropout", next(iter(rngs.values()))))
    out = module(images, **modes.mode_kwargs(module, train))
    if mutable is False:
      return out
    names = [name for name in COLLECTIONS if name in mutable and name != "params"]
    return out, {name: nnx.to_pure_dict(nnx.state(module, COLLECTIONS[name])) for name in names}


def _reseed(module: nnx.Module, key: jax.Array) -> None:
  """Gives each of the module's RNG streams its own key derived from `key` (streams in name order)."""
  tags = sorted({stream.key.tag for _, stream in nnx.iter_graph(module) if isinstance(stream, nnx.RngStream)})
  nnx.reseed(module, **{tag: jax.random.fold_in(_typed(key), i) for i, tag in enumerate(tags)})


def split(module: nnx.Module) -> tuple[NNXApply, dict[str, Any]]:
  """An NNX module as Linen holds a model: its `apply` and its variables as plain nested dicts.

  Returns:
    `(apply_fn, variables)`: `variables["params"]` are the module's `nnx.Param`s, and
    `variables["batch_stats"]` its `nnx.BatchStat`s where it has any.
  """
  apply_fn = NNXApply(module)
  variables = {name: nnx.to_pure_dict(nnx.state(module, kind)) for name, kind in COLLECTIONS.items()}
  return apply_fn, {name: v for name, v in variables.items() if name == "params" or v}


class NNXModel:
  """An NNX module's constructor with Linen's `init` and `apply`, for code that builds models from a key.

  Example:
    model = NNXModel(functools.partial(MyNet, width=64))  # Called as MyNet(width=64, rngs=nnx.Rngs(key)).
    variables = model.init(key)
    logits = model.apply(variables, images)
  """

  def __init__(self, constructor: Callable[..., nnx.Module]):
    """`constructor(rngs=nnx.Rngs(key))` builds the module (an `nnx.Module` subclass takes `rngs` so)."""
    self.constructor = constructor

  def build(self, key: jax.Array) -> nnx.Module:
    """The module, initialised from `key` (a raw `jax.random.PRNGKey` or a typed key)."""
    module = self.constructor(rngs=nnx.Rngs(_typed(key)))
    if not isinstance(module, nnx.Module):
      raise TypeError(f"{_name(self.constructor)} returned {type(module).__name__}, not an nnx.Module")
    return module

  def init(self, rngs: jax.Array | dict[str, jax.Array], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The variables of a module built from a key (or Linen's `{"params": key}`); no sample input is needed."""
    return split(self.build(rngs["params"] if isinstance(rngs, dict) else rngs))[1]

  @functools.cached_property
  def apply(self) -> NNXApply:
    """The module's `apply`, read off an abstract build (no arrays are computed)."""
    return NNXApply(nnx.eval_shape(lambda: self.build(jax.random.key(0))))


def _name(f: Any) -> str:
  while isinstance(f, functools.partial):
    f = f.func
  return getattr(f, "__qualname__", repr(f))
