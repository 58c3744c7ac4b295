import json
import os

import jax
import numpy as np
import pytest

from mnist_flax import train
from mnist_flax.run import chunks, record_writers, snapshot, stopping
from tests.conftest import MOCK_EXAMPLES, TINY_NNX_MODEL, tensorboard_scalars


def read_records(workdir):
  with open(os.path.join(workdir, record_writers.METRICS_FILE)) as f:
    return [json.loads(line) for line in f]


def without_times(records):
  return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in records]


def test_train_and_evaluate_on_mock_data_records_checkpoints_and_resumes(tiny_config, mock_data_dir, tmp_path):
  tiny_config.runtime.data_dir = mock_data_dir
  workdir = str(tmp_path / "run")
  final = train.train_and_evaluate(tiny_config, workdir)

  records = read_records(workdir)
  steps_per_epoch = MOCK_EXAMPLES // tiny_config.batch_size
  assert [r["epoch"] for r in records] == [1, 2]
  assert [r["step"] for r in records] == [steps_per_epoch, 2 * steps_per_epoch]
  for r in records:
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "elapsed_s"} <= set(r)
    assert 0 <= r["test_accuracy"] <= 1 and r["test_count"] == MOCK_EXAMPLES
    assert 0 < r["eval_s"] < r["epoch_s"] <= r["elapsed_s"]  # The evaluation is part of the epoch.
  assert final == records[-1]
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert saved[-1] == 2 * steps_per_epoch and len(saved) <= tiny_config.runtime.keep_checkpoints
  assert json.load(open(os.path.join(workdir, "config.json")))["batch_size"] == tiny_config.batch_size

  again = train.train_and_evaluate(tiny_config, workdir)  # Already complete: nothing changes.
  assert again == final and read_records(workdir) == records


SWEEP = {"ensemble_size": 2, "member_learning_rates": (1e-3, 1e-2)}


@pytest.mark.parametrize(
  "members",
  [
    {},
    SWEEP,
    {"model.batch_norm": True, "ensemble_size": 2},
    {"ensemble_size": 2, "member_batches": "own"},
    {**TINY_NNX_MODEL, "model.batch_norm": True},
    {**TINY_NNX_MODEL, **SWEEP},
  ],
  ids=["single", "sweep", "batch_norm", "own_batches", "nnx_batch_norm", "nnx_sweep"],
)
def test_interrupted_run_resumes_to_identical_results(
  tiny_config, tiny_nnx_config, mock_data_dir, tmp_path, monkeypatch, members
):
  if "model.dense_features" in members:  # configs/nnx_cnn.py: an NNX network named by its config.
    tiny_config = tiny_nnx_config
  tiny_config.runtime.data_dir = mock_data_dir
  tiny_config.update_from_flattened_dict(members)
  reference = str(tmp_path / "reference")
  train.train_and_evaluate(tiny_config, reference)

  resumed = str(tmp_path / "resumed")
  real_save = train.checkpoints.save
  calls = []

  def save_then_crash(manager, step, item, progress):
    real_save(manager, step, item, progress)
    calls.append(step)
    if len(calls) == 2:
      manager.wait_until_finished()
      raise RuntimeError("simulated crash")

  monkeypatch.setattr(train.checkpoints, "save", save_then_crash)
  with pytest.raises(RuntimeError, match="simulated crash"):
    train.train_and_evaluate(tiny_config, resumed)
  monkeypatch.setattr(train.checkpoints, "save", real_save)
  assert calls[-1] < 2 * (MOCK_EXAMPLES // tiny_config.batch_size)
  train.train_and_evaluate(tiny_config, resumed)

  assert without_times(read_records(resumed)) == without_times(read_records(reference))
  # TensorBoard: the same points, none repeated or out of order (times and speeds aside).
  timeless = [record_writers.RECORD_TAGS[k] for k in ("elapsed_s", "epoch_s", "eval_s")] + ["chunk/images_per_s"]

  def scalars(workdir):
    found = tensorboard_scalars(os.path.join(workdir, record_writers.TENSORBOARD_DIR))
    return {tag: points for tag, points in found.items() if tag not in timeless}

  expected = scalars(reference)
  assert {"train/loss", "test/accuracy", "train/learning_rate", "chunk/train_loss"} <= set(expected)
  assert scalars(resumed) == expected
  if SWEEP.items() <= members.items():  # A record and TensorBoard curves per member, each at its own learning rate.
    last = read_records(reference)[-1]
    assert [m["member"] for m in last["members"]] == [0, 1]
    assert last["members"][1]["learning_rate"] == pytest.approx(10 * last["members"][0]["learning_rate"])
    assert {"member_0/test/accuracy", "member_1/train/learning_rate"} <= set(expected)


def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_redone_exactly(
  tiny_config, mock_data_dir, tiny_run, tmp_path
):
  import shutil

  tiny_config.runtime.data_dir = mock_data_dir
  reference = tiny_run  # The same config, run once per session.
  damaged = tmp_path / "damaged"
  shutil.copytree(reference, damaged)
  last = max(int(d) for d in os.listdir(damaged / "checkpoints") if d.isdigit())
  data = [os.path.join(d, f) for d, _, names in os.walk(damaged / "checkpoints" / str(last) / "train") for f in names]
  with open(max(data, key=os.path.getsize), "r+b") as f:
    f.truncate(10)

  train.train_and_evaluate(tiny_config, str(damaged))
  assert without_times(read_records(damaged)) == without_times(read_records(reference))
  assert [d.split("-")[0] for d in os.listdir(damaged / "damaged_checkpoints")] == [str(last)]


def test_a_final_record_cut_short_is_rebuilt_from_the_checkpoint(tiny_config, mock_data_dir, tiny_run, tmp_path):
  import shutil

  tiny_config.runtime.data_dir = mock_data_dir
  cut = tmp_path / "cut"
  shutil.copytree(tiny_run, cut)
  text = (cut / "metrics.jsonl").read_text()
  (cut / "metrics.jsonl").write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])

  train.train_and_evaluate(tiny_config, str(cut))
  rebuilt, original = read_records(cut), read_records(tiny_run)
  assert rebuilt[-1]["epoch_s"] is None
  assert without_times(rebuilt) == without_times(original)
  assert (cut / "metrics.jsonl").read_text().count("\n") == len(original)


def test_extending_a_finished_run_announces_the_redefined_schedule(tiny_config, mock_data_dir, tmp_path, caplog):
  tiny_config.runtime.data_dir = mock_data_dir
  tiny_config.num_epochs = 1
  train.train_and_evaluate(tiny_config, str(tmp_path))
  tiny_config.num_epochs = 2
  with caplog.at_level("WARNING"):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  (message,) = [r.getMessage() for r in caplog.records if "num_epochs changed" in r.getMessage()]
  assert "from 1 to 2" in message and f"from step {MOCK_EXAMPLES // tiny_config.batch_size} on" in message
  assert [r["epoch"] for r in read_records(tmp_path)] == [1, 2]


@pytest.fixture
def made_chunks(monkeypatch) -> list:
  """The `(args, compiled function)` of every `chunks.make_train_chunk` call made during the test."""
  made, real = [], chunks.make_train_chunk

  def spy(*args):
    made.append((args, real(*args)))
    return made[-1][1]

  monkeypatch.setattr(chunks, "make_train_chunk", spy)
  return made


def test_the_rolled_accelerator_path_runs_on_cpu_compiled_once(
  tiny_config, mock_data_dir, tiny_run, tmp_path, made_chunks
):
  tiny_config.runtime.data_dir = mock_data_dir
  tiny_config.runtime.scan = "rolled"
  tiny_config.runtime.steps_per_dispatch = MOCK_EXAMPLES // tiny_config.batch_size  # The whole epoch, as on GPU/TPU.
  made = made_chunks
  rolled = train.train_and_evaluate(tiny_config, str(tmp_path / "rolled"))
  ((args, fn),) = made
  assert args[0] == tiny_config.runtime.steps_per_dispatch and args[3] is False  # One rolled scan over the epoch.
  assert fn._cache_size() == 1  # noqa: SLF001 - compiled once for both epochs.

  chunked = read_records(tiny_run)[-1]  # The same config in rolled chunks of 3 steps.
  assert rolled["train_loss"] == pytest.approx(chunked["train_loss"], rel=1e-4)
  assert rolled["test_loss"] == pytest.approx(chunked["test_loss"], rel=1e-4)


def test_unrolled_chunks_train_as_rolled_ones(tiny_config, mock_data_dir, tiny_run, tmp_path, made_chunks):
  tiny_config.runtime.data_dir, tiny_config.runtime.scan = mock_data_dir, "unrolled"
  unrolled = train.train_and_evaluate(tiny_config, str(tmp_path / "unrolled"))
  assert made_chunks and all(args[3] is True for args, _ in made_chunks)
  rolled = read_records(tiny_run)[-1]
  assert unrolled["train_loss"] == pytest.approx(rolled["train_loss"], rel=1e-4)
  assert unrolled["test_loss"] == pytest.approx(rolled["test_loss"], rel=1e-4)


def test_nan_loss_stops_with_a_clear_error(tiny_config, mock_data_dir, tmp_path):
  tiny_config.runtime.data_dir = mock_data_dir
  tiny_config.learning_rate = 1e30
  with pytest.raises(stopping.Diverged, match="lower config.learning_rate"):
    train.train_and_evaluate(tiny_config, str(tmp_path / "run"))


def test_a_finite_blow_up_stops_before_any_record_or_later_checkpoint(tiny_config, mock_data_dir, tmp_path):
  tiny_config.runtime.data_dir = mock_data_dir
  tiny_config.learning_rate = 1e10
  workdir = tmp_path / "run"
  with pytest.raises(stopping.Diverged, match="lower config.learning_rate") as e:
    train.train_and_evaluate(tiny_config, str(workdir))
  step = int(str(e.value).split(" at step ")[1].split()[0])
  assert not (workdir / record_writers.METRICS_FILE).exists()
  saved = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert all(s < step for s in saved)


def test_an_epoch_at_chance_stops_after_its_record_keeping_earlier_checkpoints(tiny_config, mock_data_dir, tmp_path):
  tiny_config.runtime.data_dir = mock_data_dir  # Random labels: the test accuracy stays near 10 %.
  tiny_config.runtime.stop_at_chance = True
  workdir = tmp_path / "run"
  with pytest.raises(stopping.Diverged, match="after epoch 1, no better than guessing") as e:
    train.train_and_evaluate(tiny_config, str(workdir))
  assert "config.runtime.stop_at_chance=False" in str(e.value)
  records = record_writers.read_records(str(workdir))
  assert [r["epoch"] for r in records] == [1] and records[0]["test_accuracy"] < stopping.CHANCE_ACCURACY
  spe = records[0]["step"]
  assert all(int(d) < spe for d in os.listdir(workdir / "checkpoints") if d.isdigit())


# What the loop feeds: training images that carry their example's index in two pixels, recorded by
# a host callback in every step the compiled chunks run.
FED_EXAMPLES, FED_BATCH, FED_TEST = 96, 16, 48  # 6 steps an epoch, in chunks of 4 and 2.


def identified_data_dir(tmp_path) -> str:
  """A data dir whose cached MNIST arrays have training image i holding i in pixels (0, 0) and (0, 1)."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (FED_EXAMPLES, 28, 28, 1), dtype=np.uint8)
  images[:, 0, 0, 0], images[:, 0, 1, 0] = np.arange(FED_EXAMPLES) % 256, np.arange(FED_EXAMPLES) // 256
  splits = {
    "train": {"image": images, "label": rng.integers(0, 10, FED_EXAMPLES).astype(np.int32)},
    "test": {"image": images[:FED_TEST], "label": rng.integers(0, 10, FED_TEST).astype(np.int32)},
  }
  data_dir = str(tmp_path / "identified")
  train.input_pipeline._write_cache(train.input_pipeline.cache_path(data_dir), splits)  # noqa: SLF001
  return data_dir


@pytest.fixture
def fed(monkeypatch):
  """The example indices of every step's batch, in step order ([B], or [members, B] for own batches)."""
  seen = []

  def record(images):
    pixels = np.rint(np.asarray(images)[..., 0, :2, 0] * 255).astype(int)
    seen.append(pixels[..., 0] + 256 * pixels[..., 1])

  in_members = []  # Set while an ensemble step is traced: its members' own steps are not recorded again.

  def recorded(step, members):
    def wrapper(state, batch, *args, **kwargs):
      if not in_members:
        jax.debug.callback(record, batch["image"], ordered=True)
      if not members:
        return step(state, batch, *args, **kwargs)
      in_members.append(True)
      try:
        return step(state, batch, *args, **kwargs)
      finally:
        in_members.pop()

    return wrapper

  monkeypatch.setattr(chunks.steps, "train_step", recorded(chunks.steps.train_step, False))
  monkeypatch.setattr(chunks.steps, "ensemble_train_step", recorded(chunks.steps.ensemble_train_step, True))
  return seen


def fed_config(tiny_config, data_dir, **changes):
  tiny_config.update_from_flattened_dict(
    {
      "runtime.data_dir": data_dir,
      "batch_size": FED_BATCH,
      "runtime.eval_batch_size": FED_TEST,
      "num_epochs": 2,
      "runtime.steps_per_dispatch": 4,
      "runtime.checkpoint_every_steps": 5,
      "augment_max_shift": 0,  # Shifts would move the pixels that name the example.
      **changes,
    }
  )
  return tiny_config


@pytest.mark.parametrize("members", [{}, {"ensemble_size": 2, "member_batches": "own"}], ids=["single", "own_batches"])
def test_each_epoch_feeds_every_example_once_in_its_own_order_also_after_a_resume(
  tiny_config, tmp_path, fed, monkeypatch, members
):
  config = fed_config(tiny_config, identified_data_dir(tmp_path), **members)
  spe = FED_EXAMPLES // FED_BATCH
  train.train_and_evaluate(config, str(tmp_path / "whole"))
  jax.effects_barrier()
  whole = np.stack(fed)  # [steps, B] or [steps, members, B]
  assert len(whole) == 2 * spe
  keys = snapshot.data_keys(config)
  for epoch in range(2):
    fed_epoch = np.moveaxis(whole[epoch * spe : (epoch + 1) * spe], 0, -2)  # [..., steps, B]
    fed_epoch = fed_epoch.reshape(*fed_epoch.shape[:-2], FED_EXAMPLES)
    for order in fed_epoch.reshape(-1, FED_EXAMPLES):
      assert sorted(order.tolist()) == list(range(FED_EXAMPLES))  # Every example once.
    np.testing.assert_array_equal(fed_epoch, chunks.epoch_order(keys, epoch, FED_EXAMPLES))
  first, second = whole[:spe], whole[spe:]
  assert not np.array_equal(first, second)  # Each epoch its own order.
  if members:
    assert not np.array_equal(whole[:, 0], whole[:, 1])  # Each member its own order.

  fed.clear()
  real_save, saves = train.checkpoints.save, []

  def save_then_crash(manager, step, item, progress):
    real_save(manager, step, item, progress)
    saves.append(step)
    if len(saves) == 2:  # At step 10, in the second epoch.
      manager.wait_until_finished()
      raise RuntimeError("simulated crash")

  monkeypatch.setattr(train.checkpoints, "save", save_then_crash)
  with pytest.raises(RuntimeError, match="simulated crash"):
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
  monkeypatch.setattr(train.checkpoints, "save", real_save)
  assert saves == [6, 10]
  jax.effects_barrier()
  fed_before = np.stack(fed)
  assert len(fed_before) == 10
  fed.clear()
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  jax.effects_barrier()
  np.testing.assert_array_equal(np.concatenate([fed_before, np.stack(fed)]), whole)


def test_each_record_holds_the_learning_rate_of_its_epochs_last_step(tiny_run):
  import ml_collections

  with open(os.path.join(tiny_run, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  schedule = train.train_state.create_schedule(config, MOCK_EXAMPLES // config.batch_size)
  records = read_records(tiny_run)
  assert len(records) == config.num_epochs
  for record in records:
    assert record["learning_rate"] == pytest.approx(float(schedule(record["step"] - 1)), rel=1e-6)
  curve = tensorboard_scalars(os.path.join(tiny_run, record_writers.TENSORBOARD_DIR))["train/learning_rate"]
  assert curve == [(r["step"], pytest.approx(r["learning_rate"], rel=1e-6)) for r in records]
