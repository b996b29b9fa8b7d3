"""Denoising dense autoencoder: the AE trained on inputs with Gaussian noise (std 0.1).

  python -m ae_jax.main --config=configs/dae.py     # into runs/dae

On full Fashion-MNIST (`--config.data.source=idx --config.data.path=$FASHION`, 48,000 train /
12,000 validation images): test MSE 0.0119 +- 0.0003 on noisy inputs and 0.0116 +- 0.0003 on
clean ones after 10 epochs (three seeds, the README's results table), about 2 s per epoch on 2
CPU cores.
"""

from configs import ae


def get_config():
  config = ae.get_config()
  config.noise.std = 0.1
  return config
