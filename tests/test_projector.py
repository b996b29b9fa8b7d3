import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from ae_jax import projector
from ae_jax import tsne


def test_sprite_tiles_row_by_row():
  images = np.arange(5)[:, None, None, None].repeat(4, 1).repeat(3, 2).astype(np.uint8)
  tiles, tile = projector.sprite(images)
  assert tiles.shape == (12, 9, 1) and tile == [3, 4]
  assert tiles[0, 3, 0] == 1 and tiles[4, 0, 0] == 3 and tiles[8, 0, 0] == 0  # 3x3, one empty


def test_sprite_holds_each_image_whole_in_its_tile():
  images = np.random.default_rng(0).integers(0, 256, (5, 4, 3, 1), np.uint8)
  tiles, (width, height) = projector.sprite(images)
  for i, image in enumerate(images):
    row, column = divmod(i, 3)
    np.testing.assert_array_equal(
        tiles[row * height:(row + 1) * height, column * width:(column + 1) * width], image)


def test_a_sprite_of_wide_images_fits_the_projectors_largest():
  tiles, _ = projector.sprite(np.zeros((4, 10, 5000, 1), np.uint8))  # 2 x 5,000 pixels a row
  assert max(tiles.shape[:2]) <= projector.SPRITE_PIXELS


def test_the_config_gives_the_tiles_width_then_height(tmp_path):
  # the projector cuts the sprite by single_image_dim [width, height]: swapped, a non-square
  # image's tiles would straddle their neighbours
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.projector import projector_config_pb2  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, 6, 2, 1), np.uint8)  # 6 high, 2 wide
  projector.write(str(tmp_path), 'test', rng.normal(size=(4, 3)), rng.normal(size=(4, 2)),
                  images, None, None, 'test', np.arange(4), 't-SNE')
  config = projector_config_pb2.ProjectorConfig()
  with open(tmp_path / projector.CONFIG) as f:
    text_format.Parse(f.read(), config)
  assert [list(e.sprite.single_image_dim) for e in config.embeddings] == [[2, 6], [2, 6]]
  assert Image.open(tmp_path / 'test_sprite.png').size == (2 * 2, 2 * 6)  # (width, height)


def test_a_map_replaces_its_own_entries_only_and_names_the_files(tmp_path):
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.projector import projector_config_pb2  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 4, 4, 1), np.uint8)
  latents, embedding = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
  files = [f'/data/{i}.png' for i in range(6)]
  for name in ('test_umap', 'test_input', 'test', 'test'):  # test keeps test_umap's and the input's
    projector.write(str(tmp_path), name, latents, embedding, images, None, None, name,
                    np.arange(6), 't-SNE', files if name == 'test_input' else None)
  config = projector_config_pb2.ProjectorConfig()
  with open(tmp_path / projector.CONFIG) as f:
    text_format.Parse(f.read(), config)
  assert sorted(e.tensor_name for e in config.embeddings) == [
      'test: latents', 'test: t-SNE', 'test_input: latents', 'test_input: t-SNE',
      'test_umap: latents', 'test_umap: t-SNE']
  with open(tmp_path / 'test_input_metadata.tsv') as f:
    assert f.read().splitlines()[:2] == ['label\tsplit\tindex\tfile', '\ttest_input\t0\t/data/0.png']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _get(url: str, timeout: float = 120):
  deadline = time.time() + timeout
  while True:
    try:
      with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.read()
    except (urllib.error.URLError, ConnectionError):
      if time.time() > deadline:
        raise
      time.sleep(1)


@pytest.mark.slow
def test_tensorboard_projector_serves_the_maps_latents_sprite_and_metadata(trained_ae):
  workdir, config = trained_ae
  tsne.main(workdir, config, 'best', 'test', num_points=100, num_train_points=200,
            perplexity=20.0, seed=0)
  port = _free_port()
  board = subprocess.Popen(
      [os.path.join(os.path.dirname(sys.executable), 'tensorboard'), '--logdir', workdir,
       '--host', '127.0.0.1', '--port', str(port)],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    base = f'http://127.0.0.1:{port}/data/plugin/projector'
    runs = []
    for _ in range(60):  # the plugin finds the runs in a thread of its own
      runs = json.loads(_get(f'{base}/runs'))
      if 'tsne/projector' in runs:
        break
      time.sleep(1)
    assert 'tsne/projector' in runs, runs
    run = 'tsne/projector'
    info = json.loads(_get(f'{base}/info?run={run}'))
    shapes = {e['tensorName']: e['tensorShape'] for e in info['embeddings']}
    assert shapes['test: latents'] == [100, 32]
    assert shapes["test: t-SNE (scikit-learn's Barnes-Hut)"] == [100, 2]
    name = urllib.parse.quote('test: latents')
    tensor = np.frombuffer(_get(f'{base}/tensor?run={run}&name={name}'), np.float32)
    assert tensor.shape == (100 * 32,)
    metadata = _get(f'{base}/metadata?run={run}&name={name}').decode().splitlines()
    assert metadata[0] == 'label\tsplit\tindex' and len(metadata) == 101
    assert metadata[1].split('\t')[1] == 'test'
    png = _get(f'{base}/sprite_image?run={run}&name={name}')
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
  finally:
    board.terminate()
    board.wait(30)
