"""Random augmentation of training batches, on the device: rotation and scaling, then integer shifts."""

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


def affine(image: jax.Array, angle: jax.Array, scale: jax.Array) -> jax.Array:
  """One [H, W, C] image rotated by `angle` radians (counter-clockwise) and scaled by `scale` about its centre.

  Pixels are interpolated bilinearly; what comes from outside the image is 0.
  """
  h, w, c = image.shape
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  cy, cx = (h - 1) / 2, (w - 1) / 2
  cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
  # Each output pixel reads the input where the inverse transform takes it.
  src_rows = cy + cos * (rows - cy) + sin * (cols - cx)
  src_cols = cx - sin * (rows - cy) + cos * (cols - cx)
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, [src_rows, src_cols], order=1, cval=0.0)  # noqa: E731
  return jnp.stack([sample(image[..., i]) for i in range(c)], axis=-1)


def random_affine(rng: jax.Array, images: jax.Array, max_rotation: float, max_scale: float) -> jax.Array:
  """Rotates each image by up to `max_rotation` degrees and scales it by a factor in [1 - max_scale, 1 + max_scale]."""
  if max_rotation == 0 and max_scale == 0:
    return images
  angle_rng, scale_rng = jax.random.split(rng)
  b = images.shape[0]
  limit = math.radians(max_rotation)
  angles = jax.random.uniform(angle_rng, (b,), minval=-limit, maxval=limit)
  scales = jax.random.uniform(scale_rng, (b,), minval=1 - max_scale, maxval=1 + max_scale)
  return jax.vmap(affine)(images, angles, scales)


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """How training images are perturbed: hashable, so a compiled train chunk can close over it.

  Attributes:
    max_shift: Largest translation in pixels, in each direction (an integer).
    max_rotation: Largest rotation in degrees, either way.
    max_scale: Largest relative change of size: factors in [1 - max_scale, 1 + max_scale].
  """

  max_shift: int = 0
  max_rotation: float = 0.0
  max_scale: float = 0.0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Augmentation":
    """The config's `augment_*` fields (those a config from before them lacks count as 0)."""
    return cls(
      max_shift=config.augment_max_shift,
      max_rotation=float(config.get("augment_max_rotation", 0.0)),
      max_scale=float(config.get("augment_max_scale", 0.0)),
    )

  def __call__(self, rng: jax.Array, images: jax.Array) -> jax.Array:
    """Augments a batch of [B, H, W, C] float images with key `rng` (one draw per image).

    Shifts use `rng` itself, so runs with shifts alone are unchanged by the other fields.
    """
    images = random_affine(jax.random.fold_in(rng, 1), images, self.max_rotation, self.max_scale)
    return random_shift(rng, images, self.max_shift)
