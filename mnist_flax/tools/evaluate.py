"""`python -m mnist_flax.tools.evaluate --workdir=W`: a checkpoint's loss, accuracy and confusion on the test set.

Flags:
  --workdir: a run folder written by main.py (required).
  --step: the checkpoint step (default: the latest).
  --json: print one JSON object instead of tables.
  --data_dir, --manual_dir: where MNIST is (default: the run's config).

The loss and accuracy are computed by the same compiled program, on the same
batches, as the training loop's evaluation: on the same devices they equal the
`metrics.jsonl` record of that step to the last digit.
"""

if __name__ == "__main__":  # Before the heavy imports, so an early Ctrl-C is one line too.
  from mnist_flax.tools import startup

  startup.exit_on_interrupt("python -m mnist_flax.tools.evaluate")


import json
from typing import Any

import numpy as np
from absl import flags

from mnist_flax.core import scoring, train_state
from mnist_flax.data import input_pipeline
from mnist_flax.errors import UsageError
from mnist_flax.tools import cli, trained_model

PROG = "python -m mnist_flax.tools.evaluate"


def load_test_split(config, data_dir: str | None = None, manual_dir: str | None = None) -> input_pipeline.Splits:
  """Both MNIST splits for a run: from `data_dir`/`manual_dir`, else from the run's config."""
  return input_pipeline.load_mnist(data_dir or config.data_dir or None, manual_dir or config.manual_dir or None)


def evaluate_checkpoint(checkpoint: trained_model.Checkpoint, test: dict[str, np.ndarray]) -> dict[str, Any]:
  """Evaluates a restored checkpoint on a split, as the training loop does.

  Returns:
    `step`, `test_loss`, `test_accuracy`, `test_count`, `per_class_accuracy`
    (list of 10), `confusion_matrix` (10 lists of 10 counts, rows = true label)
    and `probabilities` (numpy [N, 10]); for an ensemble these are the ensemble's, and
    `members` lists each member's `test_loss` and `test_accuracy`.
  """
  batch_size = checkpoint.config.eval_batch_size
  if batch_size % checkpoint.mesh.size:
    raise UsageError(f"the run's eval_batch_size {batch_size} is not divisible by the {checkpoint.mesh.size} devices")
  apply_fn = train_state.eval_model(checkpoint.config).apply
  result = scoring.Evaluator(test, batch_size, checkpoint.mesh, apply_fn)(checkpoint.state)
  confusion = scoring.confusion_matrix(test["label"], result["probabilities"].argmax(axis=1))
  evaluated = {
    "step": checkpoint.step,
    "test_loss": result["loss"],
    "test_accuracy": result["accuracy"],
    "test_count": int(result["count"]),
    "per_class_accuracy": [float(a) for a in scoring.per_class_accuracy(confusion)],
    "confusion_matrix": confusion.tolist(),
    "probabilities": result["probabilities"],
  }
  if "members" in result:
    evaluated["members"] = [
      {"member": i, "test_loss": m["loss"], "test_accuracy": m["accuracy"]} for i, m in enumerate(result["members"])
    ]
  return evaluated


def format_report(workdir: str, r: dict[str, Any]) -> str:
  """The evaluation as readable tables: totals, per-class accuracy and the confusion matrix."""
  confusion = np.asarray(r["confusion_matrix"])
  lines = [
    f"{workdir}: checkpoint at step {r['step']}, {r['test_count']:,} test images",
    f"test loss {r['test_loss']:.6f}   test accuracy {100 * r['test_accuracy']:.2f}%"
    + (f"   (the ensemble of {len(r['members'])} members)" if r.get("members") else ""),
  ]
  for m in r.get("members", ()):
    lines.append(
      f"  member {m['member']}: test loss {m['test_loss']:.6f}   test accuracy {100 * m['test_accuracy']:.2f}%"
    )
  lines += [
    "",
    "class   images   correct   accuracy",
  ]
  for c, acc in enumerate(r["per_class_accuracy"]):
    lines.append(f"{c:>5}   {confusion[c].sum():>6}   {confusion[c, c]:>7}   {100 * acc:>7.2f}%")
  lines += ["", "confusion matrix (rows: true label, columns: predicted label)"]
  lines.append("true\\pred " + "".join(f"{p:>6}" for p in range(confusion.shape[1])))
  for c, row in enumerate(confusion):
    lines.append(f"{c:>9} " + "".join(f"{v:>6}" for v in row))
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  """Prints the evaluation of --workdir's checkpoint."""
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  checkpoint = trained_model.load_checkpoint(f.workdir, f.step)
  data = load_test_split(checkpoint.config, f.data_dir, f.manual_dir)
  result = evaluate_checkpoint(checkpoint, data["test"])
  del result["probabilities"]
  print(json.dumps(result) if f.json else format_report(f.workdir, result))


if __name__ == "__main__":
  cli.define_checkpoint_flags()
  cli.define_data_flags()
  flags.DEFINE_bool("json", False, "Print one JSON object instead of tables.")
  cli.run(main, PROG)
