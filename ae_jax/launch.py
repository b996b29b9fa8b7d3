"""What an ae_jax command does to its own process, before it imports JAX: the launcher.

Every command module (ae_jax.main, .evaluate, .tsne, .study, ...) calls start() first thing,
under `if __name__ == '__main__'`, so that importing ae_jax as a library changes nothing in the
process. Only the standard library is imported here: start() runs before everything else.
"""

import gc
import os
import platform
import signal
import sys

# glibc's malloc backs its large blocks with transparent huge pages when this tunable is set at
# start-up. XLA's CPU programs take fresh memory for their large temporaries every step; with
# huge pages the CAE makes about 20x fewer page faults a step. A tunable can only be set before
# the process starts, so a command starts itself again with it. AE_JAX_HUGE_PAGES=0 turns it off.
HUGE_PAGES = 'glibc.malloc.hugetlb=1'

# The packages without which no command runs, checked before anything imports them.
REQUIRED = ('absl', 'jax', 'flax', 'orbax', 'ml_collections')


def start() -> None:
  """Prepares this process for an ae_jax command: the dependencies checked, the interpreter
  started again with huge pages where it can have them, the garbage collector paused until
  start_up_done()."""
  check_installed()
  environ = huge_pages_environ()
  if environ is not None:
    os.environ['GLIBC_TUNABLES'] = environ['GLIBC_TUNABLES']
    os.execv(sys.executable, sys.orig_argv)
  pause_gc()
  # Ctrl-C during the imports (seconds, and nothing written yet) ends the process in one line,
  # not in a traceback from deep inside a library; cli.run gives SIGINT back to Python.
  signal.signal(signal.SIGINT, _stopped_starting)


def _stopped_starting(signum, unused_frame) -> None:
  print(f'{signal.Signals(signum).name}: stopped while starting, before anything was written',
        file=sys.stderr, flush=True)
  os._exit(128 + signum)  # pylint: disable=protected-access


def check_installed() -> None:
  """A command run by a Python without ae_jax's dependencies (the virtual environment not
  activated, say): one line that says so, not an ImportError."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
  if missing:
    print(f'error: {sys.executable} lacks {", ".join(missing)}: activate the virtual environment '
          "that has ae_jax (. .venv/bin/activate), or install it: pip install -e '.[test]'",
          file=sys.stderr)
    sys.exit(1)


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


# Start-up makes a few hundred thousand objects that live on (the imports, the traced model) and
# little garbage, yet each full pass of the cyclic garbage collector walks all of them: about
# 0.5 s of a CAE start. A command starts with the collector off; start_up_done() turns it on
# again once the command's programs are compiled, with start-up's objects frozen out of its
# passes (gc.freeze).
_gc_paused = False


def pause_gc() -> None:
  """Turns the cyclic garbage collector off until start_up_done()."""
  global _gc_paused
  if gc.isenabled():
    gc.disable()
    _gc_paused = True


def start_up_done() -> None:
  """Turns the collector on again where pause_gc() turned it off, with every object made so far
  frozen out of its passes; where nothing paused it (a library call), does nothing."""
  global _gc_paused
  if _gc_paused:
    gc.freeze()
    gc.enable()
    _gc_paused = False
