"""The checks that a config makes sense, and the config saved in a workdir."""

import contextlib
import errno
import fcntl
import json
import math
import os

from flax import traverse_util
import ml_collections

from ae_jax import UserError
from ae_jax import cannot_write
from ae_jax import replaced_atomically
from ae_jax import input_pipeline
from ae_jax import models


OPTIMIZERS = ('adam', 'adamw', 'sgd')
PARALLEL = ('jit', 'pmap')


def _one_of(value, choices, field):
  if value not in choices:
    raise UserError(f'{field}={value!r} is not one of: {", ".join(map(str, choices))}')


def _at_least(minimum):
  def check(value, field):
    if value < minimum:
      raise UserError(f'{field}={value} must be at least {minimum}')
  return check


def _features(value, field):
  if len(value) != 4 or min(value) < 1:
    raise UserError(f'{field}={tuple(value)} must be four positive channel counts, e.g. '
                    '(32, 64, 128, 256)')


def _dropout_rate(value, field):
  if not 0 <= value < 1:
    raise UserError(f'{field}={value} must be in [0, 1)')


FLOAT32_MAX = 3.4028235e38  # a larger beta is infinite in float32, the loss's dtype


def _beta(value, field):
  if not 0 <= value <= FLOAT32_MAX:
    raise UserError(f'{field}={value} must be 0 or more, and finite in float32 (1 is the VAE; '
                    'beta-VAEs weigh the KL term more, e.g. 4)')


# The checks of the fields that models read (each model names its own: models.MODELS[...].FIELDS).
MODEL_FIELD_CHECKS = {
    'model.hidden_dim': _at_least(1),
    'model.latent_dim': _at_least(1),
    'model.dropout_rate': _dropout_rate,
    'model.features': _features,
    'model.conv': lambda value, field: _one_of(value, ('auto', 'matmul', 'xla'), field),
    'model.beta': _beta,
    'model.likelihood': lambda value, field: _one_of(value, tuple(models.objectives.LIKELIHOODS),
                                                     field),
    'loss': lambda value, field: _one_of(value, tuple(models.objectives.LOSSES), field),
}


def _get(config, path: str, missing=None):
  """config's field at `path` ('model.beta'); `missing` where it has none (an older run's
  config.json)."""
  node = config
  for part in path.split('.'):
    if part not in node:
      return missing
    node = node[part]
  return node


def model_fields(config) -> tuple[str, ...]:
  """The fields that config.model.name's model reads ('model.latent_dim', 'loss', ...)."""
  return models.MODELS[config.model.name].FIELDS


def check_unused_fields(config, defaults) -> None:
  """Refuses a field that the model does not read, set to other than its default (a VAE's beta
  on an AE, say): it would change nothing, silently."""
  used = set(model_fields(config))
  for path in MODEL_FIELD_CHECKS:
    if path in used:
      continue
    default = _get(defaults, path)
    value = _get(config, path, missing=default)
    if value != default and not (isinstance(value, (tuple, list)) and
                                 tuple(value) == tuple(default)):
      readers = [name for name, cls in models.MODELS.items() if path in cls.FIELDS]
      raise UserError(f'config.{path}={value!r} is not used by the {config.model.name} (it is a '
                      f'field of {", ".join(readers)}): leave it out, or choose a model that '
                      'uses it')


# Fields a config may hold beyond configs/default.py's: a study's grid and seeds
# (configs/study_noise.py), which ae_jax.study reads.
EXTRA_FIELDS = ('study.grid', 'study.seeds')


def known_fields(defaults) -> set[str]:
  """Every field path a config may hold: configs/default.py's, the models', EXTRA_FIELDS."""
  paths = set(EXTRA_FIELDS)
  for cls in models.MODELS.values():
    paths.update(cls.FIELDS)

  def walk(prefix, node):
    for key, value in node.items():
      paths.add(prefix + key)
      if isinstance(value, (dict, ml_collections.ConfigDict)):
        walk(f'{prefix}{key}.', value)
  walk('', defaults)
  return paths


def unknown_fields(config, defaults) -> list[str]:
  """The field paths of `config` that no part of ae_jax reads (a misspelling), outermost first."""
  known = known_fields(defaults)
  found = []

  def walk(prefix, node):
    for key, value in node.items():
      path = prefix + key
      if path not in known and not any(k.startswith(path + '.') for k in known):
        found.append(path)
      elif isinstance(value, (dict, ml_collections.ConfigDict)):
        walk(path + '.', value)
  walk('', config)
  return found


def check_known_fields(config, defaults, where: str = 'the config file') -> None:
  """Refuses a field that nothing reads: a config file's `config.model.latnt_dim = 5` would
  otherwise train with the default latent_dim and record both."""
  unknown = unknown_fields(config, defaults)
  if not unknown:
    return
  import difflib  # pylint: disable=g-import-not-at-top
  path = unknown[0]
  close = difflib.get_close_matches(path, sorted(known_fields(defaults)), n=1)
  hint = f' (did you mean config.{close[0]}?)' if close else ''
  raise UserError(f'config.{path} is not a config field{hint}: correct it in {where} (the '
                  'fields and their defaults are in configs/default.py)')


def check_no_missing_fields(config, defaults, where: str = 'the config file') -> None:
  """Refuses a config that lacks a field of configs/default.py: a config file not built on its
  get_config(), or a section replaced whole on the command line (--config.noise="{'std': 0.5}"),
  which would otherwise end in a traceback wherever the field is first read."""
  for path in traverse_util.flatten_dict(defaults.to_dict(), sep='.'):
    if _get(config, path, missing=KeyError) is KeyError:
      fixes = []
      if '.' in path:  # a section's field: the section may have been replaced on the command line
        fixes.append(f'set single fields on the command line (--config.{path}=...), not a '
                     f'whole section (--config.{path.rsplit(".", 1)[0]}={{...}})')
      if where.endswith('.py') or '.' not in path:
        fixes.append(f"build {where} on configs/default.py's get_config()")
      raise UserError(f'config.{path} is missing: {", and ".join(fixes)}')


def check_seed(seed, name: str) -> None:
  """Refuses a seed that one of its readers cannot take: compiled code reads it as an int32
  (evaluation), scikit-learn's t-SNE as a uint32, numpy not below 0."""
  if not 0 <= seed < 2**31:
    raise UserError(f'{name}={seed} must be a whole number from 0 to 2**31 - 1')


# The fields of config.data that only some sources read: the dataset's name, the files.
SOURCE_FIELDS = {'tfds': ('name', 'data_dir', 'manual_dir'), 'idx': ('path',),
                 'folder': ('path',), 'arrays': ('path',), 'digits': ()}


def validate(config: ml_collections.ConfigDict, where: str = 'the config file', *,
             trains: bool = True) -> None:
  """Raises UserError for the first field whose value cannot work, or is set and unused, or is
  no field at all (a misspelling in `where`). `trains` False: the config of a trained run with
  a script's overrides, which may name other data and leave the run's files in place."""
  defaults = default_config()
  check_known_fields(config, defaults, where)
  check_no_missing_fields(config, defaults, where)
  _one_of(config.model.name, tuple(models.MODELS), 'config.model.name')
  _one_of(config.optimizer, OPTIMIZERS, 'config.optimizer')
  _one_of(config.parallel, PARALLEL, 'config.parallel')
  _one_of(config.get('dtype', 'float32'), models.DTYPES, 'config.dtype')
  for path in model_fields(config):
    MODEL_FIELD_CHECKS[path](_get(config, path), f'config.{path}')
  check_unused_fields(config, defaults)
  check_seed(config.seed, 'config.seed')
  if config.num_summary_images < 0:
    raise UserError(f'config.num_summary_images={config.num_summary_images} must be 0 (none) '
                    'or more')
  if config.batch_size < 1:
    raise UserError(f'config.batch_size={config.batch_size} must be at least 1')
  if config.eval_batch_size < 1:
    raise UserError(f'config.eval_batch_size={config.eval_batch_size} must be at least 1')
  if config.num_epochs < 1:
    raise UserError(f'config.num_epochs={config.num_epochs} must be at least 1')
  if config.steps_per_call < 1:
    raise UserError(f'config.steps_per_call={config.steps_per_call} must be at least 1')
  if not 0 < config.learning_rate < math.inf:
    raise UserError(f'config.learning_rate={config.learning_rate} must be positive and finite')
  if not 0 <= config.noise.std < math.inf:
    raise UserError(f'config.noise.std={config.noise.std} must be 0 or more, and finite')
  if not math.isfinite(config.noise.mean):
    raise UserError(f'config.noise.mean={config.noise.mean} must be finite')
  _one_of(config.data.placement, ('auto', 'device', 'host', 'disk'), 'config.data.placement')
  _one_of(config.data.source, tuple(input_pipeline.READERS), 'config.data.source')
  # '' unsets a field on the command line (--config.data.path=), as None does in a file
  unread = [f for f in ('path', 'name', 'data_dir', 'manual_dir')
            if f not in SOURCE_FIELDS[config.data.source]
            and config.data.get(f) not in (None, '', defaults.data.get(f))]
  if trains and unread:  # a config.data.source forgotten: training would read other images
    readers = [s for s, fields in SOURCE_FIELDS.items() if unread[0] in fields]
    raise UserError(f'config.data.{unread[0]}={config.data.get(unread[0])!r} is not read by '
                    f"config.data.source='{config.data.source}': set config.data.source="
                    + (f'{", ".join(readers[:-1])} or {readers[-1]}' if len(readers) > 1
                       else readers[0])
                    + f' too, or leave config.data.{unread[0]} out')
  if config.data.image_size is not None and config.data.image_size < 1:
    raise UserError(f'config.data.image_size={config.data.image_size} must be at least 1')
  input_pipeline.classes.asked(config.data)  # both fields set: refused before any data is read
  if not 0 < config.data.validation_fraction < 1:
    raise UserError(f'config.data.validation_fraction={config.data.validation_fraction} '
                    'must be between 0 and 1 (exclusive)')


# configs/default.py: every field and its default. It sits beside the package, not in it.
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              'configs', 'default.py')


def default_config() -> ml_collections.ConfigDict:
  """configs/default.py's get_config(): every field with its default."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('ae_jax_default_config', DEFAULT_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def is_denoising(config) -> bool:
  return config.noise.std > 0


def display_name(config) -> str:
  """AE, CAE, VAE, ConvVAE; with a D in front for denoising (DAE, DCAE, DVAE, DConvVAE); beta
  where a VAE's is not 1."""
  name = ('D' if is_denoising(config) else '') + config.model.name
  if 'model.beta' in model_fields(config) and config.model.beta != 1:
    name += f' (beta {config.model.beta:g})'
  return name


def _describe(config) -> dict[str, object]:
  """What a run must keep to resume, as {'model.name': 'CAE', ...}: the model, its loss, the
  noise it trains against, the optimizer; the batch size and the training images (their source,
  dataset, split and classes), in whose steps and epochs the checkpoints count; the seed, which
  orders the data. The number of epochs, the learning rate, the dtype, where the data lives and
  the settings of speed alone (model.conv) may change."""
  data = {key: config.data.get(key) for key in ('source', 'name', 'train_split',
                                                 'validation_fraction', 'classes',
                                                 'held_out_classes')}
  data = {key: None if value == '' else value for key, value in data.items()}  # '': unset
  tree = json.loads(json.dumps({'model': config.model.to_dict(), 'noise': config.noise.to_dict(),
                                'optimizer': config.optimizer, 'loss': config.loss,
                                'batch_size': config.batch_size, 'seed': config.seed,
                                'data': data}))
  described = traverse_util.flatten_dict(tree, sep='.')
  described.pop('model.conv', None)  # how the convolutions run, not what they compute
  return described


def unwritable_folder(folder: str) -> str | None:
  """Where creating or writing `folder` would fail: the nearest folder of its path that exists,
  if it cannot be written (permissions, a read-only filesystem, an immutable flag); else None."""
  existing = folder
  while existing and not os.path.exists(existing):
    existing = os.path.dirname(existing)
  existing = existing or '.'
  return None if os.access(existing, os.W_OK | os.X_OK) else existing


def check_workdir(config, workdir: str) -> None:
  """Refuses, without writing anything, a workdir that cannot be written or holds another model."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f'the workdir {workdir} is a file, not a folder: choose another --workdir')
  if '[' in workdir:
    # orbax gathers a checkpoint's parts with a glob of its folder, where '[' starts a pattern
    raise UserError(f'the workdir {workdir} has a "[" in its path, under which orbax writes '
                    'checkpoints that cannot be read: choose another --workdir')
  unwritable = unwritable_folder(workdir)
  if unwritable:
    raise UserError(f'cannot write to the workdir {workdir} ({unwritable} is not writable): '
                    'choose another --workdir')
  if os.path.exists(os.path.join(workdir, 'config.json')):
    saved, asked = _describe(load_config(workdir)), _describe(config)
    differ = [f'config.{key} is {saved.get(key, "absent")!r} there, {asked.get(key, "absent")!r} '
              'here' for key in sorted(saved.keys() | asked.keys())
              if saved.get(key) != asked.get(key)]
    if differ:
      raise UserError(f'{workdir} holds another run ({"; ".join(differ)}), which cannot '
                      f'resume so: use a new --workdir, or delete {workdir} to start afresh')


@contextlib.contextmanager
def workdir_locked(workdir: str, enabled: bool = True):
  """Within: this process alone trains into `workdir` (an flock on the folder, which the kernel
  releases however the process ends); a second training there is refused in one line instead
  of the two overwriting each other's checkpoints and metrics."""
  if not enabled:
    yield
    return
  fd = os.open(workdir, os.O_RDONLY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
        raise UserError(f'another process is training in {workdir}: let it finish or stop it, '
                        'or train elsewhere with --workdir') from None
      # a filesystem without flock on folders (NFS, say): the run trains unguarded
    yield
  finally:
    os.close(fd)


def write_config(config, workdir: str) -> None:
  """Creates `workdir` and writes config.json there (after check_workdir)."""
  path = os.path.join(workdir, 'config.json')
  try:
    os.makedirs(workdir, exist_ok=True)
    with replaced_atomically(path) as tmp, open(tmp, 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  except OSError as e:
    raise cannot_write(e, 'the config to', path) from None


def check_run_folder(workdir: str) -> None:
  """Refuses a file given as a run's folder (its config.json, say), which the commands would
  otherwise report as a folder they cannot write."""
  if not os.path.isfile(workdir):
    return
  parent = os.path.dirname(workdir) or '.'
  if os.path.isfile(os.path.join(parent, 'config.json')):
    fix = f'give the folder that holds it, {parent}'
  else:
    fix = 'give the --workdir of a training run'
  raise UserError(f"{workdir} is a file, not a run's folder: {fix}")


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config that trained the run in `workdir` (its config.json), with the fields that an
  older run's config.json lacks at their defaults; a UserError for a field that nothing reads."""
  check_run_folder(workdir)
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise UserError(f'{path} does not exist: is {workdir!r} the --workdir of a training run?')
  try:
    with open(path) as f:
      saved = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f'{path} is not valid JSON ({e}): restore it from a copy, or delete '
                    f'{workdir} to start afresh') from None
  except OSError as e:
    raise UserError(f'cannot read {path}: {e.strerror}') from None
  if not isinstance(saved, dict):
    raise UserError(f'{path} holds no config (a JSON object of fields): restore it from a copy, '
                    f'or delete {workdir} to start afresh')
  config = default_config()
  check_known_fields(saved, config, path)
  _fill(config, saved, path)
  return config


def _fill(config, saved: dict, path: str, prefix: str = '') -> None:
  """config's fields set to `saved`'s (config.json's), recursively; the rest stay defaults."""
  for key, value in saved.items():
    # null where the default is a value (not a placeholder's None) would fail later, or read
    # as false, far from the file
    if value is None and key in config and config[key] is not None:
      what = ('section (its fields and defaults are in configs/default.py)'
              if isinstance(config[key], ml_collections.ConfigDict) else
              f'value (the default, in configs/default.py, is {config[key]!r})')
      raise UserError(f'{path}: config.{prefix}{key} is null: put back its {what}')
    if isinstance(value, dict):
      if key not in config or not isinstance(config[key], ml_collections.ConfigDict):
        config[key] = ml_collections.ConfigDict()
      _fill(config[key], value, path, f'{prefix}{key}.')
      continue
    try:
      config[key] = value
    except TypeError as e:
      raise UserError(f'{path}: config.{prefix}{key}={value!r} has the wrong type ({e}): '
                      'restore the file from a copy') from None
