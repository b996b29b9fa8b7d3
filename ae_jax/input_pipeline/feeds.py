"""Where the data lives and how batches reach the devices: from a copy of the split on every
device, or gathered in host memory (or read from disk) and sent over, a call at a time."""

import os

import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from ae_jax.input_pipeline.disk import OnDisk


# A compiled loop takes (images, indices) and reads batch i as images[indices[i]]. A feed turns
# the rows of a few batches, (num_batches, batch_size) indices into a split, into those two
# arrays: a copy of the split on every device and the rows, or the batches themselves gathered
# in host memory and sent over, with indices 0, 1, ... Either way every device reads its own
# part of every batch locally.

def to_device(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array with `sharding` from a host array that every process can index in full.

  Each process reads only the parts that its own devices hold.
  """
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def host_memory() -> int:
  """The bytes of memory this host has."""
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


# Data goes where it takes at most this share of the memory: the rest is the model's, the
# optimizer's, XLA's temporaries' and the other processes'.
MEMORY_SHARE = 4


def fits_in_host_memory(num_bytes: int) -> bool:
  """Whether `num_bytes` of data can be read into host memory (else it stays on disk)."""
  return num_bytes <= host_memory() // MEMORY_SHARE


def fits_on_device(num_bytes: int, device) -> bool:
  """Whether `num_bytes` of data can live on each device and leave room for training."""
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and 'bytes_limit' in stats:
    free = stats['bytes_limit'] - stats.get('bytes_in_use', 0)
  else:  # a CPU: its memory is the host's
    free = host_memory()
  return num_bytes <= free // MEMORY_SHARE


def device_feed(images: np.ndarray, mesh):
  """Keeps `images` on every device; a call sends only the indices of its batches."""
  on_device = to_device(images, NamedSharding(mesh, P()))
  index_sharding = NamedSharding(mesh, P(None, 'data'))
  return lambda rows: (on_device, to_device(rows, index_sharding))


def host_feed(images: np.ndarray, mesh):
  """Gathers each call's batches in host memory (or reads them from disk) and sends them over,
  device by device. Rows of -1 are batches the call will not run: nothing is read for them.

  The gathered images are laid out (num_batches, batch_size, ...) with the batch axis sharded:
  device d holds its slice of every batch, so that batch i, images[i] (the indices are
  0, 1, ...), is a slice along an axis that no device splits, read without communication, and
  each process gathers only the images of its own devices. (A flat array indexed by a gather
  cannot say that each device reads its own rows: XLA then sends every device the whole batch,
  or the whole call, every step.)
  """
  data_sharding = NamedSharding(mesh, P(None, 'data'))
  replicated = NamedSharding(mesh, P())

  def feed(rows):
    def gather(index):  # this device's part; rows of -1 (steps a short call skips) stay zero
      wanted = rows[index[:2]]
      part = np.zeros((*wanted.shape, *images.shape[1:]), images.dtype)
      real = wanted >= 0
      if real.any():
        part[real] = images[wanted[real]]
      return part

    gathered = jax.make_array_from_callback((*rows.shape, *images.shape[1:]), data_sharding,
                                            gather)
    return gathered, to_device(np.arange(len(rows), dtype=np.int32), replicated)

  return feed


def choose_feed(data_config, images, other_bytes: int = 0) -> str:
  """'device', 'host' or 'disk': where the training data lives (config.data.placement; 'auto':
  disk where the source left it there, else the devices where it fits, else host memory)."""
  if isinstance(images, OnDisk):
    return 'disk'
  if data_config.placement not in ('auto', 'disk'):
    return data_config.placement
  num_bytes = images.nbytes + other_bytes  # (the validation split goes where training's goes)
  return 'device' if fits_on_device(num_bytes, jax.local_devices()[0]) else 'host'


PLACEMENTS = ('device', 'host', 'disk')  # nearest the devices first


def agree_placement(placement: str, images) -> str:
  """Where the data goes in every process: the devices only where every process chose them
  (their compiled programs differ), else streamed, from disk where this process left it there."""
  if jax.process_count() == 1:
    return placement
  chosen = multihost_utils.process_allgather(np.array(PLACEMENTS.index(placement), np.int32))
  if int(np.max(chosen)) == 0:
    return 'device'
  return 'disk' if isinstance(images, OnDisk) else 'host'


def make_feed(images, mesh, placement):
  """Batches from a copy on the devices, or gathered on the host (from memory or disk)."""
  feed = device_feed if placement == 'device' else host_feed
  return feed(images, mesh)
