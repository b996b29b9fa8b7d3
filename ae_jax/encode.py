"""Exports the latents of a split of a trained run, as arrays for a downstream model.

  scripts/encode.sh [runs/ae] [--split=test] [--checkpoint=best] [--variance] [--out_dir=DIR]
  scripts/encode.sh runs/ae --input=FOLDER|IMAGE|ARRAY.npy [--out_dir=DIR]

Without a workdir: the run under runs/ that trained last. Without --split: the test split where
the run's data has one, else validation. Any data a config can name is encoded with
--config.data.*, read as the run's model takes it (resized to its size and made grayscale for a
grayscale model, where the images are not; --config.data.image_size and grayscale choose
otherwise). --input encodes images of the user's own instead, as scripts/reconstruct.sh reads
them: every image file of a folder (its subfolders too, in sorted order), one image file, or a
.npy of images (N, H, W[, C]), converted as training converts images; <split> is then the
input's name (my_images for --input=~/my_images). Writes to workdir/encode/ (or --out_dir):
  <split>_latents.npy    float32 (N, latent size): one row per image, in the split's order; the
                         latent flattened (the CAE's 7x7x256 to 12,544), a VAE's posterior mean;
  <split>_variances.npy  with --variance, a VAE's posterior variances, likewise;
  <split>_labels.npy     int32 (N,), where the data has labels;
  <split>_files.txt      where the images come from files: one path a line;
  <split>_encode.json    what was written, the label names, and the speed.
The split streams through the model a call at a time, as evaluation's does, and the latents go
to the files as they come: the process holds a call's batches and latents, not the split's.
"""

if __name__ == '__main__':  # a command: prepare the process before JAX is imported
  from ae_jax import launch
  launch.start()

import json
import os
import time

import numpy as np

from ae_jax import UserError
from ae_jax import cannot_write
from ae_jax import config_lib
from ae_jax import evaluate
from ae_jax import launch
from ae_jax import metrics
from ae_jax import models
from ae_jax import npy_writer
from ae_jax import replaced_atomically


def encode_split(run: evaluate.TrainedRun, stem: str, variance: bool) -> dict:
  """Writes the latents (and variances) of the run's split to `stem`_latents.npy (...), each
  file whole or not at all. Returns {'files': [...], 'seconds' (compilation apart),
  'write_seconds', 'compile_seconds'}."""
  map_fn = metrics.make_map_fn(run.model, run.mesh, metrics.latent_step, variance=variance)
  images = run.images
  num = len(images)
  written, arrays = [], {}
  write_seconds = 0.0

  def consume(start, outputs):
    nonlocal write_seconds
    begin = time.time()
    for name, value in outputs.items():
      if name not in arrays:
        path = f'{stem}_{name}s.npy'
        tmp = path + '.tmp.npy'
        arrays[name] = (path, tmp, npy_writer(tmp, (num, *value.shape[1:]), np.float32,
                                                name=path))
      arrays[name][2][start:start + len(value)] = value
    write_seconds += time.time() - begin

  start = time.time()
  try:
    try:
      compile_seconds = evaluate.map_split(run, map_fn, consume)
      begin = time.time()
      for path, tmp, array in arrays.values():
        array.flush()
        del array
        os.replace(tmp, path)
        written.append(path)
      arrays.clear()
      write_seconds += time.time() - begin
    finally:
      for _, tmp, _ in arrays.values():  # a failure leaves no half-written file
        if os.path.exists(tmp):
          os.remove(tmp)
    seconds = time.time() - start - compile_seconds
    begin = time.time()
    if run.labels is not None:
      with replaced_atomically(f'{stem}_labels.npy') as tmp:
        np.save(tmp, run.labels.astype(np.int32))
      written.append(f'{stem}_labels.npy')
    if run.files is not None:
      with replaced_atomically(f'{stem}_files.txt') as tmp, open(tmp, 'w') as f:
        f.writelines(os.path.abspath(p) + '\n' for p in run.files)
      written.append(f'{stem}_files.txt')
    write_seconds += time.time() - begin
  except OSError as e:
    raise cannot_write(e, 'the latents to', os.path.dirname(stem),
                       flag='--out_dir') from None
  return {'files': written, 'seconds': seconds, 'write_seconds': write_seconds,
          'compile_seconds': compile_seconds}


def main(workdir, config, checkpoint, split, variance=False, out_dir=None,
         input_path=None) -> dict:
  out_dir = evaluate.output_dir(workdir, out_dir, 'encode')
  if input_path is not None:
    evaluate.check_input(workdir, config, split, input_path, out_dir, 'to encode',
                         reads_data=False)
  # with --input, the run's own data only where its checkpoints do not record its image shape
  run = evaluate.load_run(workdir, config, checkpoint,
                          split if input_path is None else 'validation',
                          needs_data=input_path is None)
  if variance and not models.has_prior(run.model):
    raise UserError(f'--variance: the {config.model.name} has no posterior variance (the VAEs '
                    'have); leave the flag out')
  if input_path is not None:
    run = evaluate.given_images(run, input_path)
  launch.start_up_done()
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise cannot_write(e, 'the latents to', out_dir, flag='--out_dir') from None
  stem = os.path.join(out_dir, run.split)
  done = encode_split(run, stem, variance)
  try:
    for suffix in ('_variances.npy', '_labels.npy', '_files.txt'):  # of an earlier encoding
      if f'{stem}{suffix}' not in done['files'] and os.path.exists(f'{stem}{suffix}'):
        os.remove(f'{stem}{suffix}')
  except OSError as e:
    raise cannot_write(e, 'the latents to', out_dir, flag='--out_dir') from None
  latent = np.load(f'{stem}_latents.npy', mmap_mode='r')
  num = len(run.images)
  report = {'workdir': os.path.abspath(workdir), **evaluate.source_field(run),
            'checkpoint_step': run.step,
            'num_images': num, 'latent_size': int(latent.shape[1]),
            'latent': 'posterior mean' if models.has_prior(run.model) else 'encoding',
            'label_names': list(run.label_names) if run.label_names else None,
            'files': [os.path.basename(p) for p in done['files']],
            'seconds': done['seconds'], 'images_per_sec': num / done['seconds'],
            'write_seconds': done['write_seconds'], 'compile_seconds': done['compile_seconds']}
  try:
    with replaced_atomically(f'{stem}_encode.json') as tmp, open(tmp, 'w') as f:
      json.dump(report, f, indent=2)
  except OSError as e:
    raise cannot_write(e, 'the latents to', out_dir, flag='--out_dir') from None
  print(f'{config_lib.display_name(config)} in {workdir}, checkpoint of step {run.step}, '
        + f'{evaluate.source(run)}: {num:,} latents of {latent.shape[1]:,} dimensions'
        + (' (posterior means)' if models.has_prior(run.model) else '')
        + f' in {done["seconds"]:.2f} s ({report["images_per_sec"]:,.0f} images/s, of which '
        f'writing {done["write_seconds"]:.2f} s)')
  print(f'wrote {", ".join(done["files"])} and {stem}_encode.json')
  return report


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ae_jax import cli  # pylint: disable=g-import-not-at-top

  cli.define_run_flags(sys.argv)
  flags.DEFINE_bool('variance', False, "VAEs: also write the posterior's variances.")
  flags.DEFINE_string('out_dir', None, 'Where to write (default: WORKDIR/encode).')
  flags.DEFINE_string('input', None, 'Images to encode instead of a split: a folder of images '
                      '(its subfolders too), one image file, or a .npy of images.')
  FLAGS = flags.FLAGS
  cli.run(lambda argv: main(cli.run_workdir(FLAGS.workdir), FLAGS.config, FLAGS.checkpoint,
                            FLAGS.split, FLAGS.variance, FLAGS.out_dir, FLAGS.input))
