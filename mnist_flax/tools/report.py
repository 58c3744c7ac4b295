"""`python -m mnist_flax.tools.report --workdir=W`: (re)writes a run's plots in `<workdir>/plots/`.

Flags:
  --workdir: a run folder written by main.py (required).
  --step: the checkpoint whose predictions are plotted (default: the latest).
  --data_dir, --manual_dir: where MNIST is (default: the run's config).

Writes samples.png, learning_curves.png, confusion_matrix.png, predictions.png
and mistakes.png; the training loop writes the same files when a run ends.
"""

if __name__ == "__main__":  # Before the heavy imports, so an early Ctrl-C is one line too.
  from mnist_flax.tools import startup

  startup.exit_on_interrupt("python -m mnist_flax.tools.report")


from absl import flags

from mnist_flax.errors import UsageError
from mnist_flax.tools import cli, evaluate, plots

PROG = "python -m mnist_flax.tools.report"


def main(argv: list[str]) -> None:
  """Evaluates --workdir's checkpoint and writes its plots."""
  f = flags.FLAGS
  data, result = evaluate.evaluate_flagged(argv)
  try:
    written = plots.write_run_plots(f.workdir, data, result["probabilities"])
  except OSError as e:
    raise UsageError(f"cannot write the plots in {f.workdir}: {e.strerror or e}") from e
  print(f"step {result['step']}: test accuracy {100 * result['test_accuracy']:.2f}%")
  for name in sorted(written):
    print(written[name])


if __name__ == "__main__":
  cli.define_checkpoint_flags()
  cli.define_data_flags()
  cli.run(main, PROG)
