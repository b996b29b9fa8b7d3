"""The latent space of a trained run in 2-D (t-SNE), and numbers that say how good it is.

  scripts/tsne.sh [runs/cae] [--split=test] [--num_points=10000] [--checkpoint=best]
                  [--method=tsne|umap] [--tsne_backend=auto|sklearn|opentsne]
  scripts/tsne.sh [runs/cae] --input=FOLDER|IMAGE|ARRAY.npy

Without a workdir: the run under runs/ that trained last. Without --split: the test split where
the run's data has one, else validation. --input maps images of the user's own instead, as
scripts/reconstruct.sh reads them (a folder, its subfolders too; a .npy of images), converted
as training converts images; <split> is then the input's name. The run's data is read then only
for latents larger than PCA_DIMS, whose PCA is fit on its train split.

Writes to workdir/tsne/:
  <split>.png  the map: one colour per label, digit thumbnails where they don't overlap;
  <split>.npz  the embedding with its labels and images, to redraw the map (--redraw);
  <split>.json the numbers, also printed:
    knn_accuracy           a 5-nearest-neighbour classifier fit on latents of the train split,
                           scored on the points of the evaluated split;
    linear_probe_accuracy  logistic regression on the standardized latents, likewise (on the
                           train split, each point scored by a probe fit without it);
    trustworthiness        sklearn.manifold.trustworthiness of the 2-D map (5 neighbours),
                           computed in blocks (maps.trustworthiness): 1.0 when the map's
                           neighbours are neighbours in the latent space;
  projector/  the files of TensorBoard's Embedding Projector (projector.py).
--method=umap writes <split>_umap.* instead. t-SNE is scikit-learn's below FFT_FROM points and
openTSNE's from there (docs/latent_maps.md). scikit-learn's Barnes-Hut t-SNE runs with angle 0.7
rather than its default 0.5: on 10,000 latents of the Fashion-MNIST AE that took 25 s instead of
35 s here, for a trustworthiness of 0.9969 instead of 0.9970 (--angle=0.5 for the default).
Latents of more than 50 dimensions (the CAE's 7x7x256) are first projected onto their first 50
principal components, fit on the train latents, as scikit-learn recommends before t-SNE; the
numbers are computed on that projection. Data without labels gets a one-colour map and only
the trustworthiness.
"""

if __name__ == '__main__':  # a command: prepare the process before JAX is imported
  from ae_jax import launch
  launch.start()

import json
import os
import time
from typing import NamedTuple

import numpy as np

from ae_jax import UserError
from ae_jax import cannot_write
from ae_jax import read_npz
from ae_jax import replaced_atomically
from ae_jax import config_lib
from ae_jax import evaluate
from ae_jax import maps
from ae_jax import metrics
from ae_jax import plots
from ae_jax import projector
from ae_jax import launch
from ae_jax.input_pipeline import given

PCA_DIMS = 50
PERPLEXITY = maps.PERPLEXITY
NUM_TRAIN_POINTS = 10_000
KNN_NEIGHBOURS = maps.KNN_NEIGHBOURS
ANGLE = 0.7


def encode(run: evaluate.TrainedRun, images: np.ndarray) -> np.ndarray:
  """The latents of `images` (a VAE's posterior means), flattened: (N, latent size)."""
  latents = None

  def consume(start, outputs):
    nonlocal latents
    if latents is None:
      latents = np.empty((len(images), outputs['latent'].shape[1]), np.float32)
    latents[start:start + len(outputs['latent'])] = outputs['latent']

  evaluate.map_split(run, metrics.make_map_fn(run.model, run.mesh, metrics.latent_step),
                     consume, images=images)
  return latents


def subsample(num_examples: int, labels, num_points: int, seed: int) -> np.ndarray:
  """Indices of `num_points` examples (all if fewer), stratified by label where there are labels."""
  if num_points >= num_examples:
    return np.arange(num_examples)
  if labels is not None:
    counts = np.unique(labels, return_counts=True)[1]
    # scikit-learn stratifies only with a class in each part, and two examples in each class:
    # where it cannot, a plain random sample instead
    if counts.min() < 2 or min(num_points, num_examples - num_points) < len(counts):
      labels = None
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  chosen, _ = model_selection.train_test_split(
      np.arange(num_examples), train_size=num_points, random_state=seed, stratify=labels)
  return np.sort(chosen)


def embed(latents: np.ndarray, perplexity: float, angle: float, seed: int) -> np.ndarray:
  """scikit-learn's Barnes-Hut t-SNE (--tsne=sklearn)."""
  from sklearn import manifold  # pylint: disable=g-import-not-at-top
  return manifold.TSNE(2, perplexity=perplexity, angle=angle, init='pca',
                       random_state=seed).fit_transform(latents)


# scikit-learn's Barnes-Hut t-SNE is faster below this many points (2,000 latents: 5.1 s against
# 6.2 s, which keeps the study's maps as they were), openTSNE's FFT from it on (10,000: 13 s
# against 30 s; benchmarks/README.md, "Latent maps").
FFT_FROM = 10_000
SKLEARN_TSNE = "t-SNE (scikit-learn's Barnes-Hut)"
OPENTSNE = "t-SNE (openTSNE's FFT)"
TSNE_BACKENDS = ('auto', 'sklearn', 'opentsne')


def check_backend(tsne_backend: str) -> None:
  if tsne_backend not in TSNE_BACKENDS:
    raise UserError(f'--tsne_backend={tsne_backend!r} is not one of {", ".join(TSNE_BACKENDS)} '
                    f"(auto: scikit-learn's below {FFT_FROM:,} points, openTSNE's from there)")


def use_sklearn(tsne_backend: str, num_points: int) -> bool:
  return tsne_backend == 'sklearn' or (tsne_backend == 'auto' and num_points < FFT_FROM)


def backend_name(method: str, tsne_backend: str, num_points: int) -> str:
  if method == 'umap':
    return 'UMAP (umap-learn)'
  return SKLEARN_TSNE if use_sklearn(tsne_backend, num_points) else OPENTSNE


def check_flags(num_points, num_train_points, perplexity, seed, angle, method='tsne',
                n_neighbors=maps.UMAP_NEIGHBORS) -> None:
  maps.check_settings(method, perplexity, n_neighbors)
  if not 0 <= angle <= 1:
    raise UserError(f'--angle={angle} must be between 0 and 1 ({ANGLE} is the default)')
  config_lib.check_seed(seed, '--seed')
  maps.check_points(method, num_points, perplexity, n_neighbors, f'--num_points={num_points}')
  if num_train_points < KNN_NEIGHBOURS + 1:
    raise UserError(f'--num_train_points={num_train_points} is too few for a '
                    f'{KNN_NEIGHBOURS}-nearest-neighbour classifier: use {KNN_NEIGHBOURS + 1} '
                    'or more')


class LatentSpace(NamedTuple):
  """A split's latents in 2-D and the numbers that say how good they are."""
  numbers: dict  # knn_accuracy, linear_probe_accuracy (labelled data), trustworthiness
  embedding: np.ndarray  # (N, 2)
  chosen: np.ndarray  # which examples of the split
  images: np.ndarray
  labels: np.ndarray | None
  latent_size: int
  tsne_seconds: float  # the map's (t-SNE's or UMAP's)
  latents: np.ndarray  # (N, D): what was mapped (the PCA projection of latents past PCA_DIMS)


def latent_space(run: evaluate.TrainedRun, num_points: int, num_train_points: int,
                 perplexity: float, seed: int, angle: float = ANGLE, method: str = 'tsne',
                 n_neighbors: int = maps.UMAP_NEIGHBORS, tsne_backend: str = 'auto'
                 ) -> LatentSpace:
  """Encodes (a stratified sample of) the run's split, maps it to 2-D with `method` and scores
  it."""
  maps.check_points(method, len(run.images), perplexity, n_neighbors,
                    f'the {run.split} split has {len(run.images)} images, which')
  chosen = subsample(len(run.images), run.labels, num_points, seed)
  images = run.images[chosen]
  labels = None if run.labels is None else run.labels[chosen]
  latents = encode(run, images)
  latent_size = latents.shape[1]
  if np.ptp(latents, axis=0).max(initial=0) == 0:
    # scikit-learn's t-SNE crashes the process (a segmentation fault) on identical points.
    raise UserError(f'every image of the {run.split} split has the same latent: the encoder '
                    'outputs a constant (dead ReLU units?); nothing to map. Retrain, e.g. '
                    'with a lower --config.learning_rate, or check the data')

  train_latents = train_labels = train_chosen = None
  if labels is not None or latent_size > PCA_DIMS:
    train_split = run.splits['train']
    train_chosen = subsample(len(train_split.images), train_split.labels, num_train_points, seed)
    train_latents = encode(run, train_split.images[train_chosen])
    if train_split.labels is not None:
      train_labels = train_split.labels[train_chosen]
  if latent_size > PCA_DIMS:
    from sklearn import decomposition  # pylint: disable=g-import-not-at-top
    pca = decomposition.PCA(min(PCA_DIMS, len(train_latents)), random_state=seed).fit(
        train_latents)
    latents, train_latents = pca.transform(latents), pca.transform(train_latents)

  start = time.time()
  if method == 'tsne' and use_sklearn(tsne_backend, len(latents)):
    embedding = embed(latents, perplexity, angle, seed)
  else:
    embedding = maps.embed(method, latents, perplexity, n_neighbors, seed)
  tsne_seconds = time.time() - start
  numbers = {}
  if labels is not None and train_labels is not None:
    same = None
    if run.split == 'train':  # a mapped point that fits the classifier too is left out of its vote
      at = np.searchsorted(train_chosen, chosen).clip(max=len(train_chosen) - 1)
      same = np.where(train_chosen[at] == chosen, at, -1)
    numbers['knn_accuracy'] = maps.knn_accuracy(train_latents, train_labels, latents, labels,
                                                same)
    numbers['linear_probe_accuracy'] = maps.linear_probe_accuracy(
        train_latents, train_labels, latents, labels, same)
  numbers['trustworthiness'] = maps.trustworthiness(latents, embedding, KNN_NEIGHBOURS)
  return LatentSpace(numbers, embedding, chosen, images, labels, latent_size, tsne_seconds,
                     np.asarray(latents, np.float32))


def map_name(method: str, split: str) -> str:
  """The file stem of a map: <split> for t-SNE (as before UMAP), <split>_umap for UMAP."""
  return split if method == 'tsne' else f'{split}_{method}'


def main(workdir, config, checkpoint, split, num_points, num_train_points, perplexity, seed,
         angle=ANGLE, out_dir=None, method='tsne', n_neighbors=maps.UMAP_NEIGHBORS,
         tsne_backend='auto', input_path=None):
  check_flags(num_points, num_train_points, perplexity, seed, angle, method, n_neighbors)
  check_backend(tsne_backend)
  out_dir = evaluate.output_dir(workdir, out_dir, 'tsne')
  if input_path is not None:
    evaluate.check_input(workdir, config, split, input_path, out_dir, 'to map', reads_data=True)
  if input_path is None:
    run = evaluate.load_run(workdir, config, checkpoint, split)
  else:
    run = evaluate.given_images(evaluate.load_run(workdir, config, checkpoint, 'validation',
                                                  needs_data=False), input_path)
    maps.check_points(method, len(run.images), perplexity, n_neighbors,
                      f'--input={input_path} has {len(run.images)} images, which')
    # its PCA is fit on the train split (read already where the checkpoints lack the shape)
    if not run.splits and encode(run, run.images[:1]).shape[1] > PCA_DIMS:
      splits = evaluate.load_data(workdir, config)
      evaluate.check_image_shape(workdir, config, splits)
      train_shape = splits['train'].images.shape[1:]
      if train_shape != run.images.shape[1:]:
        # (a convolutional model takes both sizes, but their latents differ in size)
        raise UserError(
            f"--input's images are read as the model takes them, "
            f'{evaluate.shown(run.images.shape[1:])}, and the train split that fits their PCA '
            f'as config.data says, {evaluate.shown(train_shape)}: leave out '
            '--config.data.image_size and --config.data.grayscale')
      run = run._replace(splits=splits)
  split = run.split
  if num_points > len(run.images):
    print(f'mapping all {len(run.images):,} images of '
          + (f'the {split} split' if input_path is None else input_path)
          + f' (fewer than --num_points={num_points})')
  space = latent_space(run, num_points, num_train_points, perplexity, seed, angle, method,
                       n_neighbors, tsne_backend)
  launch.start_up_done()
  embedding, chosen, images, labels = space.embedding, space.chosen, space.images, space.labels
  latent_size, tsne_seconds, numbers = space.latent_size, space.tsne_seconds, space.numbers

  stem = os.path.join(out_dir, map_name(method, split))
  how = backend_name(method, tsne_backend, len(chosen))
  title = (f'{how} of {config_lib.display_name(config)} latents ({latent_size:,} dimensions), '
           f'{evaluate.source(run)}, step {run.step}')
  # The .npz, the figure and the numbers are written beside each other and replace the old ones
  # together: a failure (a full disk) leaves the last map whole, and never a part of each.
  try:
    os.makedirs(out_dir, exist_ok=True)
    with (replaced_atomically(stem + '.npz') as npz, replaced_atomically(stem + '.png') as png,
          replaced_atomically(stem + '.json') as numbers_path):
      np.savez_compressed(
          npz, embedding=embedding.astype(np.float32), indices=chosen, images=images,
          labels=np.array([]) if labels is None else labels,
          label_names=np.array(run.label_names or []), title=np.array(title))
      start = time.time()
      plots.tsne_map(embedding, images, labels, run.label_names, png, title)
      figure_seconds = time.time() - start
      report = {'workdir': os.path.abspath(workdir), **evaluate.source_field(run),
                'checkpoint_step': run.step,
                'num_points': len(chosen), 'latent_size': latent_size,
                'pca_dims': min(latent_size, PCA_DIMS), 'method': method, 'implementation': how,
                **({'perplexity': perplexity} if method == 'tsne'
                   else {'n_neighbors': n_neighbors}),
                **({'angle': angle} if how == SKLEARN_TSNE else {}),
                'tsne_seconds': tsne_seconds, 'figure_seconds': figure_seconds, **numbers}
      with open(numbers_path, 'w') as f:
        json.dump(report, f, indent=2)
  except OSError as e:
    raise cannot_write(e, 'the t-SNE map to', out_dir, flag='--out_dir') from None
  config_path = projector.write(
      os.path.join(out_dir, projector.FOLDER), map_name(method, split), space.latents,
      embedding, images, labels, run.label_names, split, chosen, how, run.files)

  print(f'{config_lib.display_name(config)} in {workdir}, checkpoint of step {run.step}, '
        f'{evaluate.source(run)}: '
        f'{how} of {len(chosen):,} latents of {latent_size:,} dimensions'
        + (f' (PCA to {PCA_DIMS})' if latent_size > PCA_DIMS else '')
        + f' in {tsne_seconds:.1f} s, figure in {figure_seconds:.1f} s')
  if labels is None and input_path is None:
    print('the data has no labels: one colour, and no kNN or linear-probe accuracy')
  for name, value in numbers.items():
    print(f'  {name:<22} {value:.4f}')
  # TensorBoard finds the projector's folder under any logdir above it.
  inside = os.path.abspath(out_dir).startswith(os.path.abspath(workdir) + os.sep)
  print(f'wrote {stem}.png, {stem}.npz and {stem}.json, and the files of TensorBoard\'s '
        f'projector beside {config_path} (tensorboard --logdir {workdir if inside else out_dir})')
  return report


def check_map_arrays(embedding, images, labels, label_names) -> None:
  """A ValueError where a map's saved arrays do not belong together (an .npz edited by hand):
  a 2-D point per image, and an integer label per point, or none."""
  n = len(embedding)
  if embedding.ndim != 2 or embedding.shape[1] != 2 or images.ndim not in (3, 4) or len(
      images) != n:
    raise ValueError(f'its embedding of shape {embedding.shape} is not a 2-D point per image of '
                     f'its images, of shape {images.shape}')
  if labels.size and (labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer)
                      or labels.min() < 0 or label_names and labels.max() >= len(label_names)):
    raise ValueError(f'its labels, {labels.dtype} of shape {labels.shape}, are not a class '
                     f'number per point')


def unused_map_flags(method: str, tsne_backend: str, given) -> list[str]:
  """The flags among `given` (names set on the command line) that `method` would ignore."""
  # no method (a misspelt one): maps.check_settings names it
  unused = {'tsne': ('n_neighbors',), 'umap': ('perplexity', 'angle', 'tsne_backend')}.get(
      method, ())
  if method == 'tsne' and tsne_backend == 'opentsne':
    unused += ('angle',)  # openTSNE's FFT has no Barnes-Hut angle
  return [f for f in unused if f in given]


def redraw(workdir: str, split: str | None, out_dir: str | None = None,
           method: str = 'tsne') -> None:
  """Redraws <split>.png in workdir/tsne (or `out_dir`) from its .npz, without recomputing
  anything (`split` None: the test split's map where there is one, else validation's)."""
  folder = out_dir or os.path.join(workdir, 'tsne')
  if split is None:
    split = ('test' if os.path.exists(os.path.join(folder, map_name(method, 'test') + '.npz'))
             else 'validation')
  stem = os.path.join(folder, map_name(method, split))
  if not os.path.exists(stem + '.npz'):
    raise UserError(f'{stem}.npz does not exist: run scripts/tsne.sh {workdir} first')
  try:
    data = read_npz(stem + '.npz')
    embedding, images, labels = data['embedding'], data['images'], data['labels']
    label_names, title = tuple(data['label_names']) or None, str(data['title'])
    check_map_arrays(embedding, images, labels, label_names)
  except (ValueError, KeyError) as e:
    reason = f'it has no array {e}' if isinstance(e, KeyError) else e
    raise UserError(f'{stem}.npz is damaged ({reason}): run the same scripts/tsne.sh '
                    'command without --redraw to map the latents again') from None
  except OSError as e:
    raise UserError(f'cannot read {stem}.npz: {e.strerror}') from None
  try:
    plots.tsne_map(embedding, images, labels if labels.size else None, label_names,
                   stem + '.png', title)
  except OSError as e:
    raise cannot_write(e, 'the t-SNE map to', stem + '.png', flag='--out_dir') from None
  print(f'wrote {stem}.png')


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ae_jax import cli  # pylint: disable=g-import-not-at-top

  cli.define_run_flags(sys.argv)
  flags.DEFINE_integer('num_points', 10_000, 'Points of the split to embed (a stratified subsample).')
  flags.DEFINE_integer('num_train_points', NUM_TRAIN_POINTS,
                       'Train-split latents that fit the kNN classifier, the probe and the PCA.')
  flags.DEFINE_float('perplexity', PERPLEXITY, 't-SNE perplexity.')
  flags.DEFINE_integer('seed', 0, 'Seed of the subsamples and of t-SNE.')
  flags.DEFINE_float('angle', ANGLE, "Barnes-Hut angle (scikit-learn's default: 0.5).")
  flags.DEFINE_bool('redraw', False, 'Only redraw the figure from the saved .npz.')
  flags.DEFINE_string('out_dir', None, 'Where to write (default: WORKDIR/tsne).')
  flags.DEFINE_string('method', 'tsne', 'tsne, or umap (umap-learn): writes <split>_umap.*')
  flags.DEFINE_integer('n_neighbors', maps.UMAP_NEIGHBORS, "UMAP's neighbours.")
  flags.DEFINE_string('input', None, 'Images to map instead of a split: a folder of images '
                      '(its subfolders too) or a .npy of images.')
  flags.DEFINE_string('tsne_backend', 'auto', "auto (scikit-learn's Barnes-Hut below "
                      f"{FFT_FROM:,} points, openTSNE's FFT from there), sklearn or opentsne.")
  FLAGS = flags.FLAGS

  def _main(argv):
    if FLAGS.redraw:
      maps.check_settings(FLAGS.method, FLAGS.perplexity, FLAGS.n_neighbors)
      if FLAGS.input is not None and FLAGS.split is not None:
        raise UserError(f'--input={FLAGS.input} and --split={FLAGS.split}: name one, the map '
                        'to redraw')
      split = FLAGS.split if FLAGS.input is None else given.input_name(FLAGS.input)
      return redraw(cli.run_workdir(FLAGS.workdir), split, FLAGS.out_dir, FLAGS.method)
    unused = unused_map_flags(FLAGS.method, FLAGS.tsne_backend,
                              {name for name in FLAGS if FLAGS[name].present})
    if unused:
      raise UserError(f'--{unused[0]} is not used by --method={FLAGS.method}'
                      + (f' with --tsne_backend={FLAGS.tsne_backend}' if unused[0] == 'angle'
                         and FLAGS.method == 'tsne' else '') + ': leave it out')
    if FLAGS.method == 'umap':
      maps.use_numba_cache(FLAGS.compilation_cache)
    return main(cli.run_workdir(FLAGS.workdir), FLAGS.config, FLAGS.checkpoint, FLAGS.split,
                FLAGS.num_points, FLAGS.num_train_points, FLAGS.perplexity, FLAGS.seed,
                FLAGS.angle, FLAGS.out_dir, FLAGS.method, FLAGS.n_neighbors, FLAGS.tsne_backend,
                FLAGS.input)

  cli.run(_main)
