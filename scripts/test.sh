#!/usr/bin/env bash
# The README's test command, and what CI runs:
#
#   bash scripts/test.sh                 # every test (lib, tests/*.rs, doctests, python/tests), then build the benches
#   bash scripts/test.sh similarity      # extra arguments go to `cargo test` (a filter, --test NAME, ...)
#
# Installs the pinned CUDA toolchain first when build.rs would find no nvcc (scripts/ensure-nvcc.sh).
# Release mode throughout: the f64 CPU oracle is slow in debug on the larger shapes, and
# scripts/gpu-kit.sh builds the same release artifacts. The benches (harness = false) are only
# built, not run: `cargo bench --no-run`. Without a GPU the GPU halves of the tests print why they
# skip and pass; under CI=true a build without kernels fails tests/kernels_build.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-nvcc.sh >/dev/null

echo "== cargo test --release $*"
cargo test --release "$@"
if [ "$#" -eq 0 ]; then
  # The Python module over the C ABI: loads the cdylib cargo test just built; needs no torch or GPU.
  echo "== python3 -m unittest (python/tests: the ctypes module over the C ABI)"
  cargo build --release --lib   # puts the cdylib in target/release, where the module looks
  python3 -m unittest discover -s python/tests
fi
echo "== cargo bench --no-run (the benches must build)"
cargo bench --no-run
echo "== all tests passed and the benches build"
