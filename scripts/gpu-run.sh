#!/usr/bin/env bash
# Runs the GPU kit built by scripts/gpu-kit.sh, on the GPU machine (no Rust needed), from the repo
# root, and writes a Markdown report.
#
#   bash .gpu/gpu-run.sh [OUT_DIR]        # OUT_DIR defaults to $OUT, then ./gpu-report
#
# Writes OUT_DIR/report.md (device, driver, every test's result, every bench's output), the raw
# logs as logs.tar.gz, and criterion's data as criterion.tar.gz (three files: the device tool
# returns at most eight). With the device tool: carry [".gpu"], command `bash .gpu/gpu-run.sh "$OUT"`. GPU tests run with CONTRASTIVE_KERNELS_REQUIRE_GPU=1,
# so a test that cannot reach the GPU fails instead of skipping. Exits non-zero if a test failed,
# after writing the report. Extra bench arguments: CK_BENCH_ARGS (default: short criterion runs).
set -uo pipefail
kit="$(cd "$(dirname "$0")" && pwd)"
out="${1:-${OUT:-./gpu-report}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
# The device tool returns at most 8 files from $OUT: logs and criterion's data travel as tarballs.
logs="$(mktemp -d)/logs"
mkdir -p "$logs"
report="$out/report.md"
bench_args="${CK_BENCH_ARGS:---warm-up-time 1 --measurement-time 3}"

# cuBLAS for the benches' baseline: cudarc opens libcublas.so.13 at run time; on the GPU machine it
# ships with PyTorch's nvidia wheels.
libdirs="$(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
try:
    import torch
    roots.append(os.path.dirname(torch.__file__))
except Exception:
    pass
seen = []
for root in roots:
    for pattern in ("nvidia/cu13/lib", "nvidia/cublas/lib", "nvidia/*/lib", "lib"):
        for d in glob.glob(os.path.join(root, pattern)):
            if glob.glob(os.path.join(d, "libcublas.so*")) and d not in seen:
                seen.append(d)
print(":".join(seen))
PY
)"
[ -n "$libdirs" ] && export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CONTRASTIVE_KERNELS_REQUIRE_GPU=1

gpu_name="unknown GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
  smi_list="$(nvidia-smi -L 2>&1)"
  smi_query="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
  gpu_name="$(echo "$smi_query" | head -n1 | cut -d, -f1)"
else
  smi_list="nvidia-smi not found"
  smi_query="nvidia-smi not found"
fi
echo "$smi_list"

failed_total=0
test_rows=""
test_lines=""
for bin in "$kit"/tests/*; do
  [ -x "$bin" ] || continue
  name="$(basename "$bin")"
  log="$logs/test-$name.log"
  echo "== test binary $name"
  "$bin" --test-threads=1 > "$log" 2>&1
  rc=$?
  passed=$(grep -cE '^test .* \.\.\. ok$' "$log")
  failed=$(grep -cE '^test .* \.\.\. FAILED$' "$log")
  ignored=$(grep -cE '^test .* \.\.\. ignored' "$log")
  failures=$(grep -E '^test .* \.\.\. FAILED$' "$log" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/' | paste -sd, -)
  if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; failures="binary exited $rc"; fi
  failed_total=$((failed_total + failed))
  test_rows+="| $name | $passed | $failed | $ignored | ${failures:-} |"$'\n'
  test_lines+="$(grep -E -A1 '^test |skipped|GPU present|panicked at' "$log" | grep -v '^--$')"$'\n'
  tail -n 3 "$log"
done

bench_sections=""
export CRITERION_HOME="$out/criterion"
for bin in "$kit"/benches/*; do
  [ -x "$bin" ] || continue
  name="$(basename "$bin")"
  log="$logs/bench-$name.log"
  echo "== bench $name"
  # shellcheck disable=SC2086
  "$bin" --bench $bench_args > "$log" 2>&1
  rc=$?
  bench_sections+=$'\n'"### $name (exit $rc)"$'\n\n''```'$'\n'"$(cat "$log")"$'\n''```'$'\n'
  tail -n 20 "$log"
done
if [ -d "$out/criterion" ]; then
  tar -czf "$out/criterion.tar.gz" -C "$out" criterion && rm -rf "$out/criterion"
fi
tar -czf "$out/logs.tar.gz" -C "$(dirname "$logs")" logs

{
  echo "# GPU run $(date -u +%Y-%m-%d) on ${gpu_name}"
  echo
  echo "Kit: $(head -n1 "$kit/MANIFEST.txt" 2>/dev/null || echo 'no MANIFEST.txt')"
  echo
  echo "## Device"
  echo
  echo '```'
  echo "$smi_list"
  echo "$smi_query"
  echo "LD_LIBRARY_PATH (cuBLAS): ${libdirs:-libcublas not found: the benches run without their cuBLAS baseline}"
  echo '```'
  echo
  echo "## Tests"
  echo
  echo "| binary | passed | failed | ignored | failures |"
  echo "|---|---|---|---|---|"
  printf '%s' "$test_rows"
  echo
  echo '```'
  printf '%s' "$test_lines"
  echo '```'
  echo
  echo "## Benches"
  printf '%s\n' "${bench_sections:-no bench binaries in the kit}"
} > "$report"

echo "report: $report (${failed_total} failed tests)"
[ "$failed_total" = 0 ]
