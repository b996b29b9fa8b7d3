"""Evaluation: per-example losses and PSNR, and the compiled loop that sums them over a split.

Training validates with it every epoch; eval.sh, tsne.sh and the study use it on trained runs.
"""

import functools

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np

from ae_jax import input_pipeline
from ae_jax import models


# --- losses and metrics -------------------------------------------------------------------

def to_float(images):
  return images.astype(jnp.float32) / 255.0


def _pixel_mean(x):
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def per_example_mse(reconstruction, target):
  return _pixel_mean((reconstruction - target) ** 2)


def per_example_bce(reconstruction, target):
  r = jnp.clip(reconstruction, 1e-7, 1 - 1e-7)  # PyTorch's BCELoss clamps its logs likewise
  return -_pixel_mean(target * jnp.log(r) + (1 - target) * jnp.log1p(-r))


def per_example_psnr(reconstruction, target):
  """In dB, for images in [0, 1]."""
  return -10.0 * jnp.log10(jnp.maximum(per_example_mse(reconstruction, target), 1e-10))


LOSSES = {'mse': per_example_mse, 'bce': per_example_bce}
# The noise of every evaluation, validation included: the same draw every time, so that
# eval.sh on the validation split of a denoising model prints the validation loss training logged.
EVAL_NOISE_SEED = 0
METRICS = {**LOSSES, 'psnr': per_example_psnr}


def add_noise(key, images, mean: float, std: float, axis_name=None):
  noise = models.draw_for_global_batch(key, jax.random.normal, images.shape, axis_name)
  return images + mean + std * noise


# --- evaluation ---------------------------------------------------------------------------

def eval_step(variables, images, mask, noise_rng, *, model, noise_mean, noise_std,
              metrics=tuple(METRICS)):
  """Sums of the per-example `metrics` over the examples where `mask` is true, and their count."""
  target = to_float(images)
  inputs = target if noise_rng is None else add_noise(noise_rng, target, noise_mean, noise_std)
  reconstruction, _ = model.apply(variables, inputs, train=False)
  sums = {name: jnp.sum(jnp.where(mask, METRICS[name](reconstruction, target), 0.0))
          for name in metrics}
  return {**sums, 'count': jnp.sum(mask)}


def eval_loop(variables, images, indices, mask, first_batch, noise_rng, *, step_fn,
              batch_sharding=None):
  """Metric sums over the batches images[indices[i]] (masked where padded). Batch i draws its
  noise from fold_in(noise_rng, first_batch + i), whichever call it is evaluated in."""
  def body(i, sums):
    batch = images[indices[i]]
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    rng = None if noise_rng is None else jax.random.fold_in(noise_rng, first_batch + i)
    return jax.tree.map(jnp.add, sums, step_fn(variables, batch, mask[i], rng))

  zeros = jax.eval_shape(step_fn, variables, images[indices[0]], mask[0], noise_rng)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
  return jax.lax.fori_loop(0, indices.shape[0], body, zeros)


def make_eval_fn(model, config, mesh, metrics=tuple(METRICS)):
  return jax.jit(functools.partial(
      eval_loop,
      step_fn=functools.partial(eval_step, model=model, noise_mean=config.noise.mean,
                                noise_std=config.noise.std, metrics=metrics),
      batch_sharding=NamedSharding(mesh, P('data'))),
      compiler_options=models.compiler_options(model))


def padded_batches(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices (num_batches, batch_size) covering every example once, and the mask of real ones.

  The last batch is padded (with example 0) rather than dropped, so every example counts.
  """
  num_batches = -(-num_examples // batch_size)
  indices = np.arange(num_batches * batch_size, dtype=np.int32)
  mask = indices < num_examples
  return np.where(mask, indices, 0).reshape(num_batches, batch_size), mask.reshape(
      num_batches, batch_size)


# The matmul CAE (cpu_convs.py) evaluates as fast in batches of 64 as in larger ones (on 2 CPU
# cores 64, 128 and 256 images a batch ran at 976, 959 and 914 images/s), and its temporaries
# then take 1/16 of the memory that a batch of 1,000 takes (800 MB for its largest, the
# Winograd products of the second convolution: 4 times its 28x28x64 output; the third and fourth
# compute only the pixels they keep).
# Accelerators evaluate larger batches best, so the cap applies to the CPU formulation only.
MATMUL_CAE_EVAL_BATCH = 64


def eval_batch_size(config, num_examples: int, num_devices: int) -> int:
  """config.eval_batch_size (at most MATMUL_CAE_EVAL_BATCH for the matmul CAE), no larger than
  the split needs, a multiple of the device count."""
  size = min(config.eval_batch_size, num_examples)
  if config.model.name == 'CAE' and models.conv_kind(config.model) == 'matmul':
    size = min(size, MATMUL_CAE_EVAL_BATCH)
  return -(-size // num_devices) * num_devices


# A call over streamed data holds about this many bytes of images (two calls are in flight): a
# run that reads from disk holds a few calls' worth of batches, not the dataset.
STREAMED_CALL_BYTES = 16 << 20


def streamed_batches_per_call(config, batch_size: int, example_bytes: int) -> int:
  """How many batches of streamed examples one call takes: config.steps_per_call, fewer where
  that many would take more than STREAMED_CALL_BYTES."""
  return max(1, min(config.steps_per_call, STREAMED_CALL_BYTES // (batch_size * example_bytes)))


def evaluate_split(eval_fn, variables, feed, num_examples, config, mesh, *,
                   streamed_bytes: int = 0, noise_rng=None) -> dict[str, float]:
  """Mean metrics over every example of a split that `feed` serves: all its batches in one call
  where the images are on the devices; where they are streamed (from host memory or disk; an
  example `streamed_bytes` large), streamed_batches_per_call a call."""
  batch_size = eval_batch_size(config, num_examples, mesh.size)
  rows, mask = padded_batches(num_examples, batch_size)
  per_call = len(rows)
  if streamed_bytes:
    per_call = min(streamed_batches_per_call(config, batch_size, streamed_bytes), len(rows))
  mask_sharding = NamedSharding(mesh, P(None, 'data'))
  sums = None
  for first in range(0, len(rows), per_call):
    call_rows = np.full((per_call, batch_size), -1, np.int32)  # -1: batches past the split
    call_mask = np.zeros((per_call, batch_size), bool)
    call_rows[:len(rows) - first] = rows[first:first + per_call]
    call_mask[:len(rows) - first] = mask[first:first + per_call]
    images, indices = feed(call_rows)
    result = eval_fn(variables, images, indices, input_pipeline.to_device(call_mask, mask_sharding),
                     first, noise_rng)
    sums = result if sums is None else jax.tree.map(jnp.add, sums, result)
  sums = jax.device_get(sums)
  return {name: float(value / sums['count']) for name, value in sums.items() if name != 'count'}
