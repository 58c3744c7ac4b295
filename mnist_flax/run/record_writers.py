"""Where the loop's records go: metrics.jsonl, the log, TensorBoard and the progress bar, behind one writer.

The loop hands every record to one `MetricWriter`:
  - `write_chunk(step, num_steps, scalars)` after each dispatched chunk of steps
    (the chunk's mean loss and accuracy, the epoch's running means, the learning
    rate and the throughput);
  - `write_record(record)` once per epoch with the evaluation (a `metrics.jsonl` row);
  - `write_image(step, tag, image)` for pictures.
A resumed run first drops what was written after its checkpoint (`truncate`), so
that the records it writes again are neither duplicated nor out of order.
"""

import contextlib
import glob
import itertools
import json
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tqdm
from absl import logging

from mnist_flax.run import files

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# TensorBoard tags of the metrics.jsonl fields (the step is the x axis).
RECORD_TAGS = {
  "epoch": "epoch",
  "train_loss": "train/loss",
  "train_accuracy": "train/accuracy",
  "train_grad_norm": "train/grad_norm",
  "learning_rate": "train/learning_rate",
  "test_loss": "test/loss",
  "test_accuracy": "test/accuracy",
  "test_count": "test/count",
  "epoch_s": "time/epoch_s",
  "eval_s": "time/eval_s",
  "elapsed_s": "time/elapsed_s",
}
# TensorBoard tags of the per-chunk scalars, a finer curve than the per-epoch records.
# An ensemble's record also lists each member's; TensorBoard shows them as member_<i>/<tag>.
MEMBER_KEYS = ("learning_rate", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
CHUNK_TAGS = {
  "loss": "chunk/train_loss",
  "accuracy": "chunk/train_accuracy",
  "learning_rate": "chunk/learning_rate",
  "images_per_s": "chunk/images_per_s",
}

Record = Mapping[str, Any]


class MetricWriter:
  """Receives the loop's records; every method does nothing unless a subclass says otherwise."""

  def truncate(self, step: int) -> None:
    """Forgets whatever was written for steps after `step` (a resumed run writes it again)."""

  def write_chunk(self, step: int, num_steps: int, scalars: Mapping[str, float]) -> None:
    """Receives the scalars of the chunk of `num_steps` steps that ended at `step`."""

  def write_record(self, record: Record) -> None:
    """Receives one evaluation record (a row of metrics.jsonl; `record["step"]` is its step)."""

  def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
    """Receives a uint8 [H, W, 3] picture."""

  def flush(self) -> None:
    """Makes everything received so far durable (called before each checkpoint)."""

  def close(self) -> None:
    """Flushes and releases files and terminals."""


class MultiWriter(MetricWriter):
  """Hands each call to several writers, in order."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = list(writers)

  def truncate(self, step: int) -> None:  # noqa: D102
    for w in self.writers:
      w.truncate(step)

  def write_chunk(self, step: int, num_steps: int, scalars: Mapping[str, float]) -> None:  # noqa: D102
    for w in self.writers:
      w.write_chunk(step, num_steps, scalars)

  def write_record(self, record: Record) -> None:  # noqa: D102
    for w in self.writers:
      w.write_record(record)

  def write_image(self, step: int, tag: str, image: np.ndarray) -> None:  # noqa: D102
    for w in self.writers:
      w.write_image(step, tag, image)

  def flush(self) -> None:  # noqa: D102
    for w in self.writers:
      w.flush()

  def close(self) -> None:  # noqa: D102
    for w in self.writers:
      w.close()


def read_records(workdir: str) -> list[dict[str, Any]]:
  """The complete records of `<workdir>/metrics.jsonl`.

  A line that is not a JSON object with an integer `step` (cut short by a crash, damaged, not
  UTF-8) is skipped with a warning; a resumed run rewrites the file without it.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  out, skipped = [], []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      try:
        record = json.loads(raw.decode("utf-8"))
      except ValueError:  # UnicodeDecodeError is a ValueError too.
        record = None
      step = record.get("step") if isinstance(record, dict) else None
      if isinstance(step, int) and not isinstance(step, bool):
        out.append(record)
      elif raw.strip():
        skipped.append(number)
  if skipped:
    logging.warning("Skipped %d unreadable line(s) of %s (line %s).", len(skipped), path, ", ".join(map(str, skipped)))
  return out


class JsonlWriter(MetricWriter):
  """`metrics.jsonl`: one JSON object per evaluation, each line flushed to disk as it is written."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, METRICS_FILE)

  def records(self) -> list[dict[str, Any]]:
    """The complete records in the file."""
    return read_records(self.workdir)

  def truncate(self, step: int) -> None:  # noqa: D102
    if not os.path.exists(self.path):
      return
    kept = [r for r in self.records() if r.get("step", 0) <= step]
    with files.atomic_write(self.path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)

  def write_record(self, record: Record) -> None:  # noqa: D102
    with open(self.path, "a") as f:
      f.write(json.dumps(dict(record)) + "\n")
      f.flush()
      os.fsync(f.fileno())


class LogWriter(MetricWriter):
  """One plain line per evaluation record on stdout, like Keras's (the log keeps absl's prefixed lines)."""

  def __init__(self, num_epochs: int):
    self.num_epochs = num_epochs

  def write_record(self, r: Record) -> None:  # noqa: D102
    took = "rebuilt from its checkpoint" if r["epoch_s"] is None else f"{r['epoch_s']:.1f} s"
    if r.get("eval_s") is not None and r["epoch_s"] is not None:  # Records from before eval_s have none.
      took += f" (test {r['eval_s']:.1f} s)"
    print(
      f"epoch {r['epoch']}/{self.num_epochs} step {r['step']}: train loss {r['train_loss']:.4f} "
      f"acc {100 * r['train_accuracy']:.2f}% | test loss {r['test_loss']:.4f} acc {100 * r['test_accuracy']:.2f}% | "
      f"{took}, {r['elapsed_s']:.1f} s total{_members_line(r.get('members'))}",
      flush=True,
    )


def _members_line(members: list | None) -> str:
  if not members:
    return ""
  accuracies = [100 * m["test_accuracy"] for m in members]
  if len(members) == 1:
    return f" | 1 member: test acc {accuracies[0]:.2f}%"
  return f" | {len(members)} members: test acc {min(accuracies):.2f}-{max(accuracies):.2f}%"


class ProgressBar(MetricWriter):
  """A tqdm bar per epoch with the running train loss and accuracy and images per second, like Keras."""

  def __init__(self, steps_per_epoch: int, num_epochs: int, disable: bool | None = None):
    """`disable=None` shows the bar only on a terminal."""
    self.steps_per_epoch = steps_per_epoch
    self.num_epochs = num_epochs
    self.disable = disable
    self._bar = None
    self._epoch_start = time.time()  # The bar is drawn after the first chunk but counts from here.

  def write_chunk(self, step: int, num_steps: int, scalars: Mapping[str, float]) -> None:  # noqa: D102
    if self._bar is None:
      first = step - num_steps
      self._bar = tqdm.tqdm(
        total=self.steps_per_epoch,
        initial=first % self.steps_per_epoch,
        desc=f"epoch {first // self.steps_per_epoch + 1}/{self.num_epochs}",
        unit="step",
        leave=False,
        disable=self.disable,
        mininterval=0,  # Redrawn once per chunk.
      )
      self._bar.start_t = self._bar.last_print_t = self._epoch_start
    postfix = {  # In this order (keyword arguments would be sorted).
      "loss": f"{scalars['running_loss']:.4f}",
      "acc": f"{100 * scalars['running_accuracy']:.2f}%",
      "img/s": f"{scalars['images_per_s']:,.0f}",
    }
    self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(num_steps)

  def write_record(self, record: Record) -> None:  # noqa: D102
    self.close()
    self._epoch_start = time.time()

  def close(self) -> None:  # noqa: D102
    if self._bar is not None:
      self._bar.close()
      self._bar = None


def _event_files(logdir: str) -> list[str]:
  return sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))


def _framed(data: bytes) -> bytes:
  """`data` framed as one TFRecord: little-endian uint64 length, its masked CRC-32C, data, data's masked CRC-32C."""
  from tensorboardX.record_writer import masked_crc32c

  header = struct.pack("<Q", len(data))
  return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def read_event_records(path: str) -> list[bytes]:
  """The serialized events of a TensorBoard event file, up to the first damaged or cut record.

  Event files are TFRecord files (see `_framed`).
  """
  from tensorboardX.record_writer import masked_crc32c

  with open(path, "rb") as f:
    data = f.read()
  out, pos = [], 0
  while pos + 12 <= len(data):
    header = data[pos : pos + 8]
    (length,) = struct.unpack("<Q", header)
    end = pos + 12 + length + 4
    if end > len(data) or struct.unpack("<I", data[pos + 8 : pos + 12])[0] != masked_crc32c(header):
      break
    payload = data[pos + 12 : pos + 12 + length]
    if struct.unpack("<I", data[end - 4 : end])[0] != masked_crc32c(payload):
      break
    out.append(payload)
    pos = end
  return out


class TensorBoardWriter(MetricWriter):
  """TensorBoard event files in `<workdir>/tensorboard`, written synchronously with tensorboardX's protos.

  Every event is in the file when its write returns (`flush` makes it durable), so the
  events of a crashed run are exactly those written before the crash, and a resumed run
  continues them without a gap. No TensorFlow is imported.
  """

  def __init__(self, workdir: str):
    self.logdir = os.path.join(workdir, TENSORBOARD_DIR)
    self._records = None
    self._first_step = 0

  def _write(self, step: int, summary) -> None:
    """Appends one event, opening the run's event file at the first write (after any `truncate`)."""
    from tensorboardX.proto import event_pb2

    if self._records is None:
      os.makedirs(self.logdir, exist_ok=True)
      # Named by time, host, process and first step: a run resumed within the same second never
      # reopens (and empties) the file of the run before it, and files sort in the order written.
      name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
      base = os.path.join(self.logdir, f"{name}.from{self._first_step:010d}")
      for n in itertools.count():
        with contextlib.suppress(FileExistsError):
          self._records = open(f"{base}.{n}" if n else base, "xb", buffering=0)  # noqa: SIM115
          break
      self._records.write(
        _framed(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
      )
    event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
    self._records.write(_framed(event.SerializeToString()))

  def truncate(self, step: int) -> None:
    """Rewrites the event files without the events after `step` (each file replaced atomically)."""
    from tensorboardX.proto import event_pb2

    if self._records is not None:
      raise RuntimeError("truncate the event files before writing to them")
    self._first_step = step
    for path in _event_files(self.logdir):
      records = read_event_records(path)
      kept = [r for r in records if event_pb2.Event.FromString(r).step <= step]
      if len(kept) == len(records) and os.path.getsize(path) == sum(len(r) + 16 for r in records):
        continue
      with files.atomic_write(path, "wb") as f:
        f.write(b"".join(map(_framed, kept)))

  def _scalar(self, step: int, tag: str, value: float) -> None:
    from tensorboardX import summary

    self._write(step, summary.scalar(tag, float(value)))

  def write_chunk(self, step: int, num_steps: int, scalars: Mapping[str, float]) -> None:  # noqa: D102
    for key, tag in CHUNK_TAGS.items():
      if key in scalars:
        self._scalar(step, tag, scalars[key])

  def write_record(self, record: Record) -> None:  # noqa: D102
    for key, tag in RECORD_TAGS.items():
      if record.get(key) is not None:
        self._scalar(record["step"], tag, record[key])
    for member in record.get("members", ()):
      for key in MEMBER_KEYS:
        self._scalar(record["step"], f"member_{member['member']}/{RECORD_TAGS[key]}", member[key])

  def write_image(self, step: int, tag: str, image: np.ndarray) -> None:  # noqa: D102
    from tensorboardX import summary

    self._write(step, summary.image(tag, np.asarray(image), dataformats="HWC"))

  def flush(self) -> None:  # noqa: D102
    if self._records is not None:
      os.fsync(self._records.fileno())

  def close(self) -> None:  # noqa: D102
    if self._records is not None:
      self.flush()
      self._records.close()
      self._records = None


def create_default_writer(
  workdir: str, *, steps_per_epoch: int, num_epochs: int, enabled: bool = True, show_progress: bool | None = None
) -> MetricWriter:
  """The loop's writer: metrics.jsonl, the log line, TensorBoard and the progress bar.

  Args:
    workdir: The run's folder.
    steps_per_epoch: Train steps per epoch (for the bar).
    num_epochs: Epochs of the run (for the bar and the log line).
    enabled: False on every process but the first: nothing is written there.
    show_progress: The bar's tqdm `disable` inverted; None shows it only on a terminal.
  """
  if not enabled:
    return MultiWriter([])
  disable = None if show_progress is None else not show_progress
  return MultiWriter(  # The bar first: it is cleared before the epoch's log line is printed.
    [
      ProgressBar(steps_per_epoch, num_epochs, disable=disable),
      JsonlWriter(workdir),
      LogWriter(num_epochs),
      TensorBoardWriter(workdir),
    ]
  )


class Throughput:
  """Images per second between successive calls of `update`."""

  def __init__(self):
    self._last = time.perf_counter()

  def update(self, num_images: int) -> float:
    """Returns the images per second since the previous call (or construction)."""
    now = time.perf_counter()
    rate = num_images / max(now - self._last, 1e-9)
    self._last = now
    return rate
