"""config.data.classes and config.data.held_out_classes: training on some classes only."""

import numpy as np
import pytest

from ae_jax import UserError
from ae_jax import config_lib
from ae_jax import input_pipeline
from conftest import small_config


def _splits(**overrides):
  config = small_config('ae', **overrides)
  return input_pipeline.load_splits(config.data)


def test_held_out_classes_leave_train_and_validation_and_stay_in_test():
  every = _splits()
  splits = _splits(**{'data.held_out_classes': '3,7'})
  for role in ('train', 'validation'):
    assert not np.isin(splits[role].labels, [3, 7]).any()
    kept = ~np.isin(every[role].labels, [3, 7])
    np.testing.assert_array_equal(splits[role].labels, every[role].labels[kept])
    np.testing.assert_array_equal(splits[role].images, every[role].images[kept])
  np.testing.assert_array_equal(splits['test'].labels, every['test'].labels)
  assert input_pipeline.classes.held_out(
      small_config('ae', **{'data.held_out_classes': '7,3'}).data, every['test'].labels) == [3, 7]


def test_classes_is_the_complement():
  splits = _splits(**{'data.classes': '0, 1'})
  assert set(np.unique(splits['train'].labels)) == {0, 1}
  config = small_config('ae', **{'data.classes': '0,1'})
  assert input_pipeline.classes.held_out(config.data, splits['test'].labels) == list(range(2, 10))


def test_classes_by_name_in_a_folder(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for name in ('cat', 'dog'):
    (tmp_path / name).mkdir()
    for i in range(5):
      Image.fromarray(np.full((4, 4), i * 10, np.uint8)).save(tmp_path / name / f'{i}.png')
  config = small_config('ae', **{'data.source': 'folder', 'data.path': str(tmp_path),
                                 'data.train_split': 'train', 'data.test_split': '',
                                 'data.held_out_classes': 'dog'})
  splits = input_pipeline.load_splits(config.data)
  assert set(splits['train'].labels) | set(splits['validation'].labels) == {0}
  assert all('/cat/' in f for f in splits['train'].files + splits['validation'].files)


@pytest.mark.parametrize('overrides, message', [
    ({'data.classes': '1', 'data.held_out_classes': '2'}, 'both set'),
    ({'data.held_out_classes': '11'}, "no class '11'; it has 0, 1,"),
    ({'data.held_out_classes': 'shoe'}, "no class 'shoe'"),
    ({'data.held_out_classes': ','.join(map(str, range(10)))}, 'leaves no class to train on'),
])
def test_bad_classes_are_one_clear_error(overrides, message):
  with pytest.raises(UserError, match=message):
    config_lib.validate(small_config('ae', **overrides))
    _splits(**overrides)


def test_a_saved_config_can_still_set_the_classes(tmp_path):
  config = small_config('ae')
  config_lib.write_config(config, str(tmp_path))
  loaded = config_lib.load_config(str(tmp_path))
  loaded.data.held_out_classes = '3'  # a placeholder again, not a None of no type
  assert loaded.data.get_type('held_out_classes') is str
