import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mnist_flax import Predictor, UsageError
from mnist_flax.run.record_writers import read_records
from mnist_flax.tools import trained_model


def test_predictor_compiles_once_for_any_batch_size(tiny_run):
  predictor = Predictor.from_workdir(tiny_run, batch_size=8)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (21, 28, 28), dtype=np.uint8)
  probabilities = predictor(images)
  assert probabilities.shape == (21, 10) and probabilities.dtype == np.float32
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  for n in (1, 3, 8, 9):
    np.testing.assert_allclose(predictor(images[:n]), probabilities[:n], rtol=1e-5, atol=1e-6)
  assert predictor.traces == 1
  assert predictor(images[:0]).shape == (0, 10)


def test_input_layouts_and_types_agree(tiny_run):
  predictor = Predictor.from_workdir(tiny_run)
  images = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
  expected = predictor(images)
  np.testing.assert_array_equal(predictor(images[..., None]), expected)
  np.testing.assert_array_equal(predictor(images.astype(np.int64)), expected)
  np.testing.assert_allclose(predictor(images / 255.0), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
  "images, message",
  [
    (np.zeros((2, 28, 27), np.uint8), "shaped"),
    (np.zeros((28, 28), np.uint8), "shaped"),
    (np.full((1, 28, 28), 300, np.int32), "0..255"),
    (np.full((1, 28, 28), 1.5, np.float32), "[0, 1]"),
    (np.full((1, 28, 28), np.nan, np.float32), "[0, 1]"),
    (np.zeros((1, 28, 28), bool), "uint8 or float"),
  ],
)
def test_bad_images_are_refused(images, message):
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
    trained_model.as_model_input(images)


def test_latest_or_given_step(tiny_run):
  steps = sorted(int(d) for d in os.listdir(os.path.join(tiny_run, "checkpoints")) if d.isdigit())
  assert trained_model.load_checkpoint(tiny_run).step == steps[-1]
  assert trained_model.load_checkpoint(tiny_run, steps[0]).step == steps[0]
  assert read_records(tiny_run)[-1]["step"] == steps[-1]


def test_reading_a_workdir_changes_nothing_in_it(tiny_run, tmp_path):
  pending = os.path.join(tiny_run, "checkpoints", "99.orbax-checkpoint-tmp-1")  # A save still being written.
  os.makedirs(pending)
  before = sorted(os.walk(tiny_run))
  Predictor.from_workdir(tiny_run)
  assert sorted(os.walk(tiny_run)) == before
  os.rmdir(pending)


def test_unusable_workdirs_are_one_line_errors(tiny_run, tmp_path):
  cases = {
    "": "--workdir is empty",
    str(tmp_path / "missing"): "is not a folder",
    str(tmp_path): "config.json is missing",
  }
  for workdir, message in cases.items():
    with pytest.raises(UsageError, match=message):
      trained_model.load_checkpoint(workdir)
  (tmp_path / "config.json").write_text("[1, 2]")
  with pytest.raises(UsageError, match="not a run config"):
    trained_model.load_checkpoint(str(tmp_path))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(UsageError, match="cannot read"):
    trained_model.load_checkpoint(str(tmp_path))
  (tmp_path / "config.json").write_text('{"model": {}, "batch_size": 128}')
  with pytest.raises(UsageError, match="no runtime section: the run was written by an older mnist-flax"):
    trained_model.load_checkpoint(str(tmp_path))
  with open(os.path.join(tiny_run, "config.json")) as f:
    saved = json.load(f)
  (tmp_path / "config.json").write_text(json.dumps({**saved, "model": {**saved["model"], "factory": "my_net:Net"}}))
  with pytest.raises(
    UsageError, match="config.json: config.model.factory 'my_net:Net': cannot import my_net: .* PYTHONPATH"
  ):
    trained_model.load_checkpoint(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(UsageError, match="no checkpoint"):
    trained_model.load_checkpoint(str(tmp_path))
  with pytest.raises(UsageError, match="no checkpoint at step 7 .* there are"):
    trained_model.load_checkpoint(tiny_run, 7)


def test_a_checkpoint_of_another_model_is_a_one_line_error(tiny_run, tmp_path):
  import shutil

  other = tmp_path / "other"
  shutil.copytree(tiny_run, other)
  config = json.loads((other / "config.json").read_text())
  config["model"]["dense_features"] = [64]
  (other / "config.json").write_text(json.dumps(config))
  with pytest.raises(UsageError, match="none of the .* checkpoints .* can be restored"):
    trained_model.load_checkpoint(str(other))
  with pytest.raises(UsageError, match="cannot restore the checkpoint"):
    trained_model.load_checkpoint(str(other), trained_model.load_checkpoint(tiny_run).step)


def test_an_ensemble_predicts_the_mean_of_its_members(tiny_ensemble_run, mock_data_dir):
  predictor = Predictor.from_workdir(tiny_ensemble_run)
  images = np.random.default_rng(2).integers(0, 256, (7, 28, 28), dtype=np.uint8)
  state = predictor.checkpoint.state
  x = images[..., None] / np.float32(255)
  members = [
    jax.nn.softmax(state.apply_fn({"params": jax.tree.map(lambda p, i=i: p[i], state.params)}, x, train=False))
    for i in range(2)
  ]
  np.testing.assert_allclose(predictor(images), np.mean(members, axis=0), rtol=1e-5, atol=1e-6)


def test_a_trained_model_loads_without_the_training_loop():
  code = "import sys, mnist_flax.tools.trained_model; print('mnist_flax.train' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert out.strip() == "False"
