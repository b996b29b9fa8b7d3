"""Denoising dense autoencoder: the AE trained on inputs with Gaussian noise (std 0.1).

  python -m ae_jax.main --config=configs/dae.py     # into runs/dae

Validation MSE after 10 epochs (noisy inputs for the denoising models):
0.0117 on Fashion-MNIST (48,000 train / 12,000 validation images, `--config.data.source=idx
--config.data.path=/usr/share/datasets/fashion-mnist`), about 1.4 s per epoch on 2 CPU cores;
0.0151 on the 10,000 real MNIST test images used as data (8,000 train / 2,000 validation).
"""

from configs import ae


def get_config():
  config = ae.get_config()
  config.noise.std = 0.1
  return config
