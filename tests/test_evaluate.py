import json
import os

import numpy as np
import pytest

from ae_jax import UserError
from ae_jax import evaluate
from conftest import assert_script_refuses
from conftest import run_module
from conftest import run_script
from conftest import save_untrained


def test_evaluation_reports_losses_and_psnr_and_draws_the_figure(trained_ae, tmp_path):
  workdir, config = trained_ae
  report = evaluate.main(workdir, config, 'best', 'test', num_examples=6)
  untrained = evaluate.main(save_untrained(config, str(tmp_path / 'untrained')), config,
                            'latest', 'test', num_examples=6)
  assert report['num_images'] == 200  # every test image
  assert report['clean']['psnr'] > untrained['clean']['psnr'] + 5
  assert report['clean']['mse'] < untrained['clean']['mse'] / 3
  assert 0 < report['clean']['bce'] < untrained['clean']['bce']
  assert 'noisy' not in report
  with open(os.path.join(workdir, 'eval', 'test.json')) as f:
    assert json.load(f) == report
  with open(os.path.join(workdir, 'eval', 'test_reconstructions.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_the_json_names_the_step_split_and_images_evaluated(trained_ae, tmp_path):
  # an untrained checkpoint is step 0, a number like any other
  workdir, config = trained_ae
  untrained = save_untrained(config, str(tmp_path / 'untrained'))
  for run, step in ((workdir, 5 * 800 // 32), (untrained, 0)):
    out = str(tmp_path / f'eval{step}')
    evaluate.main(run, config, 'latest', 'validation', num_examples=2, out_dir=out)
    with open(os.path.join(out, 'validation.json')) as f:
      report = json.load(f)
    assert (report['checkpoint_step'], report['split'], report['num_images']) == (
        step, 'validation', 200)


def test_num_examples_sets_the_columns_of_the_figure(trained_ae, tmp_path, monkeypatch):
  from ae_jax import plots  # pylint: disable=g-import-not-at-top
  drawn = []
  monkeypatch.setattr(plots, 'reconstructions',
                      lambda rows, titles, path, title: drawn.append((rows, titles)))
  workdir, config = trained_ae
  for num_examples in (1, 8):
    evaluate.main(workdir, config, 'best', 'test', num_examples=num_examples,
                  out_dir=str(tmp_path / str(num_examples)))
  for (rows, titles), num_examples in zip(drawn, (1, 8), strict=True):
    assert len(titles) == num_examples
    assert {name: len(images) for name, images in rows.items()} == {
        'input': num_examples, 'reconstruction': num_examples}


def test_mse_is_the_validation_loss_that_training_logged(trained_ae):
  workdir, config = trained_ae
  report = evaluate.main(workdir, config, 'latest', 'validation', num_examples=2)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    last = json.loads(f.readlines()[-1])
  assert report['clean']['mse'] == pytest.approx(last['val_loss'], rel=1e-5)


def test_a_model_loaded_in_python_gives_the_scripts_numbers(trained_ae, tmp_path, capsys):
  workdir, config = trained_ae
  run = evaluate.load_model(workdir)  # the best checkpoint, as the scripts
  scripts_run = evaluate.load_run(workdir, config, 'best', 'test')
  assert run.step == scripts_run.step and run.images is None
  assert capsys.readouterr().out == ''  # a notebook's cell prints nothing of its own
  images = scripts_run.images.astype(np.float32) / 255
  reconstructions = run.model.apply(run.variables, images, method='reconstruct')
  assert float(np.mean((reconstructions - images) ** 2)) == pytest.approx(
      evaluate.evaluate(scripts_run, noisy=False)['mse'], rel=1e-5)
  latest = evaluate.load_model(workdir, 'latest')
  assert evaluate.load_model(workdir, latest.step).step == latest.step
  # in the words of a Python caller, who passes arguments, not flags
  with pytest.raises(UserError, match=r"is '.*' the workdir of a training run\?$"):
    evaluate.load_model(str(tmp_path))
  with pytest.raises(UserError, match=r"^checkpoint='abc': use best, latest or a step number$"):
    evaluate.load_model(workdir, 'abc')
  with pytest.raises(UserError, match=r'^workdir=None: give the folder of a training run'):
    evaluate.load_model(None)


def test_images_of_ones_own_get_the_numbers_of_the_split_they_come_from(trained_ae, tmp_path):
  workdir, config = trained_ae
  run = evaluate.load_run(workdir, config, 'best', 'validation')
  np.save(tmp_path / 'scans.npy', run.images)  # the validation split, given as an array
  out = str(tmp_path / 'out')
  report = evaluate.main(workdir, config, 'best', None, num_examples=4, out_dir=out,
                         input_path=str(tmp_path / 'scans.npy'))
  by_split = evaluate.main(workdir, config, 'best', 'validation', num_examples=4, out_dir=out)
  assert report['input'] == str(tmp_path / 'scans.npy') and report['num_images'] == 200
  for name in ('mse', 'bce', 'psnr'):
    assert report['clean'][name] == pytest.approx(by_split['clean'][name], rel=1e-5)
  assert sorted(os.listdir(out)) == ['scans.json', 'scans_reconstructions.png',
                                     'validation.json', 'validation_reconstructions.png']
  with pytest.raises(UserError, match='--input=.* and --split=test: name one, the images to '
                     'evaluate on'):
    evaluate.main(workdir, config, 'best', 'test', 4, out, input_path=str(tmp_path / 'scans.npy'))


def test_two_evaluations_print_identical_figures(trained_ae, capsys):
  workdir, config = trained_ae
  config = config.copy_and_resolve_references()
  config.noise.std = 0.1  # evaluated as a denoising model: noisy and clean inputs
  first = evaluate.main(workdir, config, 'best', 'test', num_examples=3)
  first_out = capsys.readouterr().out
  second = evaluate.main(workdir, config, 'best', 'test', num_examples=3)
  assert capsys.readouterr().out == first_out
  assert first == second
  assert list(first) [-2:] == ['noisy', 'clean'] and 'noisy' in first_out
  # an AE never trained on noise reconstructs noisy inputs worse than clean ones
  assert first['noisy']['mse'] > first['clean']['mse']


def test_the_numbers_of_a_models_own_objective_are_printed(trained_ae, capsys, monkeypatch):
  workdir, config = trained_ae
  evaluate_split = evaluate.evaluate
  monkeypatch.setattr(evaluate, 'evaluate',  # as a model whose objective reports a penalty
                      lambda run, noisy: {**evaluate_split(run, noisy), 'l1': 0.0123456})
  evaluate.main(workdir, config, 'best', 'test', num_examples=1)
  header, clean = capsys.readouterr().out.splitlines()[1:3]
  assert header.split() == ['inputs', 'mse', 'bce', 'psnr', '(dB)', 'l1']  # loss: the mse
  assert clean.split()[0] == 'clean' and clean.split()[-1] == '0.012346'
  from ae_jax import models  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(models.AE, 'loss_name', 'mse + 0.1 l1')  # a loss that is a weighted sum
  monkeypatch.setattr(evaluate, 'evaluate', lambda run, noisy: {
      **evaluate_split(run, noisy), 'l1': 0.0123456, 'loss': 0.5})
  evaluate.main(workdir, config, 'best', 'test', num_examples=1)
  header, clean = capsys.readouterr().out.splitlines()[1:3]
  assert header.split()[-2:] == ['l1', 'loss'] and clean.split()[-1] == '0.5'


def test_reconstruction_rows_show_noisy_inputs_for_denoising_models(trained_ae):
  workdir, config = trained_ae
  config = config.copy_and_resolve_references()
  config.noise.std = 0.1
  run = evaluate.load_run(workdir, config, 'best', 'test')
  rows, titles = evaluate.reconstruction_rows(run, 4)
  assert list(rows) == ['input', 'noisy input', 'reconstruction']
  assert all(r.shape == (4, 28, 28, 1) for r in rows.values())
  assert len(titles) == 4 and all(t in '0123456789' for t in titles)
  assert not np.allclose(rows['input'], rows['noisy input'])


def test_each_column_of_the_figure_is_titled_with_the_label_of_its_image(trained_ae):
  workdir, config = trained_ae
  run = evaluate.load_run(workdir, config, 'best', 'test')
  rows, titles = evaluate.reconstruction_rows(run, 6)  # random images of the split
  for image, title in zip(rows['input'], titles, strict=True):
    found = np.flatnonzero((run.images == np.round(image * 255)).all(axis=(1, 2, 3)))
    assert title == str(run.labels[found[0]])


def test_evaluation_errors_say_what_is_wrong(trained_ae, tmp_path):
  workdir, config = trained_ae
  with pytest.raises(UserError, match="--split='tset' is not one of: test, validation, train"):
    evaluate.load_run(workdir, config, 'best', 'tset')
  with pytest.raises(UserError, match='no checkpoint of step 7 .* there are steps'):
    evaluate.load_run(workdir, config, '7', 'test')
  with pytest.raises(UserError, match='config.json does not exist'):
    evaluate.load_run(str(tmp_path / 'nothing'), config, 'best', 'test')
  empty = str(tmp_path / 'empty')
  os.makedirs(empty)
  with open(os.path.join(empty, 'config.json'), 'w') as f:
    f.write(config.to_json())
  with pytest.raises(UserError, match='no checkpoint in .*train first'):
    evaluate.load_run(empty, config, 'best', 'test')
  other = config.copy_and_resolve_references()
  other.model.latent_dim = 16
  with pytest.raises(UserError, match='--config.model.latent_dim=16: the run trained a model of '
                     'latent_dim 32, whose checkpoint does not fit another'):
    evaluate.load_run(workdir, other, 'best', 'test')
  no_test = config.copy_and_resolve_references()
  no_test.data.test_split = ''
  with pytest.raises(UserError, match='no test split.*--split=validation'):
    evaluate.load_run(workdir, no_test, 'best', 'test')


def test_the_script_passes_flags_on_and_fails_in_one_line(trained_ae):
  workdir, _ = trained_ae
  result = run_module('ae_jax.evaluate', f'--workdir={workdir}', '--split=validation',
                      '--num_examples=3', '--config.batch_size=64')
  assert result.returncode == 0, result.stderr
  assert 'validation split: 200 images' in result.stdout
  result = run_module('ae_jax.evaluate', f'--workdir={workdir}', '--config.model.name=CAE')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip() == ("error: --config.model.name='CAE': the run trained a model of "
                                   "name 'AE', whose checkpoint does not fit another; leave the "
                                   'override out')


def test_a_figure_of_more_images_than_it_can_draw_in_seconds_is_refused(trained_ae):
  with pytest.raises(UserError, match=r'--num_examples=101: the figure shows 1 to 100 images'):
    evaluate.main(trained_ae[0], trained_ae[1], 'best', None, 101)


@pytest.mark.parametrize('flag, fragment', [
    ('--num_examples=0', '--num_examples=0: the figure shows 1 to 100 images'),
    ('--num_examples=-1', '--num_examples=-1'),
    ('--config.model.latnt_dim=3', 'no such config field'),
    ('--config.eval_batch_size=0', 'config.eval_batch_size=0 must be at least 1'),
    ('--config.dtype=float23', "config.dtype='float23' is not one of: float32, bfloat16"),
])
def test_bad_flags_are_one_line_and_write_nothing(trained_ae, flag, fragment):
  assert_script_refuses('eval.sh', trained_ae[0], flag, fragment)


def test_a_report_that_cannot_replace_its_file_names_the_file_not_its_temporary(trained_ae,
                                                                                tmp_path):
  (tmp_path / 'validation.json' / 'x').mkdir(parents=True)  # a folder where the report goes
  with pytest.raises(UserError, match=r'validation\.json: Is a directory') as raised:
    evaluate.main(trained_ae[0], trained_ae[1], 'best', 'validation', 2, out_dir=str(tmp_path))
  assert '.tmp' not in str(raised.value)


def test_an_out_dir_that_is_a_file_is_named_so(trained_ae):
  workdir = trained_ae[0]
  assert_script_refuses('eval.sh', workdir, f'--out_dir={workdir}/config.json',
                        'config.json is a file, not a folder')


def test_without_a_split_the_test_split_where_there_is_one(trained_ae, capsys):
  workdir, config = trained_ae
  assert evaluate.main(workdir, config, 'best', None, num_examples=2)['split'] == 'test'
  no_test = config.copy_and_resolve_references()
  no_test.data.test_split = ''
  assert evaluate.main(workdir, no_test, 'best', None, num_examples=2)['split'] == 'validation'
  assert 'split: validation (the data has no test split' in capsys.readouterr().out


def test_a_run_that_cannot_be_written_to_is_evaluated_elsewhere(trained_ae, tmp_path,
                                                                 monkeypatch):
  workdir, config = trained_ae
  real_access = os.access
  read_only = lambda path, mode: (not mode & os.W_OK) and real_access(path, mode) if str(
      path).startswith(workdir) else real_access(path, mode)
  monkeypatch.setattr(os, 'access', read_only)  # as on a read-only filesystem
  with pytest.raises(UserError, match=r'cannot write to .*/eval .* --out_dir=FOLDER'):
    evaluate.main(workdir, config, 'best', 'test', num_examples=2)
  report = evaluate.main(workdir, config, 'best', 'test', num_examples=2,
                         out_dir=str(tmp_path / 'elsewhere'))
  assert report['num_images'] == 200
  assert sorted(os.listdir(tmp_path / 'elsewhere')) == ['test.json', 'test_reconstructions.png']


def test_a_second_evaluation_compiles_nothing(trained_ae, tmp_path):
  workdir, _ = trained_ae
  cache = f'--compilation_cache={tmp_path / "cache"}'
  outputs = []
  for _ in range(2):
    result = run_script('eval.sh', workdir, cache, f'--out_dir={tmp_path / "eval"}')
    assert result.returncode == 0, result.stderr[-2000:]
    outputs.append(result.stdout)
  assert 'programs read from it' in outputs[0] and ' 0 compiled' not in outputs[0]
  assert '0 programs read from it' not in outputs[1] and outputs[1].rstrip().endswith(' 0 compiled')
