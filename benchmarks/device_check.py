"""The device check: the tests that mean something on an accelerator, and how fast each model
trains, evaluates and maps there, in one JSON and one markdown table.

  benchmarks/device_check.sh                  # on a GPU machine: install what is missing, check
  benchmarks/device_check.sh --cpu            # the same on CPUs, smaller: a dry run
  benchmarks/device_check.sh --download-wheels  # .whl/: wheels for a machine without network
  python benchmarks/device_check.py --help    # what device_check.sh runs once it is installed

For each of AE, DAE, CAE, DCAE and VAE, in float32 and bfloat16 (config.dtype), on random uint8
28x28x1 images, random 7x7 patterns scaled up (Fashion-MNIST is not on the machines this runs
on; the speed of a model does not depend on what its images show): 60,000 training images
(48,000 train, 12,000 validation), as ae_jax.main trains them for two epochs, and 10,000 test
images.

  epoch           the second epoch's training of the 48,000 images (the first compiles)
  epoch + val     the same epoch with validation, the checkpoint, figures and logs
  start to end    train_and_evaluate from its call to its return: two epochs, compiling included
  evaluation      what eval.sh computes over the 10,000 test images (the model's loss and
                  parts, MSE, BCE, PSNR; not a VAE's importance-weighted bound), compiled first
  t-SNE           what tsne.sh computes for 10,000 test points (encoding, PCA, t-SNE, kNN and
                  linear probes, trustworthiness) and its figure, in float32, for AE, CAE and
                  VAE (a denoising model maps latents of its model's shape); its share is of a
                  run as the model's config trains it: its epochs, evaluation and t-SNE

Targets on one H200 (issue 27): an AE epoch under 0.1 s, a CAE epoch under 2 s, an evaluation
under 0.5 s for every model. Results are written as they come: a check stopped early still
leaves what it measured.
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ('AE', 'DAE', 'CAE', 'DCAE', 'VAE')
DTYPES = ('float32', 'bfloat16')
NUM_TEST = 10_000
IMAGE_SHAPE = (28, 28, 1)
# Targets on one H200: seconds for an epoch of 48,000 images; for evaluating 10,000.
EPOCH_TARGETS = {'AE': 0.1, 'CAE': 2.0}
EVAL_TARGET = 0.5

# The tests that mean something on an accelerator: the convolutions XLA runs there against the
# matmul formulation (both computed on the device), bfloat16, the training loop and exact resume
# on one device, and the devices line.
GPU_TESTS = ('tests/test_models.py tests/test_train.py tests/test_vae.py tests/test_devices.py',
             'matmul or flax or bfloat16 or falls or fresh_noise or non_finite or padded or '
             'round_trip or resumed or leaves_checkpoints or devices')
# On CPUs the suite runs these anyway: a few of them, to check the check.
CPU_TESTS = ('tests/test_models.py tests/test_train.py',
             'each_matmul_layer or round_trip')

# What the check imports, by module, with the requirement that brings it: device_check.sh
# installs those that are missing.
REQUIREMENTS = {'jax': 'jax', 'flax': 'flax', 'optax': 'optax', 'orbax.checkpoint':
                'orbax-checkpoint', 'ml_collections': 'ml-collections', 'absl': 'absl-py',
                'sklearn': 'scikit-learn', 'openTSNE': 'openTSNE', 'matplotlib': 'matplotlib',
                'PIL': 'pillow', 'tqdm': 'tqdm', 'tensorboard': 'tensorboard',
                'flatbuffers': 'flatbuffers', 'pytest': 'pytest'}


def missing_requirements() -> list[str]:
  import importlib.util  # pylint: disable=g-import-not-at-top
  missing = []
  for module, requirement in REQUIREMENTS.items():
    try:
      found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a package's parent is missing
      found = False
    if not found:
      missing.append(requirement)
  return missing


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description='Tests and timings of ae_jax on this machine\'s accelerator (or --cpu).')
  parser.add_argument('--cpu', action='store_true',
                      help='run on CPUs, smaller (a dry run): --num_train 640, --num_test 320, '
                      'the AE, DAE, CAE and VAE, and a few tests')
  parser.add_argument('--out_dir', default=os.path.join(ROOT, 'runs', 'device_check'),
                      help='where device_check.json and device_check.md go')
  parser.add_argument('--models', help=f'comma-separated, of {",".join(MODELS)}')
  parser.add_argument('--dtypes', default=','.join(DTYPES), help='comma-separated config.dtype')
  parser.add_argument('--num_train', type=int,
                      help='training images, of which 80%% train and 20%% validate '
                      '(default 60,000: 48,000 train)')
  parser.add_argument('--num_test', type=int, help='test images evaluated (default 10,000)')
  parser.add_argument('--tsne_points', type=int,
                      help='test points that t-SNE maps (default: all test images); 0: none')
  parser.add_argument('--tests', default=None,
                      help="pytest's -k expression for the tests run first; '' runs none")
  parser.add_argument('--budget_s', type=float,
                      help='seconds after which no further timing starts, the rest marked '
                      'skipped (default 360; --cpu: 480)')
  parser.add_argument('--missing', action='store_true',
                      help='print the requirements this check lacks, one a line, and exit')
  args = parser.parse_args(argv)
  small = dict(models='AE,DAE,CAE,VAE', num_train=640, num_test=320, budget_s=480) if (
      args.cpu) else dict(models=','.join(MODELS), num_train=60_000, num_test=NUM_TEST,
                          budget_s=360)
  for name, value in small.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if args.tsne_points is None:
    args.tsne_points = args.num_test
  args.models = [m.strip().upper() for m in args.models.split(',') if m.strip()]
  args.dtypes = [d.strip() for d in args.dtypes.split(',') if d.strip()]
  unknown = [m for m in args.models if m not in MODELS] + [d for d in args.dtypes
                                                           if d not in DTYPES]
  if unknown:
    parser.error(f'unknown {", ".join(unknown)}: --models is of {",".join(MODELS)}, --dtypes '
                 f'of {",".join(DTYPES)}')
  if args.num_train < 10 or args.num_test < 1 or args.tsne_points < 0:
    parser.error('--num_train must be at least 10, --num_test at least 1, --tsne_points at '
                 'least 0')
  return args


# --- What the check writes ------------------------------------------------------------------

def _seconds(value) -> str:
  if value is None:
    return '–'
  return f'{value * 1000:.0f} ms' if value < 1 else f'{value:.2f} s' if value < 10 else (
      f'{value:.0f} s')


def _met(value, target) -> str:
  if value is None or target is None:
    return ''
  return ' ✓' if value < target else f' ✗ (target {_seconds(target)})'


def markdown(report: dict) -> str:
  """The report as a markdown table, with the machine and the sizes above it."""
  machine, sizes = report['machine'], report['sizes']
  on_gpu = machine['platform'] == 'gpu'
  lines = [f'Device check, {report["date"]}: {machine["description"]}; jax {machine["jax"]}, '
           f'python {machine["python"]}, {machine["cpu_count"]} CPU cores.',
           '',
           f'{sizes["num_train"] * 4 // 5:,} training images ({sizes["num_train"] // 5:,} more '
           f'validate), {sizes["num_test"]:,} test images, all random uint8 28x28x1 images (random '
           '7x7 patterns scaled up; not Fashion-MNIST, which the machine lacks: speed does not '
           'depend on what images show); '
           f'batch 128. {report["install"]}']
  tests = report.get('tests')
  if tests:
    lines += ['', f'Tests (`{tests["command"]}`): {tests["summary"]} in {tests["seconds"]:.0f} s.']
  lines += ['',
            f'| model | dtype | epoch ({sizes["num_train"] * 4 // 5:,} images) | epoch + val | '
            f'start to end (2 epochs) | evaluation ({sizes["num_test"]:,}) | '
            f't-SNE + figure ({sizes["tsne_points"]:,}) | t-SNE\'s share of a run |',
            '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |']
  for row in report['rows']:
    if 'skipped' in row or 'error' in row:
      lines.append(f'| {row["model"]} | {row["dtype"]} | '
                   f'{row.get("skipped") or "error: " + row["error"]} | | | | | |')
      continue
    base = row['model'].lstrip('D') if row['model'] != 'DAE' else 'AE'
    epoch_target = EPOCH_TARGETS.get(base) if on_gpu else None
    share = row.get('tsne_share')
    lines.append(
        f'| {row["model"]} | {row["dtype"]} | '
        f'{_seconds(row["epoch_train_s"])}{_met(row["epoch_train_s"], epoch_target)} | '
        f'{_seconds(row["epoch_s"])} | {_seconds(row["run_s"])} | '
        f'{_seconds(row["eval_s"])}{_met(row["eval_s"], EVAL_TARGET if on_gpu else None)} | '
        f'{row.get("tsne_note") or _seconds(row.get("tsne_s"))} | '
        + ('–' if share is None else f'{share:.0%} of {row["run_epochs"]} epochs') + ' |')
  lines += ['', f'Whole check: {report["total_s"]:.0f} s (the install and tests included).']
  return '\n'.join(lines) + '\n'


def write(report: dict, out_dir: str) -> None:
  report['total_s'] = time.time() - report['started']
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'device_check.json'), 'w') as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(out_dir, 'device_check.md'), 'w') as f:
    f.write(markdown(report))


# --- What it measures -----------------------------------------------------------------------

def run_tests(args) -> dict | None:
  files, expression = CPU_TESTS if args.cpu else GPU_TESTS
  if args.tests is not None:
    expression = args.tests
  if not expression:
    return None
  command = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *files.split(),
             '-k', expression]
  env = dict(os.environ,
             # the parity tests compare formulations at float32's precision (not TF32's)
             JAX_DEFAULT_MATMUL_PRECISION='highest',
             # tests that start processes: each takes device memory as it needs it
             XLA_PYTHON_CLIENT_PREALLOCATE='false')
  start = time.time()
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
  lines = result.stdout.strip().splitlines()
  return {'command': f'pytest {files} -k "{expression}"', 'returncode': result.returncode,
          'summary': re.sub(r' in [\d.]+s.*', '', lines[-1].strip('= ')) if lines else
                     result.stderr.strip()[-500:],
          'seconds': time.time() - start,
          'failures': [l for l in lines if l.startswith(('FAILED', 'ERROR'))]}


def random_images(rng, count: int):
  """`count` random uint8 28x28x1 images, each a random 7x7 pattern scaled up 4x: pixel noise
  leaves an autoencoder nothing to learn but the mean, and a ReLU latent then dies (its t-SNE
  would map one point)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  coarse = rng.integers(0, 256, (count, 7, 7, 1), np.uint8)
  return np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)


def write_random_data(path: str, num_train: int, num_test: int) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  np.savez(path, train_images=random_images(rng, num_train),
           train_labels=rng.integers(0, 10, num_train),
           test_images=random_images(rng, num_test), test_labels=rng.integers(0, 10, num_test))


def time_model(model: str, dtype: str, data_path: str, splits, workdir: str,
               tsne_points: int) -> dict:
  """One row: a run of two epochs, an evaluation of the test split, and (float32) t-SNE."""
  import importlib  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top,g-multiple-import
  from ae_jax import evaluate, metric_writers, metrics, plots, train, tsne
  config = importlib.import_module(f'configs.{model.lower()}').get_config()
  run_epochs = config.num_epochs
  config.dtype = dtype
  config.data.source, config.data.path = 'arrays', data_path
  config.data.train_split, config.data.test_split = 'train', 'test'
  config.num_epochs = 2

  start = time.perf_counter()
  train.train_and_evaluate(config, workdir, splits)
  run_s = time.perf_counter() - start
  last = metric_writers.read_metrics(os.path.join(workdir, 'metrics.jsonl'))[-1]
  num_train = len(splits['train'].images)
  row = {'model': model, 'dtype': dtype, 'run_s': run_s, 'run_epochs': run_epochs,
         'epoch_train_s': num_train // config.batch_size * config.batch_size
                          / last['images_per_sec'],
         'epoch_s': last['seconds'], 'train_loss': last['train_loss'],
         'val_loss': last['val_loss']}

  run = evaluate.load_run(workdir, config, 'latest', 'test', splits)
  eval_fn = metrics.make_eval_fn(run.model, run.config, run.mesh)
  evaluate._evaluate_split(run, eval_fn)  # pylint: disable=protected-access  (compiles)
  start = time.perf_counter()
  numbers = evaluate._evaluate_split(run, eval_fn)  # pylint: disable=protected-access
  row['eval_s'] = time.perf_counter() - start
  row['eval_loss'] = numbers['loss']

  # the denoising models' latents have the shapes of their models': the same t-SNE
  if dtype == 'float32' and tsne_points and not model.startswith('D'):
    # scikit-learn's t-SNE crashes the process (a segmentation fault) on latents that are all
    # alike, as a dead ReLU latent's are
    if tsne.encode(run, run.images[:tsne_points]).std(axis=0).max() == 0:
      row['tsne_note'] = 'all latents alike: no t-SNE'
      return row
    start = time.perf_counter()
    try:
      space = tsne.latent_space(run, tsne_points, tsne_points, tsne.PERPLEXITY, 0)
      plots.tsne_map(space.embedding, space.images, space.labels, None,
                     os.path.join(workdir, 'tsne.png'), f'{model} ({dtype})')
    except Exception as e:  # pylint: disable=broad-except  (the row's timings still count)
      row['tsne_note'] = 't-SNE failed: ' + ' '.join(str(e).split())[:200]
      return row
    row['tsne_s'] = time.perf_counter() - start
    row['tsne_embed_s'] = space.tsne_seconds
    row['tsne_share'] = row['tsne_s'] / (run_epochs * row['epoch_s'] + row['eval_s']
                                         + row['tsne_s'])
  return row


def describe_machine() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from ae_jax import devices  # pylint: disable=g-import-not-at-top
  found = jax.devices()
  return {'description': devices.describe(found), 'platform': found[0].platform,
          'device_kind': found[0].device_kind, 'device_count': len(found),
          'jax': jax.__version__, 'python': platform.python_version(),
          'cpu_count': os.cpu_count(), 'unused_gpu': devices.unused_gpu_warning()}


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.missing:
    for requirement in missing_requirements():
      print(requirement)
    return 0
  started = time.time()
  if args.cpu:
    os.environ['JAX_PLATFORMS'] = 'cpu'
  sys.path.insert(0, ROOT)
  from ae_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top

  report = {'date': datetime.date.today().isoformat(), 'started': started,
            'machine': describe_machine(),
            'sizes': {'num_train': args.num_train, 'num_test': args.num_test,
                      'tsne_points': min(args.tsne_points, args.num_test)},
            'install': os.environ.get('DEVICE_CHECK_INSTALL', ''), 'rows': []}
  if not args.cpu and report['machine']['platform'] == 'cpu':
    print('error: JAX sees no accelerator here: install its CUDA wheels (pip install -e '
          "'.[cuda]', or benchmarks/device_check.sh, which does), or pass --cpu for the CPU dry "
          'run', file=sys.stderr)
    return 1
  print(f'device check on {report["machine"]["description"]}', flush=True)
  report['tests'] = run_tests(args)
  if report['tests']:
    print(f'tests: {report["tests"]["summary"]}', flush=True)
  write(report, args.out_dir)

  with tempfile.TemporaryDirectory() as folder:
    data_path = os.path.join(folder, 'random.npz')
    write_random_data(data_path, args.num_train, args.num_test)
    data_config = default.get_config().data
    data_config.source, data_config.path = 'arrays', data_path
    data_config.train_split, data_config.test_split = 'train', 'test'
    splits = input_pipeline.load_splits(data_config)
    # every model in float32 first: where the budget runs out, bfloat16's rows go
    for dtype in args.dtypes:
      for model in args.models:
        if time.time() - started > args.budget_s:
          report['rows'].append({'model': model, 'dtype': dtype,
                                 'skipped': f'skipped: past --budget_s={args.budget_s:g}'})
          continue
        print(f'{model} {dtype} ...', flush=True)
        try:
          row = time_model(model, dtype, data_path, splits,
                           os.path.join(folder, f'{model}_{dtype}'), args.tsne_points)
        except Exception as e:  # pylint: disable=broad-except  (the other rows still count)
          row = {'model': model, 'dtype': dtype, 'error': ' '.join(str(e).split())[:300]}
        report['rows'].append(row)
        write(report, args.out_dir)
  write(report, args.out_dir)
  print(markdown(report))
  print(f'wrote {os.path.join(args.out_dir, "device_check.json")} and device_check.md')
  failed = (report['tests'] or {}).get('returncode', 0) not in (0, 5) or any(
      'error' in row for row in report['rows'])
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
