#!/usr/bin/env bash
# Planted bugs the CPU emulator must catch: each mutant is a one-line change to a copy of kernels/
# (a missing cp.async.wait_group, a missing __syncthreads, an off-by-one k tail, a swapped mma
# fragment register, a column tail taken one past the end, the symmetric forward's row mask and
# slot order, the forward's padded rows, the backward's packed-row and packed-column logit factors,
# packed-row stride, one-exponential positive term and diagonal in a 128-column tile, the
# anchor_rows bounds of the backward's sweep, its Mean count and the reduce's outputs, the resident
# logit tile's peeled first k-step, the backward's column pairs), compiled
# into its own emulator build (CKEMU_KERNELS_DIR, its own target folder), under which a few GPU
# tests must FAIL. The test
# binaries are the ones `cargo test --release` built: only the emulated libcuda changes.
#
#   bash scripts/emu-mutants.sh          # every mutant; exit 1 if one survives (its tests pass)
#   bash scripts/emu-mutants.sh WORD     # only the mutants whose name contains WORD
#
# Prints one line per mutant: caught (and the first failure) or SURVIVED. Run by scripts/test.sh
# when CK_EMU_MUTANTS=1 (CI sets it). About 40 s per mutant on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-nvcc.sh >/dev/null
cargo test --release --no-run --test similarity --test contrastive >/dev/null 2>&1 || cargo test --release --no-run --test similarity --test contrastive
bin() { # the test binary of tests/$1.rs, as cargo names it (not the newest file of that name:
  # `cargo build --all-targets` also leaves a bench binary called similarity-* there)
  cargo test --release --no-run --test "$1" --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m.get("target", {}).get("kind", []):
        print(m["executable"])'
}
similarity="$(bin similarity)"
contrastive="$(bin contrastive)"
for b in "$similarity" "$contrastive"; do
  [ -x "$b" ] || { echo "emu-mutants: no test binary found (got '$b')" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# name | file under kernels/ | literal text | replacement | test binary and test name
mutants=(
  "missing wait_group|common/tile.cuh|            cp_async_wait<1>();  // this stage's group is done; the next one may still fly|            /* planted: no wait */|$similarity gpu_matches_oracle"
  "missing barrier before the buffer is reloaded|common/tile.cuh|        __syncthreads();  // the buffer is overwritten by the load two iterations on|        /* planted: no barrier */|$similarity gpu_matches_oracle"
  "off-by-one k tail|common/tile.cuh|    const int k_tiles = (d + Cfg::BK - 1) / Cfg::BK;|    const int k_tiles = d / Cfg::BK;|$similarity gpu_matches_oracle"
  "swapped B fragment registers|common/tile.cuh|            b[ni + 1][0] = r[2];|            b[ni + 1][0] = r[3];|$similarity gpu_matches_oracle"
  "column tail one past the end|contrastive.cu|    const bool inside = col < c.count;|    const bool inside = col <= c.count;|$contrastive gpu_forward_matches_oracle"
  "diagonal not excluded|contrastive.cu|                        x = self ? -INFINITY : x;|                        /* planted: self kept */|$contrastive gpu_forward_matches_oracle"
  "symmetric column sums keep rows outside the denominators|contrastive.cu|                        if (r.den[slot]) csum[e] += ex;|                        csum[e] += ex;  /* planted */|$contrastive gpu_forward_matches_oracle"
  "symmetric column sums keep a tile's first row outside the denominators|contrastive.cu|                        csum[e] = r.den[slot] ? ex : 0.f;|                        csum[e] = ex;  /* planted */|$contrastive gpu_forward_matches_oracle"
  "symmetric row records keep the label -1|contrastive.cu|c.instance[col], label >= 0 ? label : kNoLabelKey, 0};|c.instance[col], label, 0};|$contrastive gpu_forward_matches_oracle"
  "symmetric slot overwritten by a later tile|contrastive.cu|(&partials[(size_t)gp * n + row], col_red, col, first_col, offset);|(&partials[(size_t)gp * n + row], col_red, col, true, offset);|$contrastive gpu_forward_splits_and_offsets_match_oracle"
  "backward logits from the packed rows without the rows' power of two|common/contrastive_backward.cuh|    if (PACKED) r.rinv *= pow2_floor(norm_denominator(own.norms[row]));|    /* planted: no 2^e */|$contrastive gpu_backward_matches_oracle"
  "backward column data without the packing's power of two|common/contrastive_backward.cuh|        k.rinv = packed ? k.w : rinv;|        k.rinv = rinv;|$contrastive gpu_backward_matches_oracle"
  "padded rows (the forward's pad, the backward's pack) keep the next row's head|contrastive.cu|ur[j] = from_float<T>(j < d ? to_float(xr[j]) * inv_scale : 0.f);|ur[j] = from_float<T>(j < dp ? to_float(xr[j]) * inv_scale : 0.f);|$contrastive gpu_forward_matches_oracle"
  "backward S from the packed rows at the raw rows' stride|contrastive.cu|    const int s_d = Tr::FROM_PACKED ? dp : d;|    const int s_d = d;|$contrastive gpu_backward_temperatures_and_d_groups"
  "backward split merge drops the last split|contrastive.cu|for (int z = 1; z < p.splits; ++z)|for (int z = 1; z < p.splits - 1; ++z)|$contrastive gpu_backward_matches_oracle"
  "backward two-exponential path without the column term|common/contrastive_backward.cuh|                        c.coef * ex2_approx((a * c.rinv) * o.cscale - c.lse2) - (positive|                        0.f * ex2_approx((a * c.rinv) * o.cscale - c.lse2) - (positive|$contrastive gpu_backward_temperatures_and_d_groups"
  "backward one-exponential path without the positives' column weight|common/contrastive_backward.cuh|        const float pos = positive ? fmaf(o.coef_b, c.w, c.coef_b) : 0.f;|        const float pos = positive ? o.coef_b * c.w : 0.f;|$contrastive gpu_backward_matches_oracle"
  "backward split-k: both k-halves keep m16 fragment 0|common/contrastive_backward.cuh|ldmatrix_x4(a[mi], sA + (m0 + (mi ^ Split::half()) * 16|ldmatrix_x4(a[mi], sA + (m0 + mi * 16|$contrastive gpu_backward_temperatures_and_d_groups"
  "backward: blocks past anchor_rows skip the anchors' last partial column tile|contrastive.cu|    const int cols = own_anchors ? other.count : min(other.count, other.anchors);|    const int cols = own_anchors ? other.count : min(other.count, other.anchors & ~63);|$contrastive gpu_backward_matches_oracle"
  "backward prepare: Mean counts anchors past anchor_rows|contrastive.cu|        anchors += r == kRoleAnchor && i < anchor_rows;|        anchors += r == kRoleAnchor;|$contrastive gpu_backward_matches_oracle"
  "reduce: the first row past anchor_rows keeps unwritten outputs|contrastive.cu|        if (i >= p.anchor_rows) {|        if (i > p.anchor_rows) {|$contrastive gpu_forward_matches_oracle"
  "backward diagonal zeroed at the row block's offset 0 of a 128-column tile|contrastive.cu|    T* diagonal_h = sh.h + threadIdx.x * (Tr::H_STRIDE + 1) + row0 % Cfg::BN;|    T* diagonal_h = sh.h + threadIdx.x * (Tr::H_STRIDE + 1);|$contrastive gpu_backward_matches_oracle"
  "resident logit tile without its peeled first k-step|common/tile.cuh|    Engine::template stage<Cfg, false, false>(acc, sA, sB);|    /* planted: no first k-step */|$contrastive gpu_backward_matches_oracle"
  "backward column pairs: the odd column takes the even one's key and label|common/contrastive_backward.cuh|e == 0 ? keys.x : keys.z, e == 0 ? keys.y : keys.w,|keys.x, keys.y,|$contrastive gpu_backward_matches_oracle"
)

survived=0
for m in "${mutants[@]}"; do
  IFS='|' read -r name file from to test <<<"$m"
  [[ -z "${1:-}" || "$name" == *"$1"* ]] || continue
  rm -rf "$work/kernels"
  cp -r kernels "$work/kernels"
  python3 - "$work/kernels/$file" "$from" "$to" <<'EOF'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
if text.count(old) != 1:
    sys.exit(f"emu-mutants: the text to mutate occurs {text.count(old)} times in {path}: {old!r}")
open(path, "w").write(text.replace(old, new))
EOF
  CKEMU_KERNELS_DIR="$work/kernels" CARGO_TARGET_DIR="$PWD/target/emu-mutant" cargo build --release -p ckemu >/dev/null 2>&1 \
    || { echo "emu-mutants: the mutant '$name' does not compile" >&2; exit 1; }
  mkdir -p target/emu-mutant/lib
  ln -sfn "$PWD/target/emu-mutant/release/libckemu.so" target/emu-mutant/lib/libcuda.so
  read -r binary filter <<<"$test"
  out="$(LD_LIBRARY_PATH="$PWD/target/emu-mutant/lib" CONTRASTIVE_KERNELS_REQUIRE_GPU=1 timeout 300 "$binary" --exact "$filter" 2>&1)" && status=0 || status=$?
  if [ "$status" -eq 0 ]; then
    echo "mutant '$name': SURVIVED ($(basename "$binary") $filter passed)"
    survived=$((survived + 1))
  else
    why="$(grep -m1 -E "panicked|ckemu: kernel|ERROR" <<<"$out" -A1 | tr '\n' ' ' | cut -c1-200)"
    echo "mutant '$name': caught by $filter: $why"
  fi
done
if [ "$survived" -gt 0 ]; then
  echo "emu-mutants: $survived planted bugs survived" >&2
  exit 1
fi
echo "emu-mutants: every planted bug was caught"
