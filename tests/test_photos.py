import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_flax.tools import photos
from mnist_flax.tools.photos import MNIST_CENTRE

# A "2" as one polyline in unit coordinates (x right, y down), its box about 0.8 wide and 1 tall.
TWO = [(0.15, 0.25), (0.3, 0.08), (0.6, 0.03), (0.82, 0.2), (0.8, 0.42), (0.5, 0.68), (0.12, 0.97), (0.92, 0.97)]


def draw_two(canvas: tuple[int, int], scale: float, origin: tuple[int, int], width: int, ink: int, paper: int):
  """The "2" drawn with a thick stroke on a `canvas` (width, height) picture, as uint8 [H, W]."""
  image = Image.new("L", canvas, paper)
  points = [(origin[0] + x * scale * 0.7, origin[1] + y * scale) for x, y in TWO]
  ImageDraw.Draw(image).line(points, fill=ink, width=width, joint="curve")
  return np.asarray(image)


def centre_of_mass(x: np.ndarray) -> tuple[float, float]:
  x = np.asarray(x, np.float64)
  mass = x.sum()
  return float(x.sum(axis=1) @ np.arange(x.shape[0]) / mass), float(x.sum(axis=0) @ np.arange(x.shape[1]) / mass)


def ink_box(x: np.ndarray) -> tuple[int, int]:
  rows, cols = np.flatnonzero(x.any(axis=1)), np.flatnonzero(x.any(axis=0))
  return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def block(shape, top, left, h, w, ink, paper, dtype=np.uint8):
  x = np.full(shape, paper, dtype)
  x[top : top + h, left : left + w] = ink
  return x


# to_light_on_dark


def test_dark_on_light_is_inverted():
  x = block((40, 30), 10, 8, 12, 6, ink=0, paper=255)
  out = photos.to_light_on_dark(x)
  assert out.dtype == np.float32 and out.shape == (40, 30)
  np.testing.assert_array_equal(out, (x == 0).astype(np.float32))


def test_light_on_dark_is_kept():
  x = block((40, 30), 10, 8, 12, 6, ink=200, paper=0)
  out = photos.to_light_on_dark(x)
  np.testing.assert_array_equal(out, (x == 200).astype(np.float32))


@pytest.mark.parametrize("ink, paper", [(40, 180), (220, 60), (0.1, 0.7)])
def test_grey_paper_level_is_removed(ink, paper):
  dtype = np.float32 if isinstance(ink, float) else np.uint8
  x = block((50, 50), 20, 15, 10, 20, ink=ink, paper=paper, dtype=dtype)
  out = photos.to_light_on_dark(x)
  np.testing.assert_allclose(out, (x == x[25, 25]).astype(np.float32), atol=1e-6)


def test_output_is_in_unit_range_with_maximum_one():
  rng = np.random.default_rng(0)
  x = draw_two((120, 150), 100, (30, 20), 12, ink=30, paper=210).astype(np.float64)
  x = np.clip(x + rng.normal(0, 5, x.shape), 0, 255).astype(np.uint8)
  out = photos.to_light_on_dark(x)
  assert out.dtype == np.float32
  assert out.min() == 0.0 and out.max() == 1.0
  # The paper noise is removed with the paper level: nearly all paper pixels are exactly 0.
  paper = draw_two((120, 150), 100, (30, 20), 12, ink=0, paper=255) == 255
  assert np.mean(out[paper] == 0) > 0.9 and out[paper].max() < 0.1
  # The stroke stays bright.
  assert np.median(out[~paper]) > 0.8


@pytest.mark.parametrize(
  "make",
  [
    lambda rng: np.full((30, 30), 255, np.uint8),
    lambda rng: np.zeros((30, 30), np.float32),
    lambda rng: np.clip(rng.normal(200, 3, (60, 60)), 0, 255).astype(np.uint8),
    # Noise that stands out by more than MIN_CONTRAST, but only a few of its own deviations.
    lambda rng: np.clip(rng.normal(200, 8, (60, 60)), 0, 255).astype(np.uint8),
    lambda rng: block((40, 40), 10, 10, 10, 10, ink=250, paper=255),
  ],
  ids=["white", "black-float", "paper-noise", "strong-paper-noise", "too-faint"],
)
def test_blank_image_raises(make):
  with pytest.raises(ValueError, match="^no digit found"):
    photos.to_light_on_dark(make(np.random.default_rng(0)))


@pytest.mark.parametrize(
  "x",
  [
    np.zeros((10, 10, 3), np.uint8),
    np.zeros(10, np.uint8),
    np.zeros((0, 5), np.uint8),
    np.zeros((5, 5), bool),
    np.full((5, 5), "a"),
  ],
  ids=["3-D", "1-D", "empty", "bool", "str"],
)
def test_non_image_raises(x):
  with pytest.raises(ValueError, match="expected a non-empty 2-D grayscale image"):
    photos.to_light_on_dark(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_raises(bad):
  x = block((20, 20), 5, 5, 5, 5, ink=0.0, paper=1.0, dtype=np.float32)
  x[0, 0] = bad
  with pytest.raises(ValueError, match="NaN or infinite"):
    photos.to_light_on_dark(x)


# crop_to_ink


def test_crop_to_bounding_box():
  x = np.zeros((30, 40), np.float32)
  x[5:10, 12:20] = 1.0
  x[7, 25] = 0.8  # widens the box to column 25
  out = photos.crop_to_ink(x)
  assert out.shape == (5, 14)
  np.testing.assert_array_equal(out, x[5:10, 12:26])


def test_crop_ignores_faint_noise_but_keeps_grey_values_inside():
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 0.29, (30, 40)).astype(np.float32)
  x[10:20, 5:15] = 1.0
  x[12, 8] = 0.1
  out = photos.crop_to_ink(x)
  assert out.shape == (10, 10)
  assert out[2, 3] == np.float32(0.1)


def test_crop_threshold_sets_what_counts_as_ink():
  x = np.zeros((30, 30), np.float32)
  x[10:20, 10:20] = 1.0
  x[2, 2] = 0.4
  assert photos.crop_to_ink(x).shape == (18, 18)
  assert photos.crop_to_ink(x, threshold=0.5).shape == (10, 10)


@pytest.mark.parametrize("x", [np.zeros((10, 10), np.float32), np.zeros((0, 0), np.float32)])
def test_crop_without_ink_raises(x):
  with pytest.raises(ValueError, match="^no digit found"):
    photos.crop_to_ink(x)


# fit_in_box


@pytest.mark.parametrize(
  "shape, expected",
  [((40, 10), (20, 5)), ((10, 40), (5, 20)), ((30, 30), (20, 20)), ((3, 2), (20, 13)), ((1, 1), (20, 20))],
  ids=["tall", "wide", "square", "tiny", "one-pixel"],
)
def test_fit_longer_side_is_box_and_aspect_kept(shape, expected):
  out = photos.fit_in_box(np.ones(shape, np.float32))
  assert out.dtype == np.float32
  assert out.shape == expected


def test_fit_very_thin_keeps_at_least_one_pixel():
  assert photos.fit_in_box(np.ones((200, 2), np.float32)).shape == (20, 1)
  assert photos.fit_in_box(np.ones((3, 200), np.float32), size=10).shape == (1, 10)


def test_fit_values_stay_in_unit_range():
  # Sharp edges make the Lanczos filter ring above 1 and below 0.
  x = np.zeros((60, 45), np.float32)
  x[:, 20:25] = 1.0
  x[30:33, :] = 1.0
  out = photos.fit_in_box(x)
  assert out.shape == (20, 15)
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert out.max() > 0.9 and out[0, 0] < 0.1


def test_fit_upscales_tiny_input():
  x = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  out = photos.fit_in_box(x)
  assert out.shape == (20, 20)
  assert out[:8, :8].mean() > 0.8 and out[:8, -8:].mean() < 0.2


# centre_by_mass


@pytest.mark.parametrize("shape", [(20, 20), (20, 7), (9, 20), (20, 1), (13, 17)])
def test_centre_of_mass_lands_on_mnist_centre(shape):
  rng = np.random.default_rng(sum(shape))
  x = rng.uniform(0, 1, shape).astype(np.float32)
  out = photos.centre_by_mass(x)
  assert out.shape == (28, 28) and out.dtype == np.float32
  row, col = centre_of_mass(out)
  assert abs(row - MNIST_CENTRE[0]) <= 0.5 + 1e-6 and abs(col - MNIST_CENTRE[1]) <= 0.5 + 1e-6
  np.testing.assert_allclose(out.sum(), x.sum(), rtol=1e-5)


def test_off_centre_mass_is_recentred():
  # Most of the ink in the bottom-right corner of a 14x14 box.
  x = np.zeros((14, 14), np.float32)
  x[8:14, 8:14] = 1.0
  x[0:2, 0:2] = 0.3
  out = photos.centre_by_mass(x)
  row, col = centre_of_mass(out)
  assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5
  # The box sits up and to the left of where centring its outline would put it (rows 7..20).
  rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
  assert rows[0] <= 4 and cols[0] <= 4
  np.testing.assert_allclose(out.sum(), x.sum(), rtol=1e-6)


def test_centre_by_mass_scales_target_with_canvas():
  x = np.zeros((20, 10), np.float32)
  x[3:15, 2:8] = 1.0
  row, col = centre_of_mass(photos.centre_by_mass(x, size=56))
  assert abs(row - 28) <= 0.5 and abs(col - 28) <= 0.5


def test_digit_touching_edge_is_not_cut():
  # A heavy bar on the left edge pulls the centre of mass far left: moving it to column 14 would push
  # the right-hand part out of the canvas, so the shift stops at the canvas edge.
  x = np.zeros((20, 20), np.float32)
  x[:, 0:2] = 1.0
  x[10, 2:20] = 0.2
  out = photos.centre_by_mass(x)
  np.testing.assert_allclose(out.sum(), x.sum(), rtol=1e-6)
  assert out[:, -1].max() > 0  # the thin stroke reaches the right edge, uncut
  # It is as close to the target as the canvas allows.
  assert centre_of_mass(out)[1] > centre_of_mass(x)[1] + 7


def test_centre_by_mass_without_ink_raises():
  with pytest.raises(ValueError, match="^no digit found"):
    photos.centre_by_mass(np.zeros((20, 20), np.float32))


# to_mnist


def reference_two() -> np.ndarray:
  """The "2" rendered straight into MNIST layout: area-averaged into a 20x20 box, placed by centre of mass."""
  big = draw_two((400, 400), 300, (50, 50), 36, ink=255, paper=0).astype(np.float32) / 255
  rows, cols = np.flatnonzero(big.any(axis=1)), np.flatnonzero(big.any(axis=0))
  crop = big[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
  h, w = crop.shape
  scale = 20 / max(h, w)
  small = np.asarray(Image.fromarray(crop).resize((round(w * scale), round(h * scale)), Image.Resampling.BOX))
  row, col = centre_of_mass(small)
  top, left = int(np.floor(14 - row + 0.5)), int(np.floor(14 - col + 0.5))
  canvas = np.zeros((28, 28), np.float32)
  canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
  return canvas / canvas.max()


def photo_of_two(seed: int = 0) -> np.ndarray:
  """The "2" drawn large, dark on off-white noisy paper, in the upper-left part of the picture."""
  x = draw_two((500, 640), 220, (40, 60), 26, ink=20, paper=235).astype(np.float64)
  x += np.random.default_rng(seed).normal(0, 4, x.shape)
  return np.clip(x, 0, 255).astype(np.uint8)


def test_to_mnist_shape_dtype_and_range():
  out = photos.to_mnist(photo_of_two())
  assert out.shape == (28, 28) and out.dtype == np.uint8
  assert out.max() == 255
  assert (out[0] == 0).all() and (out[-1] == 0).all() and (out[:, 0] == 0).all() and (out[:, -1] == 0).all()
  assert 18 <= max(ink_box(out)) <= 20
  row, col = centre_of_mass(out)
  assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5


def test_photo_of_digit_matches_direct_rendering():
  out = photos.to_mnist(photo_of_two()).astype(np.float32) / 255
  expected = reference_two()
  assert np.abs(out - expected).mean() < 0.03
  assert np.corrcoef(out.ravel(), expected.ravel())[0, 1] > 0.97


def test_to_mnist_is_polarity_invariant():
  x = photo_of_two(seed=3)
  np.testing.assert_array_equal(photos.to_mnist(255 - x), photos.to_mnist(x))


def test_to_mnist_blank_raises():
  with pytest.raises(ValueError, match="^no digit found"):
    photos.to_mnist(np.full((100, 80), 240, np.uint8))


# load_image


@pytest.fixture
def gray():
  x = np.full((30, 20), 230, np.uint8)
  x[5:25, 8:12] = 10
  x[0, 0] = 128
  return x


def test_load_grayscale_png(tmp_path, gray):
  path = str(tmp_path / "g.png")
  Image.fromarray(gray).save(path)
  out = photos.load_image(path)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, gray)


def test_load_rgb_png(tmp_path, gray):
  rgb = np.stack([gray] * 3, axis=-1)
  rgb[1, 1] = (255, 0, 0)
  path = str(tmp_path / "c.png")
  Image.fromarray(rgb).save(path)
  out = photos.load_image(path)
  assert out.shape == gray.shape and out.dtype == np.uint8
  expected = gray.copy()
  expected[1, 1] = 76  # ITU-R 601 luma of pure red
  np.testing.assert_array_equal(out, expected)


def test_load_rgba_lays_transparency_on_white(tmp_path):
  rgba = np.zeros((10, 12, 4), np.uint8)  # black everywhere, transparent
  rgba[2:8, 3:6, 3] = 255  # opaque black stroke
  rgba[0, 0, 3] = 128  # half-transparent black
  path = str(tmp_path / "a.png")
  Image.fromarray(rgba, mode="RGBA").save(path)
  out = photos.load_image(path)
  assert out.shape == (10, 12)
  assert (out[2:8, 3:6] == 0).all()
  assert out[0, 0] == pytest.approx(127, abs=1)
  mask = np.ones_like(out, bool)
  mask[2:8, 3:6] = False
  mask[0, 0] = False
  assert (out[mask] == 255).all()


def test_load_grayscale_with_transparent_colour_lays_it_on_white(tmp_path):
  x = np.zeros((10, 10), np.uint8)
  x[3:7, 3:7] = 100
  image = Image.fromarray(x)
  path = str(tmp_path / "t.png")
  image.save(path, transparency=0)
  out = photos.load_image(path)
  assert (out[3:7, 3:7] == 100).all()
  assert out[0, 0] == 255 and out[9, 9] == 255


def test_load_16_bit_png(tmp_path):
  x = np.array([[0, 257, 32896], [65535, 1000, 64000]], np.uint16)
  path = str(tmp_path / "w.png")
  Image.fromarray(x).save(path)
  with Image.open(path) as image:
    assert image.mode == "I;16"
  out = photos.load_image(path)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, np.round(x / 65535 * 255).astype(np.uint8))


def test_load_float_tiff_in_unit_range(tmp_path):
  x = np.array([[0.0, 0.5, 1.0], [0.25, 0.1, 2.0]], np.float32)
  path = str(tmp_path / "f.tif")
  Image.fromarray(x).save(path)
  out = photos.load_image(path)
  # Floats up to 255 are judged as 0..255.
  np.testing.assert_array_equal(out, np.round(np.clip(x / 255, 0, 1) * 255).astype(np.uint8))
  x = x.clip(0, 1)
  Image.fromarray(x).save(path)
  np.testing.assert_array_equal(photos.load_image(path), np.round(x * 255).astype(np.uint8))


def test_load_jpeg(tmp_path, gray):
  path = str(tmp_path / "j.jpg")
  Image.fromarray(gray).save(path, quality=95)
  out = photos.load_image(path)
  assert out.shape == gray.shape and out.dtype == np.uint8
  assert np.abs(out.astype(int) - gray).mean() < 4
  assert out[15, 10] < 40 and out[15, 2] > 200


@pytest.mark.parametrize(
  "orientation, corner",
  [(1, (0, 0)), (6, (0, -1)), (8, (-1, 0)), (3, (-1, -1))],
)
def test_load_applies_exif_orientation(tmp_path, orientation, corner):
  # Stored 40 wide, 24 tall, with a dark mark in the top-left corner.
  x = np.full((24, 40), 255, np.uint8)
  x[:8, :8] = 0
  exif = Image.Exif()
  exif[0x0112] = orientation
  path = str(tmp_path / f"o{orientation}.jpg")
  Image.fromarray(x).save(path, exif=exif, quality=95)
  out = photos.load_image(path)
  assert out.shape == ((40, 24) if orientation in (6, 8) else (24, 40))
  r, c = corner
  rows = slice(0, 8) if r == 0 else slice(-8, None)
  cols = slice(0, 8) if c == 0 else slice(-8, None)
  assert out[rows, cols].mean() < 30
  assert out.mean() > 200


def test_load_missing_file_raises_oserror(tmp_path):
  with pytest.raises(OSError):
    photos.load_image(str(tmp_path / "missing.png"))


def test_load_non_image_raises_oserror(tmp_path):
  path = tmp_path / "text.png"
  path.write_text("not an image\n")
  with pytest.raises(OSError):
    photos.load_image(str(path))
