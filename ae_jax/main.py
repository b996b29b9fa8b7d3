"""Trains an autoencoder: python -m ae_jax.main --config=configs/cae.py --workdir=runs/cae

Running the same command again resumes from the latest checkpoint in the workdir.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from ae_jax import cli
from ae_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and figures.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.info('JAX process %d / %d, local devices %r', jax.process_index(),
               jax.process_count(), jax.local_devices())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main)
