import subprocess
import sys

from tests.conftest import ROOT, assert_one_line_error

PROGRAM = """
import sys
from mnist_flax import cli
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
