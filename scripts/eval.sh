#!/usr/bin/env bash
# Test loss, BCE and PSNR of a trained run, and a figure of reconstructions.
#   scripts/eval.sh WORKDIR [--split=test|validation|train] [--checkpoint=best|latest|STEP] [--num_examples=10]
set -euo pipefail
workdir="${1:?usage: scripts/eval.sh WORKDIR [flags]}"
shift
exec python -m ae_jax.evaluate --workdir="$workdir" "$@"
