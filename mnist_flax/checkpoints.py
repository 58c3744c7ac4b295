"""Orbax checkpoints: the train pytree (state and running epoch metrics) plus JSON progress."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def create_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
  """An asynchronous `CheckpointManager` in `<workdir>/checkpoints` keeping the last `max_to_keep`."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    create=True,
    cleanup_tmp_directories=True,
    enable_async_checkpointing=True,
  )
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def save(manager: ocp.CheckpointManager, step: int, train: Any, progress: dict[str, Any]) -> None:
  """Starts an asynchronous save of `train` (arrays) and `progress` (JSON) at `step`."""
  manager.save(
    step,
    args=ocp.args.Composite(train=ocp.args.StandardSave(train), progress=ocp.args.JsonSave(progress)),
    force=True,
  )


def restore_latest(manager: ocp.CheckpointManager, target: Any) -> tuple[Any, dict[str, Any]] | None:
  """Restores the latest checkpoint into the structure, shapes and shardings of `target`.

  The restore goes through an abstract target (`jax.ShapeDtypeStruct` leaves with
  `target`'s shardings), so a checkpoint written on any number of devices
  restores onto the current mesh.

  Returns:
    `(train, progress)`, or None when there is no finished checkpoint.
  """
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(
    step,
    args=ocp.args.Composite(train=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()),
  )
  return restored["train"], restored["progress"]
