"""Anomaly scores of a trained run: how badly it reconstructs each image of a split.

  scripts/anomaly.sh [runs/ae] [--split=test] [--percentile=99] [--num_worst=16] [--out_dir=DIR]
  scripts/anomaly.sh [runs/ae] --input=FOLDER|IMAGE|ARRAY.npy [--out_dir=DIR]

Without a workdir: the run under runs/ that trained last. Without --split: the test split where
the run's data has one, else validation. --input scores images of the user's own instead, as
scripts/reconstruct.sh reads them (a folder, its subfolders too; an image file; a .npy of
images), converted as training converts images; <split> is then the input's name, and the
threshold still comes from the run's validation split. An image's score is the model's own
per-image objective on it, clean: the reconstruction loss of the AE and the CAE (config.loss), the
negative ELBO of a VAE (nats, with the evaluation's latent sample). The threshold is the
--percentile-th percentile of the validation split's scores (normal data): an image of the
split that scores above it is flagged.

A run trained on some classes only (config.data.classes or held_out_classes; its test split
keeps every class) is also scored as a detector of the held-out classes: ROC-AUC and average
precision (scikit-learn) of the scores, the held-out images the positives, and the share of
each that the threshold flags.

Writes to workdir/anomaly/ (or --out_dir):
  <split>.json            the threshold, the numbers, and every flagged image (index, score,
                          label, file);
  <split>_scores.npy      every image's score, in the split's order;
  <split>_histogram.png   the scores of the validation split and of the split (by normal and
                          held-out classes), with the threshold;
  <split>_worst.png       the --num_worst highest-scoring images and their reconstructions.
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
from ae_jax import input_pipeline
from ae_jax import launch
from ae_jax import metrics
from ae_jax import models
from ae_jax import plots
from ae_jax import replaced_atomically


PERCENTILE = 99.0  # the threshold: flags about 1% of normal images


def score_name(model) -> str:
  """The per-image number that scores: a VAE's negative ELBO (whatever its beta), else the
  model's loss."""
  return 'nelbo' if 'nelbo' in models.objective_parts(model) else 'loss'


def scores(run: evaluate.TrainedRun, images=None, batch_size=None) -> tuple[np.ndarray, float]:
  """(each image's score, in the split's order; the seconds it took, compilation apart)."""
  images = run.images if images is None else images
  out = np.empty(len(images), np.float32)
  map_fn = metrics.make_map_fn(run.model, run.mesh, metrics.score_step,
                               names=(score_name(run.model),))

  def consume(start, outputs):
    value = next(iter(outputs.values()))
    out[start:start + len(value)] = value

  start = time.time()
  compile_seconds = evaluate.map_split(run, map_fn, consume, images=images,
                                      batch_size=batch_size)
  return out, time.time() - start - compile_seconds


def held_out_classes(run: evaluate.TrainedRun) -> list[int] | None:
  """The labels the run trained without (config.data), or None; None too where the data has
  no test split, as the train and validation splits keep only the trained classes."""
  labels = [s.labels for s in run.splits.values() if s.labels is not None]
  if not labels or 'test' not in run.splits:
    return None
  return input_pipeline.classes.held_out(run.config.data, np.concatenate(labels),
                                         run.splits['train'].label_names) or None


def detection_numbers(split_scores, labels, held_out, threshold) -> dict | None:
  """ROC-AUC and average precision of the scores as a detector of the `held_out` labels, and
  the share of held-out and of normal images above `threshold`; None where the split lacks
  either kind."""
  positive = np.isin(labels, held_out)
  if positive.all() or not positive.any():
    return None
  from sklearn import metrics as sk_metrics  # pylint: disable=g-import-not-at-top
  flagged = split_scores > threshold
  return {'roc_auc': float(sk_metrics.roc_auc_score(positive, split_scores)),
          'average_precision': float(sk_metrics.average_precision_score(positive, split_scores)),
          'held_out_flagged': float(flagged[positive].mean()),
          'normal_flagged': float(flagged[~positive].mean()),
          'num_held_out': int(positive.sum())}


def _label_name(run, label) -> str:
  return run.label_names[label] if run.label_names else str(label)


def anomaly_scores(run: evaluate.TrainedRun, percentile: float) -> dict:
  """The threshold from the validation split, the split's scores and the flagged images, and
  where the run held classes out, how well the scores detect them."""
  validation = run.splits['validation'].images
  # one batch size for both splits: streamed, they make one program (the second compilation is
  # the compilation cache's)
  batch_size = metrics.eval_batch_size(run.config, run.model,
                                       max(len(validation), len(run.images)), run.mesh.size)
  validation_scores, _ = scores(run, validation, batch_size)
  split_scores, seconds = scores(run, batch_size=batch_size)
  threshold = float(np.percentile(validation_scores, percentile))
  report = {'score': f'{score_name(run.model)} ({run.model.loss_name})'
                     if score_name(run.model) == 'loss' else 'nelbo (nats)',
            'percentile': percentile, 'threshold': threshold, 'num_images': len(split_scores),
            'num_flagged': int((split_scores > threshold).sum()),
            'seconds': seconds, 'images_per_sec': len(split_scores) / max(seconds, 1e-9)}
  held_out = held_out_classes(run)
  if held_out is not None and run.labels is not None:
    report['held_out_classes'] = [_label_name(run, c) for c in held_out]
    numbers = detection_numbers(split_scores, run.labels, held_out, threshold)
    if numbers is not None:
      report.update(numbers)
  return {'report': report, 'scores': split_scores, 'validation_scores': validation_scores,
          'held_out': held_out}


def main(workdir, config, checkpoint, split, percentile=PERCENTILE, num_worst=16,
         out_dir=None, input_path=None) -> dict:
  if not 0 < percentile < 100:
    raise UserError(f'--percentile={percentile} must be between 0 and 100 (99: the threshold '
                    'flags 1% of normal images)')
  if not 0 <= num_worst <= plots.MAX_COLUMNS:
    raise UserError(f'--num_worst={num_worst} must be 0 (no figure) to {plots.MAX_COLUMNS}')
  out_dir = evaluate.output_dir(workdir, out_dir, 'anomaly')
  if input_path is not None:
    evaluate.check_input(workdir, config, split, input_path, out_dir, 'to score',
                         reads_data=True)
  # with --input, the run's data still gives the threshold: its validation split
  run = evaluate.load_run(workdir, config, checkpoint,
                          split if input_path is None else 'validation')
  if input_path is not None:
    run = evaluate.given_images(run, input_path)
  found = anomaly_scores(run, percentile)
  launch.start_up_done()
  report, split_scores = found['report'], found['scores']
  threshold, held_out = report['threshold'], found['held_out']
  flagged = np.flatnonzero(split_scores > threshold)
  flagged = flagged[np.argsort(-split_scores[flagged])]
  report = {'workdir': os.path.abspath(workdir), **evaluate.source_field(run),
            'checkpoint_step': run.step,
            **report, 'flagged': [
                {'index': int(i), 'score': float(split_scores[i]),
                 **({'label': _label_name(run, run.labels[i])} if run.labels is not None else {}),
                 **({'file': run.files[i]} if run.files is not None else {})}
                for i in flagged]}
  stem = os.path.join(out_dir, run.split)
  name = config_lib.display_name(config)
  groups = {'validation': found['validation_scores']}
  if held_out is not None and run.labels is not None:
    positive = np.isin(run.labels, held_out)
    groups[f'{run.split}, trained classes'] = split_scores[~positive]
    groups[f'{run.split}, held out: {", ".join(report["held_out_classes"])}'] = (
        split_scores[positive])
  else:
    groups[run.split] = split_scores
  groups = {k: v for k, v in groups.items() if len(v)}
  worst = np.argsort(-split_scores)[:num_worst]
  try:
    os.makedirs(out_dir, exist_ok=True)
    with replaced_atomically(stem + '_scores.npy') as tmp:
      np.save(tmp, split_scores)
    plots.score_histogram(groups, threshold, stem + '_histogram.png',
                          f'{name}, step {run.step}: anomaly scores, threshold at the '
                          f'{percentile:g}th percentile of validation', report['score'])
    if len(worst):
      if run.labels is not None:
        shown, caption = ' (score, then label)', lambda i: _label_name(run, run.labels[i])[:10]
      elif run.files is not None:
        shown, caption = ' (score, then file)', lambda i: os.path.basename(run.files[i])[:12]
      else:
        shown, caption = '', None
      titles = [f'{split_scores[i]:.3g}' + (f'\n{caption(i)}' if caption else '') for i in worst]
      plots.reconstructions(evaluate.image_rows(run, worst, noisy=False), titles,
                            stem + '_worst.png',
                            f'{name}, {evaluate.source(run)}: the {len(worst)} highest scores'
                            + shown)
    elif os.path.exists(stem + '_worst.png'):  # of an earlier command, not of these scores
      os.remove(stem + '_worst.png')
    with replaced_atomically(stem + '.json') as tmp, open(tmp, 'w') as f:
      json.dump(report, f, indent=2)
  except OSError as e:
    raise cannot_write(e, 'the anomaly scores to', out_dir, flag='--out_dir') from None

  print(f'{name} in {workdir}, checkpoint of step {run.step}, {evaluate.source(run)}: '
        f'{len(split_scores):,} images scored by {report["score"]} in {report["seconds"]:.2f} s '
        f'({report["images_per_sec"]:,.0f} images/s)')
  print(f'threshold {threshold:.5g} (the {percentile:g}th percentile of the validation split\'s '
        f'scores): {report["num_flagged"]:,} images flagged')
  if 'roc_auc' in report:
    print(f'held-out classes {", ".join(report["held_out_classes"])} ({report["num_held_out"]:,} '
          f'images) against the rest: ROC-AUC {report["roc_auc"]:.4f}, average precision '
          f'{report["average_precision"]:.4f}; flagged: {report["held_out_flagged"]:.1%} of '
          f'them, {report["normal_flagged"]:.1%} of the rest')
  elif held_out is not None and input_path is None:
    print(f'the {run.split} split lacks either the held-out classes or the others: no ROC-AUC '
          '(score the test split, which keeps every class)')
  elif (input_pipeline.classes.asked(config.data) and 'test' not in run.splits
        and input_path is None):
    print('the data has no test split, the one split that keeps the held-out classes: no '
          'ROC-AUC')
  print(f'wrote {stem}.json, {stem}_scores.npy, {stem}_histogram.png'
        + (f', {stem}_worst.png' if len(worst) else ''))
  return report


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ae_jax import cli  # pylint: disable=g-import-not-at-top

  cli.define_run_flags(sys.argv)
  flags.DEFINE_float('percentile', PERCENTILE, "The threshold: this percentile of the validation "
                     "split's scores.")
  flags.DEFINE_integer('num_worst', 16, 'Highest-scoring images in the figure (0: none).')
  flags.DEFINE_string('out_dir', None, 'Where to write (default: WORKDIR/anomaly).')
  flags.DEFINE_string('input', None, 'Images to score instead of a split: a folder of images '
                      '(its subfolders too), one image file, or a .npy of images.')
  FLAGS = flags.FLAGS
  cli.run(lambda argv: main(cli.run_workdir(FLAGS.workdir), FLAGS.config, FLAGS.checkpoint,
                            FLAGS.split, FLAGS.percentile, FLAGS.num_worst, FLAGS.out_dir,
                            FLAGS.input))
