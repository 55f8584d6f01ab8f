#!/usr/bin/env bash
# The README's main job: installs the pinned CUDA toolchain when no nvcc is found, then runs the
# quickstart example (GPU when one is usable, CPU oracle otherwise). Extra arguments go to the
# example, e.g. `bash scripts/demo.sh --rows 8192 --dim 512`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-nvcc.sh >/dev/null
exec cargo run --release --example quickstart -- "$@"
