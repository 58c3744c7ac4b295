"""mnist-flax: train Flax CNNs on MNIST with pure, jitted, sharded steps."""

from mnist_flax.errors import UsageError
from mnist_flax.inference import Predictor, load_checkpoint
from mnist_flax.models import CNN, create_model
from mnist_flax.steps import eval_step, train_step
from mnist_flax.train import train_and_evaluate
from mnist_flax.train_state import TrainState, create_optimizer, create_train_state

__all__ = [
  "CNN",
  "Predictor",
  "TrainState",
  "UsageError",
  "create_model",
  "create_optimizer",
  "create_train_state",
  "eval_step",
  "load_checkpoint",
  "train_and_evaluate",
  "train_step",
]
