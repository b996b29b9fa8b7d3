"""A grid of runs over config settings and seeds, each trained, evaluated and scored, in one table.

  python -m ae_jax.study --config=configs/dae.py --workdir=studies/noise \
      --grid=noise.std=0,0.1,0.2,0.3,0.5 --seeds=0,1,2

Each member (a grid point and a seed) is an ordinary run in its own sub-workdir, named after its
settings (studies/noise/noise.std=0.1_seed=0): train.train_and_evaluate trains it, and eval.sh
and tsne.sh work on it. Running the study again skips the members it has scored with the same
config, resumes an interrupted one and trains on one whose config changed (more epochs), then
scores it again. `--grid` may be given more than once (the product of the axes); a config file
may name its grid and seeds in config.study (configs/study_noise.py). --config.FIELD=... applies
to every member.

After training, every member is scored on its test split (else validation), best checkpoint:
MSE, BCE and PSNR (clean, and noisy for denoising members), and the kNN accuracy, linear-probe
accuracy and trustworthiness of its latent space (tsne.latent_space; a map is drawn only with
--maps); a member trained without some classes (config.data.held_out_classes) also by the
ROC-AUC and average precision of its anomaly scores as a detector of them (anomaly.py):

  python -m ae_jax.study --config=configs/ae.py --grid=data.held_out_classes=0,1,2,3,4,5,6,7,8,9

The study writes to its workdir:
  results.csv    a row per member: its settings, seed, every number, its workdir;
  results.md     a row per grid point: mean and standard deviation over the seeds, best in bold;
  <number>.png   ... against each grid axis, with error bars over the seeds (no grid: each seed);
  reconstructions.png  the same test images reconstructed at every grid point (seed of the first);
and TensorBoard's HParams view shows the members' settings against their numbers
(tensorboard --logdir studies/noise).

The data is read once for all members that share config.data, and JAX's compilation cache
(cli.py) lets members with the same shapes reuse one compilation. Members run one after another,
each on all devices.
"""

if __name__ == '__main__':  # a command: prepare the process before JAX is imported
  from ae_jax import launch
  launch.start()

import csv
import json
import math
import os
import time

import jax
import numpy as np

from ae_jax import UserError
from ae_jax import anomaly
from ae_jax import cannot_write
from ae_jax import read_npz
from ae_jax import replaced_atomically
from ae_jax import config_lib
from ae_jax import evaluate
from ae_jax import grid
from ae_jax import input_pipeline
from ae_jax import maps
from ae_jax import metric_writers
from ae_jax import plots
from ae_jax import train
from ae_jax import tsne

# The numbers of a member, and whether lower is better.
# (None: neither; a VAE's KL term is a cost paid for its latent's information.)
LOWER_IS_BETTER = {'mse': True, 'bce': True, 'psnr': False, 'nelbo': True,
                   'reconstruction': True, 'kl': None, 'knn_accuracy': False,
                   'linear_probe_accuracy': False, 'trustworthiness': False,
                   'roc_auc': False, 'average_precision': False}
# The numbers of eval.sh, reported for clean and for noisy inputs.
EVALUATED = ('mse', 'bce', 'psnr', 'nelbo', 'reconstruction', 'kl')
SCORE_FILE = 'study.json'  # in a member's workdir, once it is scored
RECONSTRUCTIONS = 'reconstructions.npz'  # in a member's workdir: its row of the study's figure


# --- A member -------------------------------------------------------------------------------

def score(workdir: str, config, splits, num_points: int, draw_map: bool,
          method: str = 'tsne') -> tuple[dict, dict]:
  """The numbers of a trained member (and its reconstructions, for the study's figure)."""
  run = evaluate.load_run(workdir, config, 'best', None, splits=splits)
  numbers = {f'clean_{k}': v for k, v in evaluate.evaluate(run, noisy=False).items()}
  if config_lib.is_denoising(config):
    numbers.update({f'noisy_{k}': v for k, v in evaluate.evaluate(run, noisy=True).items()})
  space = tsne.latent_space(run, num_points, num_train_points=tsne.NUM_TRAIN_POINTS,
                            perplexity=tsne.PERPLEXITY, seed=0, method=method)
  numbers.update(space.numbers)
  if input_pipeline.classes.asked(config.data):  # trained without some classes: detect them
    found = anomaly.anomaly_scores(run, anomaly.PERCENTILE)['report']
    numbers.update({k: found[k] for k in ('roc_auc', 'average_precision') if k in found})
  if draw_map:
    plots.tsne_map(space.embedding, space.images, space.labels, run.label_names,
                   os.path.join(workdir, f'{method}_{run.split}.png'),
                   f'{config_lib.display_name(config)} latents, {run.split} split')
  rows, _ = evaluate.reconstruction_rows(run, 10)
  # the map's method beside its trustworthiness, where it is not the t-SNE of earlier studies
  how = {} if method == 'tsne' else {'map_method': method}
  return {'split': run.split, 'checkpoint_step': run.step, **how, **numbers,
          'scored_with': scoring(num_points, method)}, rows


def scoring(num_points: int, method: str) -> dict:
  """The flags a member's latent-space numbers depend on, kept in its score (not in the
  table): trustworthiness of 500 points is not that of 2,000."""
  return {'num_points': num_points, 'method': method}


# --- The whole study ------------------------------------------------------------------------

def run_study(config, workdir: str, axes, seeds, *, num_points: int = 2000,
              draw_maps: bool = False, overrides=(), method: str = 'tsne') -> list[dict]:
  """Trains, scores and tabulates every member; returns the rows of results.csv."""
  found = grid.members(config, axes, seeds, overrides)
  data = check_members(workdir, found, method, num_points, draw_maps)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise cannot_write(e, 'the study to', workdir) from None
  print(f'study in {workdir}: {len(found)} members ({len(found) // len(seeds)} grid points x '
        f'{len(seeds)} seeds)')
  rows, reconstructions, diverged = [], {}, []
  start = time.time()
  for i, (name, settings, member) in enumerate(found):
    member_dir = os.path.join(workdir, name)
    scored = os.path.join(member_dir, SCORE_FILE)
    row = score_of(member_dir, member, scoring(num_points, method), draw_maps)
    if row is not None:
      print(f'[{i + 1}/{len(found)}] {name}: scored already')
    else:
      print(f'[{i + 1}/{len(found)}] {name}'
            + (': its score is of another config, other --num_points or --method, or lacks '
               'the --maps map, or is damaged, so it trains on and is scored again'
               if os.path.exists(scored) else ''))
      key = member.data.to_json()
      try:
        train.train_and_evaluate(member, member_dir, splits=data[key])
      except train.Diverged as e:  # a result of the grid (a learning rate too high), not a fault
        print(f'{name}: {e}; it is left out of the results')
        diverged.append(name)
        continue
      numbers, rows_of_images = score(member_dir, member, data[key], num_points, draw_maps,
                                      method)
      row = {**{f'config.{k}': v for k, v in settings.items()}, 'seed': member.seed,
             **numbers, 'workdir': member_dir}
      if jax.process_index() == 0:  # the others trained and scored alike
        metric_writers.write_hparams(member_dir, {**settings, 'seed': member.seed},
                                     {k: numbers[k] for k in _numbers([numbers])})
        path = os.path.join(member_dir, RECONSTRUCTIONS)
        try:
          with replaced_atomically(path) as tmp:
            np.savez_compressed(tmp, **rows_of_images)
        except OSError as e:
          raise cannot_write(e, 'the reconstructions to', path) from None
        _write_json(scored, row)
    rows.append(row)
    point = tuple(settings.items())
    if point not in reconstructions:
      path = os.path.join(member_dir, RECONSTRUCTIONS)
      try:
        reconstructions[point] = read_npz(path)
      except FileNotFoundError:
        pass
      except (OSError, ValueError) as e:  # the figure goes without it; the numbers stand
        print(f'note: cannot read {path} ({getattr(e, "strerror", None) or e}): '
              f'reconstructions.png leaves out {name}; delete {scored} and run the study '
              'again to score it anew')
  if not rows:
    raise UserError(f'every member diverged ({", ".join(diverged)}): lower config.learning_rate')
  if jax.process_index() == 0:
    write_results(workdir, axes, rows, reconstructions, diverged)
  print(f'study of {len(found)} members in {time.time() - start:.0f} s: wrote '
        f'{os.path.join(workdir, "results.csv")}, results.md and figures'
        + (f'; {len(diverged)} diverged, left out: {", ".join(diverged)}' if diverged else ''))
  return rows


def score_of(member_dir: str, member, how: dict, draw_map: bool = False) -> dict | None:
  """The member's row of results where its score stands: it has one that reads, scored as
  `how` (`scoring`) asks, with its map where one is asked for, and its config.json is the
  config it would train with now; else None (a study rerun with other settings trains it on,
  or refuses, and scores it again; a damaged score is scored anew)."""
  try:
    with open(os.path.join(member_dir, SCORE_FILE)) as f:
      row = json.load(f)
    # with the fields a newer ae_jax adds at their defaults, as training reads it
    saved = config_lib.load_config(member_dir)
  except (OSError, ValueError, UserError):
    return None
  if not isinstance(row, dict) or row.get('scored_with') != how:
    return None
  if draw_map and not os.path.exists(
      os.path.join(member_dir, f'{how["method"]}_{row.get("split")}.png')):
    return None
  same = (saved.to_json_best_effort(sort_keys=True)
          == member.to_json_best_effort(sort_keys=True))
  return row if same else None


def check_members(workdir: str, found, method: str = 'tsne', num_points: int = 2000,
                  draw_maps: bool = False) -> dict:
  """Every member yet to be scored checked against the devices, its data and its workdir, as
  training checks one, before the first trains: a late member's mistake would otherwise stop
  the study after hours. Returns the data read, {config.data as JSON: its splits}, each once."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f'the study workdir {workdir} is a file, not a folder: choose another '
                    '--workdir')
  data = {}
  for name, _, member in found:
    member_dir = os.path.join(workdir, name)
    if score_of(member_dir, member, scoring(num_points, method), draw_maps) is not None:
      continue
    key = member.data.to_json()
    if key not in data:
      data[key] = input_pipeline.load_splits(member.data)
    try:
      train.check_devices(member, jax.device_count())
      train.check_data(member, data[key])
      split = 'test' if 'test' in data[key] else 'validation'  # the split score() reads
      need = maps.min_points(method, tsne.PERPLEXITY)
      if len(data[key][split].images) < need:
        raise UserError(f'its {split} split has {len(data[key][split].images)} images, too few '
                        f'to score its latent space (a {method} map needs {need}): give it '
                        'more data')
      config_lib.check_workdir(member, member_dir)
    except UserError as e:
      raise UserError(f'member {name}: {e}') from None
  return data


def _write_json(path, value):
  try:
    with replaced_atomically(path) as tmp, open(tmp, 'w') as f:
      json.dump(value, f, indent=2)
  except OSError as e:
    raise cannot_write(e, 'the study results to', path) from None


def _numbers(rows) -> list[str]:
  """The numbers that any row has (noisy_* only denoising members), in a fixed order: for clean
  and then noisy inputs, those of LOWER_IS_BETTER and then a model's own (a new model's
  penalty) by name; 'loss' only where it is none of the others (a beta-VAE's reconstruction
  + beta kl)."""
  names = []
  for prefix in ('clean_', 'noisy_', ''):
    known = [prefix + metric for metric in LOWER_IS_BETTER if prefix or metric not in EVALUATED]
    names += [name for name in known if any(name in r for r in rows)]
    own = {k for r in rows for k in r if prefix and k.startswith(prefix)} - set(known)
    names += sorted(name for name in own
                    if name != prefix + 'loss' or not _repeats(rows, name, prefix))
  return names


def _repeats(rows, name: str, prefix: str) -> bool:
  """Whether the number `name` equals another of `prefix`'s numbers in every row."""
  return all(any(math.isclose(row[name], value, rel_tol=1e-6) for key, value in row.items()
                 if key != name and key.startswith(prefix))
             for row in rows if name in row)


def _better(name: str) -> bool | None:
  """Whether a lower value of the number `name` is better (None: neither, or not known)."""
  return LOWER_IS_BETTER.get(name.removeprefix('noisy_').removeprefix('clean_'))


def summarize(axes, rows) -> list[dict]:
  """A row per grid point: its settings, and (mean, std) over its seeds of each number."""
  names = _numbers(rows)
  fields = [f'config.{path}' for path, _ in axes]
  points = {}
  for row in rows:
    points.setdefault(tuple(row[f] for f in fields), []).append(row)
  summary = []
  for point, members_of_point in points.items():
    entry = dict(zip(fields, point))
    entry['seeds'] = len(members_of_point)
    for name in names:
      values = np.array([m[name] for m in members_of_point if name in m], float)
      if len(values):
        entry[name] = (float(values.mean()),
                       float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    summary.append(entry)
  return summary


def write_results(workdir: str, axes, rows, reconstructions, diverged=()) -> None:
  names = _numbers(rows)
  fields = [f'config.{path}' for path, _ in axes]
  summary = summarize(axes, rows)
  try:
    with (replaced_atomically(os.path.join(workdir, 'results.csv')) as tmp,
          open(tmp, 'w', newline='') as f):
      method = ['map_method'] if any('map_method' in r for r in rows) else []
      writer = csv.DictWriter(f, fieldnames=fields + ['seed', 'split', 'checkpoint_step'] + method
                              + names + ['workdir'], extrasaction='ignore')
      writer.writeheader()
      writer.writerows(rows)
    with replaced_atomically(os.path.join(workdir, 'results.md')) as tmp, open(tmp, 'w') as f:
      f.write(markdown_table(summary, fields, names)
              + (f'\nDiverged, left out: {", ".join(diverged)}.\n' if diverged else ''))
    for name in names:
      path = os.path.join(workdir, f'{name}.png')
      if axes:
        plots.study_number([e for e in summary if name in e], axes, name, path)
      else:  # seeds alone: one point, so each seed's number
        seeds = [(r['seed'], r[name]) for r in rows if name in r]
        plots.study_seeds([s for s, _ in seeds], [v for _, v in seeds], summary[0][name], name,
                          path)
    if reconstructions:
      plots.study_reconstructions(reconstructions, os.path.join(workdir, 'reconstructions.png'))
  except OSError as e:
    raise cannot_write(e, 'the study results to', workdir) from None


def markdown_table(summary, fields, names) -> str:
  """Mean ± std over seeds per grid point; the best mean of each column in bold, where points
  compare."""
  best = {}
  for name in names:
    means = [entry[name][0] for entry in summary if name in entry]
    best[name] = (None if _better(name) is None or len(means) < 2 else
                  min(means) if _better(name) else max(means))
  header = ' | '.join([f.removeprefix('config.') for f in fields] + ['seeds'] + names)
  lines = [f'| {header} |', '|' + ' --- |' * (len(fields) + 1 + len(names))]
  for entry in summary:
    cells = [str(entry[f]) for f in fields] + [str(entry['seeds'])]
    for name in names:
      if name not in entry:
        cells.append('')
        continue
      mean, std = entry[name]
      digits = (5 if 'mse' in name or 'bce' in name else
                2 if any(n in name for n in ('psnr', 'nelbo', 'reconstruction', 'kl')) else 4)
      cell = f'{mean:.{digits}f} ± {std:.{digits}f}'
      cells.append(f'**{cell}**' if mean == best[name] else cell)
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(config, workdir: str, grid_specs, seeds_text, num_points: int, draw_maps: bool,
         overrides=(), method: str = 'tsne'):
  study_config = config.get('study') or {}
  specs = grid_specs or list(study_config.get('grid', ()))
  seeds = grid.parse_seeds(seeds_text or study_config.get('seeds', '0'))
  axes = grid.parse_grid(config, specs)
  maps.check_settings(method, tsne.PERPLEXITY, maps.UMAP_NEIGHBORS)
  maps.check_points(method, num_points, tsne.PERPLEXITY, maps.UMAP_NEIGHBORS,
                    f'--num_points={num_points}', settable=False)  # the maps' usual settings
  return run_study(config, workdir, axes, seeds, num_points=num_points, draw_maps=draw_maps,
                   overrides=overrides, method=method)


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from ae_jax import cli  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file('config', None, 'The config every member starts from.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Folder of the study (default: studies/<config name>).')
  flags.DEFINE_multi_string('grid', [], 'FIELD=VALUE,VALUE,... (repeat for a product of axes); '
                            'default: the config file\'s config.study.grid.')
  flags.DEFINE_string('seeds', None, 'Seeds of each grid point, e.g. 0,1,2 (default: '
                      'config.study.seeds, else 0).')
  flags.DEFINE_integer('num_points', 2000, 'Test points that each member\'s latent space is '
                       'scored on (t-SNE for the trustworthiness).')
  flags.DEFINE_bool('maps', False, 'Also draw a t-SNE map per member.')
  flags.DEFINE_string('method', 'tsne', 'The map that the trustworthiness scores: tsne (as '
                      'earlier studies), or umap.')
  flags.mark_flags_as_required(['config'])
  FLAGS = flags.FLAGS

  def _main(argv):
    del argv
    workdir = FLAGS.workdir  # not '': cli refuses an empty flag
    if workdir is None:
      workdir = cli.default_workdir(config_flags.get_config_filename(FLAGS['config']), 'studies')
    config_lib.check_known_fields(FLAGS.config, config_lib.default_config(),
                                  config_flags.get_config_filename(FLAGS['config']))
    overrides = [arg[len('--config.'):] for arg in sys.argv if arg.startswith('--config.')]
    if any('=' not in o for o in overrides):
      raise UserError('write each --config.FIELD=VALUE with an = in a study')
    if FLAGS.method == 'umap':
      from ae_jax import maps  # pylint: disable=g-import-not-at-top
      maps.use_numba_cache(FLAGS.compilation_cache)
    main(FLAGS.config, workdir, FLAGS.grid, FLAGS.seeds, FLAGS.num_points, FLAGS.maps,
         overrides, FLAGS.method)

  cli.run(_main)
