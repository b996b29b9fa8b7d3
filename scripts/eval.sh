#!/usr/bin/env bash
# Test loss, BCE and PSNR of a trained run, and a figure of reconstructions.
#   scripts/eval.sh [WORKDIR] [--split=test|validation|train] [--checkpoint=best|latest|STEP] [--num_examples=10]
#   scripts/eval.sh [WORKDIR] --input=FOLDER|IMAGE|ARRAY.npy   # images of your own
# Without WORKDIR: the run under runs/ that trained last.
set -euo pipefail
if [[ $# -gt 0 && $1 != -* ]]; then set -- --workdir="$1" "${@:2}"; fi
# The repository's .venv (the README's install) where no virtual environment is active.
python=python
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z ${VIRTUAL_ENV:-} && -x $root/.venv/bin/python ]]; then python="$root/.venv/bin/python"; fi
exec "$python" -m ae_jax.evaluate "$@"
