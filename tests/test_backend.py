import flax.linen as nn
import jax
import pytest

from mnist_flax.kernels import patches
from mnist_flax.run import backend


def test_steps_per_dispatch_defaults_per_backend():
  assert backend.steps_per_dispatch(0, 468, "cpu") == 18  # 468 = 26 x 18: one compiled chunk.
  assert backend.steps_per_dispatch(0, 480, "cpu") == 16
  assert backend.steps_per_dispatch(0, 467, "cpu") == 16  # Prime: no divisor in [8, 32].
  assert backend.steps_per_dispatch(0, 5, "cpu") == 5
  assert backend.steps_per_dispatch(0, 468, "gpu") == 468
  assert backend.steps_per_dispatch(0, 468, "tpu") == 468
  assert backend.steps_per_dispatch(50, 468, "cpu") == 50
  assert backend.steps_per_dispatch(50, 20, "gpu") == 20


def test_microbatches_default_to_slices_on_cpu_for_a_single_model(config):
  assert jax.default_backend() == "cpu"
  assert backend.choose(config).microbatches == backend.CPU_MICROBATCHES
  config.batch_size = 130
  assert backend.choose(config).microbatches == 1
  config.batch_size, config.ensemble_size = 128, 4
  assert backend.choose(config).microbatches == 1  # Stacked members already give XLA independent work.
  config.runtime.microbatches = 2
  assert backend.choose(config).microbatches == 2


def test_scan_modes(config):
  assert config.runtime.scan == "auto" and not backend.choose(config).unrolled
  for impl in ("flax", "xla"):
    config.runtime.conv_impl = impl
    assert backend.choose(config).unrolled == (jax.default_backend() == "cpu")
  for impl in ("patches", "pooled"):
    config.runtime.conv_impl = impl
    assert not backend.choose(config).unrolled
  config.runtime.scan = "rolled"
  assert not backend.choose(config).unrolled
  config.runtime.scan = "unrolled"
  assert backend.choose(config).unrolled


@pytest.mark.parametrize("ensemble_size", [1, 2])
def test_auto_trains_with_patches_on_cpu_and_evaluates_one_model_with_xla(config, ensemble_size):
  config.ensemble_size = ensemble_size
  assert config.runtime.conv_impl == "auto" and jax.default_backend() == "cpu"
  choices = backend.choose(config)
  single = ensemble_size == 1
  assert choices.train_conv == ("pooled" if single else "patches")  # Members train faster without the pooled block.
  assert choices.eval_conv == ("xla" if single else "patches")
  assert backend.train_model(config, choices).conv is patches.Conv
  assert backend.eval_model(config, choices).conv is (nn.Conv if single else patches.Conv)


@pytest.mark.parametrize("impl", ["flax", "xla", "patches", "pooled"])
@pytest.mark.parametrize("ensemble_size", [1, 2])
def test_a_named_conv_impl_is_used_for_training_and_evaluation(config, impl, ensemble_size):
  config.runtime.conv_impl, config.ensemble_size = impl, ensemble_size
  choices = backend.choose(config)
  assert choices.train_conv == choices.eval_conv == impl


def test_the_choices_are_described_in_one_line(config):
  line = backend.choose(config).describe()
  assert "\n" not in line and "pooled" in line and "steps per dispatch" in line


def test_gpus_and_tpus_get_flax_layers(config, monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  choices = backend.choose(config)
  assert (choices.train_conv, choices.eval_conv, choices.microbatches, choices.unrolled) == ("flax", "flax", 1, False)
  assert choices.steps_per_dispatch == 60_000 // config.batch_size
