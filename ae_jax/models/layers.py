"""What the models are built of: the images they take, random draws that do not depend on the
device layout, dropout, and the convolution layers a convolutional model is given (flax's own
here; cpu_convs.py has another formulation of the same functions)."""

import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax import UserError


def to_float(images):
  """uint8 images as the models compute on them: floats in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def model_input(images, image_shape):
  """`images` as a model computes on them: a batch of `image_shape` images, floats in [0, 1]
  (uint8 images are divided by 255, as training reads them). Checked when traced, so it costs
  a compiled function nothing; a UserError for what would otherwise give a wrong answer
  silently (0-255 integers, a dense model's pixels in another layout) or a flax traceback."""
  image_shape = tuple(image_shape)
  shape, (height, width, channels) = tuple(images.shape), image_shape
  if len(shape) != 4 or shape[1:] != image_shape:
    fixes = []
    colour = 'make them ' + ('grayscale' if channels == 1 else 'colour')
    if len(shape) == 3 and shape[:2] == (height, width) and shape[2] in (1, 3, 4):  # one image
      fixes = ['add the batch axis: images[None]'] + [colour] * (shape[2] != channels)
    elif shape == (height, width):  # one grayscale image
      fixes = ['add the batch and channel axes: images[None, ..., None]'] + [colour] * (
          channels != 1)
    elif len(shape) == 3 and shape[1:] == (height, width):  # grayscale images
      fixes = ['add the channel axis: images[..., None]'] + [colour] * (channels != 1)
    elif len(shape) == 2 and shape[1] == height * width * channels:
      fixes = [f'reshape them: images.reshape(-1, {height}, {width}, {channels})']
    elif len(shape) == 4:
      fixes = ([f'resize them to {height}x{width}'] * (shape[1:3] != (height, width))
               + [colour] * (shape[3] != channels))
    raise UserError(f'images of shape {shape}: the model takes a batch (N, {height}, {width}, '
                    f'{channels}) of the {height}x{width}x{channels} images it trained on; '
                    + (' and '.join(fixes) or 'give them that shape'))
  if images.shape[0] == 0:
    raise UserError('no images: the model takes a batch of at least one')
  if images.dtype == jnp.uint8:
    return to_float(images)
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise UserError(f'images of dtype {images.dtype}: the model takes floats in [0, 1] '
                    '(or uint8, which it divides by 255)')
  return images


def model_latents(latents, latent_shape):
  """`latents` as a model decodes them: a batch of `latent_shape` latents, floats (what embed
  gives). Checked when traced, like model_input: a UserError that names the fix, where flax
  would raise about a kernel's shape or reshape pixels wrongly."""
  latent_shape, shape = tuple(latent_shape), tuple(latents.shape)
  if len(shape) != len(latent_shape) + 1 or shape[1:] != latent_shape:
    dims = ', '.join(map(str, latent_shape))
    if shape == latent_shape:
      fix = 'add the batch axis: latents[None]'
    elif len(shape) == 2 and len(latent_shape) > 1 and shape[1] == math.prod(latent_shape):
      fix = f'reshape them: latents.reshape(-1, {dims})'  # encode.sh's, flattened
    else:
      fix = 'give them that shape'
    raise UserError(f'latents of shape {shape}: the model decodes a batch (N, {dims}) of the '
                    f'latents its embed gives; {fix}')
  if shape[0] == 0:
    raise UserError('no latents: the model decodes a batch of at least one')
  if not jnp.issubdtype(latents.dtype, jnp.floating):
    raise UserError(f'latents of dtype {latents.dtype}: the model decodes floats')
  return latents


def draw_for_global_batch(key, sampler, local_shape, axis_name):
  """Draws `sampler(key, shape)` for the whole global batch and returns this device's part.

  Under jit the draw for a sharded batch does not depend on the sharding, so jit on 8
  devices draws what one device draws. Under pmap each device sees only its part of the batch;
  drawing the global batch and slicing keeps pmap's noise, dropout masks and latent samples
  identical too.
  """
  if axis_name is None:
    return sampler(key, local_shape)
  num_devices = jax.lax.axis_size(axis_name)
  local_batch = local_shape[0]
  samples = sampler(key, (num_devices * local_batch, *local_shape[1:]))
  start = jax.lax.axis_index(axis_name) * local_batch
  return jax.lax.dynamic_slice_in_dim(samples, start, local_batch)


class Dropout(nn.Module):
  """Inverted dropout like nn.Dropout, with masks that do not depend on the device layout."""
  rate: float
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    if not train or self.rate == 0.0:
      return x
    keep = draw_for_global_batch(
        self.make_rng('dropout'),
        lambda key, shape: jax.random.bernoulli(key, 1.0 - self.rate, shape),
        x.shape, self.axis_name)
    return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)


# --- Convolution layers --------------------------------------------------------------------

class Layout(NamedTuple):
  """Where a convolutional model keeps the channels of its activations."""
  enter: Callable  # (B, H, W, C) images or latents -> this layout
  leave: Callable  # this layout -> (B, H, W, C)
  feature_axis: int
  subsample: Callable  # keeps every second pixel in each spatial direction


class Convs(NamedTuple):
  """How a convolutional model computes its layers: the model says what it computes, a Convs
  how. Each constructor takes (features, dtype=...) and makes a module with flax's parameters
  (a kernel of shape (size, size, in, out) and a bias) that maps activations in `layout`."""
  conv3x3: Callable[..., nn.Module]  # nn.Conv(features, (3, 3), padding='SAME'); called as
  #   conv(x, subsample=True) it returns only the pixels that layout.subsample keeps
  conv_transpose3x3: Callable[..., nn.Module]  # nn.ConvTranspose(features, (3, 3), 'SAME')
  conv_transpose2x2: Callable[..., nn.Module]  # nn.ConvTranspose(features, (2, 2), strides=2)
  layout: Layout
  compiler_options: Callable[[], dict]  # what a program running the model asks of XLA
  eval_batch_size: int | None  # the largest evaluation batch worth its memory; None: any


# Activations as flax keeps them, (batch, height, width, channels). subsample is the original's
# MaxPool2d(kernel_size=1, stride=2): it keeps every second pixel.
CHANNELS_LAST = Layout(enter=lambda x: x, leave=lambda x: x, feature_axis=-1,
                       subsample=lambda x: x[:, ::2, ::2, :])


class Conv3x3(nn.Conv):
  """nn.Conv(features, (3, 3), padding='SAME'), whose output can be subsampled as it is made."""
  kernel_size: Any = (3, 3)
  padding: Any = 'SAME'

  def __call__(self, x, subsample: bool = False):  # pylint: disable=arguments-differ
    y = super().__call__(x)
    return CHANNELS_LAST.subsample(y) if subsample else y


def _no_options() -> dict:
  return {}


# flax's layers, which XLA lowers to its convolutions (cuDNN's on NVIDIA GPUs).
XLA_CONVS = Convs(
    conv3x3=lambda features, dtype=jnp.float32: Conv3x3(features, dtype=dtype),
    conv_transpose3x3=lambda features, dtype=jnp.float32: nn.ConvTranspose(
        features, (3, 3), padding='SAME', dtype=dtype),
    conv_transpose2x2=lambda features, dtype=jnp.float32: nn.ConvTranspose(
        features, (2, 2), strides=(2, 2), padding='VALID', dtype=dtype),
    layout=CHANNELS_LAST, compiler_options=_no_options, eval_batch_size=None)
