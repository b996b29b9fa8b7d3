"""Helpers shared by the tests: small real data and configs that train on it in seconds."""

import contextlib
import errno
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import zlib

import pytest

# Tests run in two processes (`pytest -n 2`): on a GPU each would otherwise take 75% of its
# memory at its first computation, and the second would fail.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 1,000 + 200 real MNIST digits in IDX format (see tests/data/mnist_small/README.md).
MNIST_SMALL = os.path.join(ROOT, 'tests', 'data', 'mnist_small')


def small_config(name: str, *, num_train: int = 256, batch_size: int = 32, **overrides):
  """configs/<name>.py reading `num_train` real MNIST digits (+ 20% for validation)."""
  config = importlib.import_module(f'configs.{name}').get_config()
  config.data.source = 'idx'
  config.data.path = MNIST_SMALL
  config.data.train_split = f'train[:{num_train * 5 // 4}]'
  config.batch_size = batch_size
  config.num_epochs = 1
  config.steps_per_call = 4
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def environment(devices: int, env) -> dict:
  """A child process's environment: `env` besides ours, with `devices` simulated CPU devices."""
  flags = f'--xla_force_host_platform_device_count={devices}'
  if devices > 1:
    # Simulated devices share two loaded cores, where one device can reach a collective more
    # than XLA's default 40 s after another; XLA then aborts the process.
    flags += ' --xla_cpu_collective_call_terminate_timeout_seconds=600'
  # this interpreter for the scripts' `python` too
  return {**os.environ, **(env or {}), 'VIRTUAL_ENV': sys.prefix,
          'PATH': os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''),
          'XLA_FLAGS': flags}


def run_module(module: str, *args: str, devices: int = 1, timeout: float = 600, env=None,
               cwd=ROOT):
  """Runs `python -m module args` in a fresh process with `devices` CPU devices."""
  return subprocess.run([sys.executable, '-m', module, *args], cwd=cwd,
                        env=environment(devices, env), capture_output=True, text=True,
                        timeout=timeout)


def run_script(script: str, *args: str, cwd=ROOT, timeout: float = 600):
  """Runs scripts/<script> (eval.sh, tsne.sh) as a user types it, in `cwd`."""
  return subprocess.run([os.path.join(ROOT, 'scripts', script), *args], cwd=cwd,
                        env=environment(1, None), capture_output=True, text=True,
                        timeout=timeout)


def assert_one_line_error(result, *fragments):
  """A non-zero exit, no traceback, and a last line that starts with 'error:' and says it all."""
  output = (result.stdout + result.stderr).strip()
  assert result.returncode != 0, output
  assert 'Traceback' not in output, output
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: '), output
  assert sum(l.startswith('error: ') for l in result.stderr.splitlines()) == 1, output
  for fragment in fragments:
    assert fragment in last, last


def pytest_configure(config):
  """The commands' caches (XDG_CACHE_HOME: JAX's compilation cache, numba's, matplotlib's) in a
  folder of this run's, which starts empty as on CI and leaves the user's ~/.cache alone; the
  workers of `pytest -n 2` start after this and share it."""
  if not hasattr(config, 'workerinput'):
    config.ae_jax_cache_home = os.environ['XDG_CACHE_HOME'] = tempfile.mkdtemp(
        prefix='ae_jax_tests_cache_')


def pytest_unconfigure(config):
  if hasattr(config, 'ae_jax_cache_home'):
    shutil.rmtree(config.ae_jax_cache_home, ignore_errors=True)


@pytest.fixture(scope='session', autouse=True)
def compilation_cache():
  """The tests in this process compile into the cache the commands they start use.

  Many tests compile the same small models' programs; reading them back takes 21% off the
  in-process tests' time (305 s to 241 s for test_train, test_vae, test_models, test_evaluate).
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir',
                    os.path.join(os.environ['XDG_CACHE_HOME'], 'ae_jax', 'jax'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


@pytest.fixture
def workdir(tmp_path):
  return str(tmp_path / 'workdir')


@pytest.fixture
def disk_full_on_reserve(monkeypatch):
  """A full disk as reserving a file's space (ae_jax.npy_writer) meets it."""
  def disk_full(fd, offset, length):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as the system call reports it
  monkeypatch.setattr(os, 'posix_fallocate', disk_full)


@pytest.fixture(scope='session')
def trained_ae(tmp_path_factory):
  """(workdir, config) of an AE trained for 5 epochs on 800 real digits."""
  from ae_jax import train  # pylint: disable=g-import-not-at-top
  config = small_config('ae', num_train=800, num_epochs=5)
  workdir = str(tmp_path_factory.mktemp('trained') / 'ae')
  train.train_and_evaluate(config, workdir)
  return workdir, config


def save_untrained(config, workdir):
  """A workdir holding the config and the checkpoint of an untrained model (step 0)."""
  from ae_jax import checkpoints, config_lib, models, train  # pylint: disable=g-import-not-at-top
  config_lib.write_config(config, workdir)
  import functools, jax  # pylint: disable=g-import-not-at-top,g-multiple-import
  model = models.create_model(config, (28, 28, 1))
  state = jax.jit(functools.partial(train.create_train_state, model,
                                    train.create_optimizer(config), config.seed),
                  compiler_options=models.compile_once_options(model))()
  with checkpoints.create_manager(workdir, image_shape=(28, 28, 1)) as manager:
    checkpoints.save(manager, state)
  return workdir


def assert_script_refuses(script: str, workdir: str, flag: str, fragment: str):
  """scripts/<script> WORKDIR FLAG: one error line with `fragment`, and the run left as it was."""
  before = sorted(os.listdir(workdir))
  assert_one_line_error(run_script(script, workdir, flag), fragment)
  assert sorted(os.listdir(workdir)) == before


@contextlib.contextmanager
def small_disk(path, size: str):
  """A tmpfs of `size` ('5m') mounted at the new folder `path`: a disk that fills up. The test
  is skipped where no tmpfs can be mounted (not root, no mount program)."""
  if os.geteuid() != 0 or not shutil.which('mount'):
    pytest.skip('mounting a small tmpfs needs root and mount')
  os.makedirs(path)
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)]).returncode:
    pytest.skip('cannot mount a tmpfs here')
  try:
    yield path
  finally:
    # lazily: a file left open on it (a memory map) would keep it mounted
    subprocess.run(['umount', '--lazy', str(path)], check=False)


def write_huge_png(path, side=20_000):
  """A PNG of side x side pixels, more than PIL opens (a decompression bomb), in 45 bytes: its
  header alone, which is all that PIL reads before it refuses."""
  def chunk(kind, data):
    return (len(data).to_bytes(4, 'big') + kind + data
            + zlib.crc32(kind + data).to_bytes(4, 'big'))
  header = side.to_bytes(4, 'big') * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit grayscale
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IEND', b''))
