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

from mnist_flax.core import scoring
from mnist_flax.data import input_pipeline
from mnist_flax.errors import UsageError
from mnist_flax.run import backend
from mnist_flax.tools import cli, trained_model

PROG = "python -m mnist_flax.tools.evaluate"


def evaluate_checkpoint(checkpoint: trained_model.Checkpoint, test: dict[str, np.ndarray]) -> dict[str, Any]:
  """Evaluates a restored checkpoint on a split, as the training loop does.

  Returns:
    `step`, `test_loss`, `test_accuracy`, `test_count`, `per_class_accuracy`
    (list of 10), `confusion_matrix` (10 lists of 10 counts, rows = true label)
    and `probabilities` (numpy [N, 10]); for an ensemble these are the ensemble's, and
    `members` lists each member's `test_loss` and `test_accuracy`.
  """
  batch_size = checkpoint.config.runtime.eval_batch_size
  if batch_size % checkpoint.mesh.size:
    raise UsageError(f"the run's eval_batch_size {batch_size} is not divisible by the {checkpoint.mesh.size} devices")
  evaluator = backend.evaluator(checkpoint.config, checkpoint.choices, test, checkpoint.mesh)
  result = evaluator(checkpoint.state)
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


def evaluate_flagged(argv: list[str]) -> tuple[input_pipeline.Splits, dict[str, Any]]:
  """MNIST and `evaluate_checkpoint`'s result for the checkpoint that the command's flags name."""
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  checkpoint = trained_model.load_checkpoint(f.workdir, f.step)
  data = input_pipeline.load_configured(checkpoint.config.runtime, f.data_dir, f.manual_dir)
  return data, evaluate_checkpoint(checkpoint, data["test"])


def main(argv: list[str]) -> None:
  """Prints the evaluation of --workdir's checkpoint."""
  f = flags.FLAGS
  _, result = evaluate_flagged(argv)
  del result["probabilities"]
  print(json.dumps(result) if f.json else format_report(f.workdir, result))


if __name__ == "__main__":
  cli.define_checkpoint_flags()
  cli.define_data_flags()
  flags.DEFINE_bool("json", False, "Print one JSON object instead of tables.")
  cli.run(main, PROG)
