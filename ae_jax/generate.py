"""Draws from a trained run's latent space: samples from the prior, walks between images or
classes, and the decoded grid of a 2-D latent.

  scripts/generate.sh [runs/vae] [--walk=3,7] [--walk_images=12,345] [--num_samples=64]
  scripts/generate.sh [runs/vae] --input=FOLDER|ARRAY.npy [--walk_images=cat.png,dog.png]

Without a workdir: the run under runs/ that trained last. Writes to workdir/generate/:
  samples.png  images decoded from draws of the prior N(0, I) (models with a prior: the VAEs);
  walk.png     a walk through the latent space, decoded at --steps evenly spaced points: between
               the mean latents of two classes (--walk=3,7, by label number or name) and between
               pairs of their images, or between two images of the split (--walk_images=I,J);
               without either, between random pairs of images. Every model walks: the AE and
               the CAE between encodings, the VAEs between posterior means. With --input, the
               walks are between images of the user's own (--walk_images by index, by file as
               the folder lists it, or by a name that one file has), in <input>_walk.png, and
               there are no samples unless --num_samples asks for them, and no grid;
  grid.png     for a 2-D latent with a prior, the latents at evenly spaced quantiles of the prior
               in each dimension, decoded (Keras's VAE figure).
"""

if __name__ == '__main__':  # a command: prepare the process before JAX is imported
  from ae_jax import launch
  launch.start()

import os

import jax
import numpy as np

from ae_jax import UserError
from ae_jax import cannot_write
from ae_jax import config_lib
from ae_jax import evaluate
from ae_jax import launch
from ae_jax import metrics
from ae_jax import models
from ae_jax import plots

WALK_PAIRS = 4  # rows of a walk between classes, besides the row between their means


def _embedder(run):
  """(images uint8) -> their latents, decodable, a batch at a time."""
  embed = jax.jit(lambda variables, x: run.model.apply(variables, metrics.to_float(x),
                                                       method='embed'),
                  compiler_options=models.compiler_options(run.model))
  batch = metrics.eval_batch_size(run.config, run.model, 1_000, 1)

  def latents(images):
    # every call takes `batch` images, padded with zeros: one shape, so the encoder compiles
    # once, whatever sizes two classes and a pair of images leave
    out = []
    for i in range(0, len(images), batch):
      part = images[i:i + batch]
      padded = np.zeros((batch, *part.shape[1:]), part.dtype)
      padded[:len(part)] = part
      out.append(np.asarray(embed(run.variables, padded))[:len(part)])
    return np.concatenate(out)
  return latents


def parse_pair(text: str, flag: str) -> tuple[str, str]:
  parts = [p.strip() for p in text.split(',')]
  if len(parts) != 2 or not all(parts):
    raise UserError(f'--{flag}={text!r}: give two values separated by a comma, e.g. '
                    f'--{flag}=' + ('3,7' if flag == 'walk' else '12,345'))
  return parts[0], parts[1]


def _label(run, text: str) -> int:
  """A label given by number or by name, as the data has it."""
  names = list(run.label_names or [])
  present = sorted(set(np.unique(run.labels).tolist()))
  shown = ', '.join(f'{i} ({names[i]})' if i < len(names) else str(i) for i in present)
  if text in names:
    label = names.index(text)
  else:
    try:
      label = int(text)
    except ValueError:
      label = None
  if label is None or label not in present:
    raise UserError(f'--walk: the {run.split} split has no label {text!r}; it has {shown}')
  return label


def _file_names(run) -> list[str]:
  """Each image's file as an --input folder lists it (sub/cat.png), or its name."""
  if run.input and os.path.isdir(run.input):
    return [os.path.relpath(f, os.path.abspath(run.input)) for f in run.files]
  return [os.path.basename(f) for f in run.files]


def _index(run, text: str) -> int:
  """An image of the split by index, or of an --input by its file too."""
  if run.files is not None:
    listed = _file_names(run)
    if text in listed:
      return listed.index(text)
    named = [n for n in listed if os.path.basename(n) == text]
    if len(named) == 1:
      return listed.index(named[0])
    if named:
      raise UserError(f'--walk_images: {text!r} names {len(named)} files, '
                      f'{", ".join(named[:3])}{", ..." if len(named) > 3 else ""}: give its path')
  try:
    index = int(text)
  except ValueError:
    index = -1
  if not 0 <= index < len(run.images):
    what = f'the {run.split} split' if run.input is None else f'--input={run.input}'
    raise UserError(f'--walk_images: {text!r} is not an image of {what}: give indices from 0 '
                    f'to {len(run.images) - 1}' + (' or file names' if run.files else ''))
  return index


def walk_rows(run, walk, walk_images, steps: int, seed: int) -> dict[str, np.ndarray]:
  """{row title: the decoded walk, (steps, H, W, C)}: the rows of walk.png."""
  embed, decode = _embedder(run), models.jit_method(run.model, 'decode')
  line = lambda a, b: np.stack([(1 - t) * a + t * b for t in np.linspace(0, 1, steps)])
  rng = np.random.default_rng(seed)
  rows = {}
  if walk is not None:
    if run.labels is None:
      what = f'the {run.split} split has' if run.input is None else f'--input={run.input} has'
      raise UserError(f'--walk={walk}: {what} no labels; walk between two of its images with '
                      '--walk_images=I,J')
    a, b = (_label(run, t) for t in parse_pair(walk, 'walk'))
    name = lambda label: run.label_names[label] if run.label_names else str(label)
    chosen = [np.flatnonzero(run.labels == label) for label in (a, b)]
    means = [embed(run.images[c]).mean(0) for c in chosen]
    rows[f'{name(a)} → {name(b)}\nclass means'] = decode(run.variables, line(*means))
    for _ in range(WALK_PAIRS):
      i, j = rng.choice(chosen[0]), rng.choice(chosen[1])
      rows[f'{name(a)} → {name(b)}\nimages {i}, {j}'] = decode(
          run.variables, line(*embed(run.images[np.array([i, j])])))
  else:
    if walk_images is not None:
      pairs = [tuple(_index(run, t) for t in parse_pair(walk_images, 'walk_images'))]
    else:
      pairs = [tuple(rng.choice(len(run.images), 2, replace=False)) for _ in range(WALK_PAIRS)]
    names = None if run.files is None else _file_names(run)
    for i, j in pairs:
      if names is None:
        title = f'images\n{i} → {j}'
      else:  # the files' own ends: what tells them apart
        end = lambda k: os.path.splitext(names[k])[0][-14:]
        title = f'{end(i)}\n→ {end(j)}'
        if title in rows:
          title += f' ({i}, {j})'
      rows[title] = decode(run.variables, line(*embed(run.images[np.array([i, j])])))
  return {title: np.asarray(images) for title, images in rows.items()}


def prior_grid(run, size: int) -> tuple[np.ndarray, np.ndarray]:
  """For a 2-D latent: (the decoded images (size, size, H, W, C), the latent values of each
  axis), at evenly spaced quantiles of N(0, 1) from 5% to 95%."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  values = stats.norm.ppf(np.linspace(0.05, 0.95, size)).astype(np.float32)
  z = np.stack(np.meshgrid(values, values[::-1]), -1).reshape(-1, 2)  # z2 rises up the figure
  images = np.asarray(models.jit_method(run.model, 'decode')(run.variables, z))
  return images.reshape(size, size, *images.shape[1:]), values


MAX_STEPS = 100  # images in a row of a figure


def main(workdir, config, checkpoint, split, num_samples, walk, walk_images, steps, grid_size,
         seed, out_dir=None, input_path=None) -> dict:
  if walk is not None and walk_images is not None:
    raise UserError('give --walk (two classes) or --walk_images (two images), not both')
  if not 2 <= steps <= MAX_STEPS:
    raise UserError(f'--steps={steps}: a walk needs at least 2 points, and a row of more than '
                    f'{MAX_STEPS} images is too fine to see (matplotlib draws 2,000 in minutes)')
  if num_samples is not None and num_samples < 0:
    raise UserError(f'--num_samples={num_samples} must be 0 (none) or more')
  if not 2 <= grid_size <= MAX_STEPS:
    raise UserError(f'--grid_size={grid_size}: the grid needs from 2 to {MAX_STEPS} points a '
                    'side')
  config_lib.check_seed(seed, '--seed')
  out_dir = evaluate.output_dir(workdir, out_dir, 'generate')
  if input_path is None:
    run = evaluate.load_run(workdir, config, checkpoint, split)
  else:
    evaluate.check_input(workdir, config, split, input_path, out_dir, 'to walk between',
                         reads_data=False)
    run = evaluate.given_images(evaluate.load_run(workdir, config, checkpoint, 'validation',
                                                  needs_data=False), input_path)
    if len(run.images) < 2:
      raise UserError(f'--input={input_path} holds one image: a walk needs two')
  prior = models.has_prior(run.model)
  if num_samples and not prior:
    raise UserError(f'--num_samples={num_samples}: the {config.model.name} has no prior to '
                    'sample from (the VAEs have: configs/vae.py); its walks need none')
  # with --input, the walk between its images alone, unless samples are asked for
  num_samples = ((64 if prior and input_path is None else 0) if num_samples is None
                 else num_samples)
  name = config_lib.display_name(config)
  figures = {}
  if num_samples:
    z = jax.random.normal(jax.random.PRNGKey(seed), (num_samples, run.model.latent_dim))
    figures['samples'] = lambda path: plots.image_grid_figure(
        np.asarray(models.jit_method(run.model, 'decode')(run.variables, z)), path,
        f'{name}: {num_samples} samples from the prior, step {run.step}')
  rows = walk_rows(run, walk, walk_images, steps, seed)
  walk_name = 'walk' if input_path is None else f'{run.split}_walk'  # not the split's walk
  # each column's place on the line between the two ends (0 and 1: the ends, decoded)
  fractions = [f'{t:.2g}' for t in np.linspace(0, 1, steps)]
  figures[walk_name] = lambda path: plots.reconstructions(
      rows, fractions, path, f'{name}: walks through the latent space, {evaluate.source(run)}, '
      f'step {run.step}')
  if prior and run.model.latent_dim == 2 and input_path is None:
    grid, values = prior_grid(run, grid_size)
    figures['grid'] = lambda path: plots.latent_grid(
        grid, values, path, f'{name}: the 2-D latent space decoded, step {run.step}')
  launch.start_up_done()
  written = []
  try:
    os.makedirs(out_dir, exist_ok=True)
    for figure, draw in figures.items():
      path = os.path.join(out_dir, f'{figure}.png')
      draw(path)
      written.append(path)
  except OSError as e:
    raise cannot_write(e, 'the figures to', out_dir, flag='--out_dir') from None
  if not prior:
    print(f'the {config.model.name} has no prior: walks only (samples and the grid need a VAE)')
  elif run.model.latent_dim != 2 and input_path is None:
    print(f'the latent has {run.model.latent_dim} dimensions: no grid (it needs 2: '
          '--config.model.latent_dim=2 when training)')
  print(f'wrote {", ".join(written)}')
  return {'figures': written}


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ae_jax import cli  # pylint: disable=g-import-not-at-top

  cli.define_run_flags(sys.argv)
  flags.DEFINE_integer('num_samples', None, 'Samples from the prior (VAEs; default 64).')
  flags.DEFINE_string('walk', None, 'Walk between two classes: their labels, e.g. 3,7, or names.')
  flags.DEFINE_string('walk_images', None, 'Walk between two images of the split: indices I,J.')
  flags.DEFINE_integer('steps', 10, 'Points of a walk, its ends included.')
  flags.DEFINE_integer('grid_size', 15, 'Points a side of the grid of a 2-D latent.')
  flags.DEFINE_integer('seed', 0, 'Seed of the samples and of the images walked between.')
  flags.DEFINE_string('out_dir', None, 'Where to write (default: WORKDIR/generate).')
  flags.DEFINE_string('input', None, 'Walk between images of your own: a folder of images (its '
                      'subfolders too) or a .npy of images.')
  FLAGS = flags.FLAGS
  cli.run(lambda argv: main(cli.run_workdir(FLAGS.workdir), FLAGS.config, FLAGS.checkpoint,
                            FLAGS.split, FLAGS.num_samples, FLAGS.walk, FLAGS.walk_images,
                            FLAGS.steps, FLAGS.grid_size, FLAGS.seed, FLAGS.out_dir,
                            FLAGS.input))
