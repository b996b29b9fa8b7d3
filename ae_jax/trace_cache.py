"""Traced programs kept across processes, beside JAX's compilation cache.

JAX's persistent compilation cache spares a second start the XLA compile, but not the tracing
and lowering that make the program it looks up: for the CAE about a third of a second start's
time. jit_compile
keeps the traced program (jax.export's serialized StableHLO) under a key made of everything
that decides it: the name and context (the config) its caller gives, the structure, shapes,
dtypes and shardings of the arguments, the source of every ae_jax module, the versions of the
libraries that trace (jax, jaxlib, flax, optax, numpy), JAX's configuration and the devices. A
later process with the same key calls the stored program instead of tracing the function again;
XLA compiles it, or reads it from the compilation cache, as before. Both processes compile the
same stored program, so they compute the same numbers, bit for bit. Without a folder the
program is exported and compiled all the same, only not stored: XLA may round a plain jit of
the function differently (JAX 0.12's did, 4e-5 apart after an epoch of the DAE), and a run
computes the same numbers with the cache or without it.

The programs live in `traces/` in the compilation cache's folder (cli.use_compilation_cache sets
FOLDER) and go with it: --compilation_cache= turns both off. A file that cannot be read
(damaged, written by other versions) is traced again and replaced; one that cannot be written
is skipped. Across processes (jax.distributed) every process traces, as without a cache.
The files are unpickled: like the compiled programs beside them, they are trusted, so the folder
must be the user's own.
"""

import functools
import hashlib
import os
import pickle
import platform
import sys
from typing import Any, Callable

import flax
import jax
import jaxlib
import numpy as np
import optax

from ae_jax import replaced_atomically

FOLDER: str | None = None  # where the traced programs live; None: trace every time

# What jit_compile did in this process: programs 'read' from FOLDER, or 'traced' (and written).
COUNTS = {'read': 0, 'traced': 0}


@functools.cache
def environment() -> str:
  """What, besides a function's arguments and its caller's context, decides its program."""
  package = os.path.dirname(os.path.abspath(__file__))
  sources = hashlib.sha256()
  for folder, subfolders, files in sorted(os.walk(package)):
    subfolders.sort()
    for name in sorted(f for f in files if f.endswith('.py')):
      path = os.path.join(folder, name)
      sources.update(os.path.relpath(path, package).encode())
      with open(path, 'rb') as f:
        sources.update(f.read())
  return repr((sources.hexdigest(), jax.__version__, jaxlib.__version__, flax.__version__,
               optax.__version__, np.__version__, sys.version, platform.machine(),
               sorted(jax.config.values.items()),
               [(d.id, d.platform, d.device_kind, d.process_index) for d in jax.devices()]))


def jit_compile(fun: Callable, args: tuple, *, name: str, context: str = '',
                donate_argnums: tuple[int, ...] = (), **jit_kwargs) -> Callable[..., Any]:
  """jax.jit(fun, donate_argnums=..., **jit_kwargs).lower(*args).compile(), with `fun`'s traced
  program read from FOLDER where a process with the same key left it.

  `context`: what `fun` closes over that changes its program (the config, as JSON). The result
  takes arguments of the structure, shapes and shardings of `args`, as a compiled jit does.
  """
  trace_here = lambda: jax.jit(fun, donate_argnums=donate_argnums,
                               **jit_kwargs).lower(*args).compile()
  if jax.process_count() > 1:
    return trace_here()
  leaves, in_tree = jax.tree.flatten(args)
  stored = path = None
  if FOLDER is not None:
    signature = [(str(jax.typeof(x)), repr(getattr(x, 'sharding', None))) for x in leaves]
    key = hashlib.sha256(repr((name, context, str(in_tree), signature,
                               environment())).encode()).hexdigest()
    path = os.path.join(FOLDER, f'{name}-{key}')
    stored = _read(path)
  if stored is not None:
    COUNTS['read'] += 1
    exported, out_tree = stored
  else:
    out_trees = []

    def flat_fun(*flat_args):
      out_leaves, out_tree = jax.tree.flatten(fun(*jax.tree.unflatten(in_tree, flat_args)))
      out_trees.append(out_tree)
      return out_leaves

    try:
      exported = jax.export.export(jax.jit(flat_fun))(*leaves)
    except Exception:  # pylint: disable=broad-except
      # What jax.export does not take (a host callback, say) is traced as usual, which also
      # raises again any error of the function itself.
      return trace_here()
    out_tree = out_trees[0]
    if path is not None:
      COUNTS['traced'] += 1
      _write(path, exported, out_tree)

  offsets = np.cumsum([0] + [len(jax.tree.leaves(a)) for a in args])
  donated = tuple(i for a in donate_argnums for i in range(offsets[a], offsets[a + 1]))
  compiled = jax.jit(exported.call, donate_argnums=donated, **jit_kwargs).lower(*leaves).compile()

  def call(*call_args):
    return jax.tree.unflatten(out_tree, compiled(*jax.tree.leaves(call_args)))
  return call


def _read(path: str):
  """(the jax.export.Exported, the structure of its outputs) stored at `path`, or None."""
  try:
    with open(path, 'rb') as f:
      serialized, out_tree = pickle.load(f)
    return jax.export.deserialize(serialized), out_tree
  except Exception:  # pylint: disable=broad-except
    return None  # absent, damaged, or written by other versions: traced again and replaced


def _write(path: str, exported, out_tree) -> None:
  try:
    os.makedirs(FOLDER, exist_ok=True)
    with replaced_atomically(path) as tmp, open(tmp, 'wb') as f:
      pickle.dump((exported.serialize(), out_tree), f)
  except (OSError, ImportError, pickle.PicklingError, TypeError, AttributeError):
    # a full disk, no flatbuffers for jax.export to serialize with, or an output that pickle
    # cannot name: the next start traces again
    pass
