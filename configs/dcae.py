"""Denoising convolutional autoencoder: the CAE trained on inputs with Gaussian noise (std 0.1).

  python -m ae_jax.main --config=configs/dcae.py     # into runs/dcae

On MNIST's 10,000 test images used as data (the command in configs/cae.py): validation MSE on
noisy inputs 0.00121 +- 0.00003 (clean 0.00070) at its best checkpoint of 10 epochs over three
seeds (the README's study), about 45 s per epoch on 2 CPU cores (training at 195 images/s,
benchmarks/README.md).
"""

from configs import cae


def get_config():
  config = cae.get_config()
  config.noise.std = 0.1
  return config
