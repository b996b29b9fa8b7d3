"""Training: the train state, train_step, eval_step and train_and_evaluate(config, workdir)."""

import functools
import os
import time
from typing import Any

import flax
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from ae_jax import UserError
from ae_jax import checkpoints
from ae_jax import config_lib
from ae_jax import input_pipeline
from ae_jax import metric_writers
from ae_jax import models
from ae_jax import plots


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # never changes: step s draws its noise and dropout from fold_in(rng, s)


def create_optimizer(config) -> optax.GradientTransformation:
  return getattr(optax, config.optimizer)(config.learning_rate)


def create_train_state(model, tx, seed: int) -> TrainState:
  params_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = models.init_variables(model, params_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                    batch_stats=variables['batch_stats'],
                    opt_state=tx.init(variables['params']), rng=rng)


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
METRICS = {**LOSSES, 'psnr': per_example_psnr}


def add_noise(key, images, mean: float, std: float, axis_name=None):
  noise = models.draw_for_global_batch(key, jax.random.normal, images.shape, axis_name)
  return images + mean + std * noise


# --- the update step ----------------------------------------------------------------------

def train_step(state: TrainState, images, *, model, tx, loss: str, noise_mean: float,
               noise_std: float, axis_name=None):
  """One optimizer step on a batch of uint8 images; returns the new state and the batch loss.

  Under jit (axis_name None) the batch may be sharded over devices and XLA adds the
  cross-device reductions. Under pmap (axis_name set) gradients and the loss are averaged over
  the axis here; BatchNorm averages its statistics over it itself.
  """
  target = to_float(images)
  noise_rng, dropout_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
  inputs = target
  if noise_std > 0:
    inputs = add_noise(noise_rng, target, noise_mean, noise_std, axis_name)

  def loss_fn(params):
    (reconstruction, _), updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, inputs, train=True,
        rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    return jnp.mean(LOSSES[loss](reconstruction, target)), updates.get('batch_stats', {})

  (loss_value, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads, loss_value = jax.lax.pmean((grads, loss_value), axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)
  return new_state, loss_value


def train_loop(state, images, indices, num_steps, *, step_fn, batch_sharding=None):
  """Runs `num_steps` (at most len(indices)) steps on batches images[indices[i]].

  One compiled call runs many steps with the data already on the device; `num_steps` is a
  traced value, so a shorter last call of an epoch needs no second compilation. The loop stops
  after the first non-finite loss. Returns the state and each step's loss (NaN where not run).
  """
  def cond(carry):
    i, _, losses = carry
    return (i < num_steps) & ((i == 0) | jnp.isfinite(losses[i - 1]))

  def body(carry):
    i, state, losses = carry
    batch = images[indices[i]]
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    state, loss = step_fn(state, batch)
    return i + 1, state, losses.at[i].set(loss)

  losses = jnp.full(indices.shape[:1], jnp.nan, jnp.float32)
  _, state, losses = jax.lax.while_loop(cond, body, (0, state, losses))
  return state, losses


# --- evaluation ---------------------------------------------------------------------------

def eval_step(variables, images, mask, noise_rng, *, model, noise_mean, noise_std):
  """Sums of each per-example metric over the examples where `mask` is true, and their count."""
  target = to_float(images)
  inputs = target if noise_rng is None else add_noise(noise_rng, target, noise_mean, noise_std)
  reconstruction, _ = model.apply(variables, inputs, train=False)
  sums = {name: jnp.sum(jnp.where(mask, fn(reconstruction, target), 0.0))
          for name, fn in METRICS.items()}
  return {**sums, 'count': jnp.sum(mask)}


def eval_loop(variables, images, indices, mask, noise_rng, *, step_fn, batch_sharding=None):
  """Metric sums over all the batches images[indices[i]] (masked where padded)."""
  def body(i, sums):
    batch = images[indices[i]]
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    rng = None if noise_rng is None else jax.random.fold_in(noise_rng, i)
    return jax.tree.map(jnp.add, sums, step_fn(variables, batch, mask[i], rng))

  zeros = jax.eval_shape(step_fn, variables, images[indices[0]], mask[0], noise_rng)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
  return jax.lax.fori_loop(0, indices.shape[0], body, zeros)


def padded_batches(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices (num_batches, batch_size) covering every example once, and the mask of real ones.

  The last batch is padded (with example 0) rather than dropped, so every example counts.
  """
  num_batches = -(-num_examples // batch_size)
  indices = np.arange(num_batches * batch_size, dtype=np.int32)
  mask = indices < num_examples
  return np.where(mask, indices, 0).reshape(num_batches, batch_size), mask.reshape(
      num_batches, batch_size)


# --- devices ------------------------------------------------------------------------------

def create_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), ('data',))


def to_device(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Places a host array that every process holds in full as a global array with `sharding`."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of the training examples in `epoch`: a function of the seed and the epoch only,
  so that a run resumed mid-epoch sees the batches an uninterrupted run sees."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)


def _log(*args):
  if jax.process_index() == 0:
    tqdm.tqdm.write(' '.join(map(str, args)))


# --- the whole run ------------------------------------------------------------------------

def train_and_evaluate(config, workdir: str) -> TrainState:
  """Trains the model that `config` describes, checkpointing to `workdir` every epoch.

  Resumes from the latest checkpoint in `workdir` if there is one. Returns the final state.
  """
  config_lib.validate(config)
  workdir = os.path.abspath(workdir)
  config_lib.prepare_workdir(config, workdir)

  # --- Set up the mesh.
  mesh = create_mesh()
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))
  index_sharding = NamedSharding(mesh, P(None, 'data'))
  num_devices = mesh.size
  if config.batch_size % num_devices:
    raise UserError(f'config.batch_size={config.batch_size} is not divisible by the '
                    f'{num_devices} devices: use a multiple of {num_devices}')

  # --- The input pipeline: every split on the device, once.
  splits = input_pipeline.load_splits(config.data)
  image_shape = splits['train'].images.shape[1:]
  num_train = len(splits['train'].images)
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch < 1:
    raise UserError(f'config.batch_size={config.batch_size} is larger than the '
                    f'{num_train} training images: use a smaller batch')
  train_images = to_device(splits['train'].images, replicated)
  val_images = to_device(splits['validation'].images, replicated)
  _log(f'data: {num_train} train, {len(splits["validation"].images)} validation'
       + (f', {len(splits["test"].images)} test' if 'test' in splits else '')
       + f' images of {image_shape}; {num_devices} device(s): {jax.devices()[0].platform}')

  # --- The model and the train state.
  model = models.create_model(config.model, image_shape)
  tx = create_optimizer(config)
  state = jax.jit(functools.partial(create_train_state, model, tx, config.seed),
                  out_shardings=replicated)()
  _log(f'model {config.model.name}: {models.count_params(state.params):,} parameters')

  # --- Load a checkpoint.
  manager = checkpoints.create_manager(workdir)
  if manager.latest_step() is not None:
    state = checkpoints.restore_train_state(manager, manager.latest_step(), state, replicated)
    _log(f'resumed from the checkpoint of step {int(state.step)} in {manager.directory}')
  start_step = int(state.step)
  total_steps = config.num_epochs * steps_per_epoch
  if start_step >= total_steps:
    _log(f'{workdir} already holds a run of {config.num_epochs} epochs: nothing to train '
         '(raise config.num_epochs to train on)')
    manager.close()
    return state

  # --- The update function: many steps per compiled call.
  step_kwargs = dict(tx=tx, loss=config.loss, noise_mean=config.noise.mean,
                     noise_std=config.noise.std)
  steps_per_call = min(config.steps_per_call, steps_per_epoch)
  if config.parallel == 'pmap':
    pmap_model = models.create_model(config.model, image_shape, axis_name='data')
    step_fn = functools.partial(train_step, model=pmap_model, axis_name='data', **step_kwargs)
    run_steps = jax.pmap(functools.partial(train_loop, step_fn=step_fn), axis_name='data',
                         in_axes=(0, 0, 0, None), donate_argnums=0)
    # pmap takes one copy per device, stacked along a leading axis.
    to_pmap = lambda tree: jax.tree.map(
        lambda x: jax.device_put(np.broadcast_to(x, (num_devices, *np.shape(x))),
                                 batch_sharding), jax.device_get(tree))
    from_pmap = lambda state: jax.device_put(jax.tree.map(lambda x: x[0], state), replicated)
    train_images = to_pmap(splits['train'].images)
    place_indices = lambda idx: jnp.asarray(
        idx.reshape(len(idx), num_devices, -1).transpose(1, 0, 2))
    first_loss = lambda losses: losses[0]
  else:
    step_fn = functools.partial(train_step, model=model, **step_kwargs)
    run_steps = jax.jit(functools.partial(train_loop, step_fn=step_fn,
                                          batch_sharding=batch_sharding), donate_argnums=0)
    to_pmap = from_pmap = first_loss = lambda x: x
    place_indices = lambda idx: to_device(idx, index_sharding)

  compile_start = time.time()
  dummy_indices = place_indices(np.zeros((steps_per_call, config.batch_size), np.int32))
  run_steps = run_steps.lower(to_pmap(state), train_images, dummy_indices,
                              steps_per_call).compile()
  _log(f'compiled the update function ({steps_per_call} steps per call) in '
       f'{time.time() - compile_start:.1f} s')

  eval_fn = jax.jit(functools.partial(
      eval_loop, step_fn=functools.partial(eval_step, model=model, noise_mean=config.noise.mean,
                                           noise_std=config.noise.std),
      batch_sharding=batch_sharding))
  val_indices, val_mask = (to_device(a, index_sharding) for a in padded_batches(
      len(splits['validation'].images), config.batch_size))
  # Denoising models are validated on their training task: noisy inputs (the same noise every
  # epoch, so that epochs compare), clean targets.
  val_noise_rng = jax.random.PRNGKey(1) if config_lib.is_denoising(config) else None
  num_shown = min(config.num_summary_images, len(splits['validation'].images))
  shown = splits['validation'].images[:num_shown]
  reconstruct = jax.jit(lambda variables, x: model.apply(variables, x, train=False)[0])

  # --- The loop.
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  # Rows from after the checkpoint we resumed from belong to work that is lost.
  rows = [r for r in metric_writers.read_metrics(metrics_path) if r['step'] <= start_step]
  writer = metric_writers.SummaryWriter(workdir) if jax.process_index() == 0 else None
  state = to_pmap(state)
  try:
    for epoch in range(start_step // steps_per_epoch, config.num_epochs):
      epoch_start = time.time()
      order = epoch_permutation(config.seed, epoch, num_train)
      order = order[:steps_per_epoch * config.batch_size].reshape(steps_per_epoch, -1)
      first = max(start_step - epoch * steps_per_epoch, 0)
      bar = tqdm.tqdm(total=steps_per_epoch, initial=first, unit='step', leave=False,
                      desc=f'epoch {epoch + 1}/{config.num_epochs}',
                      disable=jax.process_index() != 0)
      epoch_losses = []

      def consume(pending):
        """Reads a finished call's losses: the only place the host waits for the device."""
        losses, call_first, num_steps = pending
        losses = np.asarray(first_loss(losses))[:num_steps]
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
          bad_step = epoch * steps_per_epoch + call_first + int(bad[0]) + 1
          raise UserError(
              f'the loss became {losses[bad[0]]} at step {bad_step} (epoch {epoch + 1}): '
              f'training diverged. Lower config.learning_rate (now {config.learning_rate}); '
              f'the latest checkpoint in {manager.directory} is from before it')
        epoch_losses.extend(losses.tolist())
        if writer:
          for i, loss in enumerate(losses):
            writer.scalar('train/loss', loss, epoch * steps_per_epoch + call_first + i + 1)
        bar.update(num_steps)
        bar.set_postfix(loss=f'{np.mean(epoch_losses):.5f}')

      pending = None
      for call_first in range(first, steps_per_epoch, steps_per_call):
        num_steps = min(steps_per_call, steps_per_epoch - call_first)
        indices = np.zeros((steps_per_call, config.batch_size), np.int32)
        indices[:num_steps] = order[call_first:call_first + num_steps]
        state, losses = run_steps(state, train_images, place_indices(indices), num_steps)
        # Read the previous call's results only now, while this one runs.
        if pending:
          consume(pending)
        pending = (losses, call_first, num_steps)
      consume(pending)
      bar.close()
      train_seconds = time.time() - epoch_start

      eval_state = from_pmap(state)
      variables = {'params': eval_state.params, 'batch_stats': eval_state.batch_stats}
      sums = jax.device_get(eval_fn(variables, val_images, val_indices, val_mask, val_noise_rng))
      val_loss = float(sums[config.loss] / sums['count'])
      checkpoints.save(manager, eval_state, val_loss)

      step = int(eval_state.step)
      num_trained = (steps_per_epoch - first) * config.batch_size
      row = dict(epoch=epoch + 1, step=step, loss=config.loss,
                 train_loss=float(np.mean(epoch_losses)), val_loss=val_loss,
                 images_per_sec=num_trained / train_seconds,
                 seconds=time.time() - epoch_start)
      rows.append(row)
      x = shown.astype(np.float32) / 255.0
      grid = plots.image_grid([x, np.asarray(reconstruct(variables, x))])
      if jax.process_index() == 0:
        metric_writers.write_metrics(metrics_path, rows)
        plots.loss_curve(rows, os.path.join(workdir, 'loss_curve.png'))
        writer.scalar('val/loss', val_loss, step)
        writer.scalar('train/epoch_loss', row['train_loss'], step)
        writer.scalar('train/images_per_sec', row['images_per_sec'], step)
        writer.image('val/reconstructions', grid, step)
        writer.flush()
      _log(f'epoch {epoch + 1}/{config.num_epochs}: train_loss {row["train_loss"]:.5f}  '
           f'val_loss {val_loss:.5f}  {row["images_per_sec"]:,.0f} images/s  '
           f'{row["seconds"]:.1f} s')
  finally:
    manager.wait_until_finished()  # or the last save is lost
    manager.close()
    if writer:
      writer.close()
  return from_pmap(state)
