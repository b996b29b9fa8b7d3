"""Trains an autoencoder: python -m ae_jax.main --config=configs/cae.py [--workdir=runs/cae]

The workdir defaults to runs/<config file name>. Running the same command again resumes from
the latest checkpoint in the workdir. Across
several processes (hosts), start the same command in each with --coordinator_address,
--num_processes and --process_id, or --distributed where JAX detects the cluster (SLURM, ...).
"""

if __name__ == '__main__':  # a command: prepare the process before JAX is imported
  from ae_jax import launch
  launch.start()

import sys
import threading

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from ae_jax import UserError
from ae_jax import cli
from ae_jax import config_lib
from ae_jax import devices
from ae_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and figures '
                    '(default: runs/<config file name>, e.g. runs/cae for configs/cae.py).')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, to train across processes (jax.distributed) '
                    '(default: none, one process trains alone).')
flags.DEFINE_integer('num_processes', None, 'How many processes train together.')
flags.DEFINE_integer('process_id', None, 'This process: 0, 1, ... num_processes - 1.')
flags.DEFINE_integer('coordinator_timeout', 120,
                     'Seconds to wait for every process to join (jax.distributed).')
flags.DEFINE_bool('distributed', False,
                  'Start jax.distributed from what the cluster (SLURM, Cloud TPU, ...) says.')
flags.mark_flags_as_required(['config'])


def check_process_flags() -> bool:
  """Whether this process joins others (jax.distributed); a UserError where the flags that
  describe the processes are incomplete or contradict each other. Every process given only some
  of them would train alone into the same workdir."""
  address, count, index = FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
  joins = address is not None or FLAGS.distributed
  given = [f'--{name}' for name in ('num_processes', 'process_id', 'coordinator_timeout')
           if FLAGS[name].present]
  if not joins and given:
    raise UserError(f'{" and ".join(given)} without --coordinator_address: give every process '
                    '--coordinator_address=HOST:PORT (of process 0), --num_processes and '
                    '--process_id, or --distributed where the cluster (SLURM, ...) names them')
  if address is not None:
    missing = [f'--{name}' for name, value in (('num_processes', count), ('process_id', index))
               if value is None]
    if missing and not FLAGS.distributed:
      raise UserError(f'--coordinator_address={address} needs {" and ".join(missing)}: give '
                      'each process the number of processes and its own id (0 is the '
                      'coordinator), or --distributed where the cluster names them')
    host, sep, port = address.strip().rpartition(':')
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise UserError(f'--coordinator_address={address} is not host:port: add the port that '
                      'process 0 listens on, e.g. --coordinator_address=10.0.0.1:12345')
  if count is not None and count < 1:
    raise UserError(f'--num_processes={count} must be at least 1')
  if index is not None and (index < 0 or (count is not None and index >= count)):
    raise UserError(f'--process_id={index} must be from 0 to --num_processes - 1'
                    + (f' ({count - 1})' if count is not None and count >= 1 else ''))
  return joins


def join_processes():
  """jax.distributed.initialize, saying what it waits for, for at most --coordinator_timeout."""
  if FLAGS.coordinator_timeout < 1:
    raise UserError(f'--coordinator_timeout={FLAGS.coordinator_timeout} must be at least 1 second')
  where = FLAGS.coordinator_address or 'the address the cluster names'
  index, count = FLAGS.process_id, FLAGS.num_processes  # under --distributed, maybe the cluster's
  processes = 'processes' if count is None else f'{count} processes'
  if FLAGS.coordinator_address:
    who = '' if index is None else f' as process {index}'
    if count is not None:
      who += f' of {count}' if who else f' as one of {processes}'
    print(f'waiting for the coordinator at {where}{who} (for at most '
          f'{FLAGS.coordinator_timeout} s: --coordinator_timeout)', flush=True)
  else:
    print(f'joining the processes that the cluster starts (for at most '
          f'{FLAGS.coordinator_timeout} s: --coordinator_timeout)', flush=True)
  # XLA aborts the process when its own wait runs out: this watchdog says why, a little earlier.
  watchdog = threading.Timer(FLAGS.coordinator_timeout, cli.fail_from_thread, [
      f'not every process joined within {FLAGS.coordinator_timeout} s at the coordinator {where}: '
      'check that process 0 runs and listens on that host and port, that this host can reach it '
      f'(firewall), and that all {processes} were started; raise '
      '--coordinator_timeout where the others start later'])
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id,
                               initialization_timeout=FLAGS.coordinator_timeout + 30)
  except (ValueError, RuntimeError) as e:
    raise UserError(f'cannot start jax.distributed: {" ".join(str(e).split())[:400]} (check '
                    '--coordinator_address, --num_processes and --process_id)') from None
  finally:
    watchdog.cancel()


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  joins = check_process_flags()
  workdir = FLAGS.workdir  # not '': cli refuses an empty flag
  config_file = config_flags.get_config_filename(FLAGS['config'])
  config_lib.validate(FLAGS.config, where=config_file)  # before it names a workdir
  if workdir is None:
    workdir = cli.default_workdir(config_file)
  if joins:
    join_processes()
  if jax.process_index() == 0:
    print(f'training into {workdir}' + ('' if FLAGS['workdir'].present else
                                        ' (--workdir=FOLDER for another)'), flush=True)
    warning = devices.unused_gpu_warning()
    if warning:
      print(warning, file=sys.stderr, flush=True)
  logging.info('JAX process %d / %d, local devices %r', jax.process_index(),
               jax.process_count(), jax.local_devices())
  train.train_and_evaluate(FLAGS.config, workdir)


if __name__ == '__main__':
  cli.run(main)
