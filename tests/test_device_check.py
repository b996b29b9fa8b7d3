"""benchmarks/device_check.py: its flags, and the JSON and table it writes, on a tiny CPU run."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location(
    'device_check', os.path.join(ROOT, 'benchmarks', 'device_check.py'))
device_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(device_check)


def test_the_gpu_check_is_full_size_and_the_cpu_dry_run_smaller():
  full = device_check.parse_args([])
  assert (full.num_train, full.num_test, full.tsne_points) == (60_000, 10_000, 10_000)
  assert full.models == list(device_check.MODELS) and full.dtypes == ['float32', 'bfloat16']
  dry = device_check.parse_args(['--cpu', '--models=ae,cae'])
  assert dry.models == ['AE', 'CAE'] and dry.num_train < full.num_train
  assert dry.budget_s <= 600  # within the 10 minutes it has on 2 cores


@pytest.mark.parametrize('flags', [['--models=AE,GAN'], ['--dtypes=float16'],
                                   ['--num_train=5']])
def test_bad_flags_are_refused(flags, capsys):
  with pytest.raises(SystemExit):
    device_check.parse_args(flags)
  assert 'error:' in capsys.readouterr().err


def test_a_gpu_table_marks_the_targets_and_the_rows_it_could_not_time():
  report = {'date': '2026-01-01', 'started': 0, 'total_s': 300, 'install': '',
            'machine': {'description': '1 gpu device(s) (NVIDIA H200)', 'platform': 'gpu',
                        'jax': '0.11.0', 'python': '3.12', 'cpu_count': 16},
            'sizes': {'num_train': 60_000, 'num_test': 10_000, 'tsne_points': 10_000},
            'tests': {'command': 'pytest x', 'summary': '40 passed', 'seconds': 90},
            'rows': [dict(model='AE', dtype='float32', epoch_train_s=0.08, epoch_s=0.5,
                          run_s=9.0, eval_s=0.6, tsne_s=12.0, tsne_share=0.3, run_epochs=10),
                     dict(model='DCAE', dtype='bfloat16', epoch_train_s=2.5, epoch_s=3.0,
                          run_s=20.0, eval_s=0.2, run_epochs=10),
                     dict(model='CAE', dtype='float32', epoch_train_s=1.5, epoch_s=2.0,
                          run_s=15.0, eval_s=0.3, run_epochs=10,
                          tsne_note="t-SNE failed: No module named 'openTSNE'"),
                     dict(model='VAE', dtype='float32', skipped='skipped: past --budget_s=360'),
                     dict(model='CAE', dtype='float32', error='out of memory')]}
  table = device_check.markdown(report)
  assert 'NVIDIA H200' in table and '48,000 training images' in table and 'random' in table
  assert '| AE | float32 | 80 ms ✓ | 500 ms | 9.00 s | 600 ms ✗ (target 500 ms) | 12 s | ' \
         '30% of 10 epochs |' in table
  assert '| DCAE | bfloat16 | 2.50 s ✗ (target 2.00 s) |' in table
  assert "| CAE | float32 | 1.50 s ✓ | 2.00 s | 15 s | 300 ms ✓ | t-SNE failed: No module " \
         "named 'openTSNE' | – |" in table
  assert '| VAE | float32 | skipped: past --budget_s=360 |' in table
  assert '| CAE | float32 | error: out of memory |' in table
  assert '40 passed' in table


def test_the_check_sees_the_packages_of_a_python3_that_is_a_venvs(tmp_path):
  """The GPU image's python3 is a virtual environment's, JAX and the rest in it: the .venv the
  check makes must see them, or it installs them again, which fails without a network."""
  python3 = tmp_path / 'image'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', python3], check=True)
  [own] = (python3 / 'lib').glob('python3*/site-packages')  # what this test's Python has
  (own / 'packages.pth').write_text(sysconfig.get_path('purelib') + '\n')
  repo = tmp_path / 'repo'
  (repo / '.whl').mkdir(parents=True)  # no network: an empty wheel folder
  shutil.copytree(os.path.join(ROOT, 'benchmarks'), repo / 'benchmarks',
                  ignore=shutil.ignore_patterns('*.json', '*.md', '__pycache__'))
  env = {**os.environ, 'PATH': f'{python3 / "bin"}{os.pathsep}{os.environ["PATH"]}'}
  env.pop('PYTHON', None)
  env.pop('VIRTUAL_ENV', None)
  done = subprocess.run(['bash', repo / 'benchmarks' / 'device_check.sh', '--cpu',
                         '--num_train=5'], env=env, capture_output=True, text=True, timeout=120)
  assert 'installing' not in done.stdout and 'could not install' not in done.stderr, done
  assert done.returncode == 2 and '--num_train must be at least 10' in done.stderr, done


@pytest.mark.slow  # about 10 s of CPU time; 45 s on 2 busy cores
def test_a_tiny_cpu_run_writes_one_json_and_one_table(tmp_path, monkeypatch):
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)  # --cpu sets it: undone afterwards
  code = device_check.main(['--cpu', '--models=AE', '--dtypes=bfloat16', '--num_train=200',
                            '--num_test=40', '--tsne_points=0', '--tests=',
                            f'--out_dir={tmp_path}'])
  assert code == 0
  assert sorted(os.listdir(tmp_path)) == ['device_check.json', 'device_check.md']
  with open(tmp_path / 'device_check.json') as f:
    report = json.load(f)
  [row] = report['rows']
  assert row['model'] == 'AE' and row['dtype'] == 'bfloat16'
  assert 0 < row['epoch_train_s'] <= row['epoch_s'] < row['run_s'] and row['eval_s'] > 0
  assert report['machine']['platform'] == 'cpu' and report['sizes']['num_train'] == 200
  table = (tmp_path / 'device_check.md').read_text()
  assert '| AE | bfloat16 |' in table and '160 training images' in table
