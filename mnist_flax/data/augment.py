"""Random augmentation of training batches, on the device: rotation, scaling and elastic distortion, then shifts."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections


def random_shift(rng: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
  """Translates each image by up to `max_shift` pixels in each direction, filling with zeros."""
  if max_shift == 0:
    return images
  b, h, w, _ = images.shape
  shifts = jax.random.randint(rng, (b, 2), 0, 2 * max_shift + 1)
  padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
  crop = lambda img, s: jax.lax.dynamic_slice(img, (s[0], s[1], 0), (h, w, img.shape[-1]))  # noqa: E731
  return jax.vmap(crop)(padded, shifts)


def warp(
  image: jax.Array, angle: jax.Array, scale: jax.Array, displacement: tuple[jax.Array, jax.Array] | None = None
) -> jax.Array:
  """One [H, W, C] image rotated by `angle` radians (counter-clockwise) and scaled by `scale` about its centre.

  With `displacement` (rows, cols), each [H, W], every output pixel then reads the input that many
  pixels further on. Pixels are interpolated bilinearly; what comes from outside the image is 0.
  """
  h, w, c = image.shape
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  cy, cx = (h - 1) / 2, (w - 1) / 2
  cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
  # Each output pixel reads the input where the inverse transform takes it.
  src_rows = cy + cos * (rows - cy) + sin * (cols - cx)
  src_cols = cx - sin * (rows - cy) + cos * (cols - cx)
  if displacement is not None:
    src_rows, src_cols = src_rows + displacement[0], src_cols + displacement[1]
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, [src_rows, src_cols], order=1, cval=0.0)  # noqa: E731
  return jnp.stack([sample(image[..., i]) for i in range(c)], axis=-1)


def gaussian_smoothing_matrix(n: int, sigma: float) -> jax.Array:
  """[n, n] matrix `G` such that `G @ f @ G.T` is `f` blurred by a Gaussian of `sigma` pixels (zeros outside)."""
  offsets = jnp.arange(n, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * ((offsets[:, None] - offsets[None, :]) / sigma) ** 2)
  kernel = jnp.exp(-0.5 * (jnp.arange(1 - n, n, dtype=jnp.float32) / sigma) ** 2)
  return weights / kernel.sum()  # The whole kernel sums to 1.


def elastic_displacement(rng: jax.Array, h: int, w: int, alpha: float, sigma: float) -> tuple[jax.Array, jax.Array]:
  """A random smooth displacement field (rows, cols), each [h, w]: uniform noise in [-1, 1], blurred, times `alpha`."""
  noise = jax.random.uniform(rng, (2, h, w), minval=-1.0, maxval=1.0)
  g_rows, g_cols = gaussian_smoothing_matrix(h, sigma), gaussian_smoothing_matrix(w, sigma)
  field = alpha * (g_rows @ noise @ g_cols.T)
  return field[0], field[1]


def random_warp(
  rng: jax.Array,
  images: jax.Array,
  max_rotation: float,
  max_scale: float,
  elastic_alpha: float = 0.0,
  elastic_sigma: float = 4.0,
) -> jax.Array:
  """Random rotations and scalings, then an elastic distortion, in one bilinear resampling.

  Each image is rotated by up to `max_rotation` degrees either way and scaled by a factor in
  [1 - max_scale, 1 + max_scale] about its centre. The elastic distortion moves each pixel by a
  random smooth field: uniform noise in [-1, 1] per pixel and direction, blurred by a Gaussian of
  `elastic_sigma` pixels and scaled by `elastic_alpha` (0 = none). Each image gets its own draw;
  the rotations and scalings drawn with a key are the same whatever the elastic fields.
  """
  if max_rotation == 0 and max_scale == 0 and elastic_alpha == 0:
    return images
  angle_rng, scale_rng = jax.random.split(rng)
  b, h, w, _ = images.shape
  limit = math.radians(max_rotation)
  angles = jax.random.uniform(angle_rng, (b,), minval=-limit, maxval=limit)
  scales = jax.random.uniform(scale_rng, (b,), minval=1 - max_scale, maxval=1 + max_scale)
  elastic_rngs = jax.random.split(jax.random.fold_in(rng, 2), b)

  def one(image: jax.Array, angle: jax.Array, scale: jax.Array, elastic_rng: jax.Array) -> jax.Array:
    displacement = elastic_displacement(elastic_rng, h, w, elastic_alpha, elastic_sigma) if elastic_alpha else None
    return warp(image, angle, scale, displacement)

  return jax.vmap(one)(images, angles, scales, elastic_rngs)


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """How training images are perturbed: hashable, so a compiled train chunk can close over it.

  Attributes:
    max_shift: Largest translation in pixels, in each direction (an integer).
    max_rotation: Largest rotation in degrees, either way.
    max_scale: Largest relative change of size: factors in [1 - max_scale, 1 + max_scale].
    elastic_alpha: Strength of the elastic distortion, in pixels (0 = none); see `random_warp`.
    elastic_sigma: Smoothness of the elastic distortion: its Gaussian's standard deviation in pixels.
  """

  max_shift: int = 0
  max_rotation: float = 0.0
  max_scale: float = 0.0
  elastic_alpha: float = 0.0
  elastic_sigma: float = 4.0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Augmentation":
    """The config's `augment_*` fields (those a config from before them lacks count as 0)."""
    return cls(
      max_shift=config.augment_max_shift,
      max_rotation=float(config.augment_max_rotation),
      max_scale=float(config.augment_max_scale),
      elastic_alpha=float(config.augment_elastic_alpha),
      elastic_sigma=float(config.augment_elastic_sigma),
    )

  def __call__(self, rng: jax.Array, images: jax.Array) -> jax.Array:
    """Augments a batch of [B, H, W, C] float images with key `rng` (one draw per image).

    Shifts use `rng` itself, so runs with shifts alone are unchanged by the other fields.
    """
    images = random_warp(
      jax.random.fold_in(rng, 1), images, self.max_rotation, self.max_scale, self.elastic_alpha, self.elastic_sigma
    )
    return random_shift(rng, images, self.max_shift)
