"""The deterministic autoencoders of the original codebase: AE (dense) and CAE (convolutional).

Both minimise a reconstruction loss averaged over pixels (config.loss: 'mse' or 'bce').
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ae_jax.models import layers
from ae_jax.models import objectives


class Autoencoder(nn.Module):
  """What the AE and the CAE share: their objective, given encode and decode."""

  PARTS = ()  # the objective's numbers in training, besides the loss

  def __call__(self, images, train: bool = False):
    latent = self.encode(images, train)
    return self.decode(latent, train), latent

  @property
  def loss_name(self) -> str:
    return self.loss

  def embed(self, images):
    """The representation of `images` that maps and probes use: the latent, in float32 whatever
    the model computes in (scikit-learn takes no bfloat16)."""
    return self.encode(images).astype(jnp.float32)

  def reconstruct(self, images):
    return self(images)[0]

  def objective(self, inputs, targets, train: bool = False):
    """(the per-example loss, {name: per-example number}): the reconstruction loss; in
    evaluation also the MSE, BCE and PSNR of the reconstruction."""
    reconstruction, _ = self(inputs, train)
    targets = layers.model_input(targets, self.image_shape)
    loss = objectives.LOSSES[self.loss](reconstruction, targets)
    return loss, {} if train else objectives.reconstruction_numbers(reconstruction, targets)


class AE(Autoencoder):
  """Flatten; Dense 256, ReLU, dropout; Dense 32, ReLU (the latent); and back, with a sigmoid."""
  image_shape: Sequence[int]
  hidden_dim: int = 256
  latent_dim: int = 32
  dropout_rate: float = 0.1
  loss: str = 'mse'
  axis_name: str | None = None  # the pmap axis, so that dropout masks match jit's.
  dtype: Any = jnp.float32

  FIELDS = ('model.hidden_dim', 'model.latent_dim', 'model.dropout_rate', 'loss')

  @classmethod
  def from_config(cls, config, image_shape, **kwargs):
    return cls(image_shape, hidden_dim=config.model.hidden_dim,
               latent_dim=config.model.latent_dim, dropout_rate=config.model.dropout_rate,
               loss=config.loss, **kwargs)

  def setup(self):
    dense = lambda features: nn.Dense(features, dtype=self.dtype)
    self.encoder_hidden = dense(self.hidden_dim)
    self.encoder_latent = dense(self.latent_dim)
    self.decoder_hidden = dense(self.hidden_dim)
    self.decoder_output = dense(math.prod(self.image_shape))
    self.dropout = layers.Dropout(self.dropout_rate, axis_name=self.axis_name)

  def encode(self, images, train: bool = False):
    images = layers.model_input(images, self.image_shape)
    x = images.reshape(images.shape[0], -1).astype(self.dtype)
    x = self.dropout(nn.relu(self.encoder_hidden(x)), train=train)
    return nn.relu(self.encoder_latent(x))

  @property
  def latent_shape(self) -> tuple[int]:
    return (self.latent_dim,)

  def decode(self, latent, train: bool = False):
    latent = layers.model_latents(latent, self.latent_shape)
    x = self.dropout(nn.relu(self.decoder_hidden(latent.astype(self.dtype))), train=train)
    x = nn.sigmoid(self.decoder_output(x).astype(jnp.float32))
    return x.reshape(latent.shape[0], *self.image_shape)


class ConvStack(nn.Module):
  """The CAE's layers: 3x3 conv + BatchNorm + ReLU encoder with two subsamplings; a
  transposed-conv decoder. For 28x28 images its feature map is 7x7x256. Sizes that are not
  multiples of 4 are decoded to the next multiple of 4 and cropped. `convs` says how the
  convolutions are computed: flax's layers by default; create_model gives it cpu_convs's
  formulation on CPUs."""
  image_shape: Sequence[int]
  features: Sequence[int] = (32, 64, 128, 256)
  convs: layers.Convs = layers.XLA_CONVS
  axis_name: str | None = None  # the pmap axis: BatchNorm statistics over the global batch.
  dtype: Any = jnp.float32

  @property
  def feature_shape(self) -> tuple[int, int, int]:
    """The encoder's output for one image: (H/4, W/4, features[-1]), rounded up."""
    height, width = self.image_shape[:2]
    return -(-height // 4), -(-width // 4), self.features[-1]

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    return self.feature_shape

  def setup(self):
    f1, f2, f3, f4 = self.features
    convs, dtype = self.convs, self.dtype
    # PyTorch's BatchNorm2d: momentum 0.1 there is 0.9 here, epsilon 1e-5.
    norm = lambda: nn.BatchNorm(momentum=0.9, epsilon=1e-5, axis=convs.layout.feature_axis,
                                axis_name=self.axis_name, dtype=dtype)
    self.encoder_convs = [convs.conv3x3(f, dtype=dtype) for f in (f1, f2, f3, f4)]
    self.encoder_norms = [norm() for _ in range(4)]
    self.decoder_convs = [convs.conv_transpose3x3(f3, dtype=dtype),
                          convs.conv_transpose2x2(f2, dtype=dtype),
                          convs.conv_transpose2x2(f1, dtype=dtype),
                          convs.conv_transpose3x3(self.image_shape[-1], dtype=dtype)]
    self.decoder_norms = [norm() for _ in range(3)]

  def encode(self, images, train: bool = False):
    layout = self.convs.layout
    x = layout.enter(layers.model_input(images, self.image_shape).astype(self.dtype))
    for i, (conv, norm) in enumerate(zip(self.encoder_convs, self.encoder_norms)):
      subsample = i >= 2  # after the third and the fourth convolution
      if subsample and not train:
        # BatchNorm with its running averages and ReLU act pixel by pixel, so the subsampling
        # can come first: the convolution then needs to compute only the pixels it keeps.
        x = nn.relu(norm(conv(x, subsample=True), use_running_average=True))
      else:
        x = nn.relu(norm(conv(x), use_running_average=not train))
        if subsample:
          x = layout.subsample(x)
    return layout.leave(x)

  def decode_logits(self, latent, train: bool = False):
    """The decoder before its sigmoid, cropped to the image shape."""
    layout = self.convs.layout
    x = layout.enter(latent.astype(self.dtype))
    for conv, norm in zip(self.decoder_convs[:-1], self.decoder_norms):
      x = nn.relu(norm(conv(x), use_running_average=not train))
    x = layout.leave(self.decoder_convs[-1](x).astype(jnp.float32))
    height, width = self.image_shape[:2]
    return x[:, :height, :width, :]

  def decode(self, latent, train: bool = False):
    return nn.sigmoid(self.decode_logits(layers.model_latents(latent, self.latent_shape), train))


class CAE(ConvStack, Autoencoder):
  """The convolutional autoencoder: ConvStack's encoder and decoder, its 7x7x256 feature map
  the latent."""
  loss: str = 'mse'

  FIELDS = ('model.features', 'model.conv', 'loss')

  @classmethod
  def from_config(cls, config, image_shape, **kwargs):
    return cls(image_shape, features=tuple(config.model.features), loss=config.loss, **kwargs)
