"""Bad values stop a run before any work with one line that names the field and what is allowed,
and leave the workdir as it was; divergence stops a run and keeps the last good checkpoint;
several processes train like one."""

import fcntl
import os
import re
import shutil

import numpy as np
import pytest

from ae_jax import UserError
from ae_jax import checkpoints
from ae_jax import config_lib
from ae_jax import grid
from ae_jax import metric_writers
from ae_jax import train
from conftest import MNIST_SMALL
from conftest import assert_one_line_error
from conftest import environment
from conftest import run_module
from conftest import run_script
from conftest import small_config


def _snapshot(workdir):
  """Every file under `workdir` with its size and modification time."""
  found = {}
  for folder, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(folder, name)
      stat = os.stat(path)
      found[path] = (stat.st_size, stat.st_mtime_ns)
  return found


@pytest.fixture(scope='module')
def previous_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('previous') / 'run')
  train.train_and_evaluate(small_config('ae', num_train=64, batch_size=16), workdir)
  return workdir


BAD_VALUES = [
    ({'batch_size': 0}, 'config.batch_size=0 must be at least 1'),
    ({'batch_size': 1000}, 'config.batch_size=1000 is larger than the 64 training images'),
    ({'num_epochs': 0}, 'config.num_epochs=0 must be at least 1'),
    ({'seed': 2**31}, 'config.seed=2147483648 must be a whole number from 0 to 2**31 - 1'),
    ({'model.latent_dim': 0}, 'config.model.latent_dim=0 must be at least 1'),
    ({'model.dropout_rate': 1.0}, 'config.model.dropout_rate=1.0 must be in [0, 1)'),
    ({'steps_per_call': 0}, 'config.steps_per_call=0 must be at least 1'),
    ({'noise.std': -0.1}, 'config.noise.std=-0.1 must be 0 or more, and finite'),
    ({'noise.std': float('nan')}, 'config.noise.std=nan must be 0 or more, and finite'),
    ({'learning_rate': float('inf')}, 'config.learning_rate=inf must be positive and finite'),
    ({'learning_rate': 0.0}, 'config.learning_rate=0.0 must be positive'),
    ({'learning_rate': -1e-3}, 'config.learning_rate=-0.001 must be positive'),
    ({'data.validation_fraction': 0.0}, 'validation_fraction=0.0 must be between 0 and 1'),
    ({'data.validation_fraction': 1.0}, 'validation_fraction=1.0 must be between 0 and 1'),
    ({'model.name': 'GAN'}, "config.model.name='GAN' is not one of: AE, CAE, VAE, ConvVAE"),
    ({'model.beta': 4.0}, 'config.model.beta=4.0 is not used by the AE (it is a field of VAE, ConvVAE)'),
    ({'model.name': 'VAE', 'model.beta': 1e300},
     'config.model.beta=1e+300 must be 0 or more, and finite in float32'),
    ({'dtype': 'float16'}, "config.dtype='float16' is not one of: float32, bfloat16"),
    ({'optimizer': 'adagrad'}, "config.optimizer='adagrad' is not one of: adam, adamw, sgd"),
    ({'loss': 'l1'}, "config.loss='l1' is not one of: mse, bce"),
    ({'data.source': 'csv'}, "config.data.source='csv' is not one of: tfds, idx, folder"),
    ({'parallel': 'pjit'}, "config.parallel='pjit' is not one of: jit, pmap"),
    # a forgotten config.data.source: the run would train on other images than those named
    ({'data.source': 'digits'}, "config.data.path='" + MNIST_SMALL + "' is not read by "
     "config.data.source='digits': set config.data.source=idx, folder or arrays too"),
    ({'data.manual_dir': '/data'}, "config.data.manual_dir='/data' is not read by "
     "config.data.source='idx': set config.data.source=tfds too, or leave"),
    ({'data.name': 'fashion_mnist'}, "config.data.name='fashion_mnist' is not read by "
     "config.data.source='idx': set config.data.source=tfds too, or leave"),
    ({'parallel': 'pmap', 'data.placement': 'host'},
     "config.parallel='pmap' keeps the data on the devices, not config.data.placement='host'"),
]


@pytest.mark.parametrize('overrides, message', BAD_VALUES)
def test_a_bad_value_is_refused_before_any_work(tmp_path, previous_run, overrides, message):
  config = lambda: small_config('ae', num_train=64, **{'batch_size': 16, **overrides})
  fresh = str(tmp_path / 'fresh')
  with pytest.raises(UserError, match=re.escape(message)):
    train.train_and_evaluate(config(), fresh)
  assert not os.path.exists(fresh)
  before = _snapshot(previous_run)
  with pytest.raises(UserError):
    train.train_and_evaluate(config(), previous_run)
  assert _snapshot(previous_run) == before


@pytest.mark.parametrize('where, built', [('configs/mine.py', True), ('the config file', False)])
def test_a_config_lacking_a_field_is_refused_before_any_work(tmp_path, where, built):
  config = small_config('ae', num_train=64)
  config.noise = {'std': 0.5}  # as --config.noise="{'std': 0.5}" replaces the section
  with pytest.raises(UserError, match=re.escape(
      "config.noise.mean is missing: set single fields on the command line "
      "(--config.noise.mean=...), not a whole section (--config.noise={...})")) as raised:
    config_lib.validate(config, where)
  assert ("build configs/mine.py on configs/default.py's get_config()" in str(raised.value)) == built
  with pytest.raises(UserError, match='is missing'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_a_workdir_that_cannot_be_written(tmp_path):
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(UserError, match='is a file, not a folder'):
    train.train_and_evaluate(small_config('ae'), str(tmp_path / 'a_file'))
  with pytest.raises(UserError, match=r'cannot write to the workdir .*choose another --workdir'):
    train.train_and_evaluate(small_config('ae'), str(tmp_path / 'a_file' / 'run'))
  # orbax would write checkpoints there that it cannot read, and the run would end as if well
  with pytest.raises(UserError, match=r'has a "\[" in its path.*choose another --workdir'):
    train.train_and_evaluate(small_config('ae'), str(tmp_path / 'run[1]'))
  assert not (tmp_path / 'run[1]').exists()


def test_a_second_training_of_the_same_workdir_is_refused(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  fd = os.open(workdir, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)  # as the first training holds it
    with pytest.raises(UserError, match=r'another process is training in .*run: let it finish '
                       'or stop it, or train elsewhere with --workdir'):
      train.train_and_evaluate(small_config('ae', num_train=64, num_epochs=1), str(workdir))
    assert not (workdir / 'checkpoints').exists() and not (workdir / 'metrics.jsonl').exists()
  finally:
    os.close(fd)
  train.train_and_evaluate(small_config('ae', num_train=64, num_epochs=1), str(workdir))
  assert (workdir / 'metrics.jsonl').exists()


def test_a_model_larger_than_memory_is_refused_before_any_is_allocated(tmp_path):
  config = small_config('ae')
  config.model.latent_dim = 10**10  # terabytes of parameters: no machine holds them
  with pytest.raises(UserError, match=r"the model AE has [\d,]+ parameters, which with their "
                     r"gradients and the optimizer's state need [\d,.]+ GiB, more than the "
                     r'[\d,.]+ GiB of the host.*: choose a smaller model \(config.model.\*\)'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


# the loss changes the units of the validation loss that ranks the checkpoints; the batch size
# and the training images the steps and epochs they count in (the classes kept or held out
# among them too); the seed the order of the data
@pytest.mark.parametrize('overrides', [{'noise.std': 0.1}, {'model.latent_dim': 16},
                                       {'optimizer': 'sgd'}, {'loss': 'bce'}, {'batch_size': 32},
                                       {'seed': 1}, {'data.validation_fraction': 0.5},
                                       {'data.train_split': 'train[:100]'},
                                       {'data.classes': '0,1'}, {'data.held_out_classes': '3'},
                                       {'data.source': 'digits', 'data.path': None}])
def test_a_workdir_of_another_run_is_refused_and_left_alone(previous_run, overrides):
  before = _snapshot(previous_run)
  with pytest.raises(UserError, match='holds another run.*delete .* to start afresh'):
    train.train_and_evaluate(small_config('ae', num_train=64, **{'batch_size': 16, **overrides}),
                             previous_run)
  assert _snapshot(previous_run) == before


def test_fewer_epochs_than_a_workdir_holds_are_refused_and_leave_it_alone(tmp_path):
  workdir = str(tmp_path / 'run')
  config = lambda epochs: small_config('ae', num_train=64, batch_size=16, num_epochs=epochs)
  train.train_and_evaluate(config(2), workdir)
  before = _snapshot(workdir)
  with pytest.raises(UserError, match=re.escape(
      'holds 2 epochs of training (step 8), more than config.num_epochs=1: give '
      'config.num_epochs=2 or more, or a new --workdir')):
    train.train_and_evaluate(config(1), workdir)
  assert _snapshot(workdir) == before  # config.json still says 2 epochs
  assert int(train.train_and_evaluate(config(2), workdir).step) == 8  # as many: nothing to train


def test_a_workdir_trains_on_with_a_new_learning_rate(previous_run, tmp_path):
  # the learning rate and the number of epochs are what a run resumed with more epochs changes
  workdir = str(tmp_path / 'run')
  shutil.copytree(previous_run, workdir)
  state = train.train_and_evaluate(small_config('ae', num_train=64, batch_size=16,
                                                learning_rate=1e-4, num_epochs=2), workdir)
  assert int(state.step) == 8
  rows = metric_writers.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['epoch'] for r in rows] == [1, 2]


def test_a_workdir_of_another_image_shape_is_refused_and_left_alone(previous_run):
  before = _snapshot(previous_run)
  with pytest.raises(UserError, match='does not fit this model.*image shape'):
    train.train_and_evaluate(small_config('ae', num_train=64, batch_size=16,
                                          **{'data.image_size': 20}), previous_run)
  assert _snapshot(previous_run) == before
  assert checkpoints.trained_image_shape(previous_run) == (28, 28, 1)


def test_a_workdir_of_another_number_of_images_is_refused_and_left_alone(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (100, 8, 8), np.uint8)
  for count in (80, 100):
    np.save(tmp_path / f'{count}.npy', images[:count])
  config = lambda count: small_config('ae', batch_size=16, **{
      'data.source': 'arrays', 'data.path': str(tmp_path / f'{count}.npy'),
      'data.train_split': 'train'})
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config(80), workdir)
  before = _snapshot(workdir)
  with pytest.raises(UserError, match=re.escape(
      'trained on 64 images; config.data gives 80: resume with the data it trained on')):
    train.train_and_evaluate(config(100), workdir)
  assert _snapshot(workdir) == before
  # with no checkpoint left (the folder's metadata stays), the other data starts afresh
  for step in os.listdir(checkpoints.checkpoint_dir(workdir)):
    if step.isdigit():
      shutil.rmtree(os.path.join(checkpoints.checkpoint_dir(workdir), step))
  train.train_and_evaluate(config(100), workdir)
  assert checkpoints.trained_num_images(workdir) == 80


def test_an_empty_value_on_the_command_line_unsets_a_field_of_the_config_file(tmp_path):
  # --config.data.path= after a config file that names a path, as configs/study_noise.py does
  config = small_config('ae', **{'data.source': 'digits', 'data.path': ''})
  config_lib.validate(config)  # no UserError: the path is unset, not unread
  config_lib.write_config(small_config('ae', **{'data.classes': ''}), str(tmp_path))
  config_lib.check_workdir(small_config('ae'), str(tmp_path))  # '' there, None here: the same


def test_how_the_convolutions_run_may_change_on_resume(tmp_path):
  config = small_config('cae')
  config_lib.write_config(config, str(tmp_path))
  config.model.conv = 'xla' if config.model.conv != 'xla' else 'matmul'
  config_lib.check_workdir(config, str(tmp_path))  # no UserError


def test_bad_values_on_the_command_line_are_one_line(tmp_path):
  result = run_module('ae_jax.main', '--config=configs/ae.py', f'--workdir={tmp_path / "run"}',
                      '--config.learning_rate=-1')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip() == 'error: config.learning_rate=-1.0 must be positive and finite'
  assert not os.path.exists(tmp_path / 'run')


def test_a_batch_the_devices_do_not_divide(tmp_path):
  result = run_module('ae_jax.main', '--config=configs/ae.py', f'--workdir={tmp_path / "run"}',
                      '--config.data.source=digits', '--config.batch_size=12', devices=8)
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert 'config.batch_size=12 is not divisible by the 8 devices: use a multiple of 8' in (
      result.stderr)
  assert not os.path.exists(tmp_path / 'run')


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / 'run')
  sane = small_config('ae', num_train=64, batch_size=16, optimizer='sgd', learning_rate=0.1)
  train.train_and_evaluate(sane, workdir)
  diverging = small_config('ae', num_train=64, batch_size=16, optimizer='sgd',
                           learning_rate=1e30, num_epochs=2)
  with pytest.raises(UserError, match=r'the loss became nan at step \d+ \(epoch 2\): training '
                     r'diverged. Lower config.learning_rate \(now 1e\+30\)'):
    train.train_and_evaluate(diverging, workdir)
  assert checkpoints.create_manager(workdir, read_only=True).latest_step() == 4
  assert len(metric_writers.read_metrics(os.path.join(workdir, 'metrics.jsonl'))) == 1
  with pytest.raises(UserError, match='the loss became nan .* no checkpoint was saved'):
    train.train_and_evaluate(diverging, str(tmp_path / 'fresh'))


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoint_restores_in_one(tmp_path):
  """Two processes of 4 CPU devices each against one of 8, on localhost."""
  import socket  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import ROOT  # pylint: disable=g-import-not-at-top
  flags = ['--config=configs/dae.py', '--config.data.source=idx',
           f'--config.data.path={MNIST_SMALL}', '--config.data.train_split=train[:320]',
           '--config.batch_size=32', '--config.num_epochs=2', '--config.steps_per_call=4']
  one = run_module('ae_jax.main', f'--workdir={tmp_path / "one"}', *flags, devices=8)
  assert one.returncode == 0, one.stderr[-2000:]
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = environment(4, None)
  processes = [subprocess.Popen(
      [sys.executable, '-m', 'ae_jax.main', f'--workdir={tmp_path / "two"}', *flags,
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (_, stderr) in zip(processes, outputs):
    assert p.returncode == 0, stderr[-2000:]
  assert '8 cpu device(s) in 2 processes' in outputs[0][0]
  assert 'data:' not in outputs[1][0] and 'epoch' not in outputs[1][0]  # process 0 alone reports
  rows = lambda d: metric_writers.read_metrics(str(tmp_path / d / 'metrics.jsonl'))
  for a, b in zip(rows('one'), rows('two')):
    assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-5)
    assert a['val_loss'] == pytest.approx(b['val_loss'], rel=1e-5)
  # the checkpoint of the two processes, read by one process with one device
  result = run_module('ae_jax.evaluate', f'--workdir={tmp_path / "two"}', '--split=validation')
  assert result.returncode == 0, result.stderr[-2000:]
  noisy_mse = float(next(l for l in result.stdout.splitlines() if l.startswith('noisy')).split()[1])
  assert noisy_mse == pytest.approx(rows('two')[-1]['val_loss'], abs=1e-5)


MISSPELT = ('from configs import quickstart\n\n\ndef get_config():\n'
            '  config = quickstart.get_config()\n  config.model.latnt_dim = 5\n  return config\n')


@pytest.mark.parametrize('module, flags', [('ae_jax.main', []), ('ae_jax.study', ['--seeds=0'])])
def test_a_misspelt_field_in_a_config_file_is_refused(tmp_path, module, flags):
  """A config file, unlike the command line, may add fields: one that nothing reads is a
  misspelling, and the run would train with the default instead."""
  config_file = tmp_path / 'mine.py'  # a config of one's own, outside configs/
  config_file.write_text(MISSPELT)
  result = run_module(module, f'--config={config_file}', f'--workdir={tmp_path / "run"}', *flags)
  assert_one_line_error(result, 'config.model.latnt_dim is not a config field',
                        'did you mean config.model.latent_dim?', str(config_file))
  assert sorted(os.listdir(tmp_path)) == ['mine.py']


def test_a_misspelt_field_in_a_study_config_axis_is_refused(tmp_path):
  config_file = tmp_path / 'mine.py'
  config_file.write_text(MISSPELT.replace('model.latnt_dim', 'noise.sdt'))
  with pytest.raises(UserError, match=r'config.noise.sdt is not a config field \(did you mean '
                     r'config.noise.std\?\): correct it in .*mine.py'):
    grid.parse_grid(small_config('ae'), [f'config=ae,{config_file}'])


def test_a_config_json_fills_missing_fields_and_refuses_unknown_ones(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  config = small_config('ae').to_dict()
  del config['model']['beta'], config['dtype']  # an older run's, before these fields
  (tmp_path / 'config.json').write_text(json.dumps(config))
  loaded = config_lib.load_config(str(tmp_path))
  assert loaded.model.beta == 1.0 and loaded.dtype == 'float32'
  assert loaded.data.path == MNIST_SMALL and loaded.batch_size == 32
  config['model']['latnt_dim'] = 5
  (tmp_path / 'config.json').write_text(json.dumps(config))
  with pytest.raises(UserError, match=f'config.model.latnt_dim is not a config field .*'
                     f'correct it in {tmp_path}/config.json'):
    config_lib.load_config(str(tmp_path))


def test_a_file_given_as_a_run_is_refused_as_no_run_folder(tmp_path):
  (tmp_path / 'config.json').write_text(small_config('ae').to_json())
  with pytest.raises(UserError, match=f"config.json is a file, not a run's folder: give the "
                     f'folder that holds it, {tmp_path}$'):
    config_lib.load_config(str(tmp_path / 'config.json'))


@pytest.mark.parametrize('field, default', [
    ('model.latent_dim', '32'), ('seed', '0'), ('learning_rate', '0.001'),
    ('data.train_split', "'train'"), ('data.grayscale', 'False'), ('data', None)])
def test_a_config_json_with_null_for_a_value_is_refused(tmp_path, field, default):
  import json  # pylint: disable=g-import-not-at-top
  config = small_config('ae').to_dict()
  assert config['data']['image_size'] is None  # a placeholder's null reads as its default
  *sections, key = field.split('.')
  node = config
  for section in sections:
    node = node[section]
  node[key] = None
  (tmp_path / 'config.json').write_text(json.dumps(config))
  fix = (f'put back its value (the default, in configs/default.py, is {default})' if default
         else 'put back its section (its fields and defaults are in configs/default.py)')
  with pytest.raises(UserError, match=re.escape(f'{tmp_path}/config.json: config.{field} is '
                                                f'null: {fix}')):
    config_lib.load_config(str(tmp_path))


@pytest.mark.parametrize('script', ['eval.sh', 'tsne.sh', 'generate.sh'])
def test_the_commands_that_read_a_run_refuse_an_unknown_field_of_its_config_json(tmp_path,
                                                                                 script):
  import json  # pylint: disable=g-import-not-at-top
  config = small_config('ae').to_dict()
  config['optimiser'] = 'sgd'
  (tmp_path / 'config.json').write_text(json.dumps(config))
  assert_one_line_error(run_script(script, str(tmp_path)), 'config.optimiser is not a config '
                        'field (did you mean config.optimizer?)')
  assert os.listdir(tmp_path) == ['config.json']
