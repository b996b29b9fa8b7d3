"""Runs a trained run's model on images it has not seen: reconstructs them, or denoises them.

  scripts/reconstruct.sh [runs/dae] --input=FOLDER|IMAGE|ARRAY.npy --output=FOLDER [--add_noise]

Without a workdir: the run under runs/ that trained last. Every image file under --input (its
subfolders too) goes through the model and is written under --output with the same name and
path; an .npy of images (N, H, W[, C]), uint8 or floats in [0, 1], comes back as an .npy of the
same name. A denoising model denoises what it is given; --add_noise first adds the noise it
trained against (drawn from the run's seed), to show what it does. --output also gets
_side_by_side.png, the first --num_examples images beside their reconstructions. The run's
training data is not read: its checkpoints record the shape of the images its model takes (a
run trained before they did reads its data once, to learn it).

Images are converted as training converts them: colour made grayscale (ITU-R 601-2 luma) for a
grayscale model, grayscale repeated for a colour one, other sizes resized (PIL's bilinear); a
line says how many. A file that cannot be read is named in one line and skipped. An --output
that already holds files is refused without --overwrite, and an image is written to a temporary
file renamed when whole, so that a crash leaves whole files only.
"""

if __name__ == '__main__':  # a command: prepare the process before JAX is imported
  from ae_jax import launch
  launch.start()

from concurrent import futures
import os
import sys
import time

import numpy as np

from ae_jax import UserError
from ae_jax import cannot_write
from ae_jax import config_lib
from ae_jax import evaluate
from ae_jax import launch
from ae_jax import metrics
from ae_jax import npy_writer
from ae_jax import plots
from ae_jax import replaced_atomically
from ae_jax.input_pipeline import given

FIGURE = '_side_by_side.png'


def check_output(output: str, input_path: str, overwrite: bool) -> None:
  """Refuses, before any work, an --output that would overwrite files or cannot be written."""
  if not output:
    raise UserError('--output is missing: name the folder the reconstructions go to')
  if os.path.exists(output) and not os.path.isdir(output):
    raise UserError(f'--output={output} is a file, not a folder: name a folder')
  source = os.path.realpath(input_path if os.path.isdir(input_path)
                            else os.path.dirname(input_path) or '.')
  if os.path.realpath(output) == source:
    raise UserError(f'--output={output} is where the inputs are: the reconstructions would '
                    'replace them; name another folder')
  if os.path.isdir(output) and os.listdir(output) and not overwrite:
    raise UserError(f'--output={output} already holds {len(os.listdir(output))} files or '
                    'folders: name an empty or new folder, or replace them with --overwrite')
  unwritable = config_lib.unwritable_folder(output)
  if unwritable:
    raise UserError(f'cannot write to {output} ({unwritable} is not writable): name another '
                    '--output')


def _save_image(image: np.ndarray, path: str) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with replaced_atomically(path) as tmp:
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp)


def main(workdir, config, checkpoint, input_path, output, add_noise=False, overwrite=False,
         num_examples=8, split=None) -> dict:
  if split is not None:  # a flag every command that reads a run has
    raise UserError(f'--split={split}: reconstruct.sh reconstructs the images of --input, not a '
                    "split of the run's data: leave it out (eval.sh --split shows a split's)")
  if not 0 <= num_examples <= plots.MAX_COLUMNS:
    raise UserError(f'--num_examples={num_examples} must be 0 (no figure) to {plots.MAX_COLUMNS}')
  kind, names = given.list_inputs(input_path)
  check_output(output, input_path, overwrite)
  given.check_out_dir(input_path, kind, output, '--output')
  evaluate.check_data_unread(workdir, config, input_path)
  if add_noise and not config_lib.is_denoising(config):
    raise UserError(f'--add_noise: the {config_lib.display_name(config)} trained without noise '
                    '(config.noise.std=0), so there is none to add: leave the flag out, or use '
                    'a denoising run (configs/dae.py, configs/dcae.py)')
  # the run's own data only where its checkpoints do not record the model's image shape
  run = evaluate.load_run(workdir, config, checkpoint, 'validation', needs_data=False)
  shape = run.model.image_shape
  names, images, counts, skipped = given.read(input_path, kind, names, shape, run.background)
  launch.start_up_done()

  map_fn = metrics.make_map_fn(run.model, run.mesh, metrics.reconstruction_step,
                               noise_mean=config.noise.mean, noise_std=config.noise.std,
                               noisy=add_noise)
  shown = min(num_examples, len(images))
  npy_name = os.path.basename(input_path)
  npy_tmp = os.path.join(output, npy_name + '.tmp.npy')
  figure_rows = {}
  write_seconds = 0.0
  npy = None
  pool = futures.ThreadPoolExecutor(given.THREADS)

  def consume(start, outputs):
    nonlocal write_seconds, npy
    begin = time.time()
    if start < shown:
      for name, value in outputs.items():
        figure_rows.setdefault(name, []).append(value[:shown - start])
    reconstructions = outputs['reconstruction']
    if kind == 'npy':
      if npy is None:
        npy = npy_writer(npy_tmp, (len(images), *shape), np.uint8,
                         name=os.path.join(output, npy_name))
      npy[start:start + len(reconstructions)] = reconstructions
    else:
      list(pool.map(lambda i: _save_image(reconstructions[i],
                                          os.path.join(output, names[start + i])),
                    range(len(reconstructions))))
    write_seconds += time.time() - begin

  start = time.time()
  try:
    os.makedirs(output, exist_ok=True)
    try:
      compile_seconds = evaluate.map_split(run, map_fn, consume, images=images)
      if npy is not None:
        npy.flush()
        os.replace(npy_tmp, os.path.join(output, npy_name))
    finally:
      pool.shutdown()
      if os.path.exists(npy_tmp):  # a failure leaves no half-written array
        os.remove(npy_tmp)
    seconds = time.time() - start - compile_seconds
    figure = None
    if shown and not (kind == 'folder' and FIGURE in names):
      figure = os.path.join(output, FIGURE)
      rows = {'input': images[:shown]}
      if add_noise:
        rows['noisy input'] = np.concatenate(figure_rows['noisy'])
      rows['reconstruction'] = np.concatenate(figure_rows['reconstruction'])
      titles = [os.path.basename(n)[:14] for n in names[:shown]]
      plots.reconstructions({k: v.astype(np.float32) / 255 for k, v in rows.items()}, titles,
                            figure, f'{config_lib.display_name(config)}, step {run.step}: '
                            + ('denoised after noise was added' if add_noise else
                               'reconstructions'))
  except OSError as e:
    raise cannot_write(e, 'the reconstructions to', output, flag='--output') from None
  report = {'num_images': len(images), 'skipped': len(skipped), 'converted': counts,
            'seconds': seconds, 'images_per_sec': len(images) / seconds,
            'write_seconds': write_seconds, 'figure': figure}
  print(f'{config_lib.display_name(config)} in {workdir}, checkpoint of step {run.step}: '
        f'{len(images):,} images ' + ('with the training noise added ' if add_noise else '')
        + f'reconstructed in {seconds:.2f} s ({report["images_per_sec"]:,.0f} images/s, of which '
        f'writing {write_seconds:.2f} s)' + (f'; {len(skipped)} skipped' if skipped else ''))
  print(f'wrote {output}' + (f'/{npy_name}' if kind == 'npy' else '/ (the same names)')
        + (f' and {figure}' if figure else ''))
  return report


if __name__ == '__main__':
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ae_jax import cli  # pylint: disable=g-import-not-at-top

  cli.define_run_flags(sys.argv)
  flags.DEFINE_string('input', None, 'A folder of images, one image file, or a .npy of images.')
  flags.DEFINE_string('output', None, 'The folder the reconstructions are written to.')
  flags.DEFINE_bool('add_noise', False, 'Denoising runs: add the training noise to the inputs '
                    'first.')
  flags.DEFINE_bool('overwrite', False, 'Write into an --output that already holds files.')
  flags.DEFINE_integer('num_examples', 8, 'Images in the side-by-side figure (0: none).')
  FLAGS = flags.FLAGS
  cli.run(lambda argv: main(cli.run_workdir(FLAGS.workdir), FLAGS.config, FLAGS.checkpoint,
                            FLAGS.input, FLAGS.output, FLAGS.add_noise, FLAGS.overwrite,
                            FLAGS.num_examples, FLAGS.split))
