import errno
import json
import os
import re

import numpy as np
import pytest

from ae_jax import UserError
from ae_jax import encode
from ae_jax import evaluate
from ae_jax import npy_writer
from ae_jax import tsne
from conftest import assert_one_line_error
from conftest import assert_script_refuses
from conftest import run_script
from conftest import save_untrained
from conftest import small_config
from conftest import small_disk


def test_latents_are_one_row_per_image_with_the_labels(trained_ae, tmp_path):
  workdir, config = trained_ae
  out = str(tmp_path / 'latents')
  report = encode.main(workdir, config, 'best', 'test', out_dir=out)
  run = evaluate.load_run(workdir, config, 'best', 'test')
  latents = np.load(os.path.join(out, 'test_latents.npy'))
  assert latents.shape == (200, 32) and latents.dtype == np.float32
  embed = run.model.apply(run.variables, run.images.astype(np.float32) / 255, method='embed')
  np.testing.assert_allclose(latents, embed, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(tsne.encode(run, run.images), latents)  # one encoder for both
  np.testing.assert_array_equal(np.load(os.path.join(out, 'test_labels.npy')), run.labels)
  with open(os.path.join(out, 'test_encode.json')) as f:
    assert json.load(f)['num_images'] == report['num_images'] == 200
  assert sorted(os.listdir(out)) == ['test_encode.json', 'test_labels.npy', 'test_latents.npy']


def test_a_vae_gives_posterior_means_and_variances(tmp_path):
  config = small_config('vae')
  workdir = save_untrained(config, str(tmp_path / 'vae'))
  out = str(tmp_path / 'out')
  encode.main(workdir, config, 'latest', 'validation', variance=True, out_dir=out)
  run = evaluate.load_run(workdir, config, 'latest', 'validation')
  mean, logvar = run.model.apply(run.variables, run.images.astype(np.float32) / 255,
                                 method='encode')
  np.testing.assert_allclose(np.load(os.path.join(out, 'validation_latents.npy')), mean,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.load(os.path.join(out, 'validation_variances.npy')),
                             np.exp(logvar), rtol=1e-4, atol=1e-6)


def test_image_folders_name_the_file_of_each_row(trained_ae, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  workdir, config = trained_ae
  folder = tmp_path / 'images'
  for name in ('a', 'b'):
    (folder / name).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(folder / name / f'{i}.png')
  config = config.copy_and_resolve_references()
  config.data.source, config.data.path, config.data.test_split = 'folder', str(folder), ''
  config.data.train_split = 'train'
  config.data.validation_fraction = 0.5
  out = str(tmp_path / 'out')
  encode.main(workdir, config, 'best', 'train', out_dir=out)
  with open(os.path.join(out, 'train_files.txt')) as f:
    files = f.read().splitlines()
  labels = np.load(os.path.join(out, 'train_labels.npy'))
  assert len(files) == len(labels) == len(np.load(os.path.join(out, 'train_latents.npy'))) == 3
  assert all(os.path.basename(os.path.dirname(f)) == 'ab'[l] for f, l in zip(files, labels))


def test_other_images_are_read_as_the_model_takes_them(trained_ae, tmp_path, capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from ae_jax import checkpoints, input_pipeline  # pylint: disable=g-import-not-at-top
  workdir, config = trained_ae
  assert checkpoints.trained_image_shape(workdir) == (28, 28, 1)
  folder = tmp_path / 'photos'
  folder.mkdir()
  photos = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), np.uint8)
  for i, photo in enumerate(photos):
    Image.fromarray(photo).save(folder / f'{i}.png')
  config = config.copy_and_resolve_references()
  config.data.source, config.data.path = 'folder', str(folder)
  config.data.train_split, config.data.test_split = 'train', 'train'  # the whole folder
  out = str(tmp_path / 'out')
  encode.main(workdir, config, 'best', 'test', out_dir=out)
  assert 'read as the model takes them: resized to 28x28 and made grayscale' in (
      capsys.readouterr().out)
  run = evaluate.load_run(workdir, config, 'best', 'test')
  asked = config.copy_and_resolve_references()  # what the flags that say so read
  asked.data.image_size, asked.data.grayscale = 28, True
  as_trained = input_pipeline.load_splits(asked.data)['test'].images
  assert as_trained.shape == (4, 28, 28, 1)
  np.testing.assert_array_equal(run.images, as_trained)
  np.testing.assert_array_equal(np.load(os.path.join(out, 'test_latents.npy')),
                                tsne.encode(run, as_trained))
  config.data.image_size = 32  # asked for explicitly: not what the model takes
  with pytest.raises(UserError, match='are 32x32x1 and the model of .* takes 28x28x1: use '
                     '--config.data.image_size=28$'):
    evaluate.load_run(workdir, config, 'best', 'test')


def test_images_of_ones_own_are_encoded_from_a_folder_or_an_array(trained_ae, tmp_path,
                                                                  capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from ae_jax.input_pipeline import given  # pylint: disable=g-import-not-at-top
  workdir, config = trained_ae
  folder = tmp_path / 'photos'
  (folder / 'more').mkdir(parents=True)
  photos = np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3), np.uint8)
  names = ['0.png', '1.png', 'more/2.png', 'more/3.png', 'more/4.png']
  for name, photo in zip(names, photos):
    Image.fromarray(photo).save(folder / name)
  out = str(tmp_path / 'out')
  report = encode.main(workdir, config, 'best', None, out_dir=out, input_path=str(folder))
  assert 'converted as training converts them: 5 colour images made grayscale, 5 images of ' \
         'another size resized to 28x28' in capsys.readouterr().out
  assert sorted(os.listdir(out)) == ['photos_encode.json', 'photos_files.txt',
                                     'photos_latents.npy']  # no labels: none were given
  assert report['input'] == str(folder) and report['num_images'] == 5
  with open(os.path.join(out, 'photos_files.txt')) as f:
    assert f.read().splitlines() == [str(folder / n) for n in names]
  run = evaluate.load_run(workdir, config, 'best', 'test')
  converted = np.stack([given.convert(p, (28, 28, 1))[0] for p in photos])
  latents = np.load(os.path.join(out, 'photos_latents.npy'))
  np.testing.assert_array_equal(latents, tsne.encode(run, converted))
  np.save(tmp_path / 'photos.npy', photos)  # the same images as an array: the same latents
  encode.main(workdir, config, 'best', None, out_dir=out, input_path=str(tmp_path / 'photos.npy'))
  np.testing.assert_array_equal(np.load(os.path.join(out, 'photos_latents.npy')), latents)
  assert sorted(os.listdir(out)) == ['photos_encode.json', 'photos_latents.npy']  # none stale
  with pytest.raises(UserError, match='--input=.* and --split=test: name one'):
    encode.main(workdir, config, 'best', 'test', out_dir=out, input_path=str(folder))
  with pytest.raises(UserError, match='--input=.*nothing does not exist'):
    encode.main(workdir, config, 'best', None, out_dir=out, input_path=str(tmp_path / 'nothing'))
  with pytest.raises(UserError, match='--out_dir=.* is inside --input=.*: what is written there '
                     'would be read as inputs next time'):
    encode.main(workdir, config, 'best', None, out_dir=str(folder / 'latents'),
                input_path=str(folder))
  moved = config.copy_and_resolve_references()
  moved.data.image_size = 40
  with pytest.raises(UserError, match='--config.data.* names data, which --input=.* leaves '
                     'unread'):
    encode.main(workdir, moved, 'best', None, out_dir=out, input_path=str(folder))
  os.mkfifo(folder / 'more' / 'pipe.png')  # a named pipe would block its reader: not an image
  assert encode.main(workdir, config, 'best', None, out_dir=out,
                     input_path=str(folder))['num_images'] == 5
  np.save(tmp_path / 'one.npy', photos[0])
  with pytest.raises(UserError, match=r'has shape \(40, 40, 3\): one image\? Save it as '
                     r'\(1, 40, 40, 3\)'):
    encode.main(workdir, config, 'best', None, out_dir=out, input_path=str(tmp_path / 'one.npy'))
  # scikit-learn's digits.data: images flattened to rows of the model's 28 x 28 pixels
  np.save(tmp_path / 'rows.npy', np.zeros((3, 784), np.float32))
  with pytest.raises(UserError, match=re.escape(
      'has shape (3, 784): 3 images flattened to rows? Save them as images: '
      'array.reshape(3, 28, 28)')):
    encode.main(workdir, config, 'best', None, out_dir=out, input_path=str(tmp_path / 'rows.npy'))
  nan = np.full((3, 28, 28), 0.5, np.float32)
  nan[0, 0, 0] = np.nan
  np.save(tmp_path / 'nan.npy', nan)
  with pytest.raises(UserError, match='nan.npy holds 1 NaN or infinite values'):
    encode.main(workdir, config, 'best', None, out_dir=out, input_path=str(tmp_path / 'nan.npy'))


def test_a_colour_image_is_made_grayscale_and_resized_as_training_does_it():
  from ae_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from ae_jax.input_pipeline import given  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  photo = np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)
  converted, done = given.convert(photo, (28, 28, 1))
  data = default.get_config().data
  data.grayscale, data.image_size = True, 28
  as_trained = input_pipeline.finish(input_pipeline.Split(photo[None], None), data, 'a photo')
  assert done == {'grayscale', 'resized'}
  np.testing.assert_array_equal(converted, as_trained.images[0])


def test_an_input_is_named_after_itself_and_never_after_a_split(tmp_path):
  from ae_jax.input_pipeline import given  # pylint: disable=g-import-not-at-top
  for name in ('scans', 'scans.v2', 'test'):
    (tmp_path / name).mkdir()
  assert given.input_name(str(tmp_path / 'scans') + '/') == 'scans'
  assert given.input_name(str(tmp_path / 'scans.v2')) == 'scans.v2'  # a folder keeps its dots
  assert given.input_name(str(tmp_path / 'scans.npy')) == 'scans'
  # the outputs of a folder named test would replace those of the run's test split
  assert given.input_name(str(tmp_path / 'test')) == 'test_input'
  assert given.input_name(str(tmp_path / 'test_umap.npy')) == 'test_umap_input'  # a UMAP map's


def test_a_convolutional_model_takes_other_sizes_asked_for(tmp_path):
  config = small_config('cae')
  workdir = save_untrained(config, str(tmp_path / 'cae'))
  config = config.copy_and_resolve_references()
  config.data.image_size = 32  # the same weights: the CAE is convolutional throughout
  run = evaluate.load_run(workdir, config, 'latest', 'validation')
  assert run.images.shape[1:] == (32, 32, 1)


def test_refusals_are_one_line_and_write_nothing(trained_ae):
  workdir, config = trained_ae
  with pytest.raises(UserError, match='--variance: the AE has no posterior variance'):
    encode.main(workdir, config, 'best', 'test', variance=True)
  assert_script_refuses('encode.sh', workdir, '--split=tset', "--split='tset' is not one of")
  assert_script_refuses('encode.sh', workdir, '--variance', 'no posterior variance')
  missing = os.path.join(os.path.dirname(workdir), 'no_run')
  assert_one_line_error(run_script('encode.sh', missing, '--config.data.source=folder'),
                        f'{missing}/config.json does not exist')
  assert not os.path.exists(os.path.join(workdir, 'encode'))


def test_the_script_encodes_the_last_trained_run(trained_ae, tmp_path):
  workdir, _ = trained_ae
  result = run_script('encode.sh', workdir, '--split=validation', f'--out_dir={tmp_path}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'validation split: 200 latents of 32 dimensions' in result.stdout
  assert 'read as the model takes them' not in result.stdout  # the run's own data
  assert_one_line_error(run_script('encode.sh', str(tmp_path / 'none')), 'config.json does not')


def test_a_full_disk_is_one_line_and_keeps_the_latents_written_before(tmp_path, request):
  # A memory map onto a full disk kills the interpreter (SIGBUS): the space is reserved first,
  # where a full disk is an OSError.
  config = small_config('ae')
  workdir = save_untrained(config, str(tmp_path / 'ae'))
  out = str(tmp_path / 'out')
  encode.main(workdir, config, 'latest', 'validation', out_dir=out)
  before = np.load(os.path.join(out, 'validation_latents.npy'))
  files = sorted(os.listdir(out))
  request.getfixturevalue('disk_full_on_reserve')  # from here on
  with pytest.raises(UserError, match=f'^cannot write the latents to {out}/validation_latents.npy: '
                                      'No space left on device; free some space on that disk, '
                                      'or choose another --out_dir$'):
    encode.main(workdir, config, 'latest', 'validation', out_dir=out)
  assert sorted(os.listdir(out)) == files  # no temporary file left
  np.testing.assert_array_equal(np.load(os.path.join(out, 'validation_latents.npy')), before)


def test_a_disk_that_reserves_nothing_and_is_full_is_an_error_not_a_crash(tmp_path, monkeypatch):
  # A filesystem without posix_fallocate (some network and FUSE filesystems) gets zeros written
  # instead: a memory map onto a full disk would be a SIGBUS at the first row written.
  with small_disk(tmp_path / 'disk', '1m') as disk:
    def unsupported(fd, offset, length):
      raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, 'posix_fallocate', unsupported)
    small = npy_writer(str(disk / 'small.npy'), (100, 8), np.float32)
    small[:] = np.arange(800).reshape(100, 8)
    small.flush()
    del small  # its memory map holds the disk
    np.testing.assert_array_equal(np.load(disk / 'small.npy'), np.arange(800).reshape(100, 8))
    with pytest.raises(OSError, match='No space left on device') as error:
      npy_writer(str(disk / 'big.npy'), (1000, 1000), np.float32, name='latents.npy')
    assert error.value.filename == 'latents.npy'
    assert os.listdir(disk) == ['small.npy']
