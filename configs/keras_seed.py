"""The classic Keras tutorial CNN, exactly: conv 32, pool, conv 64, pool, dense 128, dense 10 (225,034 parameters).

Adam at a constant 1e-3, batch 128, no dropout, no augmentation, 10 epochs.

Command:
  python main.py --config=configs/keras_seed.py

Test accuracy over seeds 0, 1, 2: median 99.11 % (98.99-99.18 %); 81 s per run on the 2-core CPU
machine (Intel Xeon, AVX-512 and AMX; no GPU), 2026-12-06. See README ("Configs").
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """The seed network and optimizer."""
  config = default.get_config()
  config.model.dropout_rate = 0.0
  config.learning_rate = 1e-3
  config.warmup_epochs = 0.0
  config.final_learning_rate_factor = 1.0
  config.augment_max_shift = 0
  config.num_epochs = 10
  return config
