"""Why a run stops early: a signal (`Interrupted`, after a checkpoint) or training gone wrong (`Diverged`)."""

import contextlib
import math
import os
import signal
import threading
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging

from mnist_flax.core.models import NUM_CLASSES


class Interrupted(Exception):
  """Training stopped on a signal after saving a checkpoint; `signum` is the signal (SIGTERM or SIGINT)."""

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.signum = int(signum)


class Diverged(FloatingPointError):
  """The training loss became NaN, infinite or exploded; no checkpoint was saved after that."""


# A chunk's mean training loss above this (ten times the loss of guessing uniformly among the
# classes, 23.0 for MNIST; an untrained network starts near 2.3) means training has blown up.
EXPLODED_LOSS = 10 * math.log(NUM_CLASSES)
# A test accuracy below this at the end of an epoch (guessing scores 10 %) means the network is not
# learning: a learning rate so high that every output collapses to one class, for example.
CHANCE_ACCURACY = 1.5 / NUM_CLASSES


def check_loss(loss: float, step: int) -> None:
  """Raises `Diverged` if the mean training loss up to `step` is NaN, infinite or exploded."""
  if not np.isfinite(loss) or loss > EXPLODED_LOSS:
    raise Diverged(
      f"the training loss is {loss:.4g} at step {step} (not finite or above {EXPLODED_LOSS:.1f}, ten times "
      "the loss of guessing); lower config.learning_rate. The checkpoints before it are kept"
    )


def check_accuracy(accuracy: float, epoch: int) -> None:
  """Raises `Diverged` if the test accuracy after `epoch` is at the level of guessing."""
  if accuracy < CHANCE_ACCURACY:
    raise Diverged(
      f"the test accuracy is {accuracy:.2%} after epoch {epoch}, no better than guessing (below "
      f"{CHANCE_ACCURACY:.0%}): the network is not learning; lower config.learning_rate, or set "
      "config.runtime.stop_at_chance=False to train on. The checkpoints before it are kept"
    )


def healthiest(losses: np.ndarray) -> float:
  """The lowest finite loss among ensemble members (NaN if none is finite): a run stops when all diverge."""
  finite = losses[np.isfinite(losses)]
  return float(finite.min()) if finite.size else float("nan")


@contextlib.contextmanager
def stop_requests() -> Iterator[threading.Event]:
  """Yields an event set by SIGTERM or SIGINT, so the loop can save and stop between chunks.

  The event's `signum` is the signal. With several processes, SIGTERM is left to JAX's preemption
  notifier, which tells every process (see `train.Run.stop_agreed`), and SIGINT is passed on to it
  as a SIGTERM. A second signal stops at once (KeyboardInterrupt).
  """
  event = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield event
    return
  several = jax.process_count() > 1

  def handler(signum, frame):
    del frame
    if event.is_set():
      raise KeyboardInterrupt
    logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
    event.signum = signum  # For the exit code, 128 + signum as shells report it.
    event.set()
    if several:
      os.kill(os.getpid(), signal.SIGTERM)

  handled = (signal.SIGINT,) if several else (signal.SIGTERM, signal.SIGINT)
  previous = {s: signal.signal(s, handler) for s in handled}
  try:
    yield event
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


@contextlib.contextmanager
def signals_raise(message: str) -> Iterator[None]:
  """SIGTERM and SIGINT raise `Interrupted(message)` inside the block (e.g. while the final plots are drawn)."""

  def stop(signum, frame):
    del frame
    raise Interrupted(message, signum)

  previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
