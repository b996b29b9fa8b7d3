"""The input pipeline: data sources -> uint8 image arrays (N, H, W, C) with labels, one per
split; and feeds, which hand the compiled loops their batches.

  sources/  where images come from: tfds, IDX files, image folders, arrays, scikit-learn digits;
  splits.py the Split they hand back, and tfds's split-slicing syntax for every source;
  feeds.py  where the data lives (config.data.placement) and how batches reach the devices:
            kept on the devices, or streamed from host memory or disk;
  given.py  images a user gives a trained model (a folder, a file, a .npy), not a config.

Every source gives the splits 'train' and 'validation', and 'test' where the data has one.
Each split is read once into host memory, except with config.data.placement='disk' (or 'auto'
and data larger than a quarter of host memory): a .npy (disk.py), a folder (sources/folder.py)
and a tfds dataset (sources/tfds.py) are then read a batch at a time.
"""

import numpy as np

from ae_jax import UserError
from ae_jax.input_pipeline.feeds import agree_placement
from ae_jax.input_pipeline.feeds import choose_feed
from ae_jax.input_pipeline.feeds import device_feed
from ae_jax.input_pipeline.feeds import fits_on_device
from ae_jax.input_pipeline.feeds import host_feed
from ae_jax.input_pipeline.feeds import make_feed
from ae_jax.input_pipeline.feeds import to_device
from ae_jax.input_pipeline.sources import READERS
from ae_jax.input_pipeline.sources.idx import read_idx
from ae_jax.input_pipeline.sources.idx import read_idx_folder
from ae_jax.input_pipeline.splits import Split
from ae_jax.input_pipeline.splits import parse_split
from ae_jax.input_pipeline.splits import resize_image
from ae_jax.input_pipeline.splits import rows
from ae_jax.input_pipeline.splits import select
from ae_jax.input_pipeline.splits import to_grayscale
from ae_jax.input_pipeline import classes
from ae_jax.input_pipeline import disk
from ae_jax.input_pipeline import given

# The validation set must not change with config.seed, so it has a seed of its own.
VALIDATION_SEED = 0


def load_splits(data_config) -> dict[str, Split]:
  """Reads the data that `data_config` names: {'train', 'validation'[, 'test']} -> Split.

  The validation split is the source's own where it has one, else config.data.
  validation_fraction of the train split; the test split is there only where the data has one.
  """
  if data_config.source not in READERS:
    raise UserError(f'config.data.source={data_config.source!r} is not one of: '
                    f'{", ".join(READERS)}')
  if data_config.placement == 'disk' and data_config.source not in ('arrays', 'folder', 'tfds'):
    raise UserError(f'config.data.placement=disk streams a .npy of images, a folder of image '
                    "files or a tfds dataset from disk (config.data.source='arrays', 'folder' or "
                    f"'tfds'); the source "
                    f"'{data_config.source}' is read into memory: use placement=host, or save "
                    'the images as a .npy')
  wanted = {'train': data_config.train_split}
  if data_config.test_split:
    wanted['test'] = data_config.test_split
  raw = READERS[data_config.source](data_config, wanted)
  raw = {role: finish(split, data_config, f'the {role} images') for role, split in raw.items()}
  shapes = {role: split.images.shape[1:] for role, split in raw.items()}
  if len(set(shapes.values())) > 1:
    raise UserError(f'the splits have images of different shapes ({shapes}): set '
                    '--config.data.image_size=N (and --config.data.grayscale=true) to make them '
                    'alike')
  if 'validation' in raw:
    train, validation = raw['train'], raw['validation']
  else:
    train, validation = split_validation(raw['train'], data_config.validation_fraction)
  splits = {'train': train, 'validation': validation}
  if 'test' in raw:
    splits['test'] = raw['test']
  return classes.keep_classes(splits, data_config)


def finish(split: Split, data_config, where: str) -> Split:
  """Grayscale and resizing as the config asks; checks that the images have 1 or 3 channels."""
  images, note = split.images, split.note
  if isinstance(images, disk.Rows) and (
      (data_config.grayscale and images.shape[-1] == 3) or (
          data_config.image_size and images.shape[1:3] != (data_config.image_size,) * 2)):
    raise UserError(f'{images.path} is read from disk as stored (config.data.placement=disk): '
                    'resize it or make it grayscale once and save it, or use placement=host')
  if images.shape[-1] not in (1, 3):
    raise UserError(f'{where} have {images.shape[-1]} channels: ae_jax takes 1 (grayscale) or '
                    '3 (colour)')
  if data_config.grayscale and images.shape[-1] == 3:
    images = to_grayscale(images)
    note = None  # the note of mixed colour and grayscale files no longer holds
  size = data_config.image_size
  if size and images.shape[1:3] != (size, size):
    images = resize(images, size)
  return split._replace(images=images, note=note)


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """(N, H, W, C) uint8 -> (N, size, size, C), with PIL's antialiased bilinear filter: the one
  resize of every source."""
  out = np.empty((len(images), size, size, images.shape[-1]), np.uint8)
  for i, image in enumerate(images):
    out[i] = resize_image(image, size)
  return out


def split_validation(split: Split, fraction: float) -> tuple[Split, Split]:
  """Divides a split into (train, validation), the same way every time."""
  n = len(split.images)
  num_validation = int(round(n * fraction))
  if num_validation < 1 or num_validation >= n:
    left = 'no validation image' if num_validation < 1 else 'no training image'
    raise UserError(f'config.data.validation_fraction={fraction} of {n} training images leaves '
                    f'{left}: change it or use more data')
  order = np.random.default_rng(VALIDATION_SEED).permutation(n)
  validation_idx, train_idx = np.sort(order[:num_validation]), np.sort(order[num_validation:])
  return select(split, train_idx), select(split, validation_idx)


__all__ = ['READERS', 'Split', 'classes', 'disk', 'device_feed', 'finish', 'fits_on_device',
           'host_feed', 'load_splits', 'parse_split', 'read_idx', 'read_idx_folder', 'resize',
           'rows', 'select', 'split_validation', 'to_device', 'to_grayscale']
