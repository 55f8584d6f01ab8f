#!/usr/bin/env bash
# The README's test command, and what CI runs:
#
#   bash scripts/test.sh                 # everything below
#   bash scripts/test.sh similarity      # extra arguments go to both `cargo test` passes (a filter, --test NAME, ...)
#
# 1. `cargo test --release`: lib, tests/*.rs, doctests. Without a GPU the GPU halves of the tests
#    print why they skip and pass; under CI=true a build without kernels fails tests/kernels_build.rs.
#    Then python/tests (the ctypes module over the C ABI; needs no torch or GPU), and scripts/tests
#    (the static SASS cost model, scripts/sass_cost.py, on this toolchain's ptxas / cuobjdump output), and
#    scripts/python-test.sh: the package pip-installed into a cached venv with pinned torch (CPU),
#    its tests with torch, opcheck, torch.compile and gloo (CK_TORCH_TESTS=0 skips it).
# 2. The CPU emulator of the CUDA driver (emu/, emu/README.md): its own tests (the source rewriter,
#    the emulated instructions against the PTX ISA, unit tests of device functions), then every
#    test binary a second time with the emulator as libcuda / libcublas and
#    CONTRASTIVE_KERNELS_REQUIRE_GPU=1, so every GPU half executes the real kernels (compiled for
#    the host) or fails, the C example runs a real forward and backward, and the detector demo runs
#    its GPU backend for a few steps. Prints `emulator: N GPU tests executed` (tests whose name
#    contains "gpu" that passed in that pass) and fails when N is 0. Set CK_EMULATOR=0 to skip it.
# 3. With CK_EMU_ASAN=1 (CI sets it): scripts/emu-asan.sh, the GPU tests on kernels built with
#    AddressSanitizer; with CK_EMU_MUTANTS=1 (CI too): scripts/emu-mutants.sh, planted kernel bugs
#    that the GPU tests must catch on the emulator.
# 4. `cargo bench --no-run`: the benches must build.
# At the end: how many GPU halves the first pass skipped (the `TEST: GPU part skipped: WHY` lines
# that tests/common's report_gpu_skip prints past the output capture), and whether the emulator
# pass ran them instead.
# Installs the pinned CUDA toolchain first when build.rs would find no nvcc (scripts/ensure-nvcc.sh).
# Release mode throughout: the f64 CPU oracle is slow in debug on the larger shapes, and
# scripts/gpu-kit.sh builds the same release artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-nvcc.sh >/dev/null

log="$(mktemp)"; first_log="$(mktemp)"
trap 'rm -f "$log" "$first_log"' EXIT

echo "== cargo test --release $*"
cargo test --release "$@" 2>&1 | tee "$first_log"
skipped=$(grep -c ': GPU part skipped: ' "$first_log" || true)
if [ "$#" -eq 0 ]; then
  # The Python module over the C ABI: loads the cdylib cargo test just built; needs no torch or GPU.
  echo "== python3 -m unittest (python/tests: the ctypes module over the C ABI)"
  cargo build --release --lib   # puts the cdylib in target/release, where the module looks
  python3 -m unittest discover -s python/tests
  # A few seconds: compiles one small kernel; CK_REQUIRE_NVCC=1 turns a missing toolchain into a failure.
  echo "== python3 -m unittest (scripts/tests: the static SASS cost model)"
  NVCC="$(bash scripts/ensure-nvcc.sh)" CK_REQUIRE_NVCC=1 python3 -m unittest discover -s scripts/tests
  if [ "${CK_TORCH_TESTS:-1}" != 0 ]; then
    # The package pip-installed into a cached venv with pinned torch: ops, opcheck, torch.compile,
    # modules, search and the gloo tests (scripts/python-test.sh). CK_TORCH_TESTS=0 skips it.
    echo "== the Python package with PyTorch (scripts/python-test.sh)"
    bash scripts/python-test.sh
  fi
fi

if [ "${CK_EMULATOR:-1}" != 0 ]; then
  echo "== the CPU emulator: build, then its own tests (cargo test --release -p ckemu)"
  emu_lib="$(bash scripts/emu-build.sh)"
  cargo test --release -p ckemu
  echo "== cargo test --release $* on the CPU emulator ($emu_lib as libcuda / libcublas, CONTRASTIVE_KERNELS_REQUIRE_GPU=1)"
  LD_LIBRARY_PATH="$emu_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" CONTRASTIVE_KERNELS_REQUIRE_GPU=1 \
    cargo test --release "$@" 2>&1 | tee "$log"
  executed=$(grep -cE '^test [^ ]*gpu[^ ]* \.\.\. ok$' "$log" || true)
  echo "emulator: $executed GPU tests executed"
  if [ "$#" -eq 0 ]; then
    if [ "$executed" -eq 0 ]; then
      echo "test.sh: no GPU test executed on the emulator" >&2
      exit 1
    fi
    echo "== the detector demo on its GPU backend (the emulator), 5 steps on class 0"
    demo="$(LD_LIBRARY_PATH="$emu_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
      cargo run --release --example detect -- --data digits --classes 0 --steps 5 2>&1)"
    echo "$demo" | tail -n 8
    if ! grep -q "^backend: GPU: CPU emulator" <<<"$demo"; then
      echo "test.sh: the demo did not run on its GPU backend (the emulator):" >&2
      echo "$demo" | head -n 5 >&2
      exit 1
    fi
  fi
fi

if [ "${CK_EMU_ASAN:-0}" = 1 ] && [ "$#" -eq 0 ]; then
  echo "== the GPU tests on the emulator with AddressSanitizer (scripts/emu-asan.sh)"
  bash scripts/emu-asan.sh
fi
if [ "${CK_EMU_MUTANTS:-0}" = 1 ] && [ "$#" -eq 0 ]; then
  echo "== planted kernel bugs the emulated GPU tests must catch (scripts/emu-mutants.sh)"
  bash scripts/emu-mutants.sh
fi

echo "== cargo bench --no-run (the benches must build)"
cargo bench --no-run
if [ "${CK_EMULATOR:-1}" = 0 ]; then
  if [ "$skipped" -gt 0 ]; then echo "GPU halves skipped (no GPU, no emulator): $skipped"; else echo "GPU halves skipped: 0"; fi
elif [ "$skipped" -gt 0 ]; then
  echo "GPU halves skipped in the first pass (no GPU; the emulator pass executed them, $executed GPU tests): $skipped"
else
  echo "GPU halves skipped in the first pass: 0; the emulator pass executed $executed GPU tests"
fi
echo "== all tests passed and the benches build"
