"""Faults on the paths that write and read checkpoints and files: one line that names the path,
the reason and the fix; never a hang; the last good checkpoint stays; a damaged one costs only
its own epoch."""

import errno
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from ae_jax import UserError
from ae_jax import checkpoints
from ae_jax import config_lib
from ae_jax import evaluate
from ae_jax import metric_writers
from ae_jax import plots
from ae_jax import train
from conftest import ROOT
from conftest import assert_one_line_error
from conftest import environment
from conftest import run_module
from conftest import small_config
from conftest import small_disk

AS_ROOT = os.geteuid() == 0


def _config(**overrides):
  return small_config('ae', num_train=64, batch_size=16, **overrides)  # 4 steps an epoch


@pytest.fixture(scope='module')
def two_epochs(tmp_path_factory):
  """A finished run of 2 epochs: checkpoints of steps 4 and 8."""
  workdir = str(tmp_path_factory.mktemp('two') / 'run')
  train.train_and_evaluate(_config(num_epochs=2), workdir)
  return workdir


def _copy(run, tmp_path):
  copy = str(tmp_path / 'run')
  shutil.copytree(run, copy)
  return copy


def _damage(workdir, kind, step=8):
  folder = os.path.join(workdir, 'checkpoints', str(step))
  if kind == 'metrics truncated':
    os.truncate(os.path.join(folder, 'metrics', 'metrics'), 16)
  elif kind == 'data file deleted':
    for path in glob.glob(os.path.join(folder, 'variables', 'd', '*')):
      os.remove(path)
  elif kind == 'data file halved':
    for path in glob.glob(os.path.join(folder, 'variables', 'd', '*')):
      os.truncate(path, os.path.getsize(path) // 2)
  elif kind == 'manifest deleted':
    os.remove(os.path.join(folder, 'variables', 'manifest.ocdbt'))
  elif kind == 'variables deleted':  # orbax's error then names no file
    shutil.rmtree(os.path.join(folder, 'variables'))


DAMAGE = ['metrics truncated', 'data file deleted', 'data file halved', 'manifest deleted',
          'variables deleted']
SAYS = {'metrics truncated': 'is not valid JSON', 'data file deleted': 'a file is missing',
        'data file halved': 'a file is truncated', 'manifest deleted': 'a file is missing',
        'variables deleted': 'a file is missing'}


def test_checkpoints_are_ranked_by_the_validation_loss_that_training_logged(two_epochs):
  rows = metric_writers.read_metrics(os.path.join(two_epochs, 'metrics.jsonl'))
  ranked = {}
  for step in (4, 8):
    with open(os.path.join(two_epochs, 'checkpoints', str(step), 'metrics', 'metrics')) as f:
      ranked[step] = json.load(f)['val_loss']
  assert ranked == {r['step']: pytest.approx(r['val_loss'], rel=1e-6) for r in rows}


@pytest.mark.parametrize('kind', DAMAGE)
def test_a_damaged_checkpoint_costs_only_its_epoch(two_epochs, tmp_path, kind, capsys):
  workdir = _copy(two_epochs, tmp_path)
  _damage(workdir, kind)
  # evaluation: best and latest fall back on the newest that reads; an explicit step says why not
  config = config_lib.load_config(workdir)
  run = evaluate.load_run(workdir, config, 'best', 'validation')  # step 8 is the best
  assert run.step == 4
  assert ('the validation loss of the checkpoint of step 8 cannot be read' if kind ==
          'metrics truncated' else 'skipped the checkpoint of step 8: ') in capsys.readouterr().out
  if kind == 'metrics truncated':  # its weights read: --checkpoint=latest or 8 still work
    assert evaluate.load_run(workdir, config, '8', 'validation').step == 8
  else:
    with pytest.raises(UserError, match=f'the checkpoint of step 8 .* is damaged: .*{SAYS[kind]}'):
      evaluate.load_run(workdir, config, '8', 'validation')
  # training: resumes from step 4, sets step 8 aside, and trains on
  state = train.train_and_evaluate(_config(num_epochs=3), workdir)
  out = capsys.readouterr().out
  assert 'skipped the checkpoint of step 8: ' in out and SAYS[kind] in out
  assert 'resumed from the checkpoint of step 4' in out
  assert int(state.step) == 12
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '8.damaged'))
  assert {8, 12} <= set(checkpoints.create_manager(workdir, read_only=True).all_steps())


def test_a_resume_from_an_earlier_checkpoint_replaces_the_rows_of_the_work_lost(two_epochs,
                                                                                   tmp_path):
  workdir = _copy(two_epochs, tmp_path)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '8'))  # lost: the run resumes from step 4
  train.train_and_evaluate(_config(num_epochs=2), workdir)
  rows = metric_writers.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert [(r['epoch'], r['step']) for r in rows] == [(1, 4), (2, 8)]


def test_a_resumed_runs_loss_curve_shows_every_epoch_of_its_metrics(two_epochs, tmp_path):
  workdir = _copy(two_epochs, tmp_path)
  train.train_and_evaluate(_config(num_epochs=3), workdir)  # resumes from step 8
  rows = metric_writers.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['epoch'] for r in rows] == [1, 2, 3]
  plots.loss_curve(rows, str(tmp_path / 'all_rows.png'))
  with open(os.path.join(workdir, 'loss_curve.png'), 'rb') as f, open(
      tmp_path / 'all_rows.png', 'rb') as g:
    assert f.read() == g.read()


def test_orbax_reads_collected_after_a_damaged_checkpoint_are_not_shown():
  """After one read of a damaged checkpoint fails, orbax's other reads of it raise as their
  coroutines are collected (Python prints 'Exception ignored in: <coroutine ...>' with a
  TensorStore dump, at times hundreds of lines); the damage is already named in one line."""
  import types  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.serialization import serialization  # pylint: disable=g-import-not-at-top,line-too-long
  from ae_jax import cli  # pylint: disable=g-import-not-at-top
  shown = []
  hook = cli._quiet_unraisablehook(shown.append)  # pylint: disable=protected-access
  orbax_read = serialization._read_array_index_and_device_put  # pylint: disable=protected-access
  code = orbax_read.__code__
  names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
  coroutine = orbax_read(**dict.fromkeys(names))  # created, never run
  ours = (lambda: (yield))()
  try:
    hook(types.SimpleNamespace(exc_value=Exception('reading array index'), object=coroutine))
    hook(types.SimpleNamespace(exc_value=RuntimeError('Event loop is closed'), object=None))
    other = types.SimpleNamespace(exc_value=ValueError('a bug of ours'), object=ours)
    hook(other)
  finally:
    coroutine.close()
  assert shown == [other]


def test_best_reads_an_intact_checkpoint_whose_metrics_alone_are_damaged(two_epochs, tmp_path,
                                                                        capsys):
  workdir = _copy(two_epochs, tmp_path)
  _damage(workdir, 'metrics truncated', step=8)
  _damage(workdir, 'data file deleted', step=4)  # the only ranked checkpoint does not read
  run = evaluate.load_run(workdir, config_lib.load_config(workdir), 'best', 'validation')
  assert run.step == 8
  out = capsys.readouterr().out
  assert 'the validation loss of the checkpoint of step 8 cannot be read' in out
  assert '--checkpoint=8 reads its weights' in out and 'skipped the checkpoint of step 4' in out


def test_a_bug_while_reading_is_not_called_damage(two_epochs, tmp_path, monkeypatch):
  workdir = _copy(two_epochs, tmp_path)

  def buggy(*args, **kwargs):
    raise TypeError('a bug of ours')
  monkeypatch.setattr(checkpoints.ocp.StandardCheckpointHandler, 'restore', buggy)
  with pytest.raises(TypeError, match='a bug of ours'):
    evaluate.load_run(workdir, config_lib.load_config(workdir), 'latest', 'validation')


def test_a_failed_event_write_names_the_workdir(tmp_path, monkeypatch):
  from ae_jax import metric_writers  # pylint: disable=g-import-not-at-top
  def disk_full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a flush reports it: no file
  monkeypatch.setattr(metric_writers.SummaryWriter, 'scalar', disk_full)
  workdir = str(tmp_path / 'run')
  with pytest.raises(UserError, match=f'cannot write the metrics, figures or TensorBoard events '
                                      f'to {workdir}: No space left on device; free some space'):
    train.train_and_evaluate(_config(num_epochs=2), workdir)


def test_a_failed_figure_write_stops_training_with_one_clear_error(tmp_path, monkeypatch):
  def disk_full(rows, path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
  monkeypatch.setattr(plots, 'loss_curve', disk_full)
  workdir = str(tmp_path / 'run')
  with pytest.raises(UserError, match=r'cannot write .*loss_curve.png: No space left on device; '
                                      'free some space.*then run the same command again: it '
                                      'resumes from the checkpoint of step'):
    train.train_and_evaluate(_config(num_epochs=3), workdir)
  monkeypatch.undo()
  state = train.train_and_evaluate(_config(num_epochs=3), workdir)  # the same command resumes
  assert int(state.step) == 12


def test_a_config_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch):
  def disk_full(src, dst):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)
  monkeypatch.setattr(os, 'replace', disk_full)
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match='cannot write the config to .*config.json: No space left'):
    config_lib.write_config(_config(), str(workdir))
  assert os.listdir(workdir) == []


def _flags_of_a_third_epoch(workdir):
  """ae_jax.main's flags for the run of `two_epochs` (copied to `workdir`) and one more epoch."""
  return [f'--workdir={workdir}', '--config=configs/ae.py', '--config.data.source=idx',
          f'--config.data.path={ROOT}/tests/data/mnist_small', '--config.data.train_split=train[:80]',
          '--config.batch_size=16', '--config.num_epochs=3', '--config.steps_per_call=4']


def _chattr(flag, path):
  subprocess.run(['chattr', flag, path], check=True)


@pytest.mark.skipif(not AS_ROOT or not shutil.which('chattr'), reason='chattr needs root')
def test_a_checkpoint_folder_that_cannot_be_written_stops_the_run_at_once(two_epochs, tmp_path):
  workdir = _copy(two_epochs, tmp_path)
  folder = os.path.join(workdir, 'checkpoints')
  flags = _flags_of_a_third_epoch(workdir)
  try:
    _chattr('+i', folder)
    result = run_module('ae_jax.main', *flags, timeout=120)  # it used to hang forever
  except OSError:
    pytest.skip('this filesystem has no immutable flag')
  finally:
    _chattr('-i', folder)
  assert_one_line_error(result, f'cannot write the checkpoint of step 12 to {folder}/12.orbax',
                        'Operation not permitted', 'chattr -i',
                        'resumes from the checkpoint of step 8')
  result = run_module('ae_jax.main', *flags)
  assert result.returncode == 0, result.stderr
  assert 'resumed from the checkpoint of step 8' in result.stdout


@pytest.mark.skipif(not AS_ROOT or not shutil.which('chattr'), reason='chattr needs root')
def test_a_run_from_before_the_image_shape_resumes_or_says_why_not(two_epochs, tmp_path):
  workdir = _copy(two_epochs, tmp_path)
  folder = os.path.join(workdir, 'checkpoints')
  shutil.rmtree(os.path.join(folder, 'metadata'))  # trained before checkpoints recorded it
  assert checkpoints.trained_image_shape(workdir) is None
  flags = _flags_of_a_third_epoch(workdir)
  try:
    _chattr('+i', folder)
    result = run_module('ae_jax.main', *flags, timeout=120)
  finally:
    _chattr('-i', folder)
  assert_one_line_error(result, f'cannot write the checkpoints to {folder}/metadata',
                        'Operation not permitted', 'chattr -i')
  result = run_module('ae_jax.main', *flags)
  assert result.returncode == 0, result.stderr
  assert 'resumed from the checkpoint of step 8' in result.stdout
  assert checkpoints.trained_image_shape(workdir) == (28, 28, 1)


def test_a_fresh_start_at_another_image_size_records_it(tmp_path):
  workdir = str(tmp_path / 'run')
  with checkpoints.create_manager(workdir, image_shape=(20, 20, 1)):
    pass  # a run at 20x20 stopped before its first checkpoint
  assert checkpoints.trained_image_shape(workdir) == (20, 20, 1)
  train.train_and_evaluate(_config(num_epochs=1), workdir)
  assert checkpoints.trained_image_shape(workdir) == (28, 28, 1)


def test_the_recorded_image_shape_keeps_its_height_width_and_channels(tmp_path):
  # evaluation reads images of one's own as this shape: colour stays colour, non-square stays so
  workdir = str(tmp_path / 'run')
  with checkpoints.create_manager(workdir, image_shape=(20, 24, 3)):
    pass
  assert checkpoints.trained_image_shape(workdir) == (20, 24, 3)


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
  with small_disk(tmp_path / 'disk', '5m') as disk:
    workdir = str(disk / 'run')
    # 3.3 MB a checkpoint: the second does not fit beside the first
    flags = [f'--config={ROOT}/configs/quickstart.py', f'--workdir={workdir}',
             '--config.model.hidden_dim=2048', '--config.num_epochs=4']
    result = run_module('ae_jax.main', *flags, timeout=180)
    assert_one_line_error(result, 'No space left on device', 'free some space',
                          'resumes from the checkpoint of step 22')
    # the last complete one, beside orbax's metadata; nothing of the failed one left
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['22', 'metadata']
    report = evaluate.main(workdir, config_lib.load_config(workdir), 'latest', 'validation', 2,
                           out_dir=str(tmp_path / 'eval'))
    assert report['checkpoint_step'] == 22


def test_a_save_without_a_validation_loss_logs_no_warning(tmp_path, caplog):
  """A save at a signal, mid-epoch, has no validation loss to rank it by: meant, not a warning."""
  import functools  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from ae_jax import models  # pylint: disable=g-import-not-at-top
  config = small_config('ae')
  model = models.create_model(config, (28, 28, 1))
  state = jax.jit(functools.partial(train.create_train_state, model,
                                    train.create_optimizer(config), config.seed))()
  caplog.set_level(logging.WARNING)
  with checkpoints.create_manager(str(tmp_path)) as manager:
    checkpoints.save(manager, state)
    checkpoints.wait(manager)
    assert manager.all_steps() == [0]
  assert 'tracked_metric' not in caplog.text, caplog.text
  # a run saved without the image shape (before checkpoints recorded it) reads data as it is
  assert checkpoints.trained_image_shape(str(tmp_path)) is None


def _small_state():
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from ae_jax import models  # pylint: disable=g-import-not-at-top
  config = small_config('ae', **{'model.hidden_dim': 4, 'model.latent_dim': 2})
  model = models.create_model(config, (8, 8, 1))
  return jax.jit(functools.partial(train.create_train_state, model,
                                   train.create_optimizer(config), config.seed))()


def _kept(folder, val_losses) -> tuple[list[int], int | None]:
  """(the steps kept, the best) after saving a small state at steps 1, 2, ... with these
  validation losses (None: a save at a signal, mid-epoch)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  state = _small_state()
  with checkpoints.create_manager(folder) as manager:
    for step, val_loss in enumerate(val_losses, start=1):
      checkpoints.save(manager, state.replace(step=jnp.asarray(step, jnp.int32)), val_loss)
      checkpoints.wait(manager)
    return manager.all_steps(), manager.best_step()


def test_the_best_checkpoint_is_kept_however_old(tmp_path):
  """A run keeps its two latest checkpoints and its best, which 'best' (eval.sh, the study)
  reads: the best of an early epoch is not deleted when later epochs are worse."""
  assert _kept(str(tmp_path), [3.0, 1.0, 2.0, 4.0, 5.0]) == ([2, 4, 5], 2)


def test_a_checkpoint_saved_mid_epoch_goes_once_two_newer_are_saved(tmp_path):
  """The checkpoint of an interrupted run (saved without a validation loss) is only ever the
  latest: it is not kept for good, as the best is."""
  assert _kept(str(tmp_path), [3.0, None, 1.0, 2.0]) == ([3, 4], 3)


def test_best_of_a_run_with_no_ranked_checkpoint_says_it_reads_the_newest(tmp_path, capsys):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  state = _small_state()  # saved at a signal in the first epoch: no validation loss
  with checkpoints.create_manager(str(tmp_path)) as manager:
    checkpoints.save(manager, state.replace(step=jnp.asarray(6, jnp.int32)))
    checkpoints.wait(manager)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  assert checkpoints.restore_variables(str(tmp_path), 'best', variables, None)[0] == 6
  assert capsys.readouterr().out == ('no checkpoint ranked by validation loss reads: '
                                     '--checkpoint=best reads the newest, of step 6\n')


# Saves a train state replicated over 8 simulated devices, restores it, and prints how many
# programs the save compiled and whether the restored state is the saved one.
_SAVE_ON_EIGHT_DEVICES = '''
import functools, sys
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from ae_jax import checkpoints, models, train
from configs import quickstart
config = quickstart.get_config()
mesh = train.create_mesh()
replicated = NamedSharding(mesh, P())
model, tx = models.create_model(config, (8, 8, 1)), train.create_optimizer(config)
state = jax.jit(functools.partial(train.create_train_state, model, tx, 0),
                out_shardings=replicated)()
compiled = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, _, **kw: compiled.append(event)
    if event == '/jax/core/compile/backend_compile_duration' else None)
with checkpoints.managed(sys.argv[1]) as manager:
  checkpoints.save(manager, state, 1.0)
  checkpoints.wait(manager)
  saving = len(compiled)
  restored = checkpoints.restore_latest(manager, state, replicated)
same = all(np.array_equal(a, b) and b.sharding == replicated
           for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)))
print(saving, same)
'''


def test_saving_a_replicated_state_compiles_nothing(tmp_path):
  """Orbax writes an array with several replicas a slice per device, each slice made by a
  program compiled for its shape and device; one process saves one copy of each instead."""
  result = subprocess.run([sys.executable, '-c', _SAVE_ON_EIGHT_DEVICES, str(tmp_path / 'run')],
                          cwd=ROOT, env=environment(8, None), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ['0', 'True']
