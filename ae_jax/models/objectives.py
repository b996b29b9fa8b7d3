"""Per-example numbers: reconstruction losses, PSNR, and the parts of a VAE's ELBO.

Each function maps a batch (batch, ...) to one number per example, (batch,). Losses of
deterministic autoencoders are means over pixels, as the original codebase's; a VAE's terms are
sums over pixels and latent dimensions, in nats, as the papers report them.
"""

import math

import jax
import jax.numpy as jnp


def _pixel_mean(x):
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def _pixel_sum(x):
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def mse(reconstruction, target):
  return _pixel_mean((reconstruction - target) ** 2)


def bce(reconstruction, target):
  r = jnp.clip(reconstruction, 1e-7, 1 - 1e-7)  # PyTorch's BCELoss clamps its logs likewise
  return -_pixel_mean(target * jnp.log(r) + (1 - target) * jnp.log1p(-r))


def psnr(reconstruction, target):
  """In dB, for images in [0, 1]."""
  return -10.0 * jnp.log10(jnp.maximum(mse(reconstruction, target), 1e-10))


# config.loss: the reconstruction loss of the AE and the CAE.
LOSSES = {'mse': mse, 'bce': bce}


def reconstruction_numbers(reconstruction, target) -> dict:
  """What every model reports of its reconstructions: MSE, binary cross-entropy and PSNR."""
  return {'mse': mse(reconstruction, target), 'bce': bce(reconstruction, target),
          'psnr': psnr(reconstruction, target)}


# --- A VAE's likelihoods and KL term ------------------------------------------------------

def bernoulli_nll(logits, target):
  """-log p(target | logits) of independent Bernoulli pixels: binary cross-entropy on logits,
  summed over pixels (for targets in [0, 1], as Kingma and Welling and flax's example use it).
  softplus(logits) - target * logits is optax's sigmoid_binary_cross_entropy with one softplus
  instead of two log-sigmoids: the dense VAE trains 5% faster on CPU."""
  return _pixel_sum(jax.nn.softplus(logits) - target * logits)


def gaussian_nll(logits, target):
  """-log p(target | mean) of independent Gaussian pixels of unit variance, mean sigmoid(logits):
  half the squared error summed over pixels (pythae's 'mse'), plus the normalising constant."""
  mean = jax.nn.sigmoid(logits)
  return 0.5 * _pixel_sum((mean - target) ** 2) + 0.5 * math.log(2 * math.pi) * math.prod(
      target.shape[1:])


LIKELIHOODS = {'bernoulli': bernoulli_nll, 'gaussian': gaussian_nll}


def gaussian_kl(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, I)) in closed form, summed over latent dimensions."""
  return 0.5 * _pixel_sum(jnp.exp(logvar) + mean ** 2 - 1.0 - logvar)


def gaussian_log_density(z, mean, logvar):
  """log N(z; mean, exp(logvar)), summed over the last axis."""
  return -0.5 * jnp.sum(math.log(2 * math.pi) + logvar + (z - mean) ** 2 * jnp.exp(-logvar),
                        axis=-1)
