import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from mnist_flax.data import input_pipeline
from tests import conftest
from tests.conftest import EIGHT_DEVICES, ROOT, run_main, tiny_flags

BAD_INPUTS = {
  "zero batch": (["--config.batch_size=0"], "config.batch_size must be a positive integer"),
  "negative epochs": (["--config.num_epochs=-1"], "config.num_epochs must be a positive integer"),
  "zero learning rate": (["--config.learning_rate=0.0"], "config.learning_rate must be a positive finite number"),
  "not a number": (["--config.batch_size=abc"], "--config.batch_size=abc"),
  "unknown key": (["--config.nonexistent=1"], "unknown config field 'nonexistent'"),
  "mistyped key": (["--config.num_epoch=3"], """unknown config field 'num_epoch'; Did you mean "num_epochs" """),
  "config without get_config": ([f"--config={os.path.join(ROOT, 'tests', '__init__.py')}"], "has no get_config()"),
  "kernel too large": (["--config.model.kernel_size=15"], "block 2 of 2 gets 0x0 pixels"),
  "unknown nested key": (["--config.model.width=3"], "unknown config field 'width'"),
  "missing config file": (["--config=configs/missing.py"], "config file configs/missing.py does not exist"),
  "stray argument": (["train"], "unexpected arguments: train"),
  "infinite learning rate": (["--config.learning_rate=inf"], "config.learning_rate must be a positive finite number"),
  "seed beyond 2**63": (["--config.seed=9223372036854775808"], "config.seed must be an integer in [0, 4294967295]"),
  "eval batch of 1e9": (["--config.runtime.eval_batch_size=1000000000"], "exceeds the 10000 test images"),
  "data dir is a file": ([f"--config.runtime.data_dir={os.path.join(ROOT, 'README.md')}"], "README.md is not a folder"),
  "distributed without a coordinator": (["--distributed"], "--distributed: jax.distributed.initialize() failed"),
  "model factory not importable": (
    ["--config.model.factory=no_such_module:Net"],
    "config.model.factory 'no_such_module:Net': cannot import no_such_module: ModuleNotFoundError",
  ),
  "model factory without the config's arguments": (
    ["--config.model.factory=tests.test_networks:five_logits"],
    "five_logits() got an unexpected keyword argument",
  ),
  "NNX model of a bad shape": (
    ["--config=configs/nnx_cnn.py", "--config.model.features=(4, 8, 16)"],
    "config.model.factory 'configs.nnx_cnn:CNN' cannot be built and run on images [2, 28, 28, 1]",
  ),
  "kernels for a model of its own": (
    ["--config=configs/nnx_cnn.py", "--config.runtime.conv_impl=pooled"],
    "config.runtime.conv_impl 'pooled' computes the built-in CNN only",
  ),
}


def assert_one_line_error(result, message):
  conftest.assert_one_line_error(result, "main.py", message)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_stops_in_one_line_before_writing_anything(case, tmp_path):
  args, message = BAD_INPUTS[case]
  workdir = tmp_path / "run"
  assert_one_line_error(run_main(*args, f"--workdir={workdir}"), message)
  assert not workdir.exists()


def test_a_workdir_remembers_its_model(mock_data_dir, tmp_path):
  workdir = tmp_path / "run"
  result = run_main(*tiny_flags(nnx=True, num_epochs=1, data_dir=mock_data_dir), f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  other = run_main(*tiny_flags(num_epochs=1, data_dir=mock_data_dir), f"--workdir={workdir}")
  assert_one_line_error(other, f"workdir {workdir} holds a run with a different config (model)")
  assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before


def test_an_empty_workdir_flag_is_refused():
  assert_one_line_error(run_main("--workdir="), "--workdir is empty")


def test_bad_input_leaves_an_existing_run_untouched(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text('{"step": 1}\n')
  (workdir / "config.json").write_text('{"batch_size": 64}')
  before = {p.name: p.read_bytes() for p in workdir.iterdir()}
  assert_one_line_error(run_main("--config.learning_rate=-1.0", f"--workdir={workdir}"), "learning_rate")
  assert_one_line_error(run_main(f"--workdir={workdir}"), "holds a run with a different config")
  assert {p.name: p.read_bytes() for p in workdir.iterdir()} == before


def test_batch_size_not_divisible_by_devices_is_refused(tmp_path):
  result = run_main(
    "--config.batch_size=100",
    f"--workdir={tmp_path / 'run'}",
    env=EIGHT_DEVICES,
  )
  assert_one_line_error(result, "config.batch_size 100 is not divisible by the 8 devices")


@pytest.mark.skipif(input_pipeline._can_download(), reason="this machine can reach the MNIST download host")
def test_no_data_and_no_network_says_how_to_provide_it(tmp_path):
  result = run_main(
    "--config.runtime.manual_dir=",
    f"--config.runtime.data_dir={tmp_path / 'tfds'}",
    f"--workdir={tmp_path / 'run'}",
    env={"MNIST_MANUAL_DIR": ""},
  )
  assert_one_line_error(result, "MNIST_MANUAL_DIR")
  assert not (tmp_path / "run").exists()


def test_without_tensorflow_an_unprepared_run_names_the_command_that_adds_it(tmp_path):
  """As on Colab's TPU runtime: no TensorFlow, MNIST not yet prepared."""
  manual = tmp_path / "manual"
  manual.mkdir()
  conftest.mock_manual_dir(manual)
  args = [
    f"--config.runtime.manual_dir={manual}",
    f"--config.runtime.data_dir={tmp_path / 'tfds'}",
    f"--workdir={tmp_path / 'run'}",
  ]
  code = (
    "import runpy, sys\n"
    "sys.modules['tensorflow'] = None\n"  # As if it were not installed: find_spec gives None, import fails.
    f"sys.argv = ['main.py', *{args!r}]\n"
    "runpy.run_path('main.py', run_name='__main__')\n"
  )
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
  assert_one_line_error(result, "tfds needs TensorFlow to prepare MNIST")
  assert "-m pip install tensorflow-cpu -c <(" in result.stderr
  assert not (tmp_path / "run").exists() and not (tmp_path / "tfds").exists()


def tiny_args(data_dir, workdir, num_epochs, checkpoint_every_steps=10):
  flags = tiny_flags(
    num_epochs=num_epochs, eval_batch_size=40, steps_per_dispatch=5, checkpoint_every_steps=checkpoint_every_steps
  )
  return (*flags, f"--config.runtime.data_dir={data_dir}", f"--workdir={workdir}")


def test_a_prepared_run_never_imports_tensorflow_and_plots_only_at_the_end(mock_data_dir, tmp_path):
  args = tiny_args(mock_data_dir, tmp_path / "run", num_epochs=1)
  metrics = str(tmp_path / "run" / "metrics.jsonl")
  code = (
    "import atexit, os, runpy, sys\n"
    "late = {}\n"  # Top-level package -> whether the run's record existed when it was first imported.
    "def hook(event, args):\n"
    "  top = args[0].split('.')[0] if event == 'import' else None\n"
    "  if top in ('matplotlib', 'PIL') and top not in late:\n"
    f"    late[top] = os.path.exists({metrics!r})\n"
    "sys.addaudithook(hook)\n"
    "atexit.register(lambda: print('tensorflow:', 'tensorflow' in sys.modules, 'late:', sorted(late.items())))\n"
    f"sys.argv = ['main.py', *{list(args)!r}]\n"
    "runpy.run_path('main.py', run_name='__main__')\n"
  )
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "tensorflow: False late: [('PIL', True), ('matplotlib', True)]" in result.stdout
  assert os.path.exists(metrics)
  assert len(os.listdir(tmp_path / "run" / "plots")) == 5  # See test_report for the files themselves.


def test_sigterm_saves_a_checkpoint_and_a_rerun_finishes(mock_data_dir, tmp_path):
  workdir = tmp_path / "run"
  # No periodic checkpoints (they took 2/3 of this test's time): the only one is SIGTERM's.
  args = tiny_args(mock_data_dir, workdir, num_epochs=200, checkpoint_every_steps=10**6)
  proc = subprocess.Popen(
    [sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT, stderr=subprocess.PIPE, text=True
  )
  deadline = time.time() + 300
  while not (workdir / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.1)
  assert proc.poll() is None, "the run ended before it could be stopped"
  records_before = (workdir / "metrics.jsonl").read_text()
  second = run_main(*args)  # The same workdir while the first run trains: refused at once, nothing touched.
  assert_one_line_error(second, f"workdir {workdir} is in use by pid {proc.pid} on host ")
  assert (workdir / "metrics.jsonl").read_text().startswith(records_before)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM
  last = stderr.strip().splitlines()[-1]
  assert re.fullmatch(r"main\.py: stopped at step \d+ with a checkpoint saved; rerun the same command to resume", last)
  stopped_at = int(re.search(r"step (\d+)", last).group(1))
  assert str(stopped_at) in os.listdir(workdir / "checkpoints")

  result = run_main(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resumed from the checkpoint at step {stopped_at}" in result.stderr
  epochs = [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert epochs == list(range(1, 201))


def test_a_stop_while_plotting_says_so_and_the_next_run_writes_the_plots(mock_data_dir, tmp_path):
  workdir = tmp_path / "run"
  args = tiny_args(mock_data_dir, workdir, num_epochs=1)
  code = (  # SIGTERM to itself when the first plot file is opened: a stop while the plots are drawn.
    "import os, runpy, signal, sys\n"
    "def hook(event, args):\n"
    "  if event == 'open' and isinstance(args[0], str) and '/plots/' in args[0] and not hook.sent:\n"
    "    hook.sent = True\n"
    "    os.kill(os.getpid(), signal.SIGTERM)\n"
    "hook.sent = False\n"
    "sys.addaudithook(hook)\n"
    f"sys.argv = ['main.py', *{list(args)!r}]\n"
    "runpy.run_path('main.py', run_name='__main__')\n"
  )
  stopped = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
  assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
  step = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
  assert stopped.stderr.strip().splitlines()[-1] == (
    f"main.py: training is complete (checkpoint at step {step}) but its plots are not written; "
    "rerun the same command to write them"
  )
  assert not (workdir / "plots.json").exists()

  rerun = run_main(*args)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "writing its plots" in rerun.stderr
  assert json.loads((workdir / "plots.json").read_text())["step"] == step
  assert len(os.listdir(workdir / "plots")) == 5
  from tensorboard.backend.event_processing import event_accumulator

  events = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
  events.Reload()
  assert "test/most_confident_mistakes" in events.Tags()["images"]
  again = run_main(*args)
  assert again.returncode == 0 and "nothing to do" in again.stderr


def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path):
  proc = subprocess.Popen(
    [sys.executable, os.path.join(ROOT, "main.py"), f"--workdir={tmp_path / 'run'}"],
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  time.sleep(0.5)  # Still importing jax and flax.
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130
  assert stderr.strip() == "main.py: interrupted"
  assert not (tmp_path / "run").exists()
