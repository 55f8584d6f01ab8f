"""Builds the library with cargo and puts its cdylib into the package (see pyproject.toml for why
setuptools). Environment:

  CONTRASTIVE_KERNELS_PREBUILT=path/to/libcontrastive_kernels.so   ship that file, skip cargo
  CONTRASTIVE_KERNELS_CUDA_ARCHS=...                                passed to build.rs as usual
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel

ROOT = Path(__file__).resolve().parent
LIB = "libcontrastive_kernels.so"


def crate_version() -> str:
    """[package] version of Cargo.toml: the one source of the version."""
    text = (ROOT / "Cargo.toml").read_text()
    m = re.search(r'^\[package\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
    if not m:
        raise RuntimeError("Cargo.toml: no [package] version")
    return m.group(1)


def cargo_env() -> dict:
    """The environment without pip's build-isolation folders on PATH: build.rs reruns nvcc when
    PATH changes, and these folders are new on every `pip install`."""
    env = dict(os.environ)
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if "pip-build-env-" not in p]
    env["PATH"] = os.pathsep.join(parts)
    return env


def build_library() -> Path:
    prebuilt = os.environ.get("CONTRASTIVE_KERNELS_PREBUILT")
    if prebuilt:
        path = Path(prebuilt)
        if not path.is_file():
            raise RuntimeError(f"CONTRASTIVE_KERNELS_PREBUILT: {path} is not a file")
        return path
    if shutil.which("cargo", path=cargo_env()["PATH"]) is None:
        raise RuntimeError("cargo not found: building contrastive-kernels needs Rust (https://rustup.rs)")
    env = cargo_env()
    # The project's toolchain script: installs the pinned nvcc (PyPI wheels) when none is found.
    subprocess.run(["bash", "scripts/ensure-nvcc.sh"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cargo", "build", "--release", "--lib"], cwd=ROOT, env=env, check=True)
    target = Path(env.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / "release" / LIB


class BuildPyWithCargo(build_py):
    """build_py, then the cdylib and _version.py into the built package."""

    def run(self):
        super().run()
        package = Path(self.build_lib) / "contrastive_kernels"
        package.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build_library(), package / LIB)
        (package / "_version.py").write_text(f'__version__ = "{crate_version()}"\n')


class BinaryDistribution(Distribution):
    """Native code inside: installed to platlib (the wheel's root), not as pure-Python data."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    """Not pure (a native library inside) but independent of the Python version and ABI."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    version=crate_version(),
    distclass=BinaryDistribution,
    cmdclass={"build_py": BuildPyWithCargo, "bdist_wheel": PlatformWheel},
)
