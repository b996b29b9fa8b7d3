#!/usr/bin/env bash
# The device check (benchmarks/README.md, "Device check"): on a GPU machine, from a clean
# checkout, installs what is missing, runs the tests that mean something on a GPU and times
# every model; writes device_check.json and device_check.md to --out_dir (runs/device_check).
#
#   benchmarks/device_check.sh [--out_dir=DIR] [device_check.py's flags]   # on a GPU
#   benchmarks/device_check.sh --cpu                # the dry run on CPUs, smaller
#   benchmarks/device_check.sh --download-wheels [REQUIREMENT ...]
#       fills .whl/ with the wheels (Python 3.12, manylinux x86-64) of what a machine without
#       network lacks, for the check to install from there (the default: what the check imports
#       besides JAX, flax, optax, orbax, tensorboard and their dependencies)
#
# Python: $PYTHON, else .venv/bin/python where there is one, else a .venv made here from
# python3 that sees python3's packages, also where python3 is a virtual environment's (so that
# a preinstalled CUDA JAX is used as it is), else python3 itself.
# What is missing is installed from .whl/ where it exists (no network needed), else with pip:
# the cuda extra where a GPU is present and JAX sees only CPUs.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl

if [[ "${1:-}" == --download-wheels ]]; then
  shift
  # pure-Python wheels and those of the C extensions, without their dependencies: these are
  # what a Python with JAX, flax, optax, orbax and tensorboard (numpy, scipy, PyYAML, absl-py,
  # protobuf, packaging, ...) lacks of the check's imports
  requirements=("$@")
  if [[ ${#requirements[@]} -eq 0 ]]; then
    requirements=(ml-collections scikit-learn joblib threadpoolctl openTSNE matplotlib contourpy
                  cycler fonttools kiwisolver pyparsing python-dateutil six pillow tqdm pytest
                  iniconfig pluggy pygments packaging flatbuffers)
  fi
  exec "${PYTHON:-python3}" -m pip download --dest "$WHEELS" --no-deps --only-binary=:all: \
      --python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "${requirements[@]}"
fi

cpu=
for arg in "$@"; do [[ "$arg" == --cpu ]] && cpu=1; done

start=$(date +%s)
PY=${PYTHON:-}
if [[ -z "$PY" && -x .venv/bin/python ]]; then
  PY=.venv/bin/python
elif [[ -z "$PY" ]]; then
  if python3 -m venv --system-site-packages .venv 2>/dev/null \
      || python3 -m venv --system-site-packages --without-pip .venv 2>/dev/null; then
    PY=.venv/bin/python
    # A venv made from a venv's python3 (the GPU image's python3 is one) sees the base Python's
    # packages, not python3's: a .pth file adds python3's own, ahead of the base's.
    python3 -c 'import site
for path in site.getsitepackages(): print(f"import site; site.addsitedir({path!r})")' \
      > "$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/python3_site.pth"
  else  # a Python without venv: what is missing goes to the user's site-packages
    rm -rf .venv
    PY=python3
    export PIP_USER=1 PIP_BREAK_SYSTEM_PACKAGES=1
  fi
fi

gpu_present=
if [[ -z "$cpu" ]] && { [[ -e /proc/driver/nvidia/gpus ]] || nvidia-smi -L >/dev/null 2>&1; }
then
  gpu_present=1
fi
missing=()
while read -r requirement; do
  [[ -n "$requirement" ]] && missing+=("$requirement")
done < <("$PY" benchmarks/device_check.py --missing)
needs_cuda=
on_gpu='import jax, sys; sys.exit(jax.default_backend() != "gpu")'
if [[ -n "$gpu_present" ]] && ! "$PY" -c "$on_gpu" 2>/dev/null; then
  needs_cuda=1
fi

install="Installed: nothing (every requirement was there)."
if [[ ${#missing[@]} -gt 0 || -n "$needs_cuda" ]]; then
  wanted=("${missing[@]}")
  [[ -n "$needs_cuda" ]] && wanted+=('jax[cuda12]>=0.10')
  echo "installing: ${wanted[*]}"
  if [[ -d "$WHEELS" ]]; then
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" "${wanted[@]}" \
      && source="from $WHEELS/"
  elif [[ -n "$needs_cuda" ]]; then
    "$PY" -m pip install -q -e '.[cuda,test]' && source="pip install -e '.[cuda,test]'"
  else
    "$PY" -m pip install -q "${wanted[@]}" && source=pip
  fi || {
    echo "error: could not install ${wanted[*]}: with no network, fill $WHEELS/ on a machine" \
         "that has one (benchmarks/device_check.sh --download-wheels) and bring it along" >&2
    exit 1
  }
  install="Installed ${wanted[*]} ($source) in $(( $(date +%s) - start )) s."
fi

DEVICE_CHECK_INSTALL="$install" exec "$PY" benchmarks/device_check.py "$@"
