import os
from unittest import mock

import jax
import jax.numpy as jnp
import pytest

from mnist_flax.run import compilation_cache


@pytest.fixture(autouse=True)
def restore_the_session_cache():
  before = jax.config.jax_compilation_cache_dir
  yield
  compilation_cache.use(before or "")


@pytest.fixture
def events():
  seen = []
  jax.monitoring.register_event_listener(lambda name, **kwargs: seen.append(name))
  yield seen
  jax.monitoring.clear_event_listeners()


def program(x):
  for _ in range(30):  # Enough work to compile for more than a moment.
    x = jnp.sin(x) @ x.T
  return x


def test_a_second_compilation_of_the_same_program_is_read_from_disk(tmp_path, monkeypatch, events):
  monkeypatch.setattr(compilation_cache, "MIN_COMPILE_S", 0.0)
  assert compilation_cache.use(str(tmp_path / "cache")) == str(tmp_path / "cache")
  x = jnp.ones((8, 8))
  first = jax.jit(program)(x)
  entries = sorted(os.listdir(tmp_path / "cache"))
  assert any(name.endswith("-cache") for name in entries) and "/jax/compilation_cache/cache_hits" not in events
  jax.clear_caches()  # As a new process would start: nothing compiled in memory.
  second = jax.jit(program)(x)
  assert "/jax/compilation_cache/cache_hits" in events
  assert sorted(os.listdir(tmp_path / "cache")) == entries
  assert jnp.array_equal(first, second)


def test_an_empty_path_turns_it_off():
  assert compilation_cache.use("") is None
  assert jax.config.jax_compilation_cache_dir is None


def test_an_unusable_folder_warns_and_compiles_without_a_cache(tmp_path):
  (tmp_path / "file").write_text("")
  with mock.patch.object(compilation_cache.logging, "warning") as warning:
    assert compilation_cache.use(str(tmp_path / "file" / "cache")) is None
  assert "Compiling without a cache" in warning.call_args.args[0]
  assert jax.config.jax_compilation_cache_dir is None
  assert float(jax.jit(lambda x: x + 1)(1.0)) == 2.0


def test_damaged_entries_are_removed_and_compiled_again(tmp_path, monkeypatch):
  monkeypatch.setattr(compilation_cache, "MIN_COMPILE_S", 0.0)
  folder = str(tmp_path / "cache")
  compilation_cache.use(folder)
  x = jnp.ones((8, 8))
  expected = jax.jit(program)(x)
  entries = sorted(name for name in os.listdir(folder) if name.endswith("-cache"))
  for name in entries:  # As a process killed while writing them would leave them.
    with open(os.path.join(folder, name), "r+b") as f:
      f.truncate(20)
  compilation_cache.use("")
  jax.clear_caches()
  with mock.patch.object(compilation_cache.logging, "warning") as warning:
    compilation_cache.use(folder)
  assert f"Removed {len(entries)} damaged entries" in warning.call_args.args[0] % warning.call_args.args[1:]
  assert os.listdir(folder) == [compilation_cache.CHECKED_MARKER]
  assert jnp.array_equal(jax.jit(program)(x), expected)
  assert any(name.startswith("jit_program-") for name in os.listdir(folder))  # Written anew.


def test_only_entries_written_since_the_last_check_are_read(tmp_path, monkeypatch):
  folder = tmp_path / "cache"
  folder.mkdir()
  old, new = folder / "old-cache", folder / "new-cache"
  old.write_bytes(b"damaged long ago")
  (folder / compilation_cache.CHECKED_MARKER).touch()
  new.write_bytes(b"damaged since")
  checked = os.stat(folder / compilation_cache.CHECKED_MARKER).st_mtime
  os.utime(old, (checked - 10, checked - 10))
  os.utime(new, (checked + 10, checked + 10))
  with mock.patch.object(compilation_cache.logging, "warning") as warning:
    compilation_cache.use(str(folder))
  assert "Removed 1 damaged entry" in warning.call_args.args[0] % warning.call_args.args[1:]
  assert sorted(os.listdir(folder)) == [compilation_cache.CHECKED_MARKER, "old-cache"]
  assert os.stat(folder / compilation_cache.CHECKED_MARKER).st_mtime > checked
