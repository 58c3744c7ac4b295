import subprocess
import sys

import pytest

from tests.conftest import ROOT, assert_one_line_error, run_main, run_module

PROGRAM = """
import sys
from mnist_flax.tools import cli
from mnist_flax.errors import UsageError

def main(argv):
  kind = argv[1]
  if kind == "usage":
    raise UsageError("the input is wrong\\nin two lines")
  if kind == "interrupt":
    raise KeyboardInterrupt
  print("ran", kind)

cli.run(main, "prog")
"""


def run(*args):
  return subprocess.run(
    [sys.executable, "-c", PROGRAM, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
  )


def test_a_usage_error_is_one_line_and_exit_1():
  result = run("usage")
  assert_one_line_error(result, "prog", "the input is wrong in two lines")
  assert result.returncode == 1


def test_an_unknown_flag_is_one_line():
  assert_one_line_error(run("ok", "--no_such_flag=1"), "prog", "no_such_flag")


def test_ctrl_c_is_one_line_and_the_shells_code():
  result = run("interrupt")
  assert result.returncode == 130
  assert result.stderr.strip() == "prog: interrupted"


def test_a_normal_run_exits_0():
  result = run("ok")
  assert result.returncode == 0 and result.stdout == "ran ok\n"


CONFIG_FILES = {
  "raises": ('def get_config():\n  raise ValueError("boom")\n', "get_config() raised ValueError: boom (line 2)"),
  "raises in a helper": (
    'def helper():\n  return {}["x"]\n\ndef get_config():\n  return helper()\n',
    "get_config() raised KeyError: 'x' (line 2, in helper)",
  ),
  "fails to import": (
    "import no_such_module\n",
    "loading it raised ModuleNotFoundError: No module named 'no_such_module'",
  ),
  "syntax": ("def get_config(:\n", "SyntaxError: "),
  "returns a dict": (
    'def get_config():\n  return {"num_epochs": 1}\n',
    "get_config() returned dict, not an ml_collections",
  ),
  "returns None": ("def get_config():\n  pass\n", "get_config() returned None, not an ml_collections.ConfigDict"),
  "lacks fields": (
    "import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict({'num_epochs': 1})\n",
    "the config has no field 'batch_size'",
  ),
}


@pytest.mark.parametrize("command", ["main.py", "mnist_flax.tools.benchmark"])
@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_a_broken_config_file_is_one_line_naming_the_file(case, command, tmp_path):
  text, message = CONFIG_FILES[case]
  config = tmp_path / "broken.py"
  config.write_text(text)
  args = [f"--config={config}", f"--workdir={tmp_path / 'run'}"]
  if command == "main.py":
    result = run_main(*args)
  else:
    result = run_module(command, *args[:1])
  prog = "main.py" if command == "main.py" else "python -m mnist_flax.tools.benchmark"
  where = "" if case == "lacks fields" else f"{config}: "
  assert_one_line_error(result, prog, where + message)
  assert not (tmp_path / "run").exists()


def test_the_traceback_of_a_config_files_error_is_shown_when_asked_for(tmp_path):
  config = tmp_path / "broken.py"
  config.write_text(CONFIG_FILES["raises in a helper"][0])
  quiet = run_main(f"--config={config}", f"--workdir={tmp_path / 'run'}")
  assert "Traceback" not in quiet.stderr and "MNIST_FLAX_TRACEBACK=1 shows the traceback" in quiet.stderr
  loud = run_main(f"--config={config}", f"--workdir={tmp_path / 'run'}", env={"MNIST_FLAX_TRACEBACK": "1"})
  assert loud.returncode == 1
  assert 'in helper\n    return {}["x"]' in loud.stderr
  assert loud.stderr.strip().splitlines()[-1] == f"main.py: error: {config}: {CONFIG_FILES['raises in a helper'][1]}"
