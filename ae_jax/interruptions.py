"""Interruptions: SIGINT and SIGTERM answered by training's loop, between compiled calls, and
every process of a run agreeing on when to stop."""

import contextlib
import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils
import numpy as np


class Interrupted(Exception):
  """Training stopped on SIGINT or SIGTERM after saving a checkpoint; args: (signum, message)."""


@contextlib.contextmanager
def signals_caught():
  """Within: SIGINT and SIGTERM only append to the yielded list, for the loop to act on."""
  received = []
  if threading.current_thread() is not threading.main_thread():
    yield received  # signal handlers can only be set from the main thread
    return
  with _handled(received.append):
    yield received
  _pass_on(received)


@contextlib.contextmanager
def signals_deferred():
  """Within: SIGINT and SIGTERM wait, so that a run finishes saving and closing its checkpoints
  whatever arrives meanwhile (signals_caught answers them within the loop)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  with _handled(received.append):
    yield
  _pass_on(received)


@contextlib.contextmanager
def _handled(record):
  handler = lambda signum, frame: record(signum)
  previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def _pass_on(received: list) -> None:
  """Raises again, to the handler outside, a signal that came after the block could act on it
  (during a run's last checkpoint, say): a study stops before its next member rather than
  forgetting a Ctrl-C. Not reached where an exception (Interrupted) is on its way out."""
  if not received:
    return
  signum = received[0]
  if signal.getsignal(signum) == signal.SIG_DFL:  # SIGTERM's: the process ends without a word
    print(f'{signal.Signals(signum).name}: stopped after the run finished saving: run the '
          'command again to go on', file=sys.stderr, flush=True)
  signal.raise_signal(signum)


def agree(num_steps: int, stop: bool) -> tuple[int, bool]:
  """What every process does next: all must run the same steps and stop together, or their
  collectives would wait for each other forever."""
  if jax.process_count() == 1:
    return num_steps, stop
  both = multihost_utils.process_allgather(np.array([num_steps, stop], np.int64))
  return int(both[:, 0].min()), bool(both[:, 1].any())
