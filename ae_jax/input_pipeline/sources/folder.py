"""A folder of image files: flat (unlabelled), one subfolder per class, and/or train/ test/."""

from concurrent import futures
import functools
import os

import numpy as np

from ae_jax import UserError
from ae_jax.input_pipeline import disk
from ae_jax.input_pipeline import feeds
from ae_jax.input_pipeline.splits import FOLDER_SPLITS
from ae_jax.input_pipeline.splits import Split
from ae_jax.input_pipeline.splits import choose
from ae_jax.input_pipeline.splits import folder_path
from ae_jax.input_pipeline.splits import resize_image


IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp')


def _is_image(path: str) -> bool:
  """A regular image file (a named pipe would block its reader) with a visible name; a link to
  no file is refused rather than passed over."""
  if os.path.basename(path).startswith('.') or not path.lower().endswith(IMAGE_EXTENSIONS):
    return False
  if os.path.islink(path) and not os.path.exists(path):
    raise UserError(f'{path} is a link to a file that does not exist: remove it, or point it at '
                    'an image')
  return os.path.isfile(path)


def image_files(folder: str) -> list[str]:
  """The image files in `folder` and its subfolders, sorted, as torchvision's ImageFolder finds
  a class's; hidden names (.ipynb_checkpoints/, macOS's ._ files) are not read."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    found += [os.path.join(root, f) for f in files if _is_image(os.path.join(root, f))]
  return sorted(found)


def _unreadable() -> tuple[type[BaseException], ...]:
  """What PIL raises for a file it cannot read: damaged, not an image, or too large to open
  safely (more pixels than PIL's limit on decompression bombs)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
          Image.DecompressionBombWarning)


def _cannot_read(path: str, error: BaseException) -> UserError:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
    return UserError(f'cannot read the image {path}: it is too large ({error}). Delete it, or '
                     'replace it with a smaller copy')
  return UserError(f'cannot read the image {path}: {error}. Delete or replace the file')


def _high_bit(mode: str) -> bool:
  """16- and 32-bit integer and float grayscale (I;16B is ImageJ's big-endian TIFF)."""
  return mode in ('I', 'F') or mode.startswith('I;16')


def _is_grey(mode: str) -> bool:
  return mode in ('1', 'L', 'LA') or _high_bit(mode)


# EXIF orientations that turn the stored image a quarter: viewers show it W and H swapped
_QUARTER_TURNS = (5, 6, 7, 8)


def _drawn_in_transparency_on_white(image):
  """An image of one flat colour whose picture lies in its transparency (black strokes on a
  transparent canvas, as drawing programs export them), composited onto white as viewers show
  it; any other image as it is, its transparency dropped where it is read."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  grey = _is_grey(image.mode)
  array = np.asarray(image.convert('LA' if grey else 'RGBA'))
  colour, alpha = array[..., :-1].astype(np.float32), array[..., -1:].astype(np.float32) / 255
  if alpha.min() == alpha.max() or (colour != colour[:1, :1]).any():
    return image
  on_white = np.uint8(np.round(colour * alpha + 255 * (1 - alpha)))
  return Image.fromarray(on_white[..., 0] if grey else on_white)


def _decode(path: str, size, grey: bool = False):
  """One image file -> uint8 (H, W, 1 or 3), upright as its EXIF orientation says (as viewers
  show it); `grey`: grayscale whatever the file is."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      image.load()  # a truncated file fails here, not later
      image = ImageOps.exif_transpose(image)
      if 'A' in image.mode or 'transparency' in image.info:
        image = _drawn_in_transparency_on_white(image)
      grey = grey or _is_grey(image.mode)
      if _high_bit(image.mode):  # 16-bit and float grayscale: to 8 bits, NaN and inf as 0
        array = np.asarray(image, np.float32)
        finite = np.isfinite(array)
        if not finite.any():
          raise ValueError('it holds no finite pixel value (NaN or infinite throughout)')
        array = np.where(finite, array, 0)
        image = Image.fromarray(np.uint8(np.clip(array / max(array.max(), 1) * 255, 0, 255)))
      array = np.asarray(image.convert('L' if grey else 'RGB'))
  except _unreadable() as e:
    raise _cannot_read(path, e) from None
  array = array[..., None] if array.ndim == 2 else array
  if size and array.shape[:2] != (size, size):
    array = resize_image(array, size)
  return array


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


_POOL = None  # the threads that decode a batch's files (PIL releases the GIL)


class Files(disk.OnDisk):
  """Image files decoded when a batch asks for them (config.data.placement='disk')."""

  def __init__(self, paths, size, shape, indices=None):
    self.paths, self.size, self.where = paths, size, os.path.dirname(paths[0])
    self.indices = np.arange(len(paths)) if indices is None else indices
    self.shape = (len(self.indices), *shape)
    self.dtype = np.dtype(np.uint8)
    self.nbytes = int(np.prod(self.shape))

  def __len__(self) -> int:
    return len(self.indices)

  def subset(self, indices) -> 'Files':
    return Files(self.paths, self.size, self.shape[1:], self.indices[indices])

  def __getitem__(self, key) -> np.ndarray:
    global _POOL
    if _POOL is None:
      _POOL = futures.ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2))
    chosen = np.atleast_1d(self.indices[key])
    if not len(chosen):
      return np.empty((0, *self.shape[1:]), np.uint8)
    return np.stack(list(_POOL.map(self._decode, chosen)))

  def _decode(self, i):
    image = _decode(self.paths[i], self.size, grey=self.shape[-1] == 1)
    if image.shape[-1] == 1 and self.shape[-1] == 3:
      image = np.repeat(image, 3, -1)  # as read_images makes a mixed folder colour
    if image.shape != self.shape[1:]:
      raise UserError(f'{self.paths[i]} is {image.shape[1]}x{image.shape[0]}, the other images '
                      f'{self.shape[2]}x{self.shape[1]}: choose one size with '
                      '--config.data.image_size=N')
    return image


def _header(path: str) -> tuple[tuple[int, int], bool]:
  """(width, height), and whether it is grayscale, of an image file that PIL verifies whole:
  a truncated or damaged file is found here, before training writes anything, not at its batch."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      size, grey = image.size, _is_grey(image.mode)
      image.verify()  # reads the file's chunks and checks them, without decoding the pixels
    with Image.open(path) as image:  # verify leaves the image unusable
      turned = image.getexif().get(0x0112) in _QUARTER_TURNS  # as _decode turns it upright
    return size[::-1] if turned else size, grey
  except _unreadable() as e:
    raise _cannot_read(path, e) from None


def on_disk(paths: list[str], size, grayscale: bool) -> tuple[Files, str | None]:
  """The files as a split that stays on disk, its shape read from their headers, each file
  verified (in parallel threads: PIL releases the GIL while it reads)."""
  sizes, grey = {}, 0
  with futures.ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
    for path, (image_size, is_grey) in zip(paths, pool.map(_header, paths)):
      sizes.setdefault(image_size, path)
      grey += is_grey
  if len(sizes) > 1 and not size:
    (a, path_a), (b, path_b) = list(sizes.items())[:2]
    raise UserError(f'the images differ in size ({path_a} is {a[0]}x{a[1]}, {path_b} is '
                    f'{b[0]}x{b[1]}): choose one with --config.data.image_size=N')
  width, height = (size, size) if size else next(iter(sizes))
  channels = 1 if grayscale or grey == len(paths) else 3
  note = None
  if channels == 3 and grey:
    note = (f'{grey:,} of the {len(paths):,} files are grayscale and {len(paths) - grey:,} '
            'colour: all are trained as colour (--config.data.grayscale=true makes them grayscale)')
  return Files(paths, size, (height, width, channels)), note


def _read_image_folder(folder: str, size, class_names=None, *, lazy=False,
                       grayscale=False) -> Split:
  """A flat folder of images (no labels), or one subfolder of images per class."""
  entries = [e for e in sorted(os.listdir(folder)) if not e.startswith('.')]
  files = [os.path.join(folder, e) for e in entries if _is_image(os.path.join(folder, e))]
  class_files = {e: image_files(os.path.join(folder, e)) for e in entries
                 if os.path.isdir(os.path.join(folder, e))}
  subfolders = [e for e, found in class_files.items() if found]
  if files and subfolders:
    raise UserError(f'{folder} holds both image files and class folders ({subfolders[0]}/): put '
                    'every image in a class folder, or none')
  if not files and not subfolders:
    raise UserError(f'{folder} holds no image files ({", ".join(IMAGE_EXTENSIONS)}), and no '
                    'folders of them')
  read = (lambda paths: on_disk(paths, size, grayscale)) if lazy else (
      lambda paths: read_images(paths, size))
  if files:
    images, note = read(files)
    return Split(images, None, note=note, files=tuple(files))
  empty = [e for e, found in class_files.items() if not found]
  if empty and class_names is None:  # another split may lack a class the train split has
    raise UserError(f'{os.path.join(folder, empty[0])}/ holds no images, beside class folders '
                    f'that do: fill it, or move it out of {folder}')
  class_names = class_names or subfolders
  unknown = [c for c in subfolders if c not in class_names]
  if unknown:
    raise UserError(f'{folder} has classes that the train split lacks: {", ".join(unknown)}')
  paths, labels = [], []
  for c in subfolders:
    paths += class_files[c]
    labels += [class_names.index(c)] * len(class_files[c])
  images, note = read(paths)
  return Split(images, np.array(labels, np.int32), tuple(class_names), note, tuple(paths))


def read_image_folder(data_config, wanted) -> dict[str, Split]:
  """path/ with images (flat or per class), or with train/, validation/, test/ subfolders."""
  root = folder_path(data_config, 'image files')
  have = [s for s in FOLDER_SPLITS if os.path.isdir(os.path.join(root, s))]
  size = data_config.image_size
  lazy = data_config.placement == 'disk' or (
      data_config.placement == 'auto' and not feeds.fits_in_host_memory(
          _decoded_bytes(root, size)))
  read = functools.partial(_read_image_folder, size=size, lazy=lazy,
                           grayscale=data_config.grayscale)
  if not have:
    splits = {'train': read(root)}
  elif 'train' not in have:
    raise UserError(f'{root} has {", ".join(have)}/ but no train/ folder')
  else:
    splits = {'train': read(os.path.join(root, 'train'))}
    names = splits['train'].label_names
    for s in have[1:]:
      splits[s] = read(os.path.join(root, s), class_names=names)
  return choose(splits, wanted, root)


def _decoded_bytes(root: str, size) -> int:
  """About how much memory the folder's images take decoded: their number, times the first
  one's size (or `size` x `size`) in colour."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  paths = image_files(root)
  if not paths:
    return 0  # _read_image_folder says what is wrong
  if size:
    width = height = size
  else:
    try:
      with Image.open(paths[0]) as image:
        width, height = image.size
    except _unreadable():
      return 0  # as above: the reader names the file
  return len(paths) * width * height * 3
