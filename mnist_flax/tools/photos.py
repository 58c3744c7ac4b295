"""Turns a picture of one handwritten digit into a 28x28 image laid out like an MNIST digit."""

import warnings

import numpy as np
from PIL import Image, ImageOps

# MNIST digits were size-normalised to fit a 20x20 box, then centred by centre of mass in 28x28.
DIGIT_BOX = 20
MNIST_SIZE = 28
# Mean centre of mass of the real MNIST digits in (row, column) pixel-index coordinates, pixel
# centres at 0..27: measured (13.996, 14.007) on the 60,000 training and (13.993, 14.008) on the
# 10,000 test digits, std 0.29 px. Not the geometric centre 13.5 of a 28-pixel side.
MNIST_CENTRE = (14.0, 14.0)

# The border frame that sets the paper level is this fraction of the shorter side (at least 1 px).
BORDER_FRACTION = 0.02
# Paper noise removed along with the paper level, in robust standard deviations of the border.
NOISE_SIGMAS = 2.0
# A picture is blank when its ink stands out from the paper by less than this fraction of full
# scale (255 for integer images, 1.0 for floats) or by less than BLANK_SIGMAS paper noise deviations.
MIN_CONTRAST = 0.05
BLANK_SIGMAS = 8.0
# Pixels at most this fraction of the brightest ink are left out of the digit's bounding box.
CROP_THRESHOLD = 0.3
RESAMPLE = Image.Resampling.LANCZOS


def _border(x: np.ndarray) -> np.ndarray:
  """The pixels of the outer frame of `x`, as one flat array."""
  width = max(1, int(min(x.shape) * BORDER_FRACTION))
  if 2 * width >= min(x.shape):
    return x.ravel()
  return np.concatenate(
    [x[:width].ravel(), x[-width:].ravel(), x[width:-width, :width].ravel(), x[width:-width, -width:].ravel()]
  )


def to_light_on_dark(gray: np.ndarray) -> np.ndarray:
  """Makes the ink light on a zero background, whatever the picture's polarity and paper tone.

  The outer frame of pixels is taken as paper: a frame brighter than the middle of the image's
  range means dark ink on light paper, which is inverted. The paper level (plus a margin for its
  noise) is subtracted and the result stretched so that the brightest ink is 1.0.

  Args:
    gray: A 2-D grayscale image of any real dtype (typically uint8, 0..255).

  Returns:
    float32 [H, W] in [0, 1], light ink on a 0 background.

  Raises:
    ValueError: `gray` is not 2-D, or has no ink (its contrast is below `MIN_CONTRAST`).
  """
  gray = np.asarray(gray)
  if gray.ndim != 2 or gray.size == 0 or gray.dtype.kind not in "uif":
    raise ValueError(f"expected a non-empty 2-D grayscale image, got shape {gray.shape} dtype {gray.dtype}")
  full_scale = 1.0 if gray.dtype.kind == "f" else 255.0
  x = gray.astype(np.float32)
  if not np.isfinite(x).all():
    raise ValueError("the image has NaN or infinite values")
  border = _border(x)
  paper = float(np.median(border))
  sigma = 1.4826 * float(np.median(np.abs(border - paper)))
  lo, hi = float(x.min()), float(x.max())
  ink = paper - x if paper > (lo + hi) / 2 else x - paper
  contrast = float(ink.max())
  if contrast < max(MIN_CONTRAST * full_scale, BLANK_SIGMAS * sigma):
    raise ValueError("no digit found: the image is blank (no ink stands out from the paper)")
  ink -= NOISE_SIGMAS * sigma
  np.maximum(ink, 0.0, out=ink)
  ink /= float(ink.max())
  return ink


def crop_to_ink(x: np.ndarray, threshold: float = CROP_THRESHOLD) -> np.ndarray:
  """Crops to the bounding box of the ink.

  Args:
    x: A 2-D light-on-dark image (see `to_light_on_dark`).
    threshold: Pixels at or below this fraction of the maximum do not widen the box,
      so faint noise around the digit is ignored.

  Returns:
    The part of `x` inside the box, grey values kept.

  Raises:
    ValueError: `x` has no positive pixel.
  """
  peak = float(np.max(x)) if x.size else 0.0
  if not peak > 0:
    raise ValueError("no digit found: the image has no ink")
  mask = x > threshold * peak
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  return x[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def fit_in_box(x: np.ndarray, size: int = DIGIT_BOX) -> np.ndarray:
  """Resizes with anti-aliasing so that the longer side is `size`, keeping the aspect ratio.

  Args:
    x: A 2-D light-on-dark image cropped to its ink (see `crop_to_ink`).
    size: The longer side of the result.

  Returns:
    float32 in [0, 1], `size` pixels on its longer side and at least 1 on the shorter.
  """
  h, w = x.shape
  scale = size / max(h, w)
  new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
  image = Image.fromarray(np.ascontiguousarray(x, dtype=np.float32))
  resized = np.asarray(image.resize((new_w, new_h), resample=RESAMPLE), dtype=np.float32)
  return np.clip(resized, 0.0, 1.0)


def centre_by_mass(x: np.ndarray, size: int = MNIST_SIZE) -> np.ndarray:
  """Places a digit in a zero canvas with its centre of mass where MNIST has it.

  The shift is a whole number of pixels; it is limited so that the digit stays inside the
  canvas when it fits, so no ink is cut off.

  Args:
    x: A 2-D light-on-dark digit (see `fit_in_box`).
    size: The side of the square canvas.

  Returns:
    float32 [size, size].

  Raises:
    ValueError: `x` has no ink.
  """
  x = np.asarray(x, dtype=np.float32)
  mass = float(x.sum())
  if not mass > 0:
    raise ValueError("no digit found: the image has no ink")
  h, w = x.shape
  centre_row = float(x.sum(axis=1) @ np.arange(h)) / mass
  centre_col = float(x.sum(axis=0) @ np.arange(w)) / mass
  target = np.asarray(MNIST_CENTRE) * size / MNIST_SIZE
  top = _place(target[0] - centre_row, h, size)
  left = _place(target[1] - centre_col, w, size)
  canvas = np.zeros((size, size), np.float32)
  src_top, src_left = max(0, -top), max(0, -left)
  dst_top, dst_left = max(0, top), max(0, left)
  rows = min(h - src_top, size - dst_top)
  cols = min(w - src_left, size - dst_left)
  canvas[dst_top : dst_top + rows, dst_left : dst_left + cols] = x[src_top : src_top + rows, src_left : src_left + cols]
  return canvas


def _place(offset: float, length: int, size: int) -> int:
  """The whole-pixel offset nearest `offset` that keeps `length` pixels inside `size` if they fit."""
  nearest = int(np.floor(offset + 0.5))
  return int(np.clip(nearest, min(0, size - length), max(0, size - length)))


def to_mnist(gray: np.ndarray) -> np.ndarray:
  """Turns a grayscale picture of one digit into an MNIST-style image.

  Args:
    gray: A 2-D grayscale image, either polarity, of any size (see `load_image`).

  Returns:
    uint8 [28, 28], a light digit (0..255) on black, fitted to 20x20 and centred by mass.

  Raises:
    ValueError: The picture is blank.
  """
  x = centre_by_mass(fit_in_box(crop_to_ink(to_light_on_dark(gray))))
  return np.round(x * (255.0 / x.max())).astype(np.uint8)


def load_image(path: str) -> np.ndarray:
  """Reads an image file as 8-bit grayscale.

  Anything Pillow opens works (PNG, JPEG, BMP, GIF, TIFF, WebP, ...). Camera EXIF rotation is
  applied and transparent areas are laid on white paper.

  Args:
    path: The image file.

  Returns:
    uint8 [H, W].

  Raises:
    OSError: The file is missing or not an image Pillow can read (or other errors from Pillow
      for damaged files).
  """
  with warnings.catch_warnings():
    warnings.simplefilter("error", Image.DecompressionBombWarning)  # Over 89 megapixels: refused.
    with Image.open(path) as image:
      image.load()
      image = ImageOps.exif_transpose(image)
  if image.mode.startswith("I;16"):
    return _wide_to_uint8(np.asarray(image), 65535.0)
  if image.mode in ("I", "F"):
    return _wide_to_uint8(np.asarray(image))
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
    image = image.convert("RGBA")
    paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(paper, image)
  return np.asarray(image.convert("L"), dtype=np.uint8)


def _wide_to_uint8(x: np.ndarray, full_scale: float | None = None) -> np.ndarray:
  """16-bit, 32-bit or float grayscale pixels to uint8; without `full_scale`, judged by the values' range."""
  x = np.nan_to_num(x.astype(np.float64))
  if full_scale is None:
    top = float(x.max()) if x.size else 0.0
    full_scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0 if top <= 65535.0 else top
  return np.round(np.clip(x / full_scale, 0.0, 1.0) * 255.0).astype(np.uint8)
