"""`TrainState`: params, optimizer state, step and PRNG key in one pytree (plus `batch_stats` for batch norm).

Built from a config (`create_train_state`), from any Linen model's variables (`create_state`) or from an
NNX module (`from_nnx`; `to_nnx` gives the module back with the state's parameters).
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from flax.training import train_state

from mnist_flax.core import models, modes, networks, nnx_interop
from mnist_flax.data import input_pipeline


class TrainState(train_state.TrainState):
  """Flax's `TrainState` plus `rng`, a raw uint32 `jax.random.PRNGKey`.

  Pytree leaves: `step` (int32 scalar), `params`, `opt_state` and `rng`;
  `apply_fn` and `tx` are static. Dropout keys are derived from `rng` and `step`,
  so a train step is a deterministic function of the state and the batch.
  """

  rng: jax.Array = flax.struct.field(pytree_node=True, default=None)

  @classmethod
  def create(cls, *, apply_fn, params, tx, rng, **kwargs) -> "TrainState":
    """Creates a state at step 0 with `tx` initialised on `params`.

    Args:
      apply_fn: The model's apply function, `model.apply`.
      params: The model parameters (the `"params"` collection).
      tx: Any optax gradient transformation.
      rng: A raw `jax.random.PRNGKey` (a typed `jax.random.key` is converted).
      **kwargs: Further fields of a subclass.
    """
    rng = jnp.asarray(rng)
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
      rng = jax.random.key_data(rng)
    if rng.dtype != jnp.uint32 or rng.shape != (2,):
      raise ValueError(f"rng must be a raw jax.random.PRNGKey (uint32[2]), got {rng.dtype}{list(rng.shape)}")
    state = super().create(apply_fn=apply_fn, params=params, tx=tx, rng=rng, **kwargs)
    return state.replace(step=jnp.zeros((), jnp.int32))

  def variables(self, params: Any = None) -> dict[str, Any]:
    """The model variables for `apply_fn`: `{"params": params}` (the state's own when None)."""
    return {"params": self.params if params is None else params}

  def apply_gradients(self, *, grads: Any, value: Any = None, value_fn: Any = None, **kwargs) -> "TrainState":
    """One update of `tx` with `grads`: the new state at `step + 1`, `kwargs` replacing fields.

    An optimizer that takes more than the gradient (an `optax.GradientTransformationExtraArgs`, such
    as `reduce_on_plateau` or `lbfgs`) also gets optax's extra arguments: `value` (the loss),
    `grad` and `value_fn` (the loss as a function of the parameters), where given.
    """
    extra = {}
    if isinstance(self.tx, optax.GradientTransformationExtraArgs):
      given = {"value": value, "grad": grads, "value_fn": value_fn}
      extra = {k: v for k, v in given.items() if v is not None}
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params, **extra)
    params = optax.apply_updates(self.params, updates)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **kwargs)


class BatchNormTrainState(TrainState):
  """`TrainState` plus `batch_stats`, the running statistics of a model with `nn.BatchNorm` layers.

  `train_step` applies such a model with `batch_stats` mutable (batch statistics, the running ones
  updated) and `eval_step` with the running statistics. Create it with
  `BatchNormTrainState.create(..., batch_stats=variables["batch_stats"])`; checkpoints of it hold
  the statistics too.
  """

  batch_stats: Any = flax.struct.field(pytree_node=True, default_factory=dict)

  def variables(self, params: Any = None) -> dict[str, Any]:
    """The model variables for `apply_fn`: `params` (the state's own when None) and `batch_stats`."""
    return {**super().variables(params), "batch_stats": self.batch_stats}


def create_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate at each step: linear warm-up (capped at the run's length), then cosine decay."""
  total_steps = config.num_epochs * steps_per_epoch
  warmup_steps = min(int(config.warmup_epochs * steps_per_epoch), total_steps - 1)
  end_value = config.learning_rate * config.final_learning_rate_factor
  if warmup_steps == 0:
    return optax.cosine_decay_schedule(config.learning_rate, total_steps, end_value / config.learning_rate)
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup_steps, total_steps, end_value)


def member_learning_rates(config: ml_collections.ConfigDict) -> list[float]:
  """The peak learning rate of each ensemble member.

  `config.member_learning_rates` if given (a sweep), else `config.learning_rate` for all
  `config.ensemble_size` members.
  """
  rates = tuple(config["member_learning_rates"])
  return [float(r) for r in rates] if rates else [float(config.learning_rate)] * config["ensemble_size"]


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam following `create_schedule`.

  For a learning-rate sweep (`config.member_learning_rates`) the schedule's peak is a hyperparameter
  held in the optimizer state (`optax.inject_hyperparams`, as `peak_learning_rate`), so that members
  stacked in one vmapped state can each follow the schedule scaled to their own peak.
  """
  schedule = create_schedule(config, steps_per_epoch)
  if not config["member_learning_rates"]:
    return optax.adam(schedule)
  base = float(config.learning_rate)

  def adam(peak_learning_rate: jax.Array) -> optax.GradientTransformation:
    return optax.adam(lambda count: schedule(count) * (peak_learning_rate / base))

  return optax.inject_hyperparams(adam)(peak_learning_rate=base)


def trains_ensemble(config: ml_collections.ConfigDict) -> bool:
  """Whether the config's train state stacks ensemble members (several, or a learning-rate sweep)."""
  return config["ensemble_size"] > 1 or bool(config["member_learning_rates"])


def own_member_batches(config: ml_collections.ConfigDict | dict) -> bool:
  """Whether the config's stacked members each draw their own batches (`config.member_batches` "own").

  Each then has its own data order and augmentation, as runs of different seeds have; with "shared"
  every member trains on the same batches, as runs of one seed do.
  """
  return config["member_batches"] == "own" and trains_ensemble(config)


def create_state(
  apply_fn: Any, variables: dict[str, Any], tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
  """A state at step 0 for a model's variables: a `BatchNormTrainState` where they hold `batch_stats`.

  Args:
    apply_fn: The model's apply function (`model.apply`, or an `nnx_interop.NNXApply`).
    variables: The model's variables, `{"params": ...}` and optionally `{"batch_stats": ...}`.
    tx: Any optax gradient transformation.
    rng: A raw `jax.random.PRNGKey`, the state's dropout key.
  """
  if "batch_stats" in variables:
    return BatchNormTrainState.create(
      apply_fn=apply_fn, params=variables["params"], tx=tx, rng=rng, batch_stats=variables["batch_stats"]
    )
  return TrainState.create(apply_fn=apply_fn, params=variables["params"], tx=tx, rng=rng)


def from_nnx(module: nnx.Module, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """A state at step 0 holding an NNX module's parameters and batch statistics, for `train_step` and `eval_step`.

  The parameters become plain nested dicts (optax and orbax handle them as Linen's); the module is
  rebuilt from them in each step (`nnx_interop.NNXApply`), so the steps stay pure. Dropout keys come
  from `rng` and the step, as for Linen: the module's own `nnx.Rngs` streams are reseeded each step.

  Example:
    model = MyNet(rngs=nnx.Rngs(0))
    state = from_nnx(model, optax.adam(1e-3), jax.random.PRNGKey(1))
    state, metrics = train_step(state, batch)
    trained = to_nnx(state)  # MyNet with the trained parameters.

  Args:
    module: The NNX module, holding only `nnx.Param`, `nnx.BatchStat` and `nnx.Rngs` state.
    tx: Any optax gradient transformation.
    rng: A raw `jax.random.PRNGKey` (or a typed key), the state's dropout key.
  """
  apply_fn, variables = nnx_interop.split(module)
  return create_state(apply_fn, variables, tx, rng)


def to_nnx(state: TrainState) -> nnx.Module:
  """The NNX module of a state made by `from_nnx` (or an NNX config), holding the state's variables."""
  if not isinstance(state.apply_fn, nnx_interop.NNXApply):
    raise TypeError("to_nnx takes a state of an NNX module (from_nnx); this one holds a Linen model")
  return state.apply_fn.merge(state.variables())


def create_train_state(
  config: ml_collections.ConfigDict,
  rng: jax.Array,
  steps_per_epoch: int | None = None,
  model: networks.Model | None = None,
) -> TrainState:
  """Initialises the config's model and its Adam optimizer.

  Args:
    config: A run config (see `configs/default.py`).
    rng: A raw PRNG key; split into the init key and the state's dropout key.
    steps_per_epoch: Train steps per epoch, for the learning-rate schedule;
      defaults to full batches over the 60,000 MNIST training images.
    model: The model to train (default: `networks.create(config.model)`): a Linen module or an
      `nnx_interop.NNXModel`.

  Returns:
    The initial `TrainState`, a `BatchNormTrainState` when the model has batch norm.
  """
  if steps_per_epoch is None:
    steps_per_epoch = input_pipeline.steps_per_epoch(config.batch_size)
  model = networks.create(config.model) if model is None else model
  init_rng, state_rng = jax.random.split(rng)
  images = jnp.zeros((1, *models.IMAGE_SHAPE), jnp.float32)
  variables = model.init({"params": init_rng, "dropout": init_rng}, images, **modes.mode_kwargs(model.apply, False))
  return create_state(model.apply, variables, create_optimizer(config, steps_per_epoch), state_rng)


def create_ensemble_state(
  config: ml_collections.ConfigDict,
  rng: jax.Array,
  steps_per_epoch: int | None = None,
  model: networks.Model | None = None,
) -> TrainState:
  """The run's train state: one model, or `config.ensemble_size` members stacked on a leading axis.

  Members are created by `create_train_state` under `jax.vmap`, each from its own key (so its own
  initialisation and dropout keys) and with its own peak learning rate in a sweep; every leaf,
  `step` included, then has a leading axis of length `ensemble_size`. With one member (and no
  sweep) this is exactly `create_train_state(config, rng, steps_per_epoch, model)`.

  Args:
    config: A run config (see `configs/default.py`).
    rng: A raw PRNG key, split into one key per member.
    steps_per_epoch: As for `create_train_state`.
    model: As for `create_train_state`.
  """
  if not trains_ensemble(config):
    return create_train_state(config, rng, steps_per_epoch, model)
  rates, sweep = member_learning_rates(config), bool(config["member_learning_rates"])

  def member(key: jax.Array, rate: jax.Array) -> TrainState:
    state = create_train_state(config, key, steps_per_epoch, model)
    if not sweep:  # One rate for all: no hyperparameter in the optimizer state.
      return state
    hyperparams = {**state.opt_state.hyperparams, "peak_learning_rate": rate}
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))

  # Compiled: run op by op, the vmapped initialisation takes seconds even for small members.
  return jax.jit(jax.vmap(member))(jax.random.split(rng, len(rates)), jnp.asarray(rates, jnp.float32))


def is_ensemble(state: TrainState) -> bool:
  """Whether `state` holds ensemble members stacked on a leading axis (see `create_ensemble_state`)."""
  return jnp.ndim(state.step) == 1
