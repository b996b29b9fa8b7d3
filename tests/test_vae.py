"""The variational autoencoders: their objective's terms, the importance-weighted bound, beta,
exact resume, evaluation and generation as users run them."""

import functools
import importlib.util
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import UserError
from ae_jax import evaluate
from ae_jax import generate
from ae_jax import input_pipeline
from ae_jax import metric_writers
from ae_jax import metrics
from ae_jax import models
from ae_jax import train
from conftest import MNIST_SMALL
from conftest import ROOT
from conftest import assert_one_line_error
from conftest import run_script
from conftest import save_untrained
from conftest import small_config

IMAGES = input_pipeline.read_idx(
    os.path.join(MNIST_SMALL, 'train-images-idx3-ubyte.gz'))[..., None]


@pytest.fixture(scope='module')
def trained_vae(tmp_path_factory):
  """(workdir, config) of the VAE trained for 4 epochs on 800 real digits."""
  config = small_config('vae', num_train=800, num_epochs=4)
  workdir = str(tmp_path_factory.mktemp('trained') / 'vae')
  train.train_and_evaluate(config, workdir)
  return workdir, config


def test_the_vae_has_the_shape_of_flax_example():
  config = small_config('vae')
  model = models.create_model(config, (28, 28, 1))
  variables = jax.jit(functools.partial(models.init_variables, model))(jax.random.PRNGKey(0))
  # Dense 784-500, two heads 500-20, Dense 20-500-784
  assert models.count_params(variables['params']) == (
      784 * 500 + 500 + 2 * (500 * 20 + 20) + 20 * 500 + 500 + 500 * 784 + 784)
  mean, logvar = model.apply(variables, jnp.zeros((3, 28, 28, 1)), method='encode')
  assert mean.shape == logvar.shape == (3, 20)


def test_the_vae_objective_and_gradients_are_flax_examples():
  """configs/vae.py is compared with flax's examples/vae code (benchmarks/flax_vae.py,
  docs/studies.md): given the same parameters and latent noise, its loss is that code's loss
  and its gradients that code's gradients, so that runs differ only by their random draws."""
  spec = importlib.util.spec_from_file_location(
      'flax_vae', os.path.join(ROOT, 'benchmarks', 'flax_vae.py'))
  flax_vae = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(flax_vae)
  model = models.create_model(small_config('vae'), (28, 28, 1))
  params = jax.jit(functools.partial(models.init_variables, model))(
      jax.random.PRNGKey(0))['params']
  renamed = flax_vae.from_ae_jax(params)
  images = metrics.to_float(jnp.asarray(IMAGES[:64]))
  rngs = {'latent': jax.random.PRNGKey(1)}
  zeros = jnp.zeros((64, 20))
  eps = model.apply({'params': params}, zeros, zeros, rngs=rngs, method='sample_latent')

  def ours(params):
    losses, _ = model.apply({'params': params}, images, images, train=True, rngs=rngs,
                            method='objective')
    return jnp.mean(losses)

  loss, grads = jax.jit(jax.value_and_grad(ours))(params)
  flax_example = functools.partial(flax_vae.loss_given_noise, x=images.reshape(64, 784),
                                   eps=eps)  # its train_step's loss_fn, this noise
  expected_loss, expected_grads = jax.jit(jax.value_and_grad(flax_example))(renamed)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
               flax_vae.from_ae_jax(grads), expected_grads)


def test_the_conv_vae_decodes_its_latent_to_the_image_shape():
  image_shape = (30, 30, 3)  # not a multiple of 4: decoded to 32 x 32 and cropped
  config = small_config('conv_vae', **{'model.features': (4, 8, 8, 16), 'model.latent_dim': 5,
                                       'model.conv': 'xla'})
  model = models.create_model(config, image_shape)
  options = models.compile_once_options(model)  # shapes are all this test needs
  variables = jax.jit(functools.partial(models.init_variables, model),
                      compiler_options=options)(jax.random.PRNGKey(0))
  reconstruction, mean = jax.jit(model.apply, compiler_options=options)(
      variables, jnp.zeros((2, *image_shape)))
  assert reconstruction.shape == (2, *image_shape) and mean.shape == (2, 5)


def test_the_closed_form_kl_is_the_monte_carlo_estimate():
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  mean = jax.random.normal(keys[0], (4, 6))
  logvar = jax.random.normal(keys[1], (4, 6)) * 0.5
  z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(keys[2], (200_000, 4, 6))
  log_q = models.objectives.gaussian_log_density(z, mean, logvar)
  log_p = models.objectives.gaussian_log_density(z, 0.0, jnp.zeros_like(z))
  monte_carlo = jnp.mean(log_q - log_p, axis=0)
  np.testing.assert_allclose(models.objectives.gaussian_kl(mean, logvar), monte_carlo, rtol=0.02)


def test_the_bernoulli_likelihood_is_the_binary_cross_entropy_in_nats():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 8, (5, 28, 28, 1))
  targets = rng.uniform(0, 1, (5, 28, 28, 1))
  p = 1 / (1 + np.exp(-logits))
  expected = -np.sum(targets * np.log(p) + (1 - targets) * np.log1p(-p), axis=(1, 2, 3))
  nll = models.objectives.bernoulli_nll(jnp.asarray(logits, jnp.float32),
                                        jnp.asarray(targets, jnp.float32))
  np.testing.assert_allclose(nll, expected, rtol=1e-5)
  # logits far past float32's sigmoid saturation stay finite and exact
  huge = jnp.array([[60.0, -60.0]])
  np.testing.assert_allclose(models.objectives.bernoulli_nll(huge, jnp.array([[0.0, 1.0]])),
                             [120.0], rtol=1e-6)


def test_the_importance_weighted_bound_is_below_the_elbo_and_falls_with_k(trained_vae):
  workdir, config = trained_vae
  run = evaluate.load_run(workdir, config, 'latest', 'test')
  nelbo = evaluate.evaluate(run, noisy=False)['nelbo']
  nll = {k: evaluate.importance_weighted_nll(run, k, 200)['iw_nll'] for k in (1, 10, 100)}
  # k=1 is the single-sample negative ELBO, an estimate of its expectation
  assert nll[1] == pytest.approx(nelbo, rel=0.02)
  assert nll[100] < nll[10] < nll[1] and nll[10] < nelbo
  # on fewer images than the split's, beside the -ELBO of the same images
  subset = evaluate.importance_weighted_nll(run, 10, 50)
  assert subset['iw_num_images'] == 50 and subset['iw_nll'] < subset['iw_images_nelbo']
  assert 'iw_images_nelbo' not in evaluate.importance_weighted_nll(run, 10, len(run.images))


def test_the_bound_of_fewer_images_takes_them_at_random_from_a_class_ordered_split(monkeypatch):
  """A split read from class folders lists its images class by class: the first 100 would be
  one class."""
  images = np.concatenate([np.zeros((500, 4, 4, 1), np.uint8),
                           np.full((500, 4, 4, 1), 255, np.uint8)])
  config = small_config('vae')
  run = evaluate.TrainedRun(config, models.create_model(config, images.shape[1:]), None, 0,
                            'test', images, None, None, {}, train.create_mesh())

  def chosen(num_images):
    seen = []
    monkeypatch.setattr(evaluate, '_evaluate_split', lambda run, eval_fn, images=None, **kwargs: (
        seen.append(np.asarray(images)) or {'iw_nll': 0.0, 'nelbo': 0.0}))
    assert evaluate.importance_weighted_nll(run, 10, num_images)['iw_num_images'] == len(seen[0])
    return seen[0]

  share = (chosen(100)[:, 0, 0, 0] == 255).mean()
  assert 0.3 < share < 0.7, share
  np.testing.assert_array_equal(chosen(100), chosen(100))  # the same images every time
  np.testing.assert_array_equal(chosen(5000), images)  # all where the split has no more


def test_the_elbo_beside_the_bound_of_fewer_images_is_that_of_the_same_images(monkeypatch):
  images = np.random.default_rng(0).integers(0, 256, (300, 4, 4, 1), np.uint8)
  config = small_config('vae')
  run = evaluate.TrainedRun(config, models.create_model(config, images.shape[1:]), None, 0,
                            'test', images, None, None, {}, train.create_mesh())
  seen = []
  monkeypatch.setattr(evaluate, '_evaluate_split', lambda run, eval_fn, images=None, **kwargs: (
      seen.append(np.asarray(run.images if images is None else images))
      or {'iw_nll': 0.0, 'nelbo': 0.0}))
  evaluate.importance_weighted_nll(run, 10, 100)
  bound, elbo = seen
  assert len(bound) == 100
  np.testing.assert_array_equal(elbo, bound)


def _reconstruction_mse(beta, tmp_path):
  config = small_config('vae', num_train=800, num_epochs=3, **{'model.beta': beta})
  train.train_and_evaluate(config, str(tmp_path / f'beta{beta}'))
  run = evaluate.load_run(str(tmp_path / f'beta{beta}'), config, 'latest', 'test')
  return evaluate.evaluate(run, noisy=False)


def test_beta_zero_reconstructs_at_least_as_well_as_beta_one(tmp_path):
  without_kl, vae = _reconstruction_mse(0.0, tmp_path), _reconstruction_mse(1.0, tmp_path)
  assert without_kl['mse'] <= vae['mse']
  assert without_kl['kl'] > vae['kl']  # nothing holds its posterior to the prior


def test_a_resumed_vae_ends_with_the_parameters_of_an_uninterrupted_one(tmp_path):
  kwargs = dict(num_train=128, batch_size=32, **{'noise.std': 0.1})
  straight = train.train_and_evaluate(small_config('vae', num_epochs=2, **kwargs),
                                      str(tmp_path / 'straight'))
  train.train_and_evaluate(small_config('vae', num_epochs=1, **kwargs), str(tmp_path / 'resumed'))
  resumed = train.train_and_evaluate(small_config('vae', num_epochs=2, **kwargs),
                                     str(tmp_path / 'resumed'))
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
    np.testing.assert_array_equal(a, b)


def test_training_logs_the_elbo_and_its_parts_and_draws_samples(trained_vae):
  workdir, _ = trained_vae
  rows = metric_writers.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert rows[0]['loss'] == 'nelbo'
  for row in rows:
    assert row['val_nelbo'] == pytest.approx(row['val_reconstruction'] + row['val_kl'])
    assert row['val_loss'] == row['val_nelbo'] and row['train_kl'] > 0
  assert rows[-1]['val_nelbo'] < rows[0]['val_nelbo']
  for figure in ('samples.png', 'reconstructions.png'):
    with open(os.path.join(workdir, figure), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_tensorboard_shows_the_parts_of_the_elbo_under_their_own_names(trained_vae):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  workdir, _ = trained_vae
  events = event_accumulator.EventAccumulator(workdir)
  events.Reload()
  rows = metric_writers.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  for name in ('nelbo', 'reconstruction', 'kl'):
    assert [e.value for e in events.Scalars(f'val/{name}')] == pytest.approx(
        [row[f'val_{name}'] for row in rows])


def test_eval_reports_the_elbo_its_parts_and_the_likelihood(trained_vae, tmp_path):
  workdir, config = trained_vae
  report = evaluate.main(workdir, config, 'best', 'test', num_examples=3, num_samples=50,
                         out_dir=str(tmp_path))
  clean = report['clean']
  assert clean['nelbo'] == pytest.approx(clean['reconstruction'] + clean['kl'])
  assert clean['iw_nll'] < clean['nelbo'] and clean['iw_num_samples'] == 50
  assert 0 < clean['mse'] < 0.1 and clean['psnr'] > 10
  with open(tmp_path / 'test.json') as f:
    assert json.load(f) == report


def test_evaluation_draws_are_the_runs_seeds(trained_vae):
  """eval.sh repeats a run's numbers exactly; runs of other seeds draw other latent samples, so
  that a study's mean over seeds averages the one-sample -ELBO's noise too."""
  workdir, config = trained_vae
  run = evaluate.load_run(workdir, config, 'best', 'test')
  first, again = evaluate.evaluate(run, noisy=False), evaluate.evaluate(run, noisy=False)
  other_config = config.copy_and_resolve_references()
  other_config.seed = config.seed + 1
  other = evaluate.evaluate(run._replace(config=other_config), noisy=False)
  assert first == again
  assert other['mse'] == pytest.approx(first['mse'])  # the posterior mean's: no draws
  assert other['nelbo'] != first['nelbo']


def test_generate_draws_samples_walks_and_the_grid_of_a_2d_latent(tmp_path):
  config = small_config('vae', num_train=256, **{'model.latent_dim': 2})
  workdir = str(tmp_path / 'vae2d')
  train.train_and_evaluate(config, workdir)
  written = generate.main(workdir, config, 'latest', 'test', None, '3,7', None, steps=6,
                          grid_size=5, seed=0)['figures']
  assert [os.path.basename(p) for p in written] == ['samples.png', 'walk.png', 'grid.png']
  run = evaluate.load_run(workdir, config, 'latest', 'test')
  rows = generate.walk_rows(run, '3,7', None, steps=6, seed=0)
  assert len(rows) == 1 + generate.WALK_PAIRS
  assert all(r.shape == (6, 28, 28, 1) for r in rows.values())
  grid, values = generate.prior_grid(run, 5)
  assert grid.shape == (5, 5, 28, 28, 1) and abs(values[2]) < 1e-6  # the prior's median


def test_the_same_seed_draws_the_same_samples_and_another_seed_others(tmp_path):
  config = small_config('vae')
  workdir = save_untrained(config, str(tmp_path / 'vae'))
  def samples(seed, name):
    generate.main(workdir, config, 'latest', 'test', 4, None, None, 2, 2, seed,
                  str(tmp_path / name))
    with open(tmp_path / name / 'samples.png', 'rb') as f:
      return f.read()
  first = samples(0, 'first')
  assert samples(0, 'again') == first
  assert samples(1, 'other') != first


def test_walks_work_for_the_ae_and_refuse_samples(trained_ae, tmp_path):
  workdir, config = trained_ae
  run = evaluate.load_run(workdir, config, 'best', 'test')
  rows = generate.walk_rows(run, None, '0,5', steps=4, seed=0)
  [walk] = rows.values()
  assert walk.shape == (4, 28, 28, 1)
  # the ends are the two images' reconstructions
  ends = np.asarray(run.model.apply(run.variables, metrics.to_float(run.images[[0, 5]]),
                                    method='reconstruct'))
  np.testing.assert_allclose(walk[[0, -1]], ends, atol=1e-5)
  with pytest.raises(UserError, match='the AE has no prior to sample from'):
    generate.main(workdir, config, 'best', 'test', 16, None, None, 4, 5, 0, str(tmp_path))


def test_a_walk_between_classes_ends_at_their_mean_latents_decoded(trained_ae):
  workdir, config = trained_ae
  run = evaluate.load_run(workdir, config, 'best', 'test')
  means = [run.model.apply(run.variables, metrics.to_float(run.images[run.labels == c]),
                           method='embed').mean(0) for c in (3, 7)]
  ends = run.model.apply(run.variables, jnp.stack(means), method='decode')
  rows = generate.walk_rows(run, '3,7', None, steps=3, seed=0)
  np.testing.assert_allclose(rows['3 → 7\nclass means'][[0, -1]], ends, atol=1e-5)


def test_the_2d_grid_has_z0_rising_to_the_right_and_z1_up_the_figure():
  # as plots.latent_grid's ticks say: row 0 at the top holds the largest z[1]
  config = small_config('vae', **{'model.latent_dim': 2})
  model = models.create_model(config, (28, 28, 1))
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  grid, values = generate.prior_grid(types.SimpleNamespace(model=model, variables=variables), 3)
  decode = lambda z0, z1: model.apply(variables, jnp.array([[z0, z1]]), method='decode')[0]
  np.testing.assert_allclose(grid[0, 2], decode(values[2], values[2]), atol=1e-5)  # top right
  np.testing.assert_allclose(grid[2, 0], decode(values[0], values[0]), atol=1e-5)  # bottom left


def test_a_walk_between_classes_compiles_the_encoder_once(trained_ae):
  """The class means and the pairs of a walk are embedded in batches of one size, padded: a
  class's last batch and a pair are batches of other sizes, each compiled again."""
  workdir, config = trained_ae
  run = evaluate.load_run(workdir, config, 'best', 'test')
  embed = generate._embedder(run)  # pylint: disable=protected-access
  compiled = []
  count = lambda event, _, **kwargs: compiled.append(event) if (
      event == '/jax/core/compile/backend_compile_duration') else None
  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    latents = [embed(run.images[:n]) for n in (len(run.images), 7, 2)]
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  assert len(compiled) == 1
  direct = run.model.apply(run.variables, metrics.to_float(run.images), method='embed')
  for got in latents:
    np.testing.assert_allclose(got, direct[:len(got)], atol=1e-6)


def test_a_walk_between_images_of_ones_own_named_by_their_files(trained_ae, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  workdir, config = trained_ae
  run = evaluate.load_run(workdir, config, 'best', 'test')
  folder = tmp_path / 'mine'
  (folder / 'sub').mkdir(parents=True)
  (folder / 'two').mkdir()
  for i, name in enumerate(['b.png', 'sub/a.png', 'two/a.png']):  # listed in this order
    Image.fromarray(run.images[i, ..., 0]).save(folder / name)
  mine = evaluate.given_images(evaluate.load_run(workdir, config, 'best', 'validation',
                                                 needs_data=False), str(folder))
  [(title, walk)] = generate.walk_rows(mine, None, 'b.png,sub/a.png', steps=4, seed=0).items()
  assert title == 'b\n→ sub/a'
  ends = np.asarray(run.model.apply(run.variables, metrics.to_float(run.images[[0, 1]]),
                                    method='reconstruct'))
  np.testing.assert_allclose(walk[[0, -1]], ends, atol=1e-5)
  with pytest.raises(UserError, match="'a.png' names 2 files, sub/a.png, two/a.png: give its "
                     'path'):
    generate.walk_rows(mine, None, 'a.png,1', steps=4, seed=0)
  with pytest.raises(UserError, match="'c.png' is not an image of --input=.*: give indices "
                     'from 0 to 2 or file names'):
    generate.walk_rows(mine, None, 'c.png,1', steps=4, seed=0)
  written = generate.main(workdir, config, 'best', None, None, None, '0,2', 4, 5, 0,
                          str(tmp_path / 'out'), input_path=str(folder))['figures']
  assert [os.path.basename(p) for p in written] == ['mine_walk.png']  # not the split's walk


@pytest.mark.parametrize('flags, message', [
    (['--walk=3,12'], "the test split has no label '12'; it has 0"),
    (['--walk=3'], "--walk='3': give two values separated by a comma"),
    (['--walk_images=0,100000'], "'100000' is not an image of the test split"),
    (['--walk=3,7', '--walk_images=0,1'], 'give --walk (two classes) or --walk_images'),
    (['--steps=1'], '--steps=1: a walk needs at least 2 points'),
])
def test_bad_walks_are_one_line_and_write_nothing(trained_vae, flags, message):
  workdir, _ = trained_vae
  before = sorted(os.listdir(workdir))
  assert_one_line_error(run_script('generate.sh', workdir, *flags), message)
  assert sorted(os.listdir(workdir)) == before


@pytest.mark.parametrize('seed', [-1, 2**31])
def test_a_seed_out_of_range_is_refused_before_the_run_is_read(tmp_path, seed):
  with pytest.raises(UserError, match=f'--seed={seed} must be a whole number from 0 to '
                     r'2\*\*31 - 1'):
    generate.main(str(tmp_path), None, 'best', None, None, None, None, 10, 15, seed)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('steps, grid_size, message', [
    (101, 15, r'--steps=101: a walk needs at least 2 points, and a row of more than 100 images'),
    (10, 101, '--grid_size=101: the grid needs from 2 to 100 points a side'),
])
def test_figures_too_fine_to_see_are_refused_before_the_run_is_read(tmp_path, steps, grid_size,
                                                                   message):
  with pytest.raises(UserError, match=message):
    generate.main(str(tmp_path), None, 'best', None, None, None, None, steps, grid_size, 0)
  assert os.listdir(tmp_path) == []


def test_a_walk_between_classes_of_unlabelled_data_asks_for_two_images(trained_vae, tmp_path):
  workdir, config = trained_vae
  run = evaluate.load_run(workdir, config, 'best', 'test')
  with pytest.raises(UserError, match='has no labels; walk between two of its images with '
                     '--walk_images=I,J'):
    generate.walk_rows(run._replace(labels=None), '3,7', None, 4, 0)


@pytest.mark.parametrize('overrides, message', [
    ({'model.beta': -1.0}, 'config.model.beta=-1.0 must be 0 or more'),
    ({'model.likelihood': 'poisson'}, "config.model.likelihood='poisson' is not one of: "
     'bernoulli, gaussian'),
    ({'model.dropout_rate': 0.3}, 'config.model.dropout_rate=0.3 is not used by the VAE'),
    ({'loss': 'bce'}, "config.loss='bce' is not used by the VAE"),
])
def test_bad_vae_fields_are_refused_before_anything_is_written(tmp_path, overrides, message):
  with pytest.raises(UserError, match=message.replace('(', r'\(').replace(')', r'\)')):
    train.train_and_evaluate(small_config('vae', **overrides), str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_a_kl_that_overflows_stops_with_the_divergence_hint(tmp_path):
  config = small_config('vae', num_train=64, batch_size=16, learning_rate=1e4)
  with pytest.raises(UserError, match=r'the loss became (nan|inf) at step \d+ .*training '
                     r'diverged. Lower config.learning_rate'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


@pytest.mark.parametrize('name', ['vae', 'conv_vae'])
def test_the_negative_elbo_falls_within_a_few_steps(name):
  overrides = {'model.features': (8, 16, 16, 32)} if name == 'conv_vae' else {}
  config = small_config(name, **overrides)
  model = models.create_model(config, IMAGES.shape[1:])
  tx = train.create_optimizer(config)
  state = jax.jit(functools.partial(train.create_train_state, model, tx, config.seed),
                  compiler_options=models.compile_once_options(model))()
  step_fn = functools.partial(train.train_step, model=model, tx=tx, noise_mean=0.0,
                              noise_std=0.0)
  run = jax.jit(functools.partial(train.train_loop, step_fn=step_fn))
  state, numbers = run(state, IMAGES, np.arange(320, dtype=np.int32).reshape(10, 32), 10)
  nelbo = np.asarray(numbers['nelbo'])
  assert np.isfinite(nelbo).all() and nelbo[-3:].mean() < 0.9 * nelbo[0], nelbo
  np.testing.assert_allclose(numbers['nelbo'], numbers['reconstruction'] + numbers['kl'],
                             rtol=1e-5)
  # means over the batch, as the loss is (beta 1: the loss is the negative ELBO)
  np.testing.assert_allclose(numbers['nelbo'], numbers['loss'], rtol=1e-5)


def test_the_gaussian_likelihood_is_the_unit_variance_normal_in_nats():
  from scipy import stats  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2, (5, 6, 7, 3))
  targets = rng.uniform(0, 1, (5, 6, 7, 3))
  expected = -stats.norm.logpdf(targets, 1 / (1 + np.exp(-logits))).sum(axis=(1, 2, 3))
  nll = models.objectives.gaussian_nll(jnp.asarray(logits, jnp.float32),
                                       jnp.asarray(targets, jnp.float32))
  np.testing.assert_allclose(nll, expected, rtol=1e-5)


def test_the_elbo_is_reported_unweighted_whatever_beta_trains():
  model = models.create_model(small_config('vae', **{'model.beta': 4.0}), (28, 28, 1))
  variables = jax.jit(functools.partial(models.init_variables, model))(jax.random.PRNGKey(0))
  images = metrics.to_float(jnp.asarray(IMAGES[:8]))
  loss, numbers = model.apply(variables, images, images, rngs={'latent': jax.random.PRNGKey(1)},
                              method='objective')
  assert model.loss_name == 'reconstruction + 4 kl' and (numbers['kl'] > 0.1).all()
  np.testing.assert_allclose(numbers['nelbo'], numbers['reconstruction'] + numbers['kl'],
                             rtol=1e-6)
  np.testing.assert_allclose(loss, numbers['reconstruction'] + 4 * numbers['kl'], rtol=1e-6)


def test_the_one_sample_bound_of_a_wide_posterior_is_its_negative_elbo():
  # every pixel's logit is 0 whatever z: p(x|z) = 2 ** -pixels, and q(z|x) = N(0.5, 4) in each
  # dimension, so a weight's expected -log is the negative ELBO, 16 log 2 + KL(q || p): the
  # samples must come from q itself, std exp(logvar / 2)
  model = models.create_model(small_config('vae'), (4, 4, 1))
  variables = jax.tree.map(jnp.zeros_like, jax.jit(functools.partial(
      models.init_variables, model))(jax.random.PRNGKey(0)))
  mean, logvar = jnp.full((1, 20), 0.5), jnp.full((1, 20), np.log(4.0))
  params = dict(variables['params'])
  params['encoder_mean'] = {**params['encoder_mean'], 'bias': mean[0]}
  params['encoder_logvar'] = {**params['encoder_logvar'], 'bias': logvar[0]}
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (2000, 4, 4, 1)), jnp.float32)
  nll = jax.jit(functools.partial(models.importance_weighted_nll, model, num_samples=1))(
      {**variables, 'params': params}, images, images, jax.random.PRNGKey(0))
  expected = 16 * np.log(2) + float(models.objectives.gaussian_kl(mean, logvar)[0])
  assert float(jnp.mean(nll)) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize('num_samples', [1, 10, 37])
def test_the_bound_is_exact_where_every_importance_weight_is_p_x(num_samples):
  # zero weights: q(z|x) is the prior N(0, I), and every pixel's logit is 0 whatever z, so
  # every weight p(x, z) / q(z|x) is p(x) = 2 ** -pixels; 1,000 images: chunks of 8 samples,
  # the last one part-filled
  model = models.create_model(small_config('vae'), (4, 4, 1))
  variables = jax.tree.map(jnp.zeros_like, jax.jit(functools.partial(
      models.init_variables, model))(jax.random.PRNGKey(0)))
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (1000, 4, 4, 1)), jnp.float32)
  nll = jax.jit(functools.partial(models.importance_weighted_nll, model,
                                  num_samples=num_samples))(
      variables, images, images, jax.random.PRNGKey(0))
  np.testing.assert_allclose(nll, 16 * np.log(2), rtol=1e-5)
