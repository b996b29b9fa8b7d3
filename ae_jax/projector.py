"""What TensorBoard's Embedding Projector reads, for a map of a run's latents.

  tensorboard --logdir WORKDIR     # then the PROJECTOR tab, run tsne/projector

The map command writes, into its folder's projector/ (WORKDIR/tsne/projector):
  <map>_latents.tsv   the mapped latents (their first 50 principal components past 50 dimensions),
                      one point a line: the projector's own PCA, t-SNE and UMAP work on them;
  <map>_map.tsv       the 2-D map (t-SNE or UMAP) as a second embedding of the same points;
  <map>_metadata.tsv  label, split and index in the split of each point, to search and colour by;
  <map>_sprite.png    the thumbnails, one tile a point, row by row;
  projector_config.pbtxt  tensorboard's ProjectorConfig (its own protos, no TensorFlow), with the
                      embeddings of every map written so far;
  an event file, without which TensorBoard does not list the folder as a run.
Paths in the config are relative to the folder: TensorBoard refuses asset paths outside it.
"""

import os

import numpy as np

from ae_jax import cannot_write
from ae_jax import replaced_atomically

FOLDER = 'projector'
CONFIG = 'projector_config.pbtxt'  # tensorboard.plugins.projector.metadata.PROJECTOR_FILENAME
SPRITE_PIXELS = 8192  # the largest sprite the projector shows, per side


def sprite(images: np.ndarray) -> tuple[np.ndarray, list[int]]:
  """(N, H, W, C) uint8 images tiled row by row into one square uint8 image, and a tile's
  [width, height]; tiles shrink (by whole steps) where N would not fit in SPRITE_PIXELS."""
  n, height, width = images.shape[:3]
  per_row = int(np.ceil(np.sqrt(n)))
  step = int(np.ceil(per_row * max(height, width) / SPRITE_PIXELS))
  images = images[:, ::step, ::step]
  height, width = images.shape[1:3]
  tiles = np.zeros((per_row * per_row, *images.shape[1:]), np.uint8)
  tiles[:n] = images
  rows = tiles.reshape(per_row, per_row, height, width, -1)
  return rows.transpose(0, 2, 1, 3, 4).reshape(per_row * height, per_row * width, -1), [
      width, height]


def _write_tsv(path: str, rows) -> None:
  with replaced_atomically(path) as tmp, open(tmp, 'w') as f:
    f.writelines(rows)


def write(folder: str, name: str, latents: np.ndarray, embedding: np.ndarray,
          images: np.ndarray, labels, label_names, split: str, indices: np.ndarray,
          how: str, files=None) -> str:
  """Writes the projector's files for one map (`name`: its file stem, e.g. test or test_umap)
  into `folder`, keeping the other maps' embeddings in its config; returns the config's path.
  `files`: the file of each image of the split, where they are files, for the metadata."""
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.projector import projector_config_pb2  # pylint: disable=g-import-not-at-top
  from ae_jax import metric_writers  # pylint: disable=g-import-not-at-top

  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
  config_path = os.path.join(folder, CONFIG)
  try:
    os.makedirs(folder, exist_ok=True)
    _write_tsv(os.path.join(folder, f'{name}_latents.tsv'),
               ('\t'.join(f'{v:.6g}' for v in row) + '\n' for row in latents))
    _write_tsv(os.path.join(folder, f'{name}_map.tsv'),
               (f'{x:.6g}\t{y:.6g}\n' for x, y in embedding))
    if labels is None:
      names = [''] * len(indices)
    else:
      names = [label_names[l] if label_names else str(l) for l in labels]
    if files is None:
      rows = ['label\tsplit\tindex\n'] + [
          f'{label}\t{split}\t{i}\n' for label, i in zip(names, indices)]
    else:  # the file that each point is, to find it from the projector
      rows = ['label\tsplit\tindex\tfile\n'] + [
          f'{label}\t{split}\t{i}\t{files[i]}\n' for label, i in zip(names, indices)]
    _write_tsv(os.path.join(folder, f'{name}_metadata.tsv'), rows)
    tiles, tile = sprite(images)
    with replaced_atomically(os.path.join(folder, f'{name}_sprite.png')) as tmp:
      Image.fromarray(tiles[..., 0] if tiles.shape[-1] == 1 else tiles).save(tmp, format='png')

    config = projector_config_pb2.ProjectorConfig()
    if os.path.exists(config_path):
      with open(config_path) as f:
        text_format.Parse(f.read(), config)
    wanted = {f'{name}: latents': (f'{name}_latents.tsv', latents.shape),
              f'{name}: {how}': (f'{name}_map.tsv', embedding.shape)}
    kept = [e for e in config.embeddings if e.metadata_path != f'{name}_metadata.tsv']
    del config.embeddings[:]
    config.embeddings.extend(kept)
    for tensor_name, (path, shape) in wanted.items():
      embedding_info = config.embeddings.add(
          tensor_name=tensor_name, tensor_path=path, metadata_path=f'{name}_metadata.tsv',
          tensor_shape=list(shape))
      embedding_info.sprite.image_path = f'{name}_sprite.png'
      embedding_info.sprite.single_image_dim.extend(tile)
    with replaced_atomically(config_path) as tmp, open(tmp, 'w') as f:
      f.write(text_format.MessageToString(config))
    if not any(f.startswith('events.out.tfevents.') for f in os.listdir(folder)):
      writer = metric_writers.SummaryWriter(folder)
      writer.scalar('projector/num_points', len(latents), 0)
      writer.close()
  except OSError as e:
    raise cannot_write(e, 'the projector files to', folder, flag='--out_dir') from None
  return config_path
