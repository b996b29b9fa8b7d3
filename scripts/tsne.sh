#!/usr/bin/env bash
# The latent space of a trained run in 2-D (t-SNE) with digit thumbnails, and kNN / linear-probe
# accuracy and trustworthiness.
#   scripts/tsne.sh [WORKDIR] [--split=test] [--num_points=10000] [--checkpoint=best] [--redraw]
#   scripts/tsne.sh [WORKDIR] --input=FOLDER|ARRAY.npy   # images of your own
# Without WORKDIR: the run under runs/ that trained last.
set -euo pipefail
if [[ $# -gt 0 && $1 != -* ]]; then set -- --workdir="$1" "${@:2}"; fi
# The repository's .venv (the README's install) where no virtual environment is active.
python=python
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z ${VIRTUAL_ENV:-} && -x $root/.venv/bin/python ]]; then python="$root/.venv/bin/python"; fi
exec "$python" -m ae_jax.tsne "$@"
