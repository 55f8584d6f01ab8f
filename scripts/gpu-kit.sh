#!/usr/bin/env bash
# Builds the GPU test and bench binaries here (the GPU machine has no Rust) and gathers them in
# .gpu/ (git-ignored), to be carried to the GPU machine and run there with .gpu/gpu-run.sh.
#
#   bash scripts/gpu-kit.sh
#
# The binaries load libcuda at run time and link only libc/libm/libgcc, so they run on the GPU
# machine as they are. The folder must stay under 64 MiB (the device tool's carry limit).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
kit="$root/.gpu"
limit_mib=64

if ! command -v nvcc >/dev/null 2>&1 && [ -z "${NVCC:-}" ] && [ -z "${CUDA_HOME:-}" ] && [ -z "${CUDA_PATH:-}" ]; then
  bash scripts/install-cuda-toolchain.sh
fi

# "kind<TAB>name<TAB>path" of every executable cargo reports while building.
executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    exe = msg.get("executable")
    if msg.get("reason") == "compiler-artifact" and exe:
        kind = msg["target"]["kind"][0]
        print("%s\t%s\t%s" % (kind, msg["target"]["name"], exe))
'
}

echo "building release test binaries"
tests="$(cargo test --release --no-run --message-format=json | executables)"
echo "building release bench binaries"
benches="$(cargo bench --no-run --message-format=json | executables)"

rm -rf "$kit"
mkdir -p "$kit/tests" "$kit/benches"
copy() { # kind name path
  local dest
  case "$1" in
    bench) dest="$kit/benches/$2" ;;
    example) return ;;
    lib) dest="$kit/tests/lib" ;;
    *) dest="$kit/tests/$2" ;;
  esac
  cp "$3" "$dest"
  strip --strip-debug "$dest" 2>/dev/null || true
}
while IFS=$'\t' read -r kind name path; do [ -n "$path" ] && copy "$kind" "$name" "$path"; done <<< "$tests"
while IFS=$'\t' read -r kind name path; do [ "$kind" = bench ] && copy "$kind" "$name" "$path"; done <<< "$benches"
cp scripts/gpu-run.sh "$kit/gpu-run.sh"

{
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
  (cd "$kit" && find . -type f ! -name MANIFEST.txt -exec ls -l {} + | awk '{print $5, $9}')
} > "$kit/MANIFEST.txt"

size_kib=$(du -sk "$kit" | cut -f1)
if [ "$size_kib" -gt $((limit_mib * 1024)) ]; then
  echo "error: .gpu/ is $((size_kib / 1024)) MiB, over the ${limit_mib} MiB a device call can carry" >&2
  exit 1
fi
echo "GPU kit ready in .gpu/ ($((size_kib / 1024)) MiB):"
sed 's/^/  /' "$kit/MANIFEST.txt"
echo "on the GPU machine, from the repo root: bash .gpu/gpu-run.sh \"\$OUT\""
