import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mnist_flax.core import models


def count_params(params):
  return sum(x.size for x in jax.tree.leaves(params))


def init(model, batch=2):
  return model.init(jax.random.PRNGKey(0), jnp.zeros((batch, 28, 28, 1)), train=False)["params"]


def param_shapes(model):
  """The parameters' shapes and dtypes, traced without computing them (eagerly, each new op compiles)."""
  return jax.eval_shape(lambda: init(model))


def test_keras_seed_network_has_225034_parameters(seed_config):
  model = models.create_model(seed_config.model)
  params = param_shapes(model)
  assert count_params(params) == 225_034
  shapes = {k: v["kernel"].shape for k, v in params.items()}
  assert shapes == {
    "Conv_0": (3, 3, 1, 32),
    "Conv_1": (3, 3, 32, 64),
    "Dense_0": (1600, 128),
    "Dense_1": (128, 10),
  }


@pytest.mark.parametrize("batch", [1, 7])
def test_default_model_maps_images_to_ten_logits(config, batch):
  model = models.create_model(config.model)
  params = init(model)
  logits = model.apply({"params": params}, jnp.ones((batch, 28, 28, 1)), train=False)
  assert logits.shape == (batch, 10)
  assert logits.dtype == jnp.float32


def test_sizes_come_from_config(config):
  config.model.features = (8, 16)
  config.model.dense_features = (32, 24)
  config.model.padding = "SAME"
  config.model.convs_per_block = 2
  params = param_shapes(models.create_model(config.model))
  assert params["Conv_3"]["kernel"].shape == (3, 3, 16, 16)
  assert params["Dense_0"]["kernel"].shape == (7 * 7 * 16, 32)
  assert params["Dense_2"]["kernel"].shape == (24, 10)


def test_dropout_only_in_training(config):
  config.model.dropout_rate = 0.5
  model = models.create_model(config.model)
  params = init(model)
  x = jax.random.uniform(jax.random.PRNGKey(2), (4, 28, 28, 1))
  a = model.apply({"params": params}, x, train=False)
  b = model.apply({"params": params}, x, train=False)
  c = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_batch_norm_keeps_running_statistics_used_outside_training(config):
  config.model.batch_norm = True
  model = models.create_model(config.model)
  x = jax.random.uniform(jax.random.PRNGKey(2), (4, 28, 28, 1))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  # One per conv and hidden dense layer, with their widths.
  widths = [v["mean"].shape[0] for v in variables["batch_stats"].values()]
  assert widths == [*config.model.features, *config.model.dense_features]
  plain = models.create_model(ml_collections.ConfigDict({**config.model, "batch_norm": False}))
  assert jax.tree.map(jnp.shape, variables["params"]) != jax.tree.map(jnp.shape, init(plain))
  a = model.apply(variables, x, train=False)
  b, updates = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)}, mutable=["batch_stats"])
  assert not np.allclose(a, b)
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
