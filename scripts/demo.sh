#!/usr/bin/env bash
# The README's main job: installs the pinned CUDA toolchain when no nvcc is found, then trains a
# one-class contrastive detector on the UCI digits shipped in data/digits and prints the AUROC /
# AUPR / FPR@95 table per normal class (GPU when one is usable, CPU otherwise; it says which).
# Extra arguments go to the example, e.g. `bash scripts/demo.sh --loss oecl --json`; the default
# loss is SupCon with one class, the one that beats raw pixels on digits (README, "Detector").
# The kernel quickstart is `cargo run --release --example quickstart`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-nvcc.sh >/dev/null
exec cargo run --release --example detect -- --data digits "$@"
