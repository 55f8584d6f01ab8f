#!/usr/bin/env bash
# Installs nvcc 13.0 from pinned PyPI wheels into a cache folder, once; later runs reuse it.
#
#   bash scripts/install-cuda-toolchain.sh               # install if needed, print nvcc's path and version
#   bash scripts/install-cuda-toolchain.sh --print-nvcc  # the same, but print only nvcc's path (for scripts)
#   bash scripts/install-cuda-toolchain.sh --force       # reinstall even if a good install is there
#
# Folder: $CONTRASTIVE_KERNELS_TOOLCHAIN, default ${XDG_CACHE_HOME:-$HOME/.cache}/contrastive-kernels/cuda-13.0.88,
# the last place build.rs looks for nvcc (<folder>/nvidia/cu13/bin/nvcc). Needs python3 with pip and
# network access to PyPI (about 100 MB). Every wheel is pinned and installed with --no-deps: the nvcc
# wheel leaves its companions unpinned, and PyPI's newest nvcc (13.5) emits PTX that the GPU machines'
# driver 580.x (CUDA 13.0) cannot load.
#
# A folder counts as installed only if its stamp file (.installed, written after a verified install)
# lists exactly the pins below and its nvcc reports release 13.0; anything else is reinstalled. The
# install goes into a temporary sibling folder, is verified there (nvcc --version, one kernel compiled
# to sm_90a), and only then renamed into place, so an interrupted install never looks complete.
# Progress goes to stderr; stdout carries only the result.
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
RELEASE="13.0"

print_only=0
force=0
for arg in "$@"; do
  case "$arg" in
    --print-nvcc) print_only=1 ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-cuda-toolchain.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

dir="${CONTRASTIVE_KERNELS_TOOLCHAIN:-${XDG_CACHE_HOME:-$HOME/.cache}/contrastive-kernels/cuda-13.0.88}"
dir="${dir%/}"
nvcc="$dir/nvidia/cu13/bin/nvcc"
stamp="$dir/.installed"

say() { echo "install-cuda-toolchain: $*" >&2; }
die() { echo "install-cuda-toolchain: error: $*" >&2; exit 1; }

# The "release X.Y, VX.Y.Z" line of `nvcc --version`, or nothing if nvcc does not run.
release_line() {
  local out
  out="$("$1" --version 2>/dev/null)" || return 0
  printf '%s\n' "$out" | grep -m1 'release' || true
}

# nvcc at $1 reports release 13.0.
is_release() {
  [ -x "$1" ] || return 1
  case "$(release_line "$1")" in *"release $RELEASE,"*) return 0 ;; *) return 1 ;; esac
}

installed() {
  [ -f "$stamp" ] && [ "$(head -n1 "$stamp")" = "${PINS[*]}" ] && is_release "$nvcc"
}

# Compiles one fp16 kernel to Hopper SASS with the nvcc at $1 (as build.rs does: -fatbin + -gencode).
probe() {
  local probe_dir rc=0
  probe_dir="$(mktemp -d "${TMPDIR:-/tmp}/ck-nvcc-probe.XXXXXX")"
  cat > "$probe_dir/probe.cu" <<'CU'
#include <cuda_fp16.h>
extern "C" __global__ void probe(__half* x) { x[threadIdx.x] = __float2half(1.0f + threadIdx.x); }
CU
  if ! "$1" -fatbin -gencode=arch=compute_90a,code=sm_90a -o "$probe_dir/probe.fatbin" "$probe_dir/probe.cu" \
       > "$probe_dir/log" 2>&1 || [ ! -s "$probe_dir/probe.fatbin" ]; then
    cat "$probe_dir/log" >&2
    say "nvcc at $1 could not compile a test kernel for sm_90a (it needs a host C++ compiler: g++ on PATH)"
    rc=1
  fi
  rm -rf "$probe_dir"
  return "$rc"
}

report() {
  if [ "$print_only" = 1 ]; then
    echo "$nvcc"
  else
    echo "nvcc: $nvcc"
    echo "version: $(release_line "$nvcc" | sed 's/^ *//')"
    echo "toolchain folder: $dir (add CUDA_PATH=$dir/nvidia/cu13 for other tools)"
  fi
}

if [ "$force" = 0 ] && installed; then
  say "already installed in $dir"
  report
  exit 0
fi

# --- install -------------------------------------------------------------------------------------
command -v python3 >/dev/null 2>&1 \
  || die "pip is required to install the CUDA toolchain: python3 was not found. Install python3 and pip (e.g. apt-get install python3 python3-pip), or point NVCC or CUDA_HOME at a CUDA $RELEASE install."
python3 -m pip --version >/dev/null 2>&1 \
  || die "pip is required to install the CUDA toolchain: 'python3 -m pip' does not work. Install pip (e.g. apt-get install python3-pip, or python3 -m ensurepip --user), or point NVCC or CUDA_HOME at a CUDA $RELEASE install."

parent="$(dirname "$dir")"
mkdir -p "$parent"

# One installer at a time per folder (two CI steps, a demo and a test started together).
if command -v flock >/dev/null 2>&1; then
  exec 9> "$dir.lock"
  if ! flock -n 9; then
    say "another install into $dir is running; waiting for it"
    flock 9
  fi
  if [ "$force" = 0 ] && installed; then
    say "installed in $dir by the other run"
    report
    exit 0
  fi
  # Holding the lock, any partial or old folder left beside ours is from an interrupted run.
  rm -rf "$dir".partial.* "$dir".old.*
fi

if [ -e "$dir" ]; then
  if [ -f "$stamp" ]; then
    say "$dir holds a different or broken install (stamp: $(head -n1 "$stamp")); reinstalling"
  else
    say "$dir has no install stamp (interrupted or hand-made install); reinstalling"
  fi
fi

tmp="$(mktemp -d "$dir.partial.XXXXXX")"
chmod 755 "$tmp"
old=""
cleanup() { rm -rf "$tmp" ${old:+"$old"}; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "installing the CUDA $RELEASE toolchain (pinned PyPI wheels, about 100 MB) into $dir"
say "  ${PINS[*]}"
if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --no-deps --only-binary=:all: --target "$tmp" \
     --disable-pip-version-check --no-input --no-warn-script-location --progress-bar off \
     "${PINS[@]}" >&2; then
  die "pip could not install the pinned wheels (no network? a package index without them?)"
fi

tmp_nvcc="$tmp/nvidia/cu13/bin/nvcc"
[ -x "$tmp_nvcc" ] || die "the wheels installed, but $tmp_nvcc is missing (did the wheel layout change?)"
is_release "$tmp_nvcc" \
  || die "the installed nvcc does not report release $RELEASE: $(release_line "$tmp_nvcc")"
probe "$tmp_nvcc" || die "the installed toolchain cannot compile a kernel"

# The stamp is written only after a verified install, then the folder is swapped in with renames.
{
  echo "${PINS[*]}"
  echo "installed $(date -u +%Y-%m-%dT%H:%M:%SZ) by scripts/install-cuda-toolchain.sh"
} > "$tmp/.installed"
if [ -e "$dir" ]; then
  old="$(mktemp -d "$dir.old.XXXXXX")"
  mv "$dir" "$old/"
fi
mv "$tmp" "$dir"
rm -rf ${old:+"$old"}
old=""

# Verify where it will be used.
installed || die "$dir was swapped into place but does not check out as installed"
probe "$nvcc" || die "the toolchain in $dir cannot compile a kernel"
say "installed and verified (a kernel compiled for sm_90a)"
report
