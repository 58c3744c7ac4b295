import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnist_flax import TrainState, create_train_state, kernels, train_step
from mnist_flax.core.steps import ensemble_train_step
from mnist_flax.core.train_state import (
  create_ensemble_state,
  create_optimizer,
  create_schedule,
  is_ensemble,
  member_learning_rates,
)


def test_create_train_state_builds_adam_state(seed_config):
  state = create_train_state(seed_config, jax.random.PRNGKey(0))
  assert state.step.dtype == jnp.int32 and int(state.step) == 0
  assert state.rng.dtype == jnp.uint32 and state.rng.shape == (2,)
  assert sum(x.size for x in jax.tree.leaves(state.params)) == 225_034
  leaves, _ = jax.tree.flatten(state)
  assert len(leaves) == len(jax.tree.leaves((state.step, state.params, state.opt_state, state.rng)))


def test_create_is_deterministic_in_the_key(config):
  a = create_train_state(config, jax.random.PRNGKey(7))
  b = create_train_state(config, jax.random.PRNGKey(7))
  c = create_train_state(config, jax.random.PRNGKey(8))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.params["Dense_0"]["kernel"], c.params["Dense_0"]["kernel"])


def test_typed_keys_are_stored_raw():
  params = {"w": jnp.ones(3)}
  state = TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.1), rng=jax.random.key(3))
  np.testing.assert_array_equal(state.rng, jax.random.PRNGKey(3))


def test_bad_rng_is_refused():
  with pytest.raises(ValueError, match="PRNGKey"):
    TrainState.create(apply_fn=None, params={"w": jnp.ones(3)}, tx=optax.sgd(0.1), rng=jnp.zeros(3))


def test_schedule_warms_up_and_decays(config):
  config.learning_rate = 2e-3
  config.warmup_epochs = 1.0
  config.num_epochs = 4
  config.final_learning_rate_factor = 0.01
  tx = create_optimizer(config, steps_per_epoch=100)
  state = tx.init({"w": jnp.zeros(())})
  lrs = []
  for _ in range(400):
    updates, state = tx.update({"w": jnp.ones(())}, state)
    lrs.append(-float(updates["w"]))  # Adam's first update on a constant gradient is -lr.
  assert lrs[0] == pytest.approx(0.0, abs=1e-9)
  assert max(lrs) == pytest.approx(2e-3, rel=1e-2)
  assert int(np.argmax(lrs)) == pytest.approx(100, abs=1)
  assert lrs[-1] == pytest.approx(2e-5, rel=0.1)


@pytest.mark.parametrize("warmup_epochs", [1.0, 0.25, 0.0])
def test_the_schedule_is_its_closed_form_where_it_turns(config, warmup_epochs):
  """Linear warm-up from 0 to the peak over W steps, then a cosine from the peak to the end value at step T."""
  config.learning_rate, config.warmup_epochs, config.num_epochs, config.final_learning_rate_factor = (
    2e-3,
    warmup_epochs,
    4,
    0.01,
  )
  spe, total, peak, end = 100, 400, 2e-3, 2e-5
  warmup = int(warmup_epochs * spe)
  schedule = create_schedule(config, spe)

  def closed_form(t):
    if t < warmup:
      return peak * t / warmup
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))

  for t in sorted({0, max(warmup - 1, 0), warmup, warmup + 1, total // 2, total - 1}):
    assert float(schedule(t)) == pytest.approx(closed_form(t), rel=1e-5, abs=1e-12), t
  assert float(schedule(warmup)) == pytest.approx(peak, rel=1e-6)


def test_constant_schedule_for_the_seed_recipe(seed_config):
  tx = create_optimizer(seed_config, steps_per_epoch=10)
  state = tx.init({"w": jnp.zeros(())})
  for _ in range(100):
    updates, state = tx.update({"w": jnp.ones(())}, state)
    assert -float(updates["w"]) == pytest.approx(1e-3, rel=1e-4)


@pytest.fixture
def small_config(config):
  config.model.features = (4,)
  config.model.dense_features = (8,)
  return config


def test_one_member_is_the_single_model(small_config):
  single = create_train_state(small_config, jax.random.PRNGKey(3))
  ensemble = create_ensemble_state(small_config, jax.random.PRNGKey(3))
  assert not is_ensemble(ensemble)
  for a, b in zip(jax.tree.leaves(ensemble), jax.tree.leaves(single), strict=True):
    np.testing.assert_array_equal(a, b)


def test_members_are_stacked_with_their_own_keys(small_config):
  small_config.ensemble_size = 3
  state = create_ensemble_state(small_config, jax.random.PRNGKey(3))
  assert is_ensemble(state) and state.step.shape == (3,)
  assert all(leaf.shape[0] == 3 for leaf in jax.tree.leaves(state))
  kernels = state.params["Dense_0"]["kernel"]
  assert not np.array_equal(kernels[0], kernels[1]) and not np.array_equal(state.rng[0], state.rng[1])


@pytest.mark.parametrize("impl", ["flax", "pooled"])  # "pooled": its custom gradient vmapped over members too.
def test_a_swept_member_trains_as_a_model_with_its_own_learning_rate(small_config, impl):
  small_config.ensemble_size = 2
  small_config.member_learning_rates = (1e-3, 3e-2)
  model = kernels.cnn(small_config.model, impl)
  state = create_ensemble_state(small_config, jax.random.PRNGKey(3), steps_per_epoch=4, model=model)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.random((8, 28, 28, 1)), jnp.float32), "label": jnp.asarray(rng.integers(0, 10, 8))}
  for _ in range(3):
    state, _ = ensemble_train_step(state, batch)
  keys = jax.random.split(jax.random.PRNGKey(3), 2)
  for i, rate in enumerate(small_config.member_learning_rates):
    alone = small_config.copy_and_resolve_references()
    alone.member_learning_rates, alone.ensemble_size, alone.learning_rate = (), 1, rate
    single = create_train_state(alone, keys[i], steps_per_epoch=4, model=model)
    for _ in range(3):
      single, _ = train_step(single, batch)
    member = jax.tree.map(lambda x, i=i: x[i], state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), member, single.params)
  assert member_learning_rates(small_config) == [1e-3, 3e-2]
