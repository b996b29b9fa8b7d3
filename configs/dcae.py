"""Denoising convolutional autoencoder: the CAE trained on inputs with Gaussian noise (std 0.1).

  python -m ae_jax.main --config=configs/dcae.py --workdir=runs/dcae

Reaches a validation MSE of VAL_DCAE after 10 epochs (see the README for the data it was measured on).
"""

from configs import cae


def get_config():
  config = cae.get_config()
  config.noise.std = 0.1
  return config
