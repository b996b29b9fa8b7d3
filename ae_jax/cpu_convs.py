"""The CAE's convolutions as matmuls: how they run fast on a CPU (config.model.conv = 'matmul',
what 'auto' picks on CPUs; models.create_model decides).

XLA:CPU runs convolutions inside a loop body very slowly (jax-ml/jax#12868: here a CAE step
took 80 s in lax.scan against 1.6 s outside) and its backward convolutions slowly everywhere,
while its matmuls run near the CPU's peak. These modules compute exactly what the flax layers
named in their docstrings compute, with the same parameters, as matmuls
(tests/test_models.py checks outputs and gradients).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def patches_3x3(x):
  """(B, H, W, C) -> (B, H, W, 9C): each pixel's zero-padded 3x3 neighbourhood, ordered
  (row, column, channel) like a flax kernel of shape (3, 3, C, features)."""
  height, width = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate([padded[:, dy:dy + height, dx:dx + width, :]
                          for dy in range(3) for dx in range(3)], axis=-1)


class MatmulConv3x3(nn.Module):
  """nn.Conv(features, (3, 3), padding='SAME') as one matmul over 3x3 patches (im2col).

  Also flax's nn.ConvTranspose(features, (3, 3), padding='SAME'): with stride 1 and no kernel
  transposition it computes the same correlation.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (3, 3, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return patches_3x3(x) @ kernel.reshape(-1, self.features) + bias


class MatmulConvTranspose2x2(nn.Module):
  """nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding='VALID') as a matmul per pixel
  followed by depth-to-space: each input pixel makes its own 2x2 block of the output."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (2, 2, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    batch, height, width, channels = x.shape
    # flax's transposed convolution uses the kernel flipped in space.
    weights = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(channels, 4 * self.features)
    y = (x @ weights).reshape(batch, height, width, 2, 2, self.features)
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(batch, 2 * height, 2 * width, self.features)
    return y + bias
