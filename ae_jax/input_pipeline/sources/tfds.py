"""Any tensorflow-datasets image dataset, with a fast offline failure that says what to do.

Read into memory, or (config.data.placement='disk') left on disk as ArrayRecord files, which
tfds reads in any order (its data sources), and decoded a batch at a time.
"""

import difflib
import logging
import os
import re
import threading
import urllib.error
import urllib.request

import numpy as np

from ae_jax import UserError
from ae_jax.input_pipeline import disk
from ae_jax.input_pipeline import feeds
from ae_jax.input_pipeline.splits import Split
from ae_jax.input_pipeline.splits import parse_split
from ae_jax.input_pipeline.splits import resize_image
from ae_jax.input_pipeline.splits import to_grayscale


IDX_DATASETS = ('mnist', 'fashion_mnist', 'kmnist')  # tfds datasets made of IDX files
# Datasets whose pixels are stored as 0 and 1: scaled to 0 and 255, like every other source's.
BINARY_DATASETS = ('binarized_mnist',)


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
  # A name that tfds does not register sends tfds.builder to look for a community dataset in
  # Google Cloud Storage, whose client logs failed credential lookups first: refused here, before.
  registered = tfds.list_builders(with_community_datasets=False)
  name, _, version = data_config.name.split('/')[0].partition(':')  # 'name/config:version'
  community = version and not re.fullmatch(r'[\d.*]+', version)  # 'namespace:name'
  if not community and name not in registered:
    _no_dataset(data_config.name, registered)
  try:
    return tfds.builder(data_config.name, data_dir=data_config.data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    _no_dataset(data_config.name, registered)


def _no_dataset(name: str, registered) -> None:
  close = difflib.get_close_matches(name, registered, n=5, cutoff=0.6)
  hint = f'; the closest names are: {", ".join(close)}' if close else ''
  raise UserError(f'tensorflow-datasets has no dataset {name!r} (config.data.name){hint}')


def read_tfds(data_config, wanted) -> dict[str, Split]:
  # TensorFlow takes seconds to import and logs a lot: only this source needs it.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # TensorFlow only reads and decodes uint8 images here; its oneDNN kernels would announce
  # themselves in two log lines before anything else (TF_CPP_MIN_LOG_LEVEL does not hide them).
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
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
  on_disk = data_config.placement == 'disk' or (
      data_config.placement == 'auto' and None not in (height, width) and
      not feeds.fits_in_host_memory(builder.info.splits.total_num_examples * height * width *
                                    features[image_key].shape[-1]))
  if on_disk:
    builder = _prepared_as_array_record(tfds, builder, data_config)
  elif not _is_prepared(builder):
    _prepare(tfds, builder, data_config)
  available = set(builder.info.splits)
  wanted = dict(wanted)
  if 'validation' in available and parse_split(wanted['train'])[0] != 'validation':
    wanted['validation'] = 'validation'
  label_names = tuple(features[label_key].names) if label_key else None

  # Images are resized with PIL like every other source's (input_pipeline.resize, after this
  # reader), so that the same image_size gives the same pixels whatever the source; images of
  # varying size are resized here, one by one, as tf.data cannot batch them.
  varying = None in (height, width)

  def decode(example):
    return example[image_key], example[label_key] if label_key else 0

  scale = 255 if builder.name in BINARY_DATASETS else 1

  splits = {}
  for role, spec in wanted.items():
    if available and parse_split(spec)[0] not in available:
      if role == 'train':
        raise UserError(f'the tfds dataset {data_config.name!r} has no split {spec!r}: it has '
                        f'{", ".join(sorted(available))} (config.data.train_split)')
      continue
    if on_disk:
      records = Records(builder.as_data_source(split=spec), image_key, size,
                        data_config.grayscale, varying, where=f'{builder.data_dir} ({spec})',
                        scale=scale)
      labels = None
      if label_key:  # read once, the images left undecoded
        undecoded = builder.as_data_source(
            split=spec, decoders={image_key: tfds.decode.SkipDecoding()})
        labels = np.array([e[label_key] for start in range(0, len(undecoded), 10_000)
                           for e in undecoded.__getitems__(
                               list(range(start, min(start + 10_000, len(undecoded)))))],
                          np.int32)
      splits[role] = Split(records, labels, label_names)
      continue
    ds = builder.as_dataset(split=spec, shuffle_files=False).map(decode)
    images, labels = [], []
    if varying:
      for image, label in tfds.as_numpy(ds):
        images.append(resize_image(image, size)[None])
        labels.append(np.array([label]))
    else:
      for image_batch, label_batch in tfds.as_numpy(ds.batch(4096)):
        images.append(image_batch)
        labels.append(label_batch)
    splits[role] = Split(np.concatenate(images) * np.uint8(scale),
                         np.concatenate(labels).astype(np.int32) if label_key else None,
                         label_names)
  return splits


def _is_prepared(builder) -> bool:
  """builder.is_prepared(), without the warning that tfds logs for each dataset it has not
  prepared yet ('Variant folder .../mnist/3.0.1 has no dataset_info.json'): on a new machine
  the first thing a first run showed, before the line that says what happens."""
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    return builder.is_prepared()
  finally:
    absl_logger.setLevel(level)


def _prepare(tfds, builder, data_config, **kwargs) -> None:
  _check_can_prepare(builder, data_config)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=data_config.manual_dir), **kwargs)
  except tfds.download.download_manager.NonMatchingChecksumError as e:
    raise UserError(_checksum_message(str(e), builder.name)) from None


ARRAY_RECORD = 'array_record'


def _prepared_as_array_record(tfds, builder, data_config):
  """The builder of the dataset as ArrayRecord files, prepared where needed: in its data_dir
  where it is not prepared yet; where it is, as TFRecord files (read only in order), a second
  time in DATA_DIR/array_record, from the same downloads."""
  formats = lambda b: [f.value for f in b.info.available_file_formats()]
  if not _is_prepared(builder):
    _prepare(tfds, builder, data_config, file_format=ARRAY_RECORD)
    return builder
  if ARRAY_RECORD in formats(builder):
    return builder
  records = tfds.builder(data_config.name, data_dir=os.path.join(builder.data_dir_root,
                                                                 ARRAY_RECORD),
                         file_format=ARRAY_RECORD)
  if not _is_prepared(records):
    print(f'{builder.data_dir} holds TFRecord files, which cannot be read in any order: '
          f'preparing {data_config.name!r} as ArrayRecord files in {records.data_dir_root} '
          '(once; config.data.placement=host reads the TFRecord files into memory instead)')
    _prepare(tfds, records, data_config, file_format=ARRAY_RECORD,
             download_dir=os.path.join(builder.data_dir_root, 'downloads'))
  return records


class Records(disk.OnDisk):
  """The images of a tfds data source, decoded (and made grayscale and resized as the config
  asks, as read_tfds and input_pipeline.finish would) when a batch asks for them."""

  def __init__(self, source, image_key: str, size, grey: bool, varying: bool, where: str,
               indices=None, scale: int = 1):
    self.source, self.image_key, self.size, self.grey = source, image_key, size, grey
    self.scale = scale
    self.varying, self.where = varying, where
    self.indices = np.arange(len(source)) if indices is None else indices
    first = self._decode(source[0][image_key]) if len(source) else np.zeros((1, 1, 1), np.uint8)
    self.shape = (len(self.indices), *first.shape)
    self.dtype = np.dtype(np.uint8)
    self.nbytes = int(np.prod(self.shape))

  def __len__(self) -> int:
    return len(self.indices)

  def subset(self, indices) -> 'Records':
    return Records(self.source, self.image_key, self.size, self.grey, self.varying, self.where,
                   self.indices[indices], self.scale)

  def __getitem__(self, key) -> np.ndarray:
    chosen = np.atleast_1d(self.indices[key])
    examples = self.source.__getitems__(chosen.tolist()) if len(chosen) else []
    return np.stack([self._decode(e[self.image_key]) for e in examples]) if examples else (
        np.empty((0, *self.shape[1:]), np.uint8))

  def _decode(self, image: np.ndarray) -> np.ndarray:
    # in the order of the reads into memory: images of varying size are resized as they are
    # read, then made grayscale; others are made grayscale, then resized
    image = image * np.uint8(self.scale)
    if self.varying and self.size:
      image = resize_image(image, self.size)
    if self.grey and image.shape[-1] == 3:
      image = to_grayscale(image[None])[0]
    if not self.varying and self.size and image.shape[:2] != (self.size, self.size):
      image = resize_image(image, self.size)
    return image
