import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("command", ["evaluate", "predict", "report"])
def test_ctrl_c_while_a_command_loads_is_one_line_and_exit_130(command, tmp_path):
  proc = subprocess.Popen(
    [sys.executable, "-m", f"mnist_flax.tools.{command}", f"--workdir={tmp_path}", "x.png"],
    cwd=tmp_path,
    env={**os.environ, "PYTHONPATH": ROOT},
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  time.sleep(0.5)  # Still importing jax.
  proc.send_signal(signal.SIGINT)
  stdout, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130
  assert stderr.strip() == f"python -m mnist_flax.tools.{command}: interrupted" and not stdout
  assert os.listdir(tmp_path) == []


def test_importing_the_package_loads_no_heavy_library():
  code = "import sys, mnist_flax; print(sorted(m for m in ('jax', 'flax', 'numpy') if m in sys.modules))"
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
  assert result.stdout.strip() == "[]"


def test_the_exported_names_load_on_first_use():
  import mnist_flax

  assert mnist_flax.train_step.__module__ == "mnist_flax.core.steps"
  assert set(mnist_flax.__all__) <= set(dir(mnist_flax))
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    mnist_flax.nope  # noqa: B018
