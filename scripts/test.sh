#!/usr/bin/env bash
# The README's test command (CI runs it): installs the pinned CUDA toolchain when no nvcc is found,
# runs every test in release mode (the oracle is slow in debug), then checks that the benches build.
# Extra arguments go to `cargo test` (e.g. `bash scripts/test.sh similarity`).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1 && [ -z "${NVCC:-}" ] && [ -z "${CUDA_HOME:-}" ] && [ -z "${CUDA_PATH:-}" ] \
   && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  bash scripts/install-cuda-toolchain.sh
fi
cargo test --release "$@"
cargo bench --no-run
