import json
import os

import numpy as np
import pytest

from configs import default
from mnist_flax import Predictor, train
from mnist_flax.data import input_pipeline
from mnist_flax.run.record_writers import read_records
from mnist_flax.tools import evaluate, trained_model
from tests.conftest import TINY_OVERRIDES, assert_one_line_error, run_module

PROG = "python -m mnist_flax.tools.evaluate"


def test_json_equals_the_last_record_to_the_last_digit(tiny_run):
  result = run_module("mnist_flax.tools.evaluate", f"--workdir={tiny_run}", "--json")
  assert result.returncode == 0, result.stderr[-3000:]
  got = json.loads(result.stdout)
  last = read_records(tiny_run)[-1]
  assert set(got) == {"step", "test_loss", "test_accuracy", "test_count", "per_class_accuracy", "confusion_matrix"}
  assert got["step"] == last["step"]
  assert (got["test_loss"], got["test_accuracy"], got["test_count"]) == (
    last["test_loss"],
    last["test_accuracy"],
    last["test_count"],
  )
  confusion = np.array(got["confusion_matrix"])
  assert confusion.shape == (10, 10) and confusion.sum() == got["test_count"]
  assert np.trace(confusion) / confusion.sum() == pytest.approx(got["test_accuracy"])
  with np.errstate(invalid="ignore"):
    expected = np.diag(confusion) / confusion.sum(axis=1)
  np.testing.assert_allclose(got["per_class_accuracy"], expected)


def test_an_earlier_step_equals_its_record(tiny_run):
  first = read_records(tiny_run)[0]
  checkpoint = trained_model.load_checkpoint(tiny_run, first["step"])
  data = input_pipeline.load_configured(checkpoint.config.runtime)
  result = evaluate.evaluate_checkpoint(checkpoint, data["test"])
  assert (result["step"], result["test_loss"], result["test_accuracy"]) == (
    first["step"],
    first["test_loss"],
    first["test_accuracy"],
  )
  table = evaluate.format_report(tiny_run, result)
  assert f"test accuracy {100 * first['test_accuracy']:.2f}%" in table
  assert "confusion matrix (rows: true label, columns: predicted label)" in table
  assert len(table.splitlines()) == 4 + 10 + 3 + 10


def test_a_batch_norm_run_evaluates_and_predicts_with_its_running_statistics(mock_data_dir, tmp_path):
  config = default.get_config()
  config.update_from_flattened_dict({**TINY_OVERRIDES, "runtime.data_dir": mock_data_dir, "model.batch_norm": True})
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  last = read_records(workdir)[-1]
  checkpoint = trained_model.load_checkpoint(workdir)
  assert set(checkpoint.state.batch_stats) == {"BatchNorm_0", "BatchNorm_1"}
  test = input_pipeline.load_configured(checkpoint.config.runtime)["test"]
  result = evaluate.evaluate_checkpoint(checkpoint, test)
  assert (result["test_loss"], result["test_accuracy"]) == (last["test_loss"], last["test_accuracy"])
  predicted = Predictor(checkpoint)(test["image"]).argmax(axis=1)
  assert np.mean(predicted == test["label"]) == pytest.approx(last["test_accuracy"], abs=1e-6)


def test_prints_readable_tables(tiny_run):
  result = run_module("mnist_flax.tools.evaluate", f"--workdir={tiny_run}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "class   images   correct   accuracy" in result.stdout
  assert "true\\pred" in result.stdout


@pytest.mark.parametrize(
  "args, message",
  [
    (["--workdir={missing}"], "is not a folder"),
    (["--workdir={run}", "--step=7"], "no checkpoint at step 7"),
    (["--workdir={run}", "extra"], "unexpected arguments: extra"),
    ([], "--workdir"),
  ],
)
def test_bad_arguments_are_one_line_errors(tiny_run, tmp_path, args, message):
  args = [a.format(run=tiny_run, missing=os.path.join(tmp_path, "missing")) for a in args]
  assert_one_line_error(run_module("mnist_flax.tools.evaluate", *args), PROG, message)


def test_an_ensemble_reports_each_member_and_the_ensemble(tiny_ensemble_run):
  result = run_module("mnist_flax.tools.evaluate", f"--workdir={tiny_ensemble_run}", "--json")
  assert result.returncode == 0, result.stderr[-3000:]
  got = json.loads(result.stdout)
  last = read_records(tiny_ensemble_run)[-1]
  assert got["test_accuracy"] == last["test_accuracy"] and got["test_loss"] == last["test_loss"]
  assert [(m["member"], m["test_accuracy"], m["test_loss"]) for m in got["members"]] == [
    (m["member"], m["test_accuracy"], m["test_loss"]) for m in last["members"]
  ]
  tables = run_module("mnist_flax.tools.evaluate", f"--workdir={tiny_ensemble_run}")
  assert "(the ensemble of 2 members)" in tables.stdout and "member 1: test loss" in tables.stdout
