#!/usr/bin/env bash
# Builds the GPU kit HERE (the GPU machine has no Rust): release test and bench binaries, gathered
# with the script that runs them into .gpu/ (git-ignored) at the repo root.
#
#   bash scripts/gpu-kit.sh
#
#   .gpu/tests/<name>     every test binary: the lib's unit tests (contrastive_kernels) and tests/*.rs
#   .gpu/benches/<name>   every bench binary (benches/*.rs)
#   .gpu/gpu-run.sh       copy of scripts/gpu-run.sh; on the GPU machine: bash .gpu/gpu-run.sh PHASE "$OUT"
#   .gpu/MANIFEST.txt     commit, build date, toolchain, size and sha256 of every file
#   .gpu/lib/             the cdylib, for python/ and scripts/parity.py
#   .gpu/bin/             ckbench (the loss table) and the detect example (the demo on the GPU)
#   .gpu/sanitizer/       compute-sanitizer 13.0 (pinned PyPI wheel nvidia-cuda-sanitizer-api, cached
#                         like the CUDA toolchain), for gpu-run.sh's phase 2: the GPU machine has the
#                         driver and PyTorch, no CUDA toolkit. Best effort: without pip or PyPI, or
#                         with CK_KIT_SANITIZER=0, the kit has none (and phase 2's report says so)
#   .gpu/sass-cost.jsonl  the static cost model's estimates (scripts/sass_cost.py --json), for phase 4
#   .gpu/binaries.tar.xz  tests/, benches/, lib/ and bin/ packed (when xz is present; gpu-run.sh unpacks it)
#   .gpu/sanitizer.tar.xz sanitizer/ packed (about 4.5 MiB); left out if the kit would not fit
#
# With the device tool: carry [".gpu"], one call per phase: `bash .gpu/gpu-run.sh 1 "$OUT"`, then 2,
# then 3, then 4 if time is left (README, "GPU run kit").
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
    if want == "test" and ("example" in kinds or "bin" in kinds):
        name = "%s-%s" % ("example" if "example" in kinds else "bin", name)  # tests/detect.rs is "detect"
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

# compute-sanitizer from the pinned wheel, unpacked once into a cache folder, flat (the binary finds
# its injection libraries beside itself, as in the toolkit's compute-sanitizer/ folder).
SANITIZER_PIN="nvidia-cuda-sanitizer-api==13.0.85"
sanitizer_note="not included"
add_sanitizer() {
  local cache="${CONTRASTIVE_KERNELS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/contrastive-kernels}/sanitizer-13.0.85"
  if [ "${CK_KIT_SANITIZER:-1}" = 0 ]; then sanitizer_note="not included (CK_KIT_SANITIZER=0)"; return; fi
  if [ ! -f "$cache/.installed" ]; then
    echo "== fetching compute-sanitizer ($SANITIZER_PIN) into $cache"
    local tmp
    tmp="$(mktemp -d)"
    if ! python3 -m pip download --quiet --no-deps --only-binary=:all: "$SANITIZER_PIN" -d "$tmp" >&2; then
      echo "gpu-kit: warning: pip could not download $SANITIZER_PIN: the kit has no compute-sanitizer" >&2
      sanitizer_note="not included (pip download failed)"; rm -rf "$tmp"; return
    fi
    rm -rf "$cache.tmp" && mkdir -p "$cache.tmp"
    if ! python3 - "$tmp" "$cache.tmp" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
dest = sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        parts = info.filename.split("/")
        if len(parts) < 2 or parts[-2] not in ("bin", "lib") or not parts[-1]:
            continue
        name = parts[-1]
        if name != "compute-sanitizer" and not name.endswith(".so"):
            continue
        if os.path.exists(os.path.join(dest, name)):
            continue  # libsanitizer-collection.so is in both bin/ and lib/
        with z.open(info) as src, open(os.path.join(dest, name), "wb") as out:
            out.write(src.read())
os.chmod(os.path.join(dest, "compute-sanitizer"), 0o755)
PY
    then
      echo "gpu-kit: warning: unpacking $SANITIZER_PIN failed: the kit has no compute-sanitizer" >&2
      sanitizer_note="not included (unpacking the wheel failed)"; rm -rf "$tmp" "$cache.tmp"; return
    fi
    rm -rf "$tmp"
    if ! "$cache.tmp/compute-sanitizer" --version >/dev/null 2>&1; then
      echo "gpu-kit: warning: the unpacked compute-sanitizer does not run: the kit has none" >&2
      sanitizer_note="not included (compute-sanitizer --version failed)"; rm -rf "$cache.tmp"; return
    fi
    echo "$SANITIZER_PIN" > "$cache.tmp/.installed"
    rm -rf "$cache" && mv "$cache.tmp" "$cache"
  fi
  mkdir -p "$kit/sanitizer"
  cp "$cache"/compute-sanitizer "$cache"/*.so "$kit/sanitizer/"
  sanitizer_note="$SANITIZER_PIN ($("$kit/sanitizer/compute-sanitizer" --version 2>/dev/null | grep Version | head -n1 || true))"
}

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
    echo "compute-sanitizer: $sanitizer_note"
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
add_sanitizer
# The static cost model's estimates of this build's loss kernels (scripts/sass_cost.py --json), which
# phase 4 sets beside ncu's measurements (scripts/ncu_compare.py). Best effort: without it phase 4
# still profiles, and its report says the comparison is missing.
echo "== the static cost model's estimates for phase 4 (scripts/sass_cost.py --json)"
if NVCC="$nvcc" python3 scripts/sass_cost.py kernels/contrastive.cu --json --out - > "$kit/sass-cost.jsonl.tmp"; then
  mv -f "$kit/sass-cost.jsonl.tmp" "$kit/sass-cost.jsonl"
else
  echo "gpu-kit: warning: scripts/sass_cost.py failed: the kit has no sass-cost.jsonl (phase 4 profiles without the model)" >&2
  rm -f "$kit/sass-cost.jsonl.tmp"
fi
write_manifest
# Every binary embeds the same fatbins, so one xz archive with a dictionary larger than the tar
# (-9: 64 MiB) stores them about once: the kit shrinks several-fold. gpu-run.sh unpacks it.
if command -v xz >/dev/null 2>&1; then
  tar -C "$kit" -cf - tests benches lib bin | xz -9 -T1 > "$kit/binaries.tar.xz" || die "packing the binaries failed"
  if [ -d "$kit/sanitizer" ]; then
    tar -C "$kit" -cf - sanitizer | xz -9 -T1 > "$kit/sanitizer.tar.xz" || die "packing compute-sanitizer failed"
  fi
  listing_tests="$(ls "$kit/tests" | tr '\n' ' ')"
  listing_benches="$(ls "$kit/benches" | tr '\n' ' ')"
  rm -rf "$kit/tests" "$kit/benches" "$kit/lib" "$kit/bin" "$kit/sanitizer"
else
  echo "gpu-kit: warning: xz not found; the binaries are carried as plain files" >&2
fi
kit_bytes=$(count_kit_bytes)
total_bytes=$((kit_bytes + tree_bytes))
# compute-sanitizer is the first thing to go when the kit does not fit.
if [ "$total_bytes" -gt "$limit_bytes" ] && { [ -f "$kit/sanitizer.tar.xz" ] || [ -d "$kit/sanitizer" ]; }; then
  echo "gpu-kit: warning: the kit does not fit with compute-sanitizer: left out (phase 2 runs without it)" >&2
  rm -rf "$kit/sanitizer.tar.xz" "$kit/sanitizer"
  echo "compute-sanitizer: left out after all (the kit did not fit with it)" >> "$kit/MANIFEST.txt"
  kit_bytes=$(count_kit_bytes)
  total_bytes=$((kit_bytes + tree_bytes))
fi

echo
echo "GPU kit in .gpu/: $(mib "$kit_bytes") (+ $(mib "$tree_bytes") working tree = $(mib "$total_bytes") of the ${limit_mib} MiB a device call carries)"
sed 's/^/  /' "$kit/MANIFEST.txt"
if [ "$total_bytes" -gt "$limit_bytes" ]; then
  die ".gpu/ ($(mib "$kit_bytes")) plus the working tree ($(mib "$tree_bytes")) is over the ${limit_mib} MiB a device call carries; drop a binary or shrink the embedded kernels (CONTRASTIVE_KERNELS_CUDA_ARCHS)"
fi
echo
echo "tests: ${listing_tests:-$(ls "$kit/tests" | tr '\n' ' ')}"
echo "benches: ${listing_benches:-$(ls "$kit/benches" | tr '\n' ' ')}"
echo "next: three device tool runs with carry [\".gpu\"], one per phase (each fits 5 minutes):"
echo "  bash .gpu/gpu-run.sh 1 \"\$OUT\"   # tests"
echo "  bash .gpu/gpu-run.sh 2 \"\$OUT\"   # compute-sanitizer on a few GPU tests, benches at the target shapes"
echo "  bash .gpu/gpu-run.sh 3 \"\$OUT\"   # parity with PyTorch, the loss table, the detector demo"
echo "and, when device time is left: bash .gpu/gpu-run.sh 4 \"\$OUT\"   # ncu on the fused loss against the cost model"
