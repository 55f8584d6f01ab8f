#!/usr/bin/env bash
# Builds the CPU emulator of the CUDA driver (emu/, see emu/README.md) and links it into a folder
# as libcuda.so / libcublas.so, the names cudarc opens at run time. Prints that folder:
#
#   LD_LIBRARY_PATH="$(bash scripts/emu-build.sh)" cargo test --release     # every GPU test on the CPU
#   bash scripts/emu-build.sh --asan                                         # kernels with AddressSanitizer
#
# The plain build goes to target/release/libckemu.so and target/ckemu/lib; --asan builds with
# CKEMU_SANITIZE=address into target/emu-asan (its own cargo target folder, so the two never
# overwrite each other) and links target/emu-asan/lib. Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

asan=0
for arg in "$@"; do
  case "$arg" in
    --asan) asan=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "emu-build: unknown argument $arg" >&2; exit 2 ;;
  esac
done

bash scripts/ensure-nvcc.sh >/dev/null   # the CUDA headers (cuda_fp16.h) come with the toolchain

if [ "$asan" = 1 ]; then
  target="$PWD/target/emu-asan"
  CKEMU_SANITIZE=address CARGO_TARGET_DIR="$target" cargo build --release -p ckemu >&2
  lib="$target/release/libckemu.so"
  dir="$target/lib"
else
  cargo build --release -p ckemu >&2
  lib="$PWD/target/release/libckemu.so"
  dir="$PWD/target/ckemu/lib"
fi
[ -f "$lib" ] || { echo "emu-build: $lib was not built" >&2; exit 1; }
mkdir -p "$dir"
for name in libcuda.so libcuda.so.1 libcublas.so libcublas.so.13; do
  ln -sfn "$lib" "$dir/$name"
done
echo "$dir"
