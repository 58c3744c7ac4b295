"""The training loop, `train_and_evaluate`: the one place with side effects.

The training set lives on the devices for the whole run. Each epoch visits it in an order fixed by
(`seed`, epoch); several train steps run per host-to-device dispatch, as one compiled chunk. Chunks
start at fixed offsets in each epoch and checkpoints are taken only between chunks, so a run
resumed from any checkpoint executes exactly the same programs on exactly the same data as one
that was never interrupted, and ends with bit-for-bit the same parameters and metrics.
"""

import contextlib
import dataclasses
import functools
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mnist_flax.core import networks, scoring, train_state
from mnist_flax.core.train_state import TrainState
from mnist_flax.data import input_pipeline
from mnist_flax.run import (
  backend,
  checkpoints,
  chunks,
  compilation_cache,
  config_checks,
  files,
  locking,
  parallel,
  record_writers,
  snapshot,
  stopping,
)

# Beside the plots, written once they are: `{"step": S, ...}` of the checkpoint they show.
PLOTS_DONE = "plots.json"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the config's CNN on MNIST, evaluating the full test set every epoch.

  Resumes from the latest checkpoint in `<workdir>/checkpoints` when there is one. Writes
  `metrics.jsonl`, TensorBoard events, `config.json` and, at the end, plots.

  Args:
    config: A run config (see `configs/default.py`).
    workdir: Folder for checkpoints, records, plots and `config.json`.

  Returns:
    The last evaluation record (as written to `metrics.jsonl`).

  Raises:
    UsageError: the config, workdir or data is unusable; raised before anything is written.
    stopping.Interrupted: SIGTERM or SIGINT stopped the run after a checkpoint was saved.
    stopping.Diverged: the training loss became NaN, infinite or exploded, or the accuracy stayed at chance.
  """
  config_checks.validate_config(config)
  config_checks.check_workdir(config, workdir)
  compilation_cache.use(config.runtime.compilation_cache)
  data = _load_data(config)
  with _as_write_error(workdir), contextlib.ExitStack() as opened:  # `opened` closes the lock, checkpoints, records.
    run = _open(config, workdir, data, opened)
    state, epoch_sums, steps_per_epoch = run.state, run.epoch_sums, run.steps_per_epoch
    total_steps = config.num_epochs * steps_per_epoch
    if run.start_step >= total_steps:
      return _already_complete(run, data)
    record: dict[str, Any] = {}
    with stopping.stop_requests() as stop:
      for epoch in range(run.start_step // steps_per_epoch, config.num_epochs):
        epoch_start = time.perf_counter()
        for chunk in _train_chunks(run, state, epoch_sums, epoch):
          state, epoch_sums, step, n = chunk
          stop_now = run.stop_agreed(stop)
          if step % steps_per_epoch == 0:  # The epoch's end: its record is written before its checkpoint.
            record, test = _evaluate_epoch(run, state, epoch_sums, epoch, epoch_start)
          if stop_now or step == total_steps or _checkpoint_due(config, step, n):
            run.save(step, state, epoch_sums)
          if stop_now and step < total_steps:
            raise run.stopped(step, stop)
    checkpoints.finish(run.manager)  # The trained model is on disk before the plots are drawn.
    if run.is_main:
      _write_plots(run, data, test["probabilities"], total_steps)
    return record


@dataclasses.dataclass
class Run:
  """What every epoch of this process's run needs: data on the devices, compiled chunks, records, checkpoints."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  choices: backend.Choices
  steps_per_epoch: int
  train_data: tuple[jax.Array, jax.Array, jax.Array]  # images, labels, data key(s); replicated.
  evaluator: scoring.Evaluator
  schedule: Callable[[int], float]
  manager: Any
  writer: record_writers.MetricWriter
  state: TrainState  # Where the run starts: restored, or fresh (donated to the first chunk).
  epoch_sums: dict[str, jax.Array]
  start_step: int
  elapsed_before: float  # Seconds trained by earlier runs of this workdir.
  is_main: bool
  start_time: float = dataclasses.field(default_factory=time.perf_counter)
  chunk_fns: dict[int, Callable] = dataclasses.field(default_factory=dict)
  dispatches: int = 0  # Chunks run so far: JAX's preemption sync counts them.

  def elapsed(self) -> float:
    """Seconds of training so far, earlier runs of this workdir included."""
    return self.elapsed_before + time.perf_counter() - self.start_time

  def chunk_fn(self, n: int) -> Callable:
    """The compiled chunk of `n` steps (one per distinct chunk length)."""
    if n not in self.chunk_fns:
      self.chunk_fns[n] = chunks.config_train_chunk(self.config, self.choices, n, self.mesh)
    return self.chunk_fns[n]

  def save(self, step: int, state: TrainState, epoch_sums: dict) -> None:
    """Makes the records durable, then starts an asynchronous checkpoint at `step`."""
    self.writer.flush()
    checkpoints.save(self.manager, step, {"state": state, "epoch_sums": epoch_sums}, {"elapsed_s": self.elapsed()})

  def stop_agreed(self, stop) -> bool:
    """Whether to save and stop after this chunk: a signal here, or with several processes, in any of them.

    Several processes agree through orbax's preemption sync, whose sync point is one past the
    furthest process's last counter: the counter advances by one per chunk.
    """
    self.dispatches += 1
    return self.manager.reached_preemption(self.dispatches) if jax.process_count() > 1 else stop.is_set()

  def stopped(self, step: int, stop) -> stopping.Interrupted:
    """Waits for the checkpoint just started; the `Interrupted` that ends the run."""
    checkpoints.finish(self.manager)
    signum = getattr(stop, "signum", signal.SIGTERM)  # Another process's preemption: as SIGTERM.
    return stopping.Interrupted(
      f"stopped at step {step} with a checkpoint saved; rerun the same command to resume", signum
    )


def _checkpoint_due(config: ml_collections.ConfigDict, step: int, n: int) -> bool:
  """Whether the chunk of `n` steps ending at `step` crossed a multiple of `checkpoint_every_steps`."""
  every = config.runtime.checkpoint_every_steps
  return step // every > (step - n) // every


def _train_chunks(run: Run, state: TrainState, epoch_sums: dict, epoch: int) -> Iterator[tuple]:
  """Trains `epoch` (from where the run starts, if in it) chunk by chunk: yields `(state, epoch_sums, step, n)`.

  Each chunk of `n` steps ending at `step` has its scalars written (progress bar, TensorBoard) and
  its loss checked (`stopping.check_loss`).
  """
  steps_per_epoch, batch_size = run.steps_per_epoch, run.config.batch_size
  offset = max(run.start_step - epoch * steps_per_epoch, 0)
  if offset == 0:
    epoch_sums = chunks.zero_sums(parallel.replicated(run.mesh), jnp.shape(state.step))
  images, labels, data_rng = run.train_data
  order = chunks.epoch_order_fn(run.mesh)(data_rng, epoch, len(labels))
  before, throughput = jax.device_get(epoch_sums), record_writers.Throughput()
  for first in range(offset, steps_per_epoch, run.choices.steps_per_dispatch):
    n = min(run.choices.steps_per_dispatch, steps_per_epoch - first)
    state, epoch_sums = run.chunk_fn(n)(state, epoch_sums, images, labels, order, jnp.int32(first), data_rng)
    after, step = jax.device_get(epoch_sums), epoch * steps_per_epoch + first + n
    scalars = _chunk_scalars(run, before, after, n, first + n, step, throughput.update(n * batch_size))
    stopping.check_loss(stopping.healthiest(np.ravel(after["loss"] - before["loss"]) / n), step)
    run.writer.write_chunk(step, n, scalars)
    before = after
    yield state, epoch_sums, step, n


def _chunk_scalars(run: Run, before: dict, after: dict, n: int, done: int, step: int, rate: float) -> dict:
  """A chunk's mean loss and accuracy, the epoch's running means (over `done` steps), learning rate and speed.

  Sums with a member axis (an ensemble) give the means over the members.
  """
  return {
    "loss": float(np.mean(after["loss"] - before["loss"])) / n,
    "accuracy": float(np.mean(after["accuracy"] - before["accuracy"])) / n,
    "running_loss": float(np.mean(after["loss"])) / done,
    "running_accuracy": float(np.mean(after["accuracy"])) / done,
    "learning_rate": float(run.schedule(step - 1)),
    "images_per_s": rate,
  }


def _evaluate_epoch(run: Run, state: TrainState, epoch_sums: dict, epoch: int, epoch_start: float) -> tuple[dict, dict]:
  """Evaluates the epoch's state, writes its record and stops the run if it is not learning."""
  record, test = _epoch_record(run, state, epoch_sums, epoch, epoch_start)
  run.writer.write_record(record)
  if run.config.runtime.stop_at_chance:
    best = max([record["test_accuracy"]] + [m["test_accuracy"] for m in record.get("members", [])])
    stopping.check_accuracy(best, record["epoch"])
  return record, test


def _epoch_record(
  run: Run, state: TrainState, epoch_sums: dict, epoch: int, epoch_start: float | None
) -> tuple[dict, dict]:
  """Evaluates `state` on the test set; returns the epoch's metrics.jsonl record and the evaluation.

  `epoch_s` is the epoch's seconds, training and this evaluation; `eval_s` the evaluation's alone.
  `epoch_start` None (a record rebuilt from a checkpoint) gives `epoch_s` None: unknown.
  """
  steps_per_epoch = run.steps_per_epoch
  train = {
    k: np.asarray(v, np.float64) / steps_per_epoch for k, v in jax.device_get(epoch_sums).items()
  }  # [] or [members]
  eval_start = time.perf_counter()  # The epoch's steps are done: their sums are on the host.
  test = run.evaluator(state)
  eval_s = time.perf_counter() - eval_start
  step = (epoch + 1) * steps_per_epoch
  record = {
    "step": step,
    "epoch": epoch + 1,
    "train_loss": float(np.mean(train["loss"])),
    "train_accuracy": float(np.mean(train["accuracy"])),
    "train_grad_norm": float(np.mean(train["grad_norm"])),
    "learning_rate": float(run.schedule(step - 1)),
    "test_loss": test["loss"],
    "test_accuracy": test["accuracy"],
    "test_count": int(test["count"]),
    "epoch_s": None if epoch_start is None else time.perf_counter() - epoch_start,
    "eval_s": eval_s,
    "elapsed_s": run.elapsed(),
  }
  if "members" in test:
    record["members"] = _member_records(run, train, test["members"], step)
  return record, test


def _member_records(run: Run, train: dict[str, np.ndarray], test: list[dict], step: int) -> list[dict]:
  """One record per ensemble member: its peak learning rate's schedule, train and test metrics.

  The epoch record's own train metrics are the members' means and its test metrics the ensemble's.
  """
  base = float(run.schedule(step - 1)) / run.config.learning_rate
  return [
    {
      "member": i,
      "learning_rate": base * peak,
      "train_loss": float(train["loss"][i]),
      "train_accuracy": float(train["accuracy"][i]),
      "test_loss": t["loss"],
      "test_accuracy": t["accuracy"],
    }
    for i, (peak, t) in enumerate(zip(train_state.member_learning_rates(run.config), test, strict=True))
  ]


# Setting up: the data, the workdir's lock, the restored (or fresh) state and the records.


def _load_data(config: ml_collections.ConfigDict) -> input_pipeline.Splits:
  """MNIST in every process: process 0 first (it prepares the dataset and its cache once), then the others."""
  load = functools.partial(input_pipeline.load_configured, config.runtime)
  is_main = jax.process_index() == 0
  data = parallel.fail_together(load, turn=is_main)
  if jax.process_count() > 1:
    later = parallel.fail_together(load, turn=not is_main)
    data = data if is_main else later
  return data


@contextlib.contextmanager
def _as_write_error(workdir: str) -> Iterator[None]:
  """Turns a failed write of records, events or plots (disk full, read-only, ...) into `checkpoints.WriteError`."""
  try:
    yield
  except OSError as e:
    where = e.filename or workdir
    raise checkpoints.WriteError(
      f"cannot write {where}: {e.strerror or e}; the checkpoints before it are kept, rerun once it can be written"
    ) from e


def _open(config: ml_collections.ConfigDict, workdir: str, data: input_pipeline.Splits, opened) -> Run:
  """Holds the workdir, restores the run (or starts it) and opens its records, each closed by `opened`."""
  is_main = jax.process_index() == 0

  def hold() -> None:
    opened.enter_context(locking.workdir_lock(workdir, enabled=is_main))
    config_checks.check_workdir(config, workdir)  # Again: a run that held the lock may have written it.

  parallel.fail_together(hold, turn=True)
  mesh = parallel.create_mesh()
  train = data["train"]
  steps_per_epoch = input_pipeline.steps_per_epoch(config.batch_size, len(train["label"]))
  choices = backend.choose(config, steps_per_epoch)
  logging.info(
    "workdir %s; %d %s device(s) over %d process(es); %d steps per epoch; %s.",
    *(workdir, jax.device_count(), choices.platform, jax.process_count(), steps_per_epoch, choices.describe()),
  )
  if is_main:
    print(networks.summary(networks.create(config.model)), flush=True)
  initial = snapshot.initial_snapshot(config, steps_per_epoch, mesh, backend.train_model(config, choices))
  manager = opened.enter_context(
    contextlib.closing(checkpoints.create_manager(workdir, config.runtime.keep_checkpoints))
  )
  restored, elapsed_before = _restore(config, workdir, manager, initial, steps_per_epoch, is_main)
  writer = record_writers.create_default_writer(
    workdir, steps_per_epoch=steps_per_epoch, num_epochs=config.num_epochs, enabled=is_main
  )
  opened.enter_context(contextlib.closing(writer))
  run = Run(
    config=config,
    workdir=workdir,
    mesh=mesh,
    choices=choices,
    steps_per_epoch=steps_per_epoch,
    train_data=parallel.put_replicated((train["image"], train["label"], snapshot.data_keys(config)), mesh),
    evaluator=backend.evaluator(config, choices, data["test"], mesh),
    schedule=train_state.create_schedule(config, steps_per_epoch),
    manager=manager,
    writer=writer,
    state=restored["state"],
    epoch_sums=restored["epoch_sums"],
    start_step=snapshot.state_step(restored["state"]),
    elapsed_before=elapsed_before,
    is_main=is_main,
  )
  writer.truncate(run.start_step)
  _recover_lost_record(run)
  return run


def _restore(config, workdir: str, manager, initial: dict, steps_per_epoch: int, is_main: bool) -> tuple[dict, float]:
  """The newest readable checkpoint (or `initial`) and the seconds trained before it.

  `config.json` is written only once the restore has succeeded, so a failed resume leaves it as it was.
  """
  saved = config_checks.saved_config(workdir)
  restored = checkpoints.restore_newest_readable(manager, initial, workdir, move=is_main)
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with files.atomic_write(os.path.join(workdir, config_checks.CONFIG_FILE), "w") as f:
      f.write(config.to_json(indent=2))
  if restored is None:
    return initial, 0.0
  restored, progress = restored
  step = snapshot.state_step(restored["state"])
  logging.info("Resumed from the checkpoint at step %d.", step)
  old_epochs = (saved or {}).get("num_epochs", config.num_epochs)
  if isinstance(old_epochs, int) and old_epochs != config.num_epochs:
    _announce_new_length(config, old_epochs, steps_per_epoch, step)
  return restored, float(progress.get("elapsed_s", 0.0))


def _announce_new_length(config: ml_collections.ConfigDict, old_epochs: int, steps_per_epoch: int, step: int) -> None:
  """Warns that a resumed run with another `num_epochs` follows a schedule redefined for the new length."""
  old = config.copy_and_resolve_references()
  old.num_epochs = old_epochs
  before = float(train_state.create_schedule(old, steps_per_epoch)(step))
  after = float(train_state.create_schedule(config, steps_per_epoch)(step))
  logging.warning(
    "num_epochs changed from %d to %d: the learning-rate schedule is redefined over %d epochs from step %d on "
    "(the rate there goes from %.3g to %.3g), so the run differs from one started with num_epochs=%d.",
    old_epochs, config.num_epochs, config.num_epochs, step, before, after, config.num_epochs,
  )  # fmt: skip


def _recover_lost_record(run: Run) -> None:
  """Rebuilds the metrics.jsonl record of the epoch the run starts after, if that line was lost.

  The record is written before its checkpoint; a checkpoint at the end of an epoch without it
  means the line was lost afterwards (cut short, say).
  """
  step, steps_per_epoch = run.start_step, run.steps_per_epoch
  lost = run.is_main and step > 0 and step % steps_per_epoch == 0
  lost = lost and all(r["step"] != step for r in record_writers.read_records(run.workdir))
  if parallel.process_0_says(lost):  # Every process evaluates: the evaluation is one program over all devices.
    record, _ = _epoch_record(run, run.state, run.epoch_sums, step // steps_per_epoch - 1, epoch_start=None)
    run.writer.write_record(record)
    logging.warning("metrics.jsonl had lost the record of step %d; rebuilt it from its checkpoint.", step)


# Finishing: the plots, drawn once training is complete and saved.


def _already_complete(run: Run, data: input_pipeline.Splits) -> dict[str, Any]:
  """A rerun of a finished run: writes the plots if a stop had cut them short; returns the last record."""
  step = run.start_step
  if parallel.process_0_says(run.is_main and not _plots_written(run.workdir, step)):
    logging.info("Training already complete at step %d; writing its plots, which a stop had cut short.", step)
    test = run.evaluator(run.state)  # Every process: the evaluation is one program over all devices.
    if run.is_main:
      _write_plots(run, data, test["probabilities"], step)
  else:
    logging.info("Training already complete at step %d; nothing to do.", step)
  run.writer.flush()
  records = record_writers.read_records(run.workdir)
  return records[-1] if records else {"step": step}


def _plots_written(workdir: str, step: int) -> bool:
  """Whether the plots and the TensorBoard image of the mistakes were written for the checkpoint at `step`."""
  try:
    with open(os.path.join(workdir, PLOTS_DONE)) as f:
      return json.load(f).get("step") == step
  except (OSError, ValueError, AttributeError):
    return False


def _write_plots(run: Run, data: input_pipeline.Splits, probabilities: np.ndarray, step: int) -> None:
  """The plots and the TensorBoard image of the most confident mistakes; `plots.json` last.

  A stop before it (SIGTERM, Ctrl-C) ends the run with `Interrupted` saying so, and the next run
  of the command writes them. Any other failure is only a warning: the model and records are safe.
  """
  from mnist_flax.tools import plots  # matplotlib, once training is over.

  message = f"training is complete (checkpoint at step {step}) but its plots are not written; rerun the same command"
  try:
    with stopping.signals_raise(message + " to write them"):
      written = plots.write_run_plots(run.workdir, data, probabilities)
      run.writer.write_image(step, "test/most_confident_mistakes", plots.read_rgb(written["mistakes"]))
      run.writer.flush()
      with files.atomic_write(os.path.join(run.workdir, PLOTS_DONE), "w") as f:
        json.dump({"step": step, "plots": sorted(written)}, f)
  except stopping.Interrupted:
    raise
  except Exception as e:  # noqa: BLE001 - the trained model and its records are already safe.
    logging.warning("Could not write the plots: %s", e)
    return
  logging.info("Plots: %s", ", ".join(sorted(written.values())))
