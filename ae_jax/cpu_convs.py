"""The CAE's convolutions as matmuls over channels-first activations: how they run fast on a CPU
(config.model.conv = 'matmul', what 'auto' picks on CPUs; models.conv_kind decides).

XLA:CPU runs convolutions inside a loop body very slowly (jax-ml/jax#12868: here a CAE step
took 80 s in lax.scan against 1.6 s outside) and its backward convolutions slowly everywhere,
while its matmuls run near the CPU's peak. These modules compute exactly what the flax layers
named in their docstrings compute, with the same parameters, as matmuls
(tests/test_models.py checks outputs and gradients).

Activations are (channels, batch, height, width) here: each convolution is then `weights @
patches` with the long batch*height*width axis last and contiguous in every operand, which ran a
CAE training step in 0.82-0.87 s against 0.93-0.96 s for the same matmuls on (batch, height,
width, channels) activations (2 CPU cores, huge pages). models.CAE moves the channels axis once on
the way in and once on the way out (CHANNELS_FIRST).
"""

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax.numpy as jnp


class Layout(NamedTuple):
  """Where a CAE keeps the channels of its activations."""
  enter: Callable  # (B, H, W, C) images or latents -> this layout
  leave: Callable  # this layout -> (B, H, W, C)
  feature_axis: int
  subsample: Callable  # keeps every second pixel in each spatial direction


CHANNELS_FIRST = Layout(
    enter=lambda x: jnp.moveaxis(x, -1, 0), leave=lambda x: jnp.moveaxis(x, 0, -1),
    feature_axis=0, subsample=lambda x: x[:, :, ::2, ::2])


# A 3x3 kernel's taps in a flax kernel's (row, column) order.
OFFSETS = [(dy, dx) for dy in range(3) for dx in range(3)]


def _window(padded, offset, height, width):
  """The (height, width) window at `offset` of a 1-pixel padded (..., H + 2, W + 2) array."""
  dy, dx = offset
  return padded[..., dy:dy + height, dx:dx + width]


def conv3x3(x, kernel):
  """(C, B, H, W) -> (F, B, H, W): the zero-padded 3x3 correlation of nn.Conv(padding='SAME')
  with a flax kernel of shape (3, 3, C, F), without the bias."""
  channels, batch, height, width = x.shape
  features = kernel.shape[-1]
  padded = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  taps = kernel.reshape(9, channels, features)
  if 4 * features <= channels:
    # Few output channels (the CAE's last layer, 32 -> 1): multiply every padded pixel by the
    # nine taps and add the nine shifted planes. That takes (H+2)(W+2)/HW times the multiplies
    # of patches, but writes and reads 9F planes where patches take 9C: the CAE's 32 -> 1
    # layer on a batch of 128 took 0.029 s forward and backward instead of 0.115 s.
    planes = taps.transpose(0, 2, 1).reshape(9 * features, channels) @ padded.reshape(
        channels, -1)
    planes = planes.reshape(9, features, batch, height + 2, width + 2)
    return sum(_window(planes[k], offset, height, width) for k, offset in enumerate(OFFSETS))
  # im2col: (9, C, B, H, W)
  patches = jnp.stack([_window(padded, offset, height, width) for offset in OFFSETS])
  y = taps.reshape(9 * channels, features).T @ patches.reshape(9 * channels, -1)
  return y.reshape(features, batch, height, width)


def conv_transpose2x2(x, kernel):
  """(C, B, H, W) -> (F, B, 2H, 2W): nn.ConvTranspose(strides=(2, 2), padding='VALID') with a
  flax kernel of shape (2, 2, C, F), without the bias. Each input pixel makes its own 2x2 block
  of the output: one matmul, then depth-to-space."""
  channels, batch, height, width = x.shape
  features = kernel.shape[-1]
  # flax's transposed convolution uses the kernel flipped in space.
  weights = kernel[::-1, ::-1].transpose(0, 1, 3, 2).reshape(4 * features, channels)
  y = (weights @ x.reshape(channels, -1)).reshape(2, 2, features, batch, height, width)
  return y.transpose(2, 3, 4, 0, 5, 1).reshape(features, batch, 2 * height, 2 * width)


def _params(module: nn.Module, x, size: int):
  """(x, kernel, bias) in the module's dtype: flax's Conv / ConvTranspose parameters, a kernel
  of shape (size, size, C, features) and a bias, for channels-first `x`."""
  kernel = module.param('kernel', nn.initializers.lecun_normal(),
                        (size, size, x.shape[0], module.features))
  bias = module.param('bias', nn.initializers.zeros_init(), (module.features,))
  return nn.dtypes.promote_dtype(x, kernel, bias, dtype=module.dtype)


class MatmulConv3x3(nn.Module):
  """nn.Conv(features, (3, 3), padding='SAME') on channels-first activations.

  Also flax's nn.ConvTranspose(features, (3, 3), padding='SAME'): with stride 1 and no kernel
  transposition it computes the same correlation.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x, kernel, bias = _params(self, x, size=3)
    return conv3x3(x, kernel) + bias[:, None, None, None]


class MatmulConvTranspose2x2(nn.Module):
  """nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding='VALID') on channels-first
  activations."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x, kernel, bias = _params(self, x, size=2)
    return conv_transpose2x2(x, kernel) + bias[:, None, None, None]
