"""Most accurate recipe: an ensemble of default CNNs trained side by side in one vmapped program.

Four members of the default recipe (dropout, +-2 px shifts, warm-up + cosine Adam), each with its own
initialisation and dropout keys, trained together on the same batches for 15 epochs; the prediction is
the mean of the members' class probabilities.

Command:
  python main.py --config=configs/best.py

Measured on the 2-core CPU machine (AMD EPYC with AVX-512, no GPU; jax 0.10.2, flax 0.12.8), data
prepared, 2026-12-02 from 14:11 UTC: test accuracy over seeds 0, 1, 2: 99.57, 99.61, 99.58 %, median
99.58 % (99.57-99.61 %); members 99.48-99.53, 99.53-99.62 and 99.47-99.57 %; 65-82 s per epoch;
whole command 17 min 52 s, 18 min 1 s and 17 min 59 s (median 17 min 59 s). On the CPU of 05:59 UTC
that day: 99.58 % at seed 0, 23 min 30 s. On an Intel Xeon with AVX-512 and AMX at 20:57 UTC (the
same program): 99.57 % at seed 0, members 99.48-99.53 %, 83-91 s per epoch, 21 min 58 s.

Short of the 99.75 % aimed for. README ("Accuracy") lists what else was tried: eight members
(99.67 % at seed 0, 99.58 % at seed 1 in 36 min), rotations and scaling, elastic distortions, batch norm,
wider and deeper members, each member its own batches, longer schedules, test-time shifts; none
lifts a member of this size far enough, and averaging 20 finished networks gives 99.70 %.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """The default recipe with four ensemble members."""
  config = default.get_config()
  config.ensemble_size = 4
  return config
