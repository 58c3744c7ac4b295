"""The network a config names: factories of Linen and NNX modules, their checks, and the model summary."""

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import nnx_cnn
from mnist_flax.core import networks, nnx_interop


class LinenMLP(nn.Module):
  """A Linen module built by its class, called with images only."""

  width: int = 16

  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.Dense(self.width)(x.reshape((x.shape[0], -1)))))


def linen_mlp(width: int = 16) -> nn.Module:
  """A function returning a Linen module."""
  return LinenMLP(width=width)


def nnx_mlp(width: int = 16, *, rngs: nnx.Rngs) -> nnx.Module:
  """A function taking `rngs`: an NNX factory."""
  return nnx.Sequential(lambda x: x.reshape(x.shape[0], -1), nnx.Linear(784, width, rngs=rngs), nnx.relu,
                        nnx.Linear(width, 10, rngs=rngs))  # fmt: skip


def five_logits(rngs: nnx.Rngs) -> nnx.Module:
  return nnx.Sequential(lambda x: x.reshape(x.shape[0], -1), nnx.Linear(784, 5, rngs=rngs))


def not_a_module() -> str:
  return "a string"


NOT_CALLABLE = 3


def model_config(factory, **kwargs):
  return ml_collections.ConfigDict({"factory": factory, **kwargs})


@pytest.mark.parametrize("factory", ["tests.test_networks:LinenMLP", "tests.test_networks:linen_mlp"])
def test_a_linen_factory_gives_its_module_with_the_sections_arguments(factory):
  model = networks.create(model_config(factory, width=8))
  assert model == LinenMLP(width=8)
  networks.check(model)


@pytest.mark.parametrize("factory", ["configs.nnx_cnn:CNN", "tests.test_networks:nnx_mlp"])
def test_an_nnx_factory_is_built_from_a_key_with_the_sections_arguments(factory):
  kwargs = {"features": [4, 8], "dense_features": 16} if "CNN" in factory else {"width": 8}
  model = networks.create(model_config(factory, **kwargs))
  assert isinstance(model, nnx_interop.NNXModel)
  networks.check(model)
  variables = model.init(jax.random.PRNGKey(0))
  again = model.init(jax.random.PRNGKey(0))
  other = model.init(jax.random.PRNGKey(1))
  jax.tree.map(np.testing.assert_array_equal, variables, again)
  assert any(not jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(other), strict=True))
  logits = model.apply(variables, jnp.zeros((3, 28, 28, 1)))
  assert logits.shape == (3, 10)


def test_factory_arguments_are_the_section_without_factory_lists_as_tuples():
  config = nnx_cnn.get_config()
  assert networks.factory_kwargs(config.model) == {
    "features": (32, 64),
    "dense_features": 128,
    "dropout_rate": 0.25,
    "batch_norm": False,
  }
  assert networks.factory_kwargs({"factory": "x:y", "layers": [[1, 2], [3]]}) == {"layers": ((1, 2), (3,))}


def test_the_built_in_cnn_is_told_apart(config):
  assert networks.is_built_in(config.model)
  assert not networks.is_built_in(nnx_cnn.get_config().model)


@pytest.mark.parametrize(
  ("factory", "message"),
  [
    ("no_colon", "config.model.factory must be 'package.module:callable', got 'no_colon'"),
    (":x", "must be 'package.module:callable'"),
    ("no_such_module:x", "cannot import no_such_module: ModuleNotFoundError: No module named 'no_such_module'"),
    ("tests.test_networks:Missing", "tests.test_networks has no Missing"),
    ("tests.test_networks:NOT_CALLABLE", "is a int, not a callable"),
    ("tests.test_networks:not_a_module", "returned a str; it must return a Linen nn.Module, or take rngs"),
  ],
)
def test_a_factory_that_cannot_be_had_is_one_line(factory, message):
  with pytest.raises(ValueError, match="^[^\n]*$") as caught:
    networks.create(model_config(factory))
  assert message in str(caught.value)


def test_wrong_arguments_and_wrong_outputs_are_one_line():
  with pytest.raises(ValueError, match=r"linen_mlp' failed: TypeError: .*unexpected keyword argument 'widht'"):
    networks.create(model_config("tests.test_networks:linen_mlp", widht=3))
  model = networks.create(model_config("tests.test_networks:nnx_mlp", widht=3))  # Built when first initialised.
  with pytest.raises(ValueError, match="cannot be built and run on images .*unexpected keyword argument 'widht'"):
    networks.check(model, "nnx_mlp")
  with pytest.raises(ValueError, match=r"maps images \[2, 28, 28, 1\] to float32\[2, 5\]; it must return float logits"):
    networks.check(networks.create(model_config("tests.test_networks:five_logits")))


def test_a_module_in_the_current_folder_imports(tmp_path, monkeypatch):
  (tmp_path / "my_net_for_the_test.py").write_text(
    "import flax.linen as nn\n"
    "class Net(nn.Module):\n"
    "  @nn.compact\n"
    "  def __call__(self, x):\n"
    "    return nn.Dense(10)(x.reshape((x.shape[0], -1)))\n"
  )
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
  networks.check(networks.create(model_config("my_net_for_the_test:Net")))


def test_summary_lists_layers_shapes_and_total(seed_config):
  table = networks.summary(networks.create(seed_config.model))
  for text in ("Conv_0", "Conv_1", "Dense_0", "Dense_1", "[1,26,26,32]", "[1,1600]", "225,034"):
    assert text in table


def test_summary_of_an_nnx_model_lists_its_layers(config):
  table = networks.summary(networks.create(nnx_cnn.get_config().model))
  for text in ("conv1", "conv2", "linear1", "linear2", "dropout", "225,034"):
    assert text in table
