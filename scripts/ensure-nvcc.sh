#!/usr/bin/env bash
# Makes sure build.rs will find an nvcc, installing the pinned toolchain if it would find none.
#
#   bash scripts/ensure-nvcc.sh        # prints the nvcc build.rs will use (stdout); notes on stderr
#
# Looks where build.rs looks, in its order: $NVCC, $CUDA_HOME/bin/nvcc, $CUDA_PATH/bin/nvcc, every
# PATH entry, /usr/local/cuda/bin/nvcc. If none is a file, it runs install-cuda-toolchain.sh, which
# installs (or checks, in well under a second) the pinned toolchain in build.rs's last place, the
# toolchain folder. It exports nothing: build.rs reruns when NVCC / PATH / CUDA_* change, so callers
# must keep cargo's environment as it is.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

find_nvcc() {
  local candidate entry
  local -a candidates=()
  if [ -n "${NVCC+set}" ]; then candidates+=("$NVCC"); fi
  if [ -n "${CUDA_HOME+set}" ]; then candidates+=("$CUDA_HOME/bin/nvcc"); fi
  if [ -n "${CUDA_PATH+set}" ]; then candidates+=("$CUDA_PATH/bin/nvcc"); fi
  local IFS=:
  for entry in ${PATH:-}; do
    candidates+=("${entry:-.}/nvcc")
  done
  unset IFS
  candidates+=(/usr/local/cuda/bin/nvcc)
  for candidate in "${candidates[@]}"; do
    if [ -f "$candidate" ]; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

if nvcc="$(find_nvcc)"; then
  version="$("$nvcc" --version 2>/dev/null | grep -m1 release || true)"
  case "$version" in
    *"release 13.0,"*)
      echo "ensure-nvcc: using $nvcc (${version# })" >&2 ;;
    "")
      echo "ensure-nvcc: warning: build.rs will use $nvcc, which does not run ('$nvcc --version' failed)" >&2 ;;
    *)
      echo "ensure-nvcc: warning: build.rs will use $nvcc (${version# }), not CUDA 13.0: PTX from a newer" \
           "toolkit does not load on the GPU machines' driver 580.x. Unset NVCC/CUDA_HOME/CUDA_PATH or" \
           "take it off PATH to use the pinned toolchain." >&2 ;;
  esac
  echo "$nvcc"
else
  bash "$here/install-cuda-toolchain.sh" --print-nvcc
fi
