"""Which images of a split get the importance-weighted -log p(x) where it is asked for fewer."""

import numpy as np

from ae_jax import evaluate
from ae_jax import models
from conftest import small_config


def _chosen(monkeypatch, images, num_images):
  """The images importance_weighted_nll hands to the evaluation loop."""
  seen = {}

  def capture(run, eval_fn, images=None, **kwargs):
    del run, eval_fn, kwargs
    seen['images'] = np.asarray(images)
    return {'iw_nll': 0.0}

  monkeypatch.setattr(evaluate, '_evaluate_split', capture)
  config = small_config('vae')
  model = models.create_model(config, images.shape[1:])
  run = evaluate.TrainedRun(config, model, None, 0, 'test', images, None, None, {},
                            evaluate.train.create_mesh())
  result = evaluate.importance_weighted_nll(run, 10, num_images)
  assert result['iw_num_images'] == len(seen['images'])
  return seen['images']


def test_a_subset_is_drawn_from_the_whole_of_a_class_ordered_split(monkeypatch):
  # a split as class folders give it: 500 images of one class, then 500 of another
  images = np.concatenate([np.zeros((500, 4, 4, 1), np.uint8),
                           np.full((500, 4, 4, 1), 255, np.uint8)])
  chosen = _chosen(monkeypatch, images, 100)
  assert len(chosen) == 100
  share = (chosen[:, 0, 0, 0] == 255).mean()
  assert 0.3 < share < 0.7, share  # not the first 100, all of the first class
  np.testing.assert_array_equal(chosen, _chosen(monkeypatch, images, 100))  # the same each time


def test_all_images_where_the_split_has_no_more(monkeypatch):
  images = np.arange(30, dtype=np.uint8).reshape(30, 1, 1, 1).repeat(4, 1).repeat(4, 2)
  np.testing.assert_array_equal(_chosen(monkeypatch, images, 1000), images)
