"""A split that stays on disk (config.data.placement = 'disk'): the rows of a .npy file (here)
or image files (sources/folder.py), read only when a batch asks for them.

numpy's view of a memory-mapped file does the reading; after each gather the process tells the
kernel that it no longer needs those pages (madvise DONTNEED), so that it holds a call's batches
and not the dataset: mapped pages that were read count in a process's resident memory until
then. The kernel's page cache may keep them, outside the process, for the next epoch.
"""

import mmap
import os

import numpy as np

from ae_jax import UserError
from ae_jax.input_pipeline.splits import check_not_empty


class OnDisk:
  """A split left on disk: `shape`, `dtype`, `nbytes` and len() like an array's; x[rows] (an
  index array or a slice) reads those examples into memory; x.subset(rows) stays on disk."""
  shape: tuple
  where: str  # the file or folder, for messages


class Rows(OnDisk):
  """Rows `indices` of the (N, H, W[, C]) uint8 array in a .npy file, as (len, H, W, C)."""

  def __init__(self, path: str, indices: np.ndarray | None = None, _mapped=None):
    if _mapped is None:
      _mapped = _map(path)
    self.path = self.where = path
    self._mm, self._array = _mapped
    self.indices = np.arange(len(self._array)) if indices is None else indices
    self.shape = (len(self.indices), *self._array.shape[1:])
    self.dtype = self._array.dtype
    self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize

  def __len__(self) -> int:
    return len(self.indices)

  def subset(self, indices) -> 'Rows':
    """Rows `indices` of these rows, still on disk."""
    return Rows(self.path, self.indices[indices], (self._mm, self._array))

  def __getitem__(self, key) -> np.ndarray:
    """The rows `key` (an index array or a slice) read into memory."""
    rows = self.indices[key]
    self._will_need(np.atleast_1d(rows))
    out = self._array[rows]  # a copy: numpy reads the rows from the mapped file
    self._mm.madvise(mmap.MADV_DONTNEED)
    return out

  def _will_need(self, rows: np.ndarray) -> None:
    """Asks the kernel for all of `rows` at once, in file order. Reading them one page fault
    at a time waits for the disk once per page: with the file out of the page cache, an epoch
    ran at 0.52x of host memory's speed that way."""
    row_bytes = int(np.prod(self._array.shape[1:]))
    offset = self._array.ctypes.data - _address(self._mm)
    page = mmap.PAGESIZE
    for row in np.unique(rows):
      start = offset + int(row) * row_bytes
      aligned = start - start % page
      self._mm.madvise(mmap.MADV_WILLNEED, aligned, start + row_bytes - aligned)


def _address(mm: mmap.mmap) -> int:
  """Where `mm` starts in memory."""
  return np.frombuffer(mm, np.uint8, 1).ctypes.data


def _map(path: str):
  """(the mmap, a (N, H, W, C) uint8 array over it) of a .npy file, reading only its header."""
  try:
    with open(path, 'rb') as f:
      version = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                     np.lib.format.read_array_header_2_0)
      shape, fortran_order, dtype = read_header(f)
      offset = f.tell()
      mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
      # batches read rows in random order: no read-ahead, no pages mapped around the ones read
      mm.madvise(mmap.MADV_RANDOM)
  except (OSError, ValueError) as e:
    raise UserError(f'cannot read {path} as a NumPy .npy file: {e}') from None
  if dtype != np.uint8 or fortran_order or len(shape) not in (3, 4):
    raise UserError(
        f'{path} holds {dtype} of shape {shape}: config.data.placement=disk reads uint8 images '
        '(N, H, W) or (N, H, W, C), stored in C order. Convert it once, e.g. np.save(path, '
        'np.round(images * 255).astype(np.uint8)) for floats in [0, 1], or '
        'images.astype(np.uint8) * 255 for booleans')
  check_not_empty(shape[0], path, shape)
  if len(shape) == 3:
    shape = (*shape, 1)
  if shape[-1] not in (1, 3):
    raise UserError(f'{path} has shape {shape}: images must have 1 or 3 channels')
  if os.path.getsize(path) < offset + int(np.prod(shape)):
    raise UserError(f'{path} is truncated: its header promises shape {shape}')
  array = np.frombuffer(mm, np.uint8, int(np.prod(shape)), offset).reshape(shape)
  return mm, array
