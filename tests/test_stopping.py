import os
import signal

import pytest

from mnist_flax.run import stopping


def test_check_loss_stops_nan_infinite_and_exploded_losses():
  stopping.check_loss(2.3, 10)
  stopping.check_loss(stopping.EXPLODED_LOSS, 10)
  for loss in (float("nan"), float("inf"), stopping.EXPLODED_LOSS * 1.01, 2.7e21):
    with pytest.raises(stopping.Diverged, match="at step 10"):
      stopping.check_loss(loss, 10)


def test_check_accuracy_stops_at_the_level_of_guessing():
  stopping.check_accuracy(stopping.CHANCE_ACCURACY, 1)
  stopping.check_accuracy(0.97, 1)
  for accuracy in (0.0, 0.098, 0.1135, stopping.CHANCE_ACCURACY - 1e-6):
    with pytest.raises(stopping.Diverged, match="after epoch 3, no better than guessing"):
      stopping.check_accuracy(accuracy, 3)


def test_a_signal_inside_signals_raise_is_interrupted_with_its_number():
  with pytest.raises(stopping.Interrupted, match="plots are not written") as e:
    with stopping.signals_raise("plots are not written"):
      os.kill(os.getpid(), signal.SIGTERM)
  assert e.value.signum == signal.SIGTERM


def test_stop_requests_sets_the_event_and_restores_the_handlers():
  before = signal.getsignal(signal.SIGINT)
  with stopping.stop_requests() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.is_set() and stop.signum == signal.SIGINT
  assert signal.getsignal(signal.SIGINT) is before
