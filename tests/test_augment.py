import math

import jax
import numpy as np
import pytest

from mnist_flax import augment
from mnist_flax.augment import Augmentation

IMAGES = jax.random.uniform(jax.random.PRNGKey(0), (6, 28, 28, 1))


def test_random_shift_translates_with_zero_fill():
  np.testing.assert_array_equal(augment.random_shift(jax.random.PRNGKey(1), IMAGES, 0), IMAGES)
  shifted = np.asarray(augment.random_shift(jax.random.PRNGKey(1), IMAGES, 2))
  padded = np.pad(np.asarray(IMAGES), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(6):
    candidates = [padded[i, dy : dy + 28, dx : dx + 28] for dy in range(5) for dx in range(5)]
    assert any(np.array_equal(shifted[i], c) for c in candidates)


def test_affine_with_no_rotation_or_scaling_is_the_identity():
  np.testing.assert_array_equal(augment.affine(IMAGES[0], 0.0, 1.0), IMAGES[0])


def test_a_quarter_turn_is_a_counter_clockwise_rot90():
  turned = augment.affine(IMAGES[0], math.pi / 2, 1.0)
  np.testing.assert_allclose(turned, np.rot90(np.asarray(IMAGES[0])), atol=1e-5)


def test_scaling_about_the_centre():
  dot = np.zeros((28, 28, 1), np.float32)
  dot[13:15, 13:15] = 1.0  # The 2x2 centre block stays put.
  np.testing.assert_allclose(augment.affine(dot, 0.0, 2.0)[13:15, 13:15], 1.0, atol=1e-6)
  corner = np.zeros((28, 28, 1), np.float32)
  corner[0, 0] = 1.0
  assert float(augment.affine(corner, 0.0, 2.0).sum()) == 0.0  # The corner moves off the image: zero fill.
  shrunk = augment.affine(np.ones((28, 28, 1), np.float32), 0.0, 0.5)
  assert float(shrunk[0, 0, 0]) == 0.0 and float(shrunk[13, 13, 0]) == 1.0


def test_random_affine_keeps_shape_and_range_and_depends_on_the_key():
  a = augment.random_affine(jax.random.PRNGKey(1), IMAGES, 15.0, 0.1)
  b = augment.random_affine(jax.random.PRNGKey(2), IMAGES, 15.0, 0.1)
  assert a.shape == IMAGES.shape and a.dtype == IMAGES.dtype
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(augment.random_affine(jax.random.PRNGKey(1), IMAGES, 15.0, 0.1), a)
  np.testing.assert_array_equal(augment.random_affine(jax.random.PRNGKey(1), IMAGES, 0.0, 0.0), IMAGES)


@pytest.mark.parametrize("max_rotation, max_scale", [(10.0, 0.0), (0.0, 0.15)])
def test_each_image_gets_its_own_draw(max_rotation, max_scale):
  same = np.broadcast_to(IMAGES[:1], IMAGES.shape)
  out = np.asarray(augment.random_affine(jax.random.PRNGKey(3), same, max_rotation, max_scale))
  assert len({out[i].tobytes() for i in range(len(out))}) == len(out)


def test_shifts_alone_are_unchanged_by_the_affine_fields():
  rng = jax.random.PRNGKey(4)
  np.testing.assert_array_equal(Augmentation(max_shift=2)(rng, IMAGES), augment.random_shift(rng, IMAGES, 2))
  assert Augmentation()(rng, IMAGES) is IMAGES


def test_from_config(config):
  assert Augmentation.from_config(config) == Augmentation(max_shift=config.augment_max_shift)
  config.augment_max_rotation, config.augment_max_scale = 10, 0.1
  assert Augmentation.from_config(config) == Augmentation(config.augment_max_shift, 10.0, 0.1)
  del config["augment_max_rotation"], config["augment_max_scale"]  # A config from before these fields.
  assert Augmentation.from_config(config) == Augmentation(max_shift=config.augment_max_shift)
  assert hash(Augmentation(2, 10.0, 0.1)) == hash(Augmentation(2, 10.0, 0.1))
