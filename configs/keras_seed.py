"""The classic Keras tutorial CNN, exactly: conv 32, pool, conv 64, pool, dense 128, dense 10 (225,034 parameters).

Adam at a constant 1e-3, batch 128, no dropout, no augmentation, 10 epochs.

Command:
  python main.py --config=configs/keras_seed.py

Test accuracy 99.09 % at seed 0; 12-15 s per epoch on the 2-core CPU machine (no GPU). See README ("Configs").
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
