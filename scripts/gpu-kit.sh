#!/usr/bin/env bash
# Builds the GPU kit HERE (the GPU machine has no Rust): release test and bench binaries, gathered
# with the script that runs them into .gpu/ (git-ignored) at the repo root.
#
#   bash scripts/gpu-kit.sh
#
#   .gpu/tests/<name>     every test binary: the lib's unit tests (contrastive_kernels) and tests/*.rs
#   .gpu/benches/<name>   every bench binary (benches/*.rs)
#   .gpu/gpu-run.sh       copy of scripts/gpu-run.sh; on the GPU machine: bash .gpu/gpu-run.sh "$OUT"
#   .gpu/MANIFEST.txt     commit, build date, toolchain, size and sha256 of every file
#   .gpu/lib/             the cdylib, for python/ and scripts/parity.py
#   .gpu/bin/             ckbench (the loss table) and the detect example (the demo on the GPU)
#   .gpu/binaries.tar.xz  tests/, benches/ and lib/ packed (when xz is present; gpu-run.sh unpacks it)
#
# With the device tool: run with carry [".gpu"] and the command `bash .gpu/gpu-run.sh "$OUT"`.
# The binaries load libcuda at run time and link only libc/libm/libgcc, so they run there as they
# are. They are stripped; the kit plus the working tree must stay under the 64 MiB a device call
# carries, and the script fails if it does not. It also fails if the build embedded no kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
kit="$root/.gpu"
limit_mib=64

die() { echo "gpu-kit: error: $*" >&2; exit 1; }
command -v python3 >/dev/null 2>&1 || die "python3 is needed to read cargo's JSON messages"
command -v cargo >/dev/null 2>&1 || die "cargo not found: the kit is built on a machine with Rust"

nvcc="$(bash scripts/ensure-nvcc.sh)"

# Reads cargo's JSON messages on stdin; prints "name<TAB>path" for every executable of the wanted
# kind ("test": test-profile binaries of lib and tests/*.rs; "bench": bench targets), and fails if
# this crate's build script ran without nvcc (its generated kernels.rs says COMPILED: bool = false).
select_executables() {
  python3 -c '
import json, os, re, sys
want = sys.argv[1]
rows, no_kernels = [], []
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    reason = msg.get("reason")
    if reason == "build-script-executed" and "contrastive" in msg.get("package_id", ""):
        generated = os.path.join(msg.get("out_dir", ""), "kernels.rs")
        try:
            text = open(generated).read()
        except OSError:
            continue
        if "COMPILED: bool = false" in text:
            no_kernels.append(generated)
    if reason != "compiler-artifact" or not msg.get("executable"):
        continue
    kinds = msg["target"]["kind"]
    if want == "test" and not msg["profile"]["test"]:
        continue          # examples and bins that cargo test only builds
    if want == "bench" and "bench" not in kinds:
        continue          # the lib unit-test binary that cargo bench also builds
    exe = msg["executable"]
    name = re.sub(r"-[0-9a-f]{16}$", "", os.path.basename(exe))
    rows.append((name, exe))
if no_kernels:
    sys.exit("gpu-kit: error: the crate was built without CUDA kernels (%s says COMPILED = false); "
             "check that nvcc works: bash scripts/install-cuda-toolchain.sh" % no_kernels[0])
for name, exe in sorted(set(rows)):
    print("%s\t%s" % (name, exe))
' "$1"
}

# json-render-diagnostics: compiler errors still reach the terminal as text, on stderr.
echo "== building release test binaries (cargo test --release --no-run)"
tests="$(cargo test --release --no-run --message-format=json-render-diagnostics | select_executables test)" \
  || die "cargo test --release --no-run failed (see above)"
echo "== building bench binaries (cargo bench --no-run)"
benches="$(cargo bench --no-run --message-format=json-render-diagnostics | select_executables bench)" \
  || die "cargo bench --no-run failed (see above)"
[ -n "$tests" ] || die "cargo built no test binaries"

# Debug info goes; symbols stay (readable backtraces) unless the kit would not fit without them.
if command -v strip >/dev/null 2>&1; then
  strip_cmd=(strip --strip-debug)
elif command -v objcopy >/dev/null 2>&1; then
  strip_cmd=(objcopy --strip-debug)
else
  strip_cmd=()
  echo "gpu-kit: warning: neither strip nor objcopy found; binaries are copied unstripped" >&2
fi

rm -rf "$kit"
mkdir -p "$kit/tests" "$kit/benches"
copy_all() { # folder, "name<TAB>path" lines
  local folder="$1" name path
  while IFS=$'\t' read -r name path; do
    [ -n "$path" ] || continue
    [ ! -e "$kit/$folder/$name" ] || die "two $folder binaries are both named '$name'"
    cp "$path" "$kit/$folder/$name"
    if [ "${#strip_cmd[@]}" -gt 0 ]; then "${strip_cmd[@]}" "$kit/$folder/$name"; fi
    chmod 755 "$kit/$folder/$name"
  done <<< "$2"
}
copy_all tests "$tests"
copy_all benches "$benches"
# The cdylib, for the Python module and scripts/parity.py (cargo test built it with the lib).
cargo build --release --lib --quiet || die "cargo build --release --lib failed"
mkdir -p "$kit/lib" "$kit/bin"
cp target/release/libcontrastive_kernels.so "$kit/lib/"
# The CLIs: the loss table and the detector demo.
cargo build --release --bin ckbench --example detect --quiet || die "building ckbench and the detect example failed"
cp target/release/ckbench target/release/examples/detect "$kit/bin/"
for f in "$kit/lib/libcontrastive_kernels.so" "$kit/bin/ckbench" "$kit/bin/detect"; do
  if [ "${#strip_cmd[@]}" -gt 0 ]; then "${strip_cmd[@]}" "$f"; fi
done
cp scripts/gpu-run.sh "$kit/gpu-run.sh"
chmod 755 "$kit/gpu-run.sh"

write_manifest() {
  commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
  if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit="$commit (with uncommitted changes)"
  fi
  {
    echo "commit: $commit"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -sm)"
    echo "nvcc: $nvcc ($("$nvcc" --version 2>/dev/null | grep -m1 release | sed 's/^ *//'))"
    echo "archs: ${CONTRASTIVE_KERNELS_CUDA_ARCHS:-default (build.rs)}"
    echo "rustc: $(rustc --version 2>/dev/null || echo unknown)"
    echo
    echo "bytes sha256 file"
    (cd "$kit" && find . -type f ! -name MANIFEST.txt | LC_ALL=C sort | while read -r f; do
       printf '%s %s %s\n' "$(wc -c < "$f" | tr -d ' ')" "$(sha256sum "$f" | cut -c1-16)" "${f#./}"
     done)
  } > "$kit/MANIFEST.txt"
}

# What a device call carries: the working tree (tracked + untracked, not ignored) plus the kit.
tree_bytes=$(git ls-files -z --cached --others --exclude-standard 2>/dev/null \
  | xargs -0 -r cat 2>/dev/null | wc -c)
count_kit_bytes() { find "$kit" -type f -exec cat {} + | wc -c; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
limit_bytes=$((limit_mib * 1048576))
if [ $(( $(count_kit_bytes) + tree_bytes )) -gt "$limit_bytes" ] && command -v strip >/dev/null 2>&1; then
  echo "gpu-kit: $(mib "$(count_kit_bytes)") is too much to carry; stripping the symbol tables too" >&2
  strip --strip-unneeded "$kit"/tests/* "$kit"/benches/* 2>/dev/null || true
fi
write_manifest
# Every binary embeds the same fatbins, so one xz archive with a dictionary larger than the tar
# (-9: 64 MiB) stores them about once: the kit shrinks several-fold. gpu-run.sh unpacks it.
if command -v xz >/dev/null 2>&1; then
  tar -C "$kit" -cf - tests benches lib bin | xz -9 -T1 > "$kit/binaries.tar.xz" || die "packing the binaries failed"
  listing_tests="$(ls "$kit/tests" | tr '\n' ' ')"
  listing_benches="$(ls "$kit/benches" | tr '\n' ' ')"
  rm -rf "$kit/tests" "$kit/benches" "$kit/lib" "$kit/bin"
else
  echo "gpu-kit: warning: xz not found; the binaries are carried as plain files" >&2
fi
kit_bytes=$(count_kit_bytes)
total_bytes=$((kit_bytes + tree_bytes))

echo
echo "GPU kit in .gpu/: $(mib "$kit_bytes") (+ $(mib "$tree_bytes") working tree = $(mib "$total_bytes") of the ${limit_mib} MiB a device call carries)"
sed 's/^/  /' "$kit/MANIFEST.txt"
if [ "$total_bytes" -gt "$limit_bytes" ]; then
  die ".gpu/ ($(mib "$kit_bytes")) plus the working tree ($(mib "$tree_bytes")) is over the ${limit_mib} MiB a device call carries; drop a binary or shrink the embedded kernels (CONTRASTIVE_KERNELS_CUDA_ARCHS)"
fi
echo
echo "tests: ${listing_tests:-$(ls "$kit/tests" | tr '\n' ' ')}"
echo "benches: ${listing_benches:-$(ls "$kit/benches" | tr '\n' ' ')}"
echo "next: device tool run with carry [\".gpu\"] and command: bash .gpu/gpu-run.sh \"\$OUT\""
