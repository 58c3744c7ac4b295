"""The Linen CNN: conv (+ batch norm) + ReLU + 2x2 max-pool blocks, dense + ReLU + dropout, 10 logits."""

import sys
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 and VALID padding on NHWC inputs.

  Gives exactly the values and the gradient of `nn.max_pool(x, (2, 2), (2, 2))` (an odd trailing
  row or column is dropped; each window's gradient goes to its first maximum in row-major order),
  written as a reshape and a max, and a gradient of elementwise selects. XLA:CPU runs `nn.max_pool`'s
  select-and-scatter gradient about as slowly as the whole rest of the backward pass, and the
  gradient of `jnp.max` (which splits it among tied maxima) slower than these selects.
  """
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2, :]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _max_pool_2x2_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  y = max_pool_2x2(x)
  return y, (x, y)


def _route_to_first_max(candidates: Sequence[jax.Array], m: jax.Array, g: jax.Array) -> list[jax.Array]:
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
  routed = _route_to_first_max([windows[:, :, i, :, j, :] for i in range(2) for j in range(2)], y, g)
  rows = [jnp.stack(routed[2 * i : 2 * i + 2], axis=-2) for i in range(2)]
  d_x = jnp.stack(rows, axis=2).reshape(b, h // 2 * 2, w // 2 * 2, c)
  return (jnp.pad(d_x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def patches(x: jax.Array, kernel_size: int) -> jax.Array:
  """The k x k neighbourhoods of an NHWC input, VALID: [B, H, W, C] -> [B, H-k+1, W-k+1, k*k*C].

  The last axis is ordered (row, column, channel), as a flattened `[k, k, C, F]` conv kernel.
  """
  k = kernel_size
  _, h, w, _ = x.shape
  return jnp.concatenate([x[:, i : i + h - k + 1, j : j + w - k + 1, :] for i in range(k) for j in range(k)], axis=-1)


def xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """XLA's stride-1 VALID convolution of NHWC `x` with an HWIO `kernel`."""
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def conv_patch_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`xla_conv`, whose kernel gradient is one matrix product of the input's patches with the output gradient.

  The values and the input gradient are XLA's. XLA:CPU computes a convolution's kernel gradient
  several times slower than the same contraction written as a matrix product.
  """
  return xla_conv(x, kernel)


def _conv_patch_grad_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  return xla_conv(x, kernel), (x, kernel)


def _conv_patch_grad_bwd(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
  x, kernel = residuals
  k, _, channels, features = kernel.shape
  d_kernel = patches(x, k).reshape(-1, k * k * channels).T @ g.reshape(-1, features)
  d_x = jax.vjp(lambda x: xla_conv(x, kernel), x)[1](g)[0]  # Dead code, dropped by XLA, for input images.
  return d_x, d_kernel.reshape(kernel.shape)


conv_patch_grad.defvjp(_conv_patch_grad_fwd, _conv_patch_grad_bwd)


def pool_windows(x: jax.Array, kernel_size: int) -> jax.Array:
  """The input windows of a VALID k x k convolution's 2x2 pool windows: [B, H, W, C] -> [B, Ho, Wo, (k+1)^2 C].

  Window (i, j) is the (k+1) x (k+1) patch at (2i, 2j): all the inputs of the four convolution
  outputs that the pool's window (i, j) takes the maximum of. Ho, Wo are the pooled sides (an odd
  convolution output side drops its last row or column, as the pool does). The last axis is
  ordered (row, column, channel).
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
  """`max_pool_2x2(xla_conv(x, kernel))`, as one matrix product of `pool_windows` with `pool_window_kernel`.

  The same values up to rounding, and the same gradients (each pool window's gradient goes to its
  first maximum). For a single-channel input (the images) XLA:CPU trains the seed network about
  1.2x faster per step with it than with the convolution as a patch product followed by the pool:
  the product has a quarter of the rows, each with 16 inputs instead of 9 and all four outputs of
  a pool window; the ReLU and the pool's gradient work at a quarter of the size; and the kernel
  gradient is one product of the windows with the routed pool gradient, with no transposed copy.
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
  routed = jnp.stack(_route_to_first_max([y[:, q, :] for q in range(4)], m, g.reshape(m.shape)), axis=1)
  routed = routed.reshape(m.shape[0], -1)
  w, kernel_vjp = jax.vjp(pool_window_kernel, kernel)
  d_w = (routed.T @ windows).T  # XLA:CPU transposes the small product, not the large operand.
  d_windows = (routed @ w.T).reshape(*g.shape[:3], -1)
  d_x = jax.vjp(lambda x: pool_windows(x, kernel.shape[0]), x)[1](d_windows)[0]  # Dead code for input images.
  return d_x, kernel_vjp(d_w)[0]


conv_max_pool.defvjp(_conv_max_pool_fwd, _conv_max_pool_bwd)


def pool_kept_side(side: int, reach: int) -> int:
  """The part of a VALID block's input side whose convolutions' outputs (reach `reach`) its 2x2 pool keeps."""
  return (side - reach) // 2 * 2 + reach


def used_input_sides(side: int, blocks: int, reach: int) -> list[int]:
  """The input side of each of `blocks` VALID blocks (conv reach `reach`, then a 2x2 pool) that the last pool uses.

  A block's pool drops an odd last row of its convolutions' outputs, and each block's output only
  matters where the next block uses it, so each side is cropped from the last block back:
  28-pixel images in the default network give [26, 12] (the convolutions' outputs 24 and 10).
  """
  used = []
  for _ in range(blocks):
    used.append(pool_kept_side(side, reach))
    side = (used[-1] - reach) // 2
  for i in reversed(range(blocks - 1)):
    used[i] = 2 * used[i + 1] + reach  # What the next block keeps of this block's output.
  return used


CONV_IMPLS = ("xla", "patches", "patch_grad")
# How the CNN can compute its convolutions: `Conv`'s three, and "pooled" ("patches", with a block on
# a single-channel input, the images, computed as one pooled convolution: `conv_max_pool`).
CNN_CONV_IMPLS = (*CONV_IMPLS, "pooled")


class Conv(nn.Module):
  """A stride-1 k x k convolution with the parameters of `nn.Conv` (same names, shapes and initialisation).

  `impl="xla"` is XLA's convolution. `"patches"` is one matrix product of the input's k x k patches
  with the flattened kernel: under `jax.vmap` over parameters (ensemble members) it stays a batched
  matrix product, where XLA's convolution becomes a grouped convolution that XLA:CPU runs about
  3x slower. `"patch_grad"` is XLA's convolution with the kernel gradient of `"patches"`
  (`conv_patch_grad`). All three give the same values and gradients up to rounding.

  `pool=True` also takes the 2x2 max pool (`max_pool_2x2`) of the output, computed together with
  the convolution as `conv_max_pool` (whatever `impl`), the bias added after the pool: the same
  values, and under a ReLU the same as pooling the ReLU of the unpooled output.
  """

  features: int
  kernel_size: int = 3
  padding: str = "VALID"
  impl: str = "xla"
  pool: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps NHWC `x` to NHWC outputs with `features` channels (the same size if padding is "SAME", halved if pooled)."""
    k, channels = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, channels, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    if self.padding == "SAME":
      x = jnp.pad(x, ((0, 0), ((k - 1) // 2, k // 2), ((k - 1) // 2, k // 2), (0, 0)))
    if self.pool:
      y = conv_max_pool(x, kernel)
    elif self.impl == "patches":
      y = patches(x, k) @ kernel.reshape(k * k * channels, self.features)
    elif self.impl == "patch_grad":
      y = conv_patch_grad(x, kernel)
    else:
      y = xla_conv(x, kernel)
    return y + bias


class CNN(nn.Module):
  """A configurable MNIST CNN.

  With VALID padding, a block whose convolutions would leave an odd side (the default network's
  second block: 13 -> 11) gets its input cropped by a row and a column first, so that no convolution
  computes the outputs the 2x2 pool drops: about 17 % less work in that block. A block computed as
  one pooled convolution (`conv_impl="pooled"`) gets its input cropped to what reaches the last
  block's pooled outputs (`used_input_sides`): the default network's image to 26x26, about 15 % less
  work in the first block. (Cropped so in the other layouts, XLA:CPU fused the second convolution's
  input gradient into the pool's gradient, and stacked ensemble members ran 7 % slower.) The logits
  are the same, up to float rounding.

  Attributes:
    features: Output channels of each conv block (conv -> ReLU -> 2x2 max-pool).
    kernel_size: Side of the square conv kernels.
    padding: Conv padding, "VALID" or "SAME".
    conv_impl: How the convolutions are computed, "xla", "patches" or "patch_grad" (see `Conv`), or
      "pooled" ("patches", the first block as one pooled convolution, `conv_max_pool`).
    convs_per_block: Number of conv + ReLU layers before each pool.
    batch_norm: Whether each conv and hidden dense layer is followed by `nn.BatchNorm` (before the
      ReLU): the batch's statistics when `train`, the running ones (the `batch_stats` collection)
      otherwise.
    dense_features: Widths of the hidden dense layers (dense -> ReLU -> dropout).
    dropout_rate: Dropout rate after each hidden dense layer (active when `train`).
    num_classes: Number of output logits.
  """

  features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  padding: str = "VALID"
  conv_impl: str = "xla"
  convs_per_block: int = 1
  batch_norm: bool = False
  dense_features: Sequence[int] = (128,)
  dropout_rate: float = 0.0
  num_classes: int = NUM_CLASSES

  def _pools_in_conv(self, x: jax.Array) -> bool:
    """Whether a block on input `x` is computed as one pooled convolution (`conv_max_pool`).

    With `conv_impl="pooled"`, a single conv per block and no batch norm, for a single-channel input
    (the images): there XLA:CPU trains it faster, while on the second block's 32 channels it was
    measured about 10 % slower per step of the seed network.
    """
    return self.conv_impl == "pooled" and self.convs_per_block == 1 and not self.batch_norm and x.shape[-1] == 1

  def _normalise(self, x: jax.Array, train: bool) -> jax.Array:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9)(x) if self.batch_norm else x

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    """Maps float images in [0, 1], shaped [B, 28, 28, 1], to logits [B, num_classes]."""
    x = images
    n = 0
    impl = "patches" if self.conv_impl == "pooled" else self.conv_impl
    reach, blocks = self.convs_per_block * (self.kernel_size - 1), len(self.features)
    heights, widths = used_input_sides(x.shape[1], blocks, reach), used_input_sides(x.shape[2], blocks, reach)
    for block, f in enumerate(self.features):
      pooled = self._pools_in_conv(x)
      if self.padding == "VALID":  # Pooled: only what the later blocks use; otherwise what this block's pool keeps.
        sides = (heights[block], widths[block]) if pooled else [pool_kept_side(s, reach) for s in x.shape[1:3]]
        x = x[:, : sides[0], : sides[1], :]
      if pooled:
        x = nn.relu(Conv(f, self.kernel_size, self.padding, impl, pool=True, name=f"Conv_{n}")(x))
        n += 1
        continue
      for _ in range(self.convs_per_block):
        x = Conv(f, self.kernel_size, self.padding, impl, name=f"Conv_{n}")(x)
        x = nn.relu(self._normalise(x, train))
        n += 1
      x = max_pool_2x2(x)
    x = x.reshape((x.shape[0], -1))
    for f in self.dense_features:
      x = nn.relu(self._normalise(nn.Dense(f)(x), train))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


def create_model(model_config: ml_collections.ConfigDict, conv_impl: str = "xla") -> CNN:
  """Builds the CNN from the `model` section of a config, its convolutions computed as `conv_impl`."""
  c = model_config
  return CNN(
    conv_impl=conv_impl,
    features=tuple(c.features),
    kernel_size=c.kernel_size,
    padding=c.padding,
    convs_per_block=c.convs_per_block,
    batch_norm=c.get("batch_norm", False),
    dense_features=tuple(c.dense_features),
    dropout_rate=c.dropout_rate,
  )


def summary(model: nn.Module) -> str:
  """Returns Flax's table of layers, output shapes and parameter counts for one image."""
  rng = jax.random.PRNGKey(0)
  console = {"width": 110, "force_terminal": sys.stdout.isatty(), "force_jupyter": False}
  table = nn.tabulate(model, {"params": rng, "dropout": rng}, console_kwargs=console)
  return table(jnp.zeros((1, *IMAGE_SHAPE), jnp.float32), train=False)
