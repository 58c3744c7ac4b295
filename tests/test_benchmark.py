import json

import pytest

from mnist_flax.run import backend, chunks
from mnist_flax.tools import benchmark
from tests.conftest import MOCK_EXAMPLES, assert_one_line_error, run_module, tiny_flags


@pytest.fixture(scope="module")
def result(mock_data_dir):
  from configs import default
  from tests.conftest import TINY_OVERRIDES

  config = default.get_config()
  config.update_from_flattened_dict({**TINY_OVERRIDES, "runtime.data_dir": mock_data_dir})
  return benchmark.run(config, repeats=2, target=0.05)


def test_the_figures_are_measured_and_consistent(result, tiny_config):
  assert result["steps_per_epoch"] == MOCK_EXAMPLES // tiny_config.batch_size
  assert result["steps_per_chunk"] == tiny_config.runtime.steps_per_dispatch
  for key in ("compile_s", "step_s", "eval_s", "flops_per_step", "matmul_peak_flop_s"):
    assert result[key] > 0, key
  assert result["epoch_s"] == pytest.approx(result["step_s"] * result["steps_per_epoch"])
  assert result["images_per_s"] == pytest.approx(tiny_config.batch_size / result["step_s"])
  assert result["fraction_of_peak"] == pytest.approx(result["achieved_flop_s"] / result["matmul_peak_flop_s"])


def test_a_network_named_by_the_config_is_benchmarked_as_written(tiny_nnx_config, mock_data_dir):
  tiny_nnx_config.runtime.data_dir = mock_data_dir
  result = benchmark.run(tiny_nnx_config, repeats=1)
  assert result["step_s"] > 0 and result["flops_per_step"] > 0 and result["eval_s"] > 0


@pytest.mark.parametrize("scan", ["rolled", "unrolled"])
def test_flops_per_step_are_those_of_an_unrolled_chunk_over_its_length(tiny_config, mock_data_dir, scan):
  from mnist_flax.data import input_pipeline

  tiny_config.runtime.data_dir, tiny_config.runtime.scan = mock_data_dir, scan
  setup = benchmark._Setup(tiny_config, input_pipeline.load_mnist(mock_data_dir))  # noqa: SLF001
  tiny_config.runtime.scan = "unrolled"
  chunk = chunks.config_train_chunk(tiny_config, backend.choose(tiny_config), setup.chunk, setup.mesh)
  unrolled = chunk.lower(*setup.fresh(), *setup.chunk_args(setup.order(0), 0)).compile()
  assert setup.step_flops() == pytest.approx(benchmark.compiled_flops(unrolled) / setup.chunk, rel=0.05)


def test_time_to_a_target_accuracy(result):
  assert result["target_reached"] and result["target_epochs"] == 1 and result["target_accuracy"] >= 0.05
  assert result["target_s"] > 0


def test_time_to_accuracy_stops_at_the_first_epoch_the_training_loop_reaches_it(tiny_config, mock_data_dir, tiny_run):
  """The same training as main.py's loop: its epochs' test accuracies decide where the clock stops."""
  from mnist_flax.data import input_pipeline

  with open(f"{tiny_run}/metrics.jsonl") as f:
    accuracies = [json.loads(line)["test_accuracy"] for line in f]
  assert len(accuracies) == tiny_config.num_epochs == 2
  tiny_config.runtime.data_dir = mock_data_dir
  data = input_pipeline.load_mnist(mock_data_dir)
  setup = benchmark._Setup(tiny_config, data)  # noqa: SLF001
  evaluator = backend.evaluator(tiny_config, setup.choices, data["test"], setup.mesh)
  cases = [(accuracies[0], True, 1, accuracies[0]), (max(accuracies) + 1e-3, False, 2, accuracies[1])]
  if accuracies[1] > accuracies[0]:
    cases.append((accuracies[1], True, 2, accuracies[1]))
  for target, reached, epochs, accuracy in cases:
    got = benchmark.time_to_accuracy(setup, evaluator, target)
    assert (got["target_reached"], got["target_epochs"]) == (reached, epochs), target
    assert got["target_accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_the_table_names_every_figure(result):
  text = benchmark.table(result)
  assert "compile: train chunk" in text and "fraction of peak" in text and "time to 5.00% test accuracy" in text


def test_the_command_prints_the_table_and_writes_json(mock_data_dir, tmp_path):
  out = tmp_path / "bench.json"
  flags = [f"--config.{f[len('--config.') :]}" for f in tiny_flags(data_dir=mock_data_dir)]
  result = run_module(
    "mnist_flax.tools.benchmark", "--config=configs/default.py", *flags, "--repeats=1", f"--json={out}"
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "images per second" in result.stdout
  assert json.loads(out.read_text())["steps_per_chunk"] == 3


@pytest.mark.parametrize(
  "args, message",
  [
    ([], "--config is required"),
    (["--config=configs/default.py", "--target=1.5"], "--target=1.5 must be a test accuracy in (0, 1]"),
    (["--config=configs/default.py", "--config.batch_size=0"], "config.batch_size must be a positive integer"),
    (["--config=configs/default.py", "--repeats=0"], "--repeats=0"),
  ],
  ids=["no config", "target above 1", "bad field", "no repeats"],
)
def test_bad_arguments_are_one_line(args, message):
  assert_one_line_error(
    run_module("mnist_flax.tools.benchmark", *args), "python -m mnist_flax.tools.benchmark", message
  )
