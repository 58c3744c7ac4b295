"""The training loop, `train_and_evaluate`: the one place with side effects.

The training set lives on the devices for the whole run. Each epoch visits it in
an order fixed by (`seed`, epoch); several train steps run per host-to-device
dispatch, as one compiled chunk. Chunks start at fixed offsets in each epoch and
checkpoints are taken only between chunks, so a run resumed from any checkpoint
executes exactly the same programs on exactly the same data as one that was
never interrupted, and ends with bit-for-bit the same parameters and metrics.
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mnist_flax.core import models, scoring, steps, train_state
from mnist_flax.core.train_state import TrainState, create_ensemble_state, is_ensemble
from mnist_flax.data import augment, input_pipeline
from mnist_flax.errors import UsageError
from mnist_flax.run import checkpoints, compilation_cache, config_checks, files, locking, parallel, record_writers

PLOTS_DIR = "plots"
# Beside PLOTS_DIR, written once the plots are: `{"step": S, ...}` of the checkpoint they show.
PLOTS_DONE = "plots.json"
# Steps per dispatch on CPU when config.steps_per_dispatch is 0: chunks short enough for a
# responsive progress bar and Ctrl-C; on GPU and TPU one chunk is the whole epoch.
CPU_STEPS_PER_DISPATCH = 16
SUM_KEYS = ("loss", "accuracy", "grad_norm")
# Slices of each batch on CPU when config.microbatches is 0: 4 train the seed CNN about 8 % faster on 2 cores.
CPU_MICROBATCHES = 4


class Interrupted(Exception):
  """Training stopped on a signal after saving a checkpoint; `signum` is the signal (SIGTERM or SIGINT)."""

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.signum = int(signum)


class Diverged(FloatingPointError):
  """The training loss became NaN, infinite or exploded; no checkpoint was saved after that."""


# A chunk's mean training loss above this (ten times the loss of guessing uniformly among the
# classes, 23.0 for MNIST; an untrained network starts near 2.3) means training has blown up.
EXPLODED_LOSS = 10 * math.log(models.NUM_CLASSES)


def check_loss(loss: float, step: int) -> None:
  """Raises `Diverged` if the mean training loss up to `step` is NaN, infinite or exploded."""
  if not np.isfinite(loss) or loss > EXPLODED_LOSS:
    raise Diverged(
      f"the training loss is {loss:.4g} at step {step} (not finite or above {EXPLODED_LOSS:.1f}, ten times "
      "the loss of guessing); lower config.learning_rate. The checkpoints before it are kept"
    )


# A test accuracy below this at the end of an epoch (guessing scores 10 % on MNIST) means the network
# is not learning: a learning rate so high that every output collapses to one class, for example.
CHANCE_ACCURACY = 1.5 / models.NUM_CLASSES


def check_accuracy(accuracy: float, epoch: int) -> None:
  """Raises `Diverged` if the test accuracy after `epoch` is at the level of guessing."""
  if accuracy < CHANCE_ACCURACY:
    raise Diverged(
      f"the test accuracy is {accuracy:.2%} after epoch {epoch}, no better than guessing (below "
      f"{CHANCE_ACCURACY:.0%}): the network is not learning; lower config.learning_rate, or set "
      "config.stop_at_chance=False to train on. The checkpoints before it are kept"
    )


def steps_per_dispatch(config: ml_collections.ConfigDict, steps_per_epoch: int, backend: str) -> int:
  """Train steps per compiled chunk: the config's value, or the backend's default.

  On CPU the default is the divisor of `steps_per_epoch` nearest to 16 within [8, 32]
  (16 itself when there is none), so that one compiled chunk serves the whole epoch.
  """
  if config.steps_per_dispatch:
    return min(config.steps_per_dispatch, steps_per_epoch)
  if backend != "cpu":
    return steps_per_epoch
  divisors = [d for d in range(8, 33) if steps_per_epoch % d == 0]
  best = min(divisors, key=lambda d: (abs(d - CPU_STEPS_PER_DISPATCH), d), default=CPU_STEPS_PER_DISPATCH)
  return min(best, steps_per_epoch)


def microbatches(config: ml_collections.ConfigDict) -> int:
  """Slices each train step splits its batch into (`steps.train_step`): the config's value, or for 0 the backend's.

  0 gives `CPU_MICROBATCHES` on CPU for a single model whose batch splits evenly into them, and 1
  otherwise: XLA:CPU runs the slices' forward and backward passes on its cores side by side, where
  one batch's memory-bound fusions leave a core idle. GPUs and TPUs fill their cores with one batch,
  and stacked ensemble members already give XLA independent work. The choice does not depend on the
  number of devices, so a run on several devices trains as it does on one.
  """
  if config.get("microbatches", 0):
    return config.microbatches
  split = jax.default_backend() == "cpu" and not train_state.stacked(config)
  return CPU_MICROBATCHES if split and config.batch_size % CPU_MICROBATCHES == 0 else 1


def unrolled(config: ml_collections.ConfigDict) -> bool:
  """Whether chunks are compiled unrolled: for `config.scan="unrolled"`, and for "auto" only where rolling is slow.

  "auto" is rolled except on CPU with XLA's convolutions in the training step (`conv_impl` "xla" or
  "patch_grad"): XLA:CPU runs those about 9x slower inside a rolled loop (the seed network: 738
  against 81 ms per step), while patch products ("patches", "pooled") run as fast rolled and compile
  about 5x faster.
  """
  if config.scan == "auto":
    return jax.default_backend() == "cpu" and train_state.conv_impl(config) in ("xla", "patch_grad")
  return config.scan == "unrolled"


def epoch_order(data_rng: jax.Array, epoch: int, num_examples: int) -> jax.Array:
  """The permutation of the training set for `epoch`, a function of (key, epoch) only.

  With one key per ensemble member ([members, 2], see `data_keys`), one permutation per member.
  """
  if data_rng.ndim == 2:
    return jax.vmap(epoch_order, in_axes=(0, None, None))(data_rng, epoch, num_examples)
  return jax.random.permutation(jax.random.fold_in(data_rng, epoch), num_examples)


def zero_sums(sharding: jax.sharding.Sharding, shape: tuple[int, ...] = ()) -> dict[str, jax.Array]:
  """Per-epoch running sums of the train metrics, all zero; `shape` (members,) for an ensemble."""
  return jax.device_put({k: jnp.zeros(shape, jnp.float32) for k in SUM_KEYS}, sharding)


def state_step(state: TrainState) -> int:
  """The step of a train state (every ensemble member is at the same step)."""
  return int(np.ravel(jax.device_get(state.step))[0])


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """The run's two root PRNG keys: `(init_rng, data_rng)`, for the state and the data order."""
  init_rng, data_rng = jax.random.split(jax.random.PRNGKey(seed))
  return init_rng, data_rng


def data_keys(config: ml_collections.ConfigDict) -> np.ndarray:
  """The key of the run's data order and augmentation, or one key per member ([members, 2]) drawing its own."""
  data_rng = run_keys(config.seed)[1]
  if train_state.own_member_batches(config):
    data_rng = jax.random.split(data_rng, len(train_state.member_learning_rates(config)))
  return np.asarray(data_rng)


def init_train_item(config: ml_collections.ConfigDict, steps_per_epoch: int, mesh: jax.sharding.Mesh) -> dict:
  """The checkpointed pytree at step 0: `{"state": TrainState, "sums": zero sums}`, replicated on `mesh`."""
  init = functools.partial(create_ensemble_state, config, steps_per_epoch=steps_per_epoch)
  state = jax.jit(init, out_shardings=parallel.replicated(mesh))(run_keys(config.seed)[0])
  return {"state": state, "sums": zero_sums(parallel.replicated(mesh), jnp.shape(state.step))}


def abstract_train_item(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict:
  """The shapes, dtypes and shardings of `init_train_item`, computing nothing: a restore target."""
  spe = input_pipeline.SPLIT_SIZES["train"] // config.batch_size
  item = jax.eval_shape(lambda: init_train_item(config, spe, mesh))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), item)


def make_train_chunk(
  num_steps: int,
  batch_size: int,
  augmentation: augment.Augmentation,
  unroll: bool,
  mesh: jax.sharding.Mesh,
  microbatches: int = 1,
):
  """Compiles `num_steps` train steps over device-resident data into one call.

  The returned function maps `(state, sums, images, labels, order, first, data_rng)`
  to `(state, sums)`: it runs steps `first .. first + num_steps - 1` of the epoch
  whose order is `order`, and adds each step's metrics to `sums`. With one key and one
  order per ensemble member (`data_keys`, `epoch_order`), each member trains on its own batches.
  Each step splits its batch into `microbatches` slices (see `steps.train_step`).
  """
  sharding = parallel.batch_sharding(mesh)

  def chunk(state, sums, images, labels, order, first, data_rng):
    def draw(order, data_rng, start, step):
      idx = jax.lax.dynamic_slice_in_dim(order, start, batch_size)
      batch = {"image": input_pipeline.to_unit_float(images[idx]), "label": labels[idx]}
      batch = jax.lax.with_sharding_constraint(batch, sharding)
      batch["image"] = augmentation(jax.random.fold_in(data_rng, step), batch["image"])
      return batch

    own = order.ndim == 2  # One order per member.

    def body(carry, i):
      state, sums = carry
      args = (order, data_rng, (first + i) * batch_size, jnp.ravel(state.step)[0])
      batch = jax.vmap(draw, in_axes=(0, 0, None, None))(*args) if own else draw(*args)
      if is_ensemble(state):
        state, metrics = steps.ensemble_train_step(state, batch, member_batches=own, microbatches=microbatches)
      else:
        state, metrics = steps.train_step(state, batch, microbatches=microbatches)
      return (state, {k: sums[k] + metrics[k] for k in SUM_KEYS}), None

    (state, sums), _ = jax.lax.scan(body, (state, sums), jnp.arange(num_steps), unroll=num_steps if unroll else 1)
    return state, sums

  return jax.jit(chunk, donate_argnums=(0, 1))


def config_train_chunk(config: ml_collections.ConfigDict, num_steps: int, mesh: jax.sharding.Mesh):
  """`make_train_chunk` of `num_steps` steps with the config's batch, augmentation, scan mode and microbatches."""
  augmentation = augment.Augmentation.from_config(config)
  return make_train_chunk(num_steps, config.batch_size, augmentation, unrolled(config), mesh, microbatches(config))


@contextlib.contextmanager
def stop_requests():
  """Yields an event set by SIGTERM or SIGINT, so the loop can save and stop between chunks.

  With several processes, SIGTERM is left to JAX's preemption notifier, which tells every process
  (the loop asks orbax's `reached_preemption`), and SIGINT is passed on to it as a SIGTERM.
  """
  event = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield event
    return
  several = jax.process_count() > 1

  def handler(signum, frame):
    del frame
    if event.is_set():  # A second signal stops at once.
      raise KeyboardInterrupt
    logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
    event.signum = signum  # For the exit code, 128 + signum as shells report it.
    event.set()
    if several:
      os.kill(os.getpid(), signal.SIGTERM)

  handled = (signal.SIGINT,) if several else (signal.SIGTERM, signal.SIGINT)
  previous = {s: signal.signal(s, handler) for s in handled}
  try:
    yield event
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def _stop(manager, step: int, stop: threading.Event) -> None:
  """Finishes the checkpoint just started and ends the run with `Interrupted`."""
  checkpoints.finish(manager)
  signum = getattr(stop, "signum", signal.SIGTERM)  # Another process's preemption: as SIGTERM.
  raise Interrupted(f"stopped at step {step} with a checkpoint saved; rerun the same command to resume", signum)


@dataclasses.dataclass
class _Run:
  """What every epoch of one run needs: the data on the devices, compiled programs, writer and manager."""

  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  steps_per_epoch: int
  chunk_steps: int
  train_data: tuple[jax.Array, jax.Array, jax.Array]  # images, labels, data key(s); replicated.
  evaluator: scoring.Evaluator
  schedule: Any
  manager: Any
  writer: record_writers.MetricWriter
  elapsed_before: float
  start_time: float = dataclasses.field(default_factory=time.perf_counter)
  chunk_fns: dict[int, Any] = dataclasses.field(default_factory=dict)
  dispatches: int = 0  # Chunks run so far by this process: JAX's preemption sync counts calls, one apart.

  def elapsed(self) -> float:
    """Seconds of training so far, earlier runs of this workdir included."""
    return self.elapsed_before + time.perf_counter() - self.start_time

  def save(self, step: int, state: TrainState, sums: dict) -> None:
    """Makes the records durable, then starts an asynchronous checkpoint at `step`."""
    self.writer.flush()
    checkpoints.save(self.manager, step, {"state": state, "sums": sums}, {"elapsed_s": self.elapsed()})

  def chunk_fn(self, n: int):
    """The compiled chunk of `n` steps (one per distinct chunk length)."""
    if n not in self.chunk_fns:
      self.chunk_fns[n] = config_train_chunk(self.config, n, self.mesh)
    return self.chunk_fns[n]


def _chunk_scalars(before: dict, after: dict, n: int, done: int, run: _Run, step: int, rate: float) -> dict:
  """The scalars of a chunk of `n` steps: its means, the epoch's running means (over `done` steps), lr, speed.

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


def _check(run: _Run, check, *args) -> None:
  """`check(*args)`; if it raises `Diverged`, the records and checkpoints so far are closed first."""
  try:
    check(*args)
  except Diverged:
    run.writer.close()
    run.manager.close()
    raise


def _train_epoch(run: _Run, state: TrainState, sums: dict, epoch: int, offset: int, stop) -> tuple:
  """Trains steps `offset ..` of `epoch` chunk by chunk, checkpointing when due or asked to stop.

  Returns:
    `(state, sums, due, preempted)` for the epoch's last chunk: whether a checkpoint is due (by
    `checkpoint_every_steps` or a stop request; it waits for the epoch's record) and whether the
    run was asked to stop. A stop request in mid-epoch saves and raises `Interrupted`.
  """
  spe, c = run.steps_per_epoch, run.config
  images, labels, data_rng = run.train_data
  order = epoch_order_fn(run.mesh)(data_rng, epoch, len(labels))
  before = jax.device_get(sums)
  throughput = record_writers.Throughput()
  due = preempted = False
  for first in range(offset, spe, run.chunk_steps):
    n = min(run.chunk_steps, spe - first)
    state, sums = run.chunk_fn(n)(state, sums, images, labels, order, jnp.int32(first), data_rng)
    after = jax.device_get(sums)
    step = epoch * spe + first + n
    rate = throughput.update(n * c.batch_size)
    scalars = _chunk_scalars(before, after, n, first + n, run, step, rate)
    _check(run, check_loss, _healthiest(np.ravel(after["loss"] - before["loss"]) / n), step)
    run.writer.write_chunk(step, n, scalars)
    before = after
    # Several processes stop together through orbax's preemption sync, whose sync point is one past the
    # furthest process's last counter (so the counter must advance by one); one process on its own signal.
    run.dispatches += 1
    preempted = run.manager.reached_preemption(run.dispatches) if jax.process_count() > 1 else stop.is_set()
    due = step // c.checkpoint_every_steps > (step - n) // c.checkpoint_every_steps or preempted
    if first + n < spe:  # At the end of an epoch the save waits for its record.
      if due:
        run.save(step, state, sums)
      if preempted:
        run.writer.close()
        _stop(run.manager, step, stop)
  return state, sums, due, preempted


def _healthiest(losses: np.ndarray) -> float:
  """The lowest finite loss among the members (NaN if none is finite): a run stops when all diverge."""
  finite = losses[np.isfinite(losses)]
  return float(finite.min()) if finite.size else float("nan")


@functools.cache
def epoch_order_fn(mesh: jax.sharding.Mesh):
  """`epoch_order`, compiled with a replicated output on `mesh`."""
  return jax.jit(epoch_order, static_argnums=2, out_shardings=parallel.replicated(mesh))


def _epoch_record(run: _Run, state: TrainState, sums: dict, epoch: int, epoch_start: float | None) -> tuple[dict, dict]:
  """Evaluates `state` on the test set; returns the epoch's metrics.jsonl record and the evaluation.

  `epoch_s` is the epoch's seconds, training and this evaluation; `eval_s` the evaluation's alone.
  `epoch_start` None (a record rebuilt from a checkpoint) gives `epoch_s` None: unknown.
  """
  spe = run.steps_per_epoch
  train = {k: np.asarray(v, np.float64) / spe for k, v in jax.device_get(sums).items()}  # [] or [members]
  eval_start = time.perf_counter()  # The epoch's steps are done: their sums are on the host.
  test = run.evaluator(state)
  eval_s = time.perf_counter() - eval_start
  step = (epoch + 1) * spe
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


def _member_records(run: _Run, train: dict[str, np.ndarray], test: list[dict], step: int) -> list[dict]:
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


def write_plots(workdir: str, data: input_pipeline.Splits, probabilities: np.ndarray) -> dict[str, str]:
  """Writes the run's plots to `<workdir>/plots` (matplotlib is imported here, after training)."""
  from mnist_flax.tools import plots

  return plots.write_all(
    os.path.join(workdir, PLOTS_DIR),
    train_images=data["train"]["image"],
    train_labels=data["train"]["label"],
    records=record_writers.read_records(workdir),
    test_images=data["test"]["image"],
    test_labels=data["test"]["label"],
    test_probabilities=probabilities,
  )


def _record_lost(workdir: str, step: int, steps_per_epoch: int) -> bool:
  """Whether `step` ends an epoch whose record is missing from metrics.jsonl (a line cut short, say).

  The record is written before its checkpoint; a checkpoint at the end of an epoch without it
  means the line was lost afterwards.
  """
  if step == 0 or step % steps_per_epoch:
    return False
  return all(r["step"] != step for r in record_writers.read_records(workdir))


def _plots_written(workdir: str, step: int) -> bool:
  """Whether the plots and the TensorBoard image of the mistakes were written for the checkpoint at `step`."""
  try:
    with open(os.path.join(workdir, PLOTS_DONE)) as f:
      return json.load(f).get("step") == step
  except (OSError, ValueError, AttributeError):
    return False


def _finish(workdir: str, data: input_pipeline.Splits, test: dict, step: int, writer) -> None:
  """Plots and the TensorBoard image of the most confident mistakes, once training is complete and saved.

  `plots.json` is written last; a stop before it (SIGTERM, Ctrl-C) ends the run with `Interrupted`
  saying so, and the next run of the command writes them.
  """
  from mnist_flax.tools import plots

  def stop(signum, frame):
    del frame
    raise Interrupted(
      f"training is complete (checkpoint at step {step}) but its plots are not written; "
      "rerun the same command to write them",
      signum,
    )

  previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    written = write_plots(workdir, data, test["probabilities"])
    writer.write_image(step, "test/most_confident_mistakes", plots.read_rgb(written["mistakes"]))
    writer.flush()
    with files.atomic_write(os.path.join(workdir, PLOTS_DONE), "w") as f:
      json.dump({"step": step, "plots": sorted(written)}, f)
  except Interrupted:
    raise
  except Exception as e:  # noqa: BLE001 - the trained model and its records are already safe.
    logging.warning("Could not write the plots: %s", e)
    return
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
  logging.info("Plots: %s", ", ".join(sorted(written.values())))


def _announce_new_length(config: ml_collections.ConfigDict, old_epochs: int, spe: int, step: int) -> None:
  """Warns that a resumed run with another `num_epochs` follows a schedule redefined for the new length."""
  old = config.copy_and_resolve_references()
  old.num_epochs = old_epochs
  before = float(train_state.create_schedule(old, spe)(step))
  after = float(train_state.create_schedule(config, spe)(step))
  logging.warning(
    "num_epochs changed from %d to %d: the learning-rate schedule is redefined over %d epochs from step %d on "
    "(the rate there goes from %.3g to %.3g), so the run differs from one started with num_epochs=%d.",
    old_epochs, config.num_epochs, config.num_epochs, step, before, after, config.num_epochs,
  )  # fmt: skip


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the config's CNN on MNIST, evaluating the full test set every epoch.

  Resumes from the latest checkpoint in `<workdir>/checkpoints` when there is one.
  Writes `metrics.jsonl`, TensorBoard events, `config.json` and, at the end, plots.

  Args:
    config: A run config (see `configs/default.py`).
    workdir: Folder for checkpoints, records, plots and `config.json`.

  Returns:
    The last evaluation record (as written to `metrics.jsonl`).

  Raises:
    UsageError: the config, workdir or data is unusable; raised before anything is written.
    Interrupted: SIGTERM or SIGINT stopped the run after a checkpoint was saved.
    Diverged: the training loss became NaN or infinite, or exploded (see `check_loss`).
  """
  config_checks.validate_config(config)
  config_checks.check_workdir(config, workdir)
  compilation_cache.use(config.get("compilation_cache", ""))
  is_main, several = jax.process_index() == 0, jax.process_count() > 1
  load = functools.partial(input_pipeline.load_mnist, config.data_dir or None, config.manual_dir or None)
  data = _together(load, turn=is_main)  # Process 0 first: it prepares the dataset and its cache once.
  if several:  # Then the others, from the cache.
    later = _together(load, turn=not is_main)
    data = data if is_main else later
  with contextlib.ExitStack() as held:

    def hold() -> None:
      held.enter_context(locking.workdir_lock(workdir, enabled=is_main))
      config_checks.check_workdir(config, workdir)  # Again: a run that held the lock may have written it.

    _together(hold, turn=True)
    try:
      return _train_and_evaluate(config, workdir, data)
    except OSError as e:  # Records, events or plots could not be written: disk full, read-only, ...
      where = e.filename or workdir
      raise checkpoints.WriteError(
        f"cannot write {where}: {e.strerror or e}; the checkpoints before it are kept, rerun once it can be written"
      ) from e


def _together(action, turn: bool):
  """`action()` where `turn` is true; if it fails in any process, every process stops (no one waits forever).

  Raises:
    UsageError: this process's own error, or one naming the process that failed.
  """
  result, error = None, None
  if turn:
    try:
      result = action()
    except UsageError as e:
      error = e
  failed = parallel.failed_processes(error is not None)
  if error is not None:
    raise error
  if failed:
    raise UsageError(f"process {failed[0]} could not start (its output says why)")
  return result


def _resume(config: ml_collections.ConfigDict, workdir: str, spe: int, mesh: jax.sharding.Mesh, is_main: bool):
  """The checkpoint manager, the train item (restored, or fresh) and the seconds trained before.

  `config.json` is written only once the restore has succeeded, so a failed resume leaves it as it was.
  """
  item = init_train_item(config, spe, mesh)
  saved = config_checks.saved_config(workdir)
  manager = checkpoints.create_manager(workdir, config.keep_checkpoints)
  restored = checkpoints.restore_newest_readable(manager, item, workdir, move=is_main)
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with files.atomic_write(os.path.join(workdir, config_checks.CONFIG_FILE), "w") as f:
      f.write(config.to_json(indent=2))
  if restored is None:
    return manager, item, 0.0
  item, progress = restored
  step = state_step(item["state"])
  logging.info("Resumed from the checkpoint at step %d.", step)
  old_epochs = (saved or {}).get("num_epochs", config.num_epochs)
  if isinstance(old_epochs, int) and old_epochs != config.num_epochs:
    _announce_new_length(config, old_epochs, spe, step)
  return manager, item, float(progress.get("elapsed_s", 0.0))


def _start(
  config: ml_collections.ConfigDict, workdir: str, data: input_pipeline.Splits
) -> tuple[_Run, TrainState, dict]:
  """Restores (or initializes) the train item and opens the records: `(run, state, sums)` to go on from.

  A checkpoint at the end of an epoch whose metrics.jsonl record was lost gets its record back.
  """
  mesh = parallel.create_mesh()
  is_main = jax.process_index() == 0
  spe = len(data["train"]["label"]) // config.batch_size
  chunk_steps = steps_per_dispatch(config, spe, jax.default_backend())
  logging.info(
    "workdir %s; %d %s device(s) over %d process(es); %d steps per epoch, %d per dispatch.",
    *(workdir, jax.device_count(), jax.default_backend(), jax.process_count(), spe, chunk_steps),
  )
  if is_main:
    print(models.summary(models.create_model(config.model)), flush=True)
  manager, item, elapsed_before = _resume(config, workdir, spe, mesh, is_main)
  state, sums = item["state"], item["sums"]
  start_step = state_step(state)
  writer = record_writers.create_default_writer(
    workdir, steps_per_epoch=spe, num_epochs=config.num_epochs, enabled=is_main
  )
  writer.truncate(start_step)
  run = _Run(
    config=config,
    mesh=mesh,
    steps_per_epoch=spe,
    chunk_steps=chunk_steps,
    train_data=parallel.put_replicated((data["train"]["image"], data["train"]["label"], data_keys(config)), mesh),
    evaluator=scoring.Evaluator(data["test"], config.eval_batch_size, mesh, train_state.eval_model(config).apply),
    schedule=train_state.create_schedule(config, spe),
    manager=manager,
    writer=writer,
    elapsed_before=elapsed_before,
  )
  if parallel.process_0_says(is_main and _record_lost(workdir, start_step, spe)):
    record, _ = _epoch_record(run, state, sums, start_step // spe - 1, epoch_start=None)
    writer.write_record(record)
    logging.warning("metrics.jsonl had lost the record of step %d; rebuilt it from its checkpoint.", start_step)
  return run, state, sums


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, data: input_pipeline.Splits) -> dict[str, Any]:
  """`train_and_evaluate` once the config is checked, the data loaded and the workdir held."""
  run, state, sums = _start(config, workdir, data)
  spe, writer, manager = run.steps_per_epoch, run.writer, run.manager
  start_step, total_steps = state_step(state), config.num_epochs * run.steps_per_epoch
  if start_step >= total_steps:
    manager.close()
    is_main = jax.process_index() == 0
    if parallel.process_0_says(is_main and not _plots_written(workdir, start_step)):
      logging.info("Training already complete at step %d; writing its plots, which a stop had cut short.", start_step)
      test = run.evaluator(state)  # Every process: the evaluation is one program over all devices.
      if is_main:
        _finish(workdir, data, test, start_step, writer)
    else:
      logging.info("Training already complete at step %d; nothing to do.", start_step)
    writer.close()
    records = record_writers.read_records(workdir)
    return records[-1] if records else {"step": start_step}

  record: dict[str, Any] = {}
  with stop_requests() as stop:
    for epoch in range(start_step // spe, config.num_epochs):
      epoch_start = time.perf_counter()
      offset = start_step - epoch * spe if epoch == start_step // spe else 0
      if offset == 0:
        sums = zero_sums(parallel.replicated(run.mesh), jnp.shape(state.step))
      state, sums, save_due, preempted = _train_epoch(run, state, sums, epoch, offset, stop)
      record, test = _epoch_record(run, state, sums, epoch, epoch_start)
      writer.write_record(record)
      if config.stop_at_chance:
        best = max([record["test_accuracy"]] + [m["test_accuracy"] for m in record.get("members", [])])
        _check(run, check_accuracy, best, record["epoch"])
      step = record["step"]
      if save_due or step == total_steps:
        run.save(step, state, sums)
      if preempted and step < total_steps:
        writer.close()
        _stop(manager, step, stop)
  checkpoints.finish(manager)  # The trained model is on disk before the plots are drawn.
  if jax.process_index() == 0:
    _finish(workdir, data, test, total_steps, writer)
  writer.close()
  return record
