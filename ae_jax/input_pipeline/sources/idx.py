"""MNIST-format IDX files (train-images-idx3-ubyte[.gz] and friends) in a folder."""

import gzip
import os

import numpy as np

from ae_jax import UserError
from ae_jax.input_pipeline.splits import Split
from ae_jax.input_pipeline.splits import check_not_empty
from ae_jax.input_pipeline.splits import folder_path
from ae_jax.input_pipeline.splits import parse_split
from ae_jax.input_pipeline.splits import take_slice


IDX_FILES = {  # split -> (images, labels), each with or without .gz
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (http://yann.lecun.com/exdb/mnist/), gzipped or not."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise UserError(f'cannot read {path}: {e}') from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise UserError(f'{path} is not an IDX file of unsigned bytes (its header is wrong)')
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  offset = 4 + 4 * ndim
  extra = len(data) - offset - int(np.prod(shape))
  if extra < 0:
    raise UserError(f'{path} is truncated: its header promises shape {shape}, '
                    f'but it holds {len(data) - offset} bytes of data')
  if extra:  # labels' header on images, say
    raise UserError(f'{path} holds {extra:,} bytes more than its header promises (shape '
                    f'{shape}): is it the IDX file its name says? Replace it with that file')
  return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def _find(folder, stem):
  # train-images.idx3-ubyte: the spelling of Kaggle's and other copies of MNIST
  dotted = stem.replace('-idx', '.idx')
  for name in (stem + '.gz', stem, dotted + '.gz', dotted):
    if os.path.exists(os.path.join(folder, name)):
      return os.path.join(folder, name)
  return None


def read_idx_folder(data_config, wanted) -> dict[str, Split]:
  folder = folder_path(data_config, 'MNIST-format IDX files')
  splits = {}
  for role, spec in wanted.items():
    name = parse_split(spec)[0]
    if name not in IDX_FILES:
      raise UserError(f'IDX files have the splits {" and ".join(IDX_FILES)}, not {name!r}: '
                      'set config.data.train_split / config.data.test_split to one of them')
    images_stem, labels_stem = IDX_FILES[name]
    images_path = _find(folder, images_stem)
    if images_path is None and role != 'train':
      continue  # no test split in this folder
    if images_path is None:
      present = [s for s in IDX_FILES if _find(folder, IDX_FILES[s][0])]
      hint = (f'; the folder has the {present[0]!r} split: --config.data.train_split='
              f"{present[0]} --config.data.test_split=''" if present else '')
      raise UserError(f'{folder} has no {images_stem}[.gz] for the {name!r} split{hint}')
    images = read_idx(images_path)
    if images.ndim != 3:
      raise UserError(f'{images_path} holds an array of shape {images.shape}, not images')
    check_not_empty(len(images), images_path, images.shape)
    labels_path = _find(folder, labels_stem)
    labels = note = None
    if labels_path is None:
      note = (f'unlabelled: {folder} has no {labels_stem}[.gz], so the t-SNE map has one colour '
              'and no kNN or linear-probe accuracy')
    else:
      labels = read_idx(labels_path).astype(np.int32)
      if labels.shape != images.shape[:1]:
        raise UserError(f'{labels_path} has {len(labels)} labels for {len(images)} images in '
                        f'{images_path}')
    splits[role] = take_slice(Split(images[..., None], labels, note=note), spec)
  return splits
