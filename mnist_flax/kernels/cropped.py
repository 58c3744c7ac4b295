"""`models.CNN` convolving only the rows and columns that its 2x2 pools keep."""

import flax.linen as nn
import jax

from mnist_flax.core import models
from mnist_flax.kernels import patches


def pool_kept_side(side: int, reach: int) -> int:
  """The part of a VALID block's input side whose convolutions' outputs (reach `reach`) its 2x2 pool keeps."""
  return (side - reach) // 2 * 2 + reach


def used_input_sides(side: int, blocks: int, reach: int) -> list[int]:
  """The input side of each of `blocks` VALID blocks (conv reach `reach`, then a 2x2 pool) that the last pool uses.

  Cropped from the last block back: 28-pixel images in the default network give [26, 12].
  """
  used = []
  for _ in range(blocks):
    used.append(pool_kept_side(side, reach))
    side = (used[-1] - reach) // 2
  for i in reversed(range(blocks - 1)):
    used[i] = 2 * used[i + 1] + reach  # What the next block keeps of this block's output.
  return used


class CroppedCNN(models.CNN):
  """`models.CNN` that crops each VALID block's input to what its pool keeps: the same logits up to rounding.

  A block whose convolutions would leave an odd side (the default network's second block: 13 ->
  11) loses a row and a column of input first. With `pooled_image_block`, a block on single-channel
  input (the images) with one conv and no batch norm is one `patches.Conv(pool=True)`, its input
  cropped to what reaches the last block (the default network's image to 26x26).
  """

  pooled_image_block: bool = False

  def conv_blocks(self, x: jax.Array, train: bool) -> jax.Array:
    """The conv blocks, each on the part of its input that the later blocks use."""
    reach = self.convs_per_block * (self.kernel_size - 1)
    used = [used_input_sides(side, len(self.features), reach) for side in x.shape[1:3]]
    for block, features in enumerate(self.features):
      pooled = self.pooled_image_block and self.convs_per_block == 1 and not self.batch_norm and x.shape[-1] == 1
      if self.padding == "VALID":
        sides = [u[block] for u in used] if pooled else [pool_kept_side(s, reach) for s in x.shape[1:3]]
        x = x[:, : sides[0], : sides[1], :]
      if pooled:
        x = nn.relu(patches.Conv(features, self.kernel_size, self.padding, pool=True)(x))
      else:
        x = self.block(x, features, train)
    return x
