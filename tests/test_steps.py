import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnist_flax import (
  BatchNormTrainState,
  TrainState,
  create_ensemble_state,
  create_train_state,
  ensemble_train_step,
  eval_step,
  train_step,
)
from mnist_flax.core import modes, steps
from tests.conftest import assert_train_step_is_pure


def make_batch(key, n=8):
  k1, k2 = jax.random.split(key)
  return {
    "image": jax.random.uniform(k1, (n, 28, 28, 1)),
    "label": jax.random.randint(k2, (n,), 0, 10),
  }


@pytest.fixture
def state(config):
  config.warmup_epochs = 0.0  # A warm-up starts at learning rate 0, which would leave step 1's params unchanged.
  config.model.dropout_rate = 0.3
  config.model.features = (8, 16)
  config.model.dense_features = (32,)
  return create_train_state(config, jax.random.PRNGKey(0))


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_train_step_is_deterministic_and_leaves_its_input_alone(state):
  batch = make_batch(jax.random.PRNGKey(1))
  s1, m1 = assert_train_step_is_pure(state, batch)
  assert set(m1) >= {"loss", "accuracy", "grad_norm"}
  assert all(v.shape == () for v in m1.values())
  assert 0.0 <= float(m1["accuracy"]) <= 1.0
  assert not np.array_equal(s1.params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])


def test_dropout_key_follows_the_step(state):
  batch = make_batch(jax.random.PRNGKey(1))
  _, m0 = train_step(state, batch)
  _, m5 = train_step(state.replace(step=jnp.int32(5)), batch)
  _, m0_again = train_step(state.replace(step=jnp.int32(0)), batch)
  assert float(m0["loss"]) != float(m5["loss"])
  assert float(m0["loss"]) == float(m0_again["loss"])


def test_train_step_inside_jit_scan_and_vmap(state):
  batches = [make_batch(jax.random.PRNGKey(i)) for i in range(3)]
  s = state
  losses = []
  for b in batches:
    s, m = train_step(s, b)
    losses.append(m["loss"])

  s_jit, _ = jax.jit(lambda st, b: train_step(st, b))(state, batches[0])
  first, _ = train_step(state, batches[0])
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), s_jit, first)

  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
  s_scan, m_scan = jax.lax.scan(train_step, state, stacked)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), s_scan, s)
  np.testing.assert_allclose(m_scan["loss"], jnp.stack(losses), rtol=1e-5)

  rngs = jnp.stack([jax.random.PRNGKey(10), jax.random.PRNGKey(11)])
  states = jax.vmap(lambda r: state.replace(rng=r))(rngs)
  v_states, v_metrics = jax.vmap(train_step, in_axes=(0, None))(states, batches[0])
  for i in range(2):
    single, metrics = train_step(state.replace(rng=rngs[i]), batches[0])
    np.testing.assert_allclose(v_metrics["loss"][i], metrics["loss"], rtol=1e-5)
    jax.tree.map(
      lambda x, y, i=i: np.testing.assert_allclose(x[i], y, rtol=1e-5, atol=1e-6), v_states.params, single.params
    )


@pytest.mark.parametrize("batch_norm", [False, True])
def test_microbatches_average_the_slices_gradients(config, batch_norm):
  config.warmup_epochs = 0.0
  config.model.dropout_rate = 0.0  # Without dropout, slicing leaves the update unchanged up to rounding.
  config.model.features = (8, 16)
  config.model.dense_features = (32,)
  config.model.batch_norm = batch_norm
  state = create_train_state(config, jax.random.PRNGKey(0))
  batch = make_batch(jax.random.PRNGKey(1), n=16)
  whole, whole_metrics = train_step(state, batch)
  sliced, sliced_metrics = train_step(state, batch, microbatches=4)
  assert int(sliced.step) == 1
  if batch_norm:  # Each slice is normalised by its own statistics: the step of the slices, computed apart.
    # Compiled, as the step is: batch norm's variance of a small batch amplifies rounding, and
    # op-by-op execution rounds otherwise (gradient norms 1.5 % apart here).
    expected, expected_metrics = jax.jit(sliced_apart, static_argnums=2)(state, batch, 4)
    for name in ("loss", "accuracy", "grad_norm"):
      np.testing.assert_allclose(sliced_metrics[name], expected_metrics[name], rtol=1e-5)
    assert_trees_close(sliced.params, expected.params)
    assert_trees_close(sliced.batch_stats, expected.batch_stats)
    assert float(sliced_metrics["loss"]) != float(whole_metrics["loss"])  # Not the whole batch's statistics.
  else:
    for name in ("loss", "accuracy", "grad_norm"):
      np.testing.assert_allclose(sliced_metrics[name], whole_metrics[name], rtol=1e-5)
    assert_trees_close(sliced.params, whole.params)


def assert_trees_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)


def sliced_apart(state, batch, n):
  """A batch-norm model's step over `n` slices (rows i, i + n, ...), each computed alone, then averaged."""
  losses, hits, grads, stats = [], [], [], []
  for i in range(n):
    images, labels = batch["image"][i::n], batch["label"][i::n]

    def loss_fn(params, images=images, labels=labels):
      logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), (logits, updates)

    (loss, (logits, updates)), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    losses.append(loss)
    hits.append(jnp.mean(jnp.argmax(logits, -1) == labels))
    grads.append(g)
    stats.append(updates["batch_stats"])
  mean = lambda trees: jax.tree.map(lambda *xs: sum(xs) / n, *trees)  # noqa: E731
  grads = mean(grads)
  updates, _ = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": sum(losses) / n, "accuracy": sum(hits) / n, "grad_norm": optax.tree.norm(grads)}
  return state.replace(params=params, batch_stats=mean(stats)), metrics


def test_grad_norm_is_the_norm_of_the_gradient_computed_apart(state):
  batch = make_batch(jax.random.PRNGKey(7))
  _, metrics = train_step(state, batch)
  dropout = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, batch["image"], train=True, rngs={"dropout": dropout})
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
  np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-5)
  assert float(metrics["grad_norm"]) > 0


def test_microbatches_draw_each_slice_its_own_dropout_and_stay_deterministic(config, state):
  batch = make_batch(jax.random.PRNGKey(1), n=16)
  s1, m1 = train_step(state, batch, microbatches=2)
  s2, m2 = train_step(state, batch, microbatches=2)
  assert_trees_equal(s1, s2)
  assert_trees_equal(m1, m2)
  _, whole = train_step(state, batch)
  assert float(m1["loss"]) != float(whole["loss"])  # Other dropout masks.
  config.ensemble_size, config.model.features, config.model.dense_features = 2, (4,), (8,)
  stacked = create_ensemble_state(config, jax.random.PRNGKey(0))
  new, metrics = jax.jit(lambda st, b: ensemble_train_step(st, b, microbatches=2))(stacked, batch)
  assert metrics["loss"].shape == (2,) and int(new.step[0]) == 1


class MLP(nn.Module):
  @nn.compact
  def __call__(self, images, train: bool):
    x = images.reshape((images.shape[0], -1))
    x = nn.Dropout(0.1, deterministic=not train)(nn.relu(nn.Dense(32)(x)))
    return nn.Dense(10)(x)


@pytest.mark.parametrize("tx", [optax.sgd(0.1, momentum=0.9), optax.adamw(1e-2), optax.lion(1e-3)])
def test_any_linen_model_and_optax_optimizer_learn_a_fixed_batch(tx):
  model = MLP()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)["params"]
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx, rng=jax.random.PRNGKey(0))
  batch = make_batch(jax.random.PRNGKey(4), n=32)
  first = float(eval_step(state, batch)["loss"])
  for _ in range(30):
    state, _ = train_step(state, batch)
  assert float(eval_step(state, batch)["loss"]) < 0.5 * first


def test_ensemble_train_step_trains_each_member_on_its_own_batch(config):
  """With `member_batches`; shared batches are test_train_state's swept members."""
  config.ensemble_size, config.model.features, config.model.dense_features = 2, (4,), (8,)
  state = create_ensemble_state(config, jax.random.PRNGKey(0), steps_per_epoch=4)
  batches = [make_batch(jax.random.PRNGKey(i)) for i in range(2)]
  stacked = jax.tree.map(lambda *b: jnp.stack(b), *batches)
  new, metrics = ensemble_train_step(state, stacked, member_batches=True)
  assert metrics["loss"].shape == (2,)
  for i in range(2):
    alone, m = train_step(jax.tree.map(lambda x, i=i: x[i], state), batches[i])
    np.testing.assert_allclose(metrics["loss"][i], m["loss"], rtol=1e-6)
    member = jax.tree.map(lambda x, i=i: x[i], new.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), member, alone.params)


def test_eval_step_counts_only_masked_rows(state):
  batch = make_batch(jax.random.PRNGKey(5), n=10)
  full = eval_step(state, batch)
  padded = {
    "image": jnp.concatenate([batch["image"], jnp.zeros((6, 28, 28, 1))]),
    "label": jnp.concatenate([batch["label"], jnp.zeros((6,), jnp.int32)]),
    "mask": jnp.arange(16) < 10,
  }
  masked = eval_step(state, padded)
  assert float(masked["count"]) == 10.0
  np.testing.assert_allclose(masked["loss"], full["loss"], rtol=1e-6)
  np.testing.assert_allclose(masked["accuracy"], full["accuracy"], rtol=1e-6)
  assert float(masked["correct"]) == pytest.approx(float(full["accuracy"]) * 10)


def test_eval_step_ignores_dropout(state):
  batch = make_batch(jax.random.PRNGKey(6))
  a = eval_step(state, batch)
  b = eval_step(state.replace(step=jnp.int32(3), rng=jax.random.PRNGKey(9)), batch)
  assert_trees_equal(a, b)


class BatchNormMLP(nn.Module):
  @nn.compact
  def __call__(self, images, train: bool):
    x = nn.Dense(32)(images.reshape((images.shape[0], -1)))
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5)(x))
    return nn.Dense(10)(x)


def test_a_batch_norm_model_trains_on_batch_statistics_and_evaluates_on_running_ones():
  model = BatchNormMLP()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
  state = BatchNormTrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    tx=optax.adam(1e-2),
    rng=jax.random.PRNGKey(0),
    batch_stats=variables["batch_stats"],
  )
  batch = make_batch(jax.random.PRNGKey(4), n=32)
  new, metrics = train_step(state, batch)
  # The loss is that of the batch's own statistics; the running ones move halfway towards them.
  logits, updates = model.apply(state.variables(), batch["image"], train=True, mutable=["batch_stats"])
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), new.batch_stats, updates["batch_stats"])
  assert not np.allclose(new.batch_stats["BatchNorm_0"]["mean"], state.batch_stats["BatchNorm_0"]["mean"])
  # Evaluation normalises with the running statistics, not the batch's.
  running = model.apply(new.variables(), batch["image"], train=False)
  evaluated = eval_step(new, batch)
  np.testing.assert_allclose(
    evaluated["loss"], optax.softmax_cross_entropy_with_integer_labels(running, batch["label"]).mean(), rtol=1e-6
  )
  # Pure and traceable: the same state under scan as step by step, and it learns the batch.
  stepped = state
  for _ in range(3):
    stepped, _ = train_step(stepped, batch)
  scanned, _ = jax.lax.scan(train_step, state, jax.tree.map(lambda x: jnp.stack([x] * 3), batch))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), scanned, stepped)
  first = float(eval_step(state, batch)["loss"])
  for _ in range(30):
    state, _ = train_step(state, batch)
  assert float(eval_step(state, batch)["loss"]) < 0.5 * first


class ImagesOnlyCNN(nn.Module):
  """The Linen CNN as the Flax examples write it: `__call__(self, x)`, no dropout, no batch norm."""

  @nn.compact
  def __call__(self, x):
    x = nn.avg_pool(nn.relu(nn.Conv(8, (3, 3))(x)), (2, 2), (2, 2))
    return nn.Dense(10)(x.reshape((x.shape[0], -1)))


class DeterministicMLP(nn.Module):
  """A model that takes `deterministic`, as many Flax models do, instead of `train`."""

  @nn.compact
  def __call__(self, x, deterministic: bool):
    x = nn.relu(nn.Dense(32)(x.reshape((x.shape[0], -1))))
    return nn.Dense(10)(nn.Dropout(0.5, deterministic=deterministic)(x))


class KeywordsMLP(nn.Module):
  @nn.compact
  def __call__(self, x, **kwargs):
    x = nn.Dense(10)(x.reshape((x.shape[0], -1)))
    return nn.Dropout(0.5, deterministic=not kwargs["train"])(x)


def own_state(model, tx=None, seed=0):
  images = jnp.zeros((1, 28, 28, 1))
  params = model.init(jax.random.PRNGKey(seed), images, **modes.mode_kwargs(model.apply, False))["params"]
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx or optax.adam(1e-2), rng=jax.random.PRNGKey(1))


@pytest.mark.parametrize(
  ("model", "expected"),
  [
    (ImagesOnlyCNN(), {}),
    (DeterministicMLP(), {"deterministic": False}),
    (KeywordsMLP(), {"train": True}),
  ],
)
def test_the_step_tells_a_model_it_trains_the_way_its_call_takes(model, expected):
  assert modes.mode_kwargs(model.apply, train=True) == expected
  assert modes.mode_kwargs(functools.partial(model.apply, mutable=False), train=True) == expected
  assert modes.mode_kwargs(lambda variables, images, train: images, train=False) == {"train": False}


def test_a_model_that_takes_only_images_trains_inside_the_callers_scan():
  state = own_state(ImagesOnlyCNN())
  batches = jax.tree.map(lambda *xs: jnp.stack(xs), *[make_batch(jax.random.PRNGKey(i), 16) for i in range(4)])

  @jax.jit
  def run(state, batches):
    return jax.lax.scan(train_step, state, batches)

  trained, metrics = run(state, batches)
  assert int(trained.step) == 4 and metrics["loss"].shape == (4,)
  expected = optax.softmax_cross_entropy_with_integer_labels(
    state.apply_fn({"params": state.params}, batches["image"][0]), batches["label"][0]
  ).mean()
  np.testing.assert_allclose(metrics["loss"][0], expected, rtol=1e-6)
  assert float(eval_step(trained, make_batch(jax.random.PRNGKey(9)))["count"]) == 8


def test_a_model_with_deterministic_drops_out_in_training_only():
  state = own_state(DeterministicMLP())
  batch = make_batch(jax.random.PRNGKey(2))
  _, m0 = train_step(state, batch)
  _, m1 = train_step(state.replace(step=jnp.int32(1)), batch)
  assert float(m0["loss"]) != float(m1["loss"])  # Different dropout masks: dropout is on.
  logits = state.apply_fn({"params": state.params}, batch["image"], deterministic=True)
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  np.testing.assert_allclose(eval_step(state, batch)["loss"], expected, rtol=1e-6)  # Dropout off.


def test_an_optimizer_that_takes_the_loss_gets_it():
  tx = optax.chain(optax.adam(1e-2), optax.contrib.reduce_on_plateau(patience=1, cooldown=0, accumulation_size=1))
  state = own_state(ImagesOnlyCNN(), tx)
  batch = make_batch(jax.random.PRNGKey(3))
  new_state, metrics = train_step(state, batch)
  plateau = new_state.opt_state[1]
  np.testing.assert_allclose(plateau.best_value, metrics["loss"], rtol=1e-6)  # The loss before the update.


def test_lbfgs_gets_the_loss_its_gradient_and_the_loss_as_a_function():
  state = own_state(ImagesOnlyCNN(), optax.lbfgs())
  batch = make_batch(jax.random.PRNGKey(4), 32)
  losses = []
  for _ in range(5):
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] and all(np.isfinite(losses))


def test_schedule_free_trains_and_its_evaluation_parameters_are_the_callers():
  """schedule-free's evaluation parameters are not the state's: `eval_step` uses `state.params` as they are."""
  state = own_state(ImagesOnlyCNN(), optax.contrib.schedule_free_adamw(1e-2, warmup_steps=2))
  batch = make_batch(jax.random.PRNGKey(5), 32)
  for _ in range(3):
    state, _ = train_step(state, batch)
  eval_params = optax.contrib.schedule_free_eval_params(state.opt_state, state.params)
  assert not np.allclose(eval_params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])
  as_is, averaged = eval_step(state, batch), eval_step(state.replace(params=eval_params), batch)
  assert float(as_is["loss"]) != float(averaged["loss"])


def test_members_of_a_model_that_takes_only_images_train_and_predict_side_by_side():
  model, tx = ImagesOnlyCNN(), optax.adam(1e-2)  # One of each: the members' states are one pytree structure.
  members = [own_state(model, tx, seed=s) for s in (0, 1)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *members)
  batch = make_batch(jax.random.PRNGKey(6))
  trained, metrics = ensemble_train_step(stacked, batch)
  assert metrics["loss"].shape == (2,)
  for i, member in enumerate(members):
    alone, m = train_step(member, batch)
    np.testing.assert_allclose(metrics["loss"][i], m["loss"], rtol=1e-6)
    np.testing.assert_allclose(trained.params["Dense_0"]["kernel"][i], alone.params["Dense_0"]["kernel"], atol=1e-6)
  ensemble, each = steps.ensemble_logits(stacked.apply_fn, stacked.variables(), batch["image"])
  assert ensemble.shape == (8, 10) and each.shape == (2, 8, 10)


def test_uint8_images_and_one_hot_labels_train_as_scaled_floats_and_indices(config):
  config.model.features, config.model.dense_features = (4,), (8,)
  state = create_train_state(config, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, 8).astype(np.int32)
  reference = {"image": pixels.astype(np.float32) / np.float32(255), "label": labels}
  for batch in ({"image": pixels, "label": labels}, {"image": reference["image"], "label": jax.nn.one_hot(labels, 10)}):
    for step in (lambda s, b: train_step(s, b)[1], eval_step):
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), step(state, batch), step(state, reference))


def test_labels_outside_the_classes_give_a_nan_loss_and_no_hit(config):
  config.model.features, config.model.dense_features = (4,), (8,)
  state = create_train_state(config, jax.random.PRNGKey(0))
  images = jnp.zeros((4, 28, 28, 1))
  for bad in (10, -1):  # -1 would otherwise index the last class.
    metrics = eval_step(state, {"image": images, "label": jnp.asarray([bad, bad, bad, bad])})
    assert np.isnan(metrics["loss"]) and metrics["correct"] == 0


@pytest.mark.parametrize(
  "label",
  [np.zeros(4, np.float32), np.zeros((4, 1), np.int32), np.zeros(3, np.int32), np.zeros(4, bool)],
  ids=["float indices", "column", "too few", "bool"],
)
def test_labels_of_another_form_are_refused_when_traced(config, label):
  config.model.features, config.model.dense_features = (4,), (8,)
  state = create_train_state(config, jax.random.PRNGKey(0))
  with pytest.raises(TypeError, match=r"int class indices \[B\] or float one-hot targets \[B, classes\]"):
    train_step(state, {"image": jnp.zeros((4, 28, 28, 1)), "label": label})
