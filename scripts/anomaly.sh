#!/usr/bin/env bash
# Anomaly scores: per-image reconstruction error (a VAE: -ELBO), a threshold, flagged images; ROC-AUC of held-out classes.
#   scripts/anomaly.sh [WORKDIR] [--split=test] [--percentile=99] [--num_worst=16] [--out_dir=DIR]
#   scripts/anomaly.sh [WORKDIR] --input=FOLDER|IMAGE|ARRAY.npy [--out_dir=DIR]   # images of your own
# Without WORKDIR: the run under runs/ that trained last.
set -euo pipefail
if [[ $# -gt 0 && $1 != -* ]]; then set -- --workdir="$1" "${@:2}"; fi
# The repository's .venv (the README's install) where no virtual environment is active.
python=python
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z ${VIRTUAL_ENV:-} && -x $root/.venv/bin/python ]]; then python="$root/.venv/bin/python"; fi
exec "$python" -m ae_jax.anomaly "$@"
