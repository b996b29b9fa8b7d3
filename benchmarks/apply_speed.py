"""encode.sh and anomaly.sh against the evaluation loop on one trained run's split: images/s of
each (compilation apart, best of --repeats), and the share of encode's time spent writing.

  python benchmarks/apply_speed.py --workdir=runs/ae --split=train [--repeats=5]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == '__main__':  # as the commands start: huge pages, the garbage collector paused
  from ae_jax import launch  # pylint: disable=g-import-not-at-top
  launch.start()

import json  # pylint: disable=g-import-not-at-top,g-bad-import-order
import tempfile
import time

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from ae_jax import anomaly
from ae_jax import config_lib
from ae_jax import encode
from ae_jax import evaluate
from ae_jax import metrics

flags.DEFINE_string('workdir', None, 'A trained run.')
flags.DEFINE_string('split', 'train', 'The split to time.')
flags.DEFINE_integer('repeats', 5, 'Timings of each; the best is kept.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = config_lib.load_config(FLAGS.workdir)
  run = evaluate.load_run(FLAGS.workdir, config, 'best', FLAGS.split)
  num = len(run.images)
  # eval.sh's loop with every number, and with only the score's (anomaly.sh's work)
  eval_fns = {'eval': metrics.make_eval_fn(run.model, config, run.mesh),
              'eval_score_only': metrics.make_eval_fn(run.model, config, run.mesh,
                                                      names=(anomaly.score_name(run.model),))}
  for eval_fn in eval_fns.values():
    evaluate._evaluate_split(run, eval_fn)  # pylint: disable=protected-access  # compiles
  best = {'eval': [], 'eval_score_only': [], 'encode': [], 'encode_write': [], 'anomaly': []}
  with tempfile.TemporaryDirectory() as folder:
    for _ in range(FLAGS.repeats):
      for name, eval_fn in eval_fns.items():
        start = time.time()
        evaluate._evaluate_split(run, eval_fn)  # pylint: disable=protected-access
        best[name].append(time.time() - start)
      done = encode.encode_split(run, os.path.join(folder, 'x'), variance=False)
      best['encode'].append(done['seconds'])
      best['encode_write'].append(done['write_seconds'])
      best['anomaly'].append(anomaly.scores(run)[1])
  i = min(range(FLAGS.repeats), key=lambda k: best['encode'][k])
  result = {'images': num, **{f'{k}_images_per_sec': num / min(v) for k, v in best.items()
                              if k != 'encode_write'},
            'encode_write_share': best['encode_write'][i] / best['encode'][i]}
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  app.run(main)
