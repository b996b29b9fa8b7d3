"""A grid of runs over settings and seeds: every member an ordinary run, trained by
train.train_and_evaluate, scored, and tabulated; a second start retrains nothing."""

import csv
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ae_jax import UserError
from ae_jax import config_lib
from ae_jax import grid
from ae_jax import study
from ae_jax import train
from conftest import ROOT
from conftest import assert_one_line_error
from conftest import small_config


def _config():
  config = small_config('ae', num_train=128, batch_size=32, num_epochs=2)
  config.data.test_split = 'test'
  return config


@pytest.mark.parametrize('specs, message', [
    (['noise.sdt=0,0.1'], 'no such config field: noise.sdt'),
    (['noise.std=0,abc'], "'abc' is not a float"),
    (['model.latent_dim=8,1.5'], "'1.5' is not a int"),
    (['noise.std'], 'write FIELD=VALUE,VALUE'),
    (['batch_size='], 'has an empty value'),
    (['data.name=mnist,'], 'has an empty value'),
    (['config=ae,'], 'has an empty value'),
    (['noise.std=0,0'], 'names a value twice'),
    (['seed=0,1'], '--seeds=0,1,2'),
    (['model.features=8,16'], 'cannot vary config.model.features, a tuple: write a config file'),
    (['model=1'], r'cannot vary config.model, a section: vary one of its fields \(.*latent_dim'),
])
def test_a_bad_grid_is_one_clear_error(specs, message):
  with pytest.raises(UserError, match=message):
    grid.parse_grid(_config(), specs)


def test_a_member_the_config_checks_refuse_is_named_with_the_fix_for_a_grid():
  config = small_config('vae')  # hidden_dim 500, which the CAE does not read
  with pytest.raises(UserError, match=re.escape(
      'member model.name=CAE_seed=0: config.model.hidden_dim=500 is not used by the CAE') +
      r'.*; to vary models whose fields differ, vary their config files: --grid=config=NAME,NAME$'):
    grid.members(config, grid.parse_grid(config, ['model.name=VAE,CAE']), [0])


def test_too_few_points_for_the_studys_maps_are_refused_without_a_flag_it_lacks(tmp_path):
  with pytest.raises(UserError, match=r'--num_points=5 is too few: .* use 31 or more$'):
    study.main(_config(), str(tmp_path / 'study'), ['model.latent_dim=2,3'], '0', 5, False)
  assert not (tmp_path / 'study').exists()


def test_a_bool_axis_reads_false_as_false():
  assert grid.parse_grid(_config(), ['data.grayscale=false,true']) == [
      ('data.grayscale', [False, True])]


def test_the_command_lines_config_fields_apply_to_each_config_of_a_config_axis():
  axes = grid.parse_grid(_config(), ['config=ae,dae'])
  found = grid.members(_config(), axes, [0], overrides=['num_epochs=3', 'model.latent_dim=8'])
  assert [(c.model.name, c.num_epochs, c.model.latent_dim) for _, _, c in found] == [
      ('AE', 3, 8), ('AE', 3, 8)]


def test_members_are_the_product_of_the_axes_and_the_seeds():
  axes = grid.parse_grid(_config(), ['noise.std=0,0.1', 'model.latent_dim=8,16'])
  found = grid.members(_config(), axes, [0, 1])
  assert len(found) == 8
  name, settings, config = found[3]
  assert name == 'noise.std=0.0_model.latent_dim=16_seed=1'
  assert settings == {'noise.std': 0.0, 'model.latent_dim': 16}
  assert config.noise.std == 0.0 and config.model.latent_dim == 16 and config.seed == 1
  with pytest.raises(UserError, match='config.model.latent_dim=0 must be at least 1'):
    grid.members(_config(), grid.parse_grid(_config(), ['model.latent_dim=0,8']), [0])
  # split slices name folders without '[', under which orbax's checkpoints cannot be read
  slices = grid.parse_grid(_config(), ['data.train_split=train[:50%],train[:100%]'])
  assert [name for name, _, _ in grid.members(_config(), slices, [0])] == [
      'data.train_split=train(:50%)_seed=0', 'data.train_split=train(:100%)_seed=0']


@pytest.mark.parametrize('spec, first, second, folder', [
    ('data.path=a/b,a_b', 'a/b', 'a_b', 'a_b'),
    ('data.train_split=tr ain,train', 'tr ain', 'train', 'train'),
])
def test_grid_values_that_name_one_member_folder_are_refused(spec, first, second, folder):
  field = spec.partition('=')[0]
  axes = grid.parse_grid(_config(), ['noise.std=0,0.1', spec])
  with pytest.raises(UserError, match=re.escape(
      f'--grid: {field}={first} and {field}={second} name one member folder, '
      f'noise.std=0.0_{field}={folder}_seed=1')):
    grid.members(_config(), axes, [1])


def test_a_study_trains_scores_tabulates_and_a_second_start_retrains_nothing(tmp_path,
                                                                             monkeypatch):
  workdir = str(tmp_path / 'study')
  axes = grid.parse_grid(_config(), ['noise.std=0,0.3'])
  rows = study.run_study(_config(), workdir, axes, [0, 1], num_points=60)
  with open(os.path.join(workdir, 'results.csv')) as f:
    table = list(csv.DictReader(f))
  assert len(table) == 4 and [r['seed'] for r in table] == ['0', '1', '0', '1']
  assert all(0 < float(r['knn_accuracy']) <= 1 and float(r['clean_mse']) > 0 for r in table)
  assert table[2]['noisy_mse'] and not table[0]['noisy_mse']  # denoising members only
  assert table[0]['split'] == 'test'
  with open(os.path.join(workdir, 'results.md')) as f:
    markdown = f.read()
  assert markdown.count('\n') == 4 and '**' in markdown and ' ± ' in markdown
  for figure in ('knn_accuracy.png', 'clean_mse.png', 'reconstructions.png'):
    assert os.path.getsize(os.path.join(workdir, figure)) > 1000
  # each member is an ordinary run, with its settings and numbers in TensorBoard's HParams
  member = os.path.join(workdir, 'noise.std=0.3_seed=1')
  assert {'checkpoints', 'config.json', 'metrics.jsonl'} <= set(os.listdir(member))
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(member)
  events.Reload()
  assert '_hparams_/session_start_info' in events.Tags()['tensors']
  assert 'study/knn_accuracy' in events.Tags()['scalars']

  def must_not_train(*args, **kwargs):
    raise AssertionError('a scored member was trained again')
  monkeypatch.setattr(train, 'train_and_evaluate', must_not_train)
  assert study.run_study(_config(), workdir, axes, [0, 1], num_points=60) == rows
  # a score stands only for the map it was scored with: other points, method, or a map asked for
  _, _, config = grid.members(_config(), axes, [1])[1]
  assert study.score_of(member, config, study.scoring(60, 'tsne')) == rows[3]
  assert study.score_of(member, config, study.scoring(70, 'tsne')) is None
  assert study.score_of(member, config, study.scoring(60, 'umap')) is None
  assert study.score_of(member, config, study.scoring(60, 'tsne'), draw_map=True) is None
  # a config.json from before a field existed reads as that field's default: the score stands
  with open(os.path.join(member, 'config.json')) as f:
    saved = json.load(f)
  assert saved.pop('dtype') == 'float32'
  with open(os.path.join(member, 'config.json'), 'w') as f:
    json.dump(saved, f)
  assert study.score_of(member, config, study.scoring(60, 'tsne')) == rows[3]
  config.model.latent_dim += 1
  assert study.score_of(member, config, study.scoring(60, 'tsne')) is None


@pytest.mark.slow  # three studies
def test_a_member_scored_with_other_settings_trains_on_and_is_scored_again(tmp_path, monkeypatch,
                                                                           capsys):
  workdir = str(tmp_path / 'study')
  axes = grid.parse_grid(_config(), ['model.latent_dim=8'])
  first = study.run_study(_config(), workdir, axes, [0], num_points=60)
  longer = _config()
  longer.num_epochs = 3
  capsys.readouterr()
  rows = study.run_study(longer, workdir, axes, [0], num_points=60)
  assert 'trains on and is scored again' in capsys.readouterr().out
  assert rows[0]['checkpoint_step'] > first[0]['checkpoint_step']
  with open(os.path.join(workdir, 'results.csv')) as f:
    assert [int(r['checkpoint_step']) for r in csv.DictReader(f)] == [rows[0]['checkpoint_step']]
  with open(os.path.join(workdir, 'model.latent_dim=8_seed=0', study.SCORE_FILE), 'w') as f:
    f.write('{"mse": 0.0')  # cut short
  rescored = study.run_study(longer, workdir, axes, [0], num_points=60)
  assert rescored[0]['checkpoint_step'] == rows[0]['checkpoint_step']
  rows = rescored

  def must_not_train(*args, **kwargs):
    raise AssertionError('a member scored with these settings was trained again')
  monkeypatch.setattr(train, 'train_and_evaluate', must_not_train)
  assert study.run_study(longer, workdir, axes, [0], num_points=60) == rows


def test_a_member_that_diverges_is_left_out_and_the_study_goes_on(tmp_path, capsys):
  workdir = str(tmp_path / 'study')
  axes = grid.parse_grid(_config(), ['learning_rate=1e30,0.001'])
  rows = study.run_study(_config(), workdir, axes, [0], num_points=60)
  assert [r['config.learning_rate'] for r in rows] == [0.001]
  out = capsys.readouterr().out
  assert re.search(r'learning_rate=1e\+30_seed=0: the loss became (nan|inf) at step \d+ .*; it '
                   'is left out of the results', out)
  assert '1 diverged, left out: learning_rate=1e+30_seed=0' in out
  with open(os.path.join(workdir, 'results.md')) as f:
    assert f.read().endswith('\nDiverged, left out: learning_rate=1e+30_seed=0.\n')
  with pytest.raises(UserError, match='every member diverged'):
    study.run_study(_config(), str(tmp_path / 'all'), grid.parse_grid(
        _config(), ['learning_rate=1e30']), [0], num_points=60)


def test_a_full_disk_leaves_no_damaged_reconstructions_and_a_damaged_one_stops_nothing(
    tmp_path, monkeypatch, capsys):
  workdir = str(tmp_path / 'study')
  axes = grid.parse_grid(_config(), ['model.latent_dim=8'])
  member = os.path.join(workdir, 'model.latent_dim=8_seed=0')

  def disk_full(file, **arrays):
    with open(file, 'wb') as f:
      f.write(b'PK')  # the start of a zip, as a full disk cuts it
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write names no file
  monkeypatch.setattr(study.np, 'savez_compressed', disk_full)
  with pytest.raises(UserError, match=f'^cannot write the reconstructions to {member}/'
                                      'reconstructions.npz: No space left on device; free some '
                                      'space on that disk, or choose another --workdir$'):
    study.run_study(_config(), workdir, axes, [0], num_points=60)
  assert not [n for n in os.listdir(member) if n.startswith('reconstructions.npz')]
  assert study.SCORE_FILE not in os.listdir(member)
  monkeypatch.undo()
  rows = study.run_study(_config(), workdir, axes, [0], num_points=60)  # the same command
  assert os.path.getsize(os.path.join(workdir, 'reconstructions.png')) > 1000

  for damage in (b'', b'PK\x03\x04 cut short'):  # a file a full disk cut short
    with open(os.path.join(member, 'reconstructions.npz'), 'wb') as f:
      f.write(damage)
    capsys.readouterr()
    assert study.run_study(_config(), workdir, axes, [0], num_points=60) == rows
    out = capsys.readouterr().out
    assert f'note: cannot read {member}/reconstructions.npz' in out, out
    assert f'delete {member}/study.json and run the study again' in out
  with open(os.path.join(workdir, 'results.csv')) as f:
    assert len(list(csv.DictReader(f))) == 1


@pytest.mark.slow
def test_a_study_killed_mid_member_finishes_with_the_same_command(tmp_path):
  workdir = tmp_path / 'study'
  command = [sys.executable, '-m', 'ae_jax.study', f'--config={ROOT}/configs/quickstart.py',
             f'--workdir={workdir}', '--grid=model.latent_dim=8', '--seeds=0,1',
             '--config.num_epochs=30', '--num_points=100']
  process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  second = workdir / 'model.latent_dim=8_seed=1' / 'checkpoints'
  deadline = time.time() + 300
  while not (second.is_dir() and any(n.isdigit() for n in os.listdir(second))):
    assert process.poll() is None and time.time() < deadline, 'the study never reached member 2'
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  first = workdir / 'model.latent_dim=8_seed=0' / study.SCORE_FILE
  before = json.loads(first.read_text())
  assert not (workdir / 'model.latent_dim=8_seed=1' / study.SCORE_FILE).exists()
  result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert '[1/2] model.latent_dim=8_seed=0: scored already' in result.stdout
  assert 'resumed from the checkpoint of step' in result.stdout
  assert json.loads(first.read_text()) == before
  with open(workdir / 'results.csv') as f:
    assert len(list(csv.DictReader(f))) == 2


@pytest.mark.parametrize('spec, message', [
    ('batch_size=32,100000', 'member batch_size=100000_seed=0: config.batch_size=100000 is '
     'larger than the 128 training images'),
    ('batch_size=32,3', None),  # 3 is not divisible by the 2 devices of the check below
    ('data.test_split=test,test[:5]', r'member data.test_split=test\(:5\)_seed=0: its test '
     'split has 5 images, too few to score its latent space'),
])
def test_every_member_is_checked_against_its_data_before_the_first_trains(tmp_path, monkeypatch,
                                                                          spec, message):
  def must_not_train(*args, **kwargs):
    raise AssertionError('a member trained before every member was checked')
  monkeypatch.setattr(train, 'train_and_evaluate', must_not_train)
  if message is None:
    monkeypatch.setattr(study.jax, 'device_count', lambda: 2)
    message = 'member batch_size=3_seed=0: config.batch_size=3 is not divisible by the 2 devices'
  workdir = tmp_path / 'study'
  with pytest.raises(UserError, match=message):
    study.run_study(_config(), str(workdir), grid.parse_grid(_config(), [spec]), [0])
  assert not workdir.exists()


def test_a_member_whose_workdir_holds_another_model_is_refused_before_the_first_trains(
    tmp_path, monkeypatch):
  workdir = tmp_path / 'study'
  (workdir / 'model.latent_dim=16_seed=0').mkdir(parents=True)
  config_lib.write_config(_config(), str(workdir / 'model.latent_dim=16_seed=0'))  # latent 32
  monkeypatch.setattr(train, 'train_and_evaluate', lambda *a, **k: 1 / 0)
  with pytest.raises(UserError, match=r'member model.latent_dim=16_seed=0: .* holds another '
                     'run'):
    study.run_study(_config(), str(workdir), grid.parse_grid(_config(),
                                                             ['model.latent_dim=8,16']), [0])
  assert os.listdir(workdir) == ['model.latent_dim=16_seed=0']


def test_the_study_of_the_issue_refuses_before_any_member_trains(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'ae_jax.study', f'--config={ROOT}/configs/quickstart.py',
       '--workdir=studies/s', '--grid=batch_size=64,100000'], cwd=tmp_path, capture_output=True,
      text=True, timeout=120)
  assert_one_line_error(result, 'member batch_size=100000_seed=0: config.batch_size=100000 is '
                        'larger than the 1438 training images')
  assert os.listdir(tmp_path) == []


def test_a_member_trained_without_a_class_is_scored_as_its_detector(trained_ae):
  from ae_jax import anomaly, input_pipeline  # pylint: disable=g-import-not-at-top
  workdir, config = trained_ae
  member = config.copy_and_resolve_references()
  member.data.held_out_classes = '0'
  axes = grid.parse_grid(member, ['data.held_out_classes=0,1'])
  assert [m[1] for m in grid.members(member, axes, [0])] == [
      {'data.held_out_classes': '0'}, {'data.held_out_classes': '1'}]
  splits = input_pipeline.load_splits(member.data)
  numbers, _ = study.score(workdir, member, splits, num_points=50, draw_map=False)
  report = anomaly.main(workdir, member, 'best', 'test', num_worst=0,
                        out_dir=os.path.join(workdir, 'anomaly_study_check'))
  assert numbers['roc_auc'] == pytest.approx(report['roc_auc'])
  assert numbers['average_precision'] == pytest.approx(report['average_precision'])
  plain, _ = study.score(workdir, config, input_pipeline.load_splits(config.data), 50, False)
  assert 'roc_auc' not in plain


def test_a_denoising_member_is_scored_on_noisy_inputs_besides_clean_ones(trained_ae):
  from ae_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  workdir, config = trained_ae
  member = config.copy_and_resolve_references()
  member.noise.std = 0.3  # scored as a denoising member
  numbers, _ = study.score(workdir, member, input_pipeline.load_splits(member.data), 50, False)
  # an AE never trained on noise reconstructs noisy inputs worse than clean ones
  assert numbers['noisy_mse'] > numbers['clean_mse'], numbers


def test_a_member_is_scored_at_its_best_checkpoint_not_its_latest(trained_ae, tmp_path):
  from ae_jax import checkpoints, input_pipeline  # pylint: disable=g-import-not-at-top
  workdir, config = trained_ae
  member = str(tmp_path / 'member')
  shutil.copytree(workdir, member)
  directory = checkpoints.checkpoint_dir(member)
  steps = sorted(int(name) for name in os.listdir(directory) if name.isdigit())
  with open(os.path.join(directory, str(steps[0]), 'metrics', 'metrics'), 'w') as f:
    json.dump({'val_loss': 0.0}, f)  # the oldest checkpoint kept is now the best
  numbers, _ = study.score(member, config, input_pipeline.load_splits(config.data), 50, False)
  assert numbers['checkpoint_step'] == steps[0] < steps[-1]


def test_a_study_over_seeds_alone_draws_each_seed_and_bolds_nothing(tmp_path, monkeypatch):
  """No grid axis: one point, so nothing to be best among, and figures of each seed's number."""
  from ae_jax import plots  # pylint: disable=g-import-not-at-top
  drawn = {}
  monkeypatch.setattr(plots, '_save', lambda fig, path, tight=True: drawn.update({
      os.path.basename(path): fig}))
  rows = [{'seed': seed, 'split': 'test', 'checkpoint_step': 4, 'clean_mse': mse,
           'knn_accuracy': knn, 'workdir': f'seed={seed}'}
          for seed, mse, knn in [(0, 0.02, 0.93), (1, 0.03, 0.92), (2, 0.04, 0.91)]]
  study.write_results(str(tmp_path), [], rows, {})
  with open(tmp_path / 'results.md') as f:
    markdown = f.read()
  assert '**' not in markdown and '0.03000 ± 0.01000' in markdown
  points = drawn['knn_accuracy.png'].axes[0].lines[-1]
  assert list(points.get_ydata()) == [0.93, 0.92, 0.91]
  # with a grid, the best mean of each column is bold
  axes = [('noise.std', [0.0, 0.3])]
  study.write_results(str(tmp_path), axes, [{**r, 'config.noise.std': 0.3 * (r['seed'] == 2)}
                                            for r in rows], {})
  with open(tmp_path / 'results.md') as f:
    lines = f.read().splitlines()
  assert lines[2].count('**') == 4 and '**' not in lines[3]  # seeds 0 and 1: better in both


def test_the_numbers_of_a_models_own_objective_are_tabulated_and_never_bolded(tmp_path,
                                                                              monkeypatch):
  """A new model's penalty (here 'l1') and its loss, the weighted sum, reach results.csv,
  results.md and a figure beside the other numbers of clean inputs; which way is better is not
  known, so they are not bold. A loss that repeats a number (an AE's MSE) is left out."""
  from ae_jax import plots  # pylint: disable=g-import-not-at-top
  drawn = []
  monkeypatch.setattr(plots, '_save', lambda fig, path, tight=True: drawn.append(
      os.path.basename(path)))
  rows = [{'config.model.sparsity': sparsity, 'seed': 0, 'split': 'test', 'checkpoint_step': 4,
           'clean_loss': mse + sparsity * l1, 'clean_mse': mse, 'clean_l1': l1,
           'knn_accuracy': 0.9, 'workdir': str(sparsity)}
          for sparsity, mse, l1 in [(0.0, 0.02, 0.9), (0.1, 0.03, 0.2)]]
  study.write_results(str(tmp_path), [('model.sparsity', [0.0, 0.1])], rows, {})
  with open(tmp_path / 'results.csv') as f:
    assert f.readline().split(',')[4:8] == ['clean_mse', 'clean_l1', 'clean_loss', 'knn_accuracy']
  with open(tmp_path / 'results.md') as f:
    lines = f.read().splitlines()
  assert lines[0].split(' | ')[2:] == ['clean_mse', 'clean_l1', 'clean_loss', 'knn_accuracy |']
  assert '**0.02000 ± 0.00000**' in lines[2] and '| 0.2000 ± 0.0000 |' in lines[3]
  assert sorted(drawn) == ['clean_l1.png', 'clean_loss.png', 'clean_mse.png', 'knn_accuracy.png']
  ae_rows = [{**r, 'clean_loss': r['clean_mse']} for r in rows]
  assert 'clean_loss' not in study._numbers(ae_rows)  # pylint: disable=protected-access


def test_the_best_psnr_is_the_highest_and_the_best_mse_the_lowest():
  summary = [{'config.noise.std': std, 'seeds': 1, 'clean_mse': (mse, 0.0),
              'clean_psnr': (psnr, 0.0)} for std, mse, psnr in [(0.0, 0.01, 20.0), (0.3, 0.03, 15.0)]]
  lines = study.markdown_table(summary, ['config.noise.std'], ['clean_mse', 'clean_psnr']
                               ).splitlines()
  assert lines[2].count('**') == 4 and '**' not in lines[3]


def test_each_grid_point_is_the_mean_and_std_of_its_own_seeds():
  rows = [{'config.noise.std': std, 'seed': seed, 'clean_mse': mse}
          for std, seed, mse in [(0.0, 0, 0.02), (0.0, 1, 0.03), (0.3, 0, 0.05), (0.3, 1, 0.07)]]
  summary = study.summarize([('noise.std', [0.0, 0.3])], rows)
  assert [(e['config.noise.std'], e['seeds']) for e in summary] == [(0.0, 2), (0.3, 2)]
  assert summary[0]['clean_mse'] == pytest.approx((0.025, 0.01 / 2 ** 0.5))
  assert summary[1]['clean_mse'] == pytest.approx((0.06, 0.02 / 2 ** 0.5))
