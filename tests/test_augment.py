import math

import jax
import numpy as np
import pytest

from mnist_flax.data import augment
from mnist_flax.data.augment import Augmentation

IMAGES = jax.random.uniform(jax.random.PRNGKey(0), (6, 28, 28, 1))


def test_random_shift_translates_with_zero_fill():
  np.testing.assert_array_equal(augment.random_shift(jax.random.PRNGKey(1), IMAGES, 0), IMAGES)
  shifted = np.asarray(augment.random_shift(jax.random.PRNGKey(1), IMAGES, 2))
  padded = np.pad(np.asarray(IMAGES), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(6):
    candidates = [padded[i, dy : dy + 28, dx : dx + 28] for dy in range(5) for dx in range(5)]
    assert any(np.array_equal(shifted[i], c) for c in candidates)


def test_warp_with_no_rotation_or_scaling_is_the_identity():
  np.testing.assert_array_equal(augment.warp(IMAGES[0], 0.0, 1.0), IMAGES[0])


def test_a_quarter_turn_is_a_counter_clockwise_rot90():
  turned = augment.warp(IMAGES[0], math.pi / 2, 1.0)
  np.testing.assert_allclose(turned, np.rot90(np.asarray(IMAGES[0])), atol=1e-5)


def test_scaling_about_the_centre():
  dot = np.zeros((28, 28, 1), np.float32)
  dot[13:15, 13:15] = 1.0  # The 2x2 centre block stays put.
  np.testing.assert_allclose(augment.warp(dot, 0.0, 2.0)[13:15, 13:15], 1.0, atol=1e-6)
  corner = np.zeros((28, 28, 1), np.float32)
  corner[0, 0] = 1.0
  assert float(augment.warp(corner, 0.0, 2.0).sum()) == 0.0  # The corner moves off the image: zero fill.
  shrunk = augment.warp(np.ones((28, 28, 1), np.float32), 0.0, 0.5)
  assert float(shrunk[0, 0, 0]) == 0.0 and float(shrunk[13, 13, 0]) == 1.0


@pytest.mark.parametrize("warp", [(15.0, 0.1), (0.0, 0.0, 34.0, 4.0), (10.0, 0.1, 8.0, 3.0)])
def test_random_warp_keeps_shape_and_range_and_depends_on_the_key(warp):
  a = augment.random_warp(jax.random.PRNGKey(1), IMAGES, *warp)
  b = augment.random_warp(jax.random.PRNGKey(2), IMAGES, *warp)
  assert a.shape == IMAGES.shape and a.dtype == IMAGES.dtype
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(augment.random_warp(jax.random.PRNGKey(1), IMAGES, *warp), a)
  np.testing.assert_array_equal(augment.random_warp(jax.random.PRNGKey(1), IMAGES, 0.0, 0.0), IMAGES)


@pytest.mark.parametrize("warp", [(10.0, 0.0), (0.0, 0.15), (0.0, 0.0, 34.0, 4.0)])
def test_each_image_gets_its_own_draw(warp):
  same = np.broadcast_to(IMAGES[:1], IMAGES.shape)
  out = np.asarray(augment.random_warp(jax.random.PRNGKey(3), same, *warp))
  assert len({out[i].tobytes() for i in range(len(out))}) == len(out)


def test_gaussian_smoothing_keeps_a_constant_inside_and_fades_at_the_edges():
  g = np.asarray(augment.gaussian_smoothing_matrix(28, 2.0))
  ones = g @ np.ones((28, 28)) @ g.T
  np.testing.assert_allclose(ones[10:18, 10:18], 1.0, rtol=1e-5)  # Far from the edges: the kernel sums to 1.
  assert 0.25 < ones[0, 0] < 0.45  # A corner sees a little more than a quarter of its kernel.
  np.testing.assert_allclose(g, g.T)


def test_elastic_displacement_is_smooth_and_scales_with_alpha():
  rng = jax.random.PRNGKey(5)
  d_rows, d_cols = map(np.asarray, augment.elastic_displacement(rng, 28, 28, 34.0, 4.0))
  assert d_rows.shape == d_cols.shape == (28, 28) and not np.allclose(d_rows, d_cols)
  assert 0.3 < np.sqrt((d_rows**2).mean()) < 3.0  # Pixels move by about a pixel, not by the noise's full range.
  assert np.abs(np.diff(d_rows, axis=0)).max() < 0.5 * np.abs(d_rows).max()  # Neighbours move alike.
  double = augment.elastic_displacement(rng, 28, 28, 68.0, 4.0)[0]
  np.testing.assert_allclose(double, 2 * d_rows, rtol=1e-5, atol=1e-6)


def test_elastic_distortion_keeps_the_rotations_and_scalings_drawn():
  rng = jax.random.PRNGKey(6)
  affine_only = augment.random_warp(rng, IMAGES, 10.0, 0.1)
  tiny_elastic = augment.random_warp(rng, IMAGES, 10.0, 0.1, 1e-4, 4.0)
  np.testing.assert_allclose(tiny_elastic, affine_only, atol=1e-3)


def test_shifts_alone_are_unchanged_by_the_affine_fields():
  rng = jax.random.PRNGKey(4)
  np.testing.assert_array_equal(Augmentation(max_shift=2)(rng, IMAGES), augment.random_shift(rng, IMAGES, 2))
  assert Augmentation()(rng, IMAGES) is IMAGES


def test_from_config(config):
  assert Augmentation.from_config(config) == Augmentation(max_shift=config.augment_max_shift)
  config.augment_max_rotation, config.augment_max_scale = 10, 0.1
  config.augment_elastic_alpha, config.augment_elastic_sigma = 34, 5
  assert Augmentation.from_config(config) == Augmentation(config.augment_max_shift, 10.0, 0.1, 34.0, 5.0)
  assert hash(Augmentation(2, 10.0, 0.1, 34.0)) == hash(Augmentation(2, 10.0, 0.1, 34.0))


@pytest.mark.parametrize("max_shift", [1, 2, 3])
def test_every_shift_from_minus_to_plus_max_is_drawn_on_each_axis(max_shift):
  dot = np.zeros((2000, 28, 28, 1), np.float32)
  dot[:, 14, 14, 0] = 1.0
  shifted = np.asarray(augment.random_shift(jax.random.PRNGKey(3), dot, max_shift))
  assert np.all(shifted.reshape(len(dot), -1).sum(axis=1) == 1.0)  # The dot stays in the image, whole.
  rows, cols = np.nonzero(shifted[..., 0])[1:]
  for moved in (rows - 14, cols - 14):
    values, counts = np.unique(moved, return_counts=True)
    assert values.tolist() == list(range(-max_shift, max_shift + 1))
    assert counts.min() > len(dot) / (2 * max_shift + 1) / 2  # Each about equally often.
