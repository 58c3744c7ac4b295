import importlib
import json

import pytest

from mnist_flax.run import config_checks
from mnist_flax.run.config_checks import ConfigError
from mnist_flax.tools import plots


@pytest.mark.parametrize("name", ["default", "keras_seed", "fast", "best", "nnx_cnn"])
def test_shipped_configs_are_valid_and_say_how_they_were_measured(name):
  module = importlib.import_module(f"configs.{name}")
  config_checks.validate_config(module.get_config())
  doc = module.__doc__
  assert f"python main.py --config=configs/{name}.py" in doc and "accuracy" in doc and "machine" in doc
  assert len(doc.strip().splitlines()) <= 10


@pytest.mark.parametrize(
  ("field", "value", "message"),
  [
    ("batch_size", 0, "batch_size must be a positive integer"),
    ("batch_size", -8, "batch_size must be a positive integer"),
    ("batch_size", 60_008, "exceeds the 60000 training images"),
    ("num_epochs", 0, "num_epochs must be a positive integer"),
    ("runtime.eval_batch_size", 0, "eval_batch_size must be a positive integer"),
    ("learning_rate", 0.0, "learning_rate must be a positive finite number"),
    ("learning_rate", -1e-3, "learning_rate must be a positive finite number"),
    ("learning_rate", float("nan"), "learning_rate must be a positive finite number"),
    ("learning_rate", float("inf"), "learning_rate must be a positive finite number"),
    ("warmup_epochs", float("inf"), "warmup_epochs must be a non-negative finite number"),
    ("final_learning_rate_factor", float("nan"), "final_learning_rate_factor must be in"),
    ("runtime.eval_batch_size", 10_001, "exceeds the 10000 test images"),
    ("runtime.eval_batch_size", 10**9, "exceeds the 10000 test images"),
    ("seed", -1, "seed must be an integer in"),
    ("seed", 2**32, "seed must be an integer in"),
    ("seed", 2**63, "seed must be an integer in"),
    ("runtime.checkpoint_every_steps", 0, "checkpoint_every_steps must be a positive integer"),
    ("runtime.keep_checkpoints", 0, "keep_checkpoints must be a positive integer"),
    ("runtime.steps_per_dispatch", -1, "steps_per_dispatch must be 0"),
    ("runtime.microbatches", -1, "microbatches must be 0"),
    ("runtime.microbatches", True, "microbatches must be 0"),
    ("runtime.microbatches", 3, "batch_size 128 does not split into config.runtime.microbatches=3 equal slices"),
    ("warmup_epochs", -1.0, "warmup_epochs must be a non-negative finite number"),
    ("final_learning_rate_factor", 2.0, "final_learning_rate_factor must be in"),
    ("augment_max_shift", 14, "augment_max_shift must be an integer"),
    ("augment_max_rotation", -1.0, "augment_max_rotation must be a number of degrees in"),
    ("augment_max_rotation", float("inf"), "augment_max_rotation must be a number of degrees in"),
    ("augment_max_scale", 1.0, "augment_max_scale must be a number in"),
    ("augment_elastic_alpha", -1.0, "augment_elastic_alpha must be a number of pixels in"),
    ("augment_elastic_alpha", float("nan"), "augment_elastic_alpha must be a number of pixels in"),
    ("augment_elastic_sigma", 0.0, "augment_elastic_sigma must be a number of pixels in"),
    ("augment_elastic_sigma", 15.0, "augment_elastic_sigma must be a number of pixels in"),
    ("runtime.scan", "sometimes", "scan must be one of 'auto', 'unrolled', 'rolled'"),
    ("runtime.conv_impl", "fft", "conv_impl must be one of 'auto', 'flax', 'xla', 'patches', 'pooled'"),
    ("ensemble_size", 0, "ensemble_size must be an integer in"),
    ("ensemble_size", 65, "ensemble_size must be an integer in"),
    ("member_learning_rates", (1e-3, 0.0), "member_learning_rates must be positive finite numbers"),
    ("member_learning_rates", (float("nan"),), "member_learning_rates must be positive finite numbers"),
    ("member_learning_rates", (1e-3, 1e-2), "has 2 rates for 1 ensemble members"),
    ("member_batches", "mine", "member_batches must be one of 'shared', 'own'"),
  ],
)
def test_bad_values_are_refused_in_one_line(config, field, value, message):
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ConfigError, match=message) as e:
    config_checks.validate_config(config)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize(
  ("field", "value", "message"),
  [
    ("features", (), "features must be positive integers"),
    ("features", (32, 0), "features must be positive integers"),
    ("padding", "FULL", "padding must be"),
    ("dropout_rate", 1.0, "dropout_rate must be in"),
    ("kernel_size", 0, "kernel_size must be a positive integer"),
    ("features", (8, 8, 8, 8, 8), "does not fit 28x28 images"),
    ("kernel_size", 15, "block 2 of 2 gets 0x0 pixels before pooling"),
    ("kernel_size", 29, "block 1 of 2 gets 0x0 pixels before pooling"),
  ],
)
def test_bad_model_configs_are_refused(config, field, value, message):
  config.model[field] = value
  with pytest.raises(ConfigError, match=message) as e:
    config_checks.validate_config(config)
  assert "\n" not in str(e.value)


def test_batch_norm_must_be_a_bool(config):
  del config.model["batch_norm"]
  config.model.batch_norm = "yes"
  with pytest.raises(ConfigError, match="config.model.batch_norm must be True or False, got 'yes'"):
    config_checks.validate_config(config)


def test_batch_size_must_divide_across_devices(config):
  config.batch_size = 100
  with pytest.raises(ConfigError, match="not divisible by the 8 devices"):
    config_checks.validate_config(config, device_count=8)
  config.batch_size = 128
  config_checks.validate_config(config, device_count=8)
  config.runtime.eval_batch_size = 1001
  with pytest.raises(ConfigError, match="eval_batch_size 1001 is not divisible"):
    config_checks.validate_config(config, device_count=8)


def test_manual_dir_must_hold_the_four_files(config, tmp_path):
  config.runtime.data_dir = str(tmp_path / "tfds")
  config.runtime.manual_dir = str(tmp_path / "absent")
  with pytest.raises(ConfigError, match="is not a folder"):
    config_checks.validate_config(config)
  config.runtime.manual_dir = str(tmp_path)
  with pytest.raises(ConfigError, match="MNIST_MANUAL_DIR"):
    config_checks.validate_config(config)


def test_a_stale_manual_dir_does_not_block_prepared_data(config, mock_data_dir, tmp_path):
  config.runtime.manual_dir = str(tmp_path / "long gone")
  config.runtime.data_dir = str(tmp_path / "not prepared")
  with pytest.raises(ConfigError, match="long gone is not a folder"):
    config_checks.validate_config(config)
  config.runtime.data_dir = mock_data_dir  # Prepared: the manual dir is no longer read.
  assert config_checks.validate_config(config) is None


def test_workdir_checks(config, tmp_path):
  config_checks.check_workdir(config, str(tmp_path / "new"))
  afile = tmp_path / "afile"
  afile.write_text("x")
  with pytest.raises(ConfigError, match="is not a folder"):
    config_checks.check_workdir(config, str(afile))
  (tmp_path / config_checks.CONFIG_FILE).write_text(config.to_json())
  config_checks.check_workdir(config, str(tmp_path))
  config.num_epochs = 50  # Resumable: a run may be extended.
  config.runtime.conv_impl = "patches"  # Resumable: the same parameters, computed another way.
  config.runtime.eval_batch_size = 500  # Resumable: the same test images, batched another way.
  config_checks.check_workdir(config, str(tmp_path))
  config.batch_size = 64
  config.model.features = (8,)
  with pytest.raises(ConfigError, match=r"different config \(batch_size, model\)"):
    config_checks.check_workdir(config, str(tmp_path))
  saved = json.loads((tmp_path / config_checks.CONFIG_FILE).read_text())
  assert saved["batch_size"] == 128


@pytest.mark.parametrize(
  "content, message",
  [("[1, 2]", "is not a run config"), ("{cut", "cannot read"), (b"\xff\xfe{}", "cannot read")],
)
def test_a_damaged_config_json_is_one_line(config, tmp_path, content, message):
  path = tmp_path / config_checks.CONFIG_FILE
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  with pytest.raises(ConfigError, match=message) as e:
    config_checks.check_workdir(config, str(tmp_path))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", [*config_checks.WORKDIR_FOLDERS, *config_checks.WORKDIR_FILES])
def test_files_and_folders_swapped_in_a_workdir_are_refused(config, tmp_path, name):

  assert plots.PLOTS_DIR in config_checks.WORKDIR_FOLDERS
  if name in config_checks.WORKDIR_FOLDERS:
    (tmp_path / name).write_text("x")
    message = "should be a folder but is a file"
  else:
    (tmp_path / name).mkdir()
    message = "should be a file but is a folder"
  with pytest.raises(ConfigError, match=message):
    config_checks.check_workdir(config, str(tmp_path))


def test_a_data_dir_that_is_a_file_is_refused(config, tmp_path):
  (tmp_path / "file").write_text("x")
  config.runtime.data_dir = str(tmp_path / "file")
  with pytest.raises(ConfigError, match="config.runtime.data_dir .* is not a folder"):
    config_checks.validate_config(config)


def test_member_batches_compare_by_what_they_do(config, tmp_path):
  """For one model, `member_batches` changes nothing."""
  config.ensemble_size = 2
  saved = json.loads(config.to_json())
  (tmp_path / config_checks.CONFIG_FILE).write_text(json.dumps(saved))
  config_checks.check_workdir(config, str(tmp_path))
  config.member_batches = "own"
  with pytest.raises(ConfigError, match=r"different config \(member_batches\)"):
    config_checks.check_workdir(config, str(tmp_path))
  config.ensemble_size = 1  # One model: nothing to share; only the size differs.
  with pytest.raises(ConfigError, match=r"different config \(ensemble_size\)"):
    config_checks.check_workdir(config, str(tmp_path))
  saved["ensemble_size"] = 1
  (tmp_path / config_checks.CONFIG_FILE).write_text(json.dumps(saved))
  config_checks.check_workdir(config, str(tmp_path))


def test_a_workdir_of_an_older_layout_is_refused_in_one_line(config, tmp_path):
  saved = json.loads(config.to_json())
  saved.update(saved.pop("runtime"))  # The runtime fields at the top level, as before the section.
  (tmp_path / config_checks.CONFIG_FILE).write_text(json.dumps(saved))
  with pytest.raises(ConfigError, match="holds a run of an older mnist-flax .* use a new --workdir"):
    config_checks.check_workdir(config, str(tmp_path))


def test_a_run_saved_before_model_factories_is_the_built_in_cnns(config, tmp_path):
  saved = json.loads(config.to_json())
  del saved["model"]["factory"]
  (tmp_path / config_checks.CONFIG_FILE).write_text(json.dumps(saved))
  config_checks.check_workdir(config, str(tmp_path))
  assert config_checks.as_current(saved)["model"] == json.loads(config.to_json())["model"]
  config.model.factory = "configs.nnx_cnn:CNN"
  with pytest.raises(ConfigError, match=r"different config \(model\)"):
    config_checks.check_workdir(config, str(tmp_path))
