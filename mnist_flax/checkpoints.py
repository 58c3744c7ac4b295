"""Orbax checkpoints: the train pytree (state and running epoch metrics) plus JSON progress."""

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  """`<workdir>/checkpoints`, absolute."""
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def create_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
  """An asynchronous `CheckpointManager` in `<workdir>/checkpoints` keeping the last `max_to_keep`."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    create=True,
    cleanup_tmp_directories=True,
    enable_async_checkpointing=True,
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def _not_read_only_notice(record: logging.LogRecord) -> bool:
  return "read only" not in str(record.msg) and "read_only=True" not in str(record.msg)


def open_read_only(workdir: str) -> ocp.CheckpointManager:
  """A manager that only reads `<workdir>/checkpoints`, safe beside a run that is still writing there."""
  options = ocp.CheckpointManagerOptions(
    read_only=True, create=False, cleanup_tmp_directories=False, save_interval_steps=0
  )
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(_not_read_only_notice)  # orbax warns that the folder is read-only, as asked.
  try:
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)
  finally:
    absl_logger.removeFilter(_not_read_only_notice)


def save(manager: ocp.CheckpointManager, step: int, train: Any, progress: dict[str, Any]) -> None:
  """Starts an asynchronous save of `train` (arrays) and `progress` (JSON) at `step`."""
  manager.save(
    step,
    args=ocp.args.Composite(train=ocp.args.StandardSave(train), progress=ocp.args.JsonSave(progress)),
    force=True,
  )


def restore_latest(
  manager: ocp.CheckpointManager, target: Any, step: int | None = None
) -> tuple[Any, dict[str, Any]] | None:
  """Restores the latest (or the given) checkpoint into the structure, shapes and shardings of `target`.

  The restore goes through an abstract target (`jax.ShapeDtypeStruct` leaves with
  `target`'s shardings), so a checkpoint written on any number of devices
  restores onto the current mesh.

  Args:
    manager: The checkpoint manager.
    target: A pytree of arrays or `jax.ShapeDtypeStruct`s (with shardings).
    step: The step to restore; None for the latest.

  Returns:
    `(train, progress)`, or None when there is no finished checkpoint.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(
    step,
    args=ocp.args.Composite(train=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()),
  )
  return restored["train"], restored["progress"]
