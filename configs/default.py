"""Default recipe: the seed CNN with dropout, +-2 px random shifts and a warm-up + cosine Adam schedule.

Command:
  python main.py --config=configs/default.py

Test accuracy over seeds 0, 1, 2: median 99.51 % (99.45-99.61 %); 2 min 16 s per run (median) on the
2-core CPU machine (Intel Xeon, AVX-512 and AMX; no GPU), 2026-12-06. See README ("Configs").
"""

import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The default recipe (what changes results), then `runtime` (how it runs)."""
  config = ml_collections.ConfigDict()

  # The network: a factory "package.module:callable" and its keyword arguments (mnist_flax/core/networks.py).
  config.model = ml_collections.ConfigDict()
  config.model.factory = "mnist_flax.core.models:CNN"
  config.model.features = (32, 64)
  config.model.kernel_size = 3
  config.model.padding = "VALID"
  config.model.convs_per_block = 1
  config.model.batch_norm = False  # After each conv and hidden dense layer.
  config.model.dense_features = (128,)
  config.model.dropout_rate = 0.25

  config.seed = 0
  config.num_epochs = 15
  config.batch_size = 128
  config.learning_rate = 3e-3  # Peak of the schedule.
  config.warmup_epochs = 1.0
  config.final_learning_rate_factor = 0.01
  # Random translation of each training image by up to this many pixels.
  config.augment_max_shift = 2
  # Random rotation by up to this many degrees, scaling by a factor in [1 - s, 1 + s], and elastic
  # distortion (uniform noise in [-1, 1] blurred by a Gaussian of sigma pixels, times alpha), applied
  # before the shift; 0 = none.
  config.augment_max_rotation = 0.0
  config.augment_max_scale = 0.0
  config.augment_elastic_alpha = 0.0
  config.augment_elastic_sigma = 4.0
  # Members trained side by side as one vmapped state, each with its own initialisation and dropout
  # keys; evaluation reports each member and the ensemble (the mean of their probabilities).
  # member_learning_rates sweeps the schedule's peak instead, one rate per member.
  config.ensemble_size = 1
  config.member_learning_rates = ()
  # "shared": every member trains on the same batches; "own": each its own order and augmentation.
  config.member_batches = "shared"

  # How the run executes: none of this changes the trained model beyond float rounding, except
  # microbatches, whose slices draw their own dropout masks. A run resumes with any of it changed.
  config.runtime = runtime = ml_collections.ConfigDict()
  # How the convolutions are computed (mnist_flax/kernels): "flax" (Flax's layers), "xla", "patches",
  # "pooled", or "auto" (the fastest measured for the backend; mnist_flax/run/backend.py).
  runtime.conv_impl = "auto"
  # Slices of each batch whose gradients a train step computes separately and averages (0 = auto).
  runtime.microbatches = 0
  # Train steps per host-to-device dispatch (0 = auto: about 16 on CPU, the whole epoch on GPU/TPU).
  runtime.steps_per_dispatch = 0
  # A dispatch's steps as a lax.scan loop ("rolled"), all in the program ("unrolled"), or "auto".
  runtime.scan = "auto"
  runtime.eval_batch_size = 200  # About 200 runs the forward pass fastest on CPU.
  runtime.checkpoint_every_steps = 1000
  runtime.keep_checkpoints = 3
  # Stop when an epoch ends with the test accuracy at the level of guessing (the network is not learning).
  runtime.stop_at_chance = True
  # Where compiled programs are kept for later runs ("" = off).
  runtime.compilation_cache = os.environ.get("MNIST_FLAX_COMPILATION_CACHE", "~/.cache/mnist_flax/jax")
  # tfds data dir ("" = $TFDS_DATA_DIR or ~/tensorflow_datasets) and a folder holding the four
  # original MNIST files, to prepare the dataset offline.
  runtime.data_dir = ""
  runtime.manual_dir = os.environ.get("MNIST_MANUAL_DIR", "")
  return config
