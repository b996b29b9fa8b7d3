"""Images a user gives a trained model (reconstruct.sh, and --input of eval.sh, tsne.sh,
generate.sh, encode.sh and anomaly.sh): a folder of image files (its subfolders too), one image
file, or a .npy of images (N, H, W[, C]), uint8, floats in [0, 1] or booleans; each converted
as training converts images to the model's shape. They are read whole into memory, unlike a
split that config.data names."""

from concurrent import futures
import os
import sys

import numpy as np

from ae_jax import UserError
from ae_jax.input_pipeline.sources import arrays
from ae_jax.input_pipeline.sources import folder as folder_source
from ae_jax.input_pipeline.splits import resize_image
from ae_jax.input_pipeline.splits import to_grayscale

THREADS = min(8, (os.cpu_count() or 1) * 2)  # PIL decodes and encodes without the GIL


def list_inputs(path: str) -> tuple[str, list[str]]:
  """('folder' | 'file' | 'npy', the image files relative to `path`, for a folder)."""
  if not path:
    raise UserError('--input is missing: name a folder of images, an image file or a .npy')
  if os.path.isdir(path):
    names = [os.path.relpath(p, path) for p in folder_source.image_files(path)]
    if not names:
      raise UserError(f'--input={path} holds no image files '
                      f'({", ".join(folder_source.IMAGE_EXTENSIONS)})')
    return 'folder', names
  if os.path.isfile(path) and path.lower().endswith('.npy'):
    return 'npy', [os.path.basename(path)]
  if os.path.isfile(path) and path.lower().endswith(folder_source.IMAGE_EXTENSIONS):
    return 'file', [os.path.basename(path)]
  if os.path.exists(path):
    raise UserError(f'--input={path} is neither a folder, an image file '
                    f'({", ".join(folder_source.IMAGE_EXTENSIONS)}) nor a .npy of images')
  raise UserError(f'--input={path} does not exist: name a folder of images, an image file or a '
                  '.npy')


def input_name(path: str) -> str:
  """What the outputs of --input=`path` are named after: my_images for ~/my_images/, scans for
  scans.npy; test_input for a folder named test, whose outputs would replace the test split's."""
  name = os.path.basename(os.path.abspath(path))
  if not os.path.isdir(path):
    name = os.path.splitext(name)[0]
  name = name or 'input'
  splits = ('train', 'validation', 'test')
  taken = splits + tuple(f'{split}_umap' for split in splits)  # a split's UMAP map: tsne.py
  return f'{name}_input' if name in taken else name


def check_input(path: str, out_dir: str) -> None:
  """Refuses, before the run is read, an --input that names no images, and an --out_dir inside
  a folder --input, whose figures the next command would read as inputs."""
  check_out_dir(path, list_inputs(path)[0], out_dir)


def check_out_dir(path: str, kind: str, out_dir: str, flag: str = '--out_dir') -> None:
  """Refuses an output folder (`flag`) inside a folder --input (`kind` of list_inputs), whose
  files the next command would read as inputs."""
  out, source = os.path.realpath(out_dir), os.path.realpath(path)
  if kind == 'folder' and (out == source or out.startswith(source + os.sep)):
    raise UserError(f'{flag}={out_dir} is inside --input={path}: what is written there '
                    f'would be read as inputs next time; choose an {flag} outside it')


def convert(image: np.ndarray, shape) -> tuple[np.ndarray, set[str]]:
  """An image (H, W, C) as the model takes it (`shape`), and what was done to it."""
  done = set()
  if image.shape[-1] == 3 and shape[-1] == 1:
    image = to_grayscale(image[None])[0]
    done.add('grayscale')
  elif image.shape[-1] == 1 and shape[-1] == 3:
    image = np.repeat(image, 3, -1)
    done.add('colour')
  if image.shape[:2] != tuple(shape[:2]):
    image = resize_image(image, tuple(shape[:2]))
    done.add('resized')
  return image, done


def read_inputs(path: str, kind: str, names: list[str], shape):
  """(names, uint8 images (N, *shape), {conversion: count}, [skipped files' messages])."""
  if kind == 'npy':
    data = arrays.load(path)
    if not data.ndim or not len(data):
      raise UserError(f'--input={path} holds no images (an array of shape {data.shape})')
    if data.ndim == 2 and data.shape[1] == np.prod(shape):  # images flattened to rows
      dims = ', '.join(map(str, shape if shape[-1] > 1 else shape[:-1]))
      raise UserError(f'--input={path} has shape {data.shape}: {len(data):,} images flattened to '
                      f'rows? Save them as images: array.reshape({len(data)}, {dims})')
    if data.ndim == 2 or data.ndim == 3 and data.shape[-1] in (1, 3):  # not N rows of pixels
      raise UserError(f'--input={path} has shape {data.shape}: one image? Save it as '
                      f'(1, {", ".join(map(str, data.shape))}); images are (N, H, W) or '
                      '(N, H, W, C)')
    data = arrays._check_images(data, path)  # pylint: disable=protected-access
    names = [f'{i}' for i in range(len(data))]
    skipped = []
    images = [convert(image, shape) for image in data]
  else:
    files = [os.path.join(path, n) for n in names] if kind == 'folder' else [path]

    def decode(file):  # converted at once: the process holds no photo at its full size
      try:
        image = folder_source._decode(file, None)  # pylint: disable=protected-access
        return convert(image, shape)
      except UserError as e:
        return e

    with futures.ThreadPoolExecutor(THREADS) as pool:
      decoded = list(pool.map(decode, files))
    if kind == 'file' and isinstance(decoded[0], UserError):
      raise decoded[0]
    skipped = [str(d) for d in decoded if isinstance(d, UserError)]
    names = [n for n, d in zip(names, decoded) if not isinstance(d, UserError)]
    images = [d for d in decoded if not isinstance(d, UserError)]
  counts = {}
  for _, done in images:
    for d in done:
      counts[d] = counts.get(d, 0) + 1
  stacked = (np.stack([image for image, _ in images]) if images
             else np.empty((0, *shape), np.uint8))
  return names, stacked, counts, skipped


def background(images: np.ndarray) -> np.ndarray:
  """How bright each image's border is, 0 (black) to 1 (white): its background, where the
  subject sits inside it (MNIST's digits light on black: 0)."""
  borders = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], 1)
  return borders.reshape(len(images), -1).mean(1) / 255.0


def training_background(images) -> float | None:
  """shared_background() of 64 images spread over a split of the training data (a folder lists
  its images class by class), read 8 at a time (the split may be on disk)."""
  sample = np.linspace(0, len(images) - 1, min(len(images), 64)).astype(int)
  return shared_background(np.concatenate([background(np.asarray(images[sample[i:i + 8]]))
                                           for i in range(0, len(sample), 8)]))


def shared_background(brightness: np.ndarray) -> float | None:
  """The median of images' background() where at least 95% are on one side of 0.5 (MNIST's
  black, a scan's white); None where backgrounds vary (photos), which no note could judge."""
  light = (brightness > 0.5).mean()
  return float(np.median(brightness)) if max(light, 1 - light) >= 0.95 else None


def differ_in_background(images: np.ndarray, trained: float | None) -> str | None:
  """A note where images have a background unlike the training images' (`trained`,
  shared_background()): a dark subject on white, given a model of light digits on black,
  is encoded as nothing it has seen, and every number about it says only that."""
  if trained is None:
    return None
  light = background(images) > 0.5
  other = int((light != (trained > 0.5)).sum())
  if not other:
    return None
  shade = lambda is_light: 'light' if is_light else 'dark'
  return (f'note: {other:,} of {len(images):,} images have a {shade(trained <= 0.5)} background '
          f'and the training images a {shade(trained > 0.5)} one, so the model takes them as '
          'unlike its data: where the subject should look like the training images\', invert '
          'them first (255 - each pixel; docs/using.md)')


def read(path: str, kind: str, names: list[str], shape, trained_background=None):
  """read_inputs, saying on stderr which files it skipped and on stdout what it converted,
  and where the images' background is unlike the training images' (`trained_background`);
  a UserError where no image could be read."""
  names, images, counts, skipped = read_inputs(path, kind, names, shape)
  for message in skipped:
    print(f'skipped: {message}', file=sys.stderr)
  if not len(images):
    raise UserError(f'--input={path}: no image could be read (the files above)')
  if counts:
    what = {'grayscale': 'colour image{} made grayscale',
            'colour': 'grayscale image{} made colour',
            'resized': 'image{} of another size resized to ' + f'{shape[1]}x{shape[0]}'}
    print('converted as training converts them: '
          + ', '.join(f'{n:,} {what[k].format("" if n == 1 else "s")}'
                      for k, n in sorted(counts.items())))
  note = differ_in_background(images, trained_background)
  if note:
    print(note)
  return names, images, counts, skipped
