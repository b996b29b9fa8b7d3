import errno
import json
import os
import shutil

import numpy as np
import pytest

from ae_jax import UserError
from ae_jax import tsne
from conftest import MNIST_SMALL
from conftest import assert_one_line_error
from conftest import assert_script_refuses
from conftest import run_script
from conftest import save_untrained
from conftest import small_config


def test_subsample_is_stratified_and_all_when_asked_for_more():
  labels = np.repeat(np.arange(4), [100, 200, 300, 400])
  chosen = tsne.subsample(len(labels), labels, 100, seed=0)
  assert len(chosen) == 100 and len(set(chosen)) == 100
  np.testing.assert_array_equal(np.bincount(labels[chosen]), [10, 20, 30, 40])
  np.testing.assert_array_equal(tsne.subsample(50, None, 100, seed=0), np.arange(50))


def test_tsne_map_embedding_and_numbers(trained_ae, tmp_path):
  workdir, config = trained_ae
  report = tsne.main(workdir, config, 'best', 'test', num_points=150, num_train_points=800,
                     perplexity=30.0, seed=0)
  untrained = tsne.main(save_untrained(config, str(tmp_path / 'untrained')), config, 'latest',
                        'test', num_points=150, num_train_points=800, perplexity=30.0, seed=0)
  assert report['num_points'] == 150 and report['latent_size'] == 32
  assert report['knn_accuracy'] > untrained['knn_accuracy'] + 0.1
  assert report['linear_probe_accuracy'] > untrained['linear_probe_accuracy'] + 0.1
  assert 0.9 < report['trustworthiness'] <= 1.0

  stem = os.path.join(workdir, 'tsne', 'test')
  with open(stem + '.json') as f:
    assert json.load(f) == report
  data = np.load(stem + '.npz')
  assert data['embedding'].shape == (150, 2)
  assert data['images'].shape == (150, 28, 28, 1) and data['labels'].shape == (150,)
  os.remove(stem + '.png')
  tsne.redraw(workdir, 'test')  # from the .npz alone
  with open(stem + '.png', 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_the_npz_and_the_projector_hold_each_mapped_image_with_its_own_label(trained_ae,
                                                                            tmp_path):
  # a subsample of the split, not its first images: whoever reads the .npz or the projector
  # colours each point by its row's label, so every row must be of one example
  from ae_jax import evaluate  # pylint: disable=g-import-not-at-top
  workdir, config = trained_ae
  out = str(tmp_path / 'out')
  tsne.main(workdir, config, 'best', 'test', num_points=60, num_train_points=100,
            perplexity=10.0, seed=0, out_dir=out)
  run = evaluate.load_run(workdir, config, 'best', 'test')
  data = np.load(os.path.join(out, 'test.npz'))
  indices = data['indices']
  assert len(indices) == 60 and indices.max() >= 60
  np.testing.assert_array_equal(data['images'], run.images[indices])
  np.testing.assert_array_equal(data['labels'], run.labels[indices])
  with open(os.path.join(out, 'projector', 'test_metadata.tsv')) as f:
    rows = [line.split('\t') for line in f.read().splitlines()[1:]]
  assert len(rows) == 60
  assert [label for label, _, _ in rows] == [str(run.labels[int(i)]) for _, _, i in rows]


def test_mapped_train_points_are_left_out_of_their_own_knn_vote_and_probe(trained_ae,
                                                                         monkeypatch):
  from ae_jax import evaluate, maps  # pylint: disable=g-import-not-at-top
  workdir, config = trained_ae
  run = evaluate.load_run(workdir, config, 'best', 'train')
  seen = {}

  def recorder(name):
    def record(train_latents, train_labels, latents, labels, same):
      seen[name] = (train_latents, latents, same)
      return 0.0
    return record

  for name in ('knn_accuracy', 'linear_probe_accuracy'):
    monkeypatch.setattr(maps, name, recorder(name))
  space = tsne.latent_space(run, 60, num_train_points=300, perplexity=10.0, seed=0)
  assert set(seen) == {'knn_accuracy', 'linear_probe_accuracy'}
  for train_latents, latents, same in seen.values():
    # each mapped point that is among the train points is found as itself, the others as none
    found = same >= 0
    assert found.any() and not found.all()
    np.testing.assert_array_equal(train_latents[same[found]], latents[found])
  train_chosen = tsne.subsample(len(run.images), run.labels, 300, 0)
  np.testing.assert_array_equal(np.isin(space.chosen, train_chosen), found)


def test_unlabelled_data_gets_a_map_and_says_what_it_skips(trained_ae, tmp_path, capsys):
  workdir, config = trained_ae
  images_only = tmp_path / 'images_only'
  images_only.mkdir()
  for name in ('train-images-idx3-ubyte.gz', 't10k-images-idx3-ubyte.gz'):
    shutil.copy(os.path.join(MNIST_SMALL, name), images_only)
  config = config.copy_and_resolve_references()
  config.data.path = str(images_only)
  report = tsne.main(workdir, config, 'best', 'test', num_points=100, num_train_points=100,
                     perplexity=20.0, seed=0)
  assert 'knn_accuracy' not in report and 'trustworthiness' in report
  assert 'the data has no labels' in capsys.readouterr().out
  assert np.load(os.path.join(workdir, 'tsne', 'test.npz'))['labels'].size == 0


def test_images_of_ones_own_get_a_map_named_after_them(trained_ae, tmp_path, capsys):
  from ae_jax import evaluate  # pylint: disable=g-import-not-at-top
  workdir, config = trained_ae
  run = evaluate.load_run(workdir, config, 'best', 'test')
  np.save(tmp_path / 'scans.npy', run.images[:40])
  out = str(tmp_path / 'out')
  report = tsne.main(workdir, config, 'best', None, num_points=100, num_train_points=100,
                     perplexity=10.0, seed=0, out_dir=out, input_path=str(tmp_path / 'scans.npy'))
  assert report['input'] == str(tmp_path / 'scans.npy') and report['num_points'] == 40
  assert 'knn_accuracy' not in report and 0.5 < report['trustworthiness'] <= 1
  assert 'the data has no labels' not in capsys.readouterr().out  # the user's own: none asked
  saved = np.load(os.path.join(out, 'scans.npz'))
  np.testing.assert_array_equal(saved['images'], run.images[:40])
  tsne.redraw(workdir, 'scans', out)
  assert os.path.getsize(os.path.join(out, 'scans.png')) > 1000


def test_large_latents_are_projected_to_50_dimensions_first(tmp_path):
  config = small_config('cae', num_train=100)
  config.model.features = (4, 8, 8, 16)  # a 7x7x16 latent: 784 dimensions
  workdir = save_untrained(config, str(tmp_path / 'cae'))
  report = tsne.main(workdir, config, 'latest', 'test', num_points=60, num_train_points=100,
                     perplexity=10.0, seed=0)
  assert report['latent_size'] == 7 * 7 * 16 and report['pca_dims'] == 50
  assert 0 <= report['knn_accuracy'] <= 1
  # images of one's own: the PCA is still fit on the run's train split
  np.save(tmp_path / 'mine.npy', np.load(os.path.join(workdir, 'tsne', 'test.npz'))['images'])
  mine = tsne.main(workdir, config, 'latest', None, num_points=60, num_train_points=100,
                   perplexity=10.0, seed=0, input_path=str(tmp_path / 'mine.npy'))
  assert mine['pca_dims'] == 50 and mine['trustworthiness'] == report['trustworthiness']
  # the convolutional model takes 32x32 images too, but the PCA needs the input's size
  resized = config.copy_and_resolve_references()
  resized.data.image_size = 32
  with pytest.raises(UserError, match=r"--input's images are read as the model takes them, "
                     r'28x28x1, and the train split .* 32x32x1: leave out '
                     r'--config.data.image_size'):
    tsne.main(workdir, resized, 'latest', None, num_points=60, num_train_points=100,
              perplexity=10.0, seed=0, input_path=str(tmp_path / 'mine.npy'))


def test_the_pca_of_large_latents_is_fit_on_the_train_split(tmp_path):
  from sklearn import decomposition  # pylint: disable=g-import-not-at-top
  from ae_jax import evaluate  # pylint: disable=g-import-not-at-top
  config = small_config('cae', num_train=100)
  config.model.features = (4, 8, 8, 16)  # a 7x7x16 latent: 784 dimensions
  workdir = save_untrained(config, str(tmp_path / 'cae'))
  run = evaluate.load_run(workdir, config, 'latest', 'test')
  space = tsne.latent_space(run, 60, num_train_points=100, perplexity=10.0, seed=0)
  train = run.splits['train']
  train_latents = tsne.encode(run, train.images[tsne.subsample(len(train.images), train.labels,
                                                                100, 0)])
  expected = decomposition.PCA(50, random_state=0).fit(train_latents).transform(
      tsne.encode(run, space.images))
  np.testing.assert_allclose(space.latents, expected, rtol=1e-3,
                             atol=1e-3 * np.abs(expected).max())


def test_images_of_ones_own_on_a_wide_latent_refuse_data_the_model_cannot_take(tmp_path):
  # the PCA of a latent wider than 50 is fit on the run's train split, read with --config.data.*
  config = small_config('ae', num_train=100)
  config.model.latent_dim = 64
  workdir = save_untrained(config, str(tmp_path / 'ae'))
  np.save(tmp_path / 'mine.npy', np.zeros((60, 28, 28), np.uint8))
  resized = config.copy_and_resolve_references()
  resized.data.image_size = 32
  with pytest.raises(UserError, match=r'the images of config.data are 32x32x1 and the model of '
                     r'.* takes 28x28x1: use --config.data.image_size=28'):
    tsne.main(workdir, resized, 'latest', None, num_points=60, num_train_points=100,
              perplexity=10.0, seed=0, input_path=str(tmp_path / 'mine.npy'))


def test_subsample_of_a_few_less_than_all_still_works():
  labels = np.repeat(np.arange(10), 36)  # 360 points of 10 classes
  for num_points in range(351, 360):  # fewer left out than there are classes
    chosen = tsne.subsample(len(labels), labels, num_points, seed=0)
    assert len(chosen) == num_points and len(set(chosen)) == num_points


@pytest.mark.parametrize('flag, fragment', [
    ('--num_points=10', '--num_points=10 is too few: a t-SNE map with perplexity 30 needs at '
     'least 31 points'),
    ('--config.model.latnt_dim=3', 'Did you mean "latent_dim"'),
    ('--n_neighbors=5', '--n_neighbors is not used by --method=tsne: leave it out'),
])
def test_bad_flags_are_one_line_and_write_nothing(trained_ae, flag, fragment):
  assert_script_refuses('tsne.sh', trained_ae[0], flag, fragment)


@pytest.mark.parametrize('flags, message', [
    (dict(num_points=0), '--num_points=0 is too few'),
    (dict(num_points=40, perplexity=40.0), 'use 41 or more, or a lower --perplexity'),
    (dict(perplexity=0.0), '--perplexity=0.0 must be positive'),
    (dict(seed=-1), r'--seed=-1 must be a whole number from 0 to 2\*\*31 - 1'),
    (dict(seed=2**32), '--seed=4294967296 must be a whole number from 0'),
    (dict(num_train_points=2), '--num_train_points=2 is too few'),
])
def test_which_flag_values_work(flags, message):
  from ae_jax import UserError  # pylint: disable=g-import-not-at-top
  flags = {**dict(num_points=100, num_train_points=100, perplexity=30.0, seed=0, angle=0.7),
           **flags}
  with pytest.raises(UserError, match=message):
    tsne.check_flags(**flags)


def test_points_from_the_minimum_to_the_whole_split_work(trained_ae, capsys):
  workdir, config = trained_ae
  for num_points in (31, 199, 500):  # the fewest, one below the split's 200, more than it
    report = tsne.main(workdir, config, 'best', 'test', num_points=num_points,
                       num_train_points=100, perplexity=30.0, seed=0)
    assert report['num_points'] == min(num_points, 200)
  assert 'all 200 images of the test split (fewer than --num_points=500)' in capsys.readouterr().out


def test_a_constant_encoder_is_one_line_not_a_crash(trained_ae, tmp_path, monkeypatch):
  # scikit-learn's t-SNE dies of a segmentation fault on identical points
  workdir, config = trained_ae
  monkeypatch.setattr(tsne, 'encode', lambda run, images: np.zeros((len(images), 32), np.float32))
  with pytest.raises(tsne.UserError, match='has the same latent: the encoder outputs a constant'):
    tsne.main(workdir, config, 'best', 'test', num_points=100, num_train_points=100,
              perplexity=20.0, seed=0, out_dir=str(tmp_path / 'maps'))
  assert not os.path.exists(tmp_path / 'maps')


def test_a_full_disk_keeps_the_last_map_whole_and_a_damaged_one_is_one_line(tmp_path,
                                                                            monkeypatch):
  config = small_config('ae')
  workdir = save_untrained(config, str(tmp_path / 'ae'))
  out = str(tmp_path / 'maps')
  tsne.main(workdir, config, 'latest', 'test', num_points=60, num_train_points=100,
            perplexity=10.0, seed=0, out_dir=out)
  stem = os.path.join(out, 'test')
  before = {ext: open(stem + ext, 'rb').read() for ext in ('.npz', '.png', '.json')}

  def disk_full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a flush reports it: no file
  monkeypatch.setattr(tsne.plots, 'tsne_map', disk_full)
  with pytest.raises(tsne.UserError, match=f'^cannot write the t-SNE map to {out}: No space left '
                                           'on device; free some space on that disk, or choose '
                                           'another --out_dir$'):
    tsne.main(workdir, config, 'latest', 'test', num_points=60, num_train_points=100,
              perplexity=10.0, seed=1, out_dir=out)
  monkeypatch.undo()
  # the last map whole: its .npz, figure and numbers of one computation, no temporary file
  assert {ext: open(stem + ext, 'rb').read() for ext in before} == before
  assert not [n for n in os.listdir(out) if '.tmp' in n]

  with open(stem + '.npz', 'wb') as f:
    f.write(before['.npz'][:len(before['.npz']) // 2])  # cut short by a full disk
  assert_one_line_error(run_script('tsne.sh', workdir, '--redraw', f'--out_dir={out}'),
                        f'{stem}.npz is damaged', 'without --redraw')
  with open(stem + '.npz', 'w') as f:
    f.write('not a map')
  with pytest.raises(tsne.UserError, match='test.npz is damaged .* without --redraw'):
    tsne.redraw(workdir, 'test', out)


@pytest.mark.parametrize('edit, reason', [
    (lambda m: {**m, 'embedding': m['embedding'][:-1]}, 'is not a 2-D point per image'),
    (lambda m: {**m, 'labels': m['labels'].astype(float)}, 'are not a class number per point'),
    (lambda m: {**m, 'labels': m['labels'] + 10}, 'are not a class number per point'),
])
def test_a_map_edited_by_hand_is_refused_as_damaged(tmp_path, edit, reason):
  saved = {'embedding': np.zeros((4, 2)), 'images': np.zeros((4, 8, 8, 1), np.uint8),
           'labels': np.arange(4), 'label_names': np.array([str(i) for i in range(10)]),
           'title': np.array('a map')}
  os.makedirs(tmp_path / 'tsne')
  np.savez(tmp_path / 'tsne' / 'test.npz', **edit(saved))
  with pytest.raises(tsne.UserError, match=f'test.npz is damaged \\(its .*{reason}'):
    tsne.redraw(str(tmp_path), 'test')


def test_a_flag_the_map_method_ignores_is_refused():
  given = {'n_neighbors', 'perplexity', 'angle', 'tsne_backend'}
  assert tsne.unused_map_flags('tsne', 'auto', given) == ['n_neighbors']
  assert tsne.unused_map_flags('tsne', 'opentsne', given) == ['n_neighbors', 'angle']
  assert tsne.unused_map_flags('umap', 'auto', given) == ['perplexity', 'angle', 'tsne_backend']
  assert tsne.unused_map_flags('tsne', 'sklearn', {'perplexity', 'angle'}) == []
