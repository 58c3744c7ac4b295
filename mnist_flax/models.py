"""The Linen CNN: conv + ReLU + 2x2 max-pool blocks, dense + ReLU + dropout, 10 logits."""

import sys
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 and VALID padding on NHWC inputs.

  Gives exactly the values of `nn.max_pool(x, (2, 2), (2, 2))` (an odd trailing
  row or column is dropped), written as a reshape and a max so that its gradient
  is a cheap elementwise select rather than XLA's select-and-scatter, which costs
  about as much as the whole rest of the backward pass on XLA:CPU.
  """
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2, :]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class CNN(nn.Module):
  """A configurable MNIST CNN.

  Attributes:
    features: Output channels of each conv block (conv -> ReLU -> 2x2 max-pool).
    kernel_size: Side of the square conv kernels.
    padding: Conv padding, "VALID" or "SAME".
    convs_per_block: Number of conv + ReLU layers before each pool.
    dense_features: Widths of the hidden dense layers (dense -> ReLU -> dropout).
    dropout_rate: Dropout rate after each hidden dense layer (active when `train`).
    num_classes: Number of output logits.
  """

  features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  padding: str = "VALID"
  convs_per_block: int = 1
  dense_features: Sequence[int] = (128,)
  dropout_rate: float = 0.0
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    """Maps float images in [0, 1], shaped [B, 28, 28, 1], to logits [B, num_classes]."""
    x = images
    k = (self.kernel_size, self.kernel_size)
    for f in self.features:
      for _ in range(self.convs_per_block):
        x = nn.relu(nn.Conv(f, k, padding=self.padding)(x))
      x = max_pool_2x2(x)
    x = x.reshape((x.shape[0], -1))
    for f in self.dense_features:
      x = nn.relu(nn.Dense(f)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


def create_model(model_config: ml_collections.ConfigDict) -> CNN:
  """Builds the CNN from the `model` section of a config."""
  c = model_config
  return CNN(
    features=tuple(c.features),
    kernel_size=c.kernel_size,
    padding=c.padding,
    convs_per_block=c.convs_per_block,
    dense_features=tuple(c.dense_features),
    dropout_rate=c.dropout_rate,
  )


def summary(model: nn.Module) -> str:
  """Returns Flax's table of layers, output shapes and parameter counts for one image."""
  rng = jax.random.PRNGKey(0)
  console = {"width": 110, "force_terminal": sys.stdout.isatty(), "force_jupyter": False}
  table = nn.tabulate(model, {"params": rng, "dropout": rng}, console_kwargs=console)
  return table(jnp.zeros((1, *IMAGE_SHAPE), jnp.float32), train=False)
