"""Any tensorflow-datasets image dataset, with a fast offline failure that says what to do."""

import difflib
import os
import re
import threading
import urllib.error
import urllib.request

import numpy as np

from ae_jax import UserError
from ae_jax.input_pipeline.splits import Split
from ae_jax.input_pipeline.splits import parse_split
from ae_jax.input_pipeline.splits import resize_image


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

  # Images are resized with PIL like every other source's (input_pipeline.resize, after this
  # reader), so that the same image_size gives the same pixels whatever the source; images of
  # varying size are resized here, one by one, as tf.data cannot batch them.
  varying = None in (height, width)

  def decode(example):
    return example[image_key], example[label_key] if label_key else 0

  splits = {}
  for role, spec in wanted.items():
    if available and parse_split(spec)[0] not in available:
      if role == 'train':
        raise UserError(f'the tfds dataset {data_config.name!r} has no split {spec!r}: it has '
                        f'{", ".join(sorted(available))} (config.data.train_split)')
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
    splits[role] = Split(np.concatenate(images),
                         np.concatenate(labels).astype(np.int32) if label_key else None,
                         label_names)
  return splits
