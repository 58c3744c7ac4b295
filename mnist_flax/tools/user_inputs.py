"""Reads the digits to classify (image files, .npy arrays, Kaggle CSVs), each error one line naming the file."""

import os
import re

import numpy as np
from PIL import UnidentifiedImageError

from mnist_flax.errors import UsageError, describe
from mnist_flax.tools import photos

SIDE = 28
PIXELS = SIDE * SIDE
KAGGLE_PIXELS = tuple(f"pixel{i}" for i in range(PIXELS))
KAGGLE_TEST_HEADER = KAGGLE_PIXELS
KAGGLE_TRAIN_HEADER = ("label", *KAGGLE_PIXELS)
_EXPECTED_HEADERS = "'pixel0,...,pixel783' (Kaggle test.csv) or 'label,pixel0,...,pixel783' (Kaggle train.csv)"
_EXPECTED_ARRAY = (
  "expected uint8, integers in 0..255 or floats in [0, 1] of shape [N,28,28], [N,28,28,1] or one image [28,28]"
)
NPY_MAGIC = b"\x93NUMPY"
_UNSIGNED_INT = re.compile(r"\s*[0-9]+\s*")


class InputError(UsageError):
  """An input file is missing, unreadable, or not in a format it can be read as."""


def is_csv(path: str) -> bool:
  """Whether `path` names a CSV file (by its suffix, any case)."""
  return path.lower().endswith(".csv")


def _is_array_file(path: str) -> bool:
  return path.lower().endswith((".npy", ".npz"))


def _check_file(path: str) -> None:
  """Raises `InputError` unless `path` is an existing file."""
  if os.path.isdir(path):
    raise InputError(f"{path}: is a directory, not a file")
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file")


def read_image(path: str) -> np.ndarray:
  """Reads a picture of one digit and lays it out like an MNIST digit.

  Anything Pillow opens is accepted; see `photos.to_mnist` for the layout.

  Args:
    path: The image file.

  Returns:
    uint8 [28, 28], a light digit on black.

  Raises:
    InputError: The file is missing, a directory, not a readable image, or blank.
  """
  _check_file(path)
  try:
    gray = photos.load_image(path)
  except MemoryError:
    raise
  except UnidentifiedImageError as e:
    raise InputError(f"{path}: not an image Pillow can read (unknown format)") from e
  except Exception as e:  # Pillow reports damaged files with many exception types.
    raise InputError(f"{path}: not an image Pillow can read ({describe(e, whole=True)})") from e
  try:
    return photos.to_mnist(gray)
  except ValueError as e:
    raise InputError(f"{path}: {describe(e, whole=True)}") from e


def read_npy(path: str) -> np.ndarray:
  """Reads MNIST-style images saved with `np.save`.

  Args:
    path: A `.npy` file holding [N, 28, 28], [N, 28, 28, 1] or one [28, 28] image, as uint8,
      another integer dtype with values in 0..255, or floats in [0, 1].

  Returns:
    uint8 [N, 28, 28]; floats are scaled by 255 and rounded.

  Raises:
    InputError: The file is missing or not a readable `.npy`, or its shape, dtype or values
      are not those of images.
  """
  x = _load_npy(path)
  found = f"found shape {x.shape} dtype {x.dtype}"
  if x.ndim == 2:
    x = x[None]
  elif x.ndim == 4 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
    raise InputError(f"{path}: {_EXPECTED_ARRAY}; {found}")
  if x.dtype.kind not in "uif":
    raise InputError(f"{path}: dtype {x.dtype} is not a pixel dtype; {_EXPECTED_ARRAY}; {found}")
  if len(x) == 0:
    raise InputError(f"{path}: holds no images; {found}")
  return _pixels_as_uint8(x, f"{path}: ", f"; {found}")


def _load_npy(path: str) -> np.ndarray:
  """The one array of a `.npy` file; an `.npz`, a pickle or a damaged file is an `InputError`."""
  _check_file(path)
  try:
    with open(path, "rb") as f:
      magic = f.read(len(NPY_MAGIC))
  except OSError as e:
    raise InputError(f"{path}: cannot be read ({e.strerror or describe(e, whole=True)})") from e
  if magic != NPY_MAGIC and not magic.startswith(b"PK"):  # .npy, or an .npz (a zip) refused below.
    raise InputError(f"{path}: not a .npy file (it does not start with NumPy's header); save arrays with np.save")
  try:
    loaded = np.load(path, allow_pickle=False)
  except MemoryError:
    raise
  except Exception as e:  # numpy reports corrupt files as ValueError, EOFError, OSError, ...
    raise InputError(f"{path}: not a readable .npy file ({describe(e, whole=True)})") from e
  if isinstance(loaded, np.lib.npyio.NpzFile):
    names = loaded.files
    loaded.close()
    raise InputError(f"{path}: an .npz archive of {len(names)} array(s), expected one array saved with np.save as .npy")
  return loaded


def _pixels_as_uint8(x: np.ndarray, prefix: str, suffix: str) -> np.ndarray:
  """Integer pixels in 0..255 or float pixels in [0, 1] as uint8; others an `InputError` `prefix...suffix`."""
  if x.dtype.kind == "f":
    x = x.astype(np.promote_types(x.dtype, np.float32), copy=False)
    if not np.isfinite(x).all():
      raise InputError(f"{prefix}float pixels must be finite, found NaN or infinity{suffix}")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
      raise InputError(f"{prefix}float pixels must be in [0, 1] (use uint8 for 0..255), found {lo:g}..{hi:g}{suffix}")
    return np.rint(x * 255.0).astype(np.uint8)
  lo, hi = int(x.min()), int(x.max())
  if lo < 0 or hi > 255:
    raise InputError(f"{prefix}integer pixels must be in 0..255, found {lo}..{hi}{suffix}")
  return x.astype(np.uint8)


def read_kaggle_csv(path: str) -> tuple[np.ndarray, np.ndarray | None]:
  """Reads a Kaggle digit-recognizer CSV: `test.csv` (pixels) or `train.csv` (label and pixels).

  The header must be `pixel0,...,pixel783` or `label,pixel0,...,pixel783` (whitespace and a
  byte-order mark aside); each following non-blank line is one image of 784 integers in 0..255
  in row-major order, after its label (0..9) in the train format.

  Args:
    path: The CSV file.

  Returns:
    (uint8 images [N, 28, 28], int32 labels [N] or None for the test format).

  Raises:
    InputError: The file is missing or unreadable, or not in this format; the message names
      the line at fault.
  """
  lines = _read_text(path).split("\n")
  header = _kaggle_header(path, lines[0])
  has_label, columns = header == KAGGLE_TRAIN_HEADER, len(header)
  numbers = [n for n in range(2, len(lines) + 1) if lines[n - 1].strip()]
  rows = [lines[n - 1] for n in numbers]
  if not rows:
    raise InputError(f"{path}: no images after the header line")
  for n, row in zip(numbers, rows, strict=True):
    if row.count(",") != columns - 1:
      raise InputError(f"{path}: line {n} has {row.count(',') + 1} columns, expected {columns} as in the header")
  try:
    values = np.loadtxt(rows, delimiter=",", dtype=np.int32, ndmin=2, comments=None)
  except ValueError:
    values = None
  if values is None or values.min() < 0 or values[:, int(has_label) :].max() > 255:
    _raise_bad_value(path, header, numbers, rows)
  if values is None:  # numpy rejected a field that the scan let through
    raise InputError(f"{path}: not every field is an integer in 0..255")
  labels = None
  if has_label:
    labels = values[:, 0]
    bad = np.flatnonzero(labels > 9)
    if bad.size:
      raise InputError(f"{path}: line {numbers[bad[0]]}: label must be a digit 0..9, found {labels[bad[0]]}")
    labels = labels.astype(np.int32)
  images = values[:, int(has_label) :].astype(np.uint8).reshape(-1, SIDE, SIDE)
  return images, labels


def _read_text(path: str) -> str:
  """A UTF-8 text file's contents (a byte-order mark dropped); an unreadable one is an `InputError`."""
  _check_file(path)
  try:
    with open(path, encoding="utf-8-sig") as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise InputError(f"{path}: not a text CSV file (not UTF-8: {describe(e, whole=True)})") from e
  except OSError as e:
    raise InputError(f"{path}: cannot be read ({e.strerror or describe(e, whole=True)})") from e


def _kaggle_header(path: str, line: str) -> tuple[str, ...]:
  """The fields of a Kaggle CSV's header line: the train or the test header, or an `InputError`."""
  header = tuple(field.strip() for field in line.strip().lstrip("\ufeff").split(","))
  if header not in (KAGGLE_TRAIN_HEADER, KAGGLE_TEST_HEADER):
    shown = ",".join(header)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise InputError(f"{path}: line 1: expected the header {_EXPECTED_HEADERS}, found {shown!r}")
  return header


def _raise_bad_value(path: str, header: tuple[str, ...], numbers: list[int], rows: list[str]) -> None:
  """Finds the first field that is not an integer in range and raises `InputError` naming its line."""
  for n, row in zip(numbers, rows, strict=True):
    for name, field in zip(header, row.split(","), strict=True):
      top = 9 if name == "label" else 255
      if not _UNSIGNED_INT.fullmatch(field) or int(field) > top:
        what = "label must be a digit 0..9" if name == "label" else "pixels must be integers in 0..255"
        shown = field.strip() if len(field.strip()) <= 20 else field.strip()[:17] + "..."
        raise InputError(f"{path}: line {n}, column {name}: {what}, found {shown!r}")


def read_inputs(paths: list[str]) -> list[tuple[str, np.ndarray]]:
  """Reads and checks every image and array input before any is used.

  Args:
    paths: Image files (anything Pillow opens) and `.npy` arrays. Kaggle CSVs are read with
      `read_kaggle_csv` instead.

  Returns:
    (name, uint8 [28, 28]) per digit, in order: an image file gives one entry named by its path,
    a `.npy` one entry per image named `path[i]`, i from 0.

  Raises:
    InputError: For the first input that cannot be read, or a `.csv` path.
  """
  digits = []
  for path in paths:
    if is_csv(path):
      raise InputError(f"{path}: a Kaggle CSV cannot be mixed with image and .npy inputs; pass it on its own")
    if _is_array_file(path):
      digits.extend((f"{path}[{i}]", image) for i, image in enumerate(read_npy(path)))
    else:
      digits.append((path, read_image(path)))
  return digits
