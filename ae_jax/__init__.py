"""ae_jax: autoencoders (AE, CAE and their denoising variants) in JAX and Flax."""


class UserError(Exception):
  """A problem the user can fix; the message names it and the fix. main prints it as one line."""


def cannot_write(error: OSError, what: str) -> UserError:
  """A failed write (permission, read-only filesystem, full disk, quota) as a UserError that
  names the path, the reason and the fix."""
  import errno  # pylint: disable=g-import-not-at-top
  fixes = {
      errno.ENOSPC: 'free some space on that disk, or choose another --workdir',
      errno.EDQUOT: 'free some of your disk quota, or choose another --workdir',
      errno.EROFS: 'that filesystem is read-only: choose another --workdir',
      errno.EACCES: 'make it writable (chmod, chattr -i), or choose another --workdir',
      errno.EPERM: 'make it writable (chmod, chattr -i), or choose another --workdir',
  }
  path = f' {error.filename}' if error.filename else ''
  reason = error.strerror or str(error)
  fix = fixes.get(error.errno, 'check that disk, or choose another --workdir')
  return UserError(f'cannot write {what}{path}: {reason}; {fix}')


def find_os_error(error: BaseException) -> OSError | None:
  """The OSError that `error` is or was raised from, if any (orbax re-raises and wraps)."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, OSError):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None
