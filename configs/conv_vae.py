"""Convolutional VAE: the CAE's encoder and decoder around a 32-dimensional Gaussian latent,
with a Bernoulli decoder.

  python -m ae_jax.main --config=configs/conv_vae.py     # into runs/conv_vae
  scripts/eval.sh                                        # -ELBO, its parts, -log p(x) (k=100)
  scripts/generate.sh
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'ConvVAE'
  return config
