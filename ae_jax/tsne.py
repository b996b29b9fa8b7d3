"""The latent space of a trained run in 2-D (t-SNE), and numbers that say how good it is.

  scripts/tsne.sh [runs/cae] [--split=test] [--num_points=10000] [--checkpoint=best]

Without a workdir: the run under runs/ that trained last. Without --split: the test split where
the run's data has one, else validation.

Writes to workdir/tsne/:
  <split>.png  the map: one colour per label, digit thumbnails where they don't overlap;
  <split>.npz  the embedding with its labels and images, to redraw the map (--redraw);
  <split>.json the numbers, also printed:
    knn_accuracy           a 5-nearest-neighbour classifier fit on latents of the train split,
                           scored on the points of the evaluated split;
    linear_probe_accuracy  logistic regression on the standardized latents, likewise;
    trustworthiness        sklearn.manifold.trustworthiness of the 2-D map (5 neighbours):
                           1.0 when the map's neighbours are neighbours in the latent space.
Barnes-Hut t-SNE runs with angle 0.7 rather than scikit-learn's default 0.5: on 10,000 latents
of the Fashion-MNIST AE that took 25 s instead of 35 s here, for a trustworthiness of 0.9969
instead of 0.9970 (--angle=0.5 for the default).
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
from sklearn import decomposition
from sklearn import linear_model
from sklearn import manifold
from sklearn import model_selection
from sklearn import neighbors
from sklearn import pipeline
from sklearn import preprocessing

from ae_jax import UserError
from ae_jax import cannot_write
from ae_jax import config_lib
from ae_jax import evaluate
from ae_jax import metrics
from ae_jax import plots
from ae_jax import launch

PCA_DIMS = 50
PERPLEXITY = 30.0
NUM_TRAIN_POINTS = 10_000
KNN_NEIGHBOURS = 5
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
  chosen, _ = model_selection.train_test_split(
      np.arange(num_examples), train_size=num_points, random_state=seed, stratify=labels)
  return np.sort(chosen)


def latent_scores(train_latents, train_labels, latents, labels) -> dict[str, float]:
  knn = neighbors.KNeighborsClassifier(n_neighbors=KNN_NEIGHBOURS)
  probe = pipeline.make_pipeline(preprocessing.StandardScaler(),
                                 linear_model.LogisticRegression(max_iter=1000))
  return {
      'knn_accuracy': float(knn.fit(train_latents, train_labels).score(latents, labels)),
      'linear_probe_accuracy': float(
          probe.fit(train_latents, train_labels).score(latents, labels)),
  }


def embed(latents: np.ndarray, perplexity: float, angle: float, seed: int) -> np.ndarray:
  return manifold.TSNE(2, perplexity=perplexity, angle=angle, init='pca',
                       random_state=seed).fit_transform(latents)


def min_points(perplexity: float) -> int:
  """The fewest points a map can have: t-SNE needs more than its perplexity, trustworthiness
  more than twice its neighbours."""
  return max(int(perplexity) + 1, 2 * KNN_NEIGHBOURS + 1)


def check_flags(num_points, num_train_points, perplexity, seed, angle) -> None:
  if not perplexity > 0:
    raise UserError(f'--perplexity={perplexity} must be positive (30 is the usual value)')
  if not 0 <= angle <= 1:
    raise UserError(f'--angle={angle} must be between 0 and 1 ({ANGLE} is the default)')
  if seed < 0:
    raise UserError(f'--seed={seed} must not be negative')
  if num_points < min_points(perplexity):
    raise UserError(
        f'--num_points={num_points} is too few: a t-SNE map with perplexity {perplexity:g} needs '
        f'at least {min_points(perplexity)} points (more than the perplexity, and more than '
        f'{2 * KNN_NEIGHBOURS} for its trustworthiness); use {min_points(perplexity)} or more, '
        'or a lower --perplexity')
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
  tsne_seconds: float


def latent_space(run: evaluate.TrainedRun, num_points: int, num_train_points: int,
                 perplexity: float, seed: int, angle: float = ANGLE) -> LatentSpace:
  """Encodes (a stratified sample of) the run's split, embeds it with t-SNE and scores it."""
  if len(run.images) < min_points(perplexity):
    raise UserError(f'the {run.split} split has {len(run.images)} images, too few for a t-SNE '
                    f'map with perplexity {perplexity:g} (it needs {min_points(perplexity)}): '
                    'choose a larger --split, or a lower --perplexity')
  chosen = subsample(len(run.images), run.labels, num_points, seed)
  images = run.images[chosen]
  labels = None if run.labels is None else run.labels[chosen]
  latents = encode(run, images)
  latent_size = latents.shape[1]

  train_split = run.splits['train']
  train_latents = train_labels = None
  if labels is not None or latent_size > PCA_DIMS:
    train_chosen = subsample(len(train_split.images), train_split.labels, num_train_points, seed)
    train_latents = encode(run, train_split.images[train_chosen])
    if train_split.labels is not None:
      train_labels = train_split.labels[train_chosen]
  if latent_size > PCA_DIMS:
    pca = decomposition.PCA(min(PCA_DIMS, len(train_latents)), random_state=seed).fit(
        train_latents)
    latents, train_latents = pca.transform(latents), pca.transform(train_latents)

  start = time.time()
  embedding = embed(latents, perplexity, angle, seed)
  tsne_seconds = time.time() - start
  numbers = {}
  if labels is not None and train_labels is not None:
    numbers.update(latent_scores(train_latents, train_labels, latents, labels))
  numbers['trustworthiness'] = float(
      manifold.trustworthiness(latents, embedding, n_neighbors=KNN_NEIGHBOURS))
  return LatentSpace(numbers, embedding, chosen, images, labels, latent_size, tsne_seconds)


def main(workdir, config, checkpoint, split, num_points, num_train_points, perplexity, seed,
         angle=ANGLE, out_dir=None):
  check_flags(num_points, num_train_points, perplexity, seed, angle)
  out_dir = evaluate.output_dir(workdir, out_dir, 'tsne')
  run = evaluate.load_run(workdir, config, checkpoint, split)
  split = run.split
  if num_points > len(run.images):
    print(f'mapping all {len(run.images):,} images of the {split} split (fewer than '
          f'--num_points={num_points})')
  space = latent_space(run, num_points, num_train_points, perplexity, seed, angle)
  launch.start_up_done()
  embedding, chosen, images, labels = space.embedding, space.chosen, space.images, space.labels
  latent_size, tsne_seconds, numbers = space.latent_size, space.tsne_seconds, space.numbers

  stem = os.path.join(out_dir, split)
  title = (f'{config_lib.display_name(config)} latents ({latent_size:,} dimensions), {split} split, '
           f'step {run.step}')
  try:
    os.makedirs(out_dir, exist_ok=True)
    np.savez_compressed(
        stem + '.npz', embedding=embedding.astype(np.float32), indices=chosen, images=images,
        labels=np.array([]) if labels is None else labels,
        label_names=np.array(run.label_names or []), title=np.array(title))
    start = time.time()
    plots.tsne_map(embedding, images, labels, run.label_names, stem + '.png', title)
    figure_seconds = time.time() - start
  except OSError as e:
    raise cannot_write(e, 'the t-SNE map to') from None
  report = {'workdir': os.path.abspath(workdir), 'split': split, 'checkpoint_step': run.step,
            'num_points': len(chosen), 'latent_size': latent_size,
            'pca_dims': min(latent_size, PCA_DIMS), 'perplexity': perplexity, 'angle': angle,
            'tsne_seconds': tsne_seconds, 'figure_seconds': figure_seconds, **numbers}
  try:
    with open(stem + '.json', 'w') as f:
      json.dump(report, f, indent=2)
  except OSError as e:
    raise cannot_write(e, 'the t-SNE numbers to') from None

  print(f'{config_lib.display_name(config)} in {workdir}, checkpoint of step {run.step}, {split} split: '
        f't-SNE of {len(chosen):,} latents of {latent_size:,} dimensions'
        + (f' (PCA to {PCA_DIMS})' if latent_size > PCA_DIMS else '')
        + f' in {tsne_seconds:.1f} s, figure in {figure_seconds:.1f} s')
  if labels is None:
    print('the data has no labels: one colour, and no kNN or linear-probe accuracy')
  for name, value in numbers.items():
    print(f'  {name:<22} {value:.4f}')
  print(f'wrote {stem}.png, {stem}.npz and {stem}.json')
  return report


def redraw(workdir: str, split: str | None, out_dir: str | None = None) -> None:
  """Redraws <split>.png in workdir/tsne (or `out_dir`) from its .npz, without recomputing
  anything (`split` None: the test split's map where there is one, else validation's)."""
  folder = out_dir or os.path.join(workdir, 'tsne')
  if split is None:
    split = 'test' if os.path.exists(os.path.join(folder, 'test.npz')) else 'validation'
  stem = os.path.join(folder, split)
  if not os.path.exists(stem + '.npz'):
    raise UserError(f'{stem}.npz does not exist: run scripts/tsne.sh {workdir} first')
  data = np.load(stem + '.npz')
  labels = data['labels'] if data['labels'].size else None
  try:
    plots.tsne_map(data['embedding'], data['images'], labels,
                   tuple(data['label_names']) or None, stem + '.png', str(data['title']))
  except OSError as e:
    raise cannot_write(e, 'the t-SNE map to') from None
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
  FLAGS = flags.FLAGS

  def _main(argv):
    if FLAGS.redraw:
      return redraw(cli.run_workdir(FLAGS.workdir), FLAGS.split, FLAGS.out_dir)
    return main(cli.run_workdir(FLAGS.workdir), FLAGS.config, FLAGS.checkpoint, FLAGS.split, FLAGS.num_points,
                FLAGS.num_train_points, FLAGS.perplexity, FLAGS.seed, FLAGS.angle,
                FLAGS.out_dir)

  cli.run(_main)
