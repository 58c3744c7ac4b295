"""Faster ways for XLA:CPU to compute `models.CNN`, with the same parameters and the same results up to rounding.

Each is a drop-in for a Flax layer, swapped into the model by `cnn`; the tests hold each to Flax's
layers in values and gradients. Figures: time per training step, with the kernel against without,
measured side by side on the 2-core CPU machine (Intel Xeon, AVX-512).

- `pooling.max_pool_2x2`: the 2x2 max pool with a gradient of elementwise selects, where
  `nn.max_pool`'s gradient is a select-and-scatter that XLA:CPU runs slowly: 0.78-0.80x for the
  default network.
- `patches.Conv`: a convolution as one matrix product of the input's k x k patches: 0.78-0.82x for
  the seed network, 0.28x for four vmapped ensemble members (XLA:CPU runs a vmapped convolution as
  a grouped one).
- `pooled.conv_max_pool`: the first block's conv and pool as one product of (k+1) x (k+1) windows,
  for single-channel images: 1.15-1.2x faster again than `patches.Conv` for one model.
- `cropped.CroppedCNN`: convolves only the rows and columns that the pools keep (VALID padding):
  0.90-0.94x for the default network.

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
