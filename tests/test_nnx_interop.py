"""NNX modules through `TrainState`, `train_step`, `eval_step` and `ensemble_train_step`, as Linen ones go."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from configs import nnx_cnn
from mnist_flax import (
  BatchNormTrainState,
  TrainState,
  ensemble_train_step,
  eval_step,
  from_nnx,
  to_nnx,
  train_step,
)
from mnist_flax.core import models, modes, nnx_interop
from mnist_flax.data import input_pipeline
from tests.conftest import assert_train_step_is_pure

# Lists of submodules: nnx.List where Flax has it (0.12 on), a plain list before.
Layers = getattr(nnx, "List", list)


class BatchNormMLP(nnx.Module):
  """Dense, batch norm, ReLU, dropout, dense: every kind of state a train state carries."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.layers = Layers([nnx.Linear(784, 32, rngs=rngs), nnx.Linear(32, 10, rngs=rngs)])
    self.norm = nnx.BatchNorm(32, momentum=0.5, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.norm(self.layers[0](x.reshape(x.shape[0], -1))))
    return self.layers[1](self.dropout(x))


class TrainArgumentMLP(nnx.Module):
  """An NNX module told its mode by an argument, as some write them."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(784, 10, rngs=rngs)
    self.dropout = nnx.Dropout(0.9, rngs=rngs)

  def __call__(self, x, train: bool):
    return self.linear(self.dropout(x.reshape(x.shape[0], -1), deterministic=not train))


class Counter(nnx.Variable):
  pass


class CountingMLP(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(784, 10, rngs=rngs)
    self.calls = Counter(jnp.zeros((), jnp.int32))

  def __call__(self, x):
    return self.linear(x.reshape(x.shape[0], -1))


def make_batch(key, n=32):
  k1, k2 = jax.random.split(key)
  return {"image": jax.random.uniform(k1, (n, 28, 28, 1)), "label": jax.random.randint(k2, (n,), 0, 10)}


@pytest.fixture
def state():
  return from_nnx(BatchNormMLP(rngs=nnx.Rngs(0)), optax.adam(1e-2), jax.random.PRNGKey(1))


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_split_gives_plain_dicts_and_an_apply_that_runs_the_module():
  module = BatchNormMLP(rngs=nnx.Rngs(0))
  apply_fn, variables = nnx_interop.split(module)
  assert set(variables) == {"params", "batch_stats"}
  assert all(type(x) is dict for x in jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, dict)))
  assert set(variables["params"]["layers"]) == {0, 1} and set(variables["batch_stats"]["norm"]) == {"mean", "var"}
  images = make_batch(jax.random.PRNGKey(2))["image"]
  module.eval()
  np.testing.assert_array_equal(apply_fn(variables, images), module(images))
  # Another build of the same graph is the same apply: one compiled step serves both.
  assert nnx_interop.split(BatchNormMLP(rngs=nnx.Rngs(5)))[0] == apply_fn
  assert hash(nnx_interop.NNXModel(BatchNormMLP).apply) == hash(apply_fn)


def test_a_batch_norm_module_becomes_a_batch_norm_state(state):
  assert isinstance(state, BatchNormTrainState) and int(state.step) == 0
  plain = from_nnx(TrainArgumentMLP(rngs=nnx.Rngs(0)), optax.sgd(0.1), jax.random.PRNGKey(0))
  assert type(plain) is TrainState


def test_train_step_is_pure_and_carries_batch_statistics(state):
  batch = make_batch(jax.random.PRNGKey(3))
  a, _ = assert_train_step_is_pure(state, batch)
  assert not np.allclose(a.batch_stats["norm"]["mean"], state.batch_stats["norm"]["mean"])
  # eval_step runs the module in eval mode: the running statistics, no dropout.
  module = to_nnx(a)
  module.eval()
  expected = optax.softmax_cross_entropy_with_integer_labels(module(batch["image"]), batch["label"]).mean()
  np.testing.assert_allclose(eval_step(a, batch)["loss"], expected, rtol=1e-6)
  np.testing.assert_array_equal(
    nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))["norm"]["mean"], a.batch_stats["norm"]["mean"]
  )


def test_dropout_keys_come_from_the_state_and_its_step(state):
  batch = make_batch(jax.random.PRNGKey(4))
  loss = lambda s: float(train_step(s, batch)[1]["loss"])  # noqa: E731
  assert loss(state) == loss(state)
  assert loss(state) != loss(state.replace(step=state.step + 1))
  assert loss(state) != loss(state.replace(rng=jax.random.PRNGKey(9)))
  # Without dropout in eval, the same state scores the same whatever its key.
  assert eval_step(state, batch)["loss"] == eval_step(state.replace(rng=jax.random.PRNGKey(9)), batch)["loss"]


def test_a_module_told_its_mode_by_an_argument_gets_it():
  state = from_nnx(TrainArgumentMLP(rngs=nnx.Rngs(0)), optax.sgd(0.1), jax.random.PRNGKey(0))
  batch = make_batch(jax.random.PRNGKey(5))
  trained_loss = float(train_step(state, batch)[1]["loss"])  # Dropout 0.9 on the pixels.
  assert trained_loss != pytest.approx(float(eval_step(state, batch)["loss"]), rel=1e-3)


def test_steps_run_inside_jit_scan_and_vmap(state):
  batch = make_batch(jax.random.PRNGKey(6))
  stepped = state
  for _ in range(3):
    stepped, _ = train_step(stepped, batch)
  scanned, _ = jax.jit(lambda s: jax.lax.scan(train_step, s, jax.tree.map(lambda x: jnp.stack([x] * 3), batch)))(state)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), scanned, stepped)

  def member(key):
    return from_nnx(BatchNormMLP(rngs=nnx.Rngs(key)), optax.adam(1e-2), jax.random.key_data(key))

  members = jax.jit(jax.vmap(member))(jax.random.split(jax.random.key(0), 2))
  trained, metrics = ensemble_train_step(members, batch)
  assert metrics["loss"].shape == (2,) and trained.step.tolist() == [1, 1]
  assert not np.allclose(trained.params["layers"][0]["kernel"][0], trained.params["layers"][0]["kernel"][1])


def test_the_state_checkpoints_with_orbax_and_trains_on(state, tmp_path):
  batch = make_batch(jax.random.PRNGKey(7))
  state, _ = train_step(state, batch)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "state", state)
  checkpointer.wait_until_finished()
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  restored = checkpointer.restore(tmp_path / "state", target)
  assert_trees_equal(restored, state)
  assert_trees_equal(train_step(restored, batch), train_step(state, batch))


def test_state_other_than_params_statistics_and_rngs_is_refused():
  with pytest.raises(TypeError, match="CountingMLP holds NNX variables of type Counter"):
    from_nnx(CountingMLP(rngs=nnx.Rngs(0)), optax.sgd(0.1), jax.random.PRNGKey(0))


def test_to_nnx_wants_the_state_of_an_nnx_module(config):
  from mnist_flax import create_train_state

  with pytest.raises(TypeError, match="holds a Linen model"):
    to_nnx(create_train_state(config, jax.random.PRNGKey(0)))


def linen_params_in_nnx_layout(linen):
  """The built-in CNN's Linen parameters under `configs.nnx_cnn.CNN`'s names (the same layers, in order)."""
  names = {"Conv_0": "conv1", "Conv_1": "conv2", "Dense_0": "linear1", "Dense_1": "linear2"}
  names |= {"BatchNorm_0": "norm1", "BatchNorm_1": "norm2", "BatchNorm_2": "norm3"}
  return {names[k]: v for k, v in linen.items()}


def test_the_same_cnn_in_linen_and_nnx_trains_to_the_same_parameters(real_data_dir):
  """100 train steps on real MNIST from the same initial parameters (dropout off: the two draw masks differently)."""
  train = input_pipeline.load_mnist(real_data_dir)["train"]
  linen_model = models.CNN(batch_norm=True, dropout_rate=0.0)
  variables = linen_model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
  tx = optax.adam(1e-3)
  linen = BatchNormTrainState.create(
    apply_fn=linen_model.apply,
    params=variables["params"],
    tx=tx,
    rng=jax.random.PRNGKey(1),
    batch_stats=variables["batch_stats"],
  )
  nnx_state = from_nnx(nnx_cnn.CNN(dropout_rate=0.0, batch_norm=True, rngs=nnx.Rngs(0)), tx, jax.random.PRNGKey(1))
  nnx_state = nnx_state.replace(
    params=linen_params_in_nnx_layout(linen.params),
    batch_stats=linen_params_in_nnx_layout(linen.batch_stats),
    opt_state=tx.init(linen_params_in_nnx_layout(linen.params)),
  )
  for i in range(100):
    batch = {"image": train["image"][128 * i : 128 * (i + 1)], "label": train["label"][128 * i : 128 * (i + 1)]}
    linen, linen_metrics = train_step(linen, batch)
    nnx_state, nnx_metrics = train_step(nnx_state, batch)
  assert float(nnx_metrics["loss"]) == pytest.approx(float(linen_metrics["loss"]), rel=1e-4)
  assert float(linen_metrics["loss"]) < 0.5  # It learned.
  expected = {"params": linen_params_in_nnx_layout(linen.params)}
  expected["batch_stats"] = linen_params_in_nnx_layout(linen.batch_stats)
  got = {"params": nnx_state.params, "batch_stats": nnx_state.batch_stats}
  largest = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), expected, got)))
  print(f"largest difference after 100 steps: {largest:.3g}")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5), expected, got)


def test_an_nnx_module_is_told_its_mode_only_by_a_named_argument():
  rngs = nnx.Rngs(0)
  assert modes.mode_kwargs(TrainArgumentMLP(rngs=rngs), train=True) == {"train": True}
  assert modes.mode_kwargs(BatchNormMLP(rngs=rngs), train=True) == {}
  # nnx.Sequential passes **kwargs on to its layers: no `train` for them.
  assert modes.mode_kwargs(nnx.Sequential(nnx.Linear(2, 2, rngs=rngs)), train=True) == {}
