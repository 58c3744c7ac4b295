"""Faster ways for XLA:CPU to compute `models.CNN`, with the same parameters and the same results up to rounding.

Each is a drop-in for a Flax layer, swapped into the model by `cnn`; the tests hold each to Flax's
layers in values and gradients. Figures: the default network's training step on 2 cores of an
Intel Xeon (AVX-512, AMX), `python -m mnist_flax.tools.benchmark --config=configs/default.py
--config.runtime.conv_impl=IMPL` (each in its "auto" scan mode), 2026-12-06, two rounds each: 60 ms
with Flax's layers ("flax").

- `pooling.max_pool_2x2`: the 2x2 max pool with a gradient of elementwise selects, where
  `nn.max_pool`'s gradient is a select-and-scatter that XLA:CPU runs slowly, and
  `cropped.CroppedCNN`, which convolves only the rows and columns that the pools keep: together
  ("xla") 24 ms.
- `patches.Conv`: a convolution as one matrix product of the input's k x k patches ("patches"):
  19 ms; for two vmapped ensemble members 48 against 137 ms with XLA's convolutions, which XLA:CPU
  runs vmapped as grouped convolutions.
- `pooled.conv_max_pool`: the first block's conv and pool as one product of (k+1) x (k+1) windows,
  for single-channel images ("pooled"): 16 ms.

Which of them a run uses is decided in `mnist_flax.run.backend`.
"""

import flax.linen as nn
import ml_collections

from mnist_flax.core import models
from mnist_flax.kernels import cropped, patches, pooling

# "flax": the plain `models.CNN`; "xla": XLA's convolutions, cropped, with the fast pool gradient;
# "patches": patch products; "pooled": patch products with the image block as one pooled conv.
IMPLS = ("flax", "xla", "patches", "pooled")


def cnn(model_config: ml_collections.ConfigDict, impl: str) -> models.CNN:
  """The config's CNN with its convolutions computed as `impl` (one of `IMPLS`): the same parameter tree."""
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if impl == "flax":
    return models.create_model(model_config)
  return models.create_model(
    model_config,
    cropped.CroppedCNN,
    conv=nn.Conv if impl == "xla" else patches.Conv,
    pool=pooling.max_pool_2x2,
    pooled_image_block=impl == "pooled",
  )
