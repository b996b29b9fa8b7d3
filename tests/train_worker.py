"""python -m ae_jax.main, with the hooks the interruption tests need to kill it where they want.

  MARKER=path        after each training call, append "step N" to `path`
  STEP_DELAY=s       then sleep s seconds, so that a test can act between calls
  PAUSE_IN_SAVE=n    stop the n-th checkpoint (step folder) after its files are written and before
                     orbax commits it by renaming its temporary folder; append "paused" to MARKER
  READ_LOG=path      append a line "SPLIT_SIZE INDEX ..." for every read of image files from disk
"""

import asyncio
import os
import time

import numpy as np

from orbax.checkpoint._src.path import atomicity

from ae_jax import cli
from ae_jax import main
from ae_jax import metric_writers


def _mark(line: str) -> None:
  with open(os.environ['MARKER'], 'a') as f:
    f.write(line + '\n')


original_numbers = metric_writers.RunLog.train_numbers


def train_numbers(self, first_step, numbers):
  original_numbers(self, first_step, numbers)
  _mark(f'step {first_step + len(numbers["loss"]) - 1}')
  time.sleep(float(os.environ.get('STEP_DELAY', '0')))


original_finalize = atomicity.AtomicRenameTemporaryPath.finalize
saves = 0


async def finalize(self):
  global saves
  if not self.get_final().name.isdigit():  # an item inside a checkpoint, not the step folder
    return await original_finalize(self)
  saves += 1
  if saves == int(os.environ.get('PAUSE_IN_SAVE', '0')):
    _mark('paused')
    await asyncio.sleep(3600)
  return await original_finalize(self)


def log_reads():
  from ae_jax.input_pipeline.sources import folder  # pylint: disable=g-import-not-at-top
  original = folder.Files.__getitem__

  def getitem(self, key):
    with open(os.environ['READ_LOG'], 'a') as f:
      f.write(' '.join(map(str, [len(self), *np.atleast_1d(self.indices[key])])) + '\n')
    return original(self, key)
  folder.Files.__getitem__ = getitem


if __name__ == '__main__':
  if 'READ_LOG' in os.environ:
    log_reads()
  if 'MARKER' in os.environ:
    metric_writers.RunLog.train_numbers = train_numbers
  atomicity.AtomicRenameTemporaryPath.finalize = finalize
  cli.run(main.main)
