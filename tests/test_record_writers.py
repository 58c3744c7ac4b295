import os

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from mnist_flax.run import record_writers
from tests.conftest import tensorboard_scalars as scalars


def record(step, **extra):
  return {
    "step": step,
    "epoch": step // 10,
    "train_loss": 1.0 / step,
    "train_accuracy": 0.5,
    "train_grad_norm": 2.0,
    "learning_rate": 0.001,
    "test_loss": 2.0 / step,
    "test_accuracy": 0.25,
    "test_count": 100,
    "epoch_s": 1.5,
    "eval_s": 0.5,
    "elapsed_s": 1.5 * step,
    **extra,
  }


def chunk(loss):
  return {
    "loss": loss,
    "accuracy": 0.5,
    "running_loss": loss,
    "running_accuracy": 0.5,
    "learning_rate": 0.1,
    "images_per_s": 1000.0,
  }


def test_jsonl_drops_records_after_a_step_and_cut_lines(tmp_path):
  log = record_writers.JsonlWriter(str(tmp_path))
  for step in (10, 20, 30):
    log.write_record({"step": step, "x": 0.1 + step})
  with open(log.path, "a") as f:
    f.write('{"step": 40, "x"')  # A line cut short by a crash.
  assert [r["step"] for r in log.records()] == [10, 20, 30]
  log.truncate(20)
  assert [r["step"] for r in record_writers.read_records(str(tmp_path))] == [10, 20]
  assert log.records()[1]["x"] == 20.1


@pytest.mark.parametrize(
  "line", [b"\xff\xfe not utf-8\n", b"[1, 2]\n", b'{"step": "ten"}\n', b'{"step": true}\n', b"{}\n"]
)
def test_damaged_lines_are_skipped_with_a_warning(tmp_path, caplog, line):
  log = record_writers.JsonlWriter(str(tmp_path))
  log.write_record({"step": 10})
  with open(log.path, "ab") as f:
    f.write(line)
  log.write_record({"step": 20})
  with caplog.at_level("WARNING"):
    assert [r["step"] for r in log.records()] == [10, 20]
  assert "Skipped 1 unreadable line(s)" in caplog.text and "(line 2)" in caplog.text


def test_tensorboard_holds_every_record_field_and_the_chunks(tmp_path):
  writer = record_writers.TensorBoardWriter(str(tmp_path))
  for step in (5, 10):
    writer.write_chunk(step, 5, chunk(1.0 / step))
  writer.write_record(record(10))
  writer.write_image(10, "test/mistakes", np.zeros((20, 30, 3), np.uint8))
  writer.close()
  got = scalars(writer.logdir)
  for key, tag in record_writers.RECORD_TAGS.items():
    assert got[tag] == [(10, pytest.approx(record(10)[key]))], tag
  assert got["chunk/train_loss"] == [(5, pytest.approx(0.2)), (10, pytest.approx(0.1))]
  acc = event_accumulator.EventAccumulator(writer.logdir)
  acc.Reload()
  assert acc.Tags()["images"] == ["test/mistakes"]


def test_events_are_in_the_file_as_soon_as_written(tmp_path):
  writer = record_writers.TensorBoardWriter(str(tmp_path))
  writer.write_record(record(10))  # No flush, no close: as when the process is killed next.
  assert scalars(writer.logdir)["test/loss"] == [(10, pytest.approx(record(10)["test_loss"]))]
  writer.close()


def test_a_resumed_run_leaves_no_duplicated_or_out_of_order_points(tmp_path):
  first = record_writers.TensorBoardWriter(str(tmp_path))
  for step in (10, 20, 30, 40):
    first.write_chunk(step, 10, chunk(1.0 / step))
    first.write_record(record(step))
  # Killed here: steps 30 and 40 come again after resuming from step 20.
  (path,) = [os.path.join(first.logdir, f) for f in os.listdir(first.logdir)]
  with open(path, "ab") as f:
    f.write(b"\x07\x00\x00")  # And the last record was cut short.

  resumed = record_writers.TensorBoardWriter(str(tmp_path))
  resumed.truncate(20)
  for step in (30, 40, 50):
    resumed.write_chunk(step, 10, chunk(1.0 / step))
    resumed.write_record(record(step))
  resumed.close()
  got = scalars(resumed.logdir)
  assert [s for s, _ in got["chunk/train_loss"]] == [10, 20, 30, 40, 50]
  assert [s for s, _ in got["test/loss"]] == [10, 20, 30, 40, 50]
  assert got["test/loss"][2][1] == pytest.approx(2.0 / 30)


def test_truncate_keeps_a_file_with_nothing_to_drop_byte_identical(tmp_path):
  writer = record_writers.TensorBoardWriter(str(tmp_path))
  writer.write_record(record(10))
  writer.close()
  (path,) = [os.path.join(writer.logdir, f) for f in os.listdir(writer.logdir)]
  before = open(path, "rb").read()
  record_writers.TensorBoardWriter(str(tmp_path)).truncate(10)
  assert open(path, "rb").read() == before
  with pytest.raises(RuntimeError):
    w = record_writers.TensorBoardWriter(str(tmp_path))
    w.write_record(record(20))
    w.truncate(10)


def test_read_event_records_stops_at_damage(tmp_path):
  writer = record_writers.TensorBoardWriter(str(tmp_path))
  for step in (10, 20, 30):
    writer.write_record(record(step))
  writer.close()
  (path,) = [os.path.join(writer.logdir, f) for f in os.listdir(writer.logdir)]
  whole = record_writers.read_event_records(path)
  data = bytearray(open(path, "rb").read())
  data[-3] ^= 0xFF  # Corrupt the last record's payload checksum.
  open(path, "wb").write(bytes(data))
  assert record_writers.read_event_records(path) == whole[:-1]


def test_multi_writer_hands_every_call_to_each_writer(tmp_path):
  calls = []

  class Recorder(record_writers.MetricWriter):
    def __init__(self, name):
      self.name = name

    def write_chunk(self, step, num_steps, scalars):
      calls.append((self.name, "chunk", step))

    def write_record(self, record):
      calls.append((self.name, "record", record["step"]))

  writer = record_writers.MultiWriter([Recorder("a"), Recorder("b")])
  writer.write_chunk(5, 5, chunk(0.5))
  writer.write_record(record(10))
  writer.flush()
  writer.close()
  assert calls == [("a", "chunk", 5), ("b", "chunk", 5), ("a", "record", 10), ("b", "record", 10)]


def test_progress_bar_shows_running_loss_accuracy_and_speed(tmp_path, capsys):
  bar = record_writers.ProgressBar(steps_per_epoch=20, num_epochs=3, disable=False)
  bar.write_chunk(30, 10, chunk(0.25))
  text = capsys.readouterr().err
  assert "epoch 2/3" in text and "loss=0.2500" in text and "acc=50.00%" in text and "img/s=1,000" in text
  bar.write_record(record(40))
  assert bar._bar is None  # noqa: SLF001


def test_log_line_reads_like_the_readme(capsys):
  record_writers.LogWriter(num_epochs=15).write_record(record(20))
  assert capsys.readouterr().out == (
    "epoch 2/15 step 20: train loss 0.0500 acc 50.00% | test loss 0.1000 acc 25.00% | "
    "1.5 s (test 0.5 s), 30.0 s total\n"
  )


def test_log_line_of_a_record_without_eval_s_shows_the_epoch_alone(capsys):
  old = {k: v for k, v in record(20).items() if k != "eval_s"}  # Written before records held eval_s.
  record_writers.LogWriter(num_epochs=15).write_record(old)
  assert capsys.readouterr().out.endswith("| 1.5 s, 30.0 s total\n")


@pytest.mark.parametrize(
  ("accuracies", "ending"),
  [((0.99, 0.9912), " | 2 members: test acc 99.00-99.12%"), ((0.5,), " | 1 member: test acc 50.00%")],
)
def test_log_line_of_an_ensemble_ends_with_its_members(capsys, accuracies, ending):
  members = [{"member": i, "test_accuracy": a} for i, a in enumerate(accuracies)]
  record_writers.LogWriter(num_epochs=15).write_record(record(20, members=members))
  assert capsys.readouterr().out.endswith(", 30.0 s total" + ending + "\n")


def test_only_the_first_process_writes(tmp_path):
  writer = record_writers.create_default_writer(str(tmp_path), steps_per_epoch=10, num_epochs=1, enabled=False)
  writer.write_record(record(10))
  writer.close()
  assert os.listdir(tmp_path) == []


def test_the_bar_is_cleared_before_the_epoch_log_line(tmp_path):
  writer = record_writers.create_default_writer(str(tmp_path), steps_per_epoch=10, num_epochs=1, show_progress=False)
  kinds = [type(w) for w in writer.writers]
  assert kinds.index(record_writers.ProgressBar) < kinds.index(record_writers.LogWriter)
