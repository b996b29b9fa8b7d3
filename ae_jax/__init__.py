"""ae_jax: autoencoders (AE, CAE, their denoising variants and VAEs) in JAX and Flax.

Importing the package changes nothing in the process: what a command does to its process
(huge pages, the garbage collector's pause) happens in ae_jax.launch, which commands call.
"""

import contextlib
import os


class UserError(Exception):
  """A problem the user can fix; the message names it and the fix. main prints it as one line."""


class WriteError(UserError):
  """A write that failed (cannot_write); training adds where the same command resumes."""


def cannot_write(error: OSError, what: str, path: str | None = None,
                 flag: str = '--workdir') -> WriteError:
  """A failed write (permission, read-only filesystem, full disk, quota) as a UserError that
  names the path, the reason and the fix. `path`: what was being written, named where the error
  names no file (a flush or a reservation of space names none); `flag`: the command's option
  that chooses where it writes (--workdir, --out_dir, --output)."""
  import errno  # pylint: disable=g-import-not-at-top
  fixes = {
      errno.ENOSPC: f'free some space on that disk, or choose another {flag}',
      errno.EDQUOT: f'free some of your disk quota, or choose another {flag}',
      errno.EROFS: f'that filesystem is read-only: choose another {flag}',
      errno.EACCES: f'make it writable (chmod, chattr -i), or choose another {flag}',
      errno.EPERM: f'make it writable (chmod, chattr -i), or choose another {flag}',
  }
  path = error.filename or path
  path = f' {path}' if path else ''
  reason = error.strerror or str(error)
  fix = fixes.get(error.errno, f'check that disk, or choose another {flag}')
  return WriteError(f'cannot write {what}{path}: {reason}; {fix}')


def exception_chain(error: BaseException | None):
  """`error` and the exceptions it was raised from or during, in turn (orbax re-raises and
  wraps what its threads raise)."""
  seen = set()
  while error is not None and id(error) not in seen:
    yield error
    seen.add(id(error))
    error = error.__cause__ or error.__context__


def find_os_error(error: BaseException) -> OSError | None:
  """The OSError that `error` is or was raised from, if any."""
  return next((e for e in exception_chain(error) if isinstance(e, OSError)), None)


@contextlib.contextmanager
def replaced_atomically(path: str):
  """Yields a temporary path to write; on success it replaces `path` at once, so that no reader
  and no crash sees half a file; on failure it is removed (a full disk leaves nothing behind)."""
  tmp = path + '.tmp' + os.path.splitext(path)[1]
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if isinstance(e, OSError) and e.filename == tmp:  # name the file the user knows
      e.filename, e.filename2 = path, None
    raise


def read_npz(path: str) -> dict:
  """Every array of the .npz file `path`, read whole. A file that is no whole .npz (cut short by
  a full disk, or another file under its name) raises ValueError, with the reason; a file that
  cannot be read, OSError."""
  import zipfile  # pylint: disable=g-import-not-at-top
  import zlib  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  try:
    with open(path, 'rb') as f:
      if f.read(4) != b'PK\x03\x04':  # np.load would read anything else as a .npy or a pickle
        raise ValueError('not a .npz file')
    with np.load(path) as npz:
      return dict(npz)
  except (EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise ValueError(f'{type(e).__name__}: {e}') from None


def _reserve(path: str, offset: int) -> None:
  """Gives the file `path` its disk blocks from `offset` on: where the disk is full, this raises
  the OSError, and not a memory map's write, whose SIGBUS would kill the interpreter. Where the
  filesystem reserves nothing (posix_fallocate unsupported), zeros are written instead."""
  import errno  # pylint: disable=g-import-not-at-top
  fd = os.open(path, os.O_WRONLY)
  try:
    size = os.fstat(fd).st_size
    try:
      os.posix_fallocate(fd, 0, size)
      return
    except OSError as e:
      if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
        raise
    zeros = bytes(1 << 20)
    for start in range(offset, size, len(zeros)):
      end = min(start + len(zeros), size)
      while start < end:  # os.pwrite may write less than it is given
        start += os.pwrite(fd, zeros[:end - start], start)
    os.fsync(fd)  # where the filesystem reports a full disk only now (NFS)
  finally:
    os.close(fd)


def npy_writer(path: str, shape, dtype, name: str | None = None):
  """A .npy file filled row by row (a memory map: rows written leave the process's memory);
  `name`: the file that `path` becomes, named where it cannot be written. Its whole size is
  reserved on disk first (_reserve)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  try:
    array = np.lib.format.open_memmap(path, mode='w+', dtype=dtype, shape=shape)
    try:
      _reserve(path, array.offset)
    except OSError as e:
      raise OSError(e.errno, e.strerror, name or path) from None
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(path)
    raise
  return array
