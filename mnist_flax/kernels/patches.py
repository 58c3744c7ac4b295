"""Convolutions as matrix products of k x k patches: XLA:CPU runs them faster than its convolutions."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_flax.kernels import pooled


def patches(x: jax.Array, kernel_size: int) -> jax.Array:
  """The k x k neighbourhoods of an NHWC input, VALID: [B, H, W, C] -> [B, H-k+1, W-k+1, k*k*C].

  The last axis is ordered (row, column, channel), as a flattened `[k, k, C, F]` conv kernel.
  """
  k = kernel_size
  _, h, w, _ = x.shape
  return jnp.concatenate([x[:, i : i + h - k + 1, j : j + w - k + 1, :] for i in range(k) for j in range(k)], axis=-1)


class Conv(nn.Module):
  """A stride-1 square convolution with `nn.Conv`'s parameters (names, shapes, initialisation).

  One matrix product of the input's patches with the flattened kernel; under `jax.vmap` over
  parameters it stays a batched matrix product. `pool=True` also takes the 2x2 max pool of the
  output, computed with the convolution as `pooled.conv_max_pool`, the bias added after the pool.
  """

  features: int
  kernel_size: int | Sequence[int] = 3
  padding: str = "VALID"
  pool: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps NHWC `x` to NHWC outputs with `features` channels (the same size if padding is "SAME", halved if pooled)."""
    k = self.kernel_size if isinstance(self.kernel_size, int) else self.kernel_size[0]
    channels = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, channels, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    if self.padding == "SAME":
      x = jnp.pad(x, ((0, 0), ((k - 1) // 2, k // 2), ((k - 1) // 2, k // 2), (0, 0)))
    if self.pool:
      return pooled.conv_max_pool(x, kernel) + bias
    return patches(x, k) @ kernel.reshape(k * k * channels, self.features) + bias
