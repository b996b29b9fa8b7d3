"""ae_jax: autoencoders (AE, CAE and their denoising variants) in JAX and Flax."""

import contextlib
import gc
import os
import platform
import sys

# glibc's malloc backs its large blocks with transparent huge pages when this tunable is set at
# start-up. XLA's CPU programs take fresh memory for their large temporaries every step: the CAE
# made ~240,000 page faults a step without it, 20x fewer with it, and a step took 1.14 s instead
# of 0.96 s. A tunable can only be set before the process starts, so an ae_jax command
# (python -m ae_jax.main, .evaluate, .tsne, .study) starts itself again with it, before it
# imports anything else. AE_JAX_HUGE_PAGES=0 turns this off.
HUGE_PAGES = 'glibc.malloc.hugetlb=1'


def _ae_jax_command() -> bool:
  """Whether this process is `python -m ae_jax.<module>`, still importing its package."""
  module = sys.orig_argv[2] if sys.orig_argv[1:2] == ['-m'] and len(sys.orig_argv) > 2 else ''
  return sys.argv[:1] == ['-m'] and module.startswith('ae_jax.')


def huge_pages_environ(environ=os.environ) -> dict | None:
  """`environ` with HUGE_PAGES added to GLIBC_TUNABLES, or None where it has it already, is
  turned off (AE_JAX_HUGE_PAGES=0) or cannot have it (not Linux, not glibc >= 2.35)."""
  tunables = environ.get('GLIBC_TUNABLES', '')
  if ('glibc.malloc.hugetlb' in tunables or environ.get('AE_JAX_HUGE_PAGES') == '0'
      or sys.platform != 'linux'):
    return None
  libc, version = platform.libc_ver()
  try:
    new_enough = libc == 'glibc' and tuple(map(int, version.split('.')[:2])) >= (2, 35)
  except ValueError:
    new_enough = False
  if not new_enough:
    return None
  return {**environ, 'GLIBC_TUNABLES': f'{tunables}:{HUGE_PAGES}' if tunables else HUGE_PAGES}


def _restart_with_huge_pages() -> None:
  environ = huge_pages_environ() if _ae_jax_command() else None
  if environ is not None:
    os.environ['GLIBC_TUNABLES'] = environ['GLIBC_TUNABLES']
    os.execv(sys.executable, sys.orig_argv)


def _check_installed() -> None:
  """An ae_jax command run by a Python without ae_jax's dependencies (the virtual environment
  not activated, say): one line that says so, not an ImportError."""
  if not _ae_jax_command():
    return
  import importlib.util  # pylint: disable=g-import-not-at-top
  missing = [name for name in ('absl', 'jax', 'flax', 'orbax', 'ml_collections')
             if importlib.util.find_spec(name) is None]
  if missing:
    print(f'error: {sys.executable} lacks {", ".join(missing)}: activate the virtual environment '
          "that has ae_jax (. .venv/bin/activate), or install it: pip install -e '.[test]'",
          file=sys.stderr)
    sys.exit(1)


# An ae_jax command's start-up makes a few hundred thousand objects that live on (the imports,
# then the traced model) and little garbage, yet each full pass of Python's cyclic garbage
# collector walks all of them: such passes took about 0.5 s of the CAE's 3.7-4.5 s to its
# first training step with its programs in the compilation cache (2 cores). A command starts
# with the collector off; start_up_done() turns it on again once the command has compiled its
# programs, and leaves what start-up made out of its passes from then on (gc.freeze).
_gc_paused = False


def pause_gc() -> None:
  """Turns the cyclic garbage collector off until start_up_done()."""
  global _gc_paused
  if gc.isenabled():
    gc.disable()
    _gc_paused = True


def start_up_done() -> None:
  """Turns the collector on again where pause_gc() turned it off, with every object made so far
  frozen out of its passes."""
  global _gc_paused
  if _gc_paused:
    gc.freeze()
    gc.enable()
    _gc_paused = False


_check_installed()
_restart_with_huge_pages()
if _ae_jax_command():
  pause_gc()


class UserError(Exception):
  """A problem the user can fix; the message names it and the fix. main prints it as one line."""


class WriteError(UserError):
  """A write that failed (cannot_write); training adds where the same command resumes."""


def cannot_write(error: OSError, what: str) -> WriteError:
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
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
