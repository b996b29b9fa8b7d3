"""The autoencoders: AE (dense) and CAE (convolutional), each returning (reconstruction, latent).

Both take images of shape (batch, height, width, channels) with values in [0, 1], and learn
the image shape from the data: `image_shape` is given when the model is created.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax import UserError
from ae_jax import cpu_convs


def draw_for_global_batch(key, sampler, local_shape, axis_name):
  """Draws `sampler(key, shape)` for the whole global batch and returns this device's part.

  Under jit the draw for a sharded batch does not depend on the sharding, so jit on 8
  devices draws what one device draws. Under pmap each device sees only its part of the batch;
  drawing the global batch and slicing keeps pmap's noise and dropout masks identical too.
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


class AE(nn.Module):
  """Flatten; Dense 256, ReLU, dropout; Dense 32, ReLU (the latent); and back, with a sigmoid."""
  image_shape: Sequence[int]
  hidden_dim: int = 256
  latent_dim: int = 32
  dropout_rate: float = 0.1
  axis_name: str | None = None  # the pmap axis, so that dropout masks match jit's.
  dtype: Any = jnp.float32

  def setup(self):
    dense = lambda features: nn.Dense(features, dtype=self.dtype)
    self.encoder_hidden = dense(self.hidden_dim)
    self.encoder_latent = dense(self.latent_dim)
    self.decoder_hidden = dense(self.hidden_dim)
    self.decoder_output = dense(math.prod(self.image_shape))
    self.dropout = Dropout(self.dropout_rate, axis_name=self.axis_name)

  def encode(self, images, train: bool = False):
    x = images.reshape(images.shape[0], -1).astype(self.dtype)
    x = self.dropout(nn.relu(self.encoder_hidden(x)), train=train)
    return nn.relu(self.encoder_latent(x))

  def decode(self, latent, train: bool = False):
    x = self.dropout(nn.relu(self.decoder_hidden(latent)), train=train)
    x = nn.sigmoid(self.decoder_output(x).astype(jnp.float32))
    return x.reshape(latent.shape[0], *self.image_shape)

  def __call__(self, images, train: bool = False):
    latent = self.encode(images, train)
    return self.decode(latent, train), latent


# Activations as flax keeps them, (batch, height, width, channels). subsample is the original's
# MaxPool2d(kernel_size=1, stride=2): it keeps every second pixel.
CHANNELS_LAST = cpu_convs.Layout(enter=lambda x: x, leave=lambda x: x, feature_axis=-1,
                                 subsample=lambda x: x[:, ::2, ::2, :])


class CAE(nn.Module):
  """3x3 conv + BatchNorm + ReLU encoder with two subsamplings; a transposed-conv decoder.

  For 28x28 images the latent is 7x7x256. Sizes that are not multiples of 4 are decoded to the
  next multiple of 4 and cropped.
  """
  image_shape: Sequence[int]
  features: Sequence[int] = (32, 64, 128, 256)
  # 'xla': flax's Conv and ConvTranspose (cuDNN on GPUs); 'matmul': the same function with the
  # same parameters, computed as matmuls on channels-first activations (cpu_convs.py), fast on
  # CPUs. Latents and reconstructions are (batch, height, width, channels) either way.
  conv: str = 'matmul'
  axis_name: str | None = None  # the pmap axis: BatchNorm statistics over the global batch.
  dtype: Any = jnp.float32

  def setup(self):
    f1, f2, f3, f4 = self.features
    channels = self.image_shape[-1]
    if self.conv == 'matmul':
      conv = deconv3x3 = lambda features: cpu_convs.MatmulConv3x3(features, dtype=self.dtype)
      deconv2x2 = lambda features: cpu_convs.MatmulConvTranspose2x2(features, dtype=self.dtype)
    else:
      conv = lambda features: nn.Conv(features, (3, 3), padding='SAME', dtype=self.dtype)
      deconv3x3 = lambda features: nn.ConvTranspose(
          features, (3, 3), padding='SAME', dtype=self.dtype)
      deconv2x2 = lambda features: nn.ConvTranspose(
          features, (2, 2), strides=(2, 2), padding='VALID', dtype=self.dtype)
    # PyTorch's BatchNorm2d: momentum 0.1 there is 0.9 here, epsilon 1e-5.
    norm = lambda: nn.BatchNorm(momentum=0.9, epsilon=1e-5, axis=self.layout.feature_axis,
                                axis_name=self.axis_name, dtype=self.dtype)
    self.encoder_convs = [conv(f) for f in (f1, f2, f3, f4)]
    self.encoder_norms = [norm() for _ in range(4)]
    self.decoder_convs = [deconv3x3(f3), deconv2x2(f2), deconv2x2(f1), deconv3x3(channels)]
    self.decoder_norms = [norm() for _ in range(3)]

  @property
  def layout(self) -> cpu_convs.Layout:
    return cpu_convs.CHANNELS_FIRST if self.conv == 'matmul' else CHANNELS_LAST

  def encode(self, images, train: bool = False):
    x = self.layout.enter(images.astype(self.dtype))
    for i, (conv, norm) in enumerate(zip(self.encoder_convs, self.encoder_norms)):
      subsample = i >= 2  # after the third and the fourth convolution
      if subsample and not train and self.conv == 'matmul':
        # BatchNorm with its running averages and ReLU act pixel by pixel: the convolution
        # computes only the pixels that the subsampling keeps, a quarter of its work.
        x = nn.relu(norm(conv(x, stride=2), use_running_average=True))
      else:
        x = nn.relu(norm(conv(x), use_running_average=not train))
        if subsample:
          x = self.layout.subsample(x)
    return self.layout.leave(x)

  def decode(self, latent, train: bool = False):
    x = self.layout.enter(latent)
    for conv, norm in zip(self.decoder_convs[:-1], self.decoder_norms):
      x = nn.relu(norm(conv(x), use_running_average=not train))
    x = self.layout.leave(nn.sigmoid(self.decoder_convs[-1](x).astype(jnp.float32)))
    height, width = self.image_shape[:2]
    return x[:, :height, :width, :]

  def __call__(self, images, train: bool = False):
    latent = self.encode(images, train)
    return self.decode(latent, train), latent


MODELS = {'AE': AE, 'CAE': CAE}


def create_model(model_config, image_shape, *, axis_name=None, dtype=jnp.float32) -> nn.Module:
  """The model named by `model_config.name`, for images of `image_shape` (H, W, C)."""
  name = model_config.name
  if name not in MODELS:
    raise UserError(
        f'unknown model {name!r}: config.model.name must be one of {", ".join(MODELS)}')
  image_shape = tuple(int(d) for d in image_shape)
  if name == 'AE':
    return AE(image_shape, hidden_dim=model_config.hidden_dim,
              latent_dim=model_config.latent_dim, dropout_rate=model_config.dropout_rate,
              axis_name=axis_name, dtype=dtype)
  return CAE(image_shape, features=tuple(model_config.features), conv=conv_kind(model_config),
             axis_name=axis_name, dtype=dtype)


def conv_kind(model_config) -> str:
  """How the CAE computes its convolutions: config.model.conv, with 'auto' the matmuls of
  cpu_convs.py on CPUs and XLA's convolutions elsewhere. The one place that chooses."""
  if model_config.conv != 'auto':
    return model_config.conv
  return 'matmul' if jax.default_backend() == 'cpu' else 'xla'


def compiler_options(model: nn.Module) -> dict:
  """What a program that runs `model` asks of XLA: for the CAE on CPUs, its older fusion
  emitters, which compile it sooner and run it as fast.

  With them XLA:CPU compiled the CAE's update in 3.1-3.3 s instead of 4.7 s, which ran as fast
  (0.66-0.80 s a step either way) and evaluated as fast (905-949 images/s against 942-999);
  2 cores, jax 0.10. Not for the AE: with them it trained at 50,000-52,000 images/s instead of
  61,000-65,000 (the DAE at 39,000-40,000 instead of 45,000-47,000) and evaluated at
  97,000-105,000 instead of 163,000-180,000. Only for the jax version where that was measured:
  an XLA without the option would refuse every program.
  """
  if (not isinstance(model, CAE) or jax.default_backend() != 'cpu'
      or jax.__version_info__[:2] != (0, 10)):
    return {}
  return {'xla_cpu_use_fusion_emitters': False}


def compile_once_options(model: nn.Module) -> dict:
  """compiler_options(model) for code that runs once, which needs no optimizing: XLA:CPU
  compiles the CAE's init in 0.7 s instead of 2.9 s at level 0, and runs it in 0.05 s instead
  of 0.01 s."""
  return {**compiler_options(model), 'xla_backend_optimization_level': 0}


def init_variables(model: nn.Module, rng) -> dict:
  """The model's variables ({'params': ..., 'batch_stats': ...}) for one dummy batch.

  Jit it (with compile_once_options(model)) or call it inside a jitted function.
  """
  dummy = jnp.zeros((1, *model.image_shape), jnp.float32)
  variables = model.init({'params': rng}, dummy, train=False)
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
