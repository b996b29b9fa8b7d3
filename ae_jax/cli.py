"""What every ae_jax command does with its command line: errors as one line, never a traceback."""

import collections
import logging as logging_lib
import os
import re
import signal
import sys
import threading
import traceback
import warnings

from absl import app
from absl import flags
from absl import logging

from ae_jax import UserError


def _fail(message: str, code: int = 1):
  print(f'error: {message}', file=sys.stderr)
  _exit(code)


def fail_from_thread(message: str, code: int = 1):
  """Prints `message` as the one error line and ends the process now, from any thread."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(code)  # pylint: disable=protected-access


def _exit(code: int):
  """sys.exit, unless a library's thread would keep the process alive (orbax's, after a failed
  save): then os._exit, as nothing of ours is left to finish."""
  sys.stdout.flush()
  sys.stderr.flush()
  if any(t.is_alive() and not t.daemon for t in threading.enumerate()
         if t is not threading.main_thread()):
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


class _QuietLibraryErrors(logging_lib.Filter):
  """Drops the tracebacks that orbax and asyncio log from their threads: the error reaches
  the main thread and is reported there, as one line (--verbosity=1 shows them)."""

  def filter(self, record):
    return not (record.levelno >= logging_lib.ERROR and (
        '/orbax/' in record.pathname or record.name in LIBRARY_LOGGERS))


LIBRARY_LOGGERS = ('asyncio', 'concurrent.futures')


def _quiet_unraisablehook(previous):
  """After a failed save, tensorstore's threads print 'Event loop is closed' tracebacks (as
  unraisable exceptions) for callbacks into orbax's finished event loops; after a failed read
  of a damaged checkpoint, orbax's other reads of it raise as their coroutines are collected.
  Noise, once the failure is reported (and the damaged checkpoint named)."""
  def hook(unraisable):
    value, source = unraisable.exc_value, unraisable.object
    closed_loop = isinstance(value, RuntimeError) and str(value) == 'Event loop is closed'
    orbax_read = '/orbax/' in getattr(getattr(source, 'cr_code', None), 'co_filename', '')
    if not (closed_loop or orbax_read):
      previous(unraisable)
  return hook


def _flag_values(argv, name: str) -> list[str]:
  """The values of every --name=VALUE and --name VALUE in argv, before absl has parsed it."""
  values = []
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      values.append(arg.split('=', 1)[1])
    elif arg == f'--{name}' and i + 1 < len(argv):
      values.append(argv[i + 1])
  return values


def _flag_value(argv, name: str) -> str | None:
  """The value of the first --name=VALUE or --name VALUE in argv, before absl has parsed it."""
  return next(iter(_flag_values(argv, name)), None)


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def _check_config_file(config_file: str) -> None:
  """A config file that does not exist: say so, and list the configs that do."""
  path = config_file.split(':', 1)[0]  # config_flags takes 'file.py:argument'
  if os.path.isfile(path):
    return
  # a bare name (cae.py) most likely meant the repository's configs, not the current folder
  folder = os.path.dirname(path)
  folder = folder if folder and os.path.isdir(folder) else CONFIGS
  there = sorted(f for f in os.listdir(folder)
                 if f.endswith('.py') and not f.startswith('_') and f != 'default.py')
  shown = os.path.relpath(folder)
  shown = folder if shown.startswith('..') else shown
  listed = ', '.join(os.path.join(shown, f) for f in there)
  _fail(f'the config file {path} does not exist' + (f'; the configs are: {listed}' if there
                                                      else ''), 2)


def _unknown_field(e: BaseException) -> str:
  """ml_collections reports an unknown field as AttributeError(KeyError("'name'\nDid you..."))."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  detail = ' '.join(str(e.args[0] if e.args else e).split())
  return (f'no such config field: {detail} '
          '(the fields and their defaults are in configs/default.py)')


def _fail_on_config_field(e: Exception, argv) -> None:
  """Exits in one line for an override of a field that does not exist, which ml_collections
  raises as AttributeError or KeyError, or, inside a field (--config.model.name.x=1), as
  TypeError or ValueError; re-raises anything else."""
  through = _field_through_a_value(argv)
  if through:
    _fail(f'no such config field: config.{through[0]} (config.{through[1]} is a value, not a '
          'section; the fields and their defaults are in configs/default.py)', 2)
  if isinstance(e, (TypeError, ValueError)):
    raise e
  _fail(_unknown_field(e), 2)


def _field_through_a_value(argv) -> tuple[str, str] | None:
  """(path, its prefix that is a value) of the first --config.PATH=... that names a field
  inside a field ('model.name.x'); else None."""
  fields = set(_config_fields())
  for arg in argv:
    path = re.match(r'--config\.([\w.]+)', arg)
    parts = path.group(1).split('.') if path else []
    for i in range(1, len(parts)):
      if '.'.join(parts[:i]) in fields:
        return path.group(1), '.'.join(parts[:i])
  return None


def _config_fields() -> list[str]:
  """Every field a --config.PATH sets ('model.latent_dim'), sorted: the config's leaves."""
  from ae_jax import config_lib  # pylint: disable=g-import-not-at-top
  known = config_lib.known_fields(config_lib.default_config())
  return sorted(f for f in known if not any(g.startswith(f + '.') for g in known))


def _unknown_flag(e: flags.UnrecognizedFlagError) -> str:
  """absl's message, or where the flag is a config field without `config.` in front
  (--num_epochs=5, --latent_dim=8), the flag that sets it."""
  names = {e.flagname, e.flagname.replace('-', '_')}
  names |= {n.removeprefix('no') for n in names}  # absl reads --noflag as a boolean's false
  fields = _config_fields()
  matches = [f for f in fields if f in names] or [
      f for f in fields if f.rsplit('.', 1)[-1] in names]
  if len(matches) != 1:
    return f'{e} (see --helpshort)'
  value = str(e.flagvalue).partition('=')[2] if '=' in str(e.flagvalue) else 'VALUE'
  return (f'--{e.flagname} is not a flag; config.{matches[0]} is a config field: write '
          f'--config.{matches[0]}={value}')


def _section_given_a_value(path: str, value: str) -> str:
  """The fix for --config.model=CAE: config.model is a section, whose fields take values."""
  from ae_jax import config_lib  # pylint: disable=g-import-not-at-top
  fields = ', '.join(config_lib.default_config()[path].keys())
  return (f'--config.{path}={value}: config.{path} is a section, not a field: set one of its '
          f'fields, --config.{path}.FIELD={value} ({fields})')


def _check_given_once(argv) -> None:
  """Exits in one line where --config, or a --config.FIELD of a tuple, is given twice: absl
  would take the last file, and add the second tuple's values to the first's. A scalar field
  given twice takes the last value, as absl's flags do."""
  names = [arg[2:].split('=', 1)[0] for arg in argv[1:]
           if arg.startswith('--config=') or arg.startswith('--config.') or arg == '--config']
  twice = sorted({name for name in names if names.count(name) > 1})
  if 'config' in twice:
    _fail('--config is given twice: give one config file', 2)
  if twice:
    from ae_jax import config_lib  # pylint: disable=g-import-not-at-top
    for name in twice:
      value = config_lib.default_config()
      for part in name.split('.')[1:]:
        value = value.get(part) if hasattr(value, 'get') else None
      if isinstance(value, (tuple, list)):
        _fail(f'--{name} is given twice, and ml_collections would join the two: give it once', 2)


def parse_flags(argv):
  """absl's parser, with config-file and config-field mistakes reported in one line."""
  _check_given_once(argv)
  config_file = _flag_value(argv, 'config')
  if config_file:
    _check_config_file(config_file)
    # configs/cae.py imports configs.default: the folder above configs/ goes on the path, so
    # that a config file works from any directory.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(config_file))))
    # and a config file elsewhere (one's own experiments) imports ae_jax's configs/ the same way
    sys.path.append(os.path.dirname(CONFIGS))
  path = config_file.split(':', 1)[0] if config_file else None
  try:
    argv = flags.FLAGS(argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].value is not None:
      config = flags.FLAGS['config'].value  # a config file that failed to load raises only now
      if not hasattr(config, 'keys'):
        _fail(f'get_config() of {path} returns {type(config).__name__}, not a config: return '
              'an ml_collections.ConfigDict, as configs/ae.py does', 2)
    return argv
  except flags.UnrecognizedFlagError as e:
    _fail(_unknown_flag(e), 2)
  except flags.Error as e:
    # an error inside the config file comes with its traceback as text: its last line says it
    raised = re.search(r'Error whilst parsing config file:.*\n(\w+(?:Error|Exception)\b.*)',
                       str(e), re.DOTALL)
    if raised:
      _fail(f'the config file {config_file} does not load: {" ".join(raised.group(1).split())}',
            2)
    section = re.match(r"flag --config\.([\w.]+)=(.*?): Failed to parse '.*' as a ConfigDict",
                       str(e), re.DOTALL)
    if section:  # --config.model=CAE: a value given to a section
      _fail(_section_given_a_value(*section.groups()), 2)
    _fail(f'{e} (see --helpshort)', 2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if "has no attribute 'get_config'" in str(e):
      _fail(f'the config file {path} has no get_config(): define one that returns an '
            'ml_collections.ConfigDict, as configs/ae.py does', 2)
    _fail_on_config_field(e, argv)
  except (OSError, SyntaxError) as e:
    _fail(' '.join(str(e).split()), 2)
  except (ImportError, NameError) as e:
    _fail(f'the config file {config_file} does not load: {type(e).__name__}: '
          f'{" ".join(str(e).split())}', 2)


flags.DEFINE_string(
    'compilation_cache',
    os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'ae_jax',
                 'jax'),
    "JAX's persistent compilation cache: a second start of the same model and shapes (resuming, "
    "eval.sh, tsne.sh, a study's members) compiles nothing. '' turns it off.")


def use_compilation_cache(folder: str) -> None:
  """Compiled programs are kept in `folder` (if it can be written) and reused across processes."""
  if not folder:
    return
  # a cache is a convenience: without one, everything still works, a little slower
  try:
    os.makedirs(folder, exist_ok=True)
    problem = None if os.access(folder, os.W_OK | os.X_OK) else 'it is not writable'
  except FileExistsError:
    problem = 'it is a file'
  except OSError as e:
    problem = e.strerror or str(e)
  if problem:
    print(f'warning: no compilation cache in {folder} ({problem}): every program compiles '
          "afresh; give a writable folder with --compilation_cache=FOLDER, or '' for none",
          file=sys.stderr)
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', folder)
  # every program: the CAE's take seconds to compile, the small ones add up in a study
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  jax.monitoring.register_event_listener(_count_compilation)
  from ae_jax import trace_cache  # pylint: disable=g-import-not-at-top
  trace_cache.FOLDER = os.path.join(folder, 'traces')


# What the persistent compilation cache did in this process, from JAX's own monitoring events.
COMPILATIONS = collections.Counter()


def _count_compilation(event: str, **unused_kwargs) -> None:
  if event == '/jax/compilation_cache/cache_hits':
    COMPILATIONS['read'] += 1
  elif event == '/jax/compilation_cache/cache_misses':
    COMPILATIONS['compiled'] += 1


def compilation_summary() -> str | None:
  """One line on what the compilation cache did, or None where it was not used."""
  if not COMPILATIONS['read'] + COMPILATIONS['compiled']:
    return None
  from ae_jax import trace_cache  # pylint: disable=g-import-not-at-top
  traces = trace_cache.COUNTS
  return (f'compilation cache: {COMPILATIONS["read"]} programs read from it, '
          f'{COMPILATIONS["compiled"]} compiled' +
          (f'; {traces["read"]} traced programs read from it, {traces["traced"]} traced'
           if traces['read'] + traces['traced'] else ''))


# Flags whose empty value means something: '' turns the compilation cache off.
EMPTY_ALLOWED = ('compilation_cache',)


def check_empty_flags() -> None:
  """Refuses a flag of ours given an empty value (--seeds=$SEEDS with SEEDS unset): its default
  would run instead, or a folder named ''."""
  for module, defined in flags.FLAGS.flags_by_module_dict().items():
    if not (module in ('__main__', sys.argv[0]) or module.startswith('ae_jax')):
      continue
    for flag in defined:
      value = flag.value if isinstance(flag.value, list) else [flag.value]
      if flag.name in EMPTY_ALLOWED or not flag.present or not any(
          isinstance(v, str) and not v.strip() for v in value):
        continue
      default = re.search(r'\((default: [^)]*)\)', flag.help or '')
      default = (default.group(1) if default else
                 None if flag.default in (None, []) else f'default: {flag.default}')
      raise UserError(f'--{flag.name} is empty (an unset shell variable?): give a value, or '
                      'leave the flag out' + (f' ({default})' if default else ''))


def run(main):
  """app.run(main), with UserError printed as one line and a quiet log by default."""

  def wrapped(argv):
    signal.signal(signal.SIGINT, signal.default_int_handler)  # launch.start() set another
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)  # orbax and others log every save at INFO
      quiet = _QuietLibraryErrors()
      for handler in logging_lib.getLogger().handlers + [logging.get_absl_handler()]:
        handler.addFilter(quiet)
      for name in LIBRARY_LOGGERS:
        logging_lib.getLogger(name).addFilter(quiet)
      sys.unraisablehook = _quiet_unraisablehook(sys.unraisablehook)
      # Warnings about what the commands handle: an image of 89M to 179M pixels is read and
      # resized (PIL's decompression-bomb warning; a larger one is refused in one line), and a
      # figure's title draws a character no installed font has as a box (a file's name).
      warnings.filterwarnings('ignore', message=r'Image size \(\d+ pixels\) exceeds limit')
      warnings.filterwarnings('ignore', message=r'Glyph \d+ .* missing from font')
    use_compilation_cache(flags.FLAGS.compilation_cache)
    from ae_jax import interruptions  # pylint: disable=g-import-not-at-top
    from ae_jax import train  # pylint: disable=g-import-not-at-top
    try:
      if len(argv) > 1:  # every command takes flags only (the scripts' WORKDIR is --workdir)
        raise UserError(f'unexpected argument{"s" if len(argv) > 2 else ""} '
                        f'{" ".join(argv[1:])}: give flags as --name=value, and at most one '
                        'workdir, first (--help lists the flags)')
      check_empty_flags()
      main(argv)
      summary = compilation_summary()
      if summary:
        train._log(summary)  # pylint: disable=protected-access
    except UserError as e:
      if flags.FLAGS.verbosity >= 1:  # for a bug report: where it came from
        traceback.print_exc()
      _fail(str(e))
    except interruptions.Interrupted as e:
      signum, message = e.args
      print(message, file=sys.stderr)
      _exit(128 + signum)
    except MemoryError as e:  # numpy's, for arrays of a size asked for by mistake
      _fail(f'out of host memory ({" ".join(str(e).split())[:200]}): ask for less (a smaller '
            'config.data.image_size, batch size or split), or config.data.placement=disk for '
            'data larger than memory')
    except KeyboardInterrupt:  # outside training's loop, which saves first (Interrupted)
      print('SIGINT: stopped before the command finished: run it again', file=sys.stderr,
            flush=True)
      sys.stdout.flush()
      # at once: the interpreter's teardown can crash under XLA's threads still compiling
      os._exit(128 + signal.SIGINT)  # pylint: disable=protected-access

  app.run(wrapped, flags_parser=parse_flags)


RUNS = 'runs'  # where training puts a run without --workdir: runs/<config file name>
HELP_FLAGS = ('-h', '-?', '--help', '--helpshort', '--helpfull', '--helpxml')


def default_workdir(config_file: str, root: str = RUNS) -> str:
  """configs/cae.py -> runs/cae (`root`/cae), relative to the current folder."""
  name = os.path.splitext(os.path.basename(config_file.split(':', 1)[0]))[0]
  return os.path.join(root, name)


def _has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a complete checkpoint (orbax names them by their step)."""
  folder = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def latest_run(root: str = RUNS) -> str | None:
  """The workdir under `root` with a checkpoint whose checkpoints, metrics or config changed
  last, or None. A run stopped before its first checkpoint has nothing to evaluate."""
  newest, found = -1.0, None
  for folder, subfolders, files in os.walk(root):
    if 'config.json' not in files:
      continue
    subfolders.clear()  # a run's own folders hold no other run
    if not _has_checkpoint(folder):
      continue
    times = [os.path.getmtime(os.path.join(folder, name))
             for name in ('config.json', 'metrics.jsonl', 'checkpoints')
             if os.path.exists(os.path.join(folder, name))]
    if max(times) > newest:
      newest, found = max(times), folder
  return found


def define_run_flags(argv) -> None:
  """Flags of the commands that read a trained run: --workdir (default: the run under runs/
  that trained last), --checkpoint, --split, and --config, the run's own config.json, whose
  fields can be overridden like training's (e.g. --config.data.path=... to evaluate on other
  files)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from ae_jax import config_lib  # pylint: disable=g-import-not-at-top

  _check_given_once(argv)
  workdir = _flag_value(argv, 'workdir')
  named = list(dict.fromkeys(_flag_values(argv, 'workdir')))
  if len(named) > 1:  # absl takes the last; the run's config.json would come from the first
    _fail(f'two workdirs, {named[0]} and {named[1]}: give one, first or as --workdir')
  asks_help = any(arg.split('=')[0] in HELP_FLAGS for arg in argv[1:])
  if workdir is None and not asks_help:  # the help names no run
    workdir = latest_run()
    if workdir is not None:
      print(f'{workdir}: the run under {RUNS}/ that trained last (give a workdir for another)')
  flags.DEFINE_string('workdir', workdir, 'The --workdir of a training run (default: the run '
                      f'under {RUNS}/ that trained last).')
  flags.DEFINE_string('checkpoint', 'best',
                      "'best' (lowest validation loss), 'latest', or a step number.")
  flags.DEFINE_string('split', None, 'test, validation or train (default: test where the data '
                      'has a test split, else validation).')
  config = ml_collections.ConfigDict()
  # a run's overrides need its config: where it is missing, say so
  overrides = not asks_help and any(arg.startswith('--config.') for arg in argv[1:])
  if overrides and not workdir:
    try:
      run_workdir(workdir)
    except UserError as e:
      _fail(str(e))
  if workdir and (os.path.exists(os.path.join(workdir, 'config.json')) or overrides):
    try:
      config = config_lib.load_config(workdir)
    except UserError as e:
      _fail(str(e))
  try:
    # config_flags reads the --config.FIELD overrides in argv already here
    config_flags.DEFINE_config_dict('config', config, "The run's config (from its config.json).",
                                    lock_config=True)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    _fail_on_config_field(e, argv)
  for name in ('workdir', 'checkpoint', 'split', 'compilation_cache'):  # shown by --help
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def run_workdir(workdir: str | None) -> str:
  """The --workdir of eval and t-SNE, or a UserError where there is none, or it is a file."""
  from ae_jax import config_lib  # pylint: disable=g-import-not-at-top
  if workdir == '':
    raise UserError('--workdir is empty: name the folder of a training run')
  if workdir is None:
    raise UserError(f'no training run under {RUNS}/: train one first (python -m ae_jax.main '
                    '--config=configs/quickstart.py), or name its folder: scripts/eval.sh WORKDIR')
  config_lib.check_run_folder(workdir)  # before the commands' checks of where they write
  return workdir
