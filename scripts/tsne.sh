#!/usr/bin/env bash
# The latent space of a trained run in 2-D (t-SNE) with digit thumbnails, and kNN / linear-probe
# accuracy and trustworthiness.
#   scripts/tsne.sh WORKDIR [--split=test] [--num_points=10000] [--checkpoint=best] [--redraw]
set -euo pipefail
workdir="${1:?usage: scripts/tsne.sh WORKDIR [flags]}"
shift
exec python -m ae_jax.tsne --workdir="$workdir" "$@"
