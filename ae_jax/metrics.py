"""Evaluation: the compiled loop that sums a model's per-example numbers over a split.

The numbers are the model's (models/: its objective's loss and parts, the MSE, BCE and PSNR of
its reconstructions). Training validates with this loop every epoch; eval.sh, the study and the
other commands use it on trained runs.
"""

import functools
import time

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np

from ae_jax import input_pipeline
from ae_jax import models
from ae_jax.models.layers import to_float


def add_noise(key, images, mean: float, std: float, axis_name=None):
  noise = models.draw_for_global_batch(key, jax.random.normal, images.shape, axis_name)
  return images + mean + std * noise


# The draws of figures (the noisy inputs shown, a VAE's samples from the prior): the same for
# every run, so that runs' figures compare.
FIGURE_SEED = 0


def eval_seed(config) -> int:
  """The seed of a run's evaluation draws (the noise and the latent samples of validation,
  eval.sh and the scripts): the run's seed, so that eval.sh on the validation split prints the
  numbers training logged, and a study's seeds average over draws as over initialisations
  (draws shared by every seed had put the VAE's test -ELBO 0.03 nats above its expectation,
  on average over 28 seeds). The compiled loops make the key from it: a key made eagerly
  compiles two more programs in every process."""
  return int(config.seed)


def eval_rngs(key) -> dict:
  """The rng streams of a model in evaluation (its latent samples), apart from the noise's key."""
  return {'latent': jax.random.fold_in(key, 1)}


# --- evaluation ---------------------------------------------------------------------------

def eval_step(variables, images, mask, rng, *, model, noise_mean, noise_std, noisy: bool,
              names=None):
  """Sums of the model's per-example numbers ('loss' and what its objective reports; only
  `names`, where given) over the examples where `mask` is true, and their count. `noisy`: the
  inputs get the training noise, drawn from `rng`; the targets are the clean images."""
  targets = to_float(images)
  inputs = add_noise(rng, targets, noise_mean, noise_std) if noisy else targets
  loss, numbers = model.apply(variables, inputs, targets, train=False, rngs=eval_rngs(rng),
                              method='objective')
  numbers = {'loss': loss, **numbers}
  if names is not None:
    numbers = {name: numbers[name] for name in names}
  sums = {name: jnp.sum(jnp.where(mask, value, 0.0)) for name, value in numbers.items()}
  return {**sums, 'count': jnp.sum(mask)}


def importance_weighted_step(variables, images, mask, rng, *, model, noise_mean, noise_std,
                             noisy: bool, num_samples: int):
  """The sum of Burda et al.'s estimate of -log p(x) with `num_samples` samples (models with a
  prior), over the examples where `mask` is true, and their count."""
  targets = to_float(images)
  inputs = add_noise(rng, targets, noise_mean, noise_std) if noisy else targets
  nll = models.importance_weighted_nll(model, variables, inputs, targets,
                                       eval_rngs(rng)['latent'], num_samples)
  return {'iw_nll': jnp.sum(jnp.where(mask, nll, 0.0)), 'count': jnp.sum(mask)}


def eval_loop(variables, images, indices, mask, first_batch, seed, *, step_fn,
              batch_sharding=None):
  """Metric sums over the batches images[indices[i]] (masked where padded). Batch i draws its
  noise and samples from fold_in(PRNGKey(seed), first_batch + i), whichever call it is
  evaluated in."""
  rng = jax.random.PRNGKey(seed)

  def body(i, sums):
    batch = images[indices[i]]
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    batch_rng = jax.random.fold_in(rng, first_batch + i)
    return jax.tree.map(jnp.add, sums, step_fn(variables, batch, mask[i], batch_rng))

  zeros = jax.eval_shape(step_fn, variables, images[indices[0]], mask[0], rng)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
  return jax.lax.fori_loop(0, indices.shape[0], body, zeros)


def make_eval_fn(model, config, mesh, *, noisy: bool = False, step=eval_step, **step_kwargs):
  """The compiled loop of `step` (eval_step, or importance_weighted_step) over batches."""
  return jax.jit(functools.partial(
      eval_loop,
      step_fn=functools.partial(step, model=model, noise_mean=config.noise.mean,
                                noise_std=config.noise.std, noisy=noisy, **step_kwargs),
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


def eval_batch_size(config, model, num_examples: int, num_devices: int) -> int:
  """config.eval_batch_size (at most what the model's layers are worth: models.eval_batch_size),
  no larger than the split needs, a multiple of the device count."""
  size = min(config.eval_batch_size, num_examples)
  if models.eval_batch_size(model):
    size = min(size, models.eval_batch_size(model))
  return -(-size // num_devices) * num_devices


# A call over streamed data holds about this many bytes of images (two calls are in flight): a
# run that reads from disk holds a few calls' worth of batches, not the dataset.
STREAMED_CALL_BYTES = 16 << 20


def streamed_batches_per_call(config, batch_size: int, example_bytes: int) -> int:
  """How many batches of streamed examples one call takes: config.steps_per_call, fewer where
  that many would take more than STREAMED_CALL_BYTES."""
  return max(1, min(config.steps_per_call, STREAMED_CALL_BYTES // (batch_size * example_bytes)))


def evaluate_split(eval_fn, variables, feed, num_examples, config, mesh, *, model,
                   streamed_bytes: int = 0, batch_size=None) -> dict[str, float]:
  """Mean metrics over every example of a split that `feed` serves: all its batches in one call
  where the images are on the devices; where they are streamed (from host memory or disk; an
  example `streamed_bytes` large), streamed_batches_per_call a call. The noise and samples
  are drawn from eval_seed(config)."""
  seed = eval_seed(config)
  batch_size = batch_size or eval_batch_size(config, model, num_examples, mesh.size)
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
                     first, seed)
    sums = result if sums is None else jax.tree.map(jnp.add, sums, result)
  sums = jax.device_get(sums)
  return {name: float(value / sums['count']) for name, value in sums.items() if name != 'count'}


# --- per-example outputs ------------------------------------------------------------------

def latent_step(variables, images, rng, *, model, variance: bool = False):
  """A batch's latents (a VAE's posterior means), flattened, and with `variance` a VAE's
  posterior variances."""
  del rng
  inputs = to_float(images)
  if variance:
    mean, logvar = model.apply(variables, inputs, method='encode')
    return {'latent': mean.reshape(len(images), -1), 'variance': jnp.exp(logvar)}
  return {'latent': model.apply(variables, inputs, method='embed').reshape(len(images), -1)}


def reconstruction_step(variables, images, rng, *, model, noise_mean, noise_std, noisy: bool):
  """A batch's reconstructions as uint8, from inputs with the training noise where `noisy`
  (then the noisy inputs too)."""
  inputs = to_float(images)
  if noisy:
    inputs = add_noise(rng, inputs, noise_mean, noise_std)
  to_uint8 = lambda x: jnp.round(jnp.clip(x, 0, 1) * 255).astype(jnp.uint8)
  out = {'reconstruction': to_uint8(model.apply(variables, inputs, method='reconstruct'))}
  if noisy:
    out['noisy'] = to_uint8(inputs)
  return out


def score_step(variables, images, rng, *, model, names):
  """A batch's per-example numbers `names` of the model's objective ('loss', a VAE's 'nelbo',
  'mse', ...) on clean inputs, with the evaluation's latent samples."""
  targets = to_float(images)
  loss, numbers = model.apply(variables, targets, targets, train=False, rngs=eval_rngs(rng),
                              method='objective')
  numbers = {'loss': loss, **numbers}
  return {name: numbers[name] for name in names}


def map_loop(variables, images, indices, first_batch, seed, *, step_fn, batch_sharding=None):
  """step_fn's per-example outputs for the batches images[indices[i]], stacked:
  (num_batches, batch_size, ...). Batch i draws from fold_in(PRNGKey(seed), first_batch + i)."""
  rng = jax.random.PRNGKey(seed)

  def body(i):
    batch = images[indices[i]]
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return step_fn(variables, batch, jax.random.fold_in(rng, first_batch + i))

  return jax.lax.map(body, jnp.arange(indices.shape[0]))


def make_map_fn(model, mesh, step, **step_kwargs):
  """The compiled map_loop of `step` (latent_step, reconstruction_step, score_step)."""
  return jax.jit(functools.partial(
      map_loop, step_fn=functools.partial(step, model=model, **step_kwargs),
      batch_sharding=NamedSharding(mesh, P('data'))),
      compiler_options=models.compiler_options(model))


# A call's outputs take at most about this many bytes: a split's latents or reconstructions
# reach the host, and the files, a call at a time.
OUTPUT_CALL_BYTES = 64 << 20


def map_split(map_fn, variables, feed, num_examples, config, mesh, consume, *, model,
              streamed_bytes: int = 0, batch_size=None) -> float:
  """Runs `map_fn` (make_map_fn) over every example of a split that `feed` serves and hands
  its outputs to consume(start, {name: rows start.. of the split}), a call at a time, in order.
  The next call runs on the devices while `consume` writes the last one's outputs. Returns the
  seconds that compiling took (before the first call). Draws come from eval_seed(config)."""
  seed = eval_seed(config)
  batch_size = batch_size or eval_batch_size(config, model, num_examples, mesh.size)
  rows, _ = padded_batches(num_examples, batch_size)
  images, indices = feed(np.full((1, batch_size), -1, np.int32))
  shapes = jax.eval_shape(map_fn, variables, images, indices, 0, seed)
  example_bytes = sum(int(np.prod(s.shape[2:])) * s.dtype.itemsize
                      for s in jax.tree.leaves(shapes))
  per_call = min(len(rows), max(1, OUTPUT_CALL_BYTES // (batch_size * max(example_bytes, 1))))
  if streamed_bytes:
    per_call = min(per_call, streamed_batches_per_call(config, batch_size, streamed_bytes))
  compile_start = time.time()
  images, indices = feed(np.full((per_call, batch_size), -1, np.int32))
  map_fn = map_fn.lower(variables, images, indices, 0, seed).compile()
  compile_seconds = time.time() - compile_start
  pending = None
  for first in list(range(0, len(rows), per_call)) + [None]:
    result = None
    if first is not None:
      call_rows = np.full((per_call, batch_size), -1, np.int32)  # -1: batches past the split
      call_rows[:len(rows) - first] = rows[first:first + per_call]
      result = (first, map_fn(variables, *feed(call_rows), first, seed))
    if pending is not None:
      start = pending[0] * batch_size
      count = min(num_examples - start, per_call * batch_size)
      outputs = jax.device_get(pending[1])
      consume(start, {name: value.reshape(-1, *value.shape[2:])[:count]
                      for name, value in outputs.items()})
    pending = result
  return compile_seconds
