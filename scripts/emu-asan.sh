#!/usr/bin/env bash
# The sanitizer pass of the CPU emulator: builds the emulated kernels (and the emulator's block
# executor) with AddressSanitizer and runs every GPU test on them, so that an out-of-bounds access
# to global memory (device buffers are malloc'd with redzones), to a __shared__ variable or to
# the dynamic shared memory (each has poisoned gaps around it) stops the test with a report naming
# the kernel, block and thread. Clean means: every test passes and no AddressSanitizer report.
#
#   bash scripts/emu-asan.sh              # every test whose name contains "gpu", all test binaries (--tests)
#   bash scripts/emu-asan.sh --test topk  # extra arguments go to `cargo test` (default filter: gpu)
#
# The Rust test binaries are not instrumented; libasan is preloaded so the instrumented kernels find
# its runtime (leak checking is off: the tests' process-lifetime allocations are not leaks). It
# runs the emulator's `reverse` schedule (CKEMU_SCHEDULE; the plain pass runs `warps`), so CI sees
# two schedules. Run by scripts/test.sh when CK_EMU_ASAN=1 (CI sets it). Several minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

lib_dir="$(bash scripts/emu-build.sh --asan)"
asan_rt="$(g++ -print-file-name=libasan.so)"
[ -f "$asan_rt" ] || { echo "emu-asan: libasan.so not found (g++ -print-file-name=libasan.so gave $asan_rt)" >&2; exit 1; }

args=("$@")
# --tests: the lib's and tests/*.rs' test binaries, not the doctests (rustdoc itself does not run
# with libasan preloaded, and no doctest touches a GPU).
[ "${#args[@]}" -eq 0 ] && args=(--tests -- gpu)
# Build first without the preload: only the test binaries run with it.
cargo test --release --no-run --tests >/dev/null 2>&1 || cargo test --release --no-run --tests

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "== AddressSanitizer: cargo test --release ${args[*]} on $lib_dir"
status=0
LD_LIBRARY_PATH="$lib_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  LD_PRELOAD="$asan_rt${LD_PRELOAD:+:$LD_PRELOAD}" \
  ASAN_OPTIONS="detect_leaks=0:verify_asan_link_order=0:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
  CKEMU_SCHEDULE="${CKEMU_SCHEDULE:-reverse}" CONTRASTIVE_KERNELS_REQUIRE_GPU=1 \
  cargo test --release "${args[@]}" 2>&1 | tee "$log" || status=$?
reports=$(grep -c 'ERROR: AddressSanitizer' "$log" || true)
executed=$(grep -cE '^test [^ ]*gpu[^ ]* \.\.\. ok$' "$log" || true)
echo "emu-asan: $executed GPU tests passed under AddressSanitizer, $reports AddressSanitizer reports"
if [ "$status" -ne 0 ] || [ "$reports" -ne 0 ]; then
  echo "emu-asan: NOT clean (cargo test exit $status)" >&2
  exit 1
fi
echo "emu-asan: clean"
