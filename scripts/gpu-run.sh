#!/usr/bin/env bash
# Runs the GPU kit built by scripts/gpu-kit.sh ON THE GPU MACHINE (no Rust needed: bash, coreutils,
# and python3 if present), from the repo root, in PHASES that each fit one short device call, and
# writes a Markdown report per phase.
#
#   bash .gpu/gpu-run.sh PHASE [OUT_DIR]   # PHASE: 1, 2, 3 or all; OUT_DIR: else $OUT, else ./gpu-report
#   bash .gpu/gpu-run.sh [OUT_DIR]         # no phase (an argument that is not one is OUT_DIR): all
#
#   1    every .gpu/tests/* binary with --test-threads=1                      budget 290 s
#   2    compute-sanitizer memcheck, then racecheck, on a few GPU tests per kernel family; then the
#        benches: similarity and losses at N = 8192, D = 128, top-k at its target shape (nb = 1M,
#        d = 512, k = 50 and 1000), then any other bench (train_step) while time is left  budget 290 s
#   3    scripts/parity.py, python/tests/test_cuda.py (the package's CUDA tensors), scripts/torch_bench.py,
#        ckbench (the loss table), the detector demo
#                                                                             budget 290 s
#   4    (optional, when device time is left) Nsight Compute on ckbench's NT-Xent forward + backward,
#        bf16, N = 8192, once per D (128, 512), the fused loss kernels only; scripts/ncu_compare.py
#        sets its measurements beside the static cost model's (the kit's sass-cost.jsonl)
#                                                                             budget 290 s
#   all  1, 2 and 3 in turn, each with its own budget (about 15 minutes: more than one device call)
#
# With the device tool: carry [".gpu"], one call per phase: `bash .gpu/gpu-run.sh 1 "$OUT"`, then
# 2, then 3. Every step runs under a time limit: its cap, cut to what is left before the phase's
# deadline (CK_PHASE_BUDGET seconds after the phase started; the first phase counts from the
# script's start, unpacking included). A step with under CK_MIN_STEP (10) seconds left is not run;
# the report lists it with the command that runs it. Phase 2 keeps its benches' caps in reserve:
# the sanitizer gets what is left of the budget after them (at most CK_SANITIZER_BUDGET); phase 3
# does the same for each step's successors.
#
# Every run first prints the GPUs (nvidia-smi) and puts cuBLAS 13 on LD_LIBRARY_PATH for the benches'
# baseline (looked up in python3's site-packages: nvidia/cu13/lib, nvidia/cublas/lib, torch's lib).
# Writes to OUT_DIR (the device tool returns at most 8 files, 2 folders deep; a phase writes <= 5):
#   report-phaseN.md    (report.md for all) device, kit, a table of every step with its limit and
#                       time, then the phase's sections: tests (pass/fail/ignore per binary,
#                       failures, GPU skips, every test line); sanitizer (errors per run); benches'
#                       output; parity, loss table, demo. Rewritten before and after every step,
#                       so a run cut short still leaves a report saying where it stopped.
#   logs-phaseN.tar.gz  (logs.tar.gz for all) the full output of every step, repacked after each
#   criterion.tar.gz    phase 2: criterion's data (its folders nest too deep to come back as they are)
#   parity.json, torch.tsv, ckbench.json   phase 3
#   ncu-d128.csv, ncu-d512.csv             phase 4 (ncu --import R --csv --page raw: every collected metric)
# When a GPU is visible (nvidia-smi or /dev/nvidia0), CONTRASTIVE_KERNELS_REQUIRE_GPU=1 makes a test
# that cannot reach it fail instead of skipping; without one (a dry run) the GPU halves skip, the
# benches print one line, the sanitizer, parity, ckbench and the demo are not run, and the report
# says so. An explicit CONTRASTIVE_KERNELS_REQUIRE_GPU wins.
# compute-sanitizer: $CK_SANITIZER, else the kit's (.gpu/sanitizer/, packed by gpu-kit.sh), else
# PATH, $CUDA_HOME/bin, /usr/local/cuda*/bin, python3's site-packages (nvidia/*/bin); absent: the
# report says so and the phase goes on.
# Settings (seconds unless said): CK_PHASE_BUDGET (290); CK_MIN_STEP (10); CK_TEST_TIMEOUT (150 per
# test binary); CK_TESTS (test binaries to run, names separated by spaces; default all);
# CK_SANITIZE (runs as "binary:test,test ..."; empty: no sanitizer); CK_SANITIZER_TIMEOUT (30 per
# run); CK_SANITIZER_BUDGET (120); CK_BENCHES (bench names in order; default similarity topk losses,
# then the others); CK_BENCH_TIMEOUT (one cap for every bench; default similarity 35, topk 70,
# losses 90, others 45); CK_BENCH_ARGS (criterion arguments, default "--warm-up-time 0.5
# --measurement-time 2"; empty for criterion's defaults); criterion filters CK_SIMILARITY_FILTER
# ("d128"), CK_LOSSES_FILTER ("n8192_d128"), CK_TOPK_FILTER ("nb1000000_d512_k(50|1000)$"), empty
# for every shape (the benches' summary tables always cover every shape); CK_PARITY_TIMEOUT (60),
# CK_TORCH_TIMEOUT (75), CK_TORCH_BENCH_ARGS ("--n 8192"), CK_CKBENCH_TIMEOUT (45),
# CK_CKBENCH_ARGS (""), CK_DEMO_TIMEOUT (75); phase 4: CK_NCU (the ncu binary; default PATH, then
# /opt/nvidia/nsight-compute/*, /usr/local/cuda*), CK_PROFILE_TIMEOUT (100 per D), CK_PROFILE_N
# (8192), CK_PROFILE_DIMS ("128 512").
# Exit status, always after writing the report: 0 every step ran and passed; 1 a test, bench,
# sanitizer run (an error found, or its tests failed), parity, ckbench or the demo failed or timed
# out; 2 no kit, or a bad argument; 3 nothing failed but a step was not run, or a sanitizer run was
# cut, for lack of time.
set -uo pipefail   # no -e: every step runs and lands in the report

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

# --- arguments -----------------------------------------------------------------------------------
out_arg=""
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  1|2|3|4|all) phase="$1"; out_arg="${2:-}" ;;
  phase1|phase2|phase3|phase4) phase="${1#phase}"; out_arg="${2:-}" ;;
  "") phase=all ;;
  *) phase=all; out_arg="$1"       # the single-argument form of earlier versions: OUT_DIR
     if [ $# -gt 1 ]; then
       echo "gpu-run: '$1' is not a phase (1, 2, 3, 4 or all); usage: gpu-run.sh PHASE [OUT_DIR]" >&2; exit 2
     fi ;;
esac
if [ $# -gt 2 ]; then echo "gpu-run: too many arguments; usage: gpu-run.sh PHASE [OUT_DIR]" >&2; exit 2; fi
if [ "$phase" = all ]; then phases=(1 2 3); suffix=""; else phases=("$phase"); suffix="-phase$phase"; fi
want() { case " ${phases[*]} " in *" $1 "*) return 0 ;; esac; return 1; }

t_script=$(date +%s)
exec 3>&1   # the script's stdout, for the signal trap
now() { date +%s; }
clock() { date -u +'%H:%M:%S UTC' -d "@$1" 2>/dev/null || date -u +'%H:%M:%S UTC'; }
say() { echo "gpu-run: $*"; }

script_dir="$(cd "$(dirname "$0")" && pwd)"
if [ -d "$script_dir/tests" ] || [ -f "$script_dir/MANIFEST.txt" ]; then
  kit="$script_dir"                   # run as .gpu/gpu-run.sh
elif [ -d ./.gpu ]; then
  kit="$(cd ./.gpu && pwd)"           # run as scripts/gpu-run.sh from the repo root
else
  kit="$script_dir"
fi

# gpu-kit.sh packs the binaries into one xz archive and compute-sanitizer into another: unpack them
# beside themselves, or in a temporary folder when the kit's folder is read-only (or tar has no xz).
py_untar() { # archive, folder
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$1" "$2"
}
packed="$kit"
if [ -f "$packed/binaries.tar.xz" ] && [ ! -d "$kit/tests" ]; then
  if ! tar -xJf "$packed/binaries.tar.xz" -C "$kit" 2>/dev/null; then
    unpacked="$(mktemp -d)"
    py_untar "$packed/binaries.tar.xz" "$unpacked" || { echo "gpu-run: cannot unpack $packed/binaries.tar.xz" >&2; exit 2; }
    cp "$packed/MANIFEST.txt" "$unpacked/" 2>/dev/null || true
    kit="$unpacked"
  fi
fi
kit_sanitizer="$kit/sanitizer"
if [ -f "$packed/sanitizer.tar.xz" ] && [ ! -d "$kit_sanitizer" ]; then
  if ! tar -xJf "$packed/sanitizer.tar.xz" -C "$kit" 2>/dev/null; then
    unpacked_san="$(mktemp -d)"
    py_untar "$packed/sanitizer.tar.xz" "$unpacked_san" 2>/dev/null \
      || echo "gpu-run: cannot unpack $packed/sanitizer.tar.xz (phase 2 looks for compute-sanitizer elsewhere)" >&2
    kit_sanitizer="$unpacked_san/sanitizer"
  fi
fi

out="${out_arg:-${OUT:-./gpu-report}}"
if ! mkdir -p "$out"; then echo "gpu-run: cannot create the output folder $out" >&2; exit 2; fi
out="$(cd "$out" && pwd)"
report="$out/report$suffix.md"
logs_archive="$out/logs$suffix.tar.gz"
rm -f "$report" "$logs_archive"
want 2 && rm -f "$out/criterion.tar.gz"
want 3 && rm -f "$out/parity.json" "$out/torch.tsv" "$out/ckbench.json"
want 4 && rm -f "$out"/ncu-d*.csv
# Logs and criterion's data grow in a scratch folder, NOT in OUT_DIR (a run cut short must not
# leave more files there than the device tool returns); they are packed into OUT_DIR after each step.
work="$(mktemp -d 2>/dev/null)" || { work="$out/.gpu-run-work"; mkdir -p "$work"; }
trap 'rm -rf "$work"' EXIT
logs="$work/logs"
mkdir -p "$logs"
export CRITERION_HOME="$work/criterion"

phase_budget="${CK_PHASE_BUDGET:-290}"
min_step="${CK_MIN_STEP:-10}"
test_cap="${CK_TEST_TIMEOUT:-150}"
san_cap="${CK_SANITIZER_TIMEOUT:-30}"
san_budget="${CK_SANITIZER_BUDGET:-120}"
bench_args="${CK_BENCH_ARGS---warm-up-time 0.5 --measurement-time 2}"
parity_cap="${CK_PARITY_TIMEOUT:-60}"
torch_cap="${CK_TORCH_TIMEOUT:-75}"
ckbench_cap="${CK_CKBENCH_TIMEOUT:-45}"
demo_cap="${CK_DEMO_TIMEOUT:-75}"
profile_cap="${CK_PROFILE_TIMEOUT:-100}"
started="$(date -u +'%Y-%m-%d %H:%M:%S UTC')"
phase_deadline=$((t_script + phase_budget))
current_phase="${phases[0]}"

# timeout(1) when present: a hung kernel must not eat the whole device call. It signals its whole
# process group, so compute-sanitizer's target goes too. The command runs in the background and is
# waited for, so that a signal to this script (a device call's own limit) runs its trap at once
# instead of after the command; the trap passes the signal on to it.
child=""
run_limited() { # seconds, command...
  local secs="$1" rc; shift
  if command -v timeout >/dev/null 2>&1; then
    timeout -k 5 "$secs" "$@" &
  else
    "$@" &
  fi
  child=$!
  wait "$child"
  rc=$?
  child=""
  return "$rc"
}

exit_note() { # exit status -> words
  case "$1" in
    0) echo "exit 0" ;;
    124|137) echo "timed out (exit $1)" ;;
    *) if [ "$1" -gt 128 ] 2>/dev/null && [ "$1" -le 192 ]; then
         echo "killed by signal $(( $1 - 128 ))$(kill -l $(( $1 - 128 )) 2>/dev/null | sed 's/^/ SIG/')"
       else
         echo "exit $1"
       fi ;;
  esac
}
timed_out() { [ "$1" = 124 ] || [ "$1" = 137 ]; }
# was_cut RC LIMIT CAP: timed out under a limit the phase's deadline had cut below the step's cap: the
# step did not get its time, which is not a failure (exit status 3, not 1).
was_cut() { timed_out "$1" && [ "$2" -lt "$3" ]; }

# step_limit CAP [RESERVE]: the seconds a step may run. LEFT = seconds to the phase's deadline;
# RESERVE = the caps of the steps after it. Plenty of time: CAP. Otherwise whatever LEFT less
# RESERVE leaves, but at least the step's share of LEFT (CAP / (CAP + RESERVE)), so caps that add up
# to more than the budget shrink in proportion instead of starving the first steps. Under
# CK_MIN_STEP: fails, printing why.
step_limit() {
  local cap="$1" reserve="${2:-0}" left lim share
  left=$(( phase_deadline - $(now) ))
  lim=$(( left - reserve ))
  share=$(( left * cap / (cap + reserve > 0 ? cap + reserve : 1) ))
  if [ "$share" -gt "$lim" ]; then lim="$share"; fi
  if [ "$lim" -gt "$cap" ]; then lim="$cap"; fi
  if [ "$lim" -lt "$min_step" ]; then
    if [ "$reserve" -gt 0 ]; then echo "${left} s left before the phase's deadline, ${reserve} s of caps after it"
    else echo "${left} s left before the phase's deadline"; fi
    return 1
  fi
  echo "$lim"
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
say "phase ${phase}; GPUs:"
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
site_roots=""
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
for root in roots:
    print("ROOT\t%s" % root)
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
  site_roots="$(printf '%s\n' "$lib_lookup" | awk -F'\t' '$1 == "ROOT" { print $2 }')"
  libdirs="$(printf '%s\n' "$lib_lookup" | awk -F'\t' '$1 == "DIR" { printf "%s%s", sep, $2; sep = ":" }')"
  lib_report="$(printf '%s\n' "$lib_lookup" | awk -F'\t' '
    $1 == "ROOT"    { next }
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

# --- compute-sanitizer (phase 2) ------------------------------------------------------------------
sanitizer=""
sanitizer_note=""
if want 2; then
  candidates=()
  [ -n "${CK_SANITIZER:-}" ] && candidates+=("$CK_SANITIZER")
  candidates+=("$kit_sanitizer/compute-sanitizer")
  on_path="$(command -v compute-sanitizer 2>/dev/null)" && candidates+=("$on_path")
  for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /usr/local/cuda-* /opt/cuda /opt/nvidia/cuda; do
    [ -n "$d" ] || continue
    candidates+=("$d/bin/compute-sanitizer" "$d/compute-sanitizer/compute-sanitizer")
  done
  while IFS= read -r root; do
    [ -n "$root" ] || continue
    for f in "$root"/nvidia/*/bin/compute-sanitizer "$root"/nvidia/*/compute-sanitizer/compute-sanitizer; do
      candidates+=("$f")
    done
  done <<< "$site_roots"
  for c in "${candidates[@]}"; do
    if [ -f "$c" ]; then
      [ -x "$c" ] || chmod +x "$c" 2>/dev/null
      if [ -x "$c" ]; then sanitizer="$c"; break; fi
    fi
  done
  if [ -n "$sanitizer" ]; then
    sanitizer_note="compute-sanitizer: $sanitizer ($("$sanitizer" --version 2>&1 | grep -m1 -i 'version' | sed 's/^ *//'))"
  else
    sanitizer_note="compute-sanitizer not found (looked at \$CK_SANITIZER, the kit's sanitizer/, PATH, \$CUDA_HOME, /usr/local/cuda*, /opt/cuda and python3's site-packages): not run"
  fi
  say "$sanitizer_note"
fi

# --- report --------------------------------------------------------------------------------------
status="running"
step_rows=""        # | phase | step | limit | took | outcome |
time_skips=""       # steps not run for lack of time, with the command that runs them
# phase 1
test_rows=""; test_lines=""; skip_lines=""; failure_blocks=""
tests_failed=0; binaries_failed=0; n_tests=0
# phase 2
san_rows=""; san_blocks=""; san_failed=0; san_cut=0; n_san=0
bench_sections=""; benches_failed=0; n_benches=0
# phase 3
parity_section="Not run (it needs a GPU, PyTorch, scripts/parity.py and lib/ in the kit)."
table_section="Not run (it needs a GPU and bin/ckbench in the kit)."
demo_section="Not run (it needs a GPU and bin/detect in the kit)."
parity_failed=0; table_failed=0; demo_failed=0
# phase 4
profile_heading="## Profile (ncu) against the static cost model"
profile_section="$profile_heading"$'\n\n'"Not run (it needs a GPU, Nsight Compute and bin/ckbench in the kit)."
profile_failed=0
reached=""          # phases started so far
incomplete=0        # steps not run or cut for lack of time

fence() { # title, text: a Markdown section with the text in a fenced block
  # shellcheck disable=SC2016  # backquotes: Markdown, not a command
  printf '\n### %s\n\n````\n%s\n````\n' "$1" "$2"
}

# step_done PHASE NAME LIMIT T0 OUTCOME: one row of the steps table.
step_done() {
  step_rows+="| $1 | $2 | $3 | $(( $(now) - $4 )) | $5 |"$'\n'
}
# not_run NAME WHY RERUN: a step skipped for lack of time.
not_run() {
  incomplete=$((incomplete + 1))
  time_skips+="- phase $current_phase: $1: $2; run it with \`$3\`"$'\n'
  step_rows+="| $current_phase | $1 | - | - | not run: $2 |"$'\n'
  say "not run ($2): $1"
}

phase_title() {
  case "$1" in
    1) echo "Phase 1: tests" ;;
    2) echo "Phase 2: compute-sanitizer and benches" ;;
    3) echo "Phase 3: parity, loss table, detector demo" ;;
    4) echo "Phase 4: profile (ncu) against the static cost model" ;;
  esac
}
not_reached() { # phase: a note when the phase has not started
  case " $reached " in *" $1 "*) return 1 ;; esac
  echo "Phase $1 not reached (yet)."
  return 0
}

write_report() {
  {
    if [ "$phase" = all ]; then
      echo "# GPU run $(date -u +%Y-%m-%d) on ${gpu_name}: all phases"
    else
      echo "# GPU run $(date -u +%Y-%m-%d) on ${gpu_name}: $(phase_title "$phase")"
    fi
    echo
    echo "Status: **${status}**. Started ${started}, report written $(date -u +'%H:%M:%S UTC')."
    echo "Budget: ${phase_budget} s per phase (phase ${current_phase}'s deadline $(clock "$phase_deadline"))."
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
    echo "## Steps"
    echo
    if [ -n "$step_rows" ]; then
      echo "| phase | step | limit s | took s | outcome |"
      echo "|---|---|---:|---:|---|"
      printf '%s' "$step_rows"
    else
      echo "None finished yet."
    fi
    if [ -n "$time_skips" ]; then
      echo
      echo "## Not run for lack of time"
      echo
      printf '%s' "$time_skips"
    fi
    if want 1; then
      echo
      echo "## Tests"
      echo
      if ! not_reached 1; then
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
      fi
    fi
    if want 2; then
      echo
      echo "## Compute-sanitizer"
      echo
      if ! not_reached 2; then
        printf '%s\n' "${sanitizer_note:-compute-sanitizer was not looked for}"
        if [ "$n_san" != 0 ]; then
          echo
          echo "| tool | binary | tests | errors | tests' result | outcome |"
          echo "|---|---|---|---:|---|---|"
          printf '%s' "$san_rows"
          echo
          echo "$san_failed of $n_san run(s) failed (an error found or a test failed); $san_cut cut by their time limit."
        fi
        [ -n "$san_blocks" ] && printf '%s\n' "$san_blocks"
      fi
      echo
      echo "## Benches"
      echo
      if ! not_reached 2; then
        if [ "$n_benches" = 0 ]; then
          echo "No bench binaries ran."
        else
          if [ -f "$out/criterion.tar.gz" ]; then
            criterion_note="criterion's data in criterion.tar.gz"
          else
            criterion_note="no criterion data (no bench measured anything)"
          fi
          echo "Arguments: \`--bench ${bench_args}\` and each bench's filter; ${criterion_note}; $benches_failed of $n_benches failed."
          printf '%s\n' "$bench_sections"
        fi
      fi
    fi
    if want 3; then
      echo
      echo "## Parity with PyTorch references (parity.json)"
      echo
      not_reached 3 || printf '%s\n' "$parity_section"
      echo
      echo "## Loss table: fused, unfused, PyTorch (ckbench.json, torch.tsv)"
      echo
      not_reached 3 || printf '%s\n' "$table_section"
      echo
      echo "## Detector demo on the GPU"
      echo
      not_reached 3 || printf '%s\n' "$demo_section"
    fi
    if want 4; then
      echo
      if not_reached 4 > /dev/null; then printf '%s\n\n' "$profile_heading"; not_reached 4
      else printf '%s\n' "$profile_section"; fi
    fi
  } > "$report.tmp" && mv -f "$report.tmp" "$report"
}

pack() { # the logs (and criterion's data) into OUT_DIR, through the scratch folder
  if tar -czf "$work/logs.tar.gz" -C "$work" logs 2>/dev/null; then mv -f "$work/logs.tar.gz" "$logs_archive"; fi
  if [ -d "$work/criterion" ] && tar -czf "$work/criterion.tar.gz" -C "$work" criterion 2>/dev/null; then
    mv -f "$work/criterion.tar.gz" "$out/criterion.tar.gz"
  fi
}
checkpoint() { pack; write_report; }

# shellcheck disable=SC2317  # called by the traps below
on_signal() { # a device call's own limit: leave a report saying where it stopped
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; fi
  status="stopped by SIG$1 while ${status#running }"
  checkpoint
  say "$status" >&3   # the script's own stdout: the trap runs inside run_limited's redirection
  exit "$2"
}
trap 'on_signal TERM 143' TERM
trap 'on_signal INT 130' INT
trap 'on_signal HUP 129' HUP

write_report

if [ ! -d "$kit/tests" ] && [ ! -d "$kit/benches" ] && [ ! -d "$kit/bin" ]; then
  status="no kit: $kit has no tests/ or benches/ (build it with scripts/gpu-kit.sh and carry .gpu)"
  write_report
  say "$status"
  exit 2
fi

rerun() { # env assignments: the command that runs one step again
  echo "${1:+$1 }bash .gpu/gpu-run.sh $current_phase \"\$OUT\""
}

# --- phase 1: tests ------------------------------------------------------------------------------
run_phase1() {
  local bin name log t0 rc secs lim summary passed failed ignored failures outcome running block lines skips
  local selected="${CK_TESTS:-}" tests_left=()
  for name in $selected; do
    [ -f "$kit/tests/$name" ] || step_rows+="| 1 | test binary $name | - | - | not in the kit |"$'\n'
  done
  for bin in "$kit"/tests/*; do
    [ -f "$bin" ] || continue
    name="$(basename "$bin")"
    if [ -n "$selected" ]; then case " $selected " in *" $name "*) ;; *) continue ;; esac; fi
    [ -x "$bin" ] || chmod +x "$bin" 2>/dev/null
    if ! lim="$(step_limit "$test_cap")"; then
      not_run "test binary $name" "$lim" "$(rerun "CK_TESTS=$name")"
      tests_left+=("$name")
      continue
    fi
    log="$logs/test-$name.log"
    n_tests=$((n_tests + 1))
    status="running test binary $name (since $(date -u +%H:%M:%S), limit $lim s)"
    write_report
    say "test binary $name (limit $lim s)"
    t0=$(now)
    run_limited "$lim" "$bin" --test-threads=1 --show-output > "$log" 2>&1
    rc=$?
    secs=$(( $(now) - t0 ))

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
    # shellcheck disable=SC2016  # backquotes: Markdown, not a command
    failures="$(grep -E '^test .* \.\.\. FAILED$' "$log" | sed -E 's/^test (.*) \.\.\. FAILED$/`\1`/' | paste -sd, - | sed 's/,/, /g')"
    outcome="$(exit_note "$rc"), ${secs} s"
    running="$(grep -aE '^test [^ ]+ \.\.\. ' "$log" | grep -avE '^test [^ ]+ \.\.\. (ok|FAILED|ignored)' \
               | tail -n1 | sed -E 's/^test ([^ ]+) \.\.\. .*$/\1/')"
    if was_cut "$rc" "$lim" "$test_cap" && [ "$failed" = 0 ]; then
      # Stopped by the phase's deadline, not by its own cap: not run to the end, not failed.
      incomplete=$((incomplete + 1))
      outcome="$outcome: cut by the phase's deadline"
      failures="${running:+cut while running \`$running\`}"
    elif [ "$rc" != 0 ]; then
      binaries_failed=$((binaries_failed + 1))
      if [ "$failed" = 0 ]; then
        # Crashed, timed out or failed outside a test: blame the test left running, if any.
        failed=1
        failures="${running:+while running \`$running\`}"
        failure_blocks+="$(fence "$name: $(exit_note "$rc")" "$(tail -n 60 "$log")")"$'\n'
      fi
    fi
    if grep -qx 'failures:' "$log"; then
      block="$(awk '/^failures:$/ { on = 1 } /^test result: / { on = 0 } on' "$log")"
      if [ "$(printf '%s\n' "$block" | wc -l)" -gt 200 ]; then
        block="$(printf '%s\n' "$block" | head -n 200)"$'\n'"... (cut at 200 lines; the rest is in $(basename "$logs_archive"): logs/test-$name.log)"
      fi
      failure_blocks+="$(fence "$name" "$block")"$'\n'
    fi
    tests_failed=$((tests_failed + failed))
    test_rows+="| $name | $passed | $failed | $ignored | $outcome | ${failures} |"$'\n'
    lines="$(grep -aE '^test .* \.\.\. ' "$log" | sed "s|^|$name: |")"
    [ -n "$lines" ] && test_lines+="$lines"$'\n'
    skips="$(grep -aiE 'skipped' "$log" | grep -avE '^test ' | sed "s|^|$name: |" | head -n 50)"
    [ -n "$skips" ] && skip_lines+="$skips"$'\n'
    step_done 1 "test binary $name" "$lim" "$t0" "$passed passed, $failed failed, $ignored ignored; $(exit_note "$rc")"
    status="phase 1: test binary $name done"
    checkpoint
    say "  $passed passed, $failed failed, $ignored ignored ($outcome)"
  done
  if [ "${#tests_left[@]}" -gt 1 ]; then
    time_skips+="- phase 1: every test binary above, in one call: \`$(rerun "CK_TESTS=\"${tests_left[*]}\"")\`"$'\n'
  fi
}

# --- phase 2: compute-sanitizer on a few GPU tests, then the benches -------------------------------
bench_names=()
bench_cap() { # name -> its cap in seconds
  if [ -n "${CK_BENCH_TIMEOUT:-}" ]; then echo "$CK_BENCH_TIMEOUT"; return; fi
  case "$1" in
    similarity) echo 35 ;;
    topk) echo 70 ;;
    losses) echo 90 ;;
    *) echo 45 ;;
  esac
}
bench_filter() { # name -> its criterion filter
  case "$1" in
    similarity) echo "${CK_SIMILARITY_FILTER-d128}" ;;          # m = n = 8192, d = 128
    losses) echo "${CK_LOSSES_FILTER-n8192_d128}" ;;            # issue 3's target shape
    topk) echo "${CK_TOPK_FILTER-nb1000000_d512_k(50|1000)\$}" ;;  # the top-k targets
    *) echo "" ;;
  esac
}
plan_benches() { # fills bench_names: CK_BENCHES, else similarity, topk, losses, then the others
  local b name
  bench_names=()
  if [ -n "${CK_BENCHES+set}" ]; then
    for name in ${CK_BENCHES}; do bench_names+=("$name"); done
    return
  fi
  for name in similarity topk losses; do
    [ -f "$kit/benches/$name" ] && bench_names+=("$name")
  done
  for b in "$kit"/benches/*; do
    [ -f "$b" ] || continue
    name="$(basename "$b")"
    case "$name" in similarity|topk|losses) continue ;; esac
    bench_names+=("$name")
  done
}
reserve_after() { # index i: the caps of the main benches from i on, kept for them
  local i="$1" sum=0 name
  for name in "${bench_names[@]:$i}"; do
    case "$name" in similarity|topk|losses) sum=$((sum + $(bench_cap "$name"))) ;; esac
  done
  echo "$sum"
}

san_default="normalize:gpu_forward_matches_oracle,gpu_backward_matches_oracle similarity:gpu_matches_oracle contrastive:gpu_forward_matches_oracle,gpu_backward_matches_oracle topk:gpu_ties_and_nan,gpu_exclusion_and_edges mlp:gpu_linear_kernels_match_oracle"

run_sanitizer() {
  local entries=() entry tool name tests bin log t0 rc secs lim san_deadline errors test_result outcome excerpt
  local list="${CK_SANITIZE-$san_default}"
  for entry in $list; do entries+=("$entry"); done
  if [ "${#entries[@]}" = 0 ]; then sanitizer_note="$sanitizer_note (CK_SANITIZE is empty: no run)"; return; fi
  if [ -z "$sanitizer" ]; then return; fi
  if [ "$gpu_present" = 0 ]; then
    sanitizer_note="$sanitizer_note; no GPU: not run"
    return
  fi
  # The sanitizer's share: what the phase leaves after the benches' caps, at most its budget.
  if ! lim="$(step_limit "$san_budget" "$(reserve_after 0)")"; then
    not_run "compute-sanitizer (every run)" "$lim" "$(rerun "CK_BENCHES=")"
    return
  fi
  san_deadline=$(( $(now) + lim ))
  sanitizer_note="$sanitizer_note; $lim s for its runs, at most $san_cap s each"
  for tool in memcheck racecheck; do
    for entry in "${entries[@]}"; do
      name="${entry%%:*}"
      tests="${entry#*:}"; [ "$tests" = "$entry" ] && tests=""
      bin="$kit/tests/$name"
      if [ ! -f "$bin" ]; then
        san_rows+="| $tool | $name | ${tests//,/, } | - | - | not in the kit |"$'\n'
        continue
      fi
      [ -x "$bin" ] || chmod +x "$bin" 2>/dev/null
      lim=$(( san_deadline - $(now) ))
      if [ "$lim" -gt "$san_cap" ]; then lim="$san_cap"; fi
      if [ "$lim" -lt "$min_step" ]; then
        not_run "$tool on $name" "the sanitizer's share of the phase is spent" "$(rerun "CK_BENCHES= CK_SANITIZE=$name:$tests")"
        continue
      fi
      log="$logs/sanitize-$tool-$name.log"
      n_san=$((n_san + 1))
      status="running compute-sanitizer $tool on $name (since $(date -u +%H:%M:%S), limit $lim s)"
      write_report
      say "compute-sanitizer $tool on $name: $tests (limit $lim s)"
      t0=$(now)
      # shellcheck disable=SC2086  # the tests are separate filters
      run_limited "$lim" "$sanitizer" --tool "$tool" --print-limit 20 --error-exitcode 86 \
        "$bin" --test-threads=1 --exact ${tests//,/ } > "$log" 2>&1
      rc=$?
      secs=$(( $(now) - t0 ))
      errors="$(grep -aoE 'ERROR SUMMARY: [0-9]+ error' "$log" | awk '{ s += $3 } END { if (NR) print s }')"
      test_result="$(grep -aE '^test result: ' "$log" | tail -n1 | sed -E 's/^test result: ([A-Za-z]+)\. ([0-9]+) passed; ([0-9]+) failed.*/\1: \2 passed, \3 failed/')"
      outcome="$(exit_note "$rc"), ${secs} s"
      if timed_out "$rc"; then
        san_cut=$((san_cut + 1)); incomplete=$((incomplete + 1))
        outcome="$outcome: cut, no error reported before"
        [ -n "$errors" ] || errors="-"
      elif [ "$rc" = 86 ] || { [ -n "$errors" ] && [ "$errors" != 0 ]; }; then
        san_failed=$((san_failed + 1))
      elif [ "$rc" != 0 ]; then
        san_failed=$((san_failed + 1))
        if grep -aq 'terminated before first instrumented API call' "$log"; then
          outcome="$outcome: no CUDA call reached the sanitizer"
        fi
      fi
      san_rows+="| $tool | $name | ${tests//,/, } | ${errors:-?} | ${test_result:-none} | $outcome |"$'\n'
      if [ "$rc" != 0 ] && ! timed_out "$rc"; then
        excerpt="$(grep -aE '^=========' "$log" | head -n 80)"
        [ -n "$excerpt" ] || excerpt="$(tail -n 40 "$log")"
        if grep -qx 'failures:' "$log"; then
          excerpt+=$'\n'"$(awk '/^failures:$/ { on = 1 } /^test result: / { on = 0 } on' "$log" | head -n 60)"
        fi
        san_blocks+="$(fence "$tool on $name ($(exit_note "$rc"))" "$excerpt")"$'\n'
      fi
      step_done 2 "$tool on $name" "$lim" "$t0" "${errors:-?} error(s); ${test_result:-no test result}; $(exit_note "$rc")"
      status="phase 2: $tool on $name done"
      checkpoint
      say "  ${errors:-?} error(s), ${test_result:-no test result} ($outcome)"
    done
  done
}

run_benches() {
  local i name bin log t0 rc secs lim cap filter text outcome
  for i in "${!bench_names[@]}"; do
    name="${bench_names[$i]}"
    bin="$kit/benches/$name"
    if [ ! -f "$bin" ]; then
      step_rows+="| 2 | bench $name | - | - | not in the kit |"$'\n'
      continue
    fi
    [ -x "$bin" ] || chmod +x "$bin" 2>/dev/null
    cap="$(bench_cap "$name")"
    if ! lim="$(step_limit "$cap" "$(reserve_after $((i + 1)))")"; then
      not_run "bench $name" "$lim" "$(rerun "CK_SANITIZE= CK_BENCHES=$name")"
      continue
    fi
    filter="$(bench_filter "$name")"
    log="$logs/bench-$name.log"
    n_benches=$((n_benches + 1))
    status="running bench $name (since $(date -u +%H:%M:%S), limit $lim s)"
    write_report
    say "bench $name${filter:+ (filter $filter)} (limit $lim s)"
    t0=$(now)
    # The benches' summary tables cover every shape; the filter picks what criterion measures.
    # shellcheck disable=SC2086  # CK_BENCH_ARGS is a list of words
    run_limited "$lim" "$bin" --bench $bench_args ${filter:+"$filter"} > "$log" 2>&1
    rc=$?
    secs=$(( $(now) - t0 ))
    if was_cut "$rc" "$lim" "$cap"; then
      incomplete=$((incomplete + 1))
    elif [ "$rc" != 0 ]; then
      benches_failed=$((benches_failed + 1))
    fi
    text="$(cat "$log")"
    if [ "$(printf '%s\n' "$text" | wc -l)" -gt 400 ]; then
      text="$(printf '%s\n' "$text" | head -n 400)"$'\n'"... (cut at 400 lines; the rest is in $(basename "$logs_archive"): logs/bench-$name.log)"
    fi
    outcome="$(exit_note "$rc")"
    if was_cut "$rc" "$lim" "$cap"; then outcome="$outcome: cut by the phase's deadline"; fi
    bench_sections+="$(fence "$name${filter:+, filter \`$filter\`} ($outcome, ${secs} s)" "$text")"$'\n'
    step_done 2 "bench $name" "$lim" "$t0" "$outcome"
    status="phase 2: bench $name done"
    checkpoint
    tail -n 30 "$log" | sed 's/^/  /'
  done
}

run_phase2() {
  plan_benches
  run_sanitizer
  run_benches
}

# --- phase 3: PyTorch parity, the loss table, the detector demo ------------------------------------
has_torch() { command -v python3 >/dev/null 2>&1 && python3 -c "import torch" >/dev/null 2>&1; }

run_phase3() {
  local lim t0 prc crc drc outcome torch_arg=() torch_args=() ck_args=() w reserve_demo reserve_ck
  reserve_ck=0; reserve_demo=0
  if [ "$gpu_present" = 1 ] && [ -f "$kit/bin/ckbench" ]; then reserve_ck="$ckbench_cap"; fi
  if [ "$gpu_present" = 1 ] && [ -f "$kit/bin/detect" ]; then reserve_demo="$demo_cap"; fi

  # scripts/parity.py through the kit's cdylib
  if [ "$gpu_present" = 1 ] && [ -f "$kit/lib/libcontrastive_kernels.so" ] && [ -f scripts/parity.py ]; then
    if ! has_torch; then
      parity_section="PyTorch is not installed here: parity not run."
    elif ! lim="$(step_limit "$parity_cap" $((torch_cap + reserve_ck + reserve_demo)))"; then
      not_run "scripts/parity.py" "$lim" "$(rerun)"
      parity_section="Not run: no time left (see \"Not run for lack of time\")."
    else
      say "parity (PyTorch references, limit $lim s)"
      status="running scripts/parity.py (since $(date -u +%H:%M:%S), limit $lim s)"
      write_report
      t0=$(now)
      run_limited "$lim" python3 scripts/parity.py --lib "$kit/lib/libcontrastive_kernels.so" \
        --out "$out/parity.json" > "$logs/parity.log" 2>&1
      prc=$?
      outcome="$(exit_note "$prc")"
      if was_cut "$prc" "$lim" "$parity_cap"; then incomplete=$((incomplete + 1)); outcome="$outcome: cut by the phase's deadline"
      elif [ "$prc" != 0 ]; then parity_failed=1; fi
      parity_section="$(fence "scripts/parity.py ($outcome)" "$(cat "$logs/parity.log")")"
      step_done 3 "scripts/parity.py" "$lim" "$t0" "$outcome"
      status="phase 3: parity done"
      checkpoint
      tail -n 5 "$logs/parity.log" | sed 's/^/  /'
    fi
  fi

  # The Python package's CUDA-tensor paths (python/tests/test_cuda.py: CUDA against the CPU oracle,
  # opcheck on CUDA tensors) through the kit's cdylib; the same limit as parity.
  if [ "$gpu_present" = 1 ] && [ -f "$kit/lib/libcontrastive_kernels.so" ] && [ -f python/tests/test_cuda.py ] && has_torch; then
    if ! lim="$(step_limit "$parity_cap" $((torch_cap + reserve_ck + reserve_demo)))"; then
      not_run "python/tests/test_cuda.py" "$lim" "$(rerun)"
    else
      say "python/tests/test_cuda.py (limit $lim s)"
      t0=$(now)
      CONTRASTIVE_KERNELS_LIB="$kit/lib/libcontrastive_kernels.so" run_limited "$lim" \
        python3 -m unittest discover -v -s python/tests -p test_cuda.py > "$logs/python-cuda.log" 2>&1
      prc=$?
      outcome="$(exit_note "$prc")"
      if was_cut "$prc" "$lim" "$parity_cap"; then incomplete=$((incomplete + 1)); outcome="$outcome: cut by the phase's deadline"
      elif [ "$prc" != 0 ]; then parity_failed=1; fi
      parity_section="$parity_section
$(fence "python/tests/test_cuda.py ($outcome)" "$(tail -n 40 "$logs/python-cuda.log")")"
      step_done 3 "python/tests/test_cuda.py" "$lim" "$t0" "$outcome"
      checkpoint
    fi
  fi

  # ckbench: the loss table (fused, unfused, PyTorch eager and torch.compile on the same shapes)
  if [ "$gpu_present" = 1 ] && [ -f "$kit/bin/ckbench" ]; then
    chmod +x "$kit/bin/ckbench" 2>/dev/null
    for w in ${CK_TORCH_BENCH_ARGS---n 8192}; do torch_args+=("$w"); done
    for w in ${CK_CKBENCH_ARGS-}; do ck_args+=("$w"); done
    if has_torch && [ -f scripts/torch_bench.py ]; then
      if ! lim="$(step_limit "$torch_cap" $((reserve_ck + reserve_demo)))"; then
        not_run "scripts/torch_bench.py (ckbench runs without its PyTorch column)" "$lim" "$(rerun)"
      else
        say "PyTorch timings (scripts/torch_bench.py ${torch_args[*]}, limit $lim s)"
        status="running scripts/torch_bench.py (since $(date -u +%H:%M:%S), limit $lim s)"
        write_report
        t0=$(now)
        run_limited "$lim" python3 scripts/torch_bench.py --out "$out/torch.tsv" "${torch_args[@]}" > "$logs/torch_bench.log" 2>&1
        prc=$?
        [ "$prc" = 0 ] && [ -s "$out/torch.tsv" ] && torch_arg=(--torch "$out/torch.tsv")
        step_done 3 "scripts/torch_bench.py ${torch_args[*]}" "$lim" "$t0" "$(exit_note "$prc")"
        status="phase 3: torch_bench done"
        checkpoint
      fi
    fi
    if ! lim="$(step_limit "$ckbench_cap" "$reserve_demo")"; then
      not_run "ckbench" "$lim" "$(rerun)"
      table_section="Not run: no time left (see \"Not run for lack of time\")."
    else
      say "ckbench ${ck_args[*]} (limit $lim s)"
      status="running ckbench (since $(date -u +%H:%M:%S), limit $lim s)"
      write_report
      t0=$(now)
      run_limited "$lim" "$kit/bin/ckbench" "${ck_args[@]}" "${torch_arg[@]}" --json "$out/ckbench.json" > "$logs/ckbench.log" 2>&1
      crc=$?
      outcome="$(exit_note "$crc")"
      if was_cut "$crc" "$lim" "$ckbench_cap"; then incomplete=$((incomplete + 1)); outcome="$outcome: cut by the phase's deadline"
      elif [ "$crc" != 0 ]; then table_failed=1; fi
      table_section="$(fence "ckbench ${ck_args[*]} ${torch_arg[*]} ($outcome)" "$(cat "$logs/ckbench.log")")"
      if [ -f "$logs/torch_bench.log" ] && [ "${#torch_arg[@]}" = 0 ]; then
        table_section+=$'\n'"$(fence "scripts/torch_bench.py failed or was cut: no PyTorch column" "$(tail -n 20 "$logs/torch_bench.log")")"
      fi
      step_done 3 "ckbench" "$lim" "$t0" "$outcome"
      status="phase 3: ckbench done"
      checkpoint
      tail -n 12 "$logs/ckbench.log" | sed 's/^/  /'
    fi
  fi

  # the detector demo (the README's main job) on the GPU backend
  if [ "$gpu_present" = 1 ] && [ -f "$kit/bin/detect" ]; then
    chmod +x "$kit/bin/detect" 2>/dev/null
    if ! lim="$(step_limit "$demo_cap")"; then
      not_run "the detector demo" "$lim" "$(rerun)"
      demo_section="Not run: no time left (see \"Not run for lack of time\")."
    else
      say "detector demo (digits, SupCon, the default; limit $lim s)"
      status="running the detector demo (since $(date -u +%H:%M:%S), limit $lim s)"
      write_report
      t0=$(now)
      run_limited "$lim" "$kit/bin/detect" --data digits > "$logs/detect.log" 2> "$logs/detect.err"
      drc=$?
      outcome="$(exit_note "$drc")"
      if was_cut "$drc" "$lim" "$demo_cap"; then incomplete=$((incomplete + 1)); outcome="$outcome: cut by the phase's deadline"
      elif [ "$drc" != 0 ]; then demo_failed=1; fi
      demo_section="$(fence "detect --data digits ($outcome)" "$(cat "$logs/detect.log"; tail -n 5 "$logs/detect.err" | tr '\r' '\n' | tail -n 5)")"
      step_done 3 "detect --data digits" "$lim" "$t0" "$outcome"
      status="phase 3: detector demo done"
      checkpoint
    fi
  fi
}

# --- phase 4: Nsight Compute against the static cost model ------------------------------------------
find_ncu() { # the ncu binary: $CK_NCU, PATH, Nsight Compute's own folders, the CUDA toolkit's
  local c
  for c in "${CK_NCU:-}" "$(command -v ncu 2>/dev/null)" /opt/nvidia/nsight-compute/*/ncu \
           /usr/local/cuda*/bin/ncu /usr/local/cuda*/nsight-compute*/ncu; do
    if [ -n "$c" ] && [ -f "$c" ] && [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  return 1
}

# The fused loss kernels of ckbench's NT-Xent forward + backward (bf16: the symmetric forward, the
# row sweep where the host picks it, the backward at G = 1 / 4), and what to collect: the sections
# (stable names) plus the metrics scripts/ncu_compare.py reads; a run whose metric names this ncu
# does not know is repeated with the sections alone.
profile_kernels='regex:^contrastive_(forward_sym|forward|backward)_bf16(_online|_g1|_g2|_g4|_g4_chunked)?$'
profile_sections=(--section SpeedOfLight --section Occupancy --section LaunchStats --section InstructionStats
                  --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables)
profile_metrics="gpu__time_duration.sum,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,sm__inst_executed_pipe_xu.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"

run_phase4() {
  local ncu n d i lim t0 rc outcome reserve rep log dims=() profiles=() blocks=""
  if [ "$gpu_present" != 1 ] || [ ! -f "$kit/bin/ckbench" ]; then
    profile_section="$profile_heading"$'\n\n'"Not run (it needs a GPU and bin/ckbench in the kit)."
    return
  fi
  if ! ncu="$(find_ncu)"; then
    profile_section="$profile_heading"$'\n\n'"Nsight Compute not found (looked at \$CK_NCU, PATH, /opt/nvidia/nsight-compute/*, /usr/local/cuda*): not run."
    profile_failed=1
    return
  fi
  say "ncu: $ncu ($("$ncu" --version 2>&1 | tail -n 1))"
  chmod +x "$kit/bin/ckbench" 2>/dev/null
  n="${CK_PROFILE_N:-8192}"
  for d in ${CK_PROFILE_DIMS:-128 512}; do dims+=("$d"); done
  for i in "${!dims[@]}"; do
    d="${dims[$i]}"
    reserve=$(( (${#dims[@]} - i - 1) * profile_cap ))
    if ! lim="$(step_limit "$profile_cap" "$reserve")"; then
      not_run "ncu on ckbench at N = $n, D = $d" "$lim" "$(rerun "CK_PROFILE_DIMS=$d")"
      continue
    fi
    say "ncu on ckbench NT-Xent fwd_bwd bf16 N = $n, D = $d (limit $lim s)"
    status="running ncu at D = $d (since $(date -u +%H:%M:%S), limit $lim s)"
    write_report
    rep="$work/ncu-d$d"
    log="$logs/ncu-d$d.log"
    t0=$(now)
    # --clock-control none: the device's clocks are left as they are (the device tool's METHOD.md).
    local profile=("$ncu" --clock-control none -k "$profile_kernels" --launch-count 12 "${profile_sections[@]}" -f -o "$rep")
    local app=("$kit/bin/ckbench" --loss nt_xent --n "$n" --d "$d" --dtype bf16 --pass fwd_bwd --runs 1 --warmup 0 --no-unfused)
    run_limited "$lim" "${profile[@]}" --metrics "$profile_metrics" "${app[@]}" > "$log" 2>&1
    rc=$?
    if [ "$rc" != 0 ] && ! timed_out "$rc" && grep -qi "metric" "$log"; then
      echo "== again with the sections alone (a metric name above is unknown to this ncu)" >> "$log"
      lim="$(step_limit "$profile_cap" "$reserve")" || lim="$min_step"
      run_limited "$lim" "${profile[@]}" "${app[@]}" >> "$log" 2>&1
      rc=$?
    fi
    outcome="$(exit_note "$rc")"
    if [ "$rc" = 0 ] && [ -f "$rep.ncu-rep" ]; then
      if "$ncu" --import "$rep.ncu-rep" --csv --page raw > "$out/ncu-d$d.csv" 2>> "$log"; then
        profiles+=(--ncu "$out/ncu-d$d.csv:$n:$d")
      else
        outcome="$outcome; ncu --import failed"; profile_failed=1; rm -f "$out/ncu-d$d.csv"
      fi
    elif was_cut "$rc" "$lim" "$profile_cap"; then
      incomplete=$((incomplete + 1)); outcome="$outcome: cut by the phase's deadline"
    else
      profile_failed=1
    fi
    blocks+=$'\n'"$(fence "ncu, ckbench at N = $n, D = $d ($outcome): the last lines" "$(tail -n 25 "$log")")"
    step_done 4 "ncu ckbench N = $n, D = $d" "$lim" "$t0" "$outcome"
    checkpoint
  done
  if [ "${#profiles[@]}" = 0 ]; then
    profile_section="$profile_heading"$'\n\n'"No profile was taken."$'\n'"$blocks"
  elif [ ! -f "$kit/sass-cost.jsonl" ] || ! command -v python3 >/dev/null 2>&1; then
    profile_section="$profile_heading"$'\n\n'"Profiles in ncu-d*.csv; no comparison (the kit has no sass-cost.jsonl, or python3 is missing)."$'\n'"$blocks"
  elif python3 scripts/ncu_compare.py --model "$kit/sass-cost.jsonl" "${profiles[@]}" > "$logs/ncu_compare.log" 2>&1; then
    profile_section="$(cat "$logs/ncu_compare.log")"$'\n'"$blocks"
  else
    profile_failed=1
    profile_section="$profile_heading"$'\n\n'"scripts/ncu_compare.py failed:"$'\n'"$(fence "ncu_compare" "$(cat "$logs/ncu_compare.log")")"$'\n'"$blocks"
  fi
  status="phase 4: profile done"
}

# --- the phases ----------------------------------------------------------------------------------
first=1
for p in "${phases[@]}"; do
  current_phase="$p"
  # The first phase's budget counts from the script's start (unpacking included).
  [ "$first" = 1 ] || phase_deadline=$(( $(now) + phase_budget ))
  first=0
  reached="$reached $p"
  say "== $(phase_title "$p") (deadline $(clock "$phase_deadline"))"
  status="running $(phase_title "$p")"
  write_report
  case "$p" in 1) run_phase1 ;; 2) run_phase2 ;; 3) run_phase3 ;; 4) run_phase4 ;; esac
  checkpoint
done

# --- result --------------------------------------------------------------------------------------
trap - TERM INT HUP
failed_parts=()
[ "$tests_failed" = 0 ] || failed_parts+=("$tests_failed failed test(s)")
[ "$san_failed" = 0 ] || failed_parts+=("$san_failed failed sanitizer run(s)")
[ "$benches_failed" = 0 ] || failed_parts+=("$benches_failed failed bench(es)")
[ "$parity_failed" = 0 ] || failed_parts+=("parity FAILED")
[ "$table_failed" = 0 ] || failed_parts+=("ckbench FAILED")
[ "$demo_failed" = 0 ] || failed_parts+=("detector demo FAILED")
[ "$profile_failed" = 0 ] || failed_parts+=("profile (ncu) FAILED")
if [ "${#failed_parts[@]}" != 0 ]; then
  status="complete: $(IFS=';'; echo "${failed_parts[*]}")"
  status="${status//;/, }"
  rc=1
elif [ "$incomplete" != 0 ]; then
  status="complete, nothing failed, but $incomplete step(s) not run or cut for lack of time"
  rc=3
else
  status="complete: every step passed"
  rc=0
fi
[ "$incomplete" = 0 ] || [ "$rc" = 3 ] || status="$status; $incomplete step(s) not run or cut for lack of time"
if want 2 && [ -z "$sanitizer" ]; then status="$status; compute-sanitizer not found"; fi
if [ "$gpu_present" = 0 ]; then status="$status (dry run: no GPU)"; fi
checkpoint
say "$status"
say "report: $report"
exit "$rc"
