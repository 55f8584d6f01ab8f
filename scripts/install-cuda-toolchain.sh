#!/usr/bin/env bash
# Installs nvcc 13.0 from pinned PyPI wheels into a cache folder, once; later runs reuse it.
#
#   bash scripts/install-cuda-toolchain.sh               # install if needed, print where nvcc is
#   bash scripts/install-cuda-toolchain.sh --print-nvcc  # the same, printing only nvcc's path
#
# Folder: $CONTRASTIVE_KERNELS_TOOLCHAIN, default ${XDG_CACHE_HOME:-$HOME/.cache}/contrastive-kernels/cuda-13.0.88
# (the last place build.rs looks for nvcc). Every wheel is pinned: the unpinned nvcc wheel on PyPI
# is newer (13.5) and its PTX does not load on the GPU machines' driver 580.x (CUDA 13.0).
set -euo pipefail

PINS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-cuobjdump==13.2.51
  nvidia-cuda-nvdisasm==13.2.51
)

print_only=0
case "${1:-}" in
  --print-nvcc) print_only=1 ;;
  "") ;;
  -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
  *) echo "install-cuda-toolchain.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

dir="${CONTRASTIVE_KERNELS_TOOLCHAIN:-${XDG_CACHE_HOME:-$HOME/.cache}/contrastive-kernels/cuda-13.0.88}"
nvcc="$dir/nvidia/cu13/bin/nvcc"
stamp="$dir/.installed"
log() { if [ "$print_only" = 0 ]; then echo "$@"; else echo "$@" >&2; fi; }

installed() {
  [ -x "$nvcc" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${PINS[*]}" ] \
    && "$nvcc" --version 2>/dev/null | grep -q "release 13.0"
}

if ! installed; then
  python=""
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; break; fi
  done
  if [ -z "$python" ] || ! "$python" -m pip --version >/dev/null 2>&1; then
    echo "pip is required to install the CUDA toolchain: install python3 and pip (e.g. apt-get install python3-pip)," >&2
    echo "or point NVCC / CUDA_HOME at an existing CUDA 13.0 install." >&2
    exit 1
  fi
  log "installing the CUDA 13.0 toolchain (pinned PyPI wheels, ~100 MB) into $dir"
  mkdir -p "$(dirname "$dir")"
  tmp="$(mktemp -d "$dir.partial.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  # --no-deps: every companion wheel is pinned above; nvcc's own metadata leaves them unpinned.
  "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$tmp" "${PINS[@]}" >&2
  echo "${PINS[*]}" > "$tmp/.installed"
  # Swap in only a complete install, so an interrupted one never looks installed.
  rm -rf "$dir"
  mv "$tmp" "$dir"
  trap - EXIT
  if ! installed; then
    echo "the toolchain installed into $dir but $nvcc does not report release 13.0" >&2
    exit 1
  fi
  # Smoke test: one fp16 kernel to Hopper SASS.
  probe="$(mktemp -d)"
  printf '#include <cuda_fp16.h>\nextern "C" __global__ void probe(__half* x) { x[threadIdx.x] = __float2half(1.f); }\n' > "$probe/probe.cu"
  if ! "$nvcc" -fatbin -gencode=arch=compute_90a,code=sm_90a -o "$probe/probe.fatbin" "$probe/probe.cu" >&2; then
    rm -rf "$probe"
    echo "nvcc at $nvcc cannot compile a test kernel" >&2
    exit 1
  fi
  rm -rf "$probe"
fi

if [ "$print_only" = 1 ]; then
  echo "$nvcc"
else
  echo "nvcc: $nvcc ($("$nvcc" --version | grep release))"
fi
