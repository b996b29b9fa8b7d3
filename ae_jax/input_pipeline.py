"""Data sources -> uint8 image arrays (N, H, W, C) with labels, one per split; and feeds, which
hand the compiled loops their batches: from the devices, or streamed from host memory.

Every source gives the splits 'train' and 'validation', and 'test' where the data has one.
Each split is read once into host memory.
"""

from concurrent import futures
import difflib
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
  note: str | None = None  # what the user may not expect of this data, for the data line


def load_splits(data_config) -> dict[str, Split]:
  """Reads the data that `data_config` names: {'train', 'validation'[, 'test']} -> Split.

  The validation split is the source's own where it has one, else config.data.
  validation_fraction of the train split; the test split is there only where the data has one.
  """
  if data_config.source not in READERS:
    raise UserError(f'config.data.source={data_config.source!r} is not one of: '
                    f'{", ".join(READERS)}')
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
  return splits


def finish(split: Split, data_config, where: str) -> Split:
  """Grayscale and resizing as the config asks; checks that the images have 1 or 3 channels."""
  images, note = split.images, split.note
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


def to_grayscale(images: np.ndarray) -> np.ndarray:
  """ITU-R 601-2 luma, as PIL's convert('L') (the original's convert2grayscale)."""
  luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  return np.round(luma).astype(np.uint8)[..., None]


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """(N, H, W, C) uint8 -> (N, size, size, C), with PIL's antialiased bilinear filter."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = np.empty((len(images), size, size, images.shape[-1]), np.uint8)
  for i, image in enumerate(images):
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    resized = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
    out[i] = resized.reshape(size, size, -1)
  return out


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


def _folder(data_config, what: str) -> str:
  folder = data_config.path
  if not folder or not os.path.isdir(folder):
    raise UserError(f'config.data.path={folder!r} is not a folder: with config.data.source='
                    f'{data_config.source!r} it must name a folder of {what}')
  return folder


def read_idx_folder(data_config, wanted) -> dict[str, Split]:
  folder = _folder(data_config, 'MNIST-format IDX files')
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


# --- tensorflow-datasets -------------------------------------------------------------------

IDX_DATASETS = ('mnist', 'fashion_mnist', 'kmnist')  # tfds datasets made of IDX files


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
  if builder.name in IDX_DATASETS:
    idx_hint = (' Or read IDX files directly: --config.data.source=idx '
                '--config.data.path=FOLDER (train-images-idx3-ubyte[.gz] and friends).')
  where = f'{manual_dir} (config.data.manual_dir) lacks' if manual_dir else 'it needs'
  raise UserError(
      f'tfds cannot download {builder.name!r}: no network, and {where} '
      f'{", ".join(missing)}. Put the files {", ".join(files)} (with their official '
      f'checksums) in a folder and pass --config.data.manual_dir=FOLDER.{idx_hint} Or try '
      'configs/quickstart.py, which needs no network and no files.')


def _checksum_message(error: str, name: str) -> str:
  """tfds's NonMatchingChecksumError (a paragraph) -> which file, and what to do."""
  path = re.search(r'downloaded to (\S+?),? has wrong checksum', error)
  sizes = re.findall(r'size=([^,]+),', error)
  file = path.group(1) if path else 'a file'
  size = f' ({sizes[1]}, where the official file has {sizes[0]})' if len(sizes) == 2 else ''
  fix = ('Replace it with the official file, or read the folder as IDX files, which has no '
         'checksum check: --config.data.source=idx --config.data.path=FOLDER'
         if name in IDX_DATASETS else 'Replace it with the official file')
  return (f'{file} is not the official file that tfds registers for {name!r}: its checksum '
          f'differs{size}. {fix}')


def _tfds_builder(tfds, data_config):
  try:
    return tfds.builder(data_config.name, data_dir=data_config.data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    close = difflib.get_close_matches(data_config.name, tfds.list_builders(), n=5, cutoff=0.6)
    hint = f'; the closest names are: {", ".join(close)}' if close else ''
    raise UserError(f'tensorflow-datasets has no dataset {data_config.name!r} '
                    f'(config.data.name){hint}') from None


def read_tfds(data_config, wanted) -> dict[str, Split]:
  # TensorFlow takes seconds to import and logs a lot: only this source needs it.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')  # so that TF takes no GPU memory from JAX

  builder = _tfds_builder(tfds, data_config)
  features = builder.info.features
  image_keys = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
  if not image_keys:
    raise UserError(f'the tfds dataset {data_config.name!r} has no image feature '
                    f'(its features: {", ".join(features)})')
  image_key = 'image' if 'image' in image_keys else image_keys[0]
  label_key = 'label' if 'label' in features and isinstance(
      features['label'], tfds.features.ClassLabel) else None
  height, width = features[image_key].shape[:2]
  size = data_config.image_size
  if None in (height, width) and not size:
    raise UserError(f'the images of {data_config.name!r} differ in size: choose one with '
                    '--config.data.image_size=N (e.g. 64)')
  if not builder.is_prepared():
    _check_can_prepare(builder, data_config)
    try:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=data_config.manual_dir))
    except tfds.download.download_manager.NonMatchingChecksumError as e:
      raise UserError(_checksum_message(str(e), builder.name)) from None
  available = set(builder.info.splits)
  wanted = dict(wanted)
  if 'validation' in available and parse_split(wanted['train'])[0] != 'validation':
    wanted['validation'] = 'validation'
  label_names = tuple(features[label_key].names) if label_key else None

  def decode(example):
    image = example[image_key]
    if size and (height, width) != (size, size):
      image = tf.cast(tf.round(tf.clip_by_value(
          tf.image.resize(image, (size, size), antialias=True), 0, 255)), tf.uint8)
    return image, example[label_key] if label_key else 0

  splits = {}
  for role, spec in wanted.items():
    if available and parse_split(spec)[0] not in available:
      if role == 'train':
        raise UserError(f'the tfds dataset {data_config.name!r} has no split {spec!r}: it has '
                        f'{", ".join(sorted(available))} (config.data.train_split)')
      continue
    ds = builder.as_dataset(split=spec, shuffle_files=False).map(decode).batch(4096)
    images, labels = [], []
    for image_batch, label_batch in tfds.as_numpy(ds):
      images.append(image_batch)
      labels.append(label_batch)
    splits[role] = Split(np.concatenate(images),
                         np.concatenate(labels).astype(np.int32) if label_key else None,
                         label_names)
  return splits


# --- A folder of image files ----------------------------------------------------------------

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp')
FOLDER_SPLITS = ('train', 'validation', 'test')


def _is_image(path: str) -> bool:
  return os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS)


def _decode(path: str, size):
  """One image file -> uint8 (H, W, 1 or 3)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      image.load()  # a truncated file fails here, not later
      grey = image.mode in ('1', 'L', 'LA', 'I', 'I;16', 'F')
      if image.mode in ('I', 'I;16', 'F'):  # 16-bit and float grayscale: to 8 bits
        array = np.asarray(image, np.float32)
        image = Image.fromarray(np.uint8(np.clip(array / max(array.max(), 1) * 255, 0, 255)))
      image = image.convert('L' if grey else 'RGB')
      if size and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
      array = np.asarray(image)
  except (OSError, ValueError, SyntaxError) as e:
    raise UserError(f'cannot read the image {path}: {e}. Delete or replace the file') from None
  return array[..., None] if array.ndim == 2 else array


def read_images(paths: list[str], size) -> tuple[np.ndarray, str | None]:
  """Decodes image files (in parallel threads: PIL releases the GIL) to (N, H, W, C) uint8, and
  a note where grayscale files were made colour."""
  with futures.ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
    images = list(pool.map(lambda p: _decode(p, size), paths))
  note = None
  grey = sum(image.shape[-1] == 1 for image in images)
  if 0 < grey < len(images):  # a colour image makes every image colour
    images = [np.repeat(image, 3, -1) if image.shape[-1] == 1 else image for image in images]
    note = (f'{grey:,} of the {len(images):,} files are grayscale and {len(images) - grey:,} '
            'colour: all are trained as colour (--config.data.grayscale=true makes them grayscale)')
  shapes = {}
  for path, image in zip(paths, images):
    shapes.setdefault(image.shape[:2], path)
  if len(shapes) > 1:
    (a, path_a), (b, path_b) = list(shapes.items())[:2]
    raise UserError(f'the images differ in size ({path_a} is {a[1]}x{a[0]}, {path_b} is '
                    f'{b[1]}x{b[0]}): choose one with --config.data.image_size=N')
  return np.stack(images), note


def _read_image_folder(folder: str, size, class_names=None) -> Split:
  """A flat folder of images (no labels), or one subfolder of images per class."""
  entries = sorted(os.listdir(folder))
  files = [os.path.join(folder, e) for e in entries if _is_image(os.path.join(folder, e))]
  subfolders = [e for e in entries if os.path.isdir(os.path.join(folder, e))
                and any(_is_image(os.path.join(folder, e, f))
                        for f in os.listdir(os.path.join(folder, e)))]
  if files and subfolders:
    raise UserError(f'{folder} holds both image files and class folders ({subfolders[0]}/): put '
                    'every image in a class folder, or none')
  if not files and not subfolders:
    raise UserError(f'{folder} holds no image files ({", ".join(IMAGE_EXTENSIONS)}), and no '
                    'folders of them')
  if files:
    images, note = read_images(files, size)
    return Split(images, None, note=note)
  class_names = class_names or subfolders
  unknown = [c for c in subfolders if c not in class_names]
  if unknown:
    raise UserError(f'{folder} has classes that the train split lacks: {", ".join(unknown)}')
  paths, labels = [], []
  for c in subfolders:
    class_files = [os.path.join(folder, c, f) for f in sorted(os.listdir(os.path.join(folder, c)))]
    class_files = [p for p in class_files if _is_image(p)]
    paths += class_files
    labels += [class_names.index(c)] * len(class_files)
  images, note = read_images(paths, size)
  return Split(images, np.array(labels, np.int32), tuple(class_names), note)


def read_image_folder(data_config, wanted) -> dict[str, Split]:
  """path/ with images (flat or per class), or with train/, validation/, test/ subfolders."""
  root = _folder(data_config, 'image files')
  have = [s for s in FOLDER_SPLITS if os.path.isdir(os.path.join(root, s))]
  size = data_config.image_size
  if not have:
    splits = {'train': _read_image_folder(root, size)}
  elif 'train' not in have:
    raise UserError(f'{root} has {", ".join(have)}/ but no train/ folder')
  else:
    splits = {'train': _read_image_folder(os.path.join(root, 'train'), size)}
    names = splits['train'].label_names
    for s in have[1:]:
      splits[s] = _read_image_folder(os.path.join(root, s), size, names)
  return _choose(splits, wanted, root)


def _choose(splits: dict[str, Split], wanted, where) -> dict[str, Split]:
  """The splits that `wanted` names (sliced), plus the source's own validation split."""
  chosen = {}
  for role, spec in wanted.items():
    name = parse_split(spec)[0]
    if name in splits:
      chosen[role] = take_slice(splits[name], spec)
    elif role == 'train':
      raise UserError(f'{where} has no {name!r} split (config.data.train_split); it has '
                      f'{", ".join(splits)}')
  if 'validation' in splits and parse_split(wanted['train'])[0] != 'validation':
    chosen['validation'] = splits['validation']
  return chosen


# --- Arrays ---------------------------------------------------------------------------------

def _check_images(images, where: str) -> np.ndarray:
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise UserError(f'{where} has shape {images.shape}: images must be (N, H, W) or '
                    '(N, H, W, C) with C = 1 or 3')
  if images.dtype == np.uint8:
    return images
  if np.issubdtype(images.dtype, np.floating) and images.size and (
      images.min() >= 0 and images.max() <= 1):
    return np.round(images * 255).astype(np.uint8)
  if np.issubdtype(images.dtype, np.integer) and images.size and (
      images.min() >= 0 and images.max() <= 255):
    return images.astype(np.uint8)
  raise UserError(f'{where} holds {images.dtype} values in [{images.min()}, {images.max()}]: '
                  'give uint8 (0-255) or floats in [0, 1]')


def _check_labels(labels, num_images: int, where: str) -> np.ndarray:
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (
      labels.size and labels.min() < 0):
    raise UserError(f'{where} must be a vector of class numbers 0, 1, ..., not '
                    f'{labels.dtype} of shape {labels.shape}')
  if len(labels) != num_images:
    raise UserError(f'{where} has {len(labels)} labels for {num_images} images')
  return labels.astype(np.int32)


def read_arrays(data_config, wanted) -> dict[str, Split]:
  """A .npy of images, or a .npz with `images` [and `labels`], or with train_images,
  validation_images, test_images [and train_labels, ...]; `label_names` optional."""
  path = data_config.path
  if not path or not os.path.isfile(path):
    raise UserError(f'config.data.path={path!r} is not a file: with config.data.source='
                    "'arrays' it must name a .npy or .npz file of images")
  try:
    data = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise UserError(f'cannot read {path} as a NumPy .npy or .npz file: {e}') from None
  if isinstance(data, np.ndarray):
    return _choose({'train': Split(_check_images(data, path), None)}, wanted, path)
  keys = set(data.files)
  names = tuple(str(n) for n in data['label_names']) if 'label_names' in keys else None
  prefixes = [''] if 'images' in keys else [f'{s}_' for s in FOLDER_SPLITS
                                            if f'{s}_images' in keys]
  if not prefixes:
    raise UserError(f'{path} has the arrays {", ".join(sorted(keys))}: name the images '
                    "'images' (and 'labels'), or 'train_images', 'test_images', ... ")
  splits = {}
  for prefix in prefixes:
    images = _check_images(data[f'{prefix}images'], f'{path}[{prefix}images]')
    labels = None
    if f'{prefix}labels' in keys:
      labels = _check_labels(data[f'{prefix}labels'], len(images), f'{path}[{prefix}labels]')
    splits[prefix.rstrip('_') or 'train'] = Split(images, labels, names)
  return _choose(splits, wanted, path)


# --- scikit-learn's digits ------------------------------------------------------------------

def read_digits(data_config, wanted) -> dict[str, Split]:
  """scikit-learn's 1,797 bundled 8x8 handwritten digits (values 0-16): real, and offline."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  split = Split(images, digits.target.astype(np.int32), tuple(str(d) for d in range(10)))
  return _choose({'train': split}, wanted, "scikit-learn's digits")


READERS = {'tfds': read_tfds, 'idx': read_idx_folder, 'folder': read_image_folder,
           'arrays': read_arrays, 'digits': read_digits}


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
