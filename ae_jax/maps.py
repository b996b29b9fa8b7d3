"""2-D maps of a latent space (t-SNE, UMAP) and the numbers that say how good the latents are.

t-SNE is openTSNE's FFT-accelerated interpolation (FIt-SNE, Linderman et al. 2019) rather than
scikit-learn's Barnes-Hut: on the same latents it is faster from 10,000 points on (2.3x at
10,000, 2.5x at 48,000), at the same trustworthiness (benchmarks/README.md, "Latent maps").
UMAP is umap-learn; numba compiles it, and a command keeps numba's cache beside JAX's
(use_numba_cache).

The numbers scale to a whole split: trustworthiness is computed exactly, in blocks of rows
(memory O(block x n), where scikit-learn's builds and sorts an n x n matrix), and kNN accuracy
with scikit-learn's chunked neighbour search.
"""

import functools
import math
import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import UserError

METHODS = ('tsne', 'umap')
PERPLEXITY = 30.0  # t-SNE
UMAP_NEIGHBORS = 15  # umap-learn's default
KNN_NEIGHBOURS = 5  # the kNN classifier's and trustworthiness's neighbours
TRUST_BLOCK = 256  # rows of the distance matrix at a time: 256 x 70,000 floats is 72 MB


# --- Which settings work ------------------------------------------------------------------

def min_points(method: str, perplexity: float = PERPLEXITY,
               n_neighbors: int = UMAP_NEIGHBORS) -> int:
  """The fewest points a map can have: t-SNE needs more than its perplexity, UMAP more than
  its neighbours, trustworthiness more than twice its neighbours."""
  need = int(perplexity) + 1 if method == 'tsne' else n_neighbors + 1
  return max(need, 2 * KNN_NEIGHBOURS + 1)


def check_settings(method: str, perplexity: float, n_neighbors: int) -> None:
  """A UserError naming the value and what works, for a method or setting out of range."""
  if method not in METHODS:
    raise UserError(f'--method={method!r} is not a map method: use one of {", ".join(METHODS)}')
  if not 0 < perplexity < math.inf:
    raise UserError(f'--perplexity={perplexity} must be positive and finite (30 is the usual '
                    'value)')
  if n_neighbors < 2:
    raise UserError(f'--n_neighbors={n_neighbors} is too few: UMAP needs 2 or more '
                    f'({UMAP_NEIGHBORS} is the usual value)')


def check_points(method: str, num_points: int, perplexity: float, n_neighbors: int,
                 what: str, settable: bool = True) -> None:
  """A UserError where `num_points` (named by `what`: a flag, or a split) are too few.
  `settable`: the command has the flag of the perplexity or the neighbours, to lower."""
  need = min_points(method, perplexity, n_neighbors)
  if num_points >= need:
    return
  if method == 'tsne':
    setting, why = '--perplexity', f'a t-SNE map with perplexity {perplexity:g}'
  else:
    setting, why = '--n_neighbors', f'a UMAP map with {n_neighbors} neighbours'
  raise UserError(f'{what} is too few: {why} needs at least {need} points (more than the '
                  f'{"perplexity" if method == "tsne" else "neighbours"}, and more than '
                  f'{2 * KNN_NEIGHBOURS} for its trustworthiness); use {need} or more'
                  + (f', or a lower {setting}' if settable else ''))


# --- The maps ------------------------------------------------------------------------------

# openTSNE's interpolation grid, not the points, sets its cost below this many points: there,
# intervals twice its default width (ints_in_interval=2) map 10,000 latents in 13 s instead of
# 48 s at the same trustworthiness (0.9968 against 0.9969); at 48,000 they would cost 0.0004 of
# it, so the default grid stays from here on.
COARSE_GRID_BELOW = 20_000


def tsne(latents: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
  """openTSNE's t-SNE (FFT gradients, PCA initialisation, its default schedule) on all cores,
  with exact neighbours: scikit-learn's affinities, and faster here than openTSNE's default
  approximate search (43 s instead of 53 s for a map of 48,000 latents)."""
  import openTSNE  # pylint: disable=g-import-not-at-top
  embedding = openTSNE.TSNE(
      n_components=2, perplexity=perplexity, initialization='pca', neighbors='exact',
      negative_gradient_method='fft',
      ints_in_interval=2 if len(latents) < COARSE_GRID_BELOW else 1,
      n_jobs=-1, random_state=seed, verbose=False).fit(np.asarray(latents, np.float64))
  return np.asarray(embedding, np.float32)


def use_numba_cache(compilation_cache: str) -> None:
  """Numba's cache of compiled functions beside JAX's (`compilation_cache`/../numba), for a
  command; numba reads NUMBA_CACHE_DIR at its import, so this runs before umap's import."""
  if compilation_cache and 'NUMBA_CACHE_DIR' not in os.environ:
    os.environ['NUMBA_CACHE_DIR'] = os.path.join(
        os.path.dirname(os.path.normpath(compilation_cache)), 'numba')


def umap(latents: np.ndarray, n_neighbors: int, seed: int) -> np.ndarray:
  """umap-learn's UMAP with its defaults (min_dist 0.1, spectral initialisation), on the exact
  neighbour graph."""
  # umap-learn imports its ParametricUMAP, and with it TensorFlow (14 s here), at its own
  # import unless that import fails; a map does not use it.
  sys.modules.setdefault('umap.parametric_umap', None)
  import umap as umap_learn  # pylint: disable=g-import-not-at-top
  from sklearn import neighbors  # pylint: disable=g-import-not-at-top
  x = np.asarray(latents, np.float32)
  # Exact neighbours from scikit-learn instead of umap-learn's approximate search, which numba
  # compiles again in every process: a second process mapping 10,000 points takes 27 s instead of
  # 61 s. umap-learn counts a point as its own first neighbour.
  distances, indices = neighbors.NearestNeighbors(n_neighbors=n_neighbors - 1).fit(
      x).kneighbors()
  indices = np.concatenate([np.arange(len(x))[:, None], indices], axis=1)
  distances = np.concatenate([np.zeros((len(x), 1), distances.dtype), distances], axis=1)
  # A seed makes umap-learn run on one thread: the map is then the same on every run.
  reducer = umap_learn.UMAP(n_components=2, n_neighbors=n_neighbors, random_state=seed,
                            n_jobs=1, precomputed_knn=(indices, distances))
  with warnings.catch_warnings():
    # that the reducer cannot place new points: a map does not ask it to
    warnings.filterwarnings('ignore', message='precomputed_knn', category=UserWarning)
    return np.asarray(reducer.fit_transform(x), np.float32)


def embed(method: str, latents: np.ndarray, perplexity: float, n_neighbors: int,
          seed: int) -> np.ndarray:
  if method == 'umap':
    return umap(latents, n_neighbors, seed)
  return tsne(latents, perplexity, seed)


# --- The numbers ---------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames='n_neighbors')
def _rank_excess(x, squared_norms, rows, embedded_neighbors, n_neighbors):
  """For each row of `rows` (blocks, block): the sum over its embedded neighbours of how far
  each one's rank among the row's input-space neighbours lies past n_neighbors."""
  def block(args):
    r, neighbours = args
    # squared distances: the same order as distances; x is centred, which keeps float32's
    # cancellation small
    d = squared_norms[r][:, None] + squared_norms[None, :] - 2 * (x[r] @ x.T)
    d = d.at[jnp.arange(len(r)), r].set(jnp.inf)  # a point is not its own neighbour
    thresholds = jnp.take_along_axis(d, neighbours, axis=1)  # (block, n_neighbors)
    # rank (from 1) = 1 + how many points lie closer; XLA fuses the count into one pass
    ranks = 1 + (d[:, None, :] < thresholds[:, :, None]).sum(-1, dtype=jnp.int32)
    return jnp.maximum(ranks - n_neighbors, 0).sum(1)
  return jax.lax.map(block, (rows, embedded_neighbors))


def trustworthiness(latents: np.ndarray, embedding: np.ndarray,
                    n_neighbors: int = KNN_NEIGHBOURS, block: int = TRUST_BLOCK) -> float:
  """sklearn.manifold.trustworthiness (Venna and Kaski 2001, euclidean), exactly, with one
  block of rows of the distance matrix at a time."""
  n = len(latents)
  if n_neighbors >= n / 2:
    raise ValueError(f'n_neighbors ({n_neighbors}) should be less than n_samples / 2 ({n / 2})')
  from sklearn import neighbors  # pylint: disable=g-import-not-at-top
  embedded = neighbors.NearestNeighbors(n_neighbors=n_neighbors).fit(embedding).kneighbors(
      return_distance=False)
  x = np.asarray(latents, np.float64)
  x = x - x.mean(0)
  squared_norms = (x ** 2).sum(1).astype(np.float32)
  block = min(block, n)
  num_blocks = -(-n // block)
  rows = np.arange(num_blocks * block) % n  # the last block padded with rows counted twice
  excess = np.asarray(_rank_excess(
      x.astype(np.float32), squared_norms, rows.reshape(num_blocks, block),
      embedded[rows].reshape(num_blocks, block, n_neighbors), n_neighbors)).reshape(-1)[:n]
  total = excess.sum(dtype=np.int64)
  return float(1.0 - total * (2.0 / (n * n_neighbors * (2.0 * n - 3.0 * n_neighbors - 1.0))))


def knn_accuracy(train_latents, train_labels, latents, labels, same=None) -> float:
  """Accuracy of a KNN_NEIGHBOURS-nearest-neighbour vote among the train latents (as
  sklearn's KNeighborsClassifier: ties go to the lowest label). `same[i]`: the index among the
  train latents of point i itself (-1 where it is none), left out of its own vote, as when the
  train split is mapped."""
  from sklearn import neighbors  # pylint: disable=g-import-not-at-top
  k = KNN_NEIGHBOURS
  found = neighbors.NearestNeighbors(n_neighbors=k + 1).fit(train_latents).kneighbors(
      latents, return_distance=False)
  if same is None:
    same = np.full(len(latents), -1)
  # each point's own train entry dropped where it is found; the first k of the others otherwise
  keep = found != np.asarray(same)[:, None]
  keep &= np.cumsum(keep, axis=1) <= k
  votes = np.where(keep, np.asarray(train_labels)[found], -1)
  num_labels = int(max(np.max(train_labels), np.max(labels))) + 1
  counts = np.stack([(votes == c).sum(1) for c in range(num_labels)], axis=1)
  return float(np.mean(counts.argmax(1) == labels))


PROBE_FOLDS = 5  # where the scored points are among the probe's train latents


def linear_probe_accuracy(train_latents, train_labels, latents, labels, same=None) -> float:
  """Logistic regression on the standardized train latents, scored on `latents`. `same[i]`: the
  index among the train latents of point i itself (-1 where it is none), as knn_accuracy takes
  it: where some point is there, the points are scored in PROBE_FOLDS folds, each by a probe
  fit without that fold's own train entries, as a probe is scored on points it never saw."""
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  from sklearn import pipeline  # pylint: disable=g-import-not-at-top
  from sklearn import preprocessing  # pylint: disable=g-import-not-at-top
  probe = lambda: pipeline.make_pipeline(preprocessing.StandardScaler(),
                                         linear_model.LogisticRegression(max_iter=1000))
  train_latents, train_labels = np.asarray(train_latents), np.asarray(train_labels)
  latents, labels = np.asarray(latents), np.asarray(labels)
  same = np.full(len(latents), -1) if same is None else np.asarray(same)
  if not (same >= 0).any():
    return float(probe().fit(train_latents, train_labels).score(latents, labels))
  correct = 0
  fold_of = np.arange(len(latents)) % PROBE_FOLDS
  for fold in range(min(PROBE_FOLDS, len(latents))):
    scored = fold_of == fold
    fit = np.ones(len(train_latents), bool)
    fit[same[scored & (same >= 0)]] = False
    fitted = probe().fit(train_latents[fit], train_labels[fit])
    correct += int((fitted.predict(latents[scored]) == labels[scored]).sum())
  return correct / len(latents)
