#!/usr/bin/env bash
# Runs a trained model on new images (a folder, one file or a .npy): reconstructs or denoises them.
#   scripts/reconstruct.sh [WORKDIR] --input=FOLDER|IMAGE|ARRAY.npy --output=FOLDER [--add_noise] [--overwrite]
# Without WORKDIR: the run under runs/ that trained last.
set -euo pipefail
if [[ $# -gt 0 && $1 != -* ]]; then set -- --workdir="$1" "${@:2}"; fi
# The repository's .venv (the README's install) where no virtual environment is active.
python=python
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z ${VIRTUAL_ENV:-} && -x $root/.venv/bin/python ]]; then python="$root/.venv/bin/python"; fi
exec "$python" -m ae_jax.reconstruct "$@"
