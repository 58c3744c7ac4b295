"""The training loop, `train_and_evaluate`: the one place with side effects.

The training set lives on the devices for the whole run. Each epoch visits it in
an order fixed by (`seed`, epoch); several train steps run per host-to-device
dispatch, as one compiled chunk. Chunks start at fixed offsets in each epoch and
checkpoints are taken only between chunks, so a run resumed from any checkpoint
executes exactly the same programs on exactly the same data as one that was
never interrupted, and ends with bit-for-bit the same parameters and metrics.
"""

import contextlib
import functools
import json
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging

from mnist_flax import checkpoints, input_pipeline, models, parallel, steps, validation
from mnist_flax.train_state import TrainState, create_train_state

METRICS_FILE = "metrics.jsonl"
# Steps per dispatch when config.steps_per_dispatch is 0. XLA:CPU runs an unrolled
# chunk of about 16 steps fastest; on GPU and TPU a rolled scan over the whole epoch wins.
CPU_STEPS_PER_DISPATCH = 16
SUM_KEYS = ("loss", "accuracy", "grad_norm")


class Interrupted(Exception):
  """Training stopped on a signal after saving a checkpoint."""


class Diverged(FloatingPointError):
  """The training loss became NaN or infinite."""


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


def epoch_order(data_rng: jax.Array, epoch: int, num_examples: int) -> jax.Array:
  """The permutation of the training set for `epoch`, a function of (key, epoch) only."""
  return jax.random.permutation(jax.random.fold_in(data_rng, epoch), num_examples)


def random_shift(rng: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
  """Translates each image by up to `max_shift` pixels in each direction, filling with zeros."""
  if max_shift == 0:
    return images
  b, h, w, _ = images.shape
  shifts = jax.random.randint(rng, (b, 2), 0, 2 * max_shift + 1)
  padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
  crop = lambda img, s: jax.lax.dynamic_slice(img, (s[0], s[1], 0), (h, w, img.shape[-1]))  # noqa: E731
  return jax.vmap(crop)(padded, shifts)


def to_unit_float(images: jax.Array) -> jax.Array:
  """uint8 pixels to float32 in [0, 1], the images `train_step` and `eval_step` expect."""
  return images.astype(jnp.float32) / 255.0


def zero_sums(sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Per-epoch running sums of the train metrics, all zero."""
  return jax.device_put({k: jnp.zeros((), jnp.float32) for k in SUM_KEYS}, sharding)


def make_train_chunk(num_steps: int, batch_size: int, max_shift: int, unroll: bool, mesh: jax.sharding.Mesh):
  """Compiles `num_steps` train steps over device-resident data into one call.

  The returned function maps `(state, sums, images, labels, order, first, data_rng)`
  to `(state, sums)`: it runs steps `first .. first + num_steps - 1` of the epoch
  whose order is `order`, and adds each step's metrics to `sums`.
  """
  sharding = parallel.batch_sharding(mesh)

  def chunk(state, sums, images, labels, order, first, data_rng):
    def body(carry, i):
      state, sums = carry
      idx = jax.lax.dynamic_slice_in_dim(order, (first + i) * batch_size, batch_size)
      batch = {"image": to_unit_float(images[idx]), "label": labels[idx]}
      batch = jax.lax.with_sharding_constraint(batch, sharding)
      aug_rng = jax.random.fold_in(data_rng, state.step)
      batch["image"] = random_shift(aug_rng, batch["image"], max_shift)
      state, metrics = steps.train_step(state, batch)
      return (state, {k: sums[k] + metrics[k] for k in SUM_KEYS}), None

    (state, sums), _ = jax.lax.scan(body, (state, sums), jnp.arange(num_steps), unroll=num_steps if unroll else 1)
    return state, sums

  return jax.jit(chunk, donate_argnums=(0, 1))


def make_evaluate(mesh: jax.sharding.Mesh):
  """Compiles evaluation of a padded split shaped [num_batches, batch, ...] with a mask."""
  sharding = parallel.batch_sharding(mesh)

  def evaluate(state, images, labels, mask):
    def one(batch):
      image, label, m = batch
      b = {"image": to_unit_float(image), "label": label, "mask": m}
      return steps.eval_step(state, jax.lax.with_sharding_constraint(b, sharding))

    return jax.lax.map(one, (images, labels, mask))

  return jax.jit(evaluate)


def batched_with_mask(split: dict[str, np.ndarray], batch_size: int) -> tuple[np.ndarray, ...]:
  """Pads a split to whole batches: images [nb, bs, 28, 28, 1], labels and mask [nb, bs]."""
  n = len(split["label"])
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  images = np.concatenate([split["image"], np.zeros((pad, *split["image"].shape[1:]), np.uint8)])
  labels = np.concatenate([split["label"], np.zeros((pad,), np.int32)])
  mask = np.arange(num_batches * batch_size) < n
  shape = (num_batches, batch_size)
  return images.reshape(*shape, *images.shape[1:]), labels.reshape(shape), mask.reshape(shape)


def summarize_eval(per_batch: dict[str, jax.Array]) -> dict[str, float]:
  """Combines per-batch eval metrics into loss and accuracy over every real example."""
  m = jax.device_get(per_batch)
  count = float(np.sum(m["count"], dtype=np.float64))
  loss = float(np.sum(m["loss"].astype(np.float64) * m["count"]) / count)
  return {"loss": loss, "accuracy": float(np.sum(m["correct"], dtype=np.float64) / count), "count": count}


class MetricsLog:
  """`metrics.jsonl`: one JSON object per evaluation, written by process 0."""

  def __init__(self, workdir: str, enabled: bool):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.enabled = enabled

  def records(self) -> list[dict[str, Any]]:
    """The complete records in the file (a line cut short by a crash is skipped)."""
    if not os.path.exists(self.path):
      return []
    out = []
    with open(self.path) as f:
      for line in f:
        with contextlib.suppress(ValueError):
          out.append(json.loads(line))
    return out

  def keep_until(self, step: int) -> None:
    """Drops records after `step`, which a resumed run writes again, identically."""
    if not self.enabled or not os.path.exists(self.path):
      return
    kept = [r for r in self.records() if r.get("step", 0) <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, self.path)

  def append(self, record: dict[str, Any]) -> None:
    """Appends one record and flushes it to disk."""
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def stop_requests():
  """Yields an event set by SIGTERM or SIGINT, so the loop can save and stop between chunks."""
  event = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield event
    return

  def handler(signum, frame):
    del frame
    if event.is_set():  # A second signal stops at once.
      raise KeyboardInterrupt
    logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
    event.set()

  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield event
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def _stop(manager, step: int) -> None:
  """Finishes the checkpoint just started and ends the run with `Interrupted`."""
  manager.wait_until_finished()
  manager.close()
  raise Interrupted(f"stopped at step {step} with a checkpoint saved; rerun the same command to resume")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the config's CNN on MNIST, evaluating the full test set every epoch.

  Resumes from the latest checkpoint in `<workdir>/checkpoints` when there is one.

  Args:
    config: A run config (see `configs/default.py`).
    workdir: Folder for checkpoints, `metrics.jsonl` and `config.json`.

  Returns:
    The last evaluation record (as written to `metrics.jsonl`).

  Raises:
    UsageError: the config, workdir or data is unusable; raised before anything is written.
    Interrupted: SIGTERM or SIGINT stopped the run after a checkpoint was saved.
    Diverged: the training loss became NaN or infinite.
  """
  validation.validate_config(config)
  validation.check_workdir(config, workdir)
  data = input_pipeline.load_mnist(config.data_dir or None, config.manual_dir or None)

  mesh = parallel.create_mesh()
  is_main = jax.process_index() == 0
  num_train = len(data["train"]["label"])
  steps_per_epoch = num_train // config.batch_size
  total_steps = config.num_epochs * steps_per_epoch
  chunk_steps = steps_per_dispatch(config, steps_per_epoch, jax.default_backend())
  logging.info(
    "workdir %s; %d %s device(s) over %d process(es); %d steps per epoch, %d per dispatch.",
    workdir,
    jax.device_count(),
    jax.default_backend(),
    jax.process_count(),
    steps_per_epoch,
    chunk_steps,
  )
  if is_main:
    print(models.summary(models.create_model(config.model)), flush=True)

  init_rng, data_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  replicated = parallel.replicated(mesh)
  init = functools.partial(create_train_state, config, steps_per_epoch=steps_per_epoch)
  state: TrainState = jax.jit(init, out_shardings=replicated)(init_rng)
  sums = zero_sums(replicated)

  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, validation.CONFIG_FILE), "w") as f:
      f.write(config.to_json(indent=2))
  log = MetricsLog(workdir, enabled=is_main)
  manager = checkpoints.create_manager(workdir, config.keep_checkpoints)
  elapsed_before = 0.0
  restored = checkpoints.restore_latest(manager, {"state": state, "sums": sums})
  if restored is not None:
    (train, progress) = restored
    state, sums = train["state"], train["sums"]
    elapsed_before = float(progress.get("elapsed_s", 0.0))
    logging.info("Resumed from the checkpoint at step %d.", int(state.step))
  start_step = int(state.step)
  log.keep_until(start_step)
  if start_step >= total_steps:
    logging.info("Training already complete at step %d; nothing to do.", start_step)
    manager.close()
    records = log.records()
    return records[-1] if records else {"step": start_step}

  train_images, train_labels, train_rng = parallel.put_replicated(
    (data["train"]["image"], data["train"]["label"], np.asarray(data_rng)), mesh
  )
  test = parallel.put_replicated(batched_with_mask(data["test"], config.eval_batch_size), mesh)
  evaluate = make_evaluate(mesh)
  chunk_fns: dict[int, Any] = {}
  unroll = jax.default_backend() == "cpu"
  order_fn = jax.jit(epoch_order, static_argnums=2, out_shardings=replicated)

  start_time = time.perf_counter()
  record: dict[str, Any] = {}
  with stop_requests() as stop:
    for epoch in range(start_step // steps_per_epoch, config.num_epochs):
      epoch_start = time.perf_counter()
      order = order_fn(train_rng, epoch, num_train)
      offset = start_step - epoch * steps_per_epoch if epoch == start_step // steps_per_epoch else 0
      if offset == 0:
        sums = zero_sums(replicated)
      bar = tqdm.tqdm(
        total=steps_per_epoch,
        initial=offset,
        desc=f"epoch {epoch + 1}/{config.num_epochs}",
        unit="step",
        leave=False,
        disable=None if is_main else True,  # None: shown only on a terminal.
      )
      for first in range(offset, steps_per_epoch, chunk_steps):
        n = min(chunk_steps, steps_per_epoch - first)
        if n not in chunk_fns:
          chunk_fns[n] = make_train_chunk(n, config.batch_size, config.augment_max_shift, unroll, mesh)
        state, sums = chunk_fns[n](state, sums, train_images, train_labels, order, jnp.int32(first), train_rng)
        jax.block_until_ready(sums)
        step = epoch * steps_per_epoch + first + n
        bar.update(n)
        # Several processes stop together through orbax's preemption sync; one process on its own signal.
        preempted = manager.reached_preemption(step) if jax.process_count() > 1 else stop.is_set()
        due = step // config.checkpoint_every_steps > (step - n) // config.checkpoint_every_steps
        if first + n < steps_per_epoch:  # At the end of an epoch the save waits for its record (below).
          if due or preempted:
            elapsed = elapsed_before + time.perf_counter() - start_time
            checkpoints.save(manager, step, {"state": state, "sums": sums}, {"elapsed_s": elapsed})
          if preempted:
            _stop(manager, step)

      bar.close()
      train = {k: float(v) / steps_per_epoch for k, v in jax.device_get(sums).items()}
      if not np.isfinite(train["loss"]):
        manager.close()
        raise Diverged(f"the training loss is {train['loss']} at epoch {epoch + 1}; lower config.learning_rate")
      test_metrics = summarize_eval(evaluate(state, *test))
      elapsed = elapsed_before + time.perf_counter() - start_time
      record = {
        "step": step,
        "epoch": epoch + 1,
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "train_grad_norm": train["grad_norm"],
        "test_loss": test_metrics["loss"],
        "test_accuracy": test_metrics["accuracy"],
        "test_count": int(test_metrics["count"]),
        "epoch_s": time.perf_counter() - epoch_start,
        "elapsed_s": elapsed,
      }
      log.append(record)
      logging.info(
        "epoch %d/%d step %d: train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%% | %.1f s (%.1f s total)",
        epoch + 1,
        config.num_epochs,
        step,
        train["loss"],
        100 * train["accuracy"],
        test_metrics["loss"],
        100 * test_metrics["accuracy"],
        record["epoch_s"],
        elapsed,
      )
      if due or preempted or step == total_steps:
        checkpoints.save(manager, step, {"state": state, "sums": sums}, {"elapsed_s": elapsed})
      if preempted and step < total_steps:
        _stop(manager, step)
  manager.wait_until_finished()
  manager.close()
  return record
