"""Convolutional autoencoder (3x3 convolutions with BatchNorm, a 7x7x256 latent) on MNIST.

  python -m ae_jax.main --config=configs/cae.py --workdir=runs/cae

Reaches a validation MSE of VAL_CAE after 10 epochs (see the README for the data it was measured on).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'CAE'
  config.eval_batch_size = 256  # its 3x3 patches take 0.9 MB per image
  return config
