import math

import numpy as np
import pytest
from sklearn import manifold
from sklearn import neighbors

from ae_jax import UserError
from ae_jax import maps


@pytest.mark.parametrize('n, dims, block', [(300, 32, 256), (517, 8, 64), (40, 3, 7)])
def test_trustworthiness_in_blocks_is_scikit_learns(n, dims, block):
  rng = np.random.default_rng(n)
  latents = (rng.normal(size=(n, dims)) + 5).astype(np.float32)
  for embedding in (latents[:, :2] + 0.3 * rng.normal(size=(n, 2)), rng.normal(size=(n, 2))):
    expected = manifold.trustworthiness(latents, embedding, n_neighbors=5)
    assert abs(maps.trustworthiness(latents, embedding, block=block) - expected) < 1e-6
  assert maps.trustworthiness(latents, latents[:, :2] * 0 + latents[:, :2]) <= 1.0
  with pytest.raises(ValueError, match='should be less than'):
    maps.trustworthiness(latents[:10], latents[:10, :2])


def test_trustworthiness_of_a_perfect_map_is_one():
  points = np.random.default_rng(0).normal(size=(200, 2))
  assert maps.trustworthiness(points, points * 3 + 1) == pytest.approx(1.0, abs=1e-12)


def test_knn_accuracy_is_scikit_learns_and_leaves_a_point_out_of_its_own_vote():
  rng = np.random.default_rng(0)
  train, train_labels = rng.normal(size=(400, 6)), rng.integers(0, 4, 400)
  train[:, 0] += train_labels
  test, labels = rng.normal(size=(150, 6)), rng.integers(0, 4, 150)
  test[:, 0] += labels
  classifier = neighbors.KNeighborsClassifier(n_neighbors=5).fit(train, train_labels)
  assert maps.knn_accuracy(train, train_labels, test, labels) == classifier.score(test, labels)
  # the train points themselves: leave-one-out, as a classifier fit on the other 399 votes
  left_out = [neighbors.KNeighborsClassifier(n_neighbors=5).fit(
      np.delete(train, i, 0), np.delete(train_labels, i)).predict(train[i:i + 1])[0]
              for i in range(0, 400, 10)]
  same = np.arange(400)
  expected = np.mean(np.array(left_out) == train_labels[::10])
  assert maps.knn_accuracy(train, train_labels, train[::10], train_labels[::10],
                           same=same[::10]) == expected
  # without leaving it out, each point votes for itself
  assert maps.knn_accuracy(train, train_labels, train, train_labels) > maps.knn_accuracy(
      train, train_labels, train, train_labels, same=same)


@pytest.mark.parametrize('args, message', [
    (('tsen', 30.0, 15), "--method='tsen' is not a map method: use one of tsne, umap"),
    (('tsne', -1.0, 15), '--perplexity=-1.0 must be positive'),
    (('tsne', math.inf, 15), '--perplexity=inf must be positive and finite'),
    (('tsne', math.nan, 15), '--perplexity=nan must be positive and finite'),
    (('umap', 30.0, 1), '--n_neighbors=1 is too few: UMAP needs 2 or more'),
])
def test_settings_out_of_range_are_refused(args, message):
  with pytest.raises(UserError, match=message.replace('(', r'\(').replace(')', r'\)')):
    maps.check_settings(*args)


def test_too_few_points_for_a_method_are_refused():
  maps.check_points('umap', 16, 30.0, 15, '--num_points=16')
  with pytest.raises(UserError, match='--num_points=15 is too few: a UMAP map with 15 neighbours '
                     'needs at least 16 points .* or a lower --n_neighbors'):
    maps.check_points('umap', 15, 30.0, 15, '--num_points=15')
  with pytest.raises(UserError, match='needs at least 31 points'):
    maps.check_points('tsne', 30, 30.0, 15, '--num_points=30')


# scikit-learn 1.9's t-SNE, manifold.TSNE(2, perplexity=30.0, init='pca',
# random_state=0) on the same digits, reaches 0.99499: recorded, as computing it in a loaded
# suite takes 6 to 20 s.
SCIKIT_LEARNS_TRUSTWORTHINESS = 0.99499


def test_opentsne_map_keeps_neighbourhoods_as_scikit_learns_does():
  """The t-SNE that maps 10,000 points and more (openTSNE, exact neighbours, a coarser grid
  below 20,000 points) keeps the neighbourhoods scikit-learn's keeps."""
  from sklearn import datasets
  digits = datasets.load_digits().data
  ours = maps.trustworthiness(digits, maps.tsne(digits, perplexity=30.0, seed=0))
  assert ours > SCIKIT_LEARNS_TRUSTWORTHINESS - 0.005, ours


@pytest.mark.slow  # numba compiles umap-learn's layout in every process (about 20 s)
def test_umap_on_exact_neighbours_keeps_neighbourhoods():
  from sklearn import datasets
  digits = datasets.load_digits().data
  digits = np.concatenate([digits, digits[:5]])  # duplicates: a point is still its own first
  embedding = maps.umap(digits, n_neighbors=15, seed=0)
  assert embedding.shape == (len(digits), 2) and np.isfinite(embedding).all()
  assert maps.trustworthiness(digits, embedding) > 0.95


def test_the_linear_probe_scores_train_points_with_probes_fit_without_them():
  # labels that the latents do not predict: a probe scored on points it never saw is at chance,
  # one scored on its own training points far above it
  rng = np.random.default_rng(0)
  train, train_labels = rng.normal(size=(200, 60)), rng.integers(0, 2, 200)
  scored = np.arange(0, 200, 2)
  accuracy = maps.linear_probe_accuracy(train, train_labels, train[scored], train_labels[scored],
                                        same=scored)
  assert accuracy < 0.65, accuracy
  # without points of its own among them, one probe fit on every train latent, as before
  test, labels = rng.normal(size=(50, 60)), rng.integers(0, 2, 50)
  from sklearn import linear_model, pipeline, preprocessing  # pylint: disable=g-import-not-at-top
  probe = pipeline.make_pipeline(preprocessing.StandardScaler(),
                                 linear_model.LogisticRegression(max_iter=1000))
  expected = probe.fit(train, train_labels).score(test, labels)
  assert maps.linear_probe_accuracy(train, train_labels, test, labels) == expected
  assert maps.linear_probe_accuracy(train, train_labels, test, labels,
                                    same=np.full(50, -1)) == expected


def test_the_linear_probe_reads_latents_of_any_scale():
  # a model's latents of 1e-3: standardized, the probe separates the classes as at scale 1;
  # unscaled, its regularization would keep the weights too small to move off the majority class
  rng = np.random.default_rng(0)
  labels = (rng.random(300) < 0.6).astype(int)
  latents = np.stack([2 * labels - 1 + rng.normal(0, 0.2, 300), rng.normal(size=300)], 1)
  for scale in (1, 1e-3):
    assert maps.linear_probe_accuracy(scale * latents[:200], labels[:200], scale * latents[200:],
                                      labels[200:]) > 0.95, scale
