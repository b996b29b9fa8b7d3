"""Training: the train state, train_step and train_and_evaluate(config, workdir)."""

import functools
import os
import signal
import time
from typing import Any, NamedTuple

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
from ae_jax import devices
from ae_jax import input_pipeline
from ae_jax import interruptions
from ae_jax import metric_writers
from ae_jax import metrics
from ae_jax import models
from ae_jax import plots
from ae_jax import launch
from ae_jax import trace_cache


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # never changes: step s draws from step_rngs(rng, s)


def create_optimizer(config) -> optax.GradientTransformation:
  return getattr(optax, config.optimizer)(config.learning_rate)


def create_train_state(model, tx, seed: int) -> TrainState:
  """The initial train state; jit it (with models.compile_once_options(model))."""
  params_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = models.init_variables(model, params_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                    batch_stats=variables['batch_stats'],
                    opt_state=tx.init(variables['params']), rng=rng)


# --- the update step ----------------------------------------------------------------------

def step_rngs(rng, step) -> dict:
  """The keys step `step` draws from: the input noise, and the model's dropout and latent
  samples. A function of the seed and the step alone, so that a resumed run draws what an
  uninterrupted one does."""
  noise, dropout, latent = jax.random.split(jax.random.fold_in(rng, step), 3)
  return {'noise': noise, 'dropout': dropout, 'latent': latent}


def train_step(state: TrainState, images, *, model, tx, noise_mean: float, noise_std: float,
               axis_name=None):
  """One optimizer step on a batch of uint8 images: the model's objective, averaged over the
  batch. Returns the new state and the batch means of the loss and of the numbers the objective
  reports in training.

  Under jit (axis_name None) the batch may be sharded over devices and XLA adds the
  cross-device reductions. Under pmap (axis_name set) gradients and numbers are averaged over
  the axis here; BatchNorm averages its statistics over it itself.
  """
  targets = metrics.to_float(images)
  rngs = step_rngs(state.rng, state.step)
  noise_rng = rngs.pop('noise')
  inputs = targets
  if noise_std > 0:
    inputs = metrics.add_noise(noise_rng, targets, noise_mean, noise_std, axis_name)

  def loss_fn(params):
    (losses, numbers), updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, inputs, targets, train=True,
        rngs=rngs, mutable=['batch_stats'], method='objective')
    numbers = jax.tree.map(jnp.mean, numbers)
    return jnp.mean(losses), (numbers, updates.get('batch_stats', {}))

  (loss, (numbers, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  numbers = {'loss': loss, **numbers}
  if axis_name is not None:
    grads, numbers = jax.lax.pmean((grads, numbers), axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)
  return new_state, numbers


def train_loop(state, images, indices, num_steps, *, step_fn, batch_sharding=None):
  """Runs `num_steps` (at most len(indices)) steps on batches images[indices[i]].

  One compiled call runs many steps with the data already on the device; `num_steps` is a
  traced value, so a shorter last call of an epoch needs no second compilation. The loop stops
  after the first non-finite loss. Returns the state and each step's numbers ({'loss': ...,
  ...}, NaN where not run).
  """
  def cond(carry):
    i, _, numbers = carry
    return (i < num_steps) & ((i == 0) | jnp.isfinite(numbers['loss'][i - 1]))

  def body(carry):
    i, state, numbers = carry
    batch = images[indices[i]]
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    state, step_numbers = step_fn(state, batch)
    return i + 1, state, jax.tree.map(lambda all_, x: all_.at[i].set(x), numbers, step_numbers)

  shapes = jax.eval_shape(step_fn, state, images[indices[0]])[1]
  numbers = jax.tree.map(lambda _: jnp.full(indices.shape[:1], jnp.nan, jnp.float32), shapes)
  _, state, numbers = jax.lax.while_loop(cond, body, (0, state, numbers))
  return state, numbers


# --- devices and data ---------------------------------------------------------------------

def create_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), ('data',))


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of the training examples in `epoch`: a function of the seed and the epoch only,
  so that a run resumed mid-epoch sees the batches an uninterrupted run sees."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)


class Update(NamedTuple):
  """How to compile the update (`run`) and what it takes, for config.parallel = 'jit' or
  'pmap'."""
  compile: Any  # example arguments -> run: (state, images, indices, num_steps) -> (state,
  #   each step's numbers)
  feed: Any  # rows (steps, batch_size) -> (images, indices) for `run`
  to_run_state: Any  # a replicated TrainState -> the state `run` takes
  from_run_state: Any  # and back
  numbers: Any  # the numbers `run` returns -> {name: one per step}, on the host


def make_update(config, model, tx, mesh, train_images, placement) -> Update:
  step_kwargs = dict(tx=tx, noise_mean=config.noise.mean, noise_std=config.noise.std)
  if config.parallel == 'jit':
    step_fn = functools.partial(train_step, model=model, **step_kwargs)
    run = functools.partial(train_loop, step_fn=step_fn,
                            batch_sharding=NamedSharding(mesh, P('data')))
    compile_run = lambda *args: trace_cache.jit_compile(
        run, args, name='update', context=config.to_json_best_effort(sort_keys=True),
        donate_argnums=(0,), compiler_options=models.compiler_options(model))
    identity = lambda x: x
    return Update(compile_run, input_pipeline.make_feed(train_images, mesh, placement), identity,
                  identity, lambda numbers: jax.tree.map(np.asarray, numbers))

  # pmap: the same train_step per device, with the batch statistics, gradients and loss averaged
  # over the axis; one copy of the data and of the state per device, stacked on a leading axis.
  pmap_model = model.clone(axis_name='data')
  step_fn = functools.partial(train_step, model=pmap_model, axis_name='data', **step_kwargs)
  run = jax.pmap(functools.partial(train_loop, step_fn=step_fn), axis_name='data',
                 in_axes=(0, 0, 0, None), donate_argnums=0)
  compile_run = lambda *args: run.lower(*args).compile(models.compiler_options(pmap_model))
  stacked = NamedSharding(mesh, P('data'))
  num_devices = mesh.size
  to_pmap = lambda tree: jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(x, (num_devices, *np.shape(x))), stacked),
      jax.device_get(tree))
  images = to_pmap(train_images)
  feed = lambda rows: (images, jax.device_put(
      rows.reshape(len(rows), num_devices, -1).transpose(1, 0, 2), stacked))
  # The first device's copy, read from its own shard: x[0] on the stacked array is a program
  # over every device, whose collective rendezvous deadlocked once on CPUs (8 simulated devices
  # on 2 busy cores), several being in flight at a time.
  first_copy = lambda x: np.asarray(x.addressable_shards[0].data)[0]
  from_pmap = lambda state: jax.device_put(jax.tree.map(first_copy, state),
                                           NamedSharding(mesh, P()))
  return Update(compile_run, feed, to_pmap, from_pmap,
                lambda numbers: jax.tree.map(first_copy, numbers))


def _log(*args):
  if jax.process_index() == 0:
    tqdm.tqdm.write(' '.join(map(str, args)))


# A call runs as many steps as take about this long (at most config.steps_per_call): the
# progress bar moves and SIGINT is answered every few seconds, whatever the model's speed. Each
# call also pays a fixed cost, its temporaries allocated afresh (the CAE's: ~1 GB), which calls
# of a few seconds spread thinner: the CAE's steps take 5% less time than in calls of one.
SECONDS_PER_CALL = 3.0

# Samples a model with a prior decodes every epoch, from the same draws: an 8 x 8 grid.
NUM_SAMPLES_SHOWN = 64
SAMPLE_ROWS = 8


class Diverged(UserError):
  """A non-finite loss: the run stops, its latest checkpoint from before."""


class Loop(NamedTuple):
  """What every epoch of a run uses."""
  config: Any
  update: Update
  run_steps: Any  # update.run, compiled for calls of up to max_steps steps
  manager: Any  # the checkpoint manager
  run_log: metric_writers.RunLog
  received: list  # the signals received (interruptions.signals_caught)
  num_train: int
  steps_per_epoch: int
  max_steps: int


def train_epoch(loop: Loop, state, epoch: int, first: int, num_steps: int, numbers: dict):
  """Runs the steps first, first + 1, ... of `epoch` in compiled calls of about SECONDS_PER_CALL
  (`num_steps` steps to start with). Returns the state, the epoch's numbers per step ({'loss':
  [...], ...}, after `numbers`, those of its steps before `first`) and the call size reached.
  On SIGINT / SIGTERM it saves a checkpoint of the current step and raises
  interruptions.Interrupted; on a non-finite loss, a UserError."""
  config, update, manager = loop.config, loop.update, loop.manager
  steps_per_epoch = loop.steps_per_epoch
  order = epoch_permutation(config.seed, epoch, loop.num_train)
  order = order[:steps_per_epoch * config.batch_size].reshape(steps_per_epoch, -1)
  bar = tqdm.tqdm(total=steps_per_epoch, initial=first, unit='step', leave=False,
                  desc=f'epoch {epoch + 1}/{config.num_epochs}',
                  disable=jax.process_index() != 0)
  steps_per_second, last_read = None, time.time()

  def read(pending):
    """Waits for a call's numbers: the only place where the host waits for the device."""
    nonlocal steps_per_second, last_read
    call_numbers, call_first, call_steps = pending
    call_numbers = {name: values[:call_steps]
                    for name, values in update.numbers(call_numbers).items()}
    call_losses = call_numbers['loss']
    checkpoints.check(manager)  # a failed background save stops the run now
    now = time.time()
    steps_per_second = call_steps / max(now - last_read, 1e-6)
    last_read = now
    bad = np.flatnonzero(~np.isfinite(call_losses))
    if bad.size:
      latest = manager.latest_step()
      raise Diverged(
          f'the loss became {call_losses[bad[0]]} at step '
          f'{epoch * steps_per_epoch + call_first + int(bad[0]) + 1} (epoch {epoch + 1}): '
          f'training diverged. Lower config.learning_rate (now {config.learning_rate}); '
          + (f'the latest checkpoint, of step {latest} in {manager.directory}, is from '
             'before it' if latest is not None else
             'no checkpoint was saved, so the run starts afresh'))
    for name, values in call_numbers.items():
      numbers.setdefault(name, []).extend(values.tolist())
    loop.run_log.train_numbers(epoch * steps_per_epoch + call_first + 1, call_numbers)
    bar.update(call_steps)
    bar.set_postfix(loss=f'{np.mean(numbers["loss"]):.5f}')

  try:
    pending = None
    call_first = first
    while call_first < steps_per_epoch:
      num_steps, stop = interruptions.agree(num_steps, bool(loop.received))
      if stop:
        if pending:
          read(pending)
        bar.close()
        state = update.from_run_state(state)
        checkpoints.save(manager, state)
        checkpoints.wait(manager)
        loop.run_log.save_partial_epoch(int(state.step), numbers)
        signum = loop.received[0] if loop.received else signal.SIGTERM
        raise interruptions.Interrupted(signum, (
            f'{signal.Signals(signum).name}: saved the checkpoint of step '
            f'{int(state.step)} (epoch {epoch + 1}, step {call_first} of {steps_per_epoch}) '
            f'in {manager.directory}; run the same command again to resume'))
      call_steps = min(num_steps, steps_per_epoch - call_first)
      rows = np.full((loop.max_steps, config.batch_size), -1, np.int32)  # -1: steps not run
      rows[:call_steps] = order[call_first:call_first + call_steps]
      state, call_numbers = loop.run_steps(state, *update.feed(rows), call_steps)
      # Read the previous call's results only now, while this one runs.
      if pending:
        read(pending)
        num_steps = int(np.clip(round(SECONDS_PER_CALL * steps_per_second), 1, loop.max_steps))
      pending = (call_numbers, call_first, call_steps)
      call_first += call_steps
    read(pending)
  finally:
    bar.close()  # also on the way out of an error: its line must not follow the error's
  return state, numbers, num_steps


# --- the whole run ------------------------------------------------------------------------

def check_devices(config, num_devices: int) -> None:
  """The checks of `config` against the devices and processes, before any work."""
  if config.parallel == 'pmap' and jax.process_count() > 1:
    raise UserError("config.parallel='pmap' runs in one process: use config.parallel='jit' "
                    'across processes')
  if config.batch_size % num_devices:
    raise UserError(f'config.batch_size={config.batch_size} is not divisible by the '
                    f'{num_devices} devices: use a multiple of {num_devices}')


def check_data(config, splits) -> None:
  """The checks of `config` against its data (input_pipeline.load_splits), before any work: a
  study makes them for every member before the first trains."""
  num_train = len(splits['train'].images)
  if num_train // config.batch_size < 1:
    raise UserError(f'config.batch_size={config.batch_size} is larger than the {num_train} '
                    'training images: use a smaller batch')
  if config.parallel == 'pmap' and config.data.placement in ('host', 'disk'):
    raise UserError(f"config.parallel='pmap' keeps the data on the devices, not "
                    f"config.data.placement='{config.data.placement}': use placement auto or "
                    "device, or config.parallel='jit', which streams it")
  if config.parallel == 'pmap' and input_pipeline.choose_feed(
      config.data, splits['train'].images, splits['validation'].images.nbytes) != 'device':
    raise UserError("config.parallel='pmap' keeps the data on the devices, and this data does "
                    "not fit there: use config.parallel='jit', which streams it from host memory")


def check_memory(config, state) -> None:
  """Refuses a model whose train state and gradients (`state`: their shapes) cannot fit in a
  device's memory, before any is allocated: where an allocation fails, XLA's CPU client waits
  for ever, deaf to Ctrl-C."""
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  need = nbytes(state) + nbytes(state.params)
  device, num_devices = jax.local_devices()[0], jax.local_device_count()
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and 'bytes_limit' in stats:
    have, where = stats['bytes_limit'], f'one {device.platform.upper()}'
  else:  # CPU devices share the host's memory, each holding the whole state
    have = input_pipeline.feeds.host_memory() // num_devices
    where = 'the host' + (f' shared by {num_devices} devices' if num_devices > 1 else '')
  if need > have:
    gib = lambda n: f'{n / 2**30:,.1f} GiB'
    raise UserError(f'the model {config_lib.display_name(config)} has '
                    f'{models.count_params(state.params):,} parameters, which with their '
                    f"gradients and the optimizer's state need {gib(need)}, more than the "
                    f'{gib(have)} of {where}: choose a smaller model (config.model.*)')


def train_and_evaluate(config, workdir: str, splits=None) -> TrainState:
  """Trains the model that `config` describes, checkpointing to `workdir` every epoch.

  Resumes from the latest checkpoint in `workdir` if there is one. Returns the final state.
  Every check on the config and the data comes before anything is written to `workdir`.
  `splits`: the data that config.data names, already read (input_pipeline.load_splits), for a
  caller that trains several runs on it.
  """
  config_lib.validate(config)
  workdir = os.path.abspath(workdir)
  config_lib.check_workdir(config, workdir)

  # --- Set up the mesh.
  mesh = create_mesh()
  replicated = NamedSharding(mesh, P())
  num_devices = mesh.size
  check_devices(config, num_devices)

  # --- The input pipeline.
  if splits is None:
    splits = input_pipeline.load_splits(config.data)
  check_data(config, splits)
  train_images, val_images = splits['train'].images, splits['validation'].images
  image_shape = train_images.shape[1:]
  num_train = len(train_images)
  # for the checkpoints' metadata, where it is to be written: a note on images given the model
  # (from the validation split: the training images are read only as training batches)
  background = (input_pipeline.given.training_background(val_images)
                if checkpoints.trained_image_shape(workdir) is None
                or checkpoints.metadata_outdated(workdir, image_shape, num_train) else None)
  steps_per_epoch = num_train // config.batch_size

  # --- The model and the train state; then where the data goes, with the state counted.
  model = models.create_model(config, image_shape)
  tx = create_optimizer(config)
  check_memory(config, jax.eval_shape(functools.partial(create_train_state, model, tx,
                                                        config.seed)))
  state = trace_cache.jit_compile(
      functools.partial(create_train_state, model, tx, config.seed), (), name='init',
      # no arguments: the image shape, which config.data need not name, is said here
      context=f'{config.to_json_best_effort(sort_keys=True)} {image_shape}',
      out_shardings=replicated,
      compiler_options=models.compile_once_options(model))()
  placement = input_pipeline.agree_placement(
      input_pipeline.choose_feed(config.data, train_images, val_images.nbytes), train_images)
  trained_steps = checkpoints.check_resumable(workdir, state) or 0
  # other images (config.data.path, say), in epochs of another length
  trained_num = checkpoints.trained_num_images(workdir)
  if trained_steps and trained_num not in (None, num_train):
    raise UserError(f'{workdir} trained on {trained_num:,} images; config.data gives '
                    f'{num_train:,}: resume with the data it trained on, or use a new --workdir')
  if trained_steps > config.num_epochs * steps_per_epoch:  # config.json would say fewer epochs
    raise UserError(f'{workdir} holds {trained_steps / steps_per_epoch:g} epochs of training '
                    f'(step {trained_steps}), more than config.num_epochs={config.num_epochs}: '
                    f'give config.num_epochs={-(-trained_steps // steps_per_epoch)} or more, or '
                    'a new --workdir')
  if jax.process_index() == 0:
    config_lib.write_config(config, workdir)  # the first write, after every check
  _log(f'data: {num_train} train, {len(val_images)} validation'
       + (f', {len(splits["test"].images)} test' if 'test' in splits else '')
       + f' images of {image_shape}, '
       + {'device': 'held on the devices', 'host': 'streamed from host memory',
          'disk': 'read from disk a call at a time'}[placement]
       + f'; {devices.describe(mesh.devices.flat)}'
       + (f' in {jax.process_count()} processes' if jax.process_count() > 1 else '')
       + ''.join(f'; {note}' for note in dict.fromkeys(s.note for s in splits.values() if s.note)))
  _log(f'model {config_lib.display_name(config)}: '
       f'{models.count_params(state.params):,} parameters')

  # --- The update step, compiled once: many steps per call.
  update = make_update(config, model, tx, mesh, train_images, placement)
  max_steps = min(config.steps_per_call, steps_per_epoch)
  streamed_bytes = 0 if placement == 'device' else int(np.prod(image_shape))
  if streamed_bytes:
    max_steps = min(max_steps, metrics.streamed_batches_per_call(config, config.batch_size,
                                                                 streamed_bytes))
  compile_start = time.time()
  run_steps = update.compile(update.to_run_state(state),
                             *update.feed(np.full((max_steps, config.batch_size), -1, np.int32)),
                             max_steps)
  _log(f'compiled the update function in {time.time() - compile_start:.1f} s')
  launch.start_up_done()
  # Denoising models are validated on their training task: noisy inputs (the same noise every
  # epoch, so that epochs compare), clean targets. Validation measures what training reports.
  eval_fn = metrics.make_eval_fn(model, config, mesh, noisy=config_lib.is_denoising(config),
                                 names=('loss', *models.objective_parts(model)))
  val_feed = input_pipeline.make_feed(val_images, mesh, placement)
  shown = val_images[:config.num_summary_images].astype(np.float32) / 255.0
  reconstruct = models.jit_method(model, 'reconstruct')
  prior_draws = None
  if models.has_prior(model):  # the same draws every epoch, so that epochs compare
    prior_draws = jax.random.normal(jax.random.PRNGKey(metrics.FIGURE_SEED),
                                    (NUM_SAMPLES_SHOWN, model.latent_dim))
    generate = models.jit_method(model, 'decode')

  with (config_lib.workdir_locked(workdir, enabled=jax.process_index() == 0),
        interruptions.signals_deferred(),
        checkpoints.managed(workdir, image_shape, background, num_train) as manager):
    # --- Load a checkpoint.
    restored = checkpoints.restore_latest(manager, state, replicated)
    if restored is not None:
      state = restored
      _log(f'resumed from the checkpoint of step {int(state.step)} in {manager.directory}')
    start_step = int(state.step)
    if start_step >= config.num_epochs * steps_per_epoch:
      _log(f'{workdir} already holds a run of {config.num_epochs} epochs: nothing to train '
           '(raise config.num_epochs to train on)')
      return state
    run_log = metric_writers.RunLog(workdir, start_step, enabled=jax.process_index() == 0)

    # --- The loop: an epoch of compiled calls, then validation, a checkpoint and the logs.
    try:
      with interruptions.signals_caught() as received:
        loop = Loop(config, update, run_steps, manager, run_log, received, num_train,
                    steps_per_epoch, max_steps)
        state = update.to_run_state(state)
        num_steps = 1  # grows to what takes SECONDS_PER_CALL once the speed is known
        for epoch in range(start_step // steps_per_epoch, config.num_epochs):
          epoch_start = time.time()
          first = max(start_step - epoch * steps_per_epoch, 0)
          # the numbers of this epoch's steps before a mid-epoch resume count too
          numbers = run_log.partial_epoch(start_step) if first else {}
          state, numbers, num_steps = train_epoch(loop, state, epoch, first, num_steps, numbers)
          train_seconds = time.time() - epoch_start

          eval_state = update.from_run_state(state)
          variables = {'params': eval_state.params, 'batch_stats': eval_state.batch_stats}
          val = metrics.evaluate_split(eval_fn, variables, val_feed, len(val_images), config,
                                       mesh, model=model, streamed_bytes=streamed_bytes)
          checkpoints.save(manager, eval_state, val['loss'])
          figures = {}
          if len(shown):
            figures['reconstructions'] = plots.image_grid(
                [shown, np.asarray(reconstruct(variables, shown))])
          if prior_draws is not None:
            samples = np.asarray(generate(variables, prior_draws))
            figures['samples'] = plots.image_grid(np.split(samples, SAMPLE_ROWS))
          row = dict(epoch=epoch + 1, step=int(eval_state.step), loss=model.loss_name,
                     train_loss=float(np.mean(numbers['loss'])), val_loss=val['loss'],
                     **{f'train_{name}': float(np.mean(values))
                        for name, values in numbers.items() if name != 'loss'},
                     **{f'val_{name}': value for name, value in val.items() if name != 'loss'},
                     images_per_sec=(steps_per_epoch - first) * config.batch_size / train_seconds,
                     seconds=time.time() - epoch_start)
          run_log.epoch(row, figures)
          # the parts of the objective, where it has more than one: five digits, as eval.sh
          # (a VAE's nats, a new model's penalty below 1)
          parts = ''.join(f'  val_{name} {val[name]:.5g}' for name in models.objective_parts(model))
          _log(f'epoch {epoch + 1}/{config.num_epochs}: train_loss {row["train_loss"]:.5f}  '
               f'val_loss {val["loss"]:.5f}{parts}  {row["images_per_sec"]:,.0f} images/s  '
               f'{row["seconds"]:.1f} s')
    except BaseException:
      run_log.close(quietly=True)  # what is on its way out says more than a second error
      raise
    run_log.close()
    return update.from_run_state(state)
