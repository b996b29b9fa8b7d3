"""Arrays: a .npy of images, or a .npz of images and labels, per split or not."""

import os

import numpy as np

from ae_jax import UserError
from ae_jax.input_pipeline import disk
from ae_jax.input_pipeline import feeds
from ae_jax.input_pipeline.splits import FOLDER_SPLITS
from ae_jax.input_pipeline.splits import Split
from ae_jax.input_pipeline.splits import check_not_empty
from ae_jax.input_pipeline.splits import choose


def _check_images(images, where: str) -> np.ndarray:
  check_not_empty(len(images) if images.ndim else 0, where, images.shape)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise UserError(f'{where} has shape {images.shape}: images must be (N, H, W) or '
                    '(N, H, W, C) with C = 1 or 3')
  if not images.shape[1] or not images.shape[2]:
    raise UserError(f'{where} has shape {images.shape}: its images have no pixels')
  if images.dtype == np.uint8:
    return images
  if images.dtype == bool:  # binarized images (binarized MNIST): white where True
    return np.multiply(images, np.uint8(255), dtype=np.uint8)
  if np.issubdtype(images.dtype, np.floating) and images.size and (
      images.min() >= 0 and images.max() <= 1):
    return np.round(images * 255).astype(np.uint8)
  if np.issubdtype(images.dtype, np.integer) and images.size and (
      images.min() >= 0 and images.max() <= 255):
    return images.astype(np.uint8)
  if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
    bad = int(np.sum(~np.isfinite(images)))
    raise UserError(f'{where} holds {bad:,} NaN or infinite values: give uint8 (0-255), floats '
                    'in [0, 1] or booleans')
  raise UserError(f'{where} holds {images.dtype} values in [{images.min()}, {images.max()}]: '
                  'give uint8 (0-255), floats in [0, 1] or booleans')


def not_numbers(where: str) -> UserError:
  """The error for an object array (of images of several sizes, say), which reading would
  unpickle: code could run."""
  return UserError(f'{where} holds Python objects, not an array of numbers: save images of one '
                   'size as one array, e.g. np.stack(images).astype(np.uint8)')


def load(path: str):
  """np.load of a .npy or .npz without unpickling anything; a UserError where it cannot."""
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    if str(e).startswith('Object arrays'):
      raise not_numbers(path) from None
    # np.load takes what has no .npy or .npz header for a pickle, and offers to unpickle it
    reason = 'it is neither' if 'pickled' in str(e) else e
    raise UserError(f'cannot read {path} as a NumPy .npy or .npz file: {reason}') from None


def _member(data, key: str, path: str) -> np.ndarray:
  try:
    return data[key]
  except ValueError:  # an object array: np.load refuses to unpickle it
    raise not_numbers(f'{path}[{key}]') from None


def _check_labels(labels, num_images: int, where: str, names=None) -> np.ndarray:
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise UserError(f'{where} must be a vector of class numbers 0, 1, ..., not '
                    f'{labels.dtype} of shape {labels.shape}')
  if labels.size and labels.min() < 0:
    raise UserError(f'{where} holds negative labels (the least is {labels.min()}): number the '
                    'classes 0, 1, ...')
  if len(labels) != num_images:
    raise UserError(f'{where} has {len(labels)} labels for {num_images} images')
  if names is not None and labels.size and labels.max() >= len(names):
    raise UserError(f'{where} holds labels up to {labels.max()}, but label_names names '
                    f'{len(names)} classes: give a name to each class')
  return labels.astype(np.int32)


def read_arrays(data_config, wanted) -> dict[str, Split]:
  """A .npy of images, or a .npz with `images` [and `labels`], or with train_images,
  validation_images, test_images [and train_labels, ...]; `label_names` optional."""
  path = data_config.path
  if not path or not os.path.isfile(path):
    raise UserError(f'config.data.path={path!r} is not a file: with config.data.source='
                    "'arrays' it must name a .npy or .npz file of images")
  if data_config.placement == 'disk' or (data_config.placement == 'auto' and path.endswith(
      '.npy') and not feeds.fits_in_host_memory(os.path.getsize(path))):
    if not path.endswith('.npy'):
      raise UserError(f'{path}: the members of an .npz cannot be read in any order from disk '
                      '(config.data.placement=disk): save the images as a .npy, e.g. '
                      "np.save('images.npy', np.load(path)['images'])")
    return choose({'train': Split(disk.Rows(path), None)}, wanted, path)
  data = load(path)
  if isinstance(data, np.ndarray):
    return choose({'train': Split(_check_images(data, path), None)}, wanted, path)
  keys = set(data.files)
  names = (tuple(str(n) for n in _member(data, 'label_names', path)) if 'label_names' in keys
           else None)
  prefixes = [''] if 'images' in keys else [f'{s}_' for s in FOLDER_SPLITS
                                            if f'{s}_images' in keys]
  if not prefixes:
    raise UserError(f'{path} has the arrays {", ".join(sorted(keys))}: name the images '
                    "'images' (and 'labels'), or 'train_images', 'test_images', ... ")
  splits = {}
  for prefix in prefixes:
    images = _check_images(_member(data, f'{prefix}images', path), f'{path}[{prefix}images]')
    labels = None
    if f'{prefix}labels' in keys:
      labels = _check_labels(_member(data, f'{prefix}labels', path), len(images),
                             f'{path}[{prefix}labels]', names)
    splits[prefix.rstrip('_') or 'train'] = Split(images, labels, names)
  return choose(splits, wanted, path)
