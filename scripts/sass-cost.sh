#!/usr/bin/env bash
# The static SASS cost model (no GPU): registers, spills, CTAs per SM, MMAs per tile, epilogue
# instructions and MUFU ops per logit, shared-memory wavefronts per MMA, and per bench shape
# (N = 8192 / 65536, D = 128 / 512) waves and issue- / tensor- / MUFU- / smem-bound time estimates.
# README, "Static cost model", explains the model and where it is blind.
#
#   bash scripts/sass-cost.sh                                  # kernels/: Markdown on stdout and in
#                                                              #   benches/reports/sass-cost.md (untracked)
#   bash scripts/sass-cost.sh kernels/contrastive.cu --filter 'contrastive_(forward|backward)_bf16$'
#   bash scripts/sass-cost.sh kernels/contrastive.cu --json    # JSON Lines, one object per kernel
#   bash scripts/sass-cost.sh --out benches/reports/sass-cost-after.md
#
# Finds nvcc where build.rs does (scripts/ensure-nvcc.sh: $NVCC, $CUDA_HOME, $CUDA_PATH, PATH,
# /usr/local/cuda, then the pinned toolchain, installed if absent) and cuobjdump beside it; the work
# is scripts/sass_cost.py (Python 3, standard library only). Compiles for sm_90a only.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NVCC="$(bash "$here/ensure-nvcc.sh")"
export NVCC
exec python3 "$here/sass_cost.py" "$@"
