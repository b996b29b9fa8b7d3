import gzip
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ae_jax import UserError
from ae_jax import input_pipeline
from ae_jax.input_pipeline.sources import tfds as tfds_source
from conftest import MNIST_SMALL
from conftest import ROOT
from conftest import environment
from configs import default

SHARED_MNIST = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'mnist')


def _data_config(**fields):
  config = default.get_config().data
  config.update(fields)
  return config


def test_idx_source_reads_real_mnist_into_three_splits():
  splits = input_pipeline.load_splits(_data_config(source='idx', path=MNIST_SMALL))
  assert {k: v.images.shape for k, v in splits.items()} == {
      'train': (800, 28, 28, 1), 'validation': (200, 28, 28, 1), 'test': (200, 28, 28, 1)}
  for split in splits.values():
    assert split.images.dtype == np.uint8 and split.images.max() == 255
    assert split.labels.shape == split.images.shape[:1] and set(split.labels) == set(range(10))


def test_validation_split_is_deterministic_and_disjoint():
  raw = input_pipeline.read_idx_folder(_data_config(path=MNIST_SMALL), {'train': 'train'})['train']
  train, validation = input_pipeline.split_validation(raw, 0.2)
  again, _ = input_pipeline.split_validation(raw, 0.2)
  np.testing.assert_array_equal(train.images, again.images)
  flat = lambda s: {x.tobytes() for x in s.images}
  assert not flat(train) & flat(validation)  # (the 1,000 digits are all different)
  assert len(flat(train) | flat(validation)) == len(raw.images)
  with pytest.raises(UserError, match=r'config.data.validation_fraction=0.0001 of 1000 training '
                     'images leaves no validation image: change it'):
    input_pipeline.split_validation(raw, 0.0001)
  with pytest.raises(UserError, match='leaves no training image'):
    input_pipeline.split_validation(raw, 0.9999)


def test_split_slicing_like_tfds():
  config = _data_config(source='idx', path=MNIST_SMALL, train_split='train[:100]',
                        test_split='test[50%:]')
  splits = input_pipeline.load_splits(config)
  assert len(splits['train'].images) + len(splits['validation'].images) == 100
  assert len(splits['test'].images) == 100
  with pytest.raises(UserError, match='cannot read the split'):
    input_pipeline.parse_split('train[:10')


def test_a_percentage_slice_rounds_to_the_closest_image_as_tfds_does():
  split = input_pipeline.Split(np.zeros((67, 2, 2, 1), np.uint8), np.arange(67))
  take = input_pipeline.splits.take_slice
  assert len(take(split, 'train[:50%]').images) == 34  # 33.5 images: tfds's closest is 34
  assert len(take(split, 'train[50%:]').images) == 33


def test_image_size_makes_non_square_images_square():
  split = input_pipeline.Split(np.zeros((2, 28, 36, 1), np.uint8), None)
  finished = input_pipeline.finish(split, _data_config(image_size=28), 'the images')
  assert finished.images.shape == (2, 28, 28, 1)


def test_resizing_to_a_height_and_width_keeps_the_image_upright():
  # images of one's own are resized to a non-square trained shape (height, width): a brightness
  # that grows downwards still does, row by row
  image = np.repeat(np.linspace(0, 255, 10).astype(np.uint8)[:, None, None], 20, axis=1)
  resized = input_pipeline.splits.resize_image(image, (6, 4))
  assert resized.shape == (6, 4, 1)
  assert (resized == resized[:, :1]).all() and (np.diff(resized[:, 0, 0].astype(int)) > 0).all()


def _write_idx(path, array, truncate=0):
  header = bytes([0, 0, 8, array.ndim]) + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  data = header + array.tobytes()
  with gzip.open(path, 'wb') as f:
    f.write(data[:len(data) - truncate])


def test_idx_errors_name_the_file_and_the_fix(tmp_path):
  with pytest.raises(UserError, match='is not a folder'):
    input_pipeline.load_splits(_data_config(source='idx', path=str(tmp_path / 'nope')))
  # only the test files, as in ../shared/data/mnist: the message says how to train on them
  shutil.copy(os.path.join(MNIST_SMALL, 't10k-images-idx3-ubyte.gz'), tmp_path)
  with pytest.raises(UserError, match=r"train-images-idx3-ubyte\[.gz\].*train_split=test"):
    input_pipeline.load_splits(_data_config(source='idx', path=str(tmp_path)))
  images = np.zeros((5, 4, 4), np.uint8)
  _write_idx(tmp_path / 'train-images-idx3-ubyte.gz', images, truncate=3)
  with pytest.raises(UserError, match='train-images-idx3-ubyte.gz is truncated'):
    input_pipeline.load_splits(_data_config(source='idx', path=str(tmp_path)))
  _write_idx(tmp_path / 'train-images-idx3-ubyte.gz', images)
  _write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', np.zeros(4, np.uint8))
  with pytest.raises(UserError, match='has 4 labels for 5 images'):
    input_pipeline.load_splits(_data_config(source='idx', path=str(tmp_path)))
  (tmp_path / 'train-labels-idx1-ubyte.gz').write_bytes(b'not gzip at all')
  with pytest.raises(UserError, match='cannot read .*train-labels-idx1-ubyte.gz'):
    input_pipeline.load_splits(_data_config(source='idx', path=str(tmp_path)))


def test_unknown_source_lists_the_choices():
  with pytest.raises(UserError, match="'csv' is not one of: tfds, idx"):
    input_pipeline.load_splits(_data_config(source='csv'))


def test_tfds_source_with_mock_data(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, '_can_reach', lambda url: True)  # mock_data needs none
  with tfds.testing.mock_data(num_examples=40):
    splits = input_pipeline.load_splits(_data_config(data_dir=str(tmp_path)))
  assert splits['train'].images.shape == (32, 28, 28, 1)
  assert splits['validation'].images.shape == (8, 28, 28, 1)
  assert splits['test'].images.dtype == np.uint8 and splits['test'].labels.dtype == np.int32


def test_offline_tfds_fails_within_seconds_and_says_what_to_do(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, '_can_reach', lambda url: False)
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  if os.path.isdir(SHARED_MNIST):  # three of the four official files
    for name in os.listdir(SHARED_MNIST):
      shutil.copy(os.path.join(SHARED_MNIST, name), manual_dir)
  # what makes this fast: tfds's download (minutes of retries offline) is never started
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare',
                      lambda *args, **kwargs: pytest.fail('a download was attempted'))
  with pytest.raises(UserError) as error:
    input_pipeline.load_splits(_data_config(data_dir=str(tmp_path / 'tfds'),
                                            manual_dir=str(manual_dir)))
  message = str(error.value)
  for name in ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
               't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz',
               '--config.data.manual_dir', '--config.data.source=idx'):
    assert name in message
  if os.path.isdir(SHARED_MNIST):
    assert 'lacks train-images-idx3-ubyte.gz.' in message  # just the missing one


def test_offline_with_every_file_in_manual_dir_prepares_from_them(tmp_path, monkeypatch):
  # no network is needed where config.data.manual_dir holds what tfds would download
  monkeypatch.setattr(tfds_source, '_can_reach', lambda url: False)
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  for name in ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
               't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'):
    (manual_dir / name).write_bytes(b'')
  prepared = []
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare',
                      lambda self, **kwargs: prepared.append(kwargs))
  builder = tfds.builder('mnist', data_dir=str(tmp_path / 'tfds'))
  tfds_source._prepare(tfds, builder, _data_config(manual_dir=str(manual_dir)))  # pylint: disable=protected-access
  [kwargs] = prepared
  assert kwargs['download_config'].manual_dir == str(manual_dir)


def test_can_reach_answers_quickly_on_loopback():
  with socket.socket() as s:  # a port that nothing listens on
    s.bind(('127.0.0.1', 0))
    closed_port = s.getsockname()[1]
  assert not tfds_source._can_reach(f'http://127.0.0.1:{closed_port}/', timeout=3)
  server = http.server.HTTPServer(('127.0.0.1', 0), http.server.BaseHTTPRequestHandler)
  threading.Thread(target=server.handle_request, daemon=True).start()
  try:  # any HTTP answer (here: 501, HEAD not implemented) means the network is there
    assert tfds_source._can_reach(f'http://127.0.0.1:{server.server_port}/', timeout=3)
  finally:
    server.server_close()


# Compiles training's and evaluation's loops over 8 simulated devices with the batches streamed
# from host memory, and prints the collectives that move images (uint8) or batch indices (int32
# arrays; the evaluation's count of examples is an int32 scalar).
_STREAMED_COLLECTIVES = '''
import functools, re
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from ae_jax import input_pipeline, metrics, models, train
from configs import quickstart
config = quickstart.get_config()
images = np.random.default_rng(0).integers(0, 256, (512, 8, 8, 1), np.uint8)
mesh = train.create_mesh()
model, tx = models.create_model(config, images.shape[1:]), train.create_optimizer(config)
state = jax.jit(functools.partial(train.create_train_state, model, tx, 0),
                out_shardings=NamedSharding(mesh, P()))()
feed = input_pipeline.make_feed(images, mesh, 'host')
rows = np.arange(4 * 64, dtype=np.int32).reshape(4, 64)
update = jax.jit(functools.partial(
    train.train_loop, batch_sharding=NamedSharding(mesh, P('data')),
    step_fn=functools.partial(train.train_step, model=model, tx=tx, noise_mean=0., noise_std=0.)))
evaluate = metrics.make_eval_fn(model, config, mesh)
mask = input_pipeline.to_device(np.ones(rows.shape, bool), NamedSharding(mesh, P(None, 'data')))
variables = {'params': state.params, 'batch_stats': state.batch_stats}
for name, lowered in (('update', update.lower(state, *feed(rows), 4)),
                      ('evaluation', evaluate.lower(variables, *feed(rows), mask, 0, 0))):
  for line in lowered.compile().as_text().splitlines():
    if re.search(r' (all-gather|all-reduce|all-to-all|collective-permute)(-start)?\\(', line) and (
        'u8[' in line or re.search(r's32\\[\\d', line)):
      print(name, line.strip()[:160])
'''


def test_streamed_batches_reach_each_device_without_collectives(tmp_path):
  """Each device reads its own part of every streamed batch: no collective sends it images
  (the whole batch, or the whole call, to every device) or the batch's indices."""
  result = subprocess.run([sys.executable, '-c', _STREAMED_COLLECTIVES], cwd=ROOT,
                          env=environment(8, None), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout == '', result.stdout


def test_grayscale_is_pils_luma_and_resizing_keeps_rows_and_columns_apart():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  colour = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), np.uint8)
  pil = np.stack([np.asarray(Image.fromarray(c).convert('L')) for c in colour])[..., None]
  gray = input_pipeline.to_grayscale(colour)
  np.testing.assert_array_equal(gray, pil)
  primaries = np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]], np.uint8)
  assert input_pipeline.to_grayscale(primaries).ravel().tolist() == [76, 150, 29]
  half = np.zeros((4, 6, 1), np.uint8)
  half[:, 3:] = 255  # the right half white
  resized = input_pipeline.resize_image(half, (8, 12))
  assert resized.shape == (8, 12, 1)
  assert (resized[:, :5] == 0).all() and (resized[:, 7:] == 255).all()
