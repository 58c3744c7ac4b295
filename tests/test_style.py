import shutil
import subprocess

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(command):
  ruff = shutil.which("ruff")
  if ruff is None:
    pytest.skip("ruff is not installed (it comes with the test extra)")
  result = subprocess.run([ruff, *command], cwd=ROOT, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
