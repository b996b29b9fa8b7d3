"""Convolutional VAE: the CAE's encoder and decoder around a 32-dimensional Gaussian latent,
with a Bernoulli decoder.

  python -m ae_jax.main --config=configs/conv_vae.py     # into runs/conv_vae
  scripts/eval.sh                                        # -ELBO, its parts, -log p(x) (k=100)
  scripts/generate.sh

On MNIST's 10,000 test images used as data (the command in configs/cae.py): validation -ELBO
108.23 +- 0.21 nats (reconstruction 79.7, KL 28.6) and MSE 0.0087 of the posterior mean after 10
epochs over three seeds (the README's study), about 66 s per epoch on 2 CPU cores.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'ConvVAE'
  return config
