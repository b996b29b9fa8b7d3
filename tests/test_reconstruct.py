import os
import shutil

import numpy as np
import pytest

from ae_jax import UserError
from ae_jax import config_lib
from ae_jax import evaluate
from ae_jax import input_pipeline
from ae_jax import reconstruct
from conftest import MNIST_SMALL
from conftest import assert_one_line_error
from conftest import run_script
from conftest import save_untrained
from conftest import small_config
from conftest import write_huge_png


def _digits(n):
  return input_pipeline.read_idx(os.path.join(MNIST_SMALL, 't10k-images-idx3-ubyte.gz'))[:n]


@pytest.fixture
def image_folder(tmp_path):
  """12 PNGs: grayscale, colour, one of another size, one corrupt, one in a subfolder."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'in'
  (folder / 'sub').mkdir(parents=True)
  for i, digit in enumerate(_digits(10)):
    image = np.stack([digit, digit, 255 - digit], -1) if i % 2 else digit
    Image.fromarray(image).save(folder / f'{i}.png')
  Image.fromarray(_digits(11)[10]).resize((40, 33)).save(folder / 'sub' / 'large.png')
  (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot an image')
  return str(folder)


def test_a_folder_comes_back_with_its_names_and_the_corrupt_file_named(trained_ae, image_folder,
                                                                       tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  workdir, config = trained_ae
  write_huge_png(os.path.join(image_folder, 'huge.png'))  # more pixels than PIL opens
  # more pixels than PIL opens without a warning, and a name that the figure's font lacks
  Image.new('L', (10_000, 9_000)).save(os.path.join(image_folder, '0_顕微鏡.png'))
  out = str(tmp_path / 'out')
  result = run_script('reconstruct.sh', workdir, f'--input={image_folder}', f'--output={out}')
  assert result.returncode == 0, result.stderr[-2000:]
  skipped = [l for l in result.stderr.splitlines() if l.startswith('skipped: ')]
  assert len(skipped) == 2 and 'broken.png' in skipped[0]
  assert 'huge.png: it is too large' in skipped[1] and 'smaller copy' in skipped[1]
  assert result.stderr.splitlines() == skipped  # no library's warning besides
  assert ('converted as training converts them: 5 colour images made grayscale, 2 images of '
          'another size resized to 28x28') in result.stdout
  written = sorted(os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out)
                   for f in fs)
  assert written == sorted([f'{i}.png' for i in range(10)] + ['sub/large.png', '0_顕微鏡.png',
                                                               reconstruct.FIGURE])
  for name in ('0.png', '1.png', 'sub/large.png'):
    with Image.open(os.path.join(out, name)) as image:
      assert image.size == (28, 28) and image.mode == 'L'
  # each file holds its own image's reconstruction, as the model makes it
  run = evaluate.load_run(workdir, config, 'best', 'test')
  digits = _digits(10)[0:10:2, ..., None].astype(np.float32) / 255
  expected = np.asarray(run.model.apply(run.variables, digits, method='reconstruct'))
  outputs = np.stack([np.asarray(Image.open(os.path.join(out, f'{i}.png')), np.float32)
                      for i in range(0, 10, 2)])
  np.testing.assert_allclose(outputs / 255, expected[..., 0], atol=1 / 255 + 1e-6)

  before = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}
  again = run_script('reconstruct.sh', workdir, f'--input={image_folder}', f'--output={out}')
  assert_one_line_error(again, f'--output={out} already holds', '--overwrite')
  assert {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)} == before


def test_each_file_gets_its_own_reconstruction_whatever_the_calls(trained_ae, image_folder,
                                                                  tmp_path, monkeypatch):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from ae_jax import metrics  # pylint: disable=g-import-not-at-top
  workdir, config = trained_ae
  reconstruct.main(workdir, config, 'best', image_folder, str(tmp_path / 'one'), num_examples=0)
  config = config.copy_and_resolve_references()
  config.eval_batch_size = 4
  monkeypatch.setattr(metrics, 'OUTPUT_CALL_BYTES', 1)  # a batch a call: the 11 images in three
  reconstruct.main(workdir, config, 'best', image_folder, str(tmp_path / 'calls'),
                   num_examples=0)
  for name in ['0.png', '5.png', '9.png', 'sub/large.png']:
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'calls' / name)),
                                  np.asarray(Image.open(tmp_path / 'one' / name)))


def test_an_npy_and_one_file_and_overwrite(trained_ae, image_folder, tmp_path):
  workdir, config = trained_ae
  np.save(tmp_path / 'digits.npy', _digits(7).astype(np.float32) / 255)  # floats in [0, 1]
  out = str(tmp_path / 'out')
  report = reconstruct.main(workdir, config, 'best', str(tmp_path / 'digits.npy'), out)
  assert report['num_images'] == 7
  assert np.load(os.path.join(out, 'digits.npy')).shape == (7, 28, 28, 1)
  report = reconstruct.main(workdir, config, 'best', os.path.join(image_folder, '3.png'), out,
                            overwrite=True, num_examples=0)
  assert report['num_images'] == 1 and report['converted'] == {'grayscale': 1}
  assert sorted(os.listdir(out)) == sorted(['3.png', 'digits.npy', reconstruct.FIGURE])


def test_the_training_data_is_not_needed(trained_ae, image_folder, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained_ae[0], workdir)
  config = config_lib.load_config(workdir)
  config.data.path = str(tmp_path / 'moved')  # the training data is elsewhere now
  config_lib.write_config(config, workdir)
  report = reconstruct.main(workdir, config, 'best', image_folder, str(tmp_path / 'out'))
  assert report['num_images'] > 0


def test_a_denoiser_shows_what_it_does_to_noise(trained_ae, image_folder, tmp_path):
  workdir, config = trained_ae
  with pytest.raises(UserError, match='--add_noise: the AE trained without noise'):
    reconstruct.main(workdir, config, 'best', image_folder, str(tmp_path / 'a'), add_noise=True)
  config = config.copy_and_resolve_references()
  config.noise.std = 0.3  # as a denoising run: the same variables, the noise it adds
  report = reconstruct.main(workdir, config, 'best', image_folder, str(tmp_path / 'b'),
                            add_noise=True, num_examples=3)
  assert report['num_images'] == 11 and report['figure'].endswith(reconstruct.FIGURE)


def test_a_denoiser_adds_noise_only_when_asked(trained_ae, tmp_path):
  workdir, config = trained_ae
  np.save(tmp_path / 'digits.npy', _digits(7))
  reconstruct.main(workdir, config, 'best', str(tmp_path / 'digits.npy'), str(tmp_path / 'ae'))
  config = config.copy_and_resolve_references()
  config.noise.std = 0.3  # as a denoising run: the same variables, without --add_noise
  reconstruct.main(workdir, config, 'best', str(tmp_path / 'digits.npy'), str(tmp_path / 'dae'))
  np.testing.assert_array_equal(np.load(tmp_path / 'dae' / 'digits.npy'),
                                np.load(tmp_path / 'ae' / 'digits.npy'))


@pytest.mark.parametrize('args, message', [
    (lambda d, t: (str(t / 'nothing'), str(t / 'o')), 'does not exist'),
    (lambda d, t: (d, d), 'is where the inputs are'),
    (lambda d, t: (os.path.join(d, '0.png'), os.path.join(d, '2.png')), 'is a file, not a folder'),
    (lambda d, t: (os.path.join(d, 'broken.png'), str(t / 'o')),
     'cannot read the image .*broken.png'),
    (lambda d, t: (str(t / 'empty'), str(t / 'o')), 'holds no image files'),
    # the next command would read the reconstructions as inputs
    (lambda d, t: (d, os.path.join(d, 'o')), '--output=.* is inside --input=.*: what is written '
     'there would be read as inputs next time; choose an --output outside it'),
])
def test_refusals_name_the_problem(trained_ae, image_folder, tmp_path, args, message):
  workdir, config = trained_ae
  (tmp_path / 'empty').mkdir()
  input_path, output = args(image_folder, tmp_path)
  with pytest.raises(UserError, match=message):
    reconstruct.main(workdir, config, 'best', input_path, output)
  assert not os.path.exists(tmp_path / 'o')


@pytest.mark.parametrize('overrides, message', [
    ({'split': 'test'}, "--split=test: reconstruct.sh reconstructs the images of --input"),
    ({'num_examples': 101}, r'--num_examples=101 must be 0 \(no figure\) to 100'),
    ({'data.path': '/elsewhere'}, r'--config.data.\* names data, which --input=.* leaves unread'),
])
def test_flags_that_would_be_ignored_or_take_minutes_are_refused(trained_ae, image_folder,
                                                                  tmp_path, overrides, message):
  workdir, config = trained_ae
  config = config.copy_and_resolve_references()
  kwargs = {k: v for k, v in overrides.items() if '.' not in k}
  for path, value in overrides.items():
    if '.' in path:
      section, field = path.split('.')
      config[section][field] = value
  with pytest.raises(UserError, match=message):
    reconstruct.main(workdir, config, 'best', image_folder, str(tmp_path / 'o'), **kwargs)
  assert not os.path.exists(tmp_path / 'o')


def test_an_npy_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path,
                                                                 disk_full_on_reserve):
  # A memory map onto a full disk kills the interpreter (SIGBUS): the space is reserved first.
  config = small_config('ae')
  workdir = save_untrained(config, str(tmp_path / 'ae'))
  np.save(tmp_path / 'digits.npy', _digits(7))
  out = str(tmp_path / 'out')
  with pytest.raises(UserError, match=f'^cannot write the reconstructions to {out}/digits.npy: No '
                                      'space left on device; free some space on that disk, or '
                                      'choose another --output$'):
    reconstruct.main(workdir, config, 'latest', str(tmp_path / 'digits.npy'), out,
                     num_examples=0)
  assert os.listdir(out) == []


def test_images_on_a_light_background_get_a_note_that_says_to_invert_them(trained_ae, tmp_path,
                                                                          capsys):
  """Dark digits on white, given a model of light digits on black: every number about them
  says only that they are unlike its data, so the command says why and what to do."""
  from ae_jax import checkpoints  # pylint: disable=g-import-not-at-top
  workdir, config = trained_ae
  assert checkpoints.trained_background(workdir) < 0.1  # MNIST's black
  np.save(tmp_path / 'inverted.npy', np.concatenate([255 - _digits(4), _digits(2)]))
  reconstruct.main(workdir, config, 'best', str(tmp_path / 'inverted.npy'),
                   str(tmp_path / 'out'), num_examples=0)
  assert ('note: 4 of 6 images have a light background and the training images a dark one'
          in capsys.readouterr().out)
  run = evaluate.load_run(workdir, config, 'best', None, needs_data=False)
  evaluate.given_images(run, str(tmp_path / 'inverted.npy'))  # eval.sh, tsne.sh, ... --input
  assert 'invert them first (255 - each pixel' in capsys.readouterr().out
  np.save(tmp_path / 'digits.npy', _digits(6))
  evaluate.given_images(run, str(tmp_path / 'digits.npy'))
  assert 'note:' not in capsys.readouterr().out


def test_only_training_images_of_one_background_are_a_measure_for_others():
  """Photos' backgrounds vary: half of any set of them would read as unlike the other half."""
  from ae_jax.input_pipeline import given  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  photos = rng.integers(0, 256, (256, 1, 1, 3)).repeat(8, 1).repeat(8, 2).astype(np.uint8)
  assert given.shared_background(given.background(photos)) is None
  digits = _digits(256)[..., None]
  assert given.shared_background(given.background(digits)) == 0.0
  assert given.shared_background(given.background(255 - digits)) == 1.0
