from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_flax import UsageError
from mnist_flax.tools import photos, user_inputs
from mnist_flax.tools.user_inputs import InputError

HEADER = ",".join(f"pixel{i}" for i in range(784))


def digit_picture(width: int = 80, height: int = 100) -> Image.Image:
  """A "7" drawn dark on white paper, in grayscale."""
  image = Image.new("L", (width, height), 255)
  ImageDraw.Draw(image).line([(15, 15), (60, 15), (30, 85)], fill=0, width=9)
  return image


def save_digit(path) -> str:
  digit_picture().save(path)
  return str(path)


def assert_input_error(excinfo, path, *words):
  """The error is one line that starts with the path and mentions each of `words`."""
  message = str(excinfo.value)
  assert message.startswith(f"{path}: "), message
  assert "\n" not in message and "\r" not in message, message
  for word in words:
    assert word in message, message


def assert_refused(reader, made):
  """`reader` raises a one-line `InputError` for the file `made` = (path, words), naming the path and the words."""
  path, words = made
  with pytest.raises(InputError) as excinfo:
    reader(path)
  assert_input_error(excinfo, path, *words)


def images(n: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def csv_text(x: np.ndarray, labels=None, newline: str = "\n") -> str:
  header = ("label," if labels is not None else "") + HEADER
  rows = [
    ",".join(([str(labels[i])] if labels is not None else []) + [str(v) for v in image.ravel()])
    for i, image in enumerate(x)
  ]
  return newline.join([header, *rows]) + newline


def write_csv(path, text: str, encoding: str = "utf-8") -> str:
  with open(path, "w", encoding=encoding, newline="") as f:
    f.write(text)
  return str(path)


def test_input_error_is_a_usage_error():
  assert issubclass(InputError, UsageError)


# is_csv


@pytest.mark.parametrize(
  "path, expected",
  [
    ("test.csv", True),
    ("data/TRAIN.CSV", True),
    ("a.Csv", True),
    ("digits.npy", False),
    ("digit.png", False),
    ("x.csv.png", False),
    ("csv", False),
    ("data.csv/digit.png", False),
  ],
)
def test_is_csv(path, expected):
  assert user_inputs.is_csv(path) is expected


# read_image


def test_read_image_lays_out_a_digit(tmp_path):
  path = save_digit(tmp_path / "seven.png")
  out = user_inputs.read_image(path)
  assert out.shape == (28, 28) and out.dtype == np.uint8
  assert out.max() == 255 and out[0, 0] == 0
  np.testing.assert_array_equal(out, photos.to_mnist(np.asarray(digit_picture())))


def test_read_image_jpeg_with_odd_suffix(tmp_path):
  path = str(tmp_path / "seven.bin")
  digit_picture().save(path, format="JPEG", quality=95)
  out = user_inputs.read_image(path)
  assert out.shape == (28, 28) and out.max() == 255


def _missing(tmp_path):
  return str(tmp_path / "missing.png"), ["no such file"]


def _directory(tmp_path):
  path = tmp_path / "folder.png"
  path.mkdir()
  return str(path), ["is a directory"]


def _text(tmp_path):
  path = tmp_path / "notes.png"
  path.write_text("this is not\na picture\n")
  return str(path), ["not an image Pillow can read", "unknown format"]


def _empty(tmp_path):
  path = tmp_path / "empty.png"
  path.write_bytes(b"")
  return str(path), ["not an image Pillow can read"]


def _truncated(fraction):
  def make(tmp_path):
    good = save_digit(tmp_path / "good.png")
    data = Path(good).read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: int(len(data) * fraction)])
    return str(path), ["not an image Pillow can read"]

  return make


def _blank(tmp_path):
  path = tmp_path / "blank.png"
  Image.new("L", (50, 50), 255).save(path)
  return str(path), ["no digit found"]


def _blank_transparent(tmp_path):
  path = tmp_path / "clear.png"
  Image.new("RGBA", (50, 50), (0, 0, 0, 0)).save(path)
  return str(path), ["no digit found"]


@pytest.mark.parametrize(
  "make",
  [_missing, _directory, _text, _empty, _truncated(0.1), _truncated(0.6), _blank, _blank_transparent],
  ids=["missing", "directory", "text", "empty", "truncated-header", "truncated-data", "blank", "transparent"],
)
def test_read_image_errors(tmp_path, make):
  path, words = make(tmp_path)
  with pytest.raises(InputError) as excinfo:
    user_inputs.read_image(path)
  assert_input_error(excinfo, path, *words)


@pytest.mark.parametrize(
  "error, words",
  [(OSError("broken data\n  in chunk IDAT"), ["(broken data in chunk IDAT)"]), (EOFError(), ["(EOFError)"])],
  ids=["multi-line", "no-message"],
)
def test_read_image_reader_errors_become_one_line(tmp_path, monkeypatch, error, words):
  path = save_digit(tmp_path / "digit.png")

  def fail(_):
    raise error

  monkeypatch.setattr(photos, "load_image", fail)
  with pytest.raises(InputError) as excinfo:
    user_inputs.read_image(path)
  assert_input_error(excinfo, path, "not an image Pillow can read", *words)


# read_npy


def save_npy(tmp_path, x, name: str = "x.npy") -> str:
  path = str(tmp_path / name)
  np.save(path, x)
  return path


def test_read_npy_uint8(tmp_path):
  x = images(3)
  out = user_inputs.read_npy(save_npy(tmp_path, x))
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, x)


def test_read_npy_channel_axis(tmp_path):
  x = images(2)
  out = user_inputs.read_npy(save_npy(tmp_path, x[..., None]))
  assert out.shape == (2, 28, 28) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, x)


def test_read_npy_single_image(tmp_path):
  x = images(1)[0]
  out = user_inputs.read_npy(save_npy(tmp_path, x))
  assert out.shape == (1, 28, 28)
  np.testing.assert_array_equal(out[0], x)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_read_npy_floats_are_scaled(tmp_path, dtype):
  x = images(2, seed=4)
  x[0, 0, :3] = (0, 255, 128)
  out = user_inputs.read_npy(save_npy(tmp_path, (x / 255.0).astype(dtype)))
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("dtype", [np.int64, np.int16, np.uint16, np.int8])
def test_read_npy_other_integer_dtypes(tmp_path, dtype):
  x = images(2, seed=5)
  if dtype == np.int8:
    x = x // 2
  x[0, 0, :2] = (0, 127 if dtype == np.int8 else 255)
  out = user_inputs.read_npy(save_npy(tmp_path, x.astype(dtype)))
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, x)


def _array(x, *words):
  def make(tmp_path):
    return save_npy(tmp_path, x), list(words)

  return make


def _with(value, dtype):
  x = np.zeros((2, 28, 28), dtype)
  x[1, 3, 4] = value
  return x


def _object(tmp_path):
  path = str(tmp_path / "objects.npy")
  np.save(path, np.empty((1, 28, 28), object), allow_pickle=True)
  return path, ["not a readable .npy file"]


def _npz(tmp_path):
  path = str(tmp_path / "arrays.npz")
  np.savez(path, a=images(1), b=images(1))
  return path, ["an .npz archive of 2 array(s)"]


def _npz_named_npy(tmp_path):
  path = str(tmp_path / "zipped.npy")
  with open(path, "wb") as f:
    np.savez(f, images=images(1))
  return path, [".npz archive"]


def _garbage(tmp_path):
  path = tmp_path / "garbage.npy"
  path.write_bytes(b"\x00\x01 this is not numpy \xff" * 10)
  return str(path), ["not a .npy file", "np.save"]


def _png_named_npy(tmp_path):
  path = tmp_path / "digit.npy"
  Image.new("L", (30, 30), 255).save(path, format="PNG")
  return str(path), ["not a .npy file"]


def _truncated_npy(tmp_path):
  path = save_npy(tmp_path, images(4))
  Path(path).write_bytes(Path(path).read_bytes()[: len(Path(path).read_bytes()) // 2])
  return path, ["not a readable .npy file"]


def _header_only_npy(tmp_path):
  path = save_npy(tmp_path, images(4))
  Path(path).write_bytes(Path(path).read_bytes()[:40])
  return path, ["not a readable .npy file"]


def _missing_npy(tmp_path):
  return str(tmp_path / "missing.npy"), ["no such file"]


def _directory_npy(tmp_path):
  path = tmp_path / "folder.npy"
  path.mkdir()
  return str(path), ["is a directory"]


@pytest.mark.parametrize(
  "make",
  [
    _array(np.zeros((2, 28, 27), np.uint8), "shape (2, 28, 27)"),
    _array(np.zeros((2, 28, 28, 3), np.uint8), "shape (2, 28, 28, 3)"),
    _array(np.zeros(784, np.uint8), "shape (784,)"),
    _array(np.zeros((1, 2, 28, 28), np.uint8), "shape (1, 2, 28, 28)"),
    _array(np.zeros((0, 28, 28), np.uint8), "holds no images"),
    _array(_with(1.5, np.float32), "[0, 1]", "1.5"),
    _array(_with(-0.25, np.float64), "[0, 1]", "-0.25"),
    _array(_with(np.nan, np.float32), "NaN"),
    _array(_with(np.inf, np.float32), "NaN or infinity"),
    _array(_with(256, np.int32), "0..255", "256"),
    _array(_with(-1, np.int16), "0..255", "-1"),
    _array(np.full((1, 28, 28), "a"), "is not a pixel dtype"),
    _array(np.zeros((1, 28, 28), bool), "is not a pixel dtype"),
    _array(np.zeros((1, 28, 28), np.complex64), "is not a pixel dtype"),
    _object,
    _npz,
    _npz_named_npy,
    _garbage,
    _png_named_npy,
    _truncated_npy,
    _header_only_npy,
    _missing_npy,
    _directory_npy,
  ],
  ids=[
    "wrong-side",
    "three-channels",
    "flat",
    "five-dims",
    "empty",
    "float-above-one",
    "float-negative",
    "nan",
    "inf",
    "int-256",
    "int-negative",
    "str",
    "bool",
    "complex",
    "object",
    "npz",
    "npz-named-npy",
    "garbage",
    "png-named-npy",
    "truncated",
    "header-only",
    "missing",
    "directory",
  ],
)
def test_read_npy_errors(tmp_path, make):
  assert_refused(user_inputs.read_npy, make(tmp_path))


# read_kaggle_csv


def test_kaggle_test_format(tmp_path):
  x = images(3, seed=7)
  path = write_csv(tmp_path / "test.csv", csv_text(x))
  out, labels = user_inputs.read_kaggle_csv(path)
  assert labels is None
  assert out.shape == (3, 28, 28) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, x)


def test_kaggle_pixels_are_row_major(tmp_path):
  x = np.zeros((1, 28, 28), np.uint8)
  x[0, 1, 0] = 200  # pixel28
  x[0, 0, 27] = 100  # pixel27
  path = write_csv(tmp_path / "test.csv", csv_text(x))
  out, _ = user_inputs.read_kaggle_csv(path)
  assert out[0, 1, 0] == 200 and out[0, 0, 27] == 100 and out.sum() == 300


def test_kaggle_train_format(tmp_path):
  x = images(4, seed=8)
  path = write_csv(tmp_path / "train.csv", csv_text(x, labels=[3, 0, 9, 7]))
  out, labels = user_inputs.read_kaggle_csv(path)
  np.testing.assert_array_equal(out, x)
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(labels, [3, 0, 9, 7])


def test_kaggle_byte_order_mark(tmp_path):
  x = images(2, seed=9)
  path = write_csv(tmp_path / "bom.csv", csv_text(x, labels=[1, 2]), encoding="utf-8-sig")
  assert Path(path).read_bytes().startswith(b"\xef\xbb\xbf")
  out, labels = user_inputs.read_kaggle_csv(path)
  np.testing.assert_array_equal(out, x)
  np.testing.assert_array_equal(labels, [1, 2])


def test_kaggle_blank_lines_are_skipped(tmp_path):
  x = images(2, seed=10)
  text = csv_text(x) + "\n  \n\n"
  path = write_csv(tmp_path / "blank.csv", text)
  out, labels = user_inputs.read_kaggle_csv(path)
  assert labels is None
  np.testing.assert_array_equal(out, x)


def test_kaggle_without_final_newline(tmp_path):
  x = images(2, seed=11)
  path = write_csv(tmp_path / "nofinal.csv", csv_text(x).rstrip("\n"))
  np.testing.assert_array_equal(user_inputs.read_kaggle_csv(path)[0], x)


def test_kaggle_crlf_line_endings(tmp_path):
  x = images(3, seed=12)
  path = write_csv(tmp_path / "windows.csv", csv_text(x, labels=[5, 6, 7], newline="\r\n"))
  assert Path(path).read_bytes().count(b"\r\n") == 4
  out, labels = user_inputs.read_kaggle_csv(path)
  np.testing.assert_array_equal(out, x)
  np.testing.assert_array_equal(labels, [5, 6, 7])


def test_kaggle_error_line_numbers_count_blank_lines(tmp_path):
  text = "\n".join([HEADER, "", _row(ZEROS), "", _row(_set(1, 300))])
  path = write_csv(tmp_path / "gap.csv", text)
  with pytest.raises(InputError) as excinfo:
    user_inputs.read_kaggle_csv(path)
  assert_input_error(excinfo, path, "line 5, column pixel1", "'300'")


@pytest.mark.parametrize("digit", ["\u0663", "\uff13"], ids=["arabic-indic", "fullwidth"])
def test_kaggle_non_ascii_digit_is_refused(tmp_path, digit):
  path = write_csv(tmp_path / "digits.csv", HEADER + "\n" + _row(ZEROS) + "\n" + _row(_set(2, digit)) + "\n")
  with pytest.raises(InputError) as excinfo:
    user_inputs.read_kaggle_csv(path)
  assert_input_error(excinfo, path, "0..255")


def test_kaggle_non_ascii_digit_error_names_its_line(tmp_path):
  path = write_csv(tmp_path / "digits.csv", HEADER + "\n" + _row(ZEROS) + "\n" + _row(_set(2, "\u0663")) + "\n")
  with pytest.raises(InputError) as excinfo:
    user_inputs.read_kaggle_csv(path)
  assert_input_error(excinfo, path, "line 3, column pixel2")


def _csv(text, *words, encoding="utf-8"):
  def make(tmp_path):
    return write_csv(tmp_path / "bad.csv", text, encoding=encoding), list(words)

  return make


def _row(values, label=None):
  return ",".join(([str(label)] if label is not None else []) + [str(v) for v in values])


ZEROS = [0] * 784


def _set(i, value):
  values = list(ZEROS)
  values[i] = value
  return values


def _non_utf8(tmp_path):
  path = tmp_path / "latin1.csv"
  path.write_bytes((HEADER + "\n" + _row(ZEROS) + "\n").encode() + b"\xe9\xff\n")
  return str(path), ["not a text CSV file", "not UTF-8"]


def _utf16(tmp_path):
  path = tmp_path / "utf16.csv"
  path.write_bytes((HEADER + "\n" + _row(ZEROS) + "\n").encode("utf-16"))
  return str(path), ["not UTF-8"]


def _missing_csv(tmp_path):
  return str(tmp_path / "missing.csv"), ["no such file"]


def _directory_csv(tmp_path):
  path = tmp_path / "folder.csv"
  path.mkdir()
  return str(path), ["is a directory"]


@pytest.mark.parametrize(
  "make",
  [
    _csv("id," + HEADER + "\n" + _row([1, *ZEROS]) + "\n", "line 1", "expected the header", "'id,pixel0,pixel1"),
    _csv(HEADER.replace("pixel5,", "") + "\n" + _row(ZEROS[:-1]) + "\n", "line 1", "expected the header"),
    _csv("a,b,c\n1,2,3\n", "line 1", "found 'a,b,c'"),
    _csv("", "line 1", "expected the header"),
    _csv(HEADER + "\n" + _row(ZEROS) + "\n" + _row(ZEROS[:-1]) + "\n", "line 3 has 783 columns, expected 784"),
    _csv(HEADER + "\n" + _row([*ZEROS, 0]) + "\n", "line 2 has 785 columns, expected 784"),
    _csv("label," + HEADER + "\n" + _row(ZEROS) + "\n", "line 2 has 784 columns, expected 785"),
    _csv(HEADER + "\n" + _row(_set(7, "1.5")) + "\n", "line 2, column pixel7", "integers in 0..255", "'1.5'"),
    _csv(HEADER + "\n" + _row(_set(0, "x")) + "\n", "line 2, column pixel0", "'x'"),
    _csv(HEADER + "\n" + _row(_set(3, "")) + "\n", "line 2, column pixel3", "''"),
    _csv(HEADER + "\n" + _row(ZEROS) + "\n" + _row(_set(783, 256)) + "\n", "line 3, column pixel783", "'256'"),
    _csv(HEADER + "\n" + _row(_set(10, -1)) + "\n", "line 2, column pixel10", "'-1'"),
    _csv(HEADER + "\n" + _row(_set(1, 99999999999)) + "\n", "line 2, column pixel1", "'99999999999'"),
    _csv("label," + HEADER + "\n" + _row(ZEROS, 1) + "\n" + _row(ZEROS, 10) + "\n", "line 3", "label", "0..9"),
    _csv("label," + HEADER + "\n" + _row(ZEROS, -2) + "\n", "line 2, column label", "'-2'"),
    _csv("label," + HEADER + "\n" + _row(ZEROS, "seven") + "\n", "line 2, column label", "'seven'"),
    _csv(HEADER + "\n", "no images after the header"),
    _csv("label," + HEADER + "\n\n \n", "no images after the header"),
    _non_utf8,
    _utf16,
    _missing_csv,
    _directory_csv,
  ],
  ids=[
    "extra-column-in-header",
    "short-header",
    "other-header",
    "empty-file",
    "short-row",
    "long-row",
    "train-header-test-rows",
    "float-pixel",
    "text-pixel",
    "empty-pixel",
    "pixel-256",
    "negative-pixel",
    "huge-pixel",
    "label-10",
    "negative-label",
    "text-label",
    "header-only",
    "header-and-blank-lines",
    "non-utf8",
    "utf16",
    "missing",
    "directory",
  ],
)
def test_kaggle_errors(tmp_path, make):
  assert_refused(user_inputs.read_kaggle_csv, make(tmp_path))


# read_inputs


def test_read_inputs_names_and_order(tmp_path):
  first = save_digit(tmp_path / "first.png")
  x = images(3, seed=14)
  array = save_npy(tmp_path, x, "batch.npy")
  last = str(tmp_path / "last.jpg")
  digit_picture(90, 90).save(last, quality=95)
  digits = user_inputs.read_inputs([first, array, last])
  assert [name for name, _ in digits] == [first, f"{array}[0]", f"{array}[1]", f"{array}[2]", last]
  np.testing.assert_array_equal(digits[0][1], user_inputs.read_image(first))
  for i in range(3):
    np.testing.assert_array_equal(digits[1 + i][1], x[i])
  np.testing.assert_array_equal(digits[4][1], user_inputs.read_image(last))
  assert all(image.shape == (28, 28) and image.dtype == np.uint8 for _, image in digits)


def test_read_inputs_empty_list():
  assert user_inputs.read_inputs([]) == []


@pytest.mark.parametrize("name", ["test.csv", "TRAIN.CSV"])
def test_read_inputs_refuses_csv(tmp_path, name):
  png = save_digit(tmp_path / "digit.png")
  csv = write_csv(tmp_path / name, csv_text(images(1)))
  with pytest.raises(InputError) as excinfo:
    user_inputs.read_inputs([png, csv])
  assert_input_error(excinfo, csv, "Kaggle CSV")


def test_read_inputs_reports_first_bad_input(tmp_path):
  png = save_digit(tmp_path / "digit.png")
  bad = save_npy(tmp_path, np.zeros((2, 27, 28), np.uint8), "bad.npy")
  missing = str(tmp_path / "missing.png")
  with pytest.raises(InputError) as excinfo:
    user_inputs.read_inputs([png, bad, missing])
  assert_input_error(excinfo, bad, "shape (2, 27, 28)")


def test_read_inputs_npz_is_read_as_array(tmp_path):
  path = str(tmp_path / "arrays.npz")
  np.savez(path, images(1))
  with pytest.raises(InputError) as excinfo:
    user_inputs.read_inputs([path])
  assert_input_error(excinfo, path, ".npz archive")


def test_read_image_refuses_a_decompression_bomb_in_one_line(tmp_path, monkeypatch):
  path = tmp_path / "huge.png"
  Image.new("L", (200, 200), 255).save(path)
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)  # Pillow only warns between this and twice this.
  with pytest.raises(InputError) as excinfo:
    user_inputs.read_image(str(path))
  assert_input_error(excinfo, str(path), "exceeds limit")
