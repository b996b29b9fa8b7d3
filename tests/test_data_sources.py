"""Every data source trains, evaluates and maps its latents; bad data gets a clear message."""

import os
import re

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from ae_jax import UserError
from ae_jax import evaluate
from ae_jax import input_pipeline
from ae_jax.input_pipeline.sources import tfds as tfds_source
from ae_jax import metric_writers
from ae_jax import train
from ae_jax import tsne
from conftest import MNIST_SMALL
from conftest import ROOT
from conftest import assert_one_line_error
from conftest import environment
from conftest import run_module
from conftest import write_huge_png
from configs import default

DIGITS = input_pipeline.read_idx(os.path.join(MNIST_SMALL, 'train-images-idx3-ubyte.gz'))
LABELS = input_pipeline.read_idx(os.path.join(MNIST_SMALL, 'train-labels-idx1-ubyte.gz'))


def _config(source, path=None, model='AE', **data):
  config = default.get_config()
  config.model.name = model
  if model == 'CAE':
    config.model.features = (4, 8, 8, 16)
  config.data.source = source
  config.data.path = path
  config.data.update(data)
  config.batch_size = 16
  config.num_epochs = 1
  config.steps_per_call = 4
  return config


def _colour(images):
  """Real digits in colour: red strokes on a blue-ish ground."""
  return np.stack([images, images // 3, 255 - images], -1).astype(np.uint8)


def _write_pngs(folder, images, names=None):
  os.makedirs(folder, exist_ok=True)
  for i, image in enumerate(images):
    Image.fromarray(image.squeeze()).save(os.path.join(folder, f'{(names or {}).get(i, i)}.png'))


def _train_evaluate_map(config, workdir, split='validation'):
  """A real (short) training run, then evaluation and t-SNE of it."""
  train.train_and_evaluate(config, workdir)
  [row] = metric_writers.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert np.isfinite(row['val_loss'])
  report = evaluate.main(workdir, config, 'latest', split, num_examples=3)
  numbers = tsne.main(workdir, config, 'latest', split, num_points=40, num_train_points=60,
                      perplexity=5.0, seed=0)
  return report, numbers


@pytest.mark.parametrize('layout', ['classes', 'flat', 'split_folders'])
@pytest.mark.parametrize('colour', [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_folder_of_images(tmp_path, layout, colour):
  images = _colour(DIGITS[:96]) if colour else DIGITS[:96]
  labels = LABELS[:96]
  root = tmp_path / 'images'
  if layout == 'classes':
    for c in range(10):
      _write_pngs(root / f'digit_{c}', images[labels == c])
  elif layout == 'flat':
    _write_pngs(root, images)
  else:  # train/ and test/, each with class folders
    for split, part in (('train', slice(0, 80)), ('test', slice(80, 96))):
      for c in range(10):
        _write_pngs(root / split / f'digit_{c}', images[part][labels[part] == c])
  config = _config('folder', str(root), model='CAE' if colour else 'AE')
  splits = input_pipeline.load_splits(config.data)
  assert splits['train'].images.shape[1:] == ((28, 28, 3) if colour else (28, 28, 1))
  if layout == 'flat':
    assert splits['train'].labels is None and 'test' not in splits
  else:
    assert splits['train'].label_names[:2] == ('digit_0', 'digit_1')
  assert ('test' in splits) == (layout == 'split_folders')
  report, numbers = _train_evaluate_map(
      config, str(tmp_path / 'run'), split='test' if layout == 'split_folders' else 'validation')
  assert report['clean']['psnr'] > 0
  assert ('knn_accuracy' in numbers) == (layout != 'flat')


def test_colour_folder_to_grayscale_and_resized(tmp_path):
  _write_pngs(tmp_path / 'images', _colour(DIGITS[:40]))
  config = _config('folder', str(tmp_path / 'images'), grayscale=True, image_size=16)
  splits = input_pipeline.load_splits(config.data)
  assert splits['train'].images.shape[1:] == (16, 16, 1)


def test_a_test_folder_without_a_class_keeps_the_train_splits_label_numbers(tmp_path):
  # labels are numbered by the train/ folder's classes: a test/ that lacks digit_0 must still
  # call its digit_1 images 1, or every number about them compares the wrong classes
  root = tmp_path / 'images'
  for c in range(3):
    _write_pngs(root / 'train' / f'digit_{c}', DIGITS[LABELS == c][:4])
  for c in (1, 2):
    _write_pngs(root / 'test' / f'digit_{c}', DIGITS[LABELS == c][4:6])
  test = input_pipeline.load_splits(_config('folder', str(root)).data)['test']
  assert test.label_names == ('digit_0', 'digit_1', 'digit_2')
  assert test.labels.tolist() == [1, 1, 2, 2]


def test_what_the_user_may_not_expect_is_on_the_data_line(tmp_path, capsys):
  _write_pngs(tmp_path / 'mixed', DIGITS[:30])
  _write_pngs(tmp_path / 'mixed', _colour(DIGITS[30:40]), {i: f'c{i}' for i in range(10)})
  config = _config('folder', str(tmp_path / 'mixed'))
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert ('30 of the 40 files are grayscale and 10 colour: all are trained as colour '
          '(--config.data.grayscale=true makes them grayscale)') in capsys.readouterr().out
  config.data.grayscale = True
  assert input_pipeline.load_splits(config.data)['train'].note is None

  images_only = tmp_path / 'images_only'
  images_only.mkdir()
  os.symlink(os.path.join(MNIST_SMALL, 'train-images-idx3-ubyte.gz'),
             images_only / 'train-images-idx3-ubyte.gz')
  note = input_pipeline.load_splits(_config('idx', str(images_only)).data)['train'].note
  assert note.startswith('unlabelled') and 'the t-SNE map has one colour' in note


def test_images_of_different_sizes_need_image_size(tmp_path):
  _write_pngs(tmp_path / 'images', DIGITS[:5])
  Image.fromarray(DIGITS[5][:20, :24]).save(tmp_path / 'images' / 'odd.png')
  config = _config('folder', str(tmp_path / 'images'))
  with pytest.raises(UserError, match=r'differ in size .*odd.png is 24x20.*image_size=N'):
    input_pipeline.load_splits(config.data)
  config.data.image_size = 28
  assert input_pipeline.load_splits(config.data)['train'].images.shape[1:] == (28, 28, 1)


def test_big_endian_16_bit_and_exif_turned_images_read_as_viewers_show_them(tmp_path):
  from ae_jax.input_pipeline.sources import folder  # pylint: disable=g-import-not-at-top
  decode, header = folder._decode, folder._header  # pylint: disable=protected-access
  ramp = np.linspace(0, 65535, 64).reshape(8, 8)
  Image.frombytes('I;16B', (8, 8), ramp.astype('>u2').tobytes()).save(tmp_path / 'imagej.tif')
  decoded = decode(str(tmp_path / 'imagej.tif'), None)
  assert decoded.shape == (8, 8, 1)
  np.testing.assert_allclose(decoded[..., 0], ramp / 65535 * 255, atol=1)  # scaled, not clipped
  wide = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (20, 1)))  # 40 wide, 20 high
  exif = wide.getexif()
  exif[0x0112] = 6  # stored on its side: viewers turn it a quarter, to 20 wide and 40 high
  wide.save(tmp_path / 'phone.jpg', exif=exif)
  assert decode(str(tmp_path / 'phone.jpg'), None).shape == (40, 20, 1)
  assert header(str(tmp_path / 'phone.jpg')) == ((20, 40), True)
  # a float TIFF's NaN and infinite pixels read as 0; one of nothing else is no image
  floats = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
  floats[0, :2] = np.nan, np.inf
  Image.fromarray(floats, 'F').save(tmp_path / 'masked.tif')
  decoded = decode(str(tmp_path / 'masked.tif'), None)[..., 0]
  assert decoded[0, 0] == decoded[0, 1] == 0 and decoded[7, 7] == 255
  Image.fromarray(np.full((8, 8), np.nan, np.float32), 'F').save(tmp_path / 'nan.tif')
  with pytest.raises(UserError, match=r'nan.tif: it holds no finite pixel value'):
    decode(str(tmp_path / 'nan.tif'), None)
  # black strokes on a transparent canvas (a drawing program's export) show on white, as in a
  # viewer, not as one flat black; an image whose colours draw it loses its transparency only
  stroke = np.zeros((8, 8, 4), np.uint8)
  stroke[2:6, 3, 3] = 255
  Image.fromarray(stroke, 'RGBA').save(tmp_path / 'drawn.png')
  drawn = decode(str(tmp_path / 'drawn.png'), None)
  assert drawn.shape == (8, 8, 3) and (drawn[2:6, 3] == 0).all() and (drawn[0] == 255).all()
  Image.fromarray(stroke[..., 2:], 'LA').save(tmp_path / 'drawn_grey.png')
  drawn = decode(str(tmp_path / 'drawn_grey.png'), None)
  assert drawn.shape == (8, 8, 1) and drawn[3, 3, 0] == 0 and drawn[0, 0, 0] == 255
  photo = np.dstack([np.tile(np.arange(8, dtype=np.uint8) * 30, (8, 1))] * 3
                    + [np.full((8, 8), 128, np.uint8)])
  Image.fromarray(photo, 'RGBA').save(tmp_path / 'photo.png')
  np.testing.assert_array_equal(decode(str(tmp_path / 'photo.png'), None), photo[..., :3])


def test_bad_folders_name_the_file_and_the_fix(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(UserError, match='empty holds no image files'):
    input_pipeline.load_splits(_config('folder', str(tmp_path / 'empty')).data)
  _write_pngs(tmp_path / 'broken', DIGITS[:3])
  with open(tmp_path / 'broken' / '1.png', 'rb') as f:
    data = f.read()
  with open(tmp_path / 'broken' / '1.png', 'wb') as f:
    f.write(data[:len(data) // 2])  # a truncated file
  with pytest.raises(UserError, match=r'cannot read the image .*broken/1.png.*Delete or replace'):
    input_pipeline.load_splits(_config('folder', str(tmp_path / 'broken')).data)
  (tmp_path / 'broken' / '1.png').write_bytes(b'not an image at all')
  with pytest.raises(UserError, match=r'cannot read the image .*broken/1.png'):
    input_pipeline.load_splits(_config('folder', str(tmp_path / 'broken')).data)
  _write_pngs(tmp_path / 'mixed' / 'cats', DIGITS[:2])
  _write_pngs(tmp_path / 'mixed', DIGITS[2:4])
  with pytest.raises(UserError, match='both image files and class folders'):
    input_pipeline.load_splits(_config('folder', str(tmp_path / 'mixed')).data)
  with pytest.raises(UserError, match='is not a folder'):
    input_pipeline.load_splits(_config('folder', str(tmp_path / 'nowhere')).data)


@pytest.mark.parametrize('labelled', [True, False])
def test_arrays(tmp_path, labelled):
  path = str(tmp_path / 'digits.npz')
  arrays = {'images': DIGITS[:96].astype(np.float32) / 255}  # floats in [0, 1] are fine
  if labelled:
    arrays['labels'] = LABELS[:96]
    arrays['label_names'] = np.array([f'd{i}' for i in range(10)])
  np.savez(path, **arrays)
  config = _config('arrays', path)
  splits = input_pipeline.load_splits(config.data)
  assert splits['train'].images.dtype == np.uint8 and splits['train'].images.shape[1:] == (28, 28, 1)
  np.testing.assert_array_equal(
      np.sort(np.concatenate([splits['train'].images, splits['validation'].images]), axis=0),
      np.sort(DIGITS[:96, ..., None], axis=0))
  _, numbers = _train_evaluate_map(config, str(tmp_path / 'run'))
  assert ('knn_accuracy' in numbers) == labelled


def test_arrays_with_splits_and_a_plain_npy(tmp_path):
  np.savez(tmp_path / 'splits.npz', train_images=_colour(DIGITS[:64]), train_labels=LABELS[:64],
           test_images=_colour(DIGITS[64:80]), test_labels=LABELS[64:80])
  splits = input_pipeline.load_splits(_config('arrays', str(tmp_path / 'splits.npz')).data)
  assert splits['test'].images.shape == (16, 28, 28, 3)
  np.save(tmp_path / 'images.npy', DIGITS[:30])
  splits = input_pipeline.load_splits(_config('arrays', str(tmp_path / 'images.npy')).data)
  assert splits['train'].labels is None and len(splits['train'].images) == 24
  np.save(tmp_path / 'binarized.npy', DIGITS[:30] > 127)  # binarized images: black and white
  images = input_pipeline.load_splits(_config('arrays', str(tmp_path / 'binarized.npy')).data)[
      'train'].images
  assert images.dtype == np.uint8 and set(np.unique(images)) == {0, 255}


def test_float_images_are_rounded_to_the_nearest_uint8(tmp_path):
  # floats off the k/255 grid (a model's output, say): 0.999 is 255, not the 254 of truncation
  values = np.array([0.0, 0.25, 0.5, 0.999, 1.0])
  np.save(tmp_path / 'floats.npy', np.broadcast_to(values, (10, 2, 5)))
  images = input_pipeline.load_splits(_config('arrays', str(tmp_path / 'floats.npy')).data)[
      'train'].images
  assert images[0, ..., 0].tolist() == [[0, 64, 128, 255, 255]] * 2


def test_the_label_names_of_an_npz_name_its_classes(tmp_path):
  np.savez(tmp_path / 'named.npz', images=DIGITS[:20], labels=LABELS[:20],
           label_names=np.array([f'd{i}' for i in range(10)]))
  splits = input_pipeline.load_splits(_config('arrays', str(tmp_path / 'named.npz')).data)
  assert splits['train'].label_names == tuple(f'd{i}' for i in range(10))
  assert splits['validation'].label_names == splits['train'].label_names


@pytest.mark.parametrize('arrays, message', [
    (dict(images=np.zeros((4, 28), np.uint8)), r'has shape \(4, 28\): images must be'),
    (dict(images=np.zeros((4, 8, 8, 2), np.uint8)), r'images must be .*C = 1 or 3'),
    (dict(images=np.zeros((4, 0, 0), np.uint8)), r'has shape \(4, 0, 0, 1\): its images have no '
     'pixels'),
    (dict(images=np.full((4, 8, 8), 3.0)), r'float64 values in \[3.0, 3.0\]: give uint8'),
    (dict(images=np.zeros((4, 8, 8), np.complex64)), 'complex64'),
    (dict(images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(3, np.int64)),
     'has 3 labels for 4 images'),
    (dict(images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(4, np.float32)),
     'must be a vector of class numbers'),
    (dict(pictures=np.zeros((4, 8, 8), np.uint8)), "name the images 'images'"),
])
def test_bad_arrays_say_what_is_wrong(tmp_path, arrays, message):
  np.savez(tmp_path / 'bad.npz', **arrays)
  with pytest.raises(UserError, match=message) as error:
    input_pipeline.load_splits(_config('arrays', str(tmp_path / 'bad.npz')).data)
  assert 'bad.npz' in str(error.value)


def test_not_an_array_file(tmp_path):
  (tmp_path / 'x.npz').write_bytes(b'garbage')
  with pytest.raises(UserError, match=r'cannot read .*x.npz as a NumPy .npy or .npz file: it is '
                     'neither$'):  # not numpy's offer to unpickle it
    input_pipeline.load_splits(_config('arrays', str(tmp_path / 'x.npz')).data)
  # images of several sizes, saved as an object array: reading them would unpickle
  ragged = np.array([np.zeros((8, 8)), np.zeros((4, 4))], dtype=object)
  np.save(tmp_path / 'ragged.npy', ragged, allow_pickle=True)
  np.savez(tmp_path / 'ragged.npz', images=ragged)
  for name, where in [('ragged.npy', 'ragged.npy'), ('ragged.npz', r'ragged.npz\[images\]')]:
    with pytest.raises(UserError, match=where + ' holds Python objects, not an array of numbers'):
      input_pipeline.load_splits(_config('arrays', str(tmp_path / name)).data)


def test_scikit_learn_digits(tmp_path):
  config = _config('digits', model='CAE')
  splits = input_pipeline.load_splits(config.data)
  assert splits['train'].images.shape[1:] == (8, 8, 1) and 'test' not in splits
  assert len(splits['train'].images) + len(splits['validation'].images) == 1797
  _train_evaluate_map(config, str(tmp_path / 'run'))
  with pytest.raises(UserError, match='has no test split: use --split=validation$'):
    evaluate.load_run(str(tmp_path / 'run'), config, 'latest', 'test')


def test_a_test_split_the_data_lacks_is_refused_unless_it_is_the_default(tmp_path):
  assert 'test' not in input_pipeline.load_splits(_config('digits').data)  # 'test': none there
  with pytest.raises(UserError, match=re.escape(
      "scikit-learn's digits has no 'tset' split (config.data.test_split); it has train: name "
      "one of them, or '' for none")):
    input_pipeline.load_splits(_config('digits', test_split='tset').data)
  path = str(tmp_path / 'images.npz')
  np.savez(path, train_images=DIGITS[:40], test_images=DIGITS[40:50])
  with pytest.raises(UserError, match="has no 'tset' split.*it has train, test"):
    input_pipeline.load_splits(_config('arrays', path, test_split='tset').data)


def _pngs(folder, count, start=0):
  os.makedirs(folder, exist_ok=True)
  for i in range(start, start + count):
    Image.fromarray(DIGITS[i]).save(os.path.join(folder, f'{i}.png'))


def test_class_folders_are_read_as_torchvisions_image_folder_reads_them(tmp_path):
  root = str(tmp_path / 'images')
  _pngs(f'{root}/a', 10)
  _pngs(f'{root}/b/nested', 10, 10)  # a class's images in a subfolder of it
  _pngs(f'{root}/.ipynb_checkpoints', 10, 20)  # hidden: no class
  Image.fromarray(DIGITS[30]).save(f'{root}/a/._0.png')  # macOS's metadata file, hidden
  splits = input_pipeline.load_splits(_config('folder', root, test_split='').data)
  assert splits['train'].label_names == ('a', 'b')
  assert len(splits['train'].images) + len(splits['validation'].images) == 20
  os.makedirs(f'{root}/c')
  with pytest.raises(UserError, match=re.escape(f'{root}/c/ holds no images, beside class '
                                                f'folders that do: fill it, or move it out')):
    input_pipeline.load_splits(_config('folder', root, test_split='').data)
  os.rmdir(f'{root}/c')
  os.symlink(str(tmp_path / 'gone.png'), f'{root}/a/dead.png')
  with pytest.raises(UserError, match='dead.png is a link to a file that does not exist'):
    input_pipeline.load_splits(_config('folder', root, test_split='').data)


def test_classes_named_by_numbers_are_chosen_by_their_names_alone(tmp_path):
  root = str(tmp_path / 'images')
  _pngs(f'{root}/3', 10)
  _pngs(f'{root}/7', 20, 10)
  splits = input_pipeline.load_splits(_config('folder', root, test_split='',
                                              classes='7').data)
  assert len(splits['train'].images) + len(splits['validation'].images) == 20
  with pytest.raises(UserError, match="the data has no class '1'; it has 3, 7$"):
    input_pipeline.load_splits(_config('folder', root, test_split='', classes='1').data)


@pytest.mark.parametrize('arrays, message', [
    (dict(labels=np.arange(40) % 3 - 1), r'holds negative labels \(the least is -1\)'),
    (dict(labels=np.arange(40) % 3, label_names=['a', 'b']),
     'holds labels up to 2, but label_names names 2 classes: give a name to each class'),
])
def test_labels_an_npz_cannot_mean_are_named(tmp_path, arrays, message):
  np.savez(tmp_path / 'd.npz', images=DIGITS[:40], **arrays)
  with pytest.raises(UserError, match=message):
    input_pipeline.load_splits(_config('arrays', str(tmp_path / 'd.npz')).data)


def test_an_npz_of_a_test_split_alone_is_told_how_to_train_on_it(tmp_path):
  np.savez(tmp_path / 'd.npz', test_images=DIGITS[:40])
  with pytest.raises(UserError, match=re.escape(
      "has no 'train' split (config.data.train_split); it has test: train on one, e.g. "
      "--config.data.train_split=test --config.data.test_split=''")):
    input_pipeline.load_splits(_config('arrays', str(tmp_path / 'd.npz')).data)


def test_idx_files_named_as_kaggle_names_them_and_one_too_long(tmp_path):
  import gzip  # pylint: disable=g-import-not-at-top
  for stem, dotted in (('train-images-idx3-ubyte', 'train-images.idx3-ubyte'),
                       ('train-labels-idx1-ubyte', 'train-labels.idx1-ubyte')):
    with gzip.open(os.path.join(MNIST_SMALL, stem + '.gz')) as f:
      (tmp_path / dotted).write_bytes(f.read())
  splits = input_pipeline.load_splits(_config('idx', str(tmp_path), test_split='').data)
  assert len(splits['train'].images) + len(splits['validation'].images) == len(DIGITS)
  images = tmp_path / 'train-images.idx3-ubyte'
  images.write_bytes(images.read_bytes() + b'more')
  with pytest.raises(UserError, match='holds 4 bytes more than its header promises'):
    input_pipeline.load_splits(_config('idx', str(tmp_path), test_split='').data)


def test_scikit_learn_digits_span_0_to_255():
  # their values 0-16 scaled to 0-255, like every other source's pixels
  splits = input_pipeline.load_splits(_config('digits').data)
  images = np.concatenate([splits['train'].images, splits['validation'].images])
  assert images.min() == 0 and images.max() == 255


def test_any_tfds_image_dataset(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, '_can_reach', lambda url: True)  # mock_data needs none
  config = _config('tfds', name='cifar10', data_dir=str(tmp_path / 'tfds'))
  with tfds.testing.mock_data(num_examples=40):
    splits = input_pipeline.load_splits(config.data)
    assert splits['train'].images.shape[1:] == (32, 32, 3)
    assert len(splits['train'].label_names) == 10  # (mock_data names them by number)
    config.data.grayscale = True
    assert input_pipeline.load_splits(config.data)['test'].images.shape[1:] == (32, 32, 1)
    # one resize for every source: the same image_size gives the pixels PIL gives the arrays
    config.data.grayscale, config.data.image_size = False, 20
    resized = input_pipeline.load_splits(config.data)['test'].images
  np.testing.assert_array_equal(resized, input_pipeline.resize(splits['test'].images, 20))


def test_tfds_images_of_varying_size_need_image_size(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, '_can_reach', lambda url: True)
  config = _config('tfds', name='oxford_flowers102', data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(UserError, match='differ in size: choose one with --config.data.image_size'):
    input_pipeline.load_splits(config.data)
  config.data.image_size = 24
  with tfds.testing.mock_data(num_examples=10):
    splits = input_pipeline.load_splits(config.data)
  assert splits['train'].images.shape[1:] == (24, 24, 3)
  assert 'validation' in splits  # oxford_flowers102 has a validation split of its own


def test_unknown_tfds_name_suggests_the_closest(tmp_path):
  with pytest.raises(UserError, match="no dataset 'fashon_mnist'.*closest names are: fashion_mnist"):
    input_pipeline.load_splits(_config('tfds', name='fashon_mnist').data)


def test_a_truncated_image_left_on_disk_is_found_before_anything_is_written(tmp_path):
  _write_pngs(tmp_path / 'images', DIGITS[:40])
  data = (tmp_path / 'images' / '7.png').read_bytes()
  (tmp_path / 'images' / '7.png').write_bytes(data[:len(data) // 2])
  config = _config('folder', str(tmp_path / 'images'), placement='disk', test_split='')
  with pytest.raises(UserError, match=r'cannot read the image .*images/7.png'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


@pytest.mark.parametrize('placement', ['auto', 'disk'])
def test_an_image_too_large_to_open_is_named_before_anything_is_written(tmp_path, placement):
  _write_pngs(tmp_path / 'images', DIGITS[:40])
  write_huge_png(tmp_path / 'images' / 'huge.png')
  config = _config('folder', str(tmp_path / 'images'), placement=placement, test_split='')
  with pytest.raises(UserError, match=r'^cannot read the image .*images/huge.png: it is too large '
                                      r'\(.*\)\. Delete it, or replace it with a smaller copy$'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


@pytest.mark.parametrize('kind, placement', [('npy', 'auto'), ('npy', 'disk'), ('npz', 'auto'),
                                             ('idx', 'auto')])
def test_a_file_of_no_images_is_named(tmp_path, kind, placement):
  empty = np.zeros((0, 8, 8), np.uint8)
  if kind == 'npy':
    path = str(tmp_path / 'images.npy')
    np.save(path, empty)
    config = _config('arrays', path, placement=placement)
  elif kind == 'npz':
    path = str(tmp_path / 'images.npz')
    np.savez(path, images=empty, labels=np.zeros(0, np.int64))
    config, path = _config('arrays', path), f'{path}[images]'
  else:
    path = str(tmp_path / 'train-images-idx3-ubyte')
    with open(path, 'wb') as f:  # an IDX header of shape (0, 8, 8), and no pixels
      f.write(bytes([0, 0, 8, 3]) + b''.join(int(d).to_bytes(4, 'big') for d in (0, 8, 8)))
    config = _config('idx', str(tmp_path), test_split='')
  with pytest.raises(UserError, match=re.escape(f'{path} holds no images (an array of shape '
                                                '(0, 8, 8))')):
    input_pipeline.load_splits(config.data)


def test_an_unknown_tfds_name_is_refused_before_tfds_looks_in_the_cloud(monkeypatch):
  """tfds.builder looks for an unknown name among the community datasets in Google Cloud
  Storage, whose client logs credential lookups before the error."""
  def must_not_look(*args, **kwargs):
    raise AssertionError('tfds.builder was asked for a name that tfds does not register')
  monkeypatch.setattr(tfds, 'builder', must_not_look)
  with pytest.raises(UserError, match="no dataset 'mnsit'.*closest names are: mnist"):
    input_pipeline.load_splits(_config('tfds', name='mnsit').data)
  with pytest.raises(UserError, match="no dataset 'mnsit/3.0.1'"):
    input_pipeline.load_splits(_config('tfds', name='mnsit/3.0.1').data)


def test_an_unknown_tfds_name_is_the_only_line_on_stderr(tmp_path):
  result = run_module('ae_jax.main', f'--config={ROOT}/configs/ae.py', '--config.data.name=mnsit',
                      f'--workdir={tmp_path / "run"}', timeout=120)
  assert_one_line_error(result, "tensorflow-datasets has no dataset 'mnsit'")
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_host_streaming_trains_exactly_like_device_placement(tmp_path):
  """Data too large for the devices streams from host memory, with the same numbers."""
  np.savez(tmp_path / 'd.npz', images=DIGITS[:200], labels=LABELS[:200])
  rows = {}
  for placement in ('device', 'host'):
    config = _config('arrays', str(tmp_path / 'd.npz'), placement=placement)
    config.num_epochs = 2
    train.train_and_evaluate(config, str(tmp_path / placement))
    rows[placement] = metric_writers.read_metrics(str(tmp_path / placement / 'metrics.jsonl'))
  for device_row, host_row in zip(rows['device'], rows['host']):
    assert device_row['train_loss'] == pytest.approx(host_row['train_loss'], rel=1e-6)
    assert device_row['val_loss'] == pytest.approx(host_row['val_loss'], rel=1e-6)


def test_a_npy_read_from_disk_trains_exactly_like_one_in_memory(tmp_path, monkeypatch, capsys):
  np.save(tmp_path / 'digits.npy', DIGITS[:320])
  rows_read = []
  real_getitem = input_pipeline.disk.Rows.__getitem__

  def counting(self, key):
    out = real_getitem(self, key)
    rows_read.append(len(out))
    return out
  monkeypatch.setattr(input_pipeline.disk.Rows, '__getitem__', counting)
  losses = {}
  for placement in ('host', 'disk'):
    config = _config('arrays', str(tmp_path / 'digits.npy'), placement=placement)
    config.num_epochs = 2
    train.train_and_evaluate(config, str(tmp_path / placement))
    losses[placement] = [(r['train_loss'], r['val_loss']) for r in metric_writers.read_metrics(
        str(tmp_path / placement / 'metrics.jsonl'))]
  assert 'read from disk a call at a time' in capsys.readouterr().out
  assert losses['disk'] == losses['host']
  # a call's batches at a time (4 steps of 16), never the split
  assert rows_read and max(rows_read) <= 4 * 16 * 2 and max(rows_read) < 256
  report = evaluate.main(str(tmp_path / 'disk'), config, 'latest', 'validation', num_examples=2)
  assert report['clean']['mse'] == pytest.approx(losses['disk'][-1][1], rel=1e-5)


@pytest.mark.parametrize('source, path, data, message', [
    ('arrays', 'images.npz', None, 'save the images as a .npy'),
    ('arrays', 'floats.npy', np.zeros((4, 8, 8), np.float32), 'reads uint8 images'),
    ('digits', None, None, "the source 'digits' is read into memory"),
])
def test_what_cannot_stream_from_disk_says_why(tmp_path, source, path, data, message):
  if path and path.endswith('.npz'):
    np.savez(tmp_path / path, images=DIGITS[:4])
  elif path:
    np.save(tmp_path / path, data)
  config = _config(source, path and str(tmp_path / path), placement='disk')
  with pytest.raises(UserError, match=message):
    input_pipeline.load_splits(config.data)


def test_a_folder_read_from_disk_trains_exactly_like_one_in_memory(tmp_path, monkeypatch):
  from ae_jax.input_pipeline.sources import folder  # pylint: disable=g-import-not-at-top
  images, labels = _colour(DIGITS[:200]), LABELS[:200]
  images[::3] = np.repeat(DIGITS[:200:3, ..., None], 3, -1)  # some files grayscale
  for c in range(10):
    picked = np.flatnonzero(labels == c)
    _write_pngs(tmp_path / 'images' / f'digit_{c}', [
        images[i][..., 0] if i % 3 == 0 else images[i] for i in picked])
  decoded = []
  real = folder.Files.__getitem__
  monkeypatch.setattr(folder.Files, '__getitem__',
                      lambda self, key: decoded.append(1) or real(self, key))
  losses = {}
  for placement in ('host', 'disk'):
    config = _config('folder', str(tmp_path / 'images'), placement=placement)
    train.train_and_evaluate(config, str(tmp_path / placement))
    losses[placement] = [(r['train_loss'], r['val_loss']) for r in metric_writers.read_metrics(
        str(tmp_path / placement / 'metrics.jsonl'))]
  assert losses['disk'] == losses['host'] and decoded
  config.data.grayscale = True
  assert input_pipeline.load_splits(config.data)['train'].images[:2].shape == (2, 28, 28, 1)


@pytest.mark.parametrize('source', ['arrays', 'folder'])
def test_auto_leaves_data_larger_than_a_quarter_of_host_memory_on_disk(tmp_path, monkeypatch,
                                                                      source):
  if source == 'arrays':
    path = str(tmp_path / 'digits.npy')
    np.save(path, DIGITS[:100])
  else:
    path = str(tmp_path / 'images')
    _write_pngs(path, DIGITS[:100])
  decoded_size = 100 * 28 * 28 * (1 if source == 'arrays' else 3)  # a folder counts colour
  for host_memory, on_disk in ((4 * decoded_size + 4096, False), (4 * decoded_size - 4096, True)):
    monkeypatch.setattr(input_pipeline.feeds, 'host_memory', lambda: host_memory)
    splits = input_pipeline.load_splits(_config(source, path).data)
    assert isinstance(splits['train'].images, input_pipeline.disk.OnDisk) == on_disk
    assert len(splits['train'].images) == 80


class AeJaxColourDigits(tfds.core.GeneratorBasedBuilder):
  """Real digits in colour as a tfds dataset (registered as 'ae_jax_colour_digits'), prepared
  from memory: no download."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(28, 28, 3)),
        'label': tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(0, 240), 'test': self._generate_examples(240, 40)}

  def _generate_examples(self, start, num):
    for i in range(start, start + num):
      yield i, {'image': _colour(DIGITS[i]), 'label': int(LABELS[i])}


def test_a_tfds_dataset_read_from_disk_trains_exactly_like_one_in_memory(tmp_path, monkeypatch):
  """Prepared as TFRecord files by a first run that reads it into memory, then prepared again
  as ArrayRecord files for reading in any order; grayscale and resized either way."""
  monkeypatch.setattr(tfds_source, '_can_reach', lambda url: True)
  decoded = []
  real = tfds_source.Records.__getitem__
  monkeypatch.setattr(tfds_source.Records, '__getitem__',
                      lambda self, key: decoded.append(1) or real(self, key))
  losses, splits = {}, {}
  for placement in ('host', 'disk'):
    config = _config('tfds', name='ae_jax_colour_digits', data_dir=str(tmp_path / 'tfds'),
                     placement=placement, grayscale=True, image_size=20)
    train.train_and_evaluate(config, str(tmp_path / placement))
    losses[placement] = [(r['train_loss'], r['val_loss']) for r in metric_writers.read_metrics(
        str(tmp_path / placement / 'metrics.jsonl'))]
    splits[placement] = input_pipeline.load_splits(config.data)
  assert losses['disk'] == losses['host'] and decoded
  assert os.path.isdir(tmp_path / 'tfds' / 'array_record' / 'ae_jax_colour_digits')
  for role in ('train', 'validation', 'test'):
    on_disk, in_memory = splits['disk'][role], splits['host'][role]
    assert isinstance(on_disk.images, tfds_source.Records)
    np.testing.assert_array_equal(on_disk.images[np.arange(len(on_disk.images))],
                                  in_memory.images)
    np.testing.assert_array_equal(on_disk.labels, in_memory.labels)
  assert splits['disk']['train'].images.shape == (192, 20, 20, 1)


@pytest.mark.slow
def test_two_processes_read_disjoint_halves_of_each_batch_from_disk(tmp_path):
  """A folder on disk, two processes of 4 CPU devices against one of 8: each process decodes
  only its own devices' part of every batch, and the losses are those of one process."""
  import socket  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import ROOT, run_module  # pylint: disable=g-import-not-at-top,g-multiple-import
  for c in range(10):
    _write_pngs(tmp_path / 'images' / f'digit_{c}', DIGITS[:400][LABELS[:400] == c])
  flags = ['--config=configs/ae.py', '--config.data.source=folder',
           f'--config.data.path={tmp_path / "images"}', '--config.data.placement=disk',
           '--config.batch_size=32', '--config.num_epochs=1', '--config.steps_per_call=4',
           '--config.num_summary_images=0']
  one = run_module('ae_jax.main', f'--workdir={tmp_path / "one"}', *flags, devices=8)
  assert one.returncode == 0, one.stderr[-2000:]
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  processes = [subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'tests', 'train_worker.py'),
       f'--workdir={tmp_path / "two"}', *flags, f'--coordinator_address=127.0.0.1:{port}',
       '--num_processes=2', f'--process_id={i}'], cwd=ROOT, text=True,
      env=environment(4, {'READ_LOG': str(tmp_path / f'reads{i}')}),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (_, stderr) in zip(processes, outputs):
    assert p.returncode == 0, stderr[-2000:]
  assert 'read from disk a call at a time; 8 cpu device(s) in 2 processes' in outputs[0][0]
  reads = []
  for i in range(2):
    lines = (tmp_path / f'reads{i}').read_text().split('\n')
    # the 320 training images, one epoch: each read once, by one process or the other
    reads.append([int(x) for l in lines if l.startswith('320 ') for x in l.split()[1:]])
  assert len(reads[0]) == len(reads[1]) == 160  # half of each batch of 32, 10 steps
  assert set(reads[0]).isdisjoint(reads[1]) and len(set(reads[0]) | set(reads[1])) == 320
  rows = lambda d: metric_writers.read_metrics(str(tmp_path / d / 'metrics.jsonl'))
  [a], [b] = rows('one'), rows('two')
  assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-5)
  assert a['val_loss'] == pytest.approx(b['val_loss'], rel=1e-5)


def test_binarized_mnist_pixels_are_scaled_to_255(tmp_path, monkeypatch):
  """tfds's binarized_mnist stores pixels as 0 and 1, and has no labels (the papers' VAE data)."""
  monkeypatch.setattr(tfds_source, '_can_reach', lambda url: True)
  binary = (DIGITS[:30, ..., None] > 127).astype(np.uint8)

  def as_dataset(self, split, *args, **kwargs):
    del self, split, args, kwargs
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.data.Dataset.from_tensor_slices({'image': binary})

  config = _config('tfds', name='binarized_mnist', data_dir=str(tmp_path / 'tfds'))
  with tfds.testing.mock_data(num_examples=30, as_dataset_fn=as_dataset):
    splits = input_pipeline.load_splits(config.data)
  assert splits['train'].labels is None
  assert len(splits['train'].images) + len(splits['validation'].images) == 30
  for split in ('train', 'validation'):
    assert set(np.unique(splits[split].images).tolist()) == {0, 255}
  assert splits['train'].images.sum() + splits['validation'].images.sum() == binary.sum() * 255
