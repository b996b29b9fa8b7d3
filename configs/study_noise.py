"""Does a denoising autoencoder learn a more meaningful latent space? The original codebase's
claim, tested: the AE on full Fashion-MNIST at five noise levels, three seeds each.

  sudo apt-get install dataset-fashion-mnist     # or any folder of the four IDX files
  python -m ae_jax.study --config=configs/study_noise.py --num_points=10000   # studies/study_noise

15 members of 10 epochs (48,000 train / 12,000 validation images), each scored on the 10,000 test
images; 17 minutes on 2 CPU cores. Result (docs/studies.md, the last section): noise does not make
the latent space better by kNN accuracy (0.831 +- 0.003 at std 0, 0.822 +- 0.003 at std 0.5) nor,
beyond one standard deviation, by the linear probe (0.809 to 0.813); the map's trustworthiness rises
a little (0.9973 to 0.9984); reconstructions of clean images get worse (test MSE 0.0116 at std 0 to
0.0151 at std 0.5).
"""

import ml_collections

from configs import dae


def get_config():
  config = dae.get_config()
  config.data.source = 'idx'
  config.data.path = '/usr/share/datasets/fashion-mnist'
  config.study = ml_collections.ConfigDict()
  config.study.grid = ('noise.std=0,0.1,0.2,0.3,0.5',)  # one string per axis, as --grid takes
  config.study.seeds = '0,1,2'
  return config
