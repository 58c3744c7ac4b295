"""Most accurate recipe: four default CNNs trained side by side as one vmapped ensemble, probabilities averaged.

Command:
  python main.py --config=configs/best.py

Test accuracy over seeds 0, 1, 2: median 99.58 % (99.57-99.61 %), members 99.47-99.62 %; 18 min per
run on the 2-core CPU machine (AMD EPYC; no GPU), 2026-12-02. See README ("Configs").
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """The default recipe with four ensemble members."""
  config = default.get_config()
  config.ensemble_size = 4
  return config
