"""Trains an autoencoder: python -m ae_jax.main --config=configs/cae.py [--workdir=runs/cae]

The workdir defaults to runs/<config file name>. Running the same command again resumes from
the latest checkpoint in the workdir. Across
several processes (hosts), start the same command in each with --coordinator_address,
--num_processes and --process_id, or --distributed where JAX detects the cluster (SLURM, ...).
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from ae_jax import UserError
from ae_jax import cli
from ae_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and figures '
                    '(default: runs/<config file name>, e.g. runs/cae for configs/cae.py).')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, to train across processes (jax.distributed).')
flags.DEFINE_integer('num_processes', None, 'How many processes train together.')
flags.DEFINE_integer('process_id', None, 'This process: 0, 1, ... num_processes - 1.')
flags.DEFINE_bool('distributed', False,
                  'Start jax.distributed from what the cluster (SLURM, Cloud TPU, ...) says.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.coordinator_address or FLAGS.distributed:
    try:
      jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                 FLAGS.process_id)
    except (ValueError, RuntimeError) as e:
      raise UserError(f'cannot start jax.distributed: {" ".join(str(e).split())[:400]} (check '
                      '--coordinator_address, --num_processes and --process_id)') from None
  workdir = FLAGS.workdir
  if workdir == '':
    raise UserError('--workdir is empty (an unset shell variable?): name a folder, or leave the '
                    'flag out for runs/<config file name>')
  if workdir is None:
    workdir = cli.default_workdir(config_flags.get_config_filename(FLAGS['config']))
  if jax.process_index() == 0:
    print(f'training into {workdir}' + ('' if FLAGS['workdir'].present else
                                        ' (--workdir=FOLDER for another)'), flush=True)
  logging.info('JAX process %d / %d, local devices %r', jax.process_index(),
               jax.process_count(), jax.local_devices())
  train.train_and_evaluate(FLAGS.config, workdir)


if __name__ == '__main__':
  cli.run(main)
