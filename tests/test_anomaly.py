import errno
import json
import os

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from ae_jax import UserError
from ae_jax import anomaly
from ae_jax import evaluate
from conftest import assert_script_refuses
from conftest import run_script
from conftest import save_untrained
from conftest import small_config


def test_detection_numbers_are_scikit_learns():
  labels = np.array([0, 1, 2, 3, 3, 1, 0, 2])
  scores = np.array([0.1, 0.2, 0.3, 0.9, 0.5, 0.25, 0.05, 0.6])
  numbers = anomaly.detection_numbers(scores, labels, [3], threshold=0.55)
  # the held-out 3s score 0.9 and 0.5: above all but the 2 at 0.6
  assert numbers['roc_auc'] == pytest.approx(11 / 12)
  assert numbers['average_precision'] == pytest.approx(
      sk_metrics.average_precision_score(labels == 3, scores))
  assert numbers['held_out_flagged'] == 0.5 and numbers['normal_flagged'] == pytest.approx(1 / 6)
  assert anomaly.detection_numbers(scores, labels, [7], 0.5) is None  # no positives


def test_scores_threshold_flagged_and_files(trained_ae, tmp_path):
  workdir, config = trained_ae
  out = str(tmp_path / 'out')
  report = anomaly.main(workdir, config, 'best', 'test', percentile=90, num_worst=4, out_dir=out)
  run = evaluate.load_run(workdir, config, 'best', 'test')
  scores = np.load(os.path.join(out, 'test_scores.npy'))
  # the AE's score is its MSE per image, as evaluation averages it
  assert scores.shape == (200,)
  assert scores.mean() == pytest.approx(evaluate.evaluate(run, noisy=False)['mse'], rel=1e-4)
  validation = evaluate.evaluate(run._replace(images=run.splits['validation'].images),
                                 noisy=False)
  assert report['threshold'] > validation['mse']
  assert report['num_flagged'] == int((scores > report['threshold']).sum()) > 0
  flagged = report['flagged']
  assert [f['score'] for f in flagged] == sorted([f['score'] for f in flagged], reverse=True)
  assert all(str(run.labels[f['index']]) == f['label'] for f in flagged)
  assert 'roc_auc' not in report  # trained on every class
  with open(os.path.join(out, 'test.json')) as f:
    assert json.load(f) == report
  assert sorted(os.listdir(out)) == ['test.json', 'test_histogram.png', 'test_scores.npy',
                                     'test_worst.png']


def test_the_worst_figure_shows_the_highest_scores(trained_ae, tmp_path, monkeypatch):
  from ae_jax import plots  # pylint: disable=g-import-not-at-top
  drawn = {}
  monkeypatch.setattr(plots, 'reconstructions', lambda rows, titles, *args: drawn.update(
      titles=titles))
  workdir, config = trained_ae
  out = str(tmp_path / 'out')
  anomaly.main(workdir, config, 'best', 'test', num_worst=4, out_dir=out)
  highest = np.sort(np.load(os.path.join(out, 'test_scores.npy')))[::-1][:4]
  assert [t.split('\n')[0] for t in drawn['titles']] == [f'{s:.3g}' for s in highest]


def test_images_of_ones_own_are_scored_against_the_runs_threshold(trained_ae, tmp_path):
  workdir, config = trained_ae
  run = evaluate.load_run(workdir, config, 'best', 'test')
  noise = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), np.uint8)
  np.save(tmp_path / 'scans.npy', np.concatenate([run.images[:20], noise]))
  out = str(tmp_path / 'out')
  by_split = anomaly.main(workdir, config, 'best', 'test', num_worst=0, out_dir=out)
  report = anomaly.main(workdir, config, 'best', None, num_worst=4, out_dir=out,
                        input_path=str(tmp_path / 'scans.npy'))
  scores = np.load(os.path.join(out, 'scans_scores.npy'))
  np.testing.assert_allclose(scores[:20], np.load(os.path.join(out, 'test_scores.npy'))[:20],
                             rtol=1e-5)  # the same images score the same
  assert report['threshold'] == by_split['threshold']  # from the run's validation split
  assert report['input'] == str(tmp_path / 'scans.npy') and 'split' not in report
  assert {f['index'] for f in report['flagged'][:3]} == {20, 21, 22}  # noise scores highest
  assert os.path.exists(os.path.join(out, 'scans_worst.png'))
  with pytest.raises(UserError, match='--input=.* and --split=test: name one'):
    anomaly.main(workdir, config, 'best', 'test', out_dir=out, input_path=str(tmp_path))


def test_a_held_out_class_gets_roc_auc_in_the_json_and_printed(trained_ae, tmp_path, capsys):
  workdir, config = trained_ae
  config = config.copy_and_resolve_references()
  config.data.held_out_classes = '0'  # scored as if trained without the zeros
  report = anomaly.main(workdir, config, 'best', 'test', out_dir=str(tmp_path))
  labels = evaluate.load_run(workdir, config, 'best', 'test').labels
  scores = np.load(tmp_path / 'test_scores.npy')
  assert report['held_out_classes'] == ['0'] and report['num_held_out'] == (labels == 0).sum()
  assert report['roc_auc'] == pytest.approx(sk_metrics.roc_auc_score(labels == 0, scores))
  with open(tmp_path / 'test.json') as f:
    assert json.load(f)['roc_auc'] == report['roc_auc']
  assert f'against the rest: ROC-AUC {report["roc_auc"]:.4f}' in capsys.readouterr().out


def test_held_out_classes_of_data_without_a_test_split_are_scored_without_roc_auc(
    trained_ae, tmp_path, capsys):
  workdir, config = trained_ae
  config = config.copy_and_resolve_references()
  config.data.held_out_classes = '0'  # gone from train and validation, the splits there are
  config.data.test_split = ''
  report = anomaly.main(workdir, config, 'best', None, num_worst=0, out_dir=str(tmp_path))
  assert 'roc_auc' not in report and report['num_images'] > 0
  assert 'the data has no test split, the one split that keeps the held-out classes: no ' \
      'ROC-AUC' in capsys.readouterr().out


def test_a_vae_scores_by_its_negative_elbo(tmp_path):
  config = small_config('vae')
  workdir = save_untrained(config, str(tmp_path / 'vae'))
  report = anomaly.main(workdir, config, 'latest', 'test', num_worst=0, out_dir=str(tmp_path))
  run = evaluate.load_run(workdir, config, 'latest', 'test')
  assert report['score'] == 'nelbo (nats)'
  assert np.load(tmp_path / 'test_scores.npy').mean() == pytest.approx(
      evaluate.evaluate(run, noisy=False)['nelbo'], rel=1e-4)


@pytest.mark.parametrize('flag, fragment', [
    ('--percentile=100', '--percentile=100.0 must be between 0 and 100'),
    ('--num_worst=-1', '--num_worst=-1'),
    ('--config.data.held_out_classes=12', "no class '12'"),
])
def test_bad_flags_are_one_line_and_write_nothing(trained_ae, flag, fragment):
  assert_script_refuses('anomaly.sh', trained_ae[0], flag, fragment)


def test_a_figure_of_more_images_than_it_can_draw_in_seconds_is_refused(trained_ae):
  with pytest.raises(UserError, match=r'--num_worst=101 must be 0 \(no figure\) to 100'):
    anomaly.main(trained_ae[0], trained_ae[1], 'best', None, num_worst=101)


def test_the_script(trained_ae, tmp_path):
  result = run_script('anomaly.sh', trained_ae[0], '--config.data.held_out_classes=1',
                      f'--out_dir={tmp_path}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'held-out classes 1 (' in result.stdout and 'ROC-AUC' in result.stdout


def test_a_full_disk_names_the_folder_and_the_flag_that_chooses_another(tmp_path, monkeypatch):
  config = small_config('ae')
  workdir = save_untrained(config, str(tmp_path / 'ae'))
  out = str(tmp_path / 'out')

  def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a flush reports it: no file
  monkeypatch.setattr(anomaly.plots, 'score_histogram', disk_full)
  with pytest.raises(UserError, match=f'^cannot write the anomaly scores to {out}: No space left '
                                      'on device; free some space on that disk, or choose '
                                      'another --out_dir$'):
    anomaly.main(workdir, config, 'latest', 'validation', num_worst=0, out_dir=out)
