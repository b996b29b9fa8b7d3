"""ae_jax against the PyTorch original, stage by stage, on the same machine in one run.

  pip install -e '.[bench]'          # PyTorch (CPU build: pip install torch==2.13.0)
  python benchmarks/benchmark.py     # prints a table, writes benchmarks/results.json
  python benchmarks/benchmark.py --models=CAE,DCAE --startups=5   # start-ups alone, 5 of each

For each of AE, DAE, CAE and DCAE at batch 128 on MNIST-shaped data (Fashion-MNIST's 60,000
real training images where Debian's dataset-fashion-mnist is installed, else random images),
every measurement runs in a fresh process, ae_jax and PyTorch in alternation:

  start-up        process start to the end of the first training step: imports, data, compile;
                  ae_jax's first run starts with an empty compilation cache, its later runs and
                  one more start reuse it (the second start: the best of --repeats, as
                  PyTorch's start-up is)
                  (the call its loop has queued by then finishes before anything else is measured)
  train           steady-state training images per second
  epoch           one epoch of 48,000 images plus validation on 12,000, as each trains it
  eval            evaluation images per second over 10,000 test images: the MSE, as the
                  original computes it (results.json also holds ae_jax's rate for all of
                  evaluate.py's metrics: MSE, binary cross-entropy and PSNR)
  t-SNE + figure  ae_jax's t-SNE of 10,000 latents and its figure, against scikit-learn's
                  t-SNE alone (its defaults) on the same latents
  peak memory     the process's peak resident memory (and the device's, on a GPU)

Each process runs as its users run it: ae_jax as its commands do (glibc's huge pages for malloc,
JAX's persistent compilation cache, Python's garbage collector off until the update is
compiled), PyTorch with its defaults, and PyTorch again with the same
huge-page setting (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, where glibc >= 2.35 has it), so that the
comparison shows what that setting does for each.

--placement adds ae_jax's AE trained for one epoch on a 2.4 GB .npy (200,000 random 64x64x3
images) with config.data.placement=disk against placement=host: images per second and peak
resident memory, the disk run first with the file out of the kernel's page cache (cold) and
then again (warm).

The CAE trains at about a second a step on a CPU: its epoch is then estimated from the steady
step time and a measured validation (marked "est."); --full_epochs measures it.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
MODELS = ('AE', 'DAE', 'CAE', 'DCAE', 'VAE')
BATCH = 128
NUM_TRAIN = 48_000


def prepare_data(folder: str) -> str:
  """Writes 60,000 train and 10,000 test images as uncompressed IDX files in `folder`; returns
  what they are."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(FASHION_MNIST, 'train-images-idx3-ubyte.gz')):
    from ae_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    read = lambda name: input_pipeline.read_idx(os.path.join(FASHION_MNIST, name))
    train, test, data = (read('train-images-idx3-ubyte.gz'), read('t10k-images-idx3-ubyte.gz'),
                         'Fashion-MNIST (real)')
  else:
    rng = np.random.default_rng(0)
    train, test, data = (rng.integers(0, 256, (60_000, 28, 28), np.uint8),
                         rng.integers(0, 256, (10_000, 28, 28), np.uint8), 'random images')
  for name, images in (('train', train), ('t10k', test)):
    header = bytes([0, 0, 8, 3]) + b''.join(int(d).to_bytes(4, 'big') for d in images.shape)
    with open(os.path.join(folder, f'{name}-images-idx3-ubyte'), 'wb') as f:
      f.write(header + images.tobytes())
  return data


def read_images(folder: str, name: str):
  """An uncompressed IDX file of images as (N, 28, 28, 1) uint8, with numpy alone."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  data = np.fromfile(os.path.join(folder, f'{name}-images-idx3-ubyte'), np.uint8)
  shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i].tobytes(), 'big') for i in range(3)]
  return data[16:].reshape(*shape, 1)


def peak_memory_mib() -> float:
  """This process's peak resident memory. Linux's VmHWM starts afresh with the program;
  ru_maxrss keeps what the process held before exec, i.e. the launching process's memory."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def is_slow(model: str, platform_name: str) -> bool:
  return 'CAE' in model and platform_name == 'cpu'


# --- ae_jax -------------------------------------------------------------------------------

def jax_child(model: str, folder: str, launched: float, full_epochs: bool,
              cache: str, startup_only: bool = False) -> dict:
  sys.path.insert(0, ROOT)
  from ae_jax import launch  # pylint: disable=g-import-not-at-top
  launch.pause_gc()  # as an ae_jax command starts, until train_and_evaluate has compiled
  import importlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from ae_jax import cli, metric_writers, metrics, train  # pylint: disable=g-import-not-at-top,g-multiple-import
  cached = bool(os.listdir(cache))
  cli.use_compilation_cache(cache)

  config = importlib.import_module(f'configs.{model.lower()}').get_config()
  config.data.source, config.data.path = 'idx', folder
  workdir = tempfile.mkdtemp()

  # Start-up: the program's own train_and_evaluate, until its first call (one step) returns.
  class FirstStep(Exception):
    pass

  original = metric_writers.RunLog.train_numbers

  def first_step(self, first, numbers):
    # The loop has already sent its next call: let it finish, so that it neither runs on in the
    # background nor holds its memory while what follows is measured.
    reached_s = time.time() - launched
    jax.block_until_ready(jax.live_arrays())
    raise FirstStep(reached_s)

  metric_writers.RunLog.train_numbers = first_step
  try:
    train.train_and_evaluate(config, os.path.join(workdir, 'startup'))
  except FirstStep as reached:
    startup_s = reached.args[0]
  metric_writers.RunLog.train_numbers = original
  gc.collect()

  import functools  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ae_jax import input_pipeline, models, plots, tsne  # pylint: disable=g-import-not-at-top,g-multiple-import
  from sklearn import manifold  # pylint: disable=g-import-not-at-top
  test_images = read_images(folder, 't10k')
  result = {'startup_cached_s' if cached else 'startup_s': startup_s,
            'device': jax.devices()[0].device_kind, 'platform': jax.devices()[0].platform,
            'huge_pages': 'glibc.malloc.hugetlb' in os.environ.get('GLIBC_TUNABLES', '')}
  if startup_only:
    return result

  # Steady-state training, with the program's own compiled update.
  splits = input_pipeline.load_splits(config.data)
  mesh = train.create_mesh()
  model_def = models.create_model(config, splits['train'].images.shape[1:])
  tx = train.create_optimizer(config)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.jit(functools.partial(train.create_train_state, model_def, tx, config.seed),
                  out_shardings=replicated)()
  update = train.make_update(config, model_def, tx, mesh, splits['train'].images, 'device')
  slow = is_slow(model, result['platform'])
  steps = 4 if slow else 100
  rows = np.arange(steps * BATCH, dtype=np.int32).reshape(steps, BATCH)
  run = update.compile(state, *update.feed(rows), steps)
  state, numbers = run(state, *update.feed(rows), steps)
  np.asarray(numbers['loss'])
  start = time.perf_counter()
  state, numbers = run(state, *update.feed(rows), steps)
  np.asarray(numbers['loss'])
  result['train_images_per_s'] = steps * BATCH / (time.perf_counter() - start)

  # Evaluation: the MSE over a split, as the original evaluates (and as validation runs), and
  # everything that evaluate.py reports (MSE, binary cross-entropy and PSNR).
  variables = {'params': state.params, 'batch_stats': state.batch_stats}

  def evaluate(images, names):
    eval_fn = metrics.make_eval_fn(model_def, config, mesh, names=names)
    feed = input_pipeline.make_feed(images, mesh, 'device')
    evaluate_ = functools.partial(metrics.evaluate_split, eval_fn, variables, feed, len(images),
                                  config, mesh, model=model_def)
    evaluate_()  # compiles
    start = time.perf_counter()
    evaluate_()
    return time.perf_counter() - start

  # what the PyTorch reference evaluates: the MSE; a VAE's negative ELBO
  measured = ('nelbo',) if models.has_prior(model_def) else ('mse',)
  validation_s = evaluate(splits['validation'].images, measured)
  result['eval_images_per_s'] = len(test_images) / evaluate(test_images, measured)
  result['eval_all_metrics_images_per_s'] = len(test_images) / evaluate(
      test_images, ('mse', 'bce', 'psnr'))

  # An epoch: the program's own loop (checkpoint, metrics, figures included), or an estimate.
  if slow and not full_epochs:
    result['epoch_s'] = NUM_TRAIN / result['train_images_per_s'] + validation_s
    result['epoch_estimated'] = True
  else:
    config.num_epochs = 2
    epochs_dir = os.path.join(workdir, 'epochs')
    train.train_and_evaluate(config, epochs_dir)
    rows_ = metric_writers.read_metrics(os.path.join(epochs_dir, 'metrics.jsonl'))
    result['epoch_s'] = rows_[-1]['seconds']  # the second epoch: nothing left to compile

  # Peak memory of training and evaluation, as PyTorch's is measured (no t-SNE).
  result['peak_memory_mib'] = peak_memory_mib()
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    result['device_peak_memory_mib'] = stats['peak_bytes_in_use'] / 2**20

  # t-SNE of 10,000 test latents: ae_jax (t-SNE and figure) against scikit-learn alone.
  run_ = train_run(config, model_def, variables, mesh, splits)
  latents = tsne.encode(run_, test_images)
  if latents.shape[1] > tsne.PCA_DIMS:
    from sklearn import decomposition  # pylint: disable=g-import-not-at-top
    latents = decomposition.PCA(tsne.PCA_DIMS, random_state=0).fit_transform(latents)
  start = time.perf_counter()
  embedding = tsne.embed(latents, 30.0, tsne.ANGLE, 0)
  plots.tsne_map(embedding, test_images, None, None, os.path.join(workdir, 'tsne.png'), model)
  result['tsne_s'] = time.perf_counter() - start
  start = time.perf_counter()
  manifold.TSNE(2, random_state=0).fit_transform(latents)
  result['sklearn_tsne_s'] = time.perf_counter() - start
  return result


def train_run(config, model, variables, mesh, splits):
  """What tsne.encode takes, for a model that was not restored from a workdir."""
  from ae_jax import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate.TrainedRun(config, model, variables, 0, None, None, None, None, splits, mesh)


def placement_child(placement: str, path: str) -> dict:
  """One epoch of configs/ae.py on the .npy at `path`, its data placed as `placement` says."""
  sys.path.insert(0, ROOT)
  from configs import ae  # pylint: disable=g-import-not-at-top
  from ae_jax import metric_writers, train  # pylint: disable=g-import-not-at-top,g-multiple-import
  config = ae.get_config()
  config.data.source, config.data.path, config.data.placement = 'arrays', path, placement
  config.num_epochs = 1
  workdir = tempfile.mkdtemp()
  train.train_and_evaluate(config, workdir)
  row = metric_writers.read_metrics(os.path.join(workdir, 'metrics.jsonl'))[-1]
  return {'images_per_s': row['images_per_sec'], 'peak_memory_mib': peak_memory_mib()}


def placement_table(path: str) -> str:
  """Disk (cold, then warm page cache) against host memory, for the .npy at `path`."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:  # the file out of the page cache: the next read is from the disk
    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
  runs = {}
  for label, placement in (('disk, cold page cache', 'disk'), ('disk, warm page cache', 'disk'),
                           ('host', 'host')):
    print(f'placement: {label} ...', file=sys.stderr, flush=True)
    runs[label] = measure('ae_jax', 'AE', path, False, '', child=f'placement={placement}')
  host = runs['host']
  lines = [f'AE, one epoch of a {size / 1e9:.2f} GB .npy (200,000 random 64x64x3 images):', '',
           '| config.data.placement | images/s | / host | peak resident memory | / host |',
           '| --- | ---: | ---: | ---: | ---: |']
  for label, r in runs.items():
    lines.append(f'| {label} | {r["images_per_s"]:,.0f} | '
                 f'{r["images_per_s"] / host["images_per_s"]:.2f} | '
                 f'{r["peak_memory_mib"]:,.0f} MiB | '
                 f'{r["peak_memory_mib"] / host["peak_memory_mib"]:.2f} |')
  return '\n'.join(lines)


def write_large_npy(path: str) -> None:
  """200,000 random 64x64x3 uint8 images (2.4 GB), written in pieces."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  shape = (200_000, 64, 64, 3)
  array = np.lib.format.open_memmap(path, mode='w+', dtype=np.uint8, shape=shape)
  rng = np.random.default_rng(0)
  for start in range(0, shape[0], 10_000):
    array[start:start + 10_000] = rng.integers(0, 256, (10_000, *shape[1:]), np.uint8)
  array.flush()
  del array


# --- PyTorch ------------------------------------------------------------------------------

def torch_child(model: str, folder: str, launched: float, full_epochs: bool,
                cache: str, startup_only: bool = False) -> dict:
  del cache  # ae_jax's
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_reference as ref  # pylint: disable=g-import-not-at-top

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  to_tensor = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).astype(np.float32) / 255.0).to(
      device)
  images = to_tensor(read_images(folder, 'train'))
  train_set, validation = images[:NUM_TRAIN], images[NUM_TRAIN:]
  noise_std = 0.1 if model.startswith('D') else 0.0
  torch.manual_seed(0)
  net = ref.create(model[1:] if model.startswith('D') else model).to(device)
  optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
  order = np.random.default_rng(0).permutation(NUM_TRAIN)
  ref.train_steps(net, optimizer, train_set, order[:BATCH], BATCH, noise_std)
  sync()
  result = {'device': device, 'startup_s': time.time() - launched,
            'torch': torch.__version__, 'threads': torch.get_num_threads(),
            'huge_pages': 'glibc.malloc.hugetlb' in os.environ.get('GLIBC_TUNABLES', '')}
  if startup_only:
    return result
  test = to_tensor(read_images(folder, 't10k'))

  slow = is_slow(model, 'gpu' if device == 'cuda' else 'cpu')
  steps = 4 if slow else 100
  start = time.perf_counter()
  ref.train_steps(net, optimizer, train_set, order[:steps * BATCH], BATCH, noise_std)
  sync()
  result['train_images_per_s'] = steps * BATCH / (time.perf_counter() - start)

  start = time.perf_counter()
  ref.evaluate(net, validation, BATCH)
  sync()
  validation_s = time.perf_counter() - start
  start = time.perf_counter()
  ref.evaluate(net, test, BATCH)
  sync()
  result['eval_images_per_s'] = len(test) / (time.perf_counter() - start)

  if slow and not full_epochs:
    result['epoch_s'] = NUM_TRAIN / result['train_images_per_s'] + validation_s
    result['epoch_estimated'] = True
  else:
    start = time.perf_counter()
    ref.train_steps(net, optimizer, train_set, order, BATCH, noise_std)
    ref.evaluate(net, validation, BATCH)
    sync()
    result['epoch_s'] = time.perf_counter() - start
  result['peak_memory_mib'] = peak_memory_mib()
  if device == 'cuda':
    result['device_peak_memory_mib'] = torch.cuda.max_memory_allocated() / 2**20
  return result


# --- the run ------------------------------------------------------------------------------

FRAMEWORKS = {  # name: (child, with glibc's huge pages)
    'ae_jax': ('jax', True),  # as its commands run (ae_jax/launch.py)
    'PyTorch': ('torch', False),
    'PyTorch, huge pages': ('torch', True),
}


def whole_runs(model: str, folder: str, repeats: int, full_epochs: bool) -> dict:
  """`repeats` whole measurements of each framework for `model`, in alternation, ae_jax's first
  with an empty compilation cache; then one more start of ae_jax, so that its second start is
  the best of `repeats` too, like PyTorch's start-up."""
  cache = tempfile.mkdtemp()
  runs = {name: [] for name in FRAMEWORKS}
  for repeat in range(repeats):
    for name in FRAMEWORKS:
      print(f'{model}: {name} run {repeat + 1}/{repeats} ...', file=sys.stderr, flush=True)
      runs[name].append(measure(name, model, folder, full_epochs, cache))
  print(f'{model}: ae_jax start {repeats + 1} ...', file=sys.stderr, flush=True)
  runs['ae_jax'].append(measure('ae_jax', model, folder, full_epochs, cache, startup_only=True))
  return runs


def startups(models, folder: str, count: int) -> tuple[str, dict]:
  """`count` start-ups of each framework for each model, in alternation, ae_jax's with the
  compilation cache that one start before them filled: their medians and ranges, a steadier
  figure than the best of two that the whole measurement takes."""
  import statistics  # pylint: disable=g-import-not-at-top
  others = list(FRAMEWORKS)[1:]
  lines = ['| model | ae_jax, second start | ' + ' | '.join(
      f'{name} | ae_jax / {name}' for name in others) + ' |',
           '| --- | ---: |' + ' ---: | ---: |' * len(others)]
  cell = lambda times: f'{statistics.median(times):.2f} s ({min(times):.2f}-{max(times):.2f})'
  runs = {}
  for model in models:
    cache = tempfile.mkdtemp()
    print(f'{model}: ae_jax first start ...', file=sys.stderr, flush=True)
    measure('ae_jax', model, folder, False, cache, startup_only=True)
    runs[model] = {name: [] for name in FRAMEWORKS}
    for i in range(count):
      for name in FRAMEWORKS:
        print(f'{model}: {name} start {i + 1}/{count} ...', file=sys.stderr, flush=True)
        runs[model][name].append(measure(name, model, folder, False, cache, startup_only=True))
    times = {name: [r.get('startup_cached_s', r.get('startup_s')) for r in results]
             for name, results in runs[model].items()}
    cells = [model, cell(times['ae_jax'])]
    for name in others:
      ratio = statistics.median(times['ae_jax']) / statistics.median(times[name])
      cells += [cell(times[name]), f'{ratio:.2f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines), runs


def measure(framework: str, model: str, folder: str, full_epochs: bool, cache: str,
            child: str | None = None, startup_only: bool = False) -> dict:
  """One fresh process of `framework` (its `child`, if given) measuring `model`: everything,
  or only its start-up."""
  default_child, huge_pages = FRAMEWORKS[framework]
  child = child or default_child
  environ = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  if huge_pages:
    sys.path.insert(0, ROOT)
    from ae_jax import launch  # pylint: disable=g-import-not-at-top
    environ = launch.huge_pages_environ(environ) or environ
  out = tempfile.mktemp(suffix='.json')
  args = [sys.executable, os.path.abspath(__file__), f'--child={child}', f'--model={model}',
          f'--data={folder}', f'--launched={time.time()}', f'--out={out}',
          f'--cache={cache}'] + (['--full_epochs'] if full_epochs else []) + (
              ['--startup_only'] if startup_only else [])
  done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=environ)
  if done.returncode != 0:
    raise RuntimeError(f'{framework} {model} failed:\n{done.stderr[-3000:]}')
  with open(out) as f:
    return json.load(f)


ROWS = [  # key, label, unit, higher is better
    ('startup_s', 'start-up to first step', 's', False),
    ('startup_cached_s', 'start-up to first step, second start', 's', False),
    ('train_images_per_s', 'train (steady)', 'images/s', True),
    ('epoch_s', 'epoch: 48,000 + validation', 's', False),
    ('eval_images_per_s', 'eval: MSE (VAE: -ELBO) of 10,000 test images', 'images/s', True),
    ('peak_memory_mib', 'peak host memory', 'MiB', False),
]


def best(results: list[dict], key: str, higher: bool):
  values = [r[key] for r in results if key in r]
  return (max if higher else min)(values) if values else None


def table(by_model: dict) -> str:
  """ae_jax against each PyTorch column; a start-up with a warm compilation cache against
  PyTorch's start-up (PyTorch compiles nothing)."""
  others = list(FRAMEWORKS)[1:]
  lines = ['| model | measure | ae_jax | ' + ' | '.join(
      f'{name} | ae_jax / {name}' for name in others) + ' |',
           '| --- | --- | ---: |' + ' ---: | ---: |' * len(others)]
  fmt = lambda v, unit: '-' if v is None else (f'{v:,.0f} {unit}' if v >= 100 else
                                              f'{v:.2f} {unit}')
  for model, runs in by_model.items():
    for key, label, unit, higher in ROWS:
      ours = best(runs['ae_jax'], key, higher)
      note = ' (est.)' if key == 'epoch_s' and runs['ae_jax'][0].get('epoch_estimated') else ''
      cells = [f'{model}', f'{label}{note}', fmt(ours, unit)]
      for name in others:
        theirs = best(runs[name], 'startup_s' if key == 'startup_cached_s' else key, higher)
        cells += [fmt(theirs, unit), f'{ours / theirs:.2f}' if ours and theirs else '-']
      lines.append('| ' + ' | '.join(cells) + ' |')
    ours, sklearn = best(runs['ae_jax'], 'tsne_s', False), best(runs['ae_jax'], 'sklearn_tsne_s',
                                                               False)
    lines.append(f'| {model} | t-SNE of 10,000 latents + figure (vs scikit-learn t-SNE alone) | '
                 f'{fmt(ours, "s")} | {fmt(sklearn, "s")} | {ours / sklearn:.2f} |' +
                 ' | |' * (len(others) - 1))
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default=','.join(MODELS))
  parser.add_argument('--repeats', type=int, default=2,
                      help='alternating ae_jax / PyTorch measurements per model; best counts')
  parser.add_argument('--full_epochs', action='store_true',
                      help='measure the CAE epoch on a CPU instead of estimating it')
  parser.add_argument('--placement', action='store_true',
                      help="also train the AE on a 2.4 GB .npy from disk and from host memory")
  parser.add_argument('--startups', type=int, default=0,
                      help='measure only start-ups: this many of each, alternating, ae_jax with a '
                      'warm compilation cache; medians and ranges, in benchmarks/startups.json')
  parser.add_argument('--out', help='default: benchmarks/results.json (startups.json with '
                      '--startups)')
  parser.add_argument('--child', help=argparse.SUPPRESS)
  parser.add_argument('--model', help=argparse.SUPPRESS)
  parser.add_argument('--launched', type=float, help=argparse.SUPPRESS)
  parser.add_argument('--data', help=argparse.SUPPRESS)
  parser.add_argument('--cache', help=argparse.SUPPRESS)
  parser.add_argument('--startup_only', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.child:
    if args.child.startswith('placement='):
      result = placement_child(args.child.split('=')[1], args.data)
    else:
      child = jax_child if args.child == 'jax' else torch_child
      result = child(args.model, args.data, args.launched, args.full_epochs, args.cache,
                     args.startup_only)
    with open(args.out, 'w') as f:
      json.dump(result, f)
    return

  args.out = args.out or os.path.join(ROOT, 'benchmarks',
                                      'startups.json' if args.startups else 'results.json')
  folder = tempfile.mkdtemp()
  data = prepare_data(folder)
  models = list(filter(None, args.models.split(',')))
  measured = {}
  if args.startups and models:
    measured['startups'], by_model = startups(models, folder, args.startups)
    measured['startup_runs'] = by_model
  else:
    by_model = {model: whole_runs(model, folder, args.repeats, args.full_epochs)
                for model in models}
    if by_model:
      measured.update(table=table(by_model), runs=by_model)

  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
  header = (f'{datetime.date.today().isoformat()}, commit {commit}, '
            f'{platform.processor() or platform.machine()} with {os.cpu_count()} cores')
  if by_model:
    first = next(iter(by_model.values()))
    ours, theirs = first['ae_jax'][0], first['PyTorch'][0]
    header += (f', ae_jax on {ours["device"]} (huge pages: {ours["huge_pages"]}), PyTorch '
               f'{theirs["torch"]} on {theirs["device"]} with {theirs["threads"]} threads; '
               f'data: {data}; batch {BATCH}; ' + (
                   f'{args.startups} start-ups of each, alternating: medians (ranges)'
                   if args.startups else f'best of {args.repeats} alternating runs'))
  results = {'header': header, **measured}
  if args.placement:
    path = os.path.join(tempfile.mkdtemp(), 'images.npy')
    write_large_npy(path)
    results['placement_table'] = placement_table(path)
    os.remove(path)
  print('\n\n'.join([header] + [results[k] for k in ('table', 'startups', 'placement_table')
                                  if k in results]))
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=2)
  print(f'\nwrote {args.out}', file=sys.stderr)


if __name__ == '__main__':
  main()
