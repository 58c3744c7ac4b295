"""PNG figures of a run: training samples, learning curves, confusion matrix, predictions and mistakes."""

import dataclasses
import math
import os
import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from mnist_flax.core import scoring
from mnist_flax.run import files, record_writers

PLOTS_DIR = "plots"  # In a run's workdir.
DPI = 110
NUM_CLASSES = 10
CORRECT_COLOR = "#1b7f3a"
WRONG_COLOR = "#c62828"
TRAIN_COLOR = "#1f77b4"
TEST_COLOR = "#d62728"
TITLE_SIZE = 14
LABEL_SIZE = 11
TILE_TITLE_SIZE = 9
FRAME_COLOR = "#bbbbbb"
MARGIN = 0.12  # Inches of white around a figure's contents.
# Digits are light on black in the data; the reversed gray map draws them black on white.
IMAGE_CMAP = "gray_r"
FILES = {
  "samples": "samples.png",
  "learning_curves": "learning_curves.png",
  "confusion_matrix": "confusion_matrix.png",
  "predictions": "predictions.png",
  "mistakes": "mistakes.png",
}


def _as_images(images: np.ndarray, name: str = "images") -> np.ndarray:
  """`images` as [N, H, W], accepting [N, H, W] or [N, H, W, 1]."""
  images = np.asarray(images)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim != 3:
    raise ValueError(f"{name} must have shape [N, H, W] or [N, H, W, 1], got {images.shape}")
  return images


def _as_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
  """`labels` as a 1-D integer array."""
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"{name} must have shape [N], got {labels.shape}")
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name} must be integers, got dtype {labels.dtype}")
  return labels.astype(np.int64)


def _as_probabilities(probabilities: np.ndarray) -> np.ndarray:
  """`probabilities` as a float [N, C] array."""
  probabilities = np.asarray(probabilities, dtype=np.float64)
  if probabilities.ndim != 2 or probabilities.shape[1] < 2:
    raise ValueError(f"probabilities must have shape [N, num_classes], got {probabilities.shape}")
  return probabilities


def _same_length(**arrays: Any) -> None:
  """Raises `ValueError` unless every array has the same first dimension."""
  lengths = {name: len(a) for name, a in arrays.items()}
  if len(set(lengths.values())) > 1:
    listed = ", ".join(f"{name} {n}" for name, n in lengths.items())
    raise ValueError(f"inconsistent lengths: {listed}")


def _labelled_images(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  images, labels = _as_images(images), _as_labels(labels)
  _same_length(images=images, labels=labels)
  return images, labels


def _predictions(
  images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  images, labels, probabilities = _as_images(images), _as_labels(labels), _as_probabilities(probabilities)
  _same_length(images=images, labels=labels, probabilities=probabilities)
  return images, labels, probabilities


def mistake_order(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
  """Indices of the misclassified examples, most confident wrong prediction first.

  Args:
    labels: True labels, int [N].
    probabilities: Class probabilities, float [N, num_classes]; the prediction is the argmax.

  Returns:
    Int indices into the N examples whose argmax differs from the label, sorted by the probability given to the
    predicted class, highest first (ties keep their original order).

  Raises:
    ValueError: If the lengths differ.
  """
  labels, probabilities = _as_labels(labels), _as_probabilities(probabilities)
  _same_length(labels=labels, probabilities=probabilities)
  predicted = probabilities.argmax(axis=1)
  wrong = np.flatnonzero(predicted != labels)
  confidence = probabilities[wrong, predicted[wrong]]
  return wrong[np.argsort(-confidence, kind="stable")]


def _padded_layout() -> ConstrainedLayoutEngine:
  """A constrained layout with a margin around the figure, so that it is saved whole without a tight bounding box."""
  return ConstrainedLayoutEngine(w_pad=MARGIN, h_pad=MARGIN)


def _percent(p: float) -> str:
  """A probability as a whole percentage, rounded down so that only certainty reads 100%."""
  return f"{math.floor(100 * p + 1e-9):d}%"


@dataclasses.dataclass(frozen=True)
class _Tile:
  """One image of a tile grid with its title above it; `wrong` draws the title bold and a red frame."""

  image: np.ndarray
  title: str
  color: str = "black"
  wrong: bool = False


def _tile_grid(
  tiles: Sequence[_Tile], rows: int, cols: int, title: str, *, title_lines: int = 1, title_size: int = TILE_TITLE_SIZE
) -> Figure:
  """A titled figure of `rows` x `cols` image tiles, filled row by row from `tiles`, each titled above.

  The tiles are one image on one Axes, their titles text and their frames one collection: an Axes per
  tile takes about four times as long to build and draw.
  """
  if rows < 1 or cols < 1:
    raise ValueError(f"rows and cols must be positive, got rows={rows}, cols={cols}")
  tiles = tiles[: rows * cols]
  height, width = tiles[0].image.shape if tiles else (28, 28)
  gap = max(2, round(0.1 * width))
  fig_width = min(10.0, max(6.0, 1.2 * cols))
  pixel = (fig_width - 2 * MARGIN) / (cols * (width + gap) - gap)  # Inches per image pixel.
  band = round((0.18 * title_lines + 0.08) / pixel)  # Pixels above each row for the tiles' titles.
  canvas = np.zeros((rows * (band + height), cols * (width + gap) - gap), np.float32)  # 0 draws white.
  # About eight bold title characters fit in an inch; a longer title wraps instead of running past the tiles.
  title = textwrap.fill(title, int(8 * fig_width))
  fig_height = MARGIN + 0.3 * (title.count("\n") + 1) + canvas.shape[0] * pixel + MARGIN
  fig = Figure(figsize=(fig_width, fig_height), dpi=DPI)
  fig.suptitle(title, fontsize=TITLE_SIZE, fontweight="bold", y=1 - MARGIN / fig_height, va="top")
  ax = fig.add_axes(
    (MARGIN / fig_width, MARGIN / fig_height, 1 - 2 * MARGIN / fig_width, canvas.shape[0] * pixel / fig_height)
  )
  ax.set_axis_off()
  frames = []
  for k, tile in enumerate(tiles):
    top, left = (k // cols) * (band + height) + band, (k % cols) * (width + gap)
    canvas[top : top + height, left : left + width] = tile.image
    frames.append(Rectangle((left - 0.5, top - 0.5), width, height))
    weight = "bold" if tile.wrong else "normal"
    ax.text(
      left + width / 2,
      top - 1.5,
      tile.title,
      ha="center",
      va="bottom",
      color=tile.color,
      fontsize=title_size,
      fontweight=weight,
    )
  vmax = 255 if all(np.issubdtype(t.image.dtype, np.integer) for t in tiles) else 1.0
  ax.imshow(canvas, cmap=IMAGE_CMAP, vmin=0, vmax=vmax, interpolation="nearest", aspect="equal")
  colors = [WRONG_COLOR if t.wrong else FRAME_COLOR for t in tiles]
  widths = [2.0 if t.wrong else 0.8 for t in tiles]
  ax.add_collection(PatchCollection(frames, facecolor="none", edgecolors=colors, linewidths=widths, clip_on=False))
  return fig


def sample_grid(images: np.ndarray, labels: np.ndarray, *, rows: int = 4, cols: int = 8) -> Figure:
  """The first `rows * cols` training images, each titled with its label.

  Args:
    images: uint8 [N, 28, 28] or [N, 28, 28, 1], light digits on black.
    labels: int [N].
    rows: Rows of tiles.
    cols: Columns of tiles.

  Returns:
    The figure, titled "Training samples".

  Raises:
    ValueError: If the lengths differ or the shapes are wrong.
  """
  images, labels = _labelled_images(images, labels)
  tiles = [_Tile(image, f"label {label}") for image, label in zip(images[: rows * cols], labels, strict=False)]
  return _tile_grid(tiles, rows, cols, "Training samples", title_size=TILE_TITLE_SIZE + 1)


def prediction_grid(
  images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, *, rows: int = 4, cols: int = 8
) -> Figure:
  """The first `rows * cols` test images with their predictions, green when right and red when wrong.

  Each tile is titled "pred 7 (99%)"; a wrong one adds "true 4" on a second line, so the colour is not the only cue.

  Args:
    images: uint8 [N, 28, 28] or [N, 28, 28, 1], light digits on black.
    labels: True labels, int [N].
    probabilities: Class probabilities, float [N, num_classes]; the prediction is the argmax.
    rows: Rows of tiles.
    cols: Columns of tiles.

  Returns:
    The figure.

  Raises:
    ValueError: If the lengths differ or the shapes are wrong.
  """
  images, labels, probabilities = _predictions(images, labels, probabilities)
  shown = min(rows * cols, len(images))
  predicted = probabilities.argmax(axis=1)
  correct = int(np.sum(predicted[:shown] == labels[:shown]))
  title = f"Test predictions: {correct} of the first {shown} correct"
  tiles = []
  for i in range(shown):
    pred, label = int(predicted[i]), int(labels[i])
    text = f"pred {pred} ({_percent(probabilities[i, pred])})"
    if pred == label:
      tiles.append(_Tile(images[i], text, CORRECT_COLOR))
    else:
      tiles.append(_Tile(images[i], f"{text}\ntrue {label}", WRONG_COLOR, wrong=True))
  return _tile_grid(tiles, rows, cols, title, title_lines=2)


def confident_mistakes(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, *, count: int = 32) -> Figure:
  """The misclassified images, most confident wrong prediction first (see `mistake_order`).

  Each tile is titled e.g. "true 4, pred 9 (98%)" (over two lines). Without mistakes the figure says so.

  Args:
    images: uint8 [N, 28, 28] or [N, 28, 28, 1], light digits on black.
    labels: True labels, int [N].
    probabilities: Class probabilities, float [N, num_classes]; the prediction is the argmax.
    count: The most mistakes to show.

  Returns:
    The figure.

  Raises:
    ValueError: If the lengths differ or the shapes are wrong.
  """
  images, labels, probabilities = _predictions(images, labels, probabilities)
  if count < 1:
    raise ValueError(f"count must be positive, got {count}")
  order = mistake_order(labels, probabilities)
  if order.size == 0:
    fig = Figure(figsize=(8, 3), dpi=DPI, layout=_padded_layout())
    ax = fig.subplots()
    ax.set_axis_off()
    fig.suptitle("Most confident mistakes", fontsize=TITLE_SIZE, fontweight="bold")
    ax.text(
      0.5,
      0.5,
      f"No mistakes: all {len(labels)} images are classified correctly.",
      ha="center",
      va="center",
      fontsize=LABEL_SIZE + 2,
      transform=ax.transAxes,
    )
    return fig
  chosen = order[:count]
  cols = min(8, len(chosen))
  rows = math.ceil(len(chosen) / cols)
  error_rate = order.size / len(labels)
  title = (
    f"Most confident mistakes: {len(chosen)} of {order.size} shown (error {error_rate:.2%} on {len(labels)} images)"
  )
  predicted = probabilities.argmax(axis=1)
  tiles = [
    _Tile(images[i], f"true {labels[i]}\npred {predicted[i]} ({_percent(probabilities[i, predicted[i]])})")
    for i in chosen
  ]
  return _tile_grid(tiles, rows, cols, title, title_lines=2)


def _metric(records: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(epochs, values) of the records that have `key` with a number."""
  pairs = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), int | float)]
  if not pairs:
    return np.zeros(0), np.zeros(0)
  epochs, values = zip(*pairs, strict=True)
  return np.asarray(epochs, dtype=np.float64), np.asarray(values, dtype=np.float64)


def _ordered_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """The records sorted by epoch, keeping the last of a repeated epoch."""
  by_epoch: dict[float, dict[str, Any]] = {}
  for i, record in enumerate(records):
    if not isinstance(record, dict) or not isinstance(record.get("epoch"), int | float):
      raise ValueError(f"record {i} has no numeric 'epoch'")
    by_epoch[record["epoch"]] = record
  return [by_epoch[e] for e in sorted(by_epoch)]


def _note(ax, text: str) -> None:
  """Writes `text` in the middle of an empty panel and hides its meaningless y ticks."""
  ax.set_yticks([])
  ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=LABEL_SIZE, color="#666666", transform=ax.transAxes)


def learning_curves(records: list[dict[str, Any]]) -> Figure:
  """Loss, accuracy and learning rate per epoch, in three panels side by side.

  Args:
    records: `metrics.jsonl` rows with `epoch`, `train_loss`, `test_loss`, `train_accuracy` and `test_accuracy`
      (fractions); `learning_rate` is drawn where present. Records are sorted by epoch; a repeated epoch keeps its
      last record.

  Returns:
    The figure; with no records, one that says so.

  Raises:
    ValueError: If a record has no `epoch`.
  """
  ordered = _ordered_records(records)

  fig = Figure(figsize=(11, 3.9), dpi=DPI, layout=_padded_layout())
  loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
  n = len(ordered)
  counted = f"{n} epoch{'s' if n != 1 else ''}" if n else "no epochs recorded yet"
  fig.suptitle(f"Learning curves ({counted})", fontsize=TITLE_SIZE, fontweight="bold")
  _metric_panel(loss_ax, ordered, "Loss", "cross-entropy loss", "loss", 1.0)
  _metric_panel(acc_ax, ordered, "Accuracy", "accuracy (%)", "accuracy", 100.0)
  _learning_rate_panel(lr_ax, ordered)
  all_epochs = [r["epoch"] for r in ordered]
  for ax in (loss_ax, acc_ax, lr_ax):
    ax.set_xlabel("epoch", fontsize=LABEL_SIZE)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, which="major", alpha=0.3)
    ax.tick_params(labelsize=LABEL_SIZE - 1)
    if len(all_epochs) == 1:
      ax.set_xlim(all_epochs[0] - 1, all_epochs[0] + 1)
    elif all_epochs:
      ax.set_xlim(all_epochs[0] - 0.5, all_epochs[-1] + 0.5)
    else:
      ax.set_xticks([])
  return fig


_CURVE_STYLE = {"marker": "o", "markersize": 5, "linewidth": 1.8}


def _metric_panel(ax, ordered: list[dict[str, Any]], title: str, ylabel: str, key: str, scale: float) -> None:
  """The train and test curves of `key` (times `scale`); a loss spanning more than 5x on a log scale."""
  drawn = []
  for split, color in (("train", TRAIN_COLOR), ("test", TEST_COLOR)):
    epochs, values = _metric(ordered, f"{split}_{key}")
    if epochs.size:
      ax.plot(epochs, scale * values, color=color, label=split, **_CURVE_STYLE)
      drawn.append(values[np.isfinite(values)])
  values = np.concatenate(drawn) if drawn else np.zeros(0)
  if values.size:
    ax.legend(fontsize=LABEL_SIZE - 1, loc="best")
    if key == "loss" and len(ordered) > 1 and values.min() > 0 and values.max() / values.min() > 5:
      _log_scale(ax, values)
      ylabel += " (log scale)"
  else:
    _note(ax, f"no {key} recorded")
  ax.set_title(title, fontsize=LABEL_SIZE + 1)
  ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)


def _log_scale(ax, values: np.ndarray) -> None:
  """A log y axis labelled in plain numbers, with 1-2-5 ticks over up to 2.5 decades."""
  ax.set_yscale("log")
  decades = math.log10(values.max() / values.min())
  ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)))
  ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
  ax.yaxis.set_minor_formatter(NullFormatter())


def _learning_rate_panel(ax, ordered: list[dict[str, Any]]) -> None:
  """The learning rate of each epoch's last step, from 0."""
  epochs, rates = _metric(ordered, "learning_rate")
  if epochs.size:
    ax.plot(epochs, rates, color="#2ca02c", label="learning rate", **_CURVE_STYLE)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3), useMathText=True)
    finite = rates[np.isfinite(rates)]
    ax.set_ylim(0, 1.1 * finite.max() if finite.size and finite.max() > 0 else 1)
  else:
    _note(ax, "no learning rate recorded")
  ax.set_title("Learning rate", fontsize=LABEL_SIZE + 1)
  ax.set_ylabel("learning rate", fontsize=LABEL_SIZE)


def confusion_figure(matrix: np.ndarray) -> Figure:
  """A confusion matrix, coloured by the share of each true label on a log scale and annotated with counts.

  The log colour scale keeps a handful of mistakes visible next to a diagonal of thousands; empty cells stay white
  with a gray 0, and nonzero off-diagonal counts are bold.

  Args:
    matrix: Counts [C, C]; rows are true labels, columns predicted labels.

  Returns:
    The figure, titled with the accuracy the matrix implies.

  Raises:
    ValueError: If the matrix is not square or has negative counts.
  """
  matrix = np.asarray(matrix)
  if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
    raise ValueError(f"matrix must be square [C, C], got shape {matrix.shape}")
  if np.any(matrix < 0):
    raise ValueError("matrix must hold non-negative counts")
  n = matrix.shape[0]
  total = int(matrix.sum())
  correct = int(np.trace(matrix))
  row_sums = matrix.sum(axis=1, keepdims=True)
  rate = np.divide(matrix, row_sums, out=np.zeros(matrix.shape, dtype=np.float64), where=row_sums > 0)
  positive = rate[rate > 0]
  # The smallest share sits a little above the bottom of the scale, so that a single mistake is tinted.
  vmin = min(positive.min(), 0.01) / 1.5 if positive.size else 1e-3

  fig = Figure(figsize=(8.2, 7), dpi=DPI, layout=_padded_layout())
  ax = fig.subplots()
  cmap = matplotlib.colormaps["Blues"].resampled(256)
  cmap = ListedColormap(cmap(np.linspace(0.22, 1.0, 256))).with_extremes(bad="white")
  norm = LogNorm(vmin=vmin, vmax=1.0)
  image = ax.imshow(np.ma.masked_less_equal(rate, 0), cmap=cmap, norm=norm, interpolation="nearest")
  _share_colorbar(fig, ax, image)
  _annotate_counts(ax, matrix, rate, norm)
  ax.set_xticks(range(n))
  ax.set_yticks(range(n))
  ax.set_xlabel("predicted label", fontsize=LABEL_SIZE + 1)
  ax.set_ylabel("true label", fontsize=LABEL_SIZE + 1)
  ax.tick_params(labelsize=LABEL_SIZE, length=0)
  ax.set_xticks(np.arange(-0.5, n), minor=True)
  ax.set_yticks(np.arange(-0.5, n), minor=True)
  ax.grid(which="minor", color="#dddddd", linewidth=0.8)
  ax.tick_params(which="minor", length=0)
  accuracy = f"accuracy {correct / total:.2%} ({correct}/{total})" if total else "no examples"
  ax.set_title(f"Confusion matrix: {accuracy}", fontsize=TITLE_SIZE, fontweight="bold")
  return fig


def _share_colorbar(fig: Figure, ax, image) -> None:
  """The confusion matrix's colour bar, in percent of the true label."""
  colorbar = fig.colorbar(image, ax=ax, shrink=0.85, pad=0.02)
  colorbar.set_label("share of the true label (log scale)", fontsize=LABEL_SIZE)
  colorbar.formatter = FuncFormatter(lambda v, _: f"{100 * v:g}%")
  colorbar.update_ticks()
  colorbar.ax.tick_params(labelsize=LABEL_SIZE - 1)


def _annotate_counts(ax, matrix: np.ndarray, rate: np.ndarray, norm: LogNorm) -> None:
  """Each cell's count: a gray 0 where empty, white on dark cells, bold dark red for mistakes."""
  n = matrix.shape[0]
  digits = len(str(int(matrix.max())))
  cell_size = max(5.0, min(12.0, 110 / n) * min(1.0, 4 / digits))
  for i in range(n):
    for j in range(n):
      count = int(matrix[i, j])
      if count == 0:
        ax.text(j, i, "0", ha="center", va="center", fontsize=cell_size - 1, color="#bbbbbb")
        continue
      dark = norm(rate[i, j]) > 0.55
      weight = "bold" if i != j else "normal"
      color = "white" if dark else ("#8b0000" if i != j else "black")
      ax.text(j, i, str(count), ha="center", va="center", fontsize=cell_size, color=color, fontweight=weight)


def read_rgb(path: str) -> np.ndarray:
  """A PNG written by `save`, as a uint8 [H, W, 3] RGB array (a saved plot for TensorBoard, not drawn twice)."""
  from matplotlib import image

  pixels = image.imread(path)  # float32 in [0, 1] for PNGs.
  return np.round(pixels[..., :3] * 255).astype(np.uint8)


def save(fig: Figure, path: str) -> str:
  """Writes a figure as a PNG atomically: a crash leaves the old file or none, never half of one.

  The PNG is written to a temporary file beside `path` and moved over it; the parent folder is created if needed.

  Args:
    fig: The figure.
    path: Where the PNG goes.

  Returns:
    `path`.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with files.atomic_write(path, "wb") as f:
    FigureCanvasAgg(fig)  # Agg renders PNGs with no display.
    # Every figure is laid out to fit its size, so it is drawn once: a tight bounding box would draw it twice.
    fig.savefig(f, format="png", dpi=DPI, facecolor="white")
  return path


def write_run_plots(workdir: str, data: dict, probabilities: np.ndarray) -> dict[str, str]:
  """`write_all` into `<workdir>/plots`: the run's MNIST splits, its records and the test probabilities."""
  return write_all(
    os.path.join(workdir, PLOTS_DIR),
    train_images=data["train"]["image"],
    train_labels=data["train"]["label"],
    records=record_writers.read_records(workdir),
    test_images=data["test"]["image"],
    test_labels=data["test"]["label"],
    test_probabilities=probabilities,
  )


def write_all(
  plots_dir: str,
  *,
  train_images: np.ndarray,
  train_labels: np.ndarray,
  records: list[dict[str, Any]],
  test_images: np.ndarray,
  test_labels: np.ndarray,
  test_probabilities: np.ndarray,
) -> dict[str, str]:
  """Writes the five PNGs of a run into `plots_dir`, creating it.

  Every input is checked before any file is written.

  Args:
    plots_dir: The folder for the PNGs.
    train_images: uint8 [N, 28, 28] or [N, 28, 28, 1] training images.
    train_labels: int [N] training labels.
    records: `metrics.jsonl` rows (see `learning_curves`).
    test_images: uint8 [M, 28, 28] or [M, 28, 28, 1] test images.
    test_labels: int [M] test labels.
    test_probabilities: float [M, 10] predicted class probabilities.

  Returns:
    Name -> path for `samples`, `learning_curves`, `confusion_matrix`, `predictions` and `mistakes`.

  Raises:
    ValueError: If an input has the wrong shape or the lengths differ.
  """
  train_images, train_labels = _labelled_images(train_images, train_labels)
  test_images, test_labels, test_probabilities = _predictions(test_images, test_labels, test_probabilities)
  _ordered_records(records)
  num_classes = test_probabilities.shape[1]
  matrix = scoring.confusion_matrix(test_labels, test_probabilities.argmax(axis=1), num_classes)

  os.makedirs(plots_dir, exist_ok=True)
  figures = {
    "samples": lambda: sample_grid(train_images, train_labels),
    "learning_curves": lambda: learning_curves(records),
    "confusion_matrix": lambda: confusion_figure(matrix),
    "predictions": lambda: prediction_grid(test_images, test_labels, test_probabilities),
    "mistakes": lambda: confident_mistakes(test_images, test_labels, test_probabilities),
  }
  return {name: save(make(), os.path.join(plots_dir, FILES[name])) for name, make in figures.items()}
