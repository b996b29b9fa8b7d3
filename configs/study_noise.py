"""Does a denoising autoencoder learn a more meaningful latent space? The original codebase's
claim, tested: the AE on full Fashion-MNIST at five noise levels, three seeds each.

  sudo apt-get install dataset-fashion-mnist     # or any folder of the four IDX files
  python -m ae_jax.study --config=configs/study_noise.py     # into studies/study_noise

15 members of 10 epochs (48,000 train / 12,000 validation images), each scored on the 10,000
test images (--num_points=10000 for the latent numbers, as in the README). Result (README, "A
study"): noise makes reconstructions of clean images worse (test MSE 0.0111 at std 0 to 0.0168
at std 0.5) and does not make the latent space measurably better: kNN accuracy 0.829-0.833 at
every noise level, within about two standard deviations over seeds.
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
