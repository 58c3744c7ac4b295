"""2x2 max pooling whose gradient XLA:CPU computes quickly: elementwise selects, not select-and-scatter."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """`nn.max_pool(x, (2, 2), (2, 2))` on NHWC inputs, values and gradient alike.

  An odd last row or column is dropped; each window's gradient goes to its first maximum in
  row-major order (as select-and-scatter does; `jnp.max`'s gradient would split it among ties).
  """
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2, :]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _max_pool_2x2_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  y = max_pool_2x2(x)
  return y, (x, y)


def route_to_first_max(candidates: Sequence[jax.Array], m: jax.Array, g: jax.Array) -> list[jax.Array]:
  """Gradient `g` for each candidate: `g` where it is the first (in order) equal to their maximum `m`, else 0."""
  taken = jnp.zeros(m.shape, bool)  # Whether an earlier candidate held the maximum.
  routed = []
  for candidate in candidates:
    first = (candidate == m) & ~taken
    taken = taken | first
    routed.append(jnp.where(first, g, 0))
  return routed


def _max_pool_2x2_bwd(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
  x, y = residuals
  b, h, w, c = x.shape
  windows = x[:, : h // 2 * 2, : w // 2 * 2, :].reshape(b, h // 2, 2, w // 2, 2, c)
  routed = route_to_first_max([windows[:, :, i, :, j, :] for i in range(2) for j in range(2)], y, g)
  rows = [jnp.stack(routed[2 * i : 2 * i + 2], axis=-2) for i in range(2)]
  d_x = jnp.stack(rows, axis=2).reshape(b, h // 2 * 2, w // 2 * 2, c)
  return (jnp.pad(d_x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)
