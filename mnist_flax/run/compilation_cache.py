"""JAX's persistent compilation cache: compiled programs kept on disk, so reruns skip compilation.

The folder is `config.runtime.compilation_cache` (default `$MNIST_FLAX_COMPILATION_CACHE`, else
`~/.cache/mnist_flax/jax`; "" turns it off).

A rerun, a resume, `evaluate`/`predict` and the test suite then load the programs an earlier
process compiled for the same computation, devices and flags (JAX's cache key), instead of
compiling them again. Entries are never invalidated by hand: JAX keys them by the program, the
jax/XLA version and the compile options. Delete the folder to reclaim its space.
"""

import contextlib
import math
import os
import time

import jax
from absl import logging
from jax.experimental.compilation_cache import compilation_cache

# Programs that compile faster than this are not worth a disk entry.
MIN_COMPILE_S = 0.1
# Marks when the entries were last checked for damage; entries older than it are not read again.
CHECKED_MARKER = ".checked"
# Entries this much older than the last check are read again too (coarse file-system clocks).
MTIME_SLACK_S = 2.0


def use(path: str) -> str | None:
  """Points this process's persistent compilation cache at `path` ("" turns it off).

  An unusable folder (not creatable, not writable) gives a warning and no cache: compiling
  without one is only slower.

  Returns:
    The absolute folder in use, or None when there is no cache.
  """
  folder = os.path.abspath(os.path.expanduser(path)) if path else None
  if folder:
    try:
      os.makedirs(folder, exist_ok=True)
      if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError("not writable")
    except OSError as e:
      logging.warning("Compiling without a cache: %s is unusable (%s).", folder, getattr(e, "strerror", None) or e)
      folder = None
  if folder != jax.config.jax_compilation_cache_dir:  # Once per folder and process, not at every call.
    if folder:
      _drop_unreadable_entries(folder)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    compilation_cache.reset_cache()  # JAX decides whether to use a cache at its first compilation.
  return folder


def _drop_unreadable_entries(folder: str) -> None:
  """Deletes entries that do not decompress (a process killed while writing one, a damaged disk).

  JAX writes entries in place and never replaces one, so a damaged entry would otherwise be
  reported and compiled again on every run. Entries are only compiled programs: nothing is lost.
  Only entries written since the folder was last checked are read (the time of that check is
  the modification time of `CHECKED_MARKER`), so a large cache costs nothing at each start.
  """
  try:
    from jax._src.compilation_cache import decompress_executable  # JAX's own entry format.
  except ImportError:  # Another JAX: leave the entries to JAX.
    return
  marker = os.path.join(folder, CHECKED_MARKER)
  started = time.time()
  try:
    since = os.stat(marker).st_mtime - MTIME_SLACK_S
  except OSError:
    since = -math.inf
  dropped = []
  with os.scandir(folder) as entries:
    for entry in entries:
      try:
        if not entry.name.endswith("-cache") or not entry.is_file() or entry.stat().st_mtime < since:
          continue
        with open(entry.path, "rb") as f:
          decompress_executable(f.read())
      except Exception:  # noqa: BLE001 - any failure to read or decompress means JAX cannot use it.
        with contextlib.suppress(OSError):
          os.remove(entry.path)
          dropped.append(entry.name)
  with contextlib.suppress(OSError):
    with open(marker, "a"):
      pass
    os.utime(marker, (started, started))
  if dropped:
    logging.warning(
      "Removed %d damaged entr%s from the compilation cache %s.",
      len(dropped),
      "y" if len(dropped) == 1 else "ies",
      folder,
    )
