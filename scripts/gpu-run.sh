#!/usr/bin/env bash
# Runs the GPU kit built by scripts/gpu-kit.sh ON THE GPU MACHINE (no Rust needed: bash, coreutils,
# and python3 if present), from the repo root, and writes a Markdown report.
#
#   bash .gpu/gpu-run.sh [OUT_DIR]        # OUT_DIR: first argument, else $OUT, else ./gpu-report
#
# With the device tool: carry [".gpu"], command `bash .gpu/gpu-run.sh "$OUT"`.
# Steps: nvidia-smi (GPUs, driver); cuBLAS 13 for the benches' baseline, looked up in python3's
# site-packages (nvidia/cu13/lib, nvidia/cublas/lib) and torch's lib folder, put on LD_LIBRARY_PATH;
# every .gpu/tests/* binary with --test-threads=1; every .gpu/benches/* binary with --bench and
# CRITERION_HOME=OUT_DIR/criterion. Writes to OUT_DIR (the device tool returns at most 8 files, 2
# folders deep):
#   report.md          device, driver, per-binary pass/fail/ignore table, failures, every test line,
#                      GPU skips, each bench's output (rewritten after every binary, so a run cut
#                      short still leaves a report saying where it stopped)
#   logs.tar.gz        the full output of every binary (logs/ while the run is in progress)
#   criterion.tar.gz   criterion's data (its folders nest too deep to come back as they are)
# When a GPU is visible (nvidia-smi or /dev/nvidia0), CONTRASTIVE_KERNELS_REQUIRE_GPU=1 makes a test
# that cannot reach it fail instead of skipping; without one (a dry run) the GPU halves skip and the
# report says so. An explicit CONTRASTIVE_KERNELS_REQUIRE_GPU wins.
# Settings: CK_TEST_TIMEOUT, CK_BENCH_TIMEOUT (seconds per binary, default 240 each);
# CK_BENCH_ARGS (criterion arguments, default "--warm-up-time 1 --measurement-time 3"; set it
# empty for criterion's defaults); CK_LOSSES_FILTER (criterion filter of the losses bench, default
# "n8192_d128"; empty for the full grid).
# Exit status: 0 if every test passed and every bench exited 0, 1 otherwise, 2 if there is no kit;
# always after writing the report.
set -uo pipefail   # no -e: every step runs and lands in the report

script_dir="$(cd "$(dirname "$0")" && pwd)"
if [ -d "$script_dir/tests" ] || [ -f "$script_dir/MANIFEST.txt" ]; then
  kit="$script_dir"                   # run as .gpu/gpu-run.sh
elif [ -d ./.gpu ]; then
  kit="$(cd ./.gpu && pwd)"           # run as scripts/gpu-run.sh from the repo root
else
  kit="$script_dir"
fi

# gpu-kit.sh packs the binaries into one xz archive: unpack it beside itself, or in a temporary
# folder when the kit's folder is read-only.
if [ -f "$kit/binaries.tar.xz" ] && [ ! -d "$kit/tests" ]; then
  if ! tar -xJf "$kit/binaries.tar.xz" -C "$kit" 2>/dev/null; then
    unpacked="$(mktemp -d)"
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' \
      "$kit/binaries.tar.xz" "$unpacked" || { echo "gpu-run: cannot unpack $kit/binaries.tar.xz" >&2; exit 2; }
    cp "$kit/MANIFEST.txt" "$unpacked/" 2>/dev/null || true
    kit="$unpacked"
  fi
fi

out="${1:-${OUT:-./gpu-report}}"
if ! mkdir -p "$out"; then echo "gpu-run: cannot create the output folder $out" >&2; exit 2; fi
out="$(cd "$out" && pwd)"
logs="$out/logs"
rm -rf "$logs" "$out/criterion" "$out/logs.tar.gz" "$out/criterion.tar.gz"
mkdir -p "$logs"
report="$out/report.md"
test_timeout="${CK_TEST_TIMEOUT:-240}"
bench_timeout="${CK_BENCH_TIMEOUT:-240}"
bench_args="${CK_BENCH_ARGS---warm-up-time 1 --measurement-time 3}"
started="$(date -u +'%Y-%m-%d %H:%M:%S UTC')"

say() { echo "gpu-run: $*"; }

# timeout(1) when present: a hung kernel must not eat the whole device call.
run_limited() { # seconds, command...
  local secs="$1"; shift
  if command -v timeout >/dev/null 2>&1; then
    timeout -k 10 "$secs" "$@"
  else
    "$@"
  fi
}

exit_note() { # exit status -> words
  case "$1" in
    0) echo "exit 0" ;;
    124|137) echo "timed out (exit $1)" ;;
    *) if [ "$1" -gt 128 ] 2>/dev/null; then
         echo "killed by signal $(( $1 - 128 ))$(kill -l $(( $1 - 128 )) 2>/dev/null | sed 's/^/ SIG/')"
       else
         echo "exit $1"
       fi ;;
  esac
}

# --- device --------------------------------------------------------------------------------------
gpu_present=0
gpu_name="no GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
  gpu_present=1
  smi_list="$(nvidia-smi -L 2>&1)"
  smi_query="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
  smi_rc=$?
  cuda_line="$(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: *[0-9.]*' | head -n1)"
  if [ "$smi_rc" = 0 ] && [ -n "$smi_query" ]; then
    gpu_name="$(printf '%s\n' "$smi_query" | head -n1 | cut -d, -f1 | sed 's/^ *//; s/ *$//')"
  else
    gpu_name="unknown GPU (nvidia-smi failed)"
  fi
else
  smi_list="nvidia-smi not found: no NVIDIA driver tools on this machine"
  smi_query="(no nvidia-smi)"
  cuda_line=""
  if [ -e /dev/nvidia0 ]; then gpu_present=1; gpu_name="GPU at /dev/nvidia0 (no nvidia-smi)"; fi
fi
say "GPUs:"
printf '%s\n%s\n' "$smi_list" "$smi_query" | sed 's/^/  /'

if [ -n "${CONTRASTIVE_KERNELS_REQUIRE_GPU+set}" ]; then
  gpu_mode="CONTRASTIVE_KERNELS_REQUIRE_GPU=$CONTRASTIVE_KERNELS_REQUIRE_GPU (set by the caller)"
elif [ "$gpu_present" = 1 ]; then
  export CONTRASTIVE_KERNELS_REQUIRE_GPU=1
  gpu_mode="CONTRASTIVE_KERNELS_REQUIRE_GPU=1: a GPU test that cannot reach the GPU fails"
else
  gpu_mode="no GPU found: GPU halves of the tests skip (this run validates no kernel on a GPU)"
fi
say "$gpu_mode"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"   # failures in the report come with a backtrace

# --- cuBLAS 13 for the benches' baseline (cudarc opens it at run time) ------------------------------
lib_report="python3 not found: cuBLAS was not looked for"
libdirs=""
if command -v python3 >/dev/null 2>&1; then
  lib_lookup="$(python3 - <<'PY' 2>&1
import glob, importlib.util, os, site
roots = []
try:
    roots += site.getsitepackages()
except Exception:
    pass
try:
    roots.append(site.getusersitepackages())
except Exception:
    pass
dirs = []
for root in roots:
    dirs += [os.path.join(root, "nvidia", "cu13", "lib"), os.path.join(root, "nvidia", "cublas", "lib"),
             os.path.join(root, "nvidia", "cuda_nvrtc", "lib"), os.path.join(root, "torch", "lib")]
try:
    spec = importlib.util.find_spec("torch")
    if spec and spec.origin:
        torch_dir = os.path.dirname(spec.origin)
        dirs.append(os.path.join(torch_dir, "lib"))
        dirs.append(os.path.join(os.path.dirname(torch_dir), "nvidia", "cu13", "lib"))
except Exception:
    pass
wanted = ("libcublas.so.13", "libcublasLt.so.13", "libnvrtc.so.13")
seen, found = [], {}
for d in dirs:
    d = os.path.realpath(d)
    if d in seen or not os.path.isdir(d):
        continue
    seen.append(d)
    libs = [w for w in wanted if glob.glob(os.path.join(d, w + "*"))]
    if libs:
        print("DIR\t%s\t%s" % (d, " ".join(libs)))
        for w in libs:
            found.setdefault(w, d)
for w in wanted:
    if w not in found:
        print("MISSING\t%s" % w)
PY
)"
  libdirs="$(printf '%s\n' "$lib_lookup" | awk -F'\t' '$1 == "DIR" { printf "%s%s", sep, $2; sep = ":" }')"
  lib_report="$(printf '%s\n' "$lib_lookup" | awk -F'\t' '
    $1 == "DIR"     { print "found " $3 " in " $2; next }
    $1 == "MISSING" { print "not found in site-packages: " $2; next }
                    { print "lookup: " $0 }')"
  if printf '%s\n' "$lib_lookup" | grep -q '^MISSING	libcublas.so.13$' \
     && command -v ldconfig >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.13 '; then
    lib_report="$lib_report"$'\n'"libcublas.so.13 is in the system's ldconfig cache"
  fi
fi
if [ -n "$libdirs" ]; then
  export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
printf '%s\n' "$lib_report" | sed 's/^/gpu-run: /'

# --- report --------------------------------------------------------------------------------------
test_rows=""        # Markdown table rows
test_lines=""       # every "test NAME ... RESULT" line, prefixed with its binary
skip_lines=""       # lines saying a GPU part was skipped
failure_blocks=""   # libtest's failures sections, or a crash's last lines
bench_sections=""
parity_section="Not run (it needs a GPU, PyTorch, scripts/parity.py and lib/ in the kit)."
table_section="Not run (it needs a GPU and bin/ckbench in the kit)."
demo_section="Not run (it needs a GPU and bin/detect in the kit)."
tests_failed=0
binaries_failed=0
benches_failed=0
n_tests=0
n_benches=0
status="running"

fence() { # title, text: a Markdown section with the text in a fenced block
  printf '\n### %s\n\n````\n%s\n````\n' "$1" "$2"
}

write_report() {
  {
    echo "# GPU run $(date -u +%Y-%m-%d) on ${gpu_name}"
    echo
    echo "Status: **${status}**. Started ${started}, report written $(date -u +'%H:%M:%S UTC')."
    echo
    echo "## Device"
    echo
    echo '````'
    printf '%s\n' "$smi_list"
    echo "name, driver_version, memory.total: $smi_query"
    [ -n "$cuda_line" ] && echo "driver's $cuda_line"
    echo "host: $(uname -srm)"
    echo "GPU mode: $gpu_mode"
    echo "LD_LIBRARY_PATH: ${LD_LIBRARY_PATH:-(unset)}"
    printf '%s\n' "$lib_report"
    echo '````'
    echo
    echo "## Kit"
    echo
    echo '````'
    if [ -f "$kit/MANIFEST.txt" ]; then cat "$kit/MANIFEST.txt"; else echo "no MANIFEST.txt in $kit"; fi
    echo '````'
    echo
    echo "## Tests"
    echo
    if [ "$n_tests" = 0 ]; then
      echo "No test binaries ran (none in $kit/tests: build the kit with scripts/gpu-kit.sh)."
    else
      echo "| binary | passed | failed | ignored | outcome | failures |"
      echo "|---|---:|---:|---:|---|---|"
      printf '%s' "$test_rows"
      echo
      echo "$tests_failed failed test(s) in $binaries_failed of $n_tests binaries."
    fi
    if [ -n "$failure_blocks" ]; then
      echo
      echo "## Failures"
      printf '%s\n' "$failure_blocks"
    fi
    if [ -n "$skip_lines" ]; then
      echo
      echo "## GPU parts skipped"
      echo
      echo '````'
      printf '%s' "$skip_lines"
      echo '````'
    fi
    if [ -n "$test_lines" ]; then
      echo
      echo "## Every test"
      echo
      echo '````'
      printf '%s' "$test_lines"
      echo '````'
    fi
    echo
    echo "## Benches"
    echo
    if [ "$n_benches" = 0 ]; then
      echo "No bench binaries ran (none in $kit/benches)."
    else
      if [ -f "$out/criterion.tar.gz" ] || [ -d "$out/criterion" ]; then
        criterion_note="criterion's data in criterion.tar.gz"
      else
        criterion_note="no criterion data (no bench measured anything)"
      fi
      echo "Arguments: \`--bench ${bench_args}\`; ${criterion_note}; $benches_failed of $n_benches failed."
      printf '%s\n' "$bench_sections"
    fi
    echo
    echo "## Parity with PyTorch references (parity.json)"
    echo
    printf '%s\n' "$parity_section"
    echo
    echo "## Loss table: fused, unfused, PyTorch (ckbench.json, torch.tsv)"
    echo
    printf '%s\n' "$table_section"
    echo
    echo "## Detector demo on the GPU"
    echo
    printf '%s\n' "$demo_section"
  } > "$report.tmp" && mv "$report.tmp" "$report"
}
write_report

if [ ! -d "$kit/tests" ] && [ ! -d "$kit/benches" ]; then
  status="no kit: $kit has no tests/ or benches/ (build it with scripts/gpu-kit.sh and carry .gpu)"
  write_report
  say "$status"
  exit 2
fi

# --- tests ---------------------------------------------------------------------------------------
for bin in "$kit"/tests/*; do
  [ -f "$bin" ] || continue
  [ -x "$bin" ] || chmod +x "$bin" 2>/dev/null
  name="$(basename "$bin")"
  log="$logs/test-$name.log"
  n_tests=$((n_tests + 1))
  status="running test binary $name"
  write_report
  say "test binary $name"
  t0=$(date +%s)
  run_limited "$test_timeout" "$bin" --test-threads=1 --show-output > "$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - t0 ))

  summary="$(grep -E '^test result: ' "$log" | tail -n1)"
  if [ -n "$summary" ]; then
    passed="$(printf '%s' "$summary" | sed -nE 's/.* ([0-9]+) passed.*/\1/p')"
    failed="$(printf '%s' "$summary" | sed -nE 's/.* ([0-9]+) failed.*/\1/p')"
    ignored="$(printf '%s' "$summary" | sed -nE 's/.* ([0-9]+) ignored.*/\1/p')"
  else
    passed="$(grep -cE '^test .* \.\.\. ok$' "$log")"
    failed="$(grep -cE '^test .* \.\.\. FAILED$' "$log")"
    ignored="$(grep -cE '^test .* \.\.\. ignored' "$log")"
  fi
  passed="${passed:-0}"; failed="${failed:-0}"; ignored="${ignored:-0}"
  failures="$(grep -E '^test .* \.\.\. FAILED$' "$log" | sed -E 's/^test (.*) \.\.\. FAILED$/`\1`/' | paste -sd, - | sed 's/,/, /g')"
  outcome="$(exit_note "$rc"), ${secs} s"
  if [ "$rc" != 0 ]; then
    binaries_failed=$((binaries_failed + 1))
    if [ "$failed" = 0 ]; then
      # Crashed, timed out or failed outside a test: blame the test left running, if any.
      running="$(grep -aE '^test [^ ]+ \.\.\. ' "$log" | grep -avE '^test [^ ]+ \.\.\. (ok|FAILED|ignored)' \
                 | tail -n1 | sed -E 's/^test ([^ ]+) \.\.\. .*$/\1/')"
      failed=1
      failures="${running:+while running \`$running\`}"
      failure_blocks+="$(fence "$name: $(exit_note "$rc")" "$(tail -n 60 "$log")")"$'\n'
    fi
  fi
  if grep -qx 'failures:' "$log"; then
    block="$(awk '/^failures:$/ { on = 1 } /^test result: / { on = 0 } on' "$log")"
    if [ "$(printf '%s\n' "$block" | wc -l)" -gt 200 ]; then
      block="$(printf '%s\n' "$block" | head -n 200)"$'\n'"... (cut at 200 lines; the rest is in logs.tar.gz: logs/test-$name.log)"
    fi
    failure_blocks+="$(fence "$name" "$block")"$'\n'
  fi
  tests_failed=$((tests_failed + failed))
  test_rows+="| $name | $passed | $failed | $ignored | $outcome | ${failures} |"$'\n'
  lines="$(grep -aE '^test .* \.\.\. ' "$log" | sed "s|^|$name: |")"
  [ -n "$lines" ] && test_lines+="$lines"$'\n'
  skips="$(grep -aiE 'skipped' "$log" | grep -avE '^test ' | sed "s|^|$name: |" | head -n 50)"
  [ -n "$skips" ] && skip_lines+="$skips"$'\n'
  say "  $passed passed, $failed failed, $ignored ignored ($outcome)"
done

# --- benches -------------------------------------------------------------------------------------
export CRITERION_HOME="$out/criterion"
for bin in "$kit"/benches/*; do
  [ -f "$bin" ] || continue
  [ -x "$bin" ] || chmod +x "$bin" 2>/dev/null
  name="$(basename "$bin")"
  log="$logs/bench-$name.log"
  n_benches=$((n_benches + 1))
  status="running bench $name"
  write_report
  say "bench $name"
  t0=$(date +%s)
  # The losses bench's full grid is 192 criterion functions: by default only issue 3's target
  # shape runs under criterion (its summary table still covers every shape).
  filter=""
  if [ "$name" = losses ]; then filter="${CK_LOSSES_FILTER-n8192_d128}"; fi
  # shellcheck disable=SC2086  # CK_BENCH_ARGS is a list of words
  run_limited "$bench_timeout" "$bin" --bench $bench_args $filter > "$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  [ "$rc" = 0 ] || benches_failed=$((benches_failed + 1))
  text="$(cat "$log")"
  if [ "$(printf '%s\n' "$text" | wc -l)" -gt 400 ]; then
    text="$(printf '%s\n' "$text" | head -n 400)"$'\n'"... (cut at 400 lines; the rest is in logs.tar.gz: logs/bench-$name.log)"
  fi
  bench_sections+="$(fence "$name ($(exit_note "$rc"), ${secs} s)" "$text")"$'\n'
  tail -n 30 "$log" | sed 's/^/  /'
done

# --- PyTorch parity: scripts/parity.py through the kit's cdylib ---------------------------------
parity_failed=0
if [ "$gpu_present" = 1 ] && [ -f "$kit/lib/libcontrastive_kernels.so" ] && [ -f scripts/parity.py ]; then
  if python3 -c "import torch" >/dev/null 2>&1; then
    say "parity (PyTorch references)"
    status="running scripts/parity.py"
    write_report
    run_limited "$bench_timeout" python3 scripts/parity.py --lib "$kit/lib/libcontrastive_kernels.so" \
      --out "$out/parity.json" > "$logs/parity.log" 2>&1
    prc=$?
    [ "$prc" = 0 ] || parity_failed=1
    parity_section="$(fence "scripts/parity.py ($(exit_note "$prc"))" "$(cat "$logs/parity.log")")"
    tail -n 5 "$logs/parity.log" | sed 's/^/  /'
  else
    parity_section="PyTorch is not installed here: parity not run."
  fi
fi

# --- ckbench: the loss table (fused, unfused, PyTorch eager and torch.compile on the same shapes) --
table_failed=0
if [ "$gpu_present" = 1 ] && [ -f "$kit/bin/ckbench" ]; then
  chmod +x "$kit/bin/ckbench" 2>/dev/null
  torch_arg=()
  if python3 -c "import torch" >/dev/null 2>&1 && [ -f scripts/torch_bench.py ]; then
    say "PyTorch timings (scripts/torch_bench.py)"
    status="running scripts/torch_bench.py"
    write_report
    if run_limited "$bench_timeout" python3 scripts/torch_bench.py --out "$out/torch.tsv" > "$logs/torch_bench.log" 2>&1; then
      torch_arg=(--torch "$out/torch.tsv")
    fi
  fi
  say "ckbench"
  status="running ckbench"
  write_report
  run_limited "$bench_timeout" "$kit/bin/ckbench" "${torch_arg[@]}" --json "$out/ckbench.json" > "$logs/ckbench.log" 2>&1
  crc=$?
  [ "$crc" = 0 ] || table_failed=1
  table_section="$(fence "ckbench ${torch_arg[*]} ($(exit_note "$crc"))" "$(cat "$logs/ckbench.log")")"
  tail -n 12 "$logs/ckbench.log" | sed 's/^/  /'
fi

# --- the detector demo (the README's main job) on the GPU backend --------------------------------
demo_failed=0
if [ "$gpu_present" = 1 ] && [ -f "$kit/bin/detect" ]; then
  chmod +x "$kit/bin/detect" 2>/dev/null
  say "detector demo (digits, SupCon, the default)"
  status="running the detector demo"
  write_report
  run_limited "$bench_timeout" "$kit/bin/detect" --data digits > "$logs/detect.log" 2> "$logs/detect.err"
  drc=$?
  [ "$drc" = 0 ] || demo_failed=1
  demo_section="$(fence "detect --data digits ($(exit_note "$drc"))" "$(cat "$logs/detect.log"; tail -n 5 "$logs/detect.err" | tr '\r' '\n' | tail -n 5)")"
fi

# --- pack ----------------------------------------------------------------------------------------
if [ -d "$out/criterion" ]; then
  tar -czf "$out/criterion.tar.gz" -C "$out" criterion && rm -rf "$out/criterion"
fi
tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$logs"

if [ "$tests_failed" = 0 ] && [ "$benches_failed" = 0 ] && [ "$parity_failed" = 0 ] && [ "$table_failed" = 0 ] && [ "$demo_failed" = 0 ]; then
  status="complete: every test passed"
  [ "$n_benches" = 0 ] || status="$status, every bench ran"
  rc=0
else
  status="complete: $tests_failed failed test(s), $benches_failed failed bench(es)"
  [ "$parity_failed" = 0 ] || status="$status, parity FAILED"
  [ "$table_failed" = 0 ] || status="$status, ckbench FAILED"
  [ "$demo_failed" = 0 ] || status="$status, detector demo FAILED"
  rc=1
fi
if [ "$gpu_present" = 0 ]; then status="$status (dry run: no GPU)"; fi
write_report
say "$status"
say "report: $report"
exit "$rc"
