#!/usr/bin/env bash
# The Python package against real PyTorch, on the CPU (what scripts/test.sh runs after the Rust tests):
#
#   bash scripts/python-test.sh
#
# 1. Creates or reuses the virtual environment $CK_TORCH_VENV (default
#    ~/.cache/contrastive-kernels/torch-venv) with PINNED torch, numpy and setuptools from PyPI.
#    PyPI's Linux torch wheel brings its CUDA libraries (about 2.5 GB): the venv is the cache, and
#    a second run finds everything installed and downloads nothing.
# 2. `pip wheel .` (checked: one platform-tagged wheel with the shared library inside), installed
#    into a NEW venv with no torch, where the package imports, loads its bundled library and runs
#    a metric through it; then `pip install .` of the package into the torch venv (no build
#    isolation: the venv's pinned setuptools builds it, so no download either; setup.py runs
#    cargo, which finds its build up to date).
# 3. Runs python/tests against the INSTALLED package (CK_TEST_INSTALLED=1: the tests do not put
#    the tree's python/ on sys.path) with torch required (CK_REQUIRE_TORCH=1: a missing torch
#    fails instead of skipping): the ops against float64 references, torch.library.opcheck,
#    torch.compile(fullgraph=True), the modules, search and scores, and the gloo tests with 1, 2
#    and 3 processes.
# Without the venv and without network, step 1 fails and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.15.0
NUMPY_VERSION=2.4.6
SETUPTOOLS_VERSION=84.2.1
venv="${CK_TORCH_VENV:-$HOME/.cache/contrastive-kernels/torch-venv}"
py="$venv/bin/python"

if [ ! -x "$py" ]; then
  echo "python-test.sh: creating $venv"
  python3 -m venv "$venv"
fi
pinned() {
  "$py" - "$TORCH_VERSION" "$NUMPY_VERSION" "$SETUPTOOLS_VERSION" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
want = dict(zip(("torch", "numpy", "setuptools"), sys.argv[1:]))
sys.exit(0 if all(version(k).split("+")[0] == v for k, v in want.items()) else 1)
PY
}
if ! pinned; then
  echo "python-test.sh: installing torch==$TORCH_VERSION numpy==$NUMPY_VERSION setuptools==$SETUPTOOLS_VERSION into $venv (about 2.5 GB the first time)"
  if ! "$py" -m pip install --quiet "torch==$TORCH_VERSION" "numpy==$NUMPY_VERSION" "setuptools==$SETUPTOOLS_VERSION"; then
    echo "python-test.sh: could not install the pinned torch / numpy / setuptools into $venv from PyPI" >&2
    echo "  (no network? CI has it; locally, run once with network, or set CK_TORCH_TESTS=0 to skip these tests)" >&2
    exit 1
  fi
fi

echo "== pip wheel . (then into a new venv with no torch: the wheel alone)"
wheel_dir="$(mktemp -d)"
fresh="$(mktemp -d)"
trap 'rm -rf "$wheel_dir" "$fresh"' EXIT
"$py" -m pip wheel --quiet --no-build-isolation --no-deps -w "$wheel_dir" .
python3 - "$wheel_dir" <<'PY'
import pathlib, sys, zipfile
wheels = list(pathlib.Path(sys.argv[1]).glob("*.whl"))
assert len(wheels) == 1, wheels
name = wheels[0].name
assert "-py3-none-" in name and not name.endswith("-any.whl"), f"{name}: not tagged for a platform (the wheel holds native code)"
files = zipfile.ZipFile(wheels[0]).namelist()
assert "contrastive_kernels/libcontrastive_kernels.so" in files, f"{name}: no shared library inside ({files})"
print(f"{name}: {len(files)} files, the shared library inside")
PY
python3 -m venv "$fresh/venv"
"$fresh/venv/bin/python" -m pip install --quiet --no-index --no-deps "$wheel_dir"/*.whl
(cd "$fresh" && "$fresh/venv/bin/python" - <<'PY'
import contrastive_kernels as ck
assert "site-packages" in str(ck.library_path()), ck.library_path()
assert ck.__version__ == ck.version(), (ck.__version__, ck.version())
report = ck.detection_report([0.1, 0.2, 0.3], [0.9, 0.8])  # through the bundled library, no torch
assert report["auroc"] == 1.0, report
print(f"the wheel in a new venv: contrastive_kernels {ck.__version__}, its library loads without torch")
PY
)

echo "== pip install . (into $venv)"
"$py" -m pip install --quiet --no-build-isolation --no-deps --force-reinstall .
"$py" - <<'PY'
import contrastive_kernels as ck, sys
path = ck.library_path()
assert "site-packages" in str(path), f"the package loads {path}, not its own copy"
assert ck.__version__ == ck.version(), (ck.__version__, ck.version())
print(f"contrastive_kernels {ck.__version__}: {path}")
PY

echo "== python -m unittest (python/tests, the installed package, torch $TORCH_VERSION, CPU)"
CK_TEST_INSTALLED=1 CK_REQUIRE_TORCH=1 "$py" -m unittest discover -v -s python/tests -t python/tests 2>&1
