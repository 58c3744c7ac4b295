"""Orbax checkpoints: the train pytree (state and running epoch metrics) plus JSON progress."""

import contextlib
import datetime
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from mnist_flax.errors import UsageError

CHECKPOINT_DIR = "checkpoints"
# Unreadable checkpoints are moved here (never deleted) when a newer readable one cannot be found.
DAMAGED_DIR = "damaged_checkpoints"


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


class WriteError(UsageError):
  """A checkpoint could not be written (disk full, read-only or unwritable folder)."""


def _write_error(manager: ocp.CheckpointManager, e: Exception) -> WriteError:
  text = " ".join(str(e).split())
  reason = next(
    (r for r in ("No space left on device", "Permission denied", "Read-only file system") if r in text),
    getattr(e, "strerror", None) or _reason(e),
  )
  return WriteError(
    f"cannot write a checkpoint in {manager.directory}: {reason}; the earlier checkpoints and records are kept, "
    "rerun the same command once it can be written"
  )


def save(manager: ocp.CheckpointManager, step: int, train: Any, progress: dict[str, Any]) -> None:
  """Starts an asynchronous save of `train` (arrays) and `progress` (JSON) at `step`.

  Raises:
    WriteError: this save, or the previous asynchronous one, failed to write.
  """
  try:
    manager.save(
      step,
      args=ocp.args.Composite(train=ocp.args.StandardSave(train), progress=ocp.args.JsonSave(progress)),
      force=True,
    )
  except Exception as e:  # noqa: BLE001 - orbax reports write failures with many types.
    raise _write_error(manager, e) from e


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for the last asynchronous save and closes the manager.

  Raises:
    WriteError: the last save failed to write.
  """
  try:
    manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001 - as in `save`.
    with contextlib.suppress(Exception):  # Closing reports the same failure again.
      manager.close()
    raise _write_error(manager, e) from e
  manager.close()


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


def _reason(e: BaseException, limit: int = 200) -> str:
  """An exception as one short line."""
  text = " ".join(str(e).split()) or type(e).__name__
  return text if len(text) <= limit else text[: limit - 3] + "..."


def move_aside(workdir: str, step: int) -> str:
  """Moves `<workdir>/checkpoints/<step>` to `<workdir>/damaged_checkpoints/<step>-<time>`; returns the new path."""
  folder = os.path.join(os.path.abspath(workdir), DAMAGED_DIR)
  os.makedirs(folder, exist_ok=True)
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
  destination = os.path.join(folder, f"{step}-{stamp}")
  os.rename(os.path.join(checkpoint_dir(workdir), str(step)), destination)
  return destination


def restore_newest_readable(
  manager: ocp.CheckpointManager, target: Any, workdir: str, move: bool = True
) -> tuple[Any, dict[str, Any]] | None:
  """Restores the newest checkpoint that can be read, setting aside newer damaged ones.

  Every checkpoint newer than the one restored is unreadable (truncated or missing files,
  damaged metadata or progress, no commit marker, ...): each is moved to
  `<workdir>/damaged_checkpoints/` with a one-line warning saying why, so that the run
  resumes from the restored step and saves anew after it.

  Args:
    manager: The checkpoint manager of `<workdir>/checkpoints`.
    target: As for `restore_latest`.
    workdir: The run folder.
    move: Whether this process moves the damaged checkpoints (the first process of a run; not
      a reader such as `evaluate`, which only skips them).

  Returns:
    `(train, progress)` of the newest readable checkpoint, or None when there is none at all.

  Raises:
    UsageError: there are checkpoints but none can be restored (nothing is moved then).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      restored = restore_latest(manager, target, step)
    except Exception as e:  # noqa: BLE001 - orbax reports damage with many exception types.
      failures.append((step, _reason(e)))
      continue
    for bad_step, reason in failures:
      done = f"moved it to {move_aside(workdir, bad_step)}" if move else "skipped it"
      message = "The checkpoint at step %d is unreadable (%s); %s, using step %d."
      absl_logging.warning(message, bad_step, reason, done, step)
    if failures and move:
      manager.reload()
    return restored
  if failures:
    step, reason = failures[0]
    raise UsageError(
      f"none of the {len(steps)} checkpoints in {checkpoint_dir(workdir)} can be restored; the newest, step {step}: "
      f"{reason}"
    )
  return None
