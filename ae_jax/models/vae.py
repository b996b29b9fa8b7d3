"""Variational autoencoders (Kingma and Welling, 2014): VAE (dense) and ConvVAE (the CAE's
layers around a dense Gaussian latent), with beta-VAE's weight on the KL term (Higgins et al.,
2017).

The encoder gives a diagonal Gaussian posterior q(z|x) = N(mean, exp(logvar)); the prior is
N(0, I); the decoder gives the logits of the pixels, read as Bernoulli probabilities or as the
sigmoid mean of unit-variance Gaussians (config.model.likelihood). A model minimises
reconstruction + beta * KL per image; at beta = 1 that is the negative ELBO, in nats.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax.models import autoencoders
from ae_jax.models import layers
from ae_jax.models import objectives


class VariationalAutoencoder(nn.Module):
  """What the VAE and the ConvVAE share, given encode -> (mean, logvar) and decode_logits."""

  PARTS = ('nelbo', 'reconstruction', 'kl')  # the objective's numbers, besides the loss

  def __call__(self, images, train: bool = False):
    """(the reconstruction of the posterior mean, the posterior mean): deterministic."""
    mean, _ = self.encode(images, train)
    return self.decode(mean, train), mean

  @property
  def latent_shape(self) -> tuple[int]:
    return (self.latent_dim,)

  def decode(self, latent, train: bool = False):
    return nn.sigmoid(self.decode_logits(layers.model_latents(latent, self.latent_shape), train))

  @property
  def loss_name(self) -> str:
    return 'nelbo' if self.beta == 1 else f'reconstruction + {self.beta:g} kl'

  def embed(self, images):
    """The representation of `images` that maps and probes use: the posterior mean."""
    return self.encode(images)[0]

  def reconstruct(self, images):
    return self(images)[0]

  def sample_latent(self, mean, logvar):
    """z ~ N(mean, exp(logvar)) by the reparameterization trick, from the 'latent' rng."""
    eps = layers.draw_for_global_batch(self.make_rng('latent'), jax.random.normal, mean.shape,
                                       self.axis_name)
    return mean + jnp.exp(0.5 * logvar) * eps

  def objective(self, inputs, targets, train: bool = False):
    """(reconstruction + beta * KL, its parts) per image, with one sample of z; in evaluation
    also the MSE, BCE and PSNR of the posterior mean's reconstruction."""
    mean, logvar = self.encode(inputs, train)
    targets = layers.model_input(targets, self.image_shape)
    logits = self.decode_logits(self.sample_latent(mean, logvar), train)
    reconstruction = objectives.LIKELIHOODS[self.likelihood](logits, targets)
    kl = objectives.gaussian_kl(mean, logvar)
    numbers = {'nelbo': reconstruction + kl, 'reconstruction': reconstruction, 'kl': kl}
    if not train:
      numbers.update(objectives.reconstruction_numbers(self.decode(mean), targets))
    return reconstruction + self.beta * kl, numbers

  def log_weights(self, inputs, targets, eps):
    """log p(x, z) - log q(z|x) for z = mean + std * eps, eps of shape (samples, batch,
    latent_dim): (samples, batch) importance weights of Burda et al.'s bound."""
    mean, logvar = self.encode(inputs)
    targets = layers.model_input(targets, self.image_shape)
    z = mean + jnp.exp(0.5 * logvar) * eps
    samples, batch = eps.shape[:2]
    logits = self.decode_logits(z.reshape(samples * batch, -1))
    tiled = jnp.broadcast_to(targets, (samples, *targets.shape)).reshape(
        samples * batch, *targets.shape[1:])
    log_likelihood = -objectives.LIKELIHOODS[self.likelihood](logits, tiled).reshape(
        samples, batch)
    log_prior = objectives.gaussian_log_density(z, 0.0, jnp.zeros_like(z))
    log_posterior = objectives.gaussian_log_density(z, mean, logvar)
    return log_likelihood + log_prior - log_posterior


class VAE(VariationalAutoencoder):
  """Flatten; Dense 500, ReLU; the mean and log-variance of a 20-dimensional latent, each a Dense
  layer; and back: Dense 500, ReLU, Dense 784 of logits (flax's examples/vae)."""
  image_shape: Sequence[int]
  hidden_dim: int = 500
  latent_dim: int = 20
  beta: float = 1.0
  likelihood: str = 'bernoulli'
  axis_name: str | None = None  # the pmap axis, so that latent samples match jit's.
  dtype: Any = jnp.float32

  FIELDS = ('model.hidden_dim', 'model.latent_dim', 'model.beta', 'model.likelihood')
  # The importance-weighted -log p(x) of eval.sh: samples per image, on how many images (None:
  # all), and how many decodes at a time. 1000 samples are the papers'.
  IW_SAMPLES, IW_IMAGES, IW_DECODES = 1000, None, 8192

  @classmethod
  def from_config(cls, config, image_shape, **kwargs):
    return cls(image_shape, hidden_dim=config.model.hidden_dim,
               latent_dim=config.model.latent_dim, beta=config.model.beta,
               likelihood=config.model.likelihood, **kwargs)

  def setup(self):
    dense = lambda features: nn.Dense(features, dtype=self.dtype)
    self.encoder_hidden = dense(self.hidden_dim)
    self.encoder_mean = dense(self.latent_dim)
    self.encoder_logvar = dense(self.latent_dim)
    self.decoder_hidden = dense(self.hidden_dim)
    self.decoder_output = dense(math.prod(self.image_shape))

  def encode(self, images, train: bool = False):
    """(mean, logvar) of q(z|x), in float32."""
    del train  # no dropout, no BatchNorm
    images = layers.model_input(images, self.image_shape)
    x = nn.relu(self.encoder_hidden(images.reshape(images.shape[0], -1).astype(self.dtype)))
    return (self.encoder_mean(x).astype(jnp.float32),
            self.encoder_logvar(x).astype(jnp.float32))

  def decode_logits(self, latent, train: bool = False):
    del train
    x = nn.relu(self.decoder_hidden(latent.astype(self.dtype)))
    x = self.decoder_output(x).astype(jnp.float32)
    return x.reshape(latent.shape[0], *self.image_shape)


class ConvVAE(VariationalAutoencoder, autoencoders.ConvStack):
  """The CAE's encoder, then the mean and log-variance of a `latent_dim` latent, each a Dense
  layer of the flattened feature map; a Dense layer and ReLU back to the feature map, then the
  CAE's decoder."""
  latent_dim: int = 32
  beta: float = 1.0
  likelihood: str = 'bernoulli'

  FIELDS = ('model.features', 'model.conv', 'model.latent_dim', 'model.beta',
            'model.likelihood')
  # Its decoder takes ~100x the dense VAE's work: fewer samples, on fewer images (eval.sh's
  # --num_samples and --iw_images ask for more).
  IW_SAMPLES, IW_IMAGES, IW_DECODES = 100, 1000, 512

  @classmethod
  def from_config(cls, config, image_shape, **kwargs):
    return cls(image_shape, features=tuple(config.model.features),
               latent_dim=config.model.latent_dim, beta=config.model.beta,
               likelihood=config.model.likelihood, **kwargs)

  def setup(self):
    super().setup()
    dense = lambda features: nn.Dense(features, dtype=self.dtype)
    self.encoder_mean = dense(self.latent_dim)
    self.encoder_logvar = dense(self.latent_dim)
    self.decoder_latent = dense(math.prod(self.feature_shape))

  def encode(self, images, train: bool = False):
    x = autoencoders.ConvStack.encode(self, images, train)
    x = x.reshape(x.shape[0], -1)
    return (self.encoder_mean(x).astype(jnp.float32),
            self.encoder_logvar(x).astype(jnp.float32))

  def decode_logits(self, latent, train: bool = False):
    x = nn.relu(self.decoder_latent(latent.astype(self.dtype)))
    return autoencoders.ConvStack.decode_logits(
        self, x.reshape(latent.shape[0], *self.feature_shape), train)


def importance_weighted_nll(model, variables, inputs, targets, key, num_samples: int):
  """Burda et al.'s estimate of -log p(x) per image, with `num_samples` samples of q(z|x):
  -log (1/k) sum_i p(x, z_i) / q(z_i|x). Never below the true -log p(x) in expectation, and
  never above the single-sample negative ELBO's expectation; it falls towards -log p(x) as k
  grows. The samples are drawn in chunks of at most model.IW_DECODES decodes."""
  batch = inputs.shape[0]
  chunk = max(1, min(num_samples, model.IW_DECODES // batch))
  num_chunks = -(-num_samples // chunk)

  def body(carry, i):
    running_max, running_sum = carry
    eps = jax.random.normal(jax.random.fold_in(key, i), (chunk, batch, model.latent_dim))
    log_w = model.apply(variables, inputs, targets, eps, method='log_weights')
    # samples past num_samples (the last chunk's overhang) weigh nothing
    taken = (i * chunk + jnp.arange(chunk)) < num_samples
    log_w = jnp.where(taken[:, None], log_w, -jnp.inf)
    new_max = jnp.maximum(running_max, jnp.max(log_w, axis=0))
    running_sum = (running_sum * jnp.exp(running_max - new_max)
                   + jnp.sum(jnp.exp(log_w - new_max), axis=0))
    return (new_max, running_sum), None

  init = (jnp.full((batch,), -jnp.inf), jnp.zeros((batch,)))
  (log_max, total), _ = jax.lax.scan(body, init, jnp.arange(num_chunks))
  return -(log_max + jnp.log(total) - math.log(num_samples))
