"""A study's grid: --grid=FIELD=VALUE,... and --seeds=... -> the config of every member."""

import ast
import itertools
import os

import ml_collections

from ae_jax import UserError
from ae_jax import config_lib


def _field(config, path: str):
  """(the ConfigDict that holds `path`, its last name); a UserError where there is no such field."""
  node = config
  parts = path.split('.')
  for part in parts[:-1]:
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise UserError(f'--grid: no such config field: {path} (the fields are in '
                      'configs/default.py)')
    node = node[part]
  if not isinstance(node, ml_collections.ConfigDict) or parts[-1] not in node:
    raise UserError(f'--grid: no such config field: {path} (the fields are in configs/default.py)')
  return node, parts[-1]


def _parse(text: str, kind, path: str):
  """One grid value, read as the field's type (ml_collections checks the assignment again)."""
  text = text.strip()
  try:
    if kind is bool:
      if text.lower() not in ('true', 'false', '1', '0'):
        raise ValueError
      return text.lower() in ('true', '1')
    if kind is int:
      return int(text)
    if kind is float:
      return float(text)
    if kind is str:
      return text
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise UserError(f'--grid={path}=...: {text!r} is not a {getattr(kind, "__name__", kind)}, '
                    f'the type of config.{path}') from None


# The grid axis over whole experiments: --grid=config=ae,dae,vae trains each config file's
# model (configs/ae.py, ...), with the command line's --config.FIELD=... applied to each.
CONFIG_AXIS = 'config'


def load_config_file(name: str, overrides=()) -> ml_collections.ConfigDict:
  """The config of configs/`name`.py (or of the file `name`), with `overrides` ('FIELD=VALUE',
  as after --config.) applied."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from ae_jax import cli  # pylint: disable=g-import-not-at-top
  path = name if name.endswith('.py') else os.path.join(cli.CONFIGS, f'{name}.py')
  if not os.path.isfile(path):
    there = sorted(f[:-3] for f in os.listdir(cli.CONFIGS)
                   if f.endswith('.py') and not f.startswith('_') and f != 'default.py')
    raise UserError(f'--grid={CONFIG_AXIS}=...: there is no config {name!r}; the configs are: '
                    f'{", ".join(there)}')
  spec = importlib.util.spec_from_file_location(f'ae_jax_study_config_{len(name)}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config_lib.check_known_fields(config, config_lib.default_config(), path)
  for override in overrides:
    field, _, value = override.partition('=')
    node, leaf = _field(config, field)
    try:
      node[leaf] = _parse(value, node.get_type(leaf), field)
    except TypeError as e:
      raise UserError(f'--config.{override}: {e}') from None
  return config


def parse_grid(config, specs) -> list[tuple[str, list]]:
  """['noise.std=0,0.1', ...] -> [('noise.std', [0.0, 0.1]), ...], each value checked; the
  axis 'config' names config files."""
  axes = []
  for spec in specs:
    path, sep, values = spec.partition('=')
    if not sep:
      raise UserError(f'--grid={spec!r}: write FIELD=VALUE,VALUE,... '
                      '(e.g. --grid=noise.std=0,0.1,0.2)')
    if any(not value.strip() for value in values.split(',')):
      raise UserError(f'--grid={spec!r} has an empty value (an unset shell variable, or a comma '
                      'too many?): write FIELD=VALUE,VALUE,... (e.g. --grid=noise.std=0,0.1,0.2)')
    if path.strip() == 'seed':
      raise UserError('--grid=seed=...: give the seeds with --seeds=0,1,2')
    if path.strip() == CONFIG_AXIS:
      names = [v.strip() for v in values.split(',')]
      for name in names:
        load_config_file(name)  # a name that is not a config, refused now
      if len(set(names)) != len(names):
        raise UserError(f'--grid={spec!r} names a value twice')
      axes.append((CONFIG_AXIS, names))
      continue
    node, name = _field(config, path.strip())
    kind = node.get_type(name)
    if kind is ml_collections.ConfigDict:
      raise UserError(f'--grid cannot vary config.{path.strip()}, a section: vary one of its '
                      f'fields ({", ".join(node[name].keys())}), --grid={path.strip()}.FIELD='
                      f'{values}')
    if kind in (tuple, list):  # its own commas would split its values
      raise UserError(f'--grid cannot vary config.{path.strip()}, a {kind.__name__}: write a '
                      'config file per value, and give them with --grid=config=NAME,NAME')
    parsed = [_parse(v, kind, path) for v in values.split(',')]
    if len(set(map(repr, parsed))) != len(parsed):
      raise UserError(f'--grid={spec!r} names a value twice')
    axes.append((path.strip(), parsed))
  if len({path for path, _ in axes}) != len(axes):
    raise UserError('--grid names a field twice: give each field once, with all its values')
  return axes


def parse_seeds(text: str) -> list[int]:
  try:
    seeds = [int(s) for s in text.split(',')]
  except ValueError:
    raise UserError(f'--seeds={text!r}: write whole numbers separated by commas, e.g. 0,1,2'
                    ) from None
  if len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise UserError(f'--seeds={text!r}: give distinct seeds, 0 or more')
  return seeds


def _value_name(value) -> str:
  # brackets too: orbax cannot read checkpoints under a path with '[' (config_lib.check_workdir)
  return (str(value).replace('/', '_').replace(' ', '').replace('[', '(')
          .replace(']', ')'))


def _one_folder(first: dict, second: dict, folder: str) -> UserError:
  """The refusal of two grid points whose settings name one member folder (a/b and a_b)."""
  differ = [path for path in first if first[path] != second[path]]
  shown = lambda settings: ', '.join(f'{path}={settings[path]}' for path in differ)
  return UserError(f"--grid: {shown(first)} and {shown(second)} name one member folder, {folder} "
                   "(a folder's name has '_' for '/', '(' and ')' for '[' and ']', and no "
                   'spaces): write one of them otherwise (a path as ./PATH, say)')


def members(config, axes, seeds, overrides=()) -> list[tuple[str, dict,
                                                             ml_collections.ConfigDict]]:
  """(name, settings, config) of every member: each grid point with each seed. `overrides`:
  the command line's --config.FIELD=VALUE, for the configs that a 'config' axis names."""
  found, folders = [], {}
  for values in itertools.product(*[v for _, v in axes]):
    for seed in seeds:
      settings = dict(zip([path for path, _ in axes], values))
      folder = '_'.join(f'{path}={_value_name(v)}' for path, v in settings.items())
      folder = (folder + '_' if folder else '') + f'seed={seed}'
      if folder in folders:  # two members would train, and resume, in one folder
        raise _one_folder(folders[folder], settings, folder)
      folders[folder] = settings
      if CONFIG_AXIS in settings:
        member = load_config_file(settings[CONFIG_AXIS], overrides)
      else:
        member = config.copy_and_resolve_references()
      for path, value in settings.items():
        if path == CONFIG_AXIS:
          continue
        node, name = _field(member, path)
        try:
          node[name] = value
        except TypeError as e:
          raise UserError(f'--grid: config.{path}={value!r}: {e}') from None
      member.seed = seed
      try:  # the same checks as training, before any member trains
        config_lib.validate(member)
      except UserError as e:
        hint = ('; to vary models whose fields differ, vary their config files: --grid=config='
                'NAME,NAME' if 'model.name' in settings and 'is not used by the' in str(e) else '')
        raise UserError(f'member {folder}: {e}{hint}') from None
      found.append((folder, settings, member))
  return found
