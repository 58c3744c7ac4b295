import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib import image as mpimg  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from mnist_flax.tools import plots  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

N = 64


def _record(epoch, learning_rate=True):
  record = {
    "epoch": epoch,
    "step": 10 * epoch,
    "train_loss": 1.0 / epoch,
    "test_loss": 1.2 / epoch,
    "train_accuracy": 1 - 0.5 / epoch,
    "test_accuracy": 1 - 0.6 / epoch,
  }
  if learning_rate:
    record["learning_rate"] = 1e-3 / epoch
  return record


@pytest.fixture
def data():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(N, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, size=N).astype(np.int32)
  logits = rng.normal(size=(N, 10))
  logits[np.arange(N), labels] += 3.0  # Mostly right, with some mistakes.
  probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  return images, labels, probabilities


def _tile_titles(fig):
  """The titles of a tile grid's tiles, in order."""
  (ax,) = fig.axes
  return [t.get_text() for t in ax.texts]


def _write_all(tmp_path, data, **changes):
  images, labels, probabilities = data
  kwargs = {
    "train_images": images,
    "train_labels": labels,
    "records": [_record(e) for e in range(1, 4)],
    "test_images": images[..., 0],
    "test_labels": labels,
    "test_probabilities": probabilities,
  }
  return plots.write_all(str(tmp_path / "plots"), **{**kwargs, **changes})


def test_write_all_writes_five_valid_pngs_atomically(tmp_path, data):
  paths = _write_all(tmp_path, data)

  expected = {"samples", "learning_curves", "confusion_matrix", "predictions", "mistakes"}
  assert set(paths) == expected
  folder = tmp_path / "plots"
  assert sorted(os.listdir(folder)) == sorted(f"{name}.png" for name in expected)  # No temporary files are left.
  for path in paths.values():
    assert os.path.dirname(path) == str(folder)
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(path)
    height, width = pixels.shape[:2]
    assert 400 <= width <= 2000, (path, pixels.shape)
    assert 150 <= height <= 2000, (path, pixels.shape)
    assert pixels.std() > 0, f"{path} is blank"


def test_save_replaces_an_existing_png(tmp_path):
  path = str(tmp_path / "curves.png")
  assert plots.save(plots.learning_curves([_record(1)]), path) == path
  first = mpimg.imread(path)
  plots.save(plots.learning_curves([_record(1), _record(2)]), path)
  assert os.listdir(tmp_path) == ["curves.png"]
  second = mpimg.imread(path)
  assert first.shape != second.shape or not np.array_equal(first, second)


def test_save_leaves_no_file_when_rendering_fails(tmp_path):
  fig = plots.learning_curves([_record(1)])
  fig.axes[0].text(0, 0, "$\\notacommand$")  # Mathtext fails only when the figure is drawn.
  with pytest.raises(ValueError):
    plots.save(fig, str(tmp_path / "broken.png"))
  assert os.listdir(tmp_path) == []


def test_mistake_order_puts_the_most_confident_mistakes_first():
  labels = np.array([0, 1, 2, 3, 4])
  probabilities = np.full((5, 10), 0.01)
  probabilities[0, 0] = 0.9  # Right.
  probabilities[1, 7] = 0.6  # Wrong at 60%.
  probabilities[2, 2] = 0.95  # Right.
  probabilities[3, 5] = 0.99  # Wrong at 99%.
  probabilities[4, 8] = 0.8  # Wrong at 80%.
  np.testing.assert_array_equal(plots.mistake_order(labels, probabilities), [3, 4, 1])


def test_confident_mistakes_shows_them_in_order(data):
  images, labels, probabilities = data
  order = plots.mistake_order(labels, probabilities)
  assert 0 < order.size < N
  fig = plots.confident_mistakes(images, labels, probabilities, count=3)
  titles = _tile_titles(fig)
  predicted = probabilities.argmax(axis=1)
  assert len(titles) == 3
  for title, i in zip(titles, order[:3], strict=True):
    percent = int(100 * probabilities[i, predicted[i]])
    assert title == f"true {labels[i]}\npred {predicted[i]} ({percent}%)"


def test_confident_mistakes_without_mistakes(tmp_path, data):
  images, labels, _ = data
  perfect = np.eye(10)[labels]
  assert plots.mistake_order(labels, perfect).size == 0
  fig = plots.confident_mistakes(images, labels, perfect)
  assert any("No mistakes" in t.get_text() for ax in fig.axes for t in ax.texts)
  plots.save(fig, str(tmp_path / "mistakes.png"))


def test_prediction_grid_colours_right_and_wrong(data):
  images, labels, probabilities = data
  fig = plots.prediction_grid(images, labels, probabilities, rows=2, cols=4)
  predicted = probabilities.argmax(axis=1)
  (ax,) = fig.axes
  titles = ax.texts
  assert len(titles) == 8
  wrong = 0
  for i, title in enumerate(titles):
    assert title.get_text().startswith(f"pred {predicted[i]} (")
    if predicted[i] == labels[i]:
      assert title.get_color() == plots.CORRECT_COLOR and title.get_fontweight() == "normal"
    else:
      wrong += 1
      assert title.get_color() == plots.WRONG_COLOR and title.get_fontweight() == "bold"
      assert f"true {labels[i]}" in title.get_text()
  assert 0 < wrong < 8
  (frames,) = ax.collections  # Red and thicker around the wrong ones.
  red = [tuple(c) == to_rgba(plots.WRONG_COLOR) for c in frames.get_edgecolor()]
  assert red == [bool(p != t) for p, t in zip(predicted[:8], labels[:8], strict=True)]


def test_tile_grids_show_the_images_as_they_are(data):
  images, labels, _ = data
  fig = plots.sample_grid(images, labels, rows=1, cols=2)
  (ax,) = fig.axes
  assert [t.get_text() for t in ax.texts] == [f"label {labels[0]}", f"label {labels[1]}"]
  (picture,) = ax.images
  canvas = np.asarray(picture.get_array())
  top = canvas.shape[0] - 28  # The tiles' titles are above them.
  np.testing.assert_array_equal(canvas[top:, :28], images[0, ..., 0])
  np.testing.assert_array_equal(canvas[top:, -28:], images[1, ..., 0])
  assert not canvas[:top].any() and not canvas[top:, 28:-28].any()  # White between the tiles.
  with pytest.raises(ValueError, match="rows and cols must be positive"):
    plots.sample_grid(images, labels, rows=0)


@pytest.mark.parametrize(
  "records",
  [[_record(1)], [_record(e, learning_rate=False) for e in (1, 2, 3)], [], [_record(2), _record(1)]],
  ids=["one-epoch", "no-learning-rate", "empty", "unsorted"],
)
def test_learning_curves_render(records, tmp_path):
  fig = plots.learning_curves(records)
  loss_ax, acc_ax, lr_ax = fig.axes
  assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)
  lines_with_markers = [line for line in loss_ax.lines + acc_ax.lines if line.get_marker() not in (None, "None", "")]
  assert len(lines_with_markers) == (4 if records else 0)
  has_learning_rate = any("learning_rate" in r for r in records)
  assert len(lr_ax.lines) == int(has_learning_rate)
  assert plots.read_rgb(plots.save(fig, str(tmp_path / "curves.png"))).shape[2] == 3


def test_learning_curves_show_accuracy_in_percent():
  fig = plots.learning_curves([_record(1), _record(2)])
  accuracy = fig.axes[1].lines[0].get_ydata()
  np.testing.assert_allclose(accuracy, [50.0, 75.0])


def test_a_saved_figure_reads_back_as_rgb(tmp_path):
  fig = plots.confusion_figure(np.eye(10, dtype=np.int64) * 5)
  rgb = plots.read_rgb(plots.save(fig, str(tmp_path / "confusion.png")))
  width, height = fig.get_size_inches() * fig.dpi
  assert rgb.dtype == np.uint8
  assert rgb.shape == (round(height), round(width), 3)
  assert rgb.min() < 128 < rgb.max()


def test_confusion_matrix_title_has_the_accuracy():
  matrix = np.eye(10, dtype=np.int64) * 9
  matrix[4, 9] = 10
  fig = plots.confusion_figure(matrix)
  ax = fig.axes[0]
  assert "90.00%" in ax.get_title()
  assert ax.get_xlabel() == "predicted label"
  assert ax.get_ylabel() == "true label"
  assert [int(t) for t in ax.get_xticks()] == list(range(10))
  assert len(ax.texts) == 100


@pytest.mark.parametrize(
  ("changes", "message"),
  [
    ({"train_labels": np.zeros(N - 1, dtype=np.int32)}, "inconsistent lengths"),
    ({"test_labels": np.zeros(N + 1, dtype=np.int32)}, "inconsistent lengths"),
    ({"test_probabilities": np.full((N - 2, 10), 0.1)}, "inconsistent lengths"),
    ({"test_images": np.zeros((N, 28), dtype=np.uint8)}, "must have shape"),
    ({"records": [{"train_loss": 1.0}]}, "no numeric 'epoch'"),
  ],
)
def test_bad_inputs_raise_one_line_value_errors_before_writing(tmp_path, data, changes, message):
  with pytest.raises(ValueError, match=message) as e:
    _write_all(tmp_path, data, **changes)
  assert "\n" not in str(e.value)
  assert not (tmp_path / "plots").exists()


def test_mismatched_lengths_raise_in_every_function(data):
  images, labels, probabilities = data
  with pytest.raises(ValueError, match="inconsistent lengths"):
    plots.sample_grid(images[:-1], labels)
  with pytest.raises(ValueError, match="inconsistent lengths"):
    plots.prediction_grid(images, labels[:-1], probabilities)
  with pytest.raises(ValueError, match="inconsistent lengths"):
    plots.confident_mistakes(images, labels, probabilities[:-1])
  with pytest.raises(ValueError, match="inconsistent lengths"):
    plots.mistake_order(labels[:-1], probabilities)


def test_importing_plots_does_not_import_pyplot():
  result = subprocess.run(
    [sys.executable, "-c", "import mnist_flax.tools.plots, sys; print('matplotlib.pyplot' in sys.modules)"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "False"


def test_read_rgb_gives_back_a_saved_figure(tmp_path):
  fig = plots.confusion_figure(np.eye(10, dtype=np.int64) * 5)
  rgb = plots.read_rgb(plots.save(fig, str(tmp_path / "c.png")))
  assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
  assert rgb.min() < 128 < rgb.max() and (rgb[0, 0] == 255).all()  # Dark cells on a white background.
