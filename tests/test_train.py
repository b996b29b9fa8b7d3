import functools
import json
import os

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from ae_jax import UserError
from ae_jax import checkpoints
from ae_jax import input_pipeline
from ae_jax import metric_writers
from ae_jax import metrics
from ae_jax import models
from ae_jax import train
from conftest import MNIST_SMALL
from conftest import run_module
from conftest import small_config

IMAGES = input_pipeline.read_idx(
    os.path.join(MNIST_SMALL, 'train-images-idx3-ubyte.gz'))[..., None]


def _setup(config):
  model = models.create_model(config, IMAGES.shape[1:])
  tx = train.create_optimizer(config)
  state = jax.jit(functools.partial(train.create_train_state, model, tx, config.seed),
                  compiler_options=models.compile_once_options(model))()
  step_fn = functools.partial(train.train_step, model=model, tx=tx,
                              noise_mean=config.noise.mean, noise_std=config.noise.std)
  return state, step_fn


def _model_and_variables(config):
  """The model of `config` and its initial variables, for evaluation's and mapping's steps."""
  state, _ = _setup(config)
  return (models.create_model(config, IMAGES.shape[1:]),
          {'params': state.params, 'batch_stats': state.batch_stats})


# The CAE's and DCAE's compile for 10 to 20 s: they run with the slow tests, and the regression
# test below holds the CAE's falling losses in the fast ones.
@pytest.mark.parametrize('name', ['ae', 'dae', pytest.param('cae', marks=pytest.mark.slow),
                                  pytest.param('dcae', marks=pytest.mark.slow)])
def test_loss_falls_within_a_few_steps(name):
  config = small_config(name)
  state, step_fn = _setup(config)
  run = jax.jit(functools.partial(train.train_loop, step_fn=step_fn))
  indices = np.arange(10 * 32, dtype=np.int32).reshape(10, 32)
  state, numbers = run(state, IMAGES, indices, 10)
  losses = np.asarray(numbers['loss'])
  assert int(state.step) == 10 and np.isfinite(losses).all()
  assert losses[-3:].mean() < 0.8 * losses[0], losses


def test_each_step_draws_fresh_noise_from_the_state_key():
  state, step_fn = _setup(small_config('dae'))
  step = jax.jit(step_fn)
  batch = IMAGES[:32]
  loss = step(state, batch)[1]['loss']
  again = step(state, batch)[1]['loss']
  next_step = step(state.replace(step=state.step + 1), batch)[1]['loss']
  assert loss == again  # a pure function of the state and the batch
  assert loss != next_step  # another step: other noise and dropout on the same images


@pytest.mark.parametrize('optimizer, expected', [
    ('sgd', [-0.05, 0.2]),  # -lr * gradient
    ('adam', [-0.1, 0.1]),  # a first step of -lr * sign(gradient)
    ('adamw', [-0.101, 0.099]),  # adam's, and optax's weight decay of 1e-4 on parameters of 100
])
def test_config_optimizer_chooses_the_update(optimizer, expected):
  tx = train.create_optimizer(small_config('ae', optimizer=optimizer, learning_rate=0.1))
  params = {'w': np.full(2, 100, np.float32)}
  updates, _ = tx.update({'w': np.array([0.5, -2.0], np.float32)}, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], expected, rtol=1e-4)


def test_train_loop_stops_at_a_non_finite_loss():
  config = small_config('ae', learning_rate=1e6)
  state, step_fn = _setup(config)
  run = jax.jit(functools.partial(train.train_loop, step_fn=step_fn))
  state = state.replace(params=jax.tree.map(lambda p: p * np.inf, state.params))
  state, numbers = run(state, IMAGES, np.zeros((5, 32), np.int32), 5)
  assert int(state.step) == 1 and not np.isfinite(numbers['loss'][0])


def test_padded_batches_cover_every_example_once():
  indices, mask = metrics.padded_batches(10, 4)
  assert indices.shape == (3, 4)
  assert sorted(indices[mask].tolist()) == list(range(10))
  assert mask.sum() == 10


def test_checkpoint_round_trip_restores_the_exact_state(tmp_path):
  config = small_config('dcae')  # BatchNorm statistics, noise, Adam state
  model = models.create_model(config, IMAGES.shape[1:])
  state, step_fn = _setup(config)
  # unoptimized: the DCAE's update compiles in a third of the time
  run = jax.jit(functools.partial(train.train_loop, step_fn=step_fn),
                compiler_options=models.compile_once_options(model))
  state, _ = run(state, IMAGES, np.arange(24, dtype=np.int32).reshape(3, 8), 3)
  manager = checkpoints.create_manager(str(tmp_path))
  checkpoints.save(manager, state, val_loss=0.5)
  manager.wait_until_finished()

  other, _ = _setup(small_config('dcae', seed=7))  # the same structure, other values
  sharding = NamedSharding(train.create_mesh(), P())
  restored = checkpoints.restore_train_state(
      checkpoints.create_manager(str(tmp_path)), 3, other, sharding)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def _final_state(workdir):
  config = small_config('dcae')
  state, _ = _setup(config)
  manager = checkpoints.create_manager(workdir)
  return checkpoints.restore_train_state(manager, manager.latest_step(), state,
                                         NamedSharding(train.create_mesh(), P()))


def _assert_same_run(tmp_path, resumed, straight):
  """The state of tmp_path/resumed is that of tmp_path/straight, and so is its losses' log."""
  assert int(resumed.step) == int(straight.step) == 8
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
    np.testing.assert_array_equal(a, b)
  losses = lambda d: [(r['train_loss'], r['val_loss'])
                      for r in metric_writers.read_metrics(str(tmp_path / d / 'metrics.jsonl'))]
  assert losses('resumed') == losses('straight')


@pytest.mark.parametrize('name', ['dae', pytest.param('dcae', marks=pytest.mark.slow)])
def test_a_resumed_run_ends_with_the_parameters_of_an_uninterrupted_one(tmp_path, name):
  kwargs = dict(num_train=128, batch_size=32)
  straight = train.train_and_evaluate(small_config(name, num_epochs=2, **kwargs),
                                      str(tmp_path / 'straight'))
  train.train_and_evaluate(small_config(name, num_epochs=1, **kwargs), str(tmp_path / 'resumed'))
  resumed = train.train_and_evaluate(small_config(name, num_epochs=2, **kwargs),
                                     str(tmp_path / 'resumed'))
  _assert_same_run(tmp_path, resumed, straight)


def test_a_run_leaves_checkpoints_metrics_and_figures(workdir):
  config = small_config('ae', num_epochs=3, num_train=128)
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['name'] == 'AE'
  rows = metric_writers.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['epoch'] for r in rows] == [1, 2, 3] and [r['step'] for r in rows] == [4, 8, 12]
  assert rows[-1]['val_loss'] < rows[0]['val_loss']
  assert all(r['images_per_sec'] > 0 and r['seconds'] > 0 for r in rows)
  with open(os.path.join(workdir, 'loss_curve.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'

  manager = checkpoints.create_manager(workdir, read_only=True)
  best = min(rows, key=lambda r: r['val_loss'])['step']
  assert manager.latest_step() == 12 and manager.best_step() == best
  # the best and the two latest (the second for a damaged latest), nothing else
  assert set(manager.all_steps()) == {best, 8, 12}

  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(workdir)
  events.Reload()
  tags = events.Tags()
  assert {'train/loss', 'val/loss', 'train/images_per_sec'} <= set(tags['scalars'])
  assert len(events.Scalars('train/loss')) == 12
  assert [e.value for e in events.Scalars('val/loss')] == pytest.approx(
      [r['val_loss'] for r in rows])
  assert 'val/reconstructions' in tags['images']


def test_tensorboards_train_loss_of_a_step_is_logged_at_that_step(workdir):
  # steps count from 1, as the checkpoints' and val/loss's do: step 2 ends the epoch here
  train.train_and_evaluate(small_config('ae', num_train=64, batch_size=32, steps_per_call=1),
                           workdir)
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(workdir)
  events.Reload()
  assert [e.step for e in events.Scalars('train/loss')] == [1, 2]
  assert [e.step for e in events.Scalars('val/loss')] == [2]


def test_a_workdir_of_another_run_is_refused(workdir):
  train.train_and_evaluate(small_config('ae', num_train=64), workdir)
  before = sorted(os.listdir(workdir))
  with pytest.raises(UserError, match='holds another run.*delete .* to start afresh'):
    train.train_and_evaluate(small_config('dae', num_train=64), workdir)
  assert sorted(os.listdir(workdir)) == before


@pytest.mark.parametrize('name', ['dae', pytest.param('dcae', marks=pytest.mark.slow)])
def test_eight_devices_give_the_losses_of_one(tmp_path, name):
  """jit over an 8-device mesh and pmap over 8 devices, each in a process of its own."""
  kwargs = dict(num_train=128, batch_size=32)
  config = small_config(name, **kwargs)
  train.train_and_evaluate(config, str(tmp_path / 'one'))
  [one] = metric_writers.read_metrics(str(tmp_path / 'one' / 'metrics.jsonl'))
  flags = [f'--config.{key}={config[key.split(".")[0]][key.split(".")[1]]}'
           for key in ('data.source', 'data.path', 'data.train_split')]
  flags += [f'--config.batch_size={config.batch_size}', '--config.num_epochs=1',
            f'--config.steps_per_call={config.steps_per_call}']
  for parallel in ('jit', 'pmap'):
    workdir = str(tmp_path / parallel)
    result = run_module('ae_jax.main', f'--config=configs/{name}.py', f'--workdir={workdir}',
                        f'--config.parallel={parallel}', *flags, devices=8)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '8 cpu device(s)' in result.stdout
    [eight] = metric_writers.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
    # The first step differs by rounding alone: the devices sum in another order.
    assert _step_losses(workdir)[0] == pytest.approx(_step_losses(tmp_path / 'one')[0],
                                                     rel=1e-6), parallel
    # After it, where a gradient is (nearly) zero, above all for the CAE's conv biases before
    # BatchNorm, whose true gradient is exactly zero, the computed one is rounding noise that
    # Adam turns into steps of the learning rate: here 1e-8 apart for the last conv, 2e-3 for
    # those biases after four steps. BatchNorm hides most of it in training; evaluation sees it
    # through the running means: looser bounds on the later steps and the validation loss.
    assert eight['train_loss'] == pytest.approx(one['train_loss'], rel=1e-4), parallel
    assert eight['val_loss'] == pytest.approx(one['val_loss'], rel=1e-3), parallel


def _step_losses(workdir):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(str(workdir))
  events.Reload()
  return [e.value for e in events.Scalars('train/loss')]


# Numbers of the AE, DAE, CAE and DCAE recorded from the code before models owned their
# objective (tests/data/regression.json): the models must still reach them, up to rounding.
# XLA's CPU kernels round differently from one CPU to another: on an AVX-512 core with AMX the
# dense models' losses are 1-2 float32 ulps from those recorded; the convolutional ones' conv
# biases before BatchNorm turn rounding into Adam steps (see the eight-device test), 2e-4 apart
# after six steps for the DCAE. A change to what a model computes moves them far more.
REGRESSION_REL = {'ae': 1e-6, 'dae': 1e-6, 'cae': 1e-3, 'dcae': 1e-3}
with open(os.path.join(os.path.dirname(__file__), 'data', 'regression.json')) as f:
  REGRESSION = json.load(f)


# The DCAE's parts (noise, the CAE) run in the other keys; it runs with the slow tests.
@pytest.mark.parametrize('key', [pytest.param(k, marks=pytest.mark.slow) if k.startswith('dcae')
                                 else k for k in sorted(REGRESSION['steps'])])
def test_the_models_reach_the_numbers_recorded_before_they_owned_their_objective(key):
  name, _, loss = key.partition('_')
  config = small_config(name, **({'loss': loss} if loss else {}))
  state, step_fn = _setup(config)
  run = jax.jit(functools.partial(train.train_loop, step_fn=step_fn))
  state, numbers = run(state, IMAGES, np.arange(6 * 32, dtype=np.int32).reshape(6, 32), 6)
  rel = REGRESSION_REL[name]
  losses = np.asarray(numbers['loss'])
  assert losses.tolist() == pytest.approx(REGRESSION['steps'][key], rel=rel)
  assert losses[-1] < losses[0]  # the recorded losses fall
  model = models.create_model(config, IMAGES.shape[1:])
  mesh = train.create_mesh()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  images = IMAGES[:100]
  for inputs, recorded in REGRESSION['eval_after_steps'][key].items():
    eval_fn = metrics.make_eval_fn(model, config, mesh, noisy=inputs == 'noisy')
    numbers = metrics.evaluate_split(eval_fn, variables, input_pipeline.device_feed(images, mesh),
                                     len(images), config, mesh, model=model)
    assert {k: numbers[k] for k in recorded} == pytest.approx(recorded, rel=rel), inputs


@pytest.mark.parametrize('key', ['ae', 'ae_bce', 'dae'])
def test_two_epochs_log_the_losses_recorded_before_models_owned_their_objective(key, tmp_path):
  name, _, loss = key.partition('_')
  config = small_config(name, num_train=128, batch_size=32, num_epochs=2,
                        **({'loss': loss} if loss else {}))
  train.train_and_evaluate(config, str(tmp_path))
  rows = metric_writers.read_metrics(str(tmp_path / 'metrics.jsonl'))
  losses = [[r['train_loss'], r['val_loss']] for r in rows]
  assert np.ravel(losses).tolist() == pytest.approx(np.ravel(REGRESSION['two_epochs'][key]).tolist(),
                                                    rel=REGRESSION_REL[name])


def test_each_seed_and_epoch_has_its_own_order_of_the_training_images():
  orders = {(seed, epoch): train.epoch_permutation(seed, epoch, 100)
            for seed in (0, 1) for epoch in (0, 1)}
  assert all(sorted(order.tolist()) == list(range(100)) for order in orders.values())
  assert len({order.tobytes() for order in orders.values()}) == 4
  np.testing.assert_array_equal(train.epoch_permutation(1, 1, 100), orders[1, 1])


def test_the_noise_has_the_configured_mean_and_std():
  noisy = np.asarray(metrics.add_noise(jax.random.PRNGKey(0), np.zeros((100, 1000), np.float32),
                                       0.5, 0.1))
  assert noisy.mean() == pytest.approx(0.5, abs=1e-3) and noisy.std() == pytest.approx(0.1, rel=0.01)


def test_a_padded_last_batch_counts_each_example_once():
  config = small_config('ae')
  model, variables = _model_and_variables(config)
  mesh = train.create_mesh()
  eval_fn = metrics.make_eval_fn(model, config, mesh)
  images = IMAGES[:10]
  evaluate = lambda batch_size: metrics.evaluate_split(
      eval_fn, variables, input_pipeline.device_feed(images, mesh), len(images), config, mesh,
      model=model, batch_size=batch_size)
  assert evaluate(4) == pytest.approx(evaluate(10), rel=1e-6)  # 3 batches of 4: 2 rows padding


def test_streamed_validation_draws_the_noise_of_validation_on_the_devices():
  config = small_config('dae')  # steps_per_call=4: streamed, 4 batches a call
  model, variables = _model_and_variables(config)
  mesh = train.create_mesh()
  eval_fn = metrics.make_eval_fn(model, config, mesh, noisy=True)
  images = IMAGES[:100]
  on_devices, streamed = (metrics.evaluate_split(
      eval_fn, variables, feed(images, mesh), len(images), config, mesh, model=model,
      batch_size=10, streamed_bytes=streamed_bytes)
      for feed, streamed_bytes in ((input_pipeline.device_feed, 0),
                                   (input_pipeline.host_feed, 784)))
  assert streamed == pytest.approx(on_devices, rel=1e-6)


def test_pmaps_step_averages_the_gradients_of_the_devices():
  """train_step over a device axis (pmap's; vmap's here, on one CPU) takes jit's step on the
  whole batch. Under SGD, whose step scales with the gradient, summed gradients would take a
  step as many times too long as there are devices; Adam's steps would hide it."""
  config = small_config('ae', optimizer='sgd', learning_rate=1.0)
  state, step_fn = _setup(config)
  batch = IMAGES[:32]
  whole, numbers = jax.jit(step_fn)(state, batch)
  model = models.create_model(config, IMAGES.shape[1:]).clone(axis_name='data')
  per_device = functools.partial(train.train_step, model=model, tx=train.create_optimizer(config),
                                 noise_mean=0.0, noise_std=0.0, axis_name='data')
  halves, half_numbers = jax.jit(jax.vmap(per_device, in_axes=(None, 0), axis_name='data'))(
      state, batch.reshape(2, 16, *batch.shape[1:]))
  assert float(half_numbers['loss'][0]) == pytest.approx(float(numbers['loss']), rel=1e-6)
  for a, b in zip(jax.tree.leaves(halves.params), jax.tree.leaves(whole.params)):
    np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6)


def test_outputs_streamed_over_several_calls_land_in_their_rows():
  config = small_config('ae')  # steps_per_call=4: streamed, 4 batches a call
  model, variables = _model_and_variables(config)
  mesh = train.create_mesh()
  map_fn = metrics.make_map_fn(model, mesh, metrics.latent_step)
  images = IMAGES[:95]  # 10 batches of 10, the last padded: 3 calls streamed

  def latents(feed, streamed_bytes):
    out = np.full((len(images), model.latent_dim), np.nan, np.float32)

    def consume(start, outputs):
      out[start:start + len(outputs['latent'])] = outputs['latent']

    metrics.map_split(map_fn, variables, feed(images, mesh), len(images), config, mesh, consume,
                      model=model, batch_size=10, streamed_bytes=streamed_bytes)
    return out

  expected = np.asarray(model.apply(variables, images, method='embed'))
  np.testing.assert_allclose(latents(input_pipeline.device_feed, 0), expected, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(latents(input_pipeline.host_feed, 784), expected, rtol=1e-5,
                             atol=1e-6)


def test_reconstructions_are_rounded_to_the_nearest_uint8():
  config = small_config('ae')
  model, variables = _model_and_variables(config)
  images = IMAGES[:8]
  out = metrics.reconstruction_step(variables, images, None, model=model, noise_mean=0.0,
                                    noise_std=0.0, noisy=False)
  expected = np.round(np.asarray(model.apply(variables, images, method='reconstruct')) * 255)
  np.testing.assert_array_equal(out['reconstruction'], expected.astype(np.uint8))


def test_the_epochs_figure_shows_validation_images_in_0_1_and_their_reconstructions(
    workdir, monkeypatch):
  from ae_jax import plots  # pylint: disable=g-import-not-at-top
  grids = []
  image_grid = plots.image_grid
  monkeypatch.setattr(plots, 'image_grid', lambda rows: grids.append(rows) or image_grid(rows))
  config = small_config('ae', num_train=64, batch_size=16)
  state = train.train_and_evaluate(config, workdir)
  [(shown, reconstructed)] = grids
  validation = input_pipeline.load_splits(config.data)['validation'].images[:8]
  np.testing.assert_allclose(shown, validation / 255.0, rtol=1e-6)
  model = models.create_model(config, IMAGES.shape[1:])
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  np.testing.assert_allclose(reconstructed, model.apply(variables, validation,
                                                        method='reconstruct'), rtol=1e-5,
                             atol=1e-6)


def test_a_run_stopped_mid_epoch_resumes_to_the_parameters_of_an_uninterrupted_one(
    tmp_path, monkeypatch):
  from ae_jax import interruptions  # pylint: disable=g-import-not-at-top
  config = lambda: small_config('dae', num_train=128, batch_size=32, num_epochs=2,
                                steps_per_call=1)
  straight = train.train_and_evaluate(config(), str(tmp_path / 'straight'))
  calls = []
  monkeypatch.setattr(interruptions, 'agree', lambda num_steps, stop: (
      num_steps, stop or calls.append(num_steps) or len(calls) == 3))  # after step 2 of 4
  with pytest.raises(interruptions.Interrupted, match='checkpoint of step 2 '):
    train.train_and_evaluate(config(), str(tmp_path / 'resumed'))
  monkeypatch.undo()
  resumed = train.train_and_evaluate(config(), str(tmp_path / 'resumed'))
  _assert_same_run(tmp_path, resumed, straight)
