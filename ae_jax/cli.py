"""What every ae_jax command does with its command line: errors as one line, never a traceback."""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from ae_jax import UserError


def _fail(message: str, code: int = 1):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def _flag_value(argv, name: str) -> str | None:
  """The value of --name=VALUE or --name VALUE in argv, before absl has parsed it."""
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
    if arg == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse_flags(argv):
  """absl's parser, with config-file and config-field mistakes reported in one line."""
  config_file = _flag_value(argv, 'config')
  if config_file:
    # configs/cae.py imports configs.default: the folder above configs/ goes on the path, so
    # that a config file works from any directory.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(config_file))))
  try:
    argv = flags.FLAGS(argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].value is not None:
      flags.FLAGS['config'].value.keys()  # a config file that failed to load raises only now
    return argv
  except flags.Error as e:
    _fail(f'{e} (see --helpshort)', 2)
  except (AttributeError, KeyError) as e:
    # ml_collections reports an unknown field as AttributeError(KeyError("'name'\nDid you..."))
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    detail = ' '.join(str(e.args[0] if e.args else e).split())
    _fail(f'no such config field: {detail} '
          '(the fields and their defaults are in configs/default.py)', 2)
  except (OSError, SyntaxError) as e:
    _fail(' '.join(str(e).split()), 2)


def run(main):
  """app.run(main), with UserError printed as one line and a quiet log by default."""

  def wrapped(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)  # orbax and others log every save at INFO
    from ae_jax import train  # pylint: disable=g-import-not-at-top
    try:
      main(argv)
    except UserError as e:
      _fail(str(e))
    except train.Interrupted as e:
      signum, message = e.args
      print(message, file=sys.stderr)
      sys.exit(128 + signum)

  app.run(wrapped, flags_parser=parse_flags)


def define_run_flags(argv) -> None:
  """Flags of the commands that read a trained run: --workdir, --checkpoint, --split, and
  --config, the run's own config.json, whose fields can be overridden like training's
  (e.g. --config.data.path=... to evaluate on other files)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from ae_jax import config_lib  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string('workdir', None, 'The --workdir of a training run.')
  flags.DEFINE_string('checkpoint', 'best',
                      "'best' (lowest validation loss), 'latest', or a step number.")
  flags.DEFINE_string('split', 'test', 'test, validation or train.')
  flags.mark_flags_as_required(['workdir'])
  workdir = _flag_value(argv, 'workdir')
  config = ml_collections.ConfigDict()
  if workdir and os.path.exists(os.path.join(workdir, 'config.json')):
    config = config_lib.load_config(workdir)
  config_flags.DEFINE_config_dict('config', config, "The run's config (from its config.json).",
                                  lock_config=True)
