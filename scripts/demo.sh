#!/usr/bin/env bash
# The README's main job: installs the pinned CUDA toolchain when no nvcc is found, then trains a
# one-class contrastive detector on the UCI digits shipped in data/digits and prints the AUROC /
# AUPR / FPR@95 table per normal class (GPU when one is usable, CPU otherwise; it says which).
# Extra arguments go to the example, e.g. `bash scripts/demo.sh --loss oecl --json`; the default
# loss is FIRM. The kernel quickstart is `cargo run --release --example quickstart`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-nvcc.sh >/dev/null
has_loss=0
for arg in "$@"; do [ "$arg" = "--loss" ] && has_loss=1; done
if [ "$has_loss" = 1 ]; then
  exec cargo run --release --example detect -- --data digits "$@"
fi
exec cargo run --release --example detect -- --data digits --loss firm "$@"
