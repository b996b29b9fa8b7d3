"""What the main command says of the devices: which it found, and a GPU that JAX leaves unused."""

import os
import stat

import jax
import pytest

from ae_jax import devices
from conftest import MNIST_SMALL
from conftest import run_module

ON_CPU = jax.default_backend() == 'cpu'


def _fake_nvidia_smi(folder, monkeypatch, listing='GPU 0: NVIDIA H200 (UUID: GPU-0123)'):
  """An nvidia-smi on PATH that lists one GPU, as the driver's prints it."""
  path = folder / 'nvidia-smi'
  path.write_text(f'#!/bin/sh\n[ "$1" = -L ] && echo "{listing}"\n')
  path.chmod(path.stat().st_mode | stat.S_IXUSR)
  monkeypatch.setenv('PATH', f'{folder}{os.pathsep}{os.environ["PATH"]}')


def _no_driver_files(monkeypatch):
  monkeypatch.setattr(devices.glob, 'glob', lambda pattern: [])
  monkeypatch.setattr(devices, 'NVIDIA_DRIVER_PATHS', ())


def test_the_devices_are_counted_and_a_gpu_named():
  class Device:  # what describe reads of a jax.Device
    def __init__(self, platform, kind):
      self.platform, self.device_kind = platform, kind

  assert devices.describe([Device('cpu', 'cpu')] * 8) == '8 cpu device(s)'
  assert devices.describe([Device('gpu', 'NVIDIA H200')]) == '1 gpu device(s) (NVIDIA H200)'
  assert devices.describe(jax.devices()).startswith(f'{jax.device_count()} ')


def test_nvidia_smi_names_the_gpu_and_without_a_driver_there_is_none(tmp_path, monkeypatch):
  _no_driver_files(monkeypatch)
  monkeypatch.setenv('PATH', str(tmp_path))  # no nvidia-smi
  assert devices.nvidia_gpu() is None
  _fake_nvidia_smi(tmp_path, monkeypatch)
  assert devices.nvidia_gpu() == 'NVIDIA H200'


@pytest.mark.skipif(not ON_CPU, reason='JAX computes on an accelerator here')
def test_a_gpu_that_jax_does_not_see_is_one_warning_that_names_the_fix(monkeypatch):
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  monkeypatch.setattr(devices, 'nvidia_gpu', lambda: 'NVIDIA H200')
  warning = devices.unused_gpu_warning()
  assert warning.startswith('warning: this machine has an NVIDIA GPU (NVIDIA H200)')
  assert "pip install -e '.[cuda]'" in warning and '\n' not in warning
  monkeypatch.setattr(devices, 'nvidia_gpu', lambda: '')  # a driver that names nothing
  assert devices.unused_gpu_warning().startswith('warning: this machine has an NVIDIA GPU, but')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')  # CPUs on purpose: nothing to say
  assert devices.unused_gpu_warning() is None
  monkeypatch.delenv('JAX_PLATFORMS')
  monkeypatch.setattr(devices, 'nvidia_gpu', lambda: None)  # no GPU: nothing to say
  assert devices.unused_gpu_warning() is None


@pytest.mark.skipif(not ON_CPU, reason='JAX computes on an accelerator here')
def test_a_gpu_asked_for_but_left_unused_is_still_a_warning(monkeypatch):
  # JAX_PLATFORMS=cuda,cpu falls back to the CPUs where the CUDA wheels are missing
  monkeypatch.setattr(devices, 'nvidia_gpu', lambda: 'NVIDIA H200')
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda,cpu')
  assert devices.unused_gpu_warning().startswith('warning: this machine has an NVIDIA GPU')


@pytest.mark.skipif(not ON_CPU, reason='JAX computes on an accelerator here')
def test_training_says_which_devices_and_warns_once_of_an_unused_gpu(tmp_path, monkeypatch):
  _fake_nvidia_smi(tmp_path, monkeypatch)
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  result = run_module('ae_jax.main', '--config=configs/ae.py', f'--workdir={tmp_path / "run"}',
                      '--config.data.source=idx', f'--config.data.path={MNIST_SMALL}',
                      '--config.data.train_split=train[:80]', '--config.batch_size=32',
                      '--config.num_epochs=1')
  assert result.returncode == 0, result.stderr
  assert '; 1 cpu device(s)' in result.stdout
  warnings = [line for line in result.stderr.splitlines() if line.startswith('warning: ')]
  assert len(warnings) == 1, result.stderr
  assert 'NVIDIA H200' in warnings[0] and "pip install -e '.[cuda]'" in warnings[0]
