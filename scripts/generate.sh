#!/usr/bin/env bash
# Samples from a VAE's prior, walks through any model's latent space, the grid of a 2-D latent.
#   scripts/generate.sh [WORKDIR] [--walk=3,7] [--walk_images=I,J] [--num_samples=64] [--steps=10]
#   scripts/generate.sh [WORKDIR] --input=FOLDER|ARRAY.npy [--walk_images=a.png,b.png]   # your images
# Without WORKDIR: the run under runs/ that trained last.
set -euo pipefail
if [[ $# -gt 0 && $1 != -* ]]; then set -- --workdir="$1" "${@:2}"; fi
# The repository's .venv (the README's install) where no virtual environment is active.
python=python
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z ${VIRTUAL_ENV:-} && -x $root/.venv/bin/python ]]; then python="$root/.venv/bin/python"; fi
exec "$python" -m ae_jax.generate "$@"
