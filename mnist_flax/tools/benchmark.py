"""`python -m mnist_flax.tools.benchmark --config=configs/default.py`: how fast a config trains on this machine.

Flags:
  --config: a config file, as for main.py (`--config.FIELD=VALUE` overrides too).
  --repeats: timed calls of each compiled program, after one warm-up call (default 5).
  --target: also train from scratch on MNIST until this test accuracy (e.g. 0.99) and time it.
  --json: also write the results to this file, as one JSON object.

Measured in this process, on its devices: the compile time of the training chunk (several
steps in one program, as the loop runs them) and of the evaluation, with the persistent
compilation cache off (a rerun with a warm cache skips most of it); steady-state seconds per
step, per epoch (training only, and with the loop's 10,000-image evaluation) and images per
second, medians over the repeats; a step's FLOPs from XLA's own cost analysis, the FLOP/s
they achieve, and that as a fraction of this machine's float32 matmul peak, measured here too.
"""

if __name__ == "__main__":  # Before the heavy imports, so an early Ctrl-C is one line too.
  from mnist_flax.tools import startup

  startup.exit_on_interrupt("python -m mnist_flax.tools.benchmark")

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags
from ml_collections import config_flags

from mnist_flax.core import scoring, train_state
from mnist_flax.data import input_pipeline
from mnist_flax.errors import UsageError
from mnist_flax.run import backend, chunks, compilation_cache, config_checks, files, parallel, snapshot
from mnist_flax.tools import cli

PROG = "python -m mnist_flax.tools.benchmark"
PEAK_MATMUL_SIZE = 2048


def timed(fn: Callable[[], Any], repeats: int) -> float:
  """The median wall time of `fn()` over `repeats` calls after one warm-up call, outputs waited for."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak(repeats: int, n: int = PEAK_MATMUL_SIZE) -> float:
  """This machine's float32 FLOP/s on an n x n matmul, as XLA runs it on the default device."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  return 2 * n**3 / timed(lambda: matmul(a, a), repeats)


def compiled_flops(compiled) -> float:
  """The FLOPs of a compiled program, from XLA's cost analysis (NaN where the backend gives none)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list | tuple):  # Older JAX: one dict per device program.
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


def _timed_compile(fn, *args) -> tuple[Any, float]:
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


class _Setup:
  """The training set on the devices, the initial state and the compiled chunk, as the loop has them."""

  def __init__(self, config: ml_collections.ConfigDict, data: input_pipeline.Splits):
    self.config, self.mesh = config, parallel.create_mesh()
    self.steps_per_epoch = input_pipeline.steps_per_epoch(config.batch_size, len(data["train"]["label"]))
    self.choices = backend.choose(config, self.steps_per_epoch)
    self.chunk = self.choices.steps_per_dispatch
    self.images, self.labels, self.data_rng = parallel.put_replicated(
      (data["train"]["image"], data["train"]["label"], snapshot.data_keys(config)), self.mesh
    )
    model = backend.train_model(config, self.choices)
    self.initial = snapshot.initial_snapshot(config, self.steps_per_epoch, self.mesh, model)
    self.programs = {}  # Chunk length -> program; the full chunk is compiled ahead of time by `compile`.

  def fresh(self) -> list:
    """Copies of the initial `[state, epoch_sums]` (the programs donate their inputs), same static parts."""
    return list(jax.tree.map(jnp.copy, (self.initial["state"], self.initial["epoch_sums"])))

  def order(self, epoch: int) -> jax.Array:
    return chunks.epoch_order_fn(self.mesh)(self.data_rng, epoch, len(self.labels))

  def compile(self) -> float:
    """Compiles the full chunk; returns the seconds it took."""
    fn = chunks.config_train_chunk(self.config, self.choices, self.chunk, self.mesh)
    compiled, seconds = _timed_compile(fn, *self.fresh(), *self.chunk_args(self.order(0), 0))
    self.programs[self.chunk] = compiled
    return seconds

  def step_flops(self) -> float:
    """The FLOPs of one train step, from XLA's cost analysis of a one-step chunk.

    A rolled chunk is a loop, and the cost analysis counts a loop's body once whatever its trip
    count, so the full chunk's figure cannot simply be divided by its length.
    """
    fn = chunks.config_train_chunk(self.config, self.choices, 1, self.mesh)
    return compiled_flops(fn.lower(*self.fresh(), *self.chunk_args(self.order(0), 0)).compile())

  def chunk_args(self, order: jax.Array, first: int) -> tuple:
    return self.images, self.labels, order, jnp.int32(first), self.data_rng

  def program(self, n: int):
    if n not in self.programs:  # A shorter last chunk of an epoch, as the loop compiles it.
      self.programs[n] = chunks.config_train_chunk(self.config, self.choices, n, self.mesh)
    return self.programs[n]


def run(config: ml_collections.ConfigDict, repeats: int = 5, target: float | None = None) -> dict[str, Any]:
  """Benchmarks `config` on the current devices; see the module docstring for what is measured.

  Returns:
    A flat dict of the figures (seconds, counts, FLOP/s); with `target`, also `target_epochs`
    and `target_s` (training and evaluation until the test accuracy reaches it, compiled
    programs reused), or `target_reached` False after `config.num_epochs` epochs.
  """
  config_checks.validate_config(config)
  compilation_cache.use("")  # Compile times as a first run pays them, whatever the cache holds.
  data = input_pipeline.load_configured(config.runtime)
  setup = _Setup(config, data)
  compile_s = setup.compile()
  compiled, chunk, steps_per_epoch = setup.programs[setup.chunk], setup.chunk, setup.steps_per_epoch
  carry, args = setup.fresh(), setup.chunk_args(setup.order(0), 0)

  def one_chunk():
    carry[:] = compiled(*carry, *args)  # Donates and replaces the state.
    return carry

  step_s = timed(one_chunk, repeats) / chunk
  evaluator = backend.evaluator(config, setup.choices, data["test"], setup.mesh)
  start = time.perf_counter()
  evaluator(carry[0])  # Compiles, then runs once.
  first_eval_s = time.perf_counter() - start
  eval_s = timed(lambda: evaluator(carry[0])["loss"], repeats)
  flops = setup.step_flops()
  peak = matmul_peak(repeats)
  result = {
    "batch_size": config.batch_size,
    "devices": jax.device_count(),
    "backend": jax.default_backend(),
    "members": len(train_state.member_learning_rates(config)),
    "steps_per_epoch": steps_per_epoch,
    "test_images": len(evaluator.labels),
    "steps_per_chunk": chunk,
    "compile_s": compile_s,
    "eval_compile_s": max(first_eval_s - eval_s, 0.0),
    "step_s": step_s,
    "epoch_s": step_s * steps_per_epoch,
    "eval_s": eval_s,
    "epoch_with_eval_s": step_s * steps_per_epoch + eval_s,
    "images_per_s": config.batch_size / step_s,
    "flops_per_step": flops,
    "achieved_flop_s": flops / step_s,
    "matmul_peak_flop_s": peak,
    "fraction_of_peak": flops / step_s / peak,
    "repeats": repeats,
  }
  if target is not None:
    result.update(time_to_accuracy(setup, evaluator, target))
  return result


def time_to_accuracy(setup: _Setup, evaluator: scoring.Evaluator, target: float) -> dict[str, Any]:
  """Trains from a fresh state, evaluating after each epoch, until the test accuracy reaches `target`."""
  steps_per_epoch, chunk, num_epochs = setup.steps_per_epoch, setup.chunk, setup.config.num_epochs
  state, sums = setup.fresh()
  start = time.perf_counter()
  for epoch in range(num_epochs):
    order = setup.order(epoch)
    for first in range(0, steps_per_epoch, chunk):
      n = min(chunk, steps_per_epoch - first)
      state, sums = setup.program(n)(state, sums, *setup.chunk_args(order, first))
    accuracy = evaluator(state)["accuracy"]
    if accuracy >= target:
      break
  return {
    "target": target,
    "target_reached": bool(accuracy >= target),
    "target_epochs": epoch + 1,
    "target_accuracy": accuracy,
    "target_s": time.perf_counter() - start,
  }


def table(result: dict[str, Any]) -> str:
  """The results as aligned `name  value  unit` lines."""
  rows = [
    ("devices", f"{result['devices']} {result['backend']}", ""),
    ("models trained side by side (ensemble_size)", f"{result['members']}", ""),
    ("steps per epoch / per chunk", f"{result['steps_per_epoch']} / {result['steps_per_chunk']}", ""),
    ("compile: train chunk", f"{result['compile_s']:.2f}", "s"),
    ("compile: evaluation", f"{result['eval_compile_s']:.2f}", "s"),
    ("step", f"{1000 * result['step_s']:.2f}", "ms"),
    ("epoch, training only", f"{result['epoch_s']:.2f}", "s"),
    (f"evaluation of {result['test_images']:,} test images", f"{result['eval_s']:.2f}", "s"),
    ("epoch with evaluation", f"{result['epoch_with_eval_s']:.2f}", "s"),
    ("images per second (training)", f"{result['images_per_s']:,.0f}", "img/s"),
    ("FLOPs per step (XLA cost analysis)", f"{result['flops_per_step'] / 1e9:.3f}", "GFLOP"),
    ("achieved", f"{result['achieved_flop_s'] / 1e9:.1f}", "GFLOP/s"),
    (f"float32 matmul peak ({PEAK_MATMUL_SIZE}^2)", f"{result['matmul_peak_flop_s'] / 1e9:.1f}", "GFLOP/s"),
    ("fraction of peak", f"{100 * result['fraction_of_peak']:.1f}", "%"),
  ]
  if "target" in result:
    reached = "" if result["target_reached"] else " (not reached)"
    rows.append(
      (
        f"time to {100 * result['target']:.2f}% test accuracy{reached}",
        f"{result['target_s']:.1f}",
        f"s, {result['target_epochs']} epoch(s), {100 * result['target_accuracy']:.2f}%",
      )
    )
  width = max(len(r[0]) for r in rows)
  return "\n".join(f"{name:<{width}}  {value:>12}  {unit}".rstrip() for name, value, unit in rows)


_CONFIG = config_flags.DEFINE_config_file("config", None, "The config file to benchmark.", lock_config=True)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls of each program after a warm-up call.", lower_bound=1)
_TARGET = flags.DEFINE_float("target", None, "Also time training to this test accuracy (0 < target <= 1).")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


def main(argv: list[str]) -> None:
  """Benchmarks --config and prints the table."""
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["config"].present:
    raise UsageError("--config is required, e.g. --config=configs/default.py")
  if _TARGET.value is not None and not 0 < _TARGET.value <= 1:
    raise UsageError(f"--target={_TARGET.value} must be a test accuracy in (0, 1], e.g. 0.99")
  result = run(cli.load_config(_CONFIG), _REPEATS.value, _TARGET.value)
  print(table(result))
  if _JSON.value:
    files.write_text(_JSON.value, json.dumps(result, indent=2))


if __name__ == "__main__":
  cli.run(main, PROG)
