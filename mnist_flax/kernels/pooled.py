"""A convolution and its 2x2 max pool as one matrix product of (k+1) x (k+1) windows, for single-channel images."""

import jax
import jax.numpy as jnp

from mnist_flax.kernels.pooling import route_to_first_max


def xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """XLA's stride-1 VALID convolution of NHWC `x` with an HWIO `kernel`."""
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def pool_windows(x: jax.Array, kernel_size: int) -> jax.Array:
  """The input windows of a VALID k x k convolution's 2x2 pool windows: [B, H, W, C] -> [B, Ho, Wo, (k+1)^2 C].

  Window (i, j) is the (k+1) x (k+1) patch at (2i, 2j): all the inputs of the four convolution
  outputs that the pool's window (i, j) takes the maximum of. Ho, Wo are the pooled sides. The last
  axis is ordered (row, column, channel).
  """
  s = kernel_size + 1
  _, h, w, _ = x.shape
  ho, wo = (h - kernel_size + 1) // 2, (w - kernel_size + 1) // 2
  return jnp.concatenate(
    [x[:, i : i + 2 * ho - 1 : 2, j : j + 2 * wo - 1 : 2, :] for i in range(s) for j in range(s)], axis=-1
  )


def pool_window_kernel(kernel: jax.Array) -> jax.Array:
  """A [k, k, C, F] kernel as the [(k+1)^2 C, 4 F] matrix from `pool_windows` to each pool window's four outputs.

  Columns [q F, (q+1) F) compute the output at offset q = 2 di + dj of the window (row-major, as the
  pool scans it).
  """
  k, _, channels, features = kernel.shape
  shifted = [jnp.pad(kernel, ((di, 1 - di), (dj, 1 - dj), (0, 0), (0, 0))) for di in range(2) for dj in range(2)]
  return jnp.stack([w.reshape((k + 1) ** 2 * channels, features) for w in shifted], axis=1).reshape(-1, 4 * features)


@jax.custom_vjp
def conv_max_pool(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`max_pool_2x2(xla_conv(x, kernel))` as one product of `pool_windows` with `pool_window_kernel`.

  The same values up to rounding and the same gradients. The product has a quarter of the rows of
  a patch product, each with all four outputs of a pool window; the ReLU and the pool's gradient
  work at a quarter of the size, and the kernel gradient is one product with the routed gradient.
  """
  return _conv_max_pool_fwd(x, kernel)[0]


def _conv_max_pool_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple]:
  k, features = kernel.shape[0], kernel.shape[-1]
  windows = pool_windows(x, k)
  b, ho, wo, n = windows.shape
  windows = windows.reshape(-1, n)
  y = (windows @ pool_window_kernel(kernel)).reshape(-1, 4, features)
  m = y.max(axis=1)
  return m.reshape(b, ho, wo, features), (x, kernel, windows, y, m)


def _conv_max_pool_bwd(residuals: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
  x, kernel, windows, y, m = residuals
  routed = jnp.stack(route_to_first_max([y[:, q, :] for q in range(4)], m, g.reshape(m.shape)), axis=1)
  routed = routed.reshape(m.shape[0], -1)
  w, kernel_vjp = jax.vjp(pool_window_kernel, kernel)
  d_w = (routed.T @ windows).T  # XLA:CPU transposes the small product, not the large operand.
  d_windows = (routed @ w.T).reshape(*g.shape[:3], -1)
  d_x = jax.vjp(lambda x: pool_windows(x, kernel.shape[0]), x)[1](d_windows)[0]  # Dead code for input images.
  return d_x, kernel_vjp(d_w)[0]


conv_max_pool.defvjp(_conv_max_pool_fwd, _conv_max_pool_bwd)
