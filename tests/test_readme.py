"""README's own code: the NNX network through `train_step` in a loop of one's own, and a config that trains it."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY_OVERRIDES, run_module


def python_blocks() -> list[str]:
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    return re.findall(r"```python\n(.*?)```", f.read(), flags=re.DOTALL)


@pytest.fixture
def readme_files(tmp_path):
  """README's blocks that open with `# NAME.py`, written as those files in a fresh folder."""
  written = {}
  for block in python_blocks():
    name = re.match(r"# (\w+\.py)\n", block)
    if name:
      (tmp_path / name.group(1)).write_text(block)
      written[name.group(1)] = block
  assert {"my_net.py", "my_config.py"} <= set(written)
  return tmp_path


def run_python(args, cwd):
  env = {**os.environ, "PYTHONPATH": ROOT}
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_nnx_network_trains_in_a_loop_of_ones_own(readme_files):
  (loop,) = [b for b in python_blocks() if "from my_net import Net" in b]
  script = loop + "\nassert type(trained).__name__ == 'Net' and int(state.step) == 1 and metrics['loss'] > 0\n"
  result = run_python(["-c", script], cwd=readme_files)
  assert result.returncode == 0, result.stderr[-3000:]


def test_the_config_trains_the_network_with_main_and_evaluate_reads_it(readme_files, mock_data_dir):
  runtime = {k: v for k, v in TINY_OVERRIDES.items() if not k.startswith("model.")}
  flags = [f"--config.{k}={v}" for k, v in {**runtime, "num_epochs": 1, "runtime.data_dir": mock_data_dir}.items()]
  workdir = readme_files / "run"
  result = run_python(
    [os.path.join(ROOT, "main.py"), "--config=my_config.py", *flags, f"--workdir={workdir}"], readme_files
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Net Summary" in result.stdout
  (record,) = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert json.loads((workdir / "config.json").read_text())["model"] == {
    "factory": "my_net:Net",
    "width": 512,
    "dropout_rate": 0.2,
  }
  evaluated = run_module("mnist_flax.tools.evaluate", f"--workdir={workdir}", "--json", cwd=str(readme_files))
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert json.loads(evaluated.stdout)["test_accuracy"] == record["test_accuracy"]
