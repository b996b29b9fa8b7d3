"""Training killed at any moment loses at most the work since its last complete checkpoint, and
a resumed run ends with exactly the parameters of a run that was never stopped."""

import os
import signal
import subprocess
import sys
import time

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from ae_jax import checkpoints
from ae_jax import interruptions
from ae_jax import metric_writers
from ae_jax import train
from conftest import ROOT
from conftest import run_module
from conftest import small_config

# 3 epochs of 4 steps, one step per call: many places to be killed at. The DAE draws noise and
# dropout masks every step; the denoising VAE noise and latent samples.
FLAGS = ['--config.data.source=idx',
         f'--config.data.path={os.path.join(ROOT, "tests", "data", "mnist_small")}',
         '--config.data.train_split=train[:80]', '--config.batch_size=16',
         '--config.num_epochs=3', '--config.steps_per_call=1']
MODELS = {'dae': ['--config=configs/dae.py'],
          'vae': ['--config=configs/vae.py', '--config.noise.std=0.1']}


def _flags(name):
  return MODELS[name] + FLAGS


def _config(name='dae'):
  config = small_config(name if name == 'dae' else 'vae', num_train=64, batch_size=16,
                        num_epochs=3, steps_per_call=1)
  config.data.train_split = 'train[:80]'
  if name == 'vae':
    config.noise.std = 0.1
  return config


def _uninterrupted(tmp_path_factory, name):
  workdir = str(tmp_path_factory.mktemp('uninterrupted') / 'run')
  return workdir, train.train_and_evaluate(_config(name), workdir)


@pytest.fixture(scope='module')
def uninterrupted_run(tmp_path_factory):
  """The workdir and final train state of a run that was never stopped."""
  return _uninterrupted(tmp_path_factory, 'dae')


@pytest.fixture(scope='module')
def uninterrupted(uninterrupted_run):
  return uninterrupted_run[1]


def _final_state(workdir, name='dae'):
  config = _config(name)
  model = train.models.create_model(config, (28, 28, 1))
  state = jax.jit(lambda: train.create_train_state(model, train.create_optimizer(config), 0))()
  manager = checkpoints.create_manager(workdir, read_only=True)
  return checkpoints.restore_train_state(manager, manager.latest_step(), state,
                                         NamedSharding(train.create_mesh(), P()))


def _assert_same_state(a, b):
  assert int(a.step) == int(b.step) == 12
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def _start(workdir, marker, name='dae', **env):
  environment = {**os.environ, 'MARKER': str(marker), 'XLA_FLAGS': '', **env}
  return subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'train_worker.py'),
                           f'--workdir={workdir}', *_flags(name)], cwd=ROOT, env=environment,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(marker, predicate, process, timeout=120):
  start = time.time()
  while time.time() - start < timeout:
    lines = marker.read_text().split('\n') if marker.exists() else []
    if predicate(lines):
      return lines
    if process.poll() is not None:
      raise AssertionError(f'the run ended first:\n{process.stderr.read()[-2000:]}')
    time.sleep(0.05)
  raise AssertionError('timed out')


def _steps(lines):
  return [int(l.split()[1]) for l in lines if l.startswith('step ')]


def _finish(workdir, name='dae'):
  result = run_module('ae_jax.main', f'--workdir={workdir}', *_flags(name))
  assert result.returncode == 0, result.stderr[-2000:]
  return result


@pytest.mark.slow
@pytest.mark.parametrize('kill_after_step', [2, 6, 11])
def test_sigkill_during_an_epoch(tmp_path, uninterrupted, kill_after_step):
  workdir, marker = str(tmp_path / 'run'), tmp_path / 'marker'
  process = _start(workdir, marker, STEP_DELAY='0.3')
  _wait_for(marker, lambda l: _steps(l) and max(_steps(l)) >= kill_after_step, process)
  process.kill()
  process.wait()
  result = _finish(workdir)
  # epochs end at steps 4 and 8: the work since the last of them is redone, no more
  last_checkpoint = 4 * (kill_after_step // 4)
  if last_checkpoint:
    assert f'resumed from the checkpoint of step {last_checkpoint}' in result.stdout
  _assert_same_state(_final_state(workdir), uninterrupted)


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_being_written(tmp_path, uninterrupted):
  workdir, marker = str(tmp_path / 'run'), tmp_path / 'marker'
  process = _start(workdir, marker, PAUSE_IN_SAVE='2')  # the checkpoint of epoch 2 (step 8)
  _wait_for(marker, lambda l: 'paused' in l, process)
  folder = os.path.join(workdir, 'checkpoints')
  assert any('tmp' in name for name in os.listdir(folder))  # half-written, not committed
  process.kill()
  process.wait()
  result = _finish(workdir)
  assert 'resumed from the checkpoint of step 4' in result.stdout  # never the half-written 8
  assert not any('tmp' in name for name in os.listdir(folder))
  _assert_same_state(_final_state(workdir), uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_the_current_step_and_say_how_to_resume(
    tmp_path, uninterrupted_run, signum):
  uninterrupted_workdir, uninterrupted = uninterrupted_run
  workdir, marker = str(tmp_path / 'run'), tmp_path / 'marker'
  process = _start(workdir, marker, STEP_DELAY='0.3')
  _wait_for(marker, lambda l: _steps(l) and max(_steps(l)) >= 6, process)  # mid epoch 2
  process.send_signal(signum)
  time.sleep(0.5)
  process.send_signal(signum)  # impatient: a second one, while it saves, changes nothing
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == 128 + signum, stderr[-2000:]
  assert 'Traceback' not in stderr
  assert 'run the same command again to resume' in stderr
  assert 'tracked_metric' not in stderr  # orbax's warning of a save without a loss: meant
  step = checkpoints.create_manager(workdir, read_only=True).latest_step()
  assert step % 4 and step >= 6, step  # a mid-epoch checkpoint of the current step
  result = _finish(workdir)
  assert f'resumed from the checkpoint of step {step}' in result.stdout
  _assert_same_state(_final_state(workdir), uninterrupted)
  # the resumed epoch's train_loss averages all its steps, those before the resume too
  metrics = lambda w: metric_writers.read_metrics(os.path.join(w, 'metrics.jsonl'))
  assert [r['train_loss'] for r in metrics(workdir)] == pytest.approx(
      [r['train_loss'] for r in metrics(uninterrupted_workdir)], rel=1e-6)


def test_ctrl_c_twice_saves_the_step_training_reached_and_the_run_resumes_from_it(
    tmp_path, monkeypatch, uninterrupted):
  """Ctrl-C, then another while it saves, in the middle of epoch 2: the checkpoint is of the
  step training had reached, not of the epoch's start, and a resume ends as an uninterrupted
  run does."""
  logged = metric_writers.RunLog.train_numbers

  def ctrl_c_at_step_6(self, first_step, numbers):
    logged(self, first_step, numbers)
    if first_step == 6:
      signal.raise_signal(signal.SIGINT)
      signal.raise_signal(signal.SIGINT)

  monkeypatch.setattr(metric_writers.RunLog, 'train_numbers', ctrl_c_at_step_6)
  workdir = str(tmp_path / 'run')
  with pytest.raises(interruptions.Interrupted) as stopped:
    try:
      train.train_and_evaluate(_config(), workdir)
    except KeyboardInterrupt:
      pytest.fail('the second Ctrl-C stopped the run before it saved')
  step = checkpoints.create_manager(workdir, read_only=True).latest_step()
  assert step % 4 and step >= 6, step  # a mid-epoch checkpoint of the current step
  assert f'SIGINT: saved the checkpoint of step {step} ' in stopped.value.args[1]
  monkeypatch.undo()
  train.train_and_evaluate(_config(), workdir)
  _assert_same_state(_final_state(workdir), uninterrupted)


@pytest.fixture(scope='module')
def uninterrupted_vae(tmp_path_factory):
  return _uninterrupted(tmp_path_factory, 'vae')


@pytest.mark.slow
def test_a_vae_killed_and_stopped_mid_epoch_resumes_to_the_same_parameters(tmp_path,
                                                                        uninterrupted_vae):
  """Its latent samples, like the noise, are a function of the seed and the step."""
  uninterrupted_workdir, uninterrupted = uninterrupted_vae
  workdir, marker = str(tmp_path / 'run'), tmp_path / 'marker'
  process = _start(workdir, marker, 'vae', STEP_DELAY='0.3')
  _wait_for(marker, lambda l: _steps(l) and max(_steps(l)) >= 6, process)  # mid epoch 2
  process.kill()  # SIGKILL: resumes from the checkpoint of step 4
  process.wait()
  process = _start(workdir, marker, 'vae', STEP_DELAY='0.3')
  _wait_for(marker, lambda l: _steps(l).count(10) or max(_steps(l)) >= 10, process)
  process.send_signal(signal.SIGTERM)  # saves the current step, mid epoch 3
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
  step = checkpoints.create_manager(workdir, read_only=True).latest_step()
  assert step % 4 and step >= 9, step
  result = _finish(workdir, 'vae')
  assert f'resumed from the checkpoint of step {step}' in result.stdout
  _assert_same_state(_final_state(workdir, 'vae'), uninterrupted)
  rows = lambda w: metric_writers.read_metrics(os.path.join(w, 'metrics.jsonl'))
  for key in ('train_loss', 'val_loss', 'val_nelbo', 'val_kl'):
    assert [r[key] for r in rows(workdir)] == pytest.approx(
        [r[key] for r in rows(uninterrupted_workdir)], rel=1e-6), key


@pytest.mark.parametrize('after', [0.3, 1.5])  # the imports; the flags, data and compiling
def test_ctrl_c_while_a_command_starts_ends_it_in_one_line(tmp_path, after):
  """SIGINT during the imports, the flags or the data: one line, nothing written."""
  workdir = tmp_path / 'run'
  process = subprocess.Popen(
      [sys.executable, '-m', 'ae_jax.main', *_flags('dae'), f'--workdir={workdir}'], cwd=ROOT,
      env={**os.environ, 'XLA_FLAGS': ''}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  time.sleep(after)
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=120)
  if process.returncode == 0:
    pytest.skip(f'the run ended within {after} s')
  assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
  assert 'Traceback' not in stderr, stderr[-2000:]
  assert stderr.strip().splitlines()[-1].startswith('SIGINT: '), stderr[-2000:]


def _run_python(program: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', program], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)


def test_ctrl_c_outside_the_training_loop_is_one_line():
  """A KeyboardInterrupt anywhere in a command (a script's t-SNE, a study's scoring)."""
  program = ('from ae_jax import cli\n'
             'def main(argv):\n'
             '  raise KeyboardInterrupt\n'
             'cli.run(main)\n')
  result = _run_python(program)
  assert result.returncode == 128 + signal.SIGINT, result.stderr
  assert result.stderr.strip() == 'SIGINT: stopped before the command finished: run it again'


def test_a_run_stopped_after_its_checkpoint_exits_with_the_signals_code_in_one_line():
  """What the training loop raises once it saved (Interrupted): a scheduler or a shell reads
  128 + the signal's number, as for a process the signal ended."""
  program = ('import signal\n'
             'from ae_jax import cli, interruptions\n'
             'def main(argv):\n'
             "  raise interruptions.Interrupted(signal.SIGTERM, 'SIGTERM: saved the checkpoint')\n"
             'cli.run(main)\n')
  result = _run_python(program)
  assert result.returncode == 128 + signal.SIGTERM, result.stderr
  assert result.stderr.strip() == 'SIGTERM: saved the checkpoint' and not result.stdout


@pytest.fixture
def sigint_raises():
  """SIGINT as Python's default handler answers it, whatever the test runner set."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, previous)


def test_a_signal_too_late_for_the_loop_is_passed_on_not_forgotten(sigint_raises):
  """Ctrl-C during a run's last checkpoint: the run finishes, then the command (a study about to
  train its next member) stops."""
  finished = []
  with pytest.raises(KeyboardInterrupt):
    with interruptions.signals_deferred():
      with interruptions.signals_caught() as received:
        signal.raise_signal(signal.SIGINT)  # after the loop's last look at `received`
        assert received == [signal.SIGINT]
      signal.raise_signal(signal.SIGINT)  # while the checkpoints close: waits too
      finished.append(True)
  assert finished
  # an exception on its way out (the loop's Interrupted) is not replaced by the signal
  with pytest.raises(interruptions.Interrupted):
    with interruptions.signals_deferred():
      with interruptions.signals_caught():
        signal.raise_signal(signal.SIGINT)
        raise interruptions.Interrupted(signal.SIGINT, 'saved')


def test_a_sigterm_too_late_for_the_loop_ends_the_process_in_one_line():
  """SIGTERM during a study member's last checkpoint: the process ends as SIGTERM asks, saying so
  and what to do, not silently."""
  program = ('import signal\n'
             'from ae_jax import interruptions\n'
             'with interruptions.signals_deferred():\n'
             '  signal.raise_signal(signal.SIGTERM)\n'
             '  print("saved", flush=True)\n'
             'print("the next member")\n')
  result = _run_python(program)
  assert result.returncode == -signal.SIGTERM, result.stderr
  assert result.stdout == 'saved\n'
  assert result.stderr.strip() == ('SIGTERM: stopped after the run finished saving: run the '
                                   'command again to go on')


def test_a_resume_counts_the_partial_epoch_of_its_own_step_only(tmp_path):
  """The numbers saved with an interruption at step 3 are not those of a resume from step 1
  (step 3's checkpoint damaged, say): steps 2 and 3 run again and would count twice."""
  log = metric_writers.RunLog(str(tmp_path), 0)
  log.save_partial_epoch(3, {'loss': [0.5, 0.4, 0.3]})
  assert log.partial_epoch(3) == {'loss': [0.5, 0.4, 0.3]}
  assert log.partial_epoch(1) == {}
  log.close()
