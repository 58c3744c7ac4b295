"""`python -m mnist_flax.tools.predict --workdir=W INPUT...`: read digits from images, arrays or a Kaggle CSV.

Inputs:
  - image files (PNG, JPEG, anything Pillow opens), any size, either polarity:
    made into MNIST-style 28x28 images first (see `mnist_flax.tools.photos`);
  - `.npy` arrays [N, 28, 28] or [N, 28, 28, 1], uint8 or float in [0, 1];
  - one Kaggle digit-recognizer CSV (`test.csv`, or `train.csv` with labels):
    writes a submission `ImageId,Label` to --output (default submission.csv) and,
    when the CSV has labels, prints the accuracy.

Flags:
  --workdir: a run folder written by main.py (required).
  --step: the checkpoint step (default: the latest).
  --output: a CSV to write (`input,label,probability` for images and arrays).

Every input is read and checked before the model is loaded; output files are
written whole or not at all.
"""

if __name__ == "__main__":  # Before the heavy imports, so an early Ctrl-C is one line too.
  from mnist_flax.tools import startup

  startup.exit_on_interrupt("python -m mnist_flax.tools.predict")


import csv
import io
import os
import sys

import numpy as np
from absl import flags

from mnist_flax.errors import UsageError
from mnist_flax.run import files
from mnist_flax.tools import cli, trained_model, user_inputs

PROG = "python -m mnist_flax.tools.predict"
SUBMISSION_FILE = "submission.csv"


def check_output(path: str, inputs: list[str]) -> None:
  """Refuses an output that would overwrite an input or cannot be written, before any work."""
  real = os.path.realpath(path)
  if any(os.path.realpath(p) == real for p in inputs):
    raise UsageError(f"--output {path} is one of the inputs; choose another file")
  if os.path.isdir(path):
    raise UsageError(f"--output {path} is a folder")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise UsageError(f"cannot write {path}: folder {folder} does not exist")
  if not os.access(folder, os.W_OK):
    raise UsageError(f"cannot write {path}: folder {folder} is not writable")


def csv_text(header: list[str], rows: list[list]) -> str:
  """Rows as CSV text with a header."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  return out.getvalue()


def predict_kaggle(predictor: trained_model.Predictor, images: np.ndarray, labels: np.ndarray | None) -> dict:
  """Predicts a Kaggle CSV's images; returns the submission text and, with labels, the accuracy."""
  predictions = predictor(images).argmax(axis=1)
  rows = [[i + 1, int(p)] for i, p in enumerate(predictions)]
  result = {"submission": csv_text(["ImageId", "Label"], rows), "count": len(predictions)}
  if labels is not None:
    result["accuracy"] = float(np.mean(predictions == labels))
  return result


def predict_inputs(predictor: trained_model.Predictor, named: list[tuple[str, np.ndarray]]) -> list[list]:
  """`[name, predicted digit, probability]` for each named image."""
  probabilities = predictor(np.stack([image for _, image in named]))
  return [[name, int(p.argmax()), float(p.max())] for (name, _), p in zip(named, probabilities, strict=True)]


def main(argv: list[str]) -> None:
  """Reads the inputs, predicts and prints or writes the results."""
  f = flags.FLAGS
  inputs = argv[1:]
  if not inputs:
    raise UsageError("give at least one INPUT: image files, .npy arrays or one Kaggle CSV")
  csvs = [p for p in inputs if user_inputs.is_csv(p)]
  if csvs and len(inputs) > 1:
    raise UsageError(f"a Kaggle CSV is predicted on its own; got {len(inputs)} inputs with {csvs[0]}")
  if csvs:
    output = f.output or SUBMISSION_FILE
    check_output(output, inputs)
    images, labels = user_inputs.read_kaggle_csv(csvs[0])
    result = predict_kaggle(trained_model.Predictor.from_workdir(f.workdir, f.step), images, labels)
    files.write_text(output, result["submission"])
    message = f"wrote {result['count']:,} predictions to {output}"
    if "accuracy" in result:
      message += f"; accuracy against the CSV's labels: {100 * result['accuracy']:.2f}%"
    print(message)
    return
  if f.output:
    check_output(f.output, inputs)
  named = user_inputs.read_inputs(inputs)
  rows = predict_inputs(trained_model.Predictor.from_workdir(f.workdir, f.step), named)
  if f.output:
    files.write_text(f.output, csv_text(["input", "label", "probability"], rows))
  width = max(len(name) for name, _, _ in rows)
  for name, label, probability in rows:
    print(f"{name:<{width}}  {label}  {100 * probability:6.2f}%")
  if f.output:
    print(f"wrote {len(rows):,} predictions to {f.output}", file=sys.stderr)


if __name__ == "__main__":
  cli.define_checkpoint_flags()
  flags.DEFINE_string("output", None, "CSV file to write (Kaggle CSV input: default submission.csv).")
  flags.FLAGS.set_gnu_getopt(True)  # Flags may follow the inputs.
  cli.run(main, PROG)
