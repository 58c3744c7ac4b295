"""One device mesh with a data axis (batches split along it, everything else replicated), and processes agreeing."""

from collections.abc import Callable
from typing import TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mnist_flax.errors import UsageError

DATA_AXIS = "data"
T = TypeVar("T")


def create_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, with the axis `"data"`."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) dimension across the data axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def put_replicated(tree, mesh: Mesh):
  """Copies host numpy arrays, identical on every process, to every device."""
  sharding = replicated(mesh)

  def put(x: np.ndarray) -> jax.Array:
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def failed_processes(failed: bool) -> list[int]:
  """The indices of the processes whose `failed` is true; with several processes, all must call it together."""
  if jax.process_count() == 1:
    return [0] if failed else []
  flags = multihost_utils.process_allgather(np.int32(failed))
  return [int(i) for i in np.flatnonzero(flags)]


def process_0_says(flag: bool) -> bool:
  """Process 0's `flag`, on every process (all must call it together)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def fail_together(action: Callable[[], T], turn: bool) -> T | None:
  """`action()` where `turn` is true; if it raises `UsageError` in any process, every process raises one.

  So that no process waits forever for one that stopped. All processes must call it together.

  Raises:
    UsageError: this process's own error, or one naming the process that failed.
  """
  result, error = None, None
  if turn:
    try:
      result = action()
    except UsageError as e:
      error = e
  failed = failed_processes(error is not None)
  if error is not None:
    raise error
  if failed:
    raise UsageError(f"process {failed[0]} could not start (its output says why)")
  return result
