"""Config checks that run before any work, each failing with a one-line `ConfigError`."""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections

from mnist_flax import kernels
from mnist_flax.core import models, networks, train_state
from mnist_flax.data import input_pipeline
from mnist_flax.errors import UsageError, config_field_error, describe
from mnist_flax.run import checkpoints, locking, record_writers

# What may change between runs in one workdir without invalidating its checkpoints: the length
# (the schedule is redefined over it, with a warning) and the whole runtime section.
RESUMABLE_CHANGES = frozenset({"num_epochs", "runtime"})
CONFIG_FILE = "config.json"
SCAN_MODES = ("auto", "unrolled", "rolled")
MEMBER_BATCHES = ("shared", "own")
CONV_IMPLS = ("auto", *kernels.IMPLS)
# Seeds 0 .. 2**32 - 1 give distinct PRNG keys; jax.random.PRNGKey keeps only the low 32 bits of larger ones.
MAX_SEED = 2**32 - 1


class ConfigError(UsageError):
  """A config value is invalid."""


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
  """A finite int or float (not a bool)."""
  return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def validate_config(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
  """Checks a run config; raises `ConfigError` naming the first bad or missing field.

  Args:
    config: A run config (see `configs/default.py`).
    device_count: Devices the batches are split over (default: `jax.device_count()`).
  """
  try:
    _validate_config(config, device_count)
  except (KeyError, AttributeError) as e:
    field = config_field_error(e)
    if field is None:
      raise
    raise ConfigError(
      f"the config has no field {field[0]!r} (start from the get_config() of configs/default.py)"
    ) from e


def _validate_config(config: ml_collections.ConfigDict, device_count: int | None) -> None:
  device_count = jax.device_count() if device_count is None else device_count
  _validate_schedule(config)
  _validate_augmentation(config)
  _validate_model(config)
  _validate_ensemble(config)
  _validate_runtime(config.runtime)
  _validate_batches(config, device_count)
  _validate_data(config.runtime)


def _validate_schedule(config: ml_collections.ConfigDict) -> None:
  for name in ("num_epochs", "batch_size"):
    value = config[name]
    _require(_is_int(value) and value > 0, f"config.{name} must be a positive integer, got {value!r}")
  _require(
    _is_int(config.seed) and 0 <= config.seed <= MAX_SEED,
    f"config.seed must be an integer in [0, {MAX_SEED}] (2**32 - 1), got {config.seed!r}",
  )
  lr = config.learning_rate
  _require(_is_number(lr) and lr > 0, f"config.learning_rate must be a positive finite number, got {lr!r}")
  _require(
    _is_number(config.warmup_epochs) and config.warmup_epochs >= 0,
    f"config.warmup_epochs must be a non-negative finite number, got {config.warmup_epochs!r}",
  )
  _require(
    _is_number(config.final_learning_rate_factor) and 0 <= config.final_learning_rate_factor <= 1,
    f"config.final_learning_rate_factor must be in [0, 1], got {config.final_learning_rate_factor!r}",
  )


def _validate_augmentation(config: ml_collections.ConfigDict) -> None:
  _require(
    _is_int(config.augment_max_shift) and 0 <= config.augment_max_shift < 14,
    f"config.augment_max_shift must be an integer in [0, 13], got {config.augment_max_shift!r}",
  )
  rotation, scale = config.augment_max_rotation, config.augment_max_scale
  _require(
    _is_number(rotation) and 0 <= rotation <= 180,
    f"config.augment_max_rotation must be a number of degrees in [0, 180], got {rotation!r}",
  )
  _require(_is_number(scale) and 0 <= scale < 1, f"config.augment_max_scale must be a number in [0, 1), got {scale!r}")
  alpha, sigma = config.augment_elastic_alpha, config.augment_elastic_sigma
  _require(
    _is_number(alpha) and 0 <= alpha <= 100,
    f"config.augment_elastic_alpha must be a number of pixels in [0, 100], got {alpha!r}",
  )
  _require(
    _is_number(sigma) and 0.5 <= sigma <= 14,
    f"config.augment_elastic_sigma must be a number of pixels in [0.5, 14], got {sigma!r}",
  )


def _validate_runtime(runtime: ml_collections.ConfigDict) -> None:
  for name in ("eval_batch_size", "checkpoint_every_steps", "keep_checkpoints"):
    value = runtime[name]
    _require(_is_int(value) and value > 0, f"config.runtime.{name} must be a positive integer, got {value!r}")
  for name in ("steps_per_dispatch", "microbatches"):
    value = runtime[name]
    _require(
      _is_int(value) and value >= 0,
      f"config.runtime.{name} must be 0 (automatic) or a positive integer, got {value!r}",
    )
  for name, allowed in (("scan", SCAN_MODES), ("conv_impl", CONV_IMPLS)):
    _require(
      runtime[name] in allowed,
      f"config.runtime.{name} must be one of {', '.join(map(repr, allowed))}, got {runtime[name]!r}",
    )


def _validate_batches(config: ml_collections.ConfigDict, device_count: int) -> None:
  train_size, test_size = input_pipeline.SPLIT_SIZES["train"], input_pipeline.SPLIT_SIZES["test"]
  _require(
    config.batch_size <= train_size,
    f"config.batch_size {config.batch_size} exceeds the {train_size} training images",
  )
  eval_batch_size = config.runtime.eval_batch_size
  largest_eval_batch = -(-test_size // device_count) * device_count  # All test images in one batch.
  _require(
    eval_batch_size <= largest_eval_batch,
    f"config.runtime.eval_batch_size {eval_batch_size} exceeds the {test_size} test images; "
    f"use at most {largest_eval_batch}",
  )
  for name, size in (("batch_size", config.batch_size), ("runtime.eval_batch_size", eval_batch_size)):
    _require(
      size % device_count == 0,
      f"config.{name} {size} is not divisible by the {device_count} devices; use a multiple of {device_count}",
    )
  microbatches = config.runtime.microbatches
  _require(
    config.batch_size % max(microbatches, 1) == 0,
    f"config.batch_size {config.batch_size} does not split into config.runtime.microbatches={microbatches} "
    "equal slices; use a divisor of it, or 0 (automatic)",
  )


def _validate_data(runtime: ml_collections.ConfigDict) -> None:
  _require(
    not runtime.data_dir or not os.path.exists(runtime.data_dir) or os.path.isdir(runtime.data_dir),
    f"config.runtime.data_dir {runtime.data_dir} is not a folder",
  )
  if runtime.manual_dir and not os.path.exists(input_pipeline.cache_path(runtime.data_dir or None)):
    try:  # Only needed until the data is prepared: a stale setting does not block later runs.
      input_pipeline.check_manual_dir(runtime.manual_dir)
    except input_pipeline.DataError as e:
      raise ConfigError(f"config.runtime.{e}") from e


# Ensemble members are trained side by side in one program: memory and time grow with their number.
MAX_ENSEMBLE_SIZE = 64


def _validate_ensemble(config: ml_collections.ConfigDict) -> None:
  size, rates = config.ensemble_size, config.member_learning_rates
  member_batches = config.member_batches
  _require(
    member_batches in MEMBER_BATCHES,
    f"config.member_batches must be one of {', '.join(map(repr, MEMBER_BATCHES))}, got {member_batches!r}",
  )
  _require(
    _is_int(size) and 1 <= size <= MAX_ENSEMBLE_SIZE,
    f"config.ensemble_size must be an integer in [1, {MAX_ENSEMBLE_SIZE}], got {size!r}",
  )
  _require(
    isinstance(rates, tuple | list) and all(_is_number(r) and r > 0 for r in rates),
    f"config.member_learning_rates must be positive finite numbers, got {rates!r}",
  )
  _require(
    not rates or len(rates) == size,
    f"config.member_learning_rates has {len(rates)} rates for {size} ensemble members; give one per member "
    f"(e.g. --config.ensemble_size={len(rates)})",
  )


def _validate_model(config: ml_collections.ConfigDict) -> None:
  """The built-in CNN's fields, or a factory's model: importable, built with its arguments, [B, 10] logits."""
  spec = config.model.factory
  if networks.is_built_in(config.model):
    _validate_cnn(config.model)
    return
  try:
    networks.check(networks.create(config.model), f"config.model.factory {spec!r}")
  except ValueError as e:
    raise ConfigError(str(e)) from e
  impl = config.runtime.conv_impl
  _require(
    impl in ("auto", "flax"),
    f"config.runtime.conv_impl {impl!r} computes the built-in CNN only; config.model.factory {spec!r} runs as "
    "written: use 'auto' or 'flax'",
  )


def _validate_cnn(model_config: ml_collections.ConfigDict) -> None:
  c = model_config
  _require(
    len(c.features) > 0 and all(_is_int(f) and f > 0 for f in c.features),
    f"config.model.features must be positive integers, got {c.features!r}",
  )
  _require(
    all(_is_int(f) and f > 0 for f in c.dense_features),
    f"config.model.dense_features must be positive integers, got {c.dense_features!r}",
  )
  for name in ("kernel_size", "convs_per_block"):
    _require(_is_int(c[name]) and c[name] > 0, f"config.model.{name} must be a positive integer, got {c[name]!r}")
  _require(c.padding in ("VALID", "SAME"), f"config.model.padding must be 'VALID' or 'SAME', got {c.padding!r}")
  _require(0 <= c.dropout_rate < 1, f"config.model.dropout_rate must be in [0, 1), got {c.dropout_rate!r}")
  batch_norm = c.batch_norm
  _require(isinstance(batch_norm, bool), f"config.model.batch_norm must be True or False, got {batch_norm!r}")
  side = models.IMAGE_SHAPE[0]
  for block in range(len(c.features)):  # Each block: convs_per_block convolutions, then a 2x2 max-pool.
    if c.padding == "VALID":
      side -= c.convs_per_block * (c.kernel_size - 1)
    _require(
      side >= 2,
      f"config.model does not fit 28x28 images: block {block + 1} of {len(c.features)} gets "
      f"{max(side, 0)}x{max(side, 0)} pixels before pooling; use a smaller kernel_size, fewer features, "
      "fewer convs_per_block or padding='SAME'",
    )
    side //= 2
  model = models.create_model(c)
  images = jax.ShapeDtypeStruct((1, *models.IMAGE_SHAPE), jnp.float32)
  try:
    params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
  except Exception as e:  # noqa: BLE001 - any shape error means the architecture does not fit 28x28.
    raise ConfigError(f"config.model does not fit 28x28 images: {describe(e)}") from e
  empty = [jax.tree_util.keystr(path) for path, p in jax.tree_util.tree_leaves_with_path(params) if 0 in p.shape]
  if empty:
    raise ConfigError(f"config.model does not fit 28x28 images: the conv blocks leave nothing for {empty[0]}")


def as_current(saved: dict) -> dict:
  """A saved config as this version reads it: a model section without a factory is the built-in CNN's."""
  model = saved.get("model")
  if isinstance(model, dict) and "factory" not in model:
    return {**saved, "model": {"factory": networks.BUILT_IN, **model}}
  return saved


def saved_config(workdir: str) -> dict | None:
  """The config a workdir's run was started with (`config.json` as a dict), or None for a new workdir.

  Raises:
    ConfigError: the file exists but is not a readable JSON object.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read {path} ({describe(e)}); use a new --workdir") from e
  _require(isinstance(saved, dict), f"{path} is not a run config (a JSON object); use a new --workdir")
  return saved


# What a workdir holds: folders and files. Anything of the other kind in their place is refused.
WORKDIR_FOLDERS = (checkpoints.CHECKPOINT_DIR, record_writers.TENSORBOARD_DIR, "plots")  # plots.PLOTS_DIR
WORKDIR_FILES = (CONFIG_FILE, record_writers.METRICS_FILE, locking.LOCK_FILE)


def _by_effect(config: dict) -> dict:
  """A saved or current config with `member_batches` as it acts: one model has no batches to share."""
  try:
    own = train_state.own_member_batches(config)
  except (KeyError, TypeError):  # Another layout, or bad values: compared field by field as they are.
    return config
  return {**config, "member_batches": own}


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir that is a file, has files and folders swapped, or holds a run of another config."""
  _require(not os.path.exists(workdir) or os.path.isdir(workdir), f"workdir {workdir} exists and is not a folder")
  for name in WORKDIR_FOLDERS:
    path = os.path.join(workdir, name)
    _require(not os.path.exists(path) or os.path.isdir(path), f"{path} should be a folder but is a file")
  for name in WORKDIR_FILES:
    path = os.path.join(workdir, name)
    _require(not os.path.isdir(path), f"{path} should be a file but is a folder")
  saved = saved_config(workdir)
  if saved is None:
    return
  _require(
    "runtime" in saved or "data_dir" not in saved,  # Before the section, data_dir was a top-level field.
    f"workdir {workdir} holds a run of an older mnist-flax (its config.json has no runtime section); "
    "use a new --workdir",
  )
  current = _by_effect(json.loads(config.to_json()))
  saved = _by_effect(as_current(saved))
  differing = sorted(
    k for k in set(saved) | set(current) if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)
  )
  _require(
    not differing,
    f"workdir {workdir} holds a run with a different config ({', '.join(differing)}); "
    "use a new --workdir or the same config",
  )
