"""The training command as a user runs it: its errors are one line, and it resumes."""

import os
import time

import pytest

from conftest import MNIST_SMALL
from conftest import run_module

SMALL = ['--config.data.source=idx', f'--config.data.path={MNIST_SMALL}',
         '--config.data.train_split=train[:160]', '--config.batch_size=32']


def _train(workdir, *flags, config='configs/ae.py', **kwargs):
  return run_module('ae_jax.main', f'--config={config}', f'--workdir={workdir}', *flags, **kwargs)


def _assert_one_line_error(result, *fragments):
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize('flag, fragments', [
    ('--config.model.latnt_dim=3', ['no such config field', 'Did you mean "latent_dim"']),
    ('--config.model.latent_dim=abc', ['--config.model.latent_dim=abc', 'int()']),
    ('--config.model.name=VAE', ["config.model.name='VAE' is not one of: AE, CAE"]),
    ('--config.optimizer=adagrad', ['config.optimizer', 'adam, adamw, sgd']),
    ('--config.loss=l1', ['config.loss', 'mse, bce']),
    ('--config.data.source=csv', ['config.data.source', 'tfds, idx']),
])
def test_bad_config_is_one_clear_line(workdir, flag, fragments):
  _assert_one_line_error(_train(workdir, *SMALL, flag), *fragments)


def test_missing_config_file_is_one_clear_line(workdir):
  _assert_one_line_error(_train(workdir, config='configs/nope.py'), 'configs/nope.py')


def test_offline_mnist_fails_within_seconds_and_says_what_to_do(tmp_path):
  # A proxy on a closed loopback port: no network, whatever the machine has.
  offline = {'https_proxy': 'http://127.0.0.1:9', 'http_proxy': 'http://127.0.0.1:9',
             'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9'}
  start = time.time()
  result = _train(str(tmp_path / 'run'), f'--config.data.data_dir={tmp_path / "tfds"}',
                  env=offline, timeout=120)
  assert time.time() - start < 60  # start-up (TensorFlow) included; tfds alone takes minutes
  _assert_one_line_error(result, 'no network', 'train-images-idx3-ubyte.gz',
                         '--config.data.manual_dir', '--config.data.source=idx')


@pytest.mark.slow
def test_training_twice_in_one_workdir_resumes(workdir):
  first = _train(workdir, *SMALL, '--config.num_epochs=1')
  assert first.returncode == 0, first.stderr
  assert 'model AE: 419,120 parameters' in first.stdout
  assert 'epoch 1/1: train_loss' in first.stdout
  second = _train(workdir, *SMALL, '--config.num_epochs=2')
  assert second.returncode == 0, second.stderr
  assert 'resumed from the checkpoint of step 4' in second.stdout
  assert 'epoch 2/2: train_loss' in second.stdout and 'epoch 1/2' not in second.stdout
  assert 'epoch 2/2' in second.stderr  # the progress bar
  third = _train(workdir, *SMALL, '--config.num_epochs=2')
  assert 'nothing to train' in third.stdout
  assert sorted(os.listdir(workdir)) == sorted(
      ['checkpoints', 'config.json', 'loss_curve.png', 'metrics.jsonl'] +
      [f for f in os.listdir(workdir) if f.startswith('events.out.tfevents')])
