"""The seed tutorials' Keras CNN, exactly: conv3x3x32 VALID, pool, conv3x3x64 VALID, pool, dense 128, dense 10.

225,034 parameters; Adam at a constant 1e-3, batch 128, no dropout, no augmentation. The
yardstick for speed against the same network in Keras (`../shared/peers/keras_seed_cnn.py`).

Command:
  python main.py --config=configs/keras_seed.py

Measured on the 2-core CPU machine (no GPU; jax 0.10.2, flax 0.12.8), seed 0: test accuracy
99.09 % after 10 epochs (2026-12-02, 16:31 UTC; 12.2-14.9 s per epoch). Side by side with the Keras
peer, 4 epochs each, alternating rounds (`--config.num_epochs=4`), medians of epochs 2-4
(mnist-flax's with the 10,000-image evaluation, and without it: `epoch_s - eval_s`), on an Intel
Xeon with AVX-512 and AMX: each batch as 4 micro-batches, three rounds on 2026-12-03 at 05:35-05:43
UTC, 15.8 s (training alone 15.12 s) against 17.80 s for Keras, 0.89x (0.85x; by round 1.03x, 1.01x,
0.72x), at 03:49-04:01 UTC 19.82 s (19.02 s) against 20.89 s, 0.95x (0.91x), and at 03:10-03:24
UTC with the machine shared and slow, 24.9 s (23.5 s) against 39.51 s, 0.63x (0.59x); with one
slice per batch, three rounds on 2026-12-02 at 20:36-20:44 UTC, 15.84 s (15.15 s) against 15.27 s,
1.04x (0.99x). On an AMD EPYC with AVX-512, four rounds each time, at 16:47-16:58 UTC 13.03 s
against 12.29 s, 1.06x, and before the first block was one pooled convolution (13:41-15:21 UTC)
16.10 s against 13.70 s, 1.18x. See README ("Results").
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """The seed network and optimizer."""
  config = default.get_config()
  config.model.features = (32, 64)
  config.model.convs_per_block = 1
  config.model.padding = "VALID"
  config.model.dense_features = (128,)
  config.model.dropout_rate = 0.0
  config.learning_rate = 1e-3
  config.warmup_epochs = 0.0
  config.final_learning_rate_factor = 1.0
  config.augment_max_shift = 0
  config.num_epochs = 10
  return config
