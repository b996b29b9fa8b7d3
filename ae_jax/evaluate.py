"""Evaluates a trained run: MSE, binary cross-entropy and PSNR on a split, and a figure; for a
VAE also the negative ELBO, its reconstruction and KL parts, and the importance-weighted
estimate of -log p(x), in nats per image.

  scripts/eval.sh [runs/cae] [--split=test] [--checkpoint=best] [--num_examples=10]
  scripts/eval.sh runs/vae [--num_samples=1000] [--iw_images=10000]
  scripts/eval.sh runs/cae --input=FOLDER|IMAGE|ARRAY.npy

Without a workdir: the run under runs/ that trained last. Without --split: the test split where
the run's data has one, else validation. --input evaluates on images of the user's own instead
(given_images), and <split> is then the input's name. Writes workdir/eval/<split>.json and
workdir/eval/<split>_reconstructions.png. Denoising models are measured twice: on noisy inputs
(noise from the run's seed, so two evaluations agree) and on clean ones; the target is always
the clean image.
"""

if __name__ == '__main__':  # a command: prepare the process before JAX is imported
  from ae_jax import launch
  launch.start()

import functools
import json
import os
import sys
import time
from typing import Any, NamedTuple

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from ae_jax import UserError
from ae_jax import cannot_write
from ae_jax import checkpoints
from ae_jax import config_lib
from ae_jax import input_pipeline
from ae_jax import metrics
from ae_jax import models
from ae_jax import plots
from ae_jax import replaced_atomically
from ae_jax import launch
from ae_jax import train
from ae_jax.input_pipeline import given

SPLITS = ('test', 'validation', 'train')


class TrainedRun(NamedTuple):
  config: Any
  model: Any
  variables: dict
  step: int
  split: str  # the evaluated split
  images: np.ndarray
  labels: np.ndarray | None
  label_names: tuple[str, ...] | None
  splits: dict  # all splits, for what needs the training data too
  mesh: Any
  files: tuple[str, ...] | None = None  # the file of each image, for data read from files
  input: str | None = None  # --input, where the images are the user's own (given_images)
  background: float | None = None  # of the training images (checkpoints.trained_background)


def source(run: TrainedRun) -> str:
  """What the run's images are, for printed lines and titles: 'test split', or --input."""
  return f'{run.split} split' if run.input is None else run.input


def source_field(run: TrainedRun) -> dict:
  """What the run's images are, for a JSON report: {'split': ...} or {'input': its path}."""
  return {'split': run.split} if run.input is None else {'input': os.path.abspath(run.input)}


def load_run(workdir: str, config, checkpoint: str, split: str | None,
             splits=None, *, needs_data: bool = True) -> TrainedRun:
  """The model of `workdir` at `checkpoint` (only its variables are read) and the data.

  `split` None: the test split where the data has one, else validation (and it says so).
  `splits`: the data, where the caller has read it already.
  `needs_data` False: the model alone, without its data (no images, no splits) where the
  checkpoints record the shape of its images, for a caller that brings images of its own.
  """
  if split is not None and split not in SPLITS:
    raise UserError(f'--split={split!r} is not one of: {", ".join(SPLITS)}')
  config_lib.load_config(workdir)  # a clear error if this is no training run
  # the overrides, checked as training's are
  config_lib.validate(config, 'the --config.* flags', trains=False)
  trained_shape = checkpoints.trained_image_shape(workdir)
  background = checkpoints.trained_background(workdir)
  if not needs_data and trained_shape is not None:
    model, abstract = _abstract_model(config, trained_shape)
    mesh, step, variables = _restore(workdir, config, checkpoint, abstract)
    return TrainedRun(config, model, variables, step, split, None, None, None, {}, mesh,
                      background=background)
  if splits is None:
    splits = load_data(workdir, config)
  if split is None:
    split = 'test' if 'test' in splits else 'validation'
    print(f'split: {split} (' + ('' if split == 'test' else 'the data has no test split; ')
          + '--split=validation or train for another)'.replace(f'{split} or ', ''))
  if split not in splits:  # where config.data.test_split names one, the data has none
    raise UserError(f'the data of this run has no {split} split' + (
        ': use --split=validation' if config.data.test_split else
        ' (config.data.test_split is empty): use --split=validation, or name a test split with '
        '--config.data.test_split=...'))
  model, abstract = check_image_shape(workdir, config, splits)
  mesh, step, variables = _restore(workdir, config, checkpoint, abstract)
  data = splits[split]
  return TrainedRun(config, model, variables, step, split, data.images, data.labels,
                    data.label_names, splits, mesh, data.files, background=background)


def load_model(workdir: str, checkpoint: str | int = 'best') -> TrainedRun:
  """For Python: the trained model of `workdir` at `checkpoint` ('best', 'latest' or a step),
  with its variables and the config that trained it. Its methods take images of the trained
  shape, (N, H, W, C), uint8 or floats in [0, 1]:
  `run.model.apply(run.variables, images, method='embed')`; 'reconstruct', 'encode' and
  'decode' likewise. The data is read only where the checkpoints do not record the images'
  shape (a run from before they did)."""
  if not isinstance(workdir, (str, os.PathLike)):
    raise UserError(f'workdir={workdir!r}: give the folder of a training run, as a str')
  try:
    return load_run(workdir, config_lib.load_config(workdir), str(checkpoint), 'validation',
                    needs_data=False)
  except UserError as e:  # the messages name the commands' flags: here, these arguments
    raise UserError(str(e).replace('--checkpoint=', 'checkpoint=').replace(
        'the --workdir of', 'the workdir of')) from None


def load_data(workdir: str, config):
  """The splits of config.data, read as the model of `workdir` takes its images where they are
  other data than its own."""
  data_config = config.data
  trained_shape = checkpoints.trained_image_shape(workdir)
  if trained_shape is not None and names_other_data(config.data,
                                                    config_lib.load_config(workdir).data):
    data_config = as_trained(config.data, trained_shape)
  return input_pipeline.load_splits(data_config)


def check_image_shape(workdir: str, config, splits):
  """(the model for the images of `splits`, the shapes of its variables); a UserError where
  the model of `workdir` cannot take them (a dense model, images of another shape)."""
  trained_shape = checkpoints.trained_image_shape(workdir)
  shape = tuple(splits['train'].images.shape[1:])
  model, abstract = _abstract_model(config, shape)
  shapes_of = lambda tree: jax.tree.map(lambda x: x.shape, tree)
  if trained_shape is not None and shape != trained_shape and (
      shapes_of(abstract) != shapes_of(_abstract_model(config, trained_shape)[1])):
    # (a convolutional model takes other sizes with the same weights)
    raise UserError(f'the images of config.data are {shown(shape)} and the model of {workdir} '
                    f'takes {shown(trained_shape)}: '
                    + _fit(shape, trained_shape, config.data.grayscale))
  return model, abstract


def check_input(workdir: str, config, split: str | None, input_path: str, out_dir: str,
                what: str, reads_data: bool) -> None:
  """Refuses, before the run is read, --input beside --split, an --input that names no images
  or holds `out_dir`, and, where the command does not read the run's data (`reads_data`
  False, and the checkpoints record the image shape), --config.data.* overrides, which would
  be ignored."""
  if split is not None:
    raise UserError(f'--input={input_path} and --split={split}: name one, the images {what} or '
                    'the split of the run\'s data')
  if not reads_data:
    check_data_unread(workdir, config, input_path)
  given.check_input(input_path, out_dir)


def check_data_unread(workdir: str, config, input_path: str) -> None:
  """Refuses --config.data.* overrides beside --input for a command that reads only --input's
  images (where the checkpoints record the image shape): they would be ignored."""
  # a run whose checkpoints do not record its image shape reads its data to learn it
  if (checkpoints.trained_image_shape(workdir) is not None
      and config.data.to_dict() != config_lib.load_config(workdir).data.to_dict()):
    raise UserError(f'--config.data.* names data, which --input={input_path} leaves unread '
                    '(its images are converted to what the model takes): leave them out')


def given_images(run: TrainedRun, input_path: str) -> TrainedRun:
  """The run with --input's images (a folder, an image file or a .npy) in place of its split's,
  converted as training converts them, without labels; the split is named after the input."""
  kind, names = given.list_inputs(input_path)
  names, images, _, _ = given.read(input_path, kind, names, run.model.image_shape,
                                   run.background)
  files = None if kind == 'npy' else tuple(
      os.path.abspath(os.path.join(input_path, n) if kind == 'folder' else input_path)
      for n in names)
  return run._replace(split=given.input_name(input_path), images=images, labels=None,
                      label_names=None, files=files, input=input_path)


def _abstract_model(config, image_shape):
  """(the model for images of `image_shape`, the shapes and dtypes of its variables)."""
  model = models.create_model(config, image_shape)
  # the key's shape alone: PRNGKey(0) made eagerly compiles two small programs every command
  return model, jax.eval_shape(functools.partial(models.init_variables, model),
                               jax.eval_shape(jax.random.PRNGKey, 0))


def _restore(workdir: str, config, checkpoint: str, abstract):
  """(mesh, step, variables): the variables saved at `checkpoint`, replicated on the mesh. A
  checkpoint that does not fit a model changed by --config.model.* overrides names them."""
  try:
    return _restore_variables(workdir, checkpoint, abstract)
  except UserError as e:
    saved = config_lib.load_config(workdir).model.to_dict()
    changed = [k for k, v in config.model.to_dict().items()
               if saved.get(k) != v and k != 'conv']  # conv: how, not what, it computes
    if 'does not fit this model' not in str(e) or not changed:
      raise
    raise UserError(f'--config.model.{changed[0]}={config.model[changed[0]]!r}: the run trained '
                    f'a model of {changed[0]} {saved[changed[0]]!r}, whose checkpoint does not '
                    'fit another; leave the override out') from None


def _restore_variables(workdir: str, checkpoint: str, abstract):
  """(mesh, step, variables) of checkpoints.restore_variables, on a mesh of every device."""
  mesh = train.create_mesh()
  step, variables = checkpoints.restore_variables(workdir, checkpoint, abstract,
                                                  NamedSharding(mesh, P()))
  return mesh, step, variables


# The fields of config.data that name the images; the others choose how they are read.
DATA_NAMES = ('source', 'name', 'path', 'data_dir', 'manual_dir', 'train_split', 'test_split')


def names_other_data(data_config, saved) -> bool:
  """Whether `data_config` names other images than the run's config `saved` (its data)."""
  return any(data_config.get(name) != saved.get(name) for name in DATA_NAMES)


def as_trained(data_config, image_shape):
  """`data_config`, for other data than the run's, reading images as its model takes them
  (`image_shape`): resized to its size, where it is square and no size is asked, and made
  grayscale for a grayscale model; says so in a line."""
  height, width, channels = image_shape
  data_config = data_config.copy_and_resolve_references()
  done = []
  if data_config.image_size is None and height == width:
    data_config.image_size = height
    done.append(f'resized to {height}x{width}')
  if channels == 1 and not data_config.grayscale:
    data_config.grayscale = True
    done.append('made grayscale')
  if done:
    print(f'the images are read as the model takes them: {" and ".join(done)} where they are '
          'not (config.data.image_size and config.data.grayscale choose otherwise)')
  return data_config


def shown(shape) -> str:
  return 'x'.join(map(str, shape))


def _fit(shape, trained_shape, grayscale: bool) -> str:
  """How to read images of `shape` as a model of `trained_shape` takes them."""
  (height, width, channels), fixes = trained_shape, []
  if tuple(shape[:2]) != (height, width):
    fixes.append(f'--config.data.image_size={height}' if height == width else
                 f'images of {height}x{width} (resize them first)')
  if shape[2] != channels:
    fixes.append('--config.data.grayscale=true' if channels == 1 else
                 '--config.data.grayscale=false' if grayscale else
                 'colour images (these are grayscale)')
  return 'use ' + ' and '.join(fixes)


def evaluate(run: TrainedRun, noisy: bool) -> dict[str, float]:
  """The means of the model's numbers over every image of the split (the last batch padded, not
  dropped): its loss, the MSE, BCE and PSNR of its reconstructions, a VAE's ELBO and parts."""
  return _evaluate_split(run, metrics.make_eval_fn(run.model, run.config, run.mesh, noisy=noisy))


def _feed(run: TrainedRun, images) -> tuple[object, int]:
  """(the feed of `images`, as training feeds its data; the bytes of an image it streams, 0
  where they are on the devices)."""
  placement = input_pipeline.choose_feed(run.config.data, images)
  return (input_pipeline.make_feed(images, run.mesh, placement),
          0 if placement == 'device' else int(np.prod(images.shape[1:])))


def map_split(run: TrainedRun, map_fn, consume, images=None, **kwargs) -> float:
  """metrics.map_split over the run's split (or `images`), fed as training feeds it; returns
  the seconds of compilation."""
  images = run.images if images is None else images
  feed, streamed_bytes = _feed(run, images)
  return metrics.map_split(map_fn, run.variables, feed, len(images), run.config, run.mesh,
                           consume, model=run.model, streamed_bytes=streamed_bytes, **kwargs)


def _evaluate_split(run: TrainedRun, eval_fn, images=None, **kwargs) -> dict[str, float]:
  images = run.images if images is None else images
  feed, streamed_bytes = _feed(run, images)
  return metrics.evaluate_split(eval_fn, run.variables, feed, len(images), run.config, run.mesh,
                                model=run.model, streamed_bytes=streamed_bytes, **kwargs)


# The images of a split that get the importance-weighted estimate, where it gets fewer than all.
IW_SUBSET_SEED = 0


def importance_weighted_nll(run: TrainedRun, num_samples: int, num_images: int) -> dict:
  """Burda et al.'s estimate of -log p(x) in nats, with `num_samples` samples of q(z|x) per
  image, averaged over `num_images` images of the split drawn at random (IW_SUBSET_SEED), all
  where it has no more (clean inputs). At random, not the first: a split read from class
  folders lists its images class by class, and its first 1,000 would be the first classes."""
  num_images = min(num_images, len(run.images))
  chosen = slice(0, num_images) if num_images == len(run.images) else np.sort(
      np.random.default_rng(IW_SUBSET_SEED).choice(len(run.images), num_images, replace=False))
  images = input_pipeline.splits.rows(run.images, chosen)
  eval_fn = metrics.make_eval_fn(run.model, run.config, run.mesh,
                                 step=metrics.importance_weighted_step, num_samples=num_samples)
  start = time.time()
  # a batch holds IW_DECODES decodes at a time: larger batches only wait longer between calls
  batch_size = min(metrics.eval_batch_size(run.config, run.model, len(images), run.mesh.size),
                   max(run.model.IW_DECODES // run.mesh.size, 1) * run.mesh.size)
  nll = _evaluate_split(run, eval_fn, images, batch_size=batch_size)['iw_nll']
  result = {'iw_nll': nll, 'iw_num_samples': num_samples, 'iw_num_images': len(images),
            'iw_seconds': time.time() - start}
  if len(images) < len(run.images):  # the bound compares with the -ELBO of the same images
    result['iw_images_nelbo'] = evaluate(run._replace(images=images), noisy=False)['nelbo']
  return result


def image_rows(run: TrainedRun, chosen, noisy: bool) -> dict:
  """{'input': the images `chosen` of the split, ['noisy input': with the training noise,]
  'reconstruction': of the (noisy) input}, floats in [0, 1], for a figure."""
  images = run.images[chosen].astype(np.float32) / 255.0
  rows = {'input': images}
  inputs = images
  if noisy:
    inputs = np.asarray(metrics.add_noise(jax.random.PRNGKey(metrics.FIGURE_SEED), images,
                                        run.config.noise.mean, run.config.noise.std))
    rows['noisy input'] = inputs
  reconstruct = models.jit_method(run.model, 'reconstruct')
  rows['reconstruction'] = np.asarray(reconstruct(run.variables, inputs))
  return rows


def reconstruction_rows(run: TrainedRun, num_examples: int,
                        seed: int = 0) -> tuple[dict, list[str] | None]:
  """({'input': images, ['noisy input': ...,] 'reconstruction': ...}, each image's label name
  or None) for random examples."""
  chosen = np.sort(np.random.default_rng(seed).choice(
      len(run.images), min(num_examples, len(run.images)), replace=False))
  rows = image_rows(run, chosen, noisy=config_lib.is_denoising(run.config))
  titles = None
  if run.labels is not None:
    names = run.label_names or [str(i) for i in range(int(run.labels.max()) + 1)]
    titles = [names[label] for label in run.labels[chosen]]
  return rows, titles


def output_dir(workdir: str, out_dir: str | None, name: str) -> str:
  """Where a tool writes: `out_dir`, or workdir/`name`; refused before any work where it cannot
  be written (a run on a read-only filesystem, say)."""
  folder = out_dir or os.path.join(workdir, name)
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise UserError(f'{folder} is a file, not a folder: write elsewhere with --out_dir=FOLDER')
  unwritable = config_lib.unwritable_folder(folder)
  if unwritable:
    raise UserError(f'cannot write to {folder} ({unwritable} is not writable): write elsewhere '
                    'with --out_dir=FOLDER')
  return folder


# The columns of the printed table, in order, where the model reports them.
COLUMNS = {'mse': ('mse', '.5f'), 'bce': ('bce', '.5f'), 'psnr': ('psnr (dB)', '.2f'),
           'nelbo': ('-elbo (nats)', '.2f'), 'reconstruction': ('reconstruction', '.2f'),
           'kl': ('kl', '.2f'), 'iw_nll': ('-log p(x)', '.2f')}


def main(workdir: str, config, checkpoint: str, split: str | None, num_examples: int,
         out_dir: str | None = None, num_samples: int | None = None,
         iw_images: int | None = None, input_path: str | None = None) -> dict:
  """Evaluates the run in `workdir`; for a model with a prior also the importance-weighted
  -log p(x), with `num_samples` samples on `iw_images` images of the split (None: the
  model's defaults, IW_SAMPLES and IW_IMAGES; 0 samples: none)."""
  if not 1 <= num_examples <= plots.MAX_COLUMNS:
    raise UserError(f'--num_examples={num_examples}: the figure shows 1 to {plots.MAX_COLUMNS} '
                    'images')
  for flag, value in (('num_samples', num_samples), ('iw_images', iw_images)):
    if value is not None and value < 0:
      raise UserError(f'--{flag}={value} must be 0 (no importance-weighted estimate) or more')
  out_dir = output_dir(workdir, out_dir, 'eval')
  if input_path is not None:
    check_input(workdir, config, split, input_path, out_dir, 'to evaluate on', reads_data=False)
    run = given_images(load_run(workdir, config, checkpoint, 'validation', needs_data=False),
                       input_path)
  else:
    run = load_run(workdir, config, checkpoint, split)
  split = run.split
  results = {'clean': evaluate(run, noisy=False)}
  if models.has_prior(run.model):
    num_samples = run.model.IW_SAMPLES if num_samples is None else num_samples
    iw_images = run.model.IW_IMAGES if iw_images is None else iw_images
    iw_images = len(run.images) if iw_images is None else min(iw_images, len(run.images))
    if num_samples and iw_images:
      print(f'importance-weighted -log p(x): {num_samples:,} samples of each of {iw_images:,} '
            'images (--num_samples, --iw_images) ...', flush=True)
      results['clean'].update(importance_weighted_nll(run, num_samples, iw_images))
  if config_lib.is_denoising(config):
    results = {'noisy': evaluate(run, noisy=True), **results}
  report = {'workdir': os.path.abspath(workdir), **source_field(run), 'checkpoint_step': run.step,
            'num_images': len(run.images), **results}

  rows, titles = reconstruction_rows(run, num_examples)
  launch.start_up_done()
  figure = os.path.join(out_dir, f'{split}_reconstructions.png')
  try:
    os.makedirs(out_dir, exist_ok=True)
    with replaced_atomically(os.path.join(out_dir, f'{split}.json')) as tmp, open(tmp, 'w') as f:
      json.dump(report, f, indent=2)
    plots.reconstructions(rows, titles, figure,
                          title=f'{config_lib.display_name(config)}, {source(run)}, '
                          f'step {run.step}')
  except OSError as e:
    raise cannot_write(e, 'the evaluation to', out_dir, flag='--out_dir') from None

  print(f'{config_lib.display_name(config)} in {workdir}, checkpoint of step {run.step} '
        f'({checkpoint}), {source(run)}: {len(run.images):,} images')
  # then the numbers of a model's own objective, and its loss where that is none of them (a
  # beta-VAE's reconstruction + beta kl)
  found = {c for values in results.values() for c in values}
  own = sorted(c for c in found - set(COLUMNS) if not c.startswith('iw_')
               and (c != 'loss' or run.model.loss_name not in found))
  columns = {c: COLUMNS[c] for c in COLUMNS if c in found} | {c: (c, '.5g') for c in own}
  widths = [max(10, len(heading)) for heading, _ in columns.values()]
  print(f'{"inputs":<8} ' + ' '.join(f'{heading:>{w}}'
                                     for (heading, _), w in zip(columns.values(), widths)))
  for name, values in results.items():
    print(f'{name:<8} ' + ' '.join(
        f'{values[c]:>{w}{spec}}' if c in values else ' ' * w
        for (c, (_, spec)), w in zip(columns.items(), widths)))
  if 'iw_nll' in results['clean']:
    clean = results['clean']
    subset = (f' drawn at random (their -elbo: {clean["iw_images_nelbo"]:.2f})'
              if 'iw_images_nelbo' in clean else '')
    print(f'-log p(x): importance-weighted with {clean["iw_num_samples"]:,} samples (Burda et al.) '
          f'on {clean["iw_num_images"]:,} images{subset} in {clean["iw_seconds"]:.1f} s; the other '
          'numbers on all of them, in nats per image where they are a VAE\'s')
  print(f'wrote {os.path.join(out_dir, split + ".json")} and {figure}')
  return report


if __name__ == '__main__':
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ae_jax import cli  # pylint: disable=g-import-not-at-top

  cli.define_run_flags(sys.argv)
  flags.DEFINE_integer('num_examples', 10, 'Images in the reconstruction figure.')
  flags.DEFINE_string('out_dir', None, 'Where to write (default: WORKDIR/eval).')
  flags.DEFINE_string('input', None, 'Images to evaluate on instead of a split: a folder of '
                      'images (its subfolders too), one image file, or a .npy of images.')
  flags.DEFINE_integer('num_samples', None, 'VAEs: samples per image of the importance-weighted '
                       '-log p(x) (default: 1000 for the VAE, 100 for the ConvVAE; 0: none).')
  flags.DEFINE_integer('iw_images', None, 'VAEs: images of the split that get the '
                       'importance-weighted estimate (default: all for the VAE, 1000 for the '
                       'ConvVAE).')
  FLAGS = flags.FLAGS
  cli.run(lambda argv: main(cli.run_workdir(FLAGS.workdir), FLAGS.config, FLAGS.checkpoint,
                            FLAGS.split, FLAGS.num_examples, FLAGS.out_dir, FLAGS.num_samples,
                            FLAGS.iw_images, FLAGS.input))
