"""Dense autoencoder (784-256-32-256-784, ReLU, dropout 0.1) on MNIST.

  python -m ae_jax.main --config=configs/ae.py     # into runs/ae

Validation MSE after 10 epochs (noisy inputs for the denoising models):
0.0113 on Fashion-MNIST (48,000 train / 12,000 validation images, `--config.data.source=idx
--config.data.path=/usr/share/datasets/fashion-mnist`), about 1.1 s per epoch on 2 CPU cores;
0.0143 on the 10,000 real MNIST test images used as data (8,000 train / 2,000 validation).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'AE'
  return config
