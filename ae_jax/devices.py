"""What JAX computes on: the devices it found, and an NVIDIA GPU that it leaves unused.

A machine with a GPU and JAX's CPU wheels (`pip install -e .` without the cuda extra) trains,
slowly, on its CPUs: the main command says so in one line, with the fix.
"""

import glob
import os
import shutil
import subprocess

import jax

CUDA_INSTALL = "pip install -e '.[cuda]'"

# Where the NVIDIA driver shows itself: its device files (also inside Docker and Kubernetes
# containers that were given a GPU) and its /proc entries.
NVIDIA_DRIVER_PATHS = ('/dev/nvidiactl', '/dev/nvidia0', '/proc/driver/nvidia/gpus')


def describe(devices) -> str:
  """'8 cpu device(s)', '1 gpu device(s) (NVIDIA H200)': how many, of which platform and kind."""
  devices = list(devices)
  platform = devices[0].platform
  kinds = sorted({d.device_kind for d in devices})
  return f'{len(devices)} {platform} device(s)' + (
      '' if platform == 'cpu' else f' ({", ".join(kinds)})')


def nvidia_gpu() -> str | None:
  """The name of an NVIDIA GPU on this machine ('NVIDIA H200'; '' where the driver gives no
  name), or None where there is none."""
  for information in sorted(glob.glob('/proc/driver/nvidia/gpus/*/information')):
    try:
      with open(information) as f:
        for line in f:
          if line.startswith('Model:'):
            return line.split(':', 1)[1].strip()
    except OSError:
      pass
  if shutil.which('nvidia-smi'):
    try:
      listed = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
      listed = None
    if listed is not None and listed.returncode == 0 and listed.stdout.startswith('GPU '):
      # GPU 0: NVIDIA H200 (UUID: GPU-...)
      return listed.stdout.splitlines()[0].split(': ', 1)[-1].split(' (UUID')[0].strip()
  if any(os.path.exists(path) for path in NVIDIA_DRIVER_PATHS):
    return ''
  return None


def unused_gpu_warning() -> str | None:
  """One line where this machine has an NVIDIA GPU and JAX computes on its CPUs, naming the fix;
  None where JAX uses the GPU, there is none, or JAX_PLATFORMS asks for CPUs alone."""
  if jax.default_backend() != 'cpu':
    return None
  asked = os.environ.get('JAX_PLATFORMS', '')
  if asked and not any(p in asked for p in ('cuda', 'gpu')):
    return None  # CPUs on purpose
  gpu = nvidia_gpu()
  if gpu is None:
    return None
  named = f' ({gpu})' if gpu else ''
  return (f'warning: this machine has an NVIDIA GPU{named}, but JAX sees only CPUs and trains on '
          f"them: install JAX's CUDA wheels with {CUDA_INSTALL} (or set JAX_PLATFORMS=cpu to "
          'train on the CPUs without this warning)')
