"""Data sources -> uint8 image arrays (N, H, W, C) with labels, one per split; and feeds, which
hand the compiled loops their batches: from the devices, or streamed from host memory.

Every source gives the splits 'train' and 'validation', and 'test' where the data has one.
Each split is read once into host memory.
"""

import gzip
import os
import re
import threading
from typing import NamedTuple
import urllib.error
import urllib.request

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from ae_jax import UserError

# The validation set must not change with config.seed, so it has a seed of its own.
VALIDATION_SEED = 0


class Split(NamedTuple):
  images: np.ndarray  # uint8 (N, H, W, C)
  labels: np.ndarray | None  # int32 (N,), or None for unlabelled data
  label_names: tuple[str, ...] | None = None  # names of the labels 0, 1, ...; None: the numbers


def load_splits(data_config) -> dict[str, Split]:
  """Reads the data that `data_config` names: {'train', 'validation'[, 'test']} -> Split."""
  readers = {'tfds': read_tfds, 'idx': read_idx_folder}
  if data_config.source not in readers:
    raise UserError(f'config.data.source={data_config.source!r} is not one of: '
                    f'{", ".join(readers)}')
  names = [data_config.train_split] + ([data_config.test_split] if data_config.test_split else [])
  raw = readers[data_config.source](data_config, names)
  train, validation = split_validation(raw[data_config.train_split],
                                       data_config.validation_fraction)
  splits = {'train': train, 'validation': validation}
  if data_config.test_split:
    splits['test'] = raw[data_config.test_split]
  return splits


def split_validation(split: Split, fraction: float) -> tuple[Split, Split]:
  """Divides a split into (train, validation), the same way every time."""
  n = len(split.images)
  num_validation = int(round(n * fraction))
  if num_validation < 1 or num_validation >= n:
    raise UserError(f'{n} training images leave no room for a validation fraction of '
                    f'{fraction}: change config.data.validation_fraction or use more data')
  order = np.random.default_rng(VALIDATION_SEED).permutation(n)
  validation_idx, train_idx = np.sort(order[:num_validation]), np.sort(order[num_validation:])
  take = lambda idx: split._replace(
      images=split.images[idx], labels=None if split.labels is None else split.labels[idx])
  return take(train_idx), take(validation_idx)


_SPLIT = re.compile(r'^([\w-]+)(?:\[(-?\d*%?):(-?\d*%?)\])?$')


def parse_split(spec: str) -> tuple[str, str, str]:
  """'train[:80%]' -> ('train', '', '80%'): tfds's slicing syntax, for every source."""
  match = _SPLIT.match(spec.replace(' ', ''))
  if not match:
    raise UserError(f'cannot read the split {spec!r}: write a name, optionally sliced like '
                    "tfds: 'train', 'train[:1000]', 'train[10%:]'")
  name, start, stop = match.groups()
  return name, start or '', stop or ''


def take_slice(split: Split, spec: str) -> Split:
  """The part of `split` that the slice in `spec` (if any) selects."""
  _, start, stop = parse_split(spec)
  n = len(split.images)
  bound = lambda b: None if not b else (
      int(round(n * int(b[:-1]) / 100)) if b.endswith('%') else int(b))
  part = slice(bound(start), bound(stop))
  selected = split._replace(images=split.images[part],
                            labels=None if split.labels is None else split.labels[part])
  if not len(selected.images):
    raise UserError(f'the split {spec!r} selects no images (the split has {n})')
  return selected


# --- MNIST-format IDX files ----------------------------------------------------------------

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
  if len(data) - offset != int(np.prod(shape)):
    raise UserError(f'{path} is truncated: its header promises shape {shape}, '
                    f'but it holds {len(data) - offset} bytes of data')
  return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def _find(folder, stem):
  for name in (stem + '.gz', stem):
    if os.path.exists(os.path.join(folder, name)):
      return os.path.join(folder, name)
  return None


def read_idx_folder(data_config, split_names) -> dict[str, Split]:
  folder = data_config.path
  if not folder or not os.path.isdir(folder):
    raise UserError(f'config.data.path={folder!r} is not a folder: with config.data.source='
                    "'idx' it must name a folder of MNIST-format IDX files")
  splits = {}
  for spec in split_names:
    name = parse_split(spec)[0]
    if name not in IDX_FILES:
      raise UserError(f'IDX files have the splits {" and ".join(IDX_FILES)}, not {name!r}: '
                      'set config.data.train_split / config.data.test_split to one of them')
    images_stem, labels_stem = IDX_FILES[name]
    images_path = _find(folder, images_stem)
    if images_path is None:
      present = [s for s in IDX_FILES if _find(folder, IDX_FILES[s][0])]
      hint = (f'; the folder has the {present[0]!r} split: --config.data.train_split='
              f"{present[0]} --config.data.test_split=''" if present else '')
      raise UserError(f'{folder} has no {images_stem}[.gz] for the {name!r} split{hint}')
    images = read_idx(images_path)
    if images.ndim != 3:
      raise UserError(f'{images_path} holds an array of shape {images.shape}, not images')
    labels_path = _find(folder, labels_stem)
    labels = None
    if labels_path is not None:
      labels = read_idx(labels_path).astype(np.int32)
      if labels.shape != images.shape[:1]:
        raise UserError(f'{labels_path} has {len(labels)} labels for {len(images)} images in '
                        f'{images_path}')
    splits[spec] = take_slice(Split(images[..., None], labels), spec)
  return splits


# --- tensorflow-datasets -------------------------------------------------------------------

def _can_reach(url: str, timeout: float = 5.0) -> bool:
  """Whether `url`'s server answers within `timeout` seconds (any HTTP answer counts)."""
  result = []

  def probe():
    try:
      urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=timeout)
      result.append(True)
    except urllib.error.HTTPError:
      result.append(True)
    except Exception:  # pylint: disable=broad-except  (no answer, whatever the reason)
      result.append(False)

  # A thread, because a name lookup can hang for longer than urlopen's timeout.
  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout)
  return bool(result and result[0])


def _check_can_prepare(builder, data_config) -> None:
  """Fails within seconds where tfds would retry a download for minutes and then fail."""
  url_infos = builder.url_infos or {}
  files = sorted(info.filename or os.path.basename(url) for url, info in url_infos.items())
  manual_dir = data_config.manual_dir
  if manual_dir:
    missing = [f for f in files if not os.path.exists(os.path.join(manual_dir, f))]
    if files and not missing:
      return
  else:
    missing = files
  if not url_infos or _can_reach(next(iter(url_infos))):
    return
  idx_hint = ''
  if builder.name in ('mnist', 'fashion_mnist', 'kmnist'):
    idx_hint = (' Or read IDX files directly: --config.data.source=idx '
                '--config.data.path=FOLDER (train-images-idx3-ubyte[.gz] and friends).')
  where = f'{manual_dir} (config.data.manual_dir) lacks' if manual_dir else 'it needs'
  raise UserError(
      f'tfds cannot download {builder.name!r}: no network, and {where} '
      f'{", ".join(missing)}. Put the files {", ".join(files)} (with their official '
      f'checksums) in a folder and pass --config.data.manual_dir=FOLDER.{idx_hint}')


def read_tfds(data_config, split_names) -> dict[str, Split]:
  # TensorFlow takes seconds to import and logs a lot: only this source needs it.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')  # so that TF takes no GPU memory from JAX

  builder = tfds.builder(data_config.name, data_dir=data_config.data_dir)
  if not builder.is_prepared():
    _check_can_prepare(builder, data_config)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=data_config.manual_dir))
  image_key, label_key = 'image', 'label'
  label_names = tuple(builder.info.features[label_key].names)
  splits = {}
  for name in split_names:
    ds = builder.as_dataset(split=name, shuffle_files=False).batch(4096)
    images, labels = [], []
    for batch in tfds.as_numpy(ds):
      images.append(batch[image_key])
      labels.append(batch[label_key])
    splits[name] = Split(np.concatenate(images), np.concatenate(labels).astype(np.int32),
                         label_names)
  return splits


# --- Feeding the compiled loops -------------------------------------------------------------
# A compiled loop takes (images, indices) and reads batch i as images[indices[i]]. A feed turns
# the rows of a few batches, (num_batches, batch_size) indices into a split, into those two
# arrays: from a copy of the split on every device, or gathered in host memory and sent over.
# Either way every device reads its own part of every batch locally.

def to_device(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array with `sharding` from a host array that every process can index in full.

  Each process reads only the parts that its own devices hold.
  """
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def fits_on_device(num_bytes: int, device) -> bool:
  """Whether `num_bytes` of data can live on each device and leave room for training."""
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and 'bytes_limit' in stats:
    free = stats['bytes_limit'] - stats.get('bytes_in_use', 0)
  else:  # a CPU: its memory is the host's
    free = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  return num_bytes <= free // 4


def device_feed(images: np.ndarray, mesh):
  """Keeps `images` on every device; a call sends only the indices of its batches."""
  on_device = to_device(images, NamedSharding(mesh, P()))
  index_sharding = NamedSharding(mesh, P(None, 'data'))
  return lambda rows: (on_device, to_device(rows, index_sharding))


def host_feed(images: np.ndarray, mesh):
  """Gathers each call's batches in host memory and sends them over, device by device.

  The gathered images are laid out device-major: device d holds its slice of every batch, so
  that batch i, indices[i], is read without communication, and each process gathers only the
  images of its own devices.
  """
  data_sharding = NamedSharding(mesh, P('data'))
  index_sharding = NamedSharding(mesh, P(None, 'data'))
  num_devices = mesh.size

  def feed(rows):
    num_batches, batch_size = rows.shape
    per_device = batch_size // num_devices
    device_major = rows.reshape(num_batches, num_devices, per_device).transpose(1, 0, 2)
    flat = device_major.reshape(-1)
    gathered = jax.make_array_from_callback(
        (len(flat), *images.shape[1:]), data_sharding, lambda index: images[flat[index[0]]])
    # where batch i's part on device d lies in the device-major layout
    positions = (np.arange(num_devices)[:, None, None] * num_batches * per_device
                 + np.arange(num_batches)[None, :, None] * per_device
                 + np.arange(per_device)[None, None, :])
    indices = positions.transpose(1, 0, 2).reshape(num_batches, batch_size).astype(np.int32)
    return gathered, to_device(indices, index_sharding)

  return feed
