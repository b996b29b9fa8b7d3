#!/usr/bin/env bash
# Latents of a split of a trained run, as .npy arrays with labels (and files), for a downstream model.
#   scripts/encode.sh [WORKDIR] [--split=test|validation|train] [--checkpoint=best] [--variance] [--out_dir=DIR]
#   scripts/encode.sh [WORKDIR] --input=FOLDER|IMAGE|ARRAY.npy [--out_dir=DIR]   # images of your own
# Without WORKDIR: the run under runs/ that trained last.
set -euo pipefail
if [[ $# -gt 0 && $1 != -* ]]; then set -- --workdir="$1" "${@:2}"; fi
# The repository's .venv (the README's install) where no virtual environment is active.
python=python
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z ${VIRTUAL_ENV:-} && -x $root/.venv/bin/python ]]; then python="$root/.venv/bin/python"; fi
exec "$python" -m ae_jax.encode "$@"
