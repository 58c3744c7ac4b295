import csv
import os

import numpy as np
import pytest
from PIL import Image

from mnist_flax import Predictor
from mnist_flax.data import input_pipeline
from mnist_flax.run.record_writers import read_records
from mnist_flax.tools import user_inputs
from tests.conftest import assert_one_line_error, run_module

PROG = "python -m mnist_flax.tools.predict"


@pytest.fixture(scope="module")
def test_split(mock_data_dir):
  return input_pipeline.load_mnist(mock_data_dir)["test"]


def write_kaggle_csv(path, images, labels=None):
  pixels = images.reshape(len(images), -1)
  header = [f"pixel{i}" for i in range(pixels.shape[1])]
  rows = pixels.tolist()
  if labels is not None:
    header = ["label", *header]
    rows = [[int(label), *row] for label, row in zip(labels, rows, strict=True)]
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def scanned(image, path):
  """A test image as a user's scan: dark on light, 5x larger, off-centre on a wide page."""
  big = Image.fromarray(255 - image).resize((140, 140), Image.Resampling.BICUBIC)
  page = Image.new("L", (300, 220), 255)
  page.paste(big, (20, 60))
  page.save(path)
  return str(path)


def test_images_and_arrays_one_line_each_and_a_csv(tiny_run, test_split, tmp_path):
  images = test_split["image"][:3, ..., 0]
  np.save(tmp_path / "digits.npy", images)
  png = scanned(test_split["image"][3, ..., 0], tmp_path / "scan.png")
  out = tmp_path / "out.csv"
  npy = str(tmp_path / "digits.npy")
  result = run_module("mnist_flax.tools.predict", f"--workdir={tiny_run}", npy, png, f"--output={out}")
  assert result.returncode == 0, result.stderr[-3000:]

  names = [f"{npy}[{i}]" for i in range(3)] + [png]
  predictor = Predictor.from_workdir(tiny_run)
  expected = predictor(np.concatenate([images, user_inputs.read_image(png)[None]]))
  rows = read_csv(out)
  assert rows[0] == ["input", "label", "probability"]
  assert [r[0] for r in rows[1:]] == names
  assert [int(r[1]) for r in rows[1:]] == expected.argmax(axis=1).tolist()
  np.testing.assert_allclose([float(r[2]) for r in rows[1:]], expected.max(axis=1), rtol=1e-6)
  lines = result.stdout.splitlines()
  assert len(lines) == 4
  for line, name, p in zip(lines, names, expected, strict=True):
    assert line.split() == [name, str(p.argmax()), f"{100 * p.max():.2f}%"]


@pytest.mark.parametrize("with_labels", [True, False])
def test_kaggle_csv_gives_a_submission(tiny_run, test_split, tmp_path, with_labels):
  images, labels = test_split["image"][..., 0], test_split["label"]
  source = tmp_path / ("train.csv" if with_labels else "test.csv")
  write_kaggle_csv(source, images, labels if with_labels else None)
  result = run_module("mnist_flax.tools.predict", f"--workdir={tiny_run}", str(source), cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]

  rows = read_csv(tmp_path / "submission.csv")
  assert rows[0] == ["ImageId", "Label"]
  predictions = Predictor.from_workdir(tiny_run)(images).argmax(axis=1)
  assert [int(r[0]) for r in rows[1:]] == list(range(1, len(images) + 1))
  assert [int(r[1]) for r in rows[1:]] == predictions.tolist()
  if with_labels:  # The same images as the run's evaluation: the same accuracy.
    accuracy = read_records(tiny_run)[-1]["test_accuracy"]
    assert f"accuracy against the CSV's labels: {100 * accuracy:.2f}%" in result.stdout
  else:
    assert "accuracy" not in result.stdout


def bad_inputs(tmp_path, tiny_run):
  """Name -> (arguments, message): each a bad input given with --output=out.csv."""
  np.save(tmp_path / "wide.npy", np.zeros((2, 28, 30), np.uint8))
  np.save(tmp_path / "good.npy", np.zeros((2, 28, 28), np.uint8))
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
  (tmp_path / "header.csv").write_text("label,pixel0,pixel1\n1,2,3\n")
  header = ",".join(f"pixel{i}" for i in range(784))
  (tmp_path / "short.csv").write_text(header + "\n" + ",".join(["0"] * 784) + "\n" + ",".join(["0"] * 700) + "\n")
  empty = tmp_path / "empty_run"
  empty.mkdir()
  return {
    "wrong shape": ([str(tmp_path / "wide.npy")], "wide.npy: expected uint8"),
    "damaged image": ([str(tmp_path / "broken.png")], "broken.png: not an image"),
    "missing file": ([str(tmp_path / "nothing.png")], "nothing.png: no such file"),
    "wrong header": ([str(tmp_path / "header.csv")], "header.csv: line 1: expected the header"),
    "wrong column count": ([str(tmp_path / "short.csv")], "short.csv: line 3 has 700 columns, expected 784"),
    "csv among images": ([str(tmp_path / "short.csv"), str(tmp_path / "good.npy")], "on its own"),
    "no inputs": ([], "give at least one INPUT"),
    "no checkpoint": ([str(tmp_path / "good.npy"), f"--workdir={empty}"], "config.json is missing"),
    "output is an input": ([str(tmp_path / "good.npy"), f"--output={tmp_path / 'good.npy'}"], "is one of the inputs"),
  }


CASES = [
  "wrong shape",
  "damaged image",
  "missing file",
  "wrong header",
  "wrong column count",
  "csv among images",
  "no inputs",
  "no checkpoint",
  "output is an input",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_inputs_are_one_line_errors_and_leave_files_alone(tiny_run, tmp_path, case):
  args, message = bad_inputs(tmp_path, tiny_run)[case]
  out = tmp_path / "out.csv"
  out.write_text("an earlier result\n")
  before = sorted(os.listdir(tmp_path))
  good = (tmp_path / "good.npy").read_bytes()
  result = run_module("mnist_flax.tools.predict", f"--workdir={tiny_run}", f"--output={out}", *args, cwd=str(tmp_path))
  assert_one_line_error(result, PROG, message)
  assert out.read_text() == "an earlier result\n"
  assert (tmp_path / "good.npy").read_bytes() == good
  assert sorted(os.listdir(tmp_path)) == before
