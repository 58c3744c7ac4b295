import os

from mnist_flax.tools import plots
from tests.conftest import assert_one_line_error, run_module

PROG = "python -m mnist_flax.tools.report"


def test_a_finished_run_has_its_plots_and_report_rewrites_them(tiny_run):
  folder = os.path.join(tiny_run, "plots")
  assert sorted(os.listdir(folder)) == sorted(plots.FILES.values())
  before = {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}
  for name in before:
    os.utime(os.path.join(folder, name), ns=(0, 0))
  result = run_module("mnist_flax.tools.report", f"--workdir={tiny_run}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "test accuracy" in result.stdout
  for name in plots.FILES.values():
    path = os.path.join(folder, name)
    assert path in result.stdout
    assert os.stat(path).st_mtime_ns > 0
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(folder)) == sorted(plots.FILES.values())


def test_an_unwritable_plots_folder_is_a_one_line_error(tiny_run, tmp_path):
  import shutil

  workdir = tmp_path / "run"
  shutil.copytree(tiny_run, workdir)
  shutil.rmtree(workdir / "plots")
  (workdir / "plots").write_text("a file where the folder should be")
  result = run_module("mnist_flax.tools.report", f"--workdir={workdir}")
  assert_one_line_error(result, PROG, "cannot write the plots")
  assert (workdir / "plots").read_text() == "a file where the folder should be"
