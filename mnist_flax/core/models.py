"""The MNIST CNN in plain Flax: conv blocks (conv, batch norm, ReLU, 2x2 max pool), dense layers, 10 logits."""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 (an odd last row or column is dropped)."""
  return nn.max_pool(x, (2, 2), strides=(2, 2))


class CNN(nn.Module):
  """A configurable MNIST CNN; the defaults are the classic Keras tutorial network.

  Attributes:
    features: Output channels of each conv block.
    kernel_size: Side of the square conv kernels.
    padding: Conv padding, "VALID" or "SAME".
    convs_per_block: Conv (+ batch norm) + ReLU layers before each pool.
    batch_norm: Whether each conv and hidden dense layer is followed by `nn.BatchNorm` (before the ReLU).
    dense_features: Widths of the hidden dense layers (dense -> ReLU -> dropout).
    dropout_rate: Dropout rate after each hidden dense layer (active when `train`).
    num_classes: Number of output logits.
    conv: The conv layer: `nn.Conv`, or any module built as `conv(features, kernel_size, padding=...)` with
      the same parameters (e.g. `mnist_flax.kernels.patches.Conv`).
    pool: The 2x2 max pool.
  """

  features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  padding: str = "VALID"
  convs_per_block: int = 1
  batch_norm: bool = False
  dense_features: Sequence[int] = (128,)
  dropout_rate: float = 0.0
  num_classes: int = NUM_CLASSES
  conv: Any = nn.Conv
  pool: Callable[[jax.Array], jax.Array] = max_pool_2x2

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    """Maps float images in [0, 1], shaped [B, 28, 28, 1], to logits [B, num_classes]."""
    x = self.conv_blocks(images, train)
    x = x.reshape((x.shape[0], -1))
    for width in self.dense_features:
      x = nn.relu(self.normalise(nn.Dense(width)(x), train))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)

  def conv_blocks(self, x: jax.Array, train: bool) -> jax.Array:
    """The conv blocks, one per entry of `features`."""
    for features in self.features:
      x = self.block(x, features, train)
    return x

  def block(self, x: jax.Array, features: int, train: bool) -> jax.Array:
    """One conv block: `convs_per_block` x (conv, batch norm, ReLU), then the pool."""
    for _ in range(self.convs_per_block):
      x = self.conv(features, (self.kernel_size, self.kernel_size), padding=self.padding)(x)
      x = nn.relu(self.normalise(x, train))
    return self.pool(x)

  def normalise(self, x: jax.Array, train: bool) -> jax.Array:
    """Batch norm if the model has it: the batch's statistics when `train`, the running ones otherwise."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9)(x) if self.batch_norm else x


def create_model(model_config: ml_collections.ConfigDict, cls: type[CNN] = CNN, **kwargs: Any) -> CNN:
  """Builds `cls` (the CNN, or a subclass) from the `model` section of a config; `kwargs` set further fields."""
  c = model_config
  return cls(
    features=tuple(c.features),
    kernel_size=c.kernel_size,
    padding=c.padding,
    convs_per_block=c.convs_per_block,
    batch_norm=c.batch_norm,
    dense_features=tuple(c.dense_features),
    dropout_rate=c.dropout_rate,
    **kwargs,
  )
