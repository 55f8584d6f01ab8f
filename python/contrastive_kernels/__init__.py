"""contrastive-kernels from Python: ctypes over the library's C ABI (include/contrastive_kernels.h).

The package holds the library's cdylib (``pip install .`` builds it with cargo); from the
repository, ``cargo build --release --lib``'s copy in target/release is used, and
``CONTRASTIVE_KERNELS_LIB`` points elsewhere. Without PyTorch: the library's presets, metrics and
argument checks. With PyTorch: the loss forward / backward and top-k as ``torch.library`` ops
(``torch.ops.contrastive_kernels.*``, fake implementations and autograd registered) that run the
fused kernels on CUDA tensors (on PyTorch's current stream) and the library's f64 CPU oracle on CPU
tensors; ``nn`` modules for the usual losses (NT-Xent, SupCon, FIRM, OECL, outlier exposure,
cluster-aware); a kNN search returning ``(D, I)`` like FAISS with the anomaly scores; and
``distributed``: the losses over a batch gathered from every rank, and a sharded bank search.
Every argument is checked here (naming it) and again by the library, whose errors arrive as
:class:`CkError` with its message.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from . import _abi
from ._abi import (  # noqa: F401  (re-exported: the constants of the C header)
    CK_BF16,
    CK_F16,
    CK_F32,
    CK_OK,
    ROLE_ANCHOR,
    ROLE_NEGATIVE_ONLY,
    ROLE_NORM_PENALTY_ONLY,
)

__all__ = [
    "CkError",
    "detection_report",
    "topk",
    "LossConfig",
    "ContrastiveLossFunction",
    "contrastive_loss",
    "device_check",
    "load_library",
    "library_path",
    "version",
    "__version__",
]

STATUS_NAMES = {v: k for k, v in _abi.defines().items() if k == "CK_OK" or k.startswith("CK_ERR_")}
GEOMETRIES = {"self": _abi.CK_GEOMETRY_SELF, "pairwise": _abi.CK_GEOMETRY_PAIRWISE}
REDUCTIONS = {"mean": _abi.CK_REDUCTION_MEAN, "sum": _abi.CK_REDUCTION_SUM, "per_anchor": _abi.CK_REDUCTION_PER_ANCHOR}
EMPTY_POSITIVES = {"error": _abi.CK_EMPTY_POSITIVES_ERROR, "zero": _abi.CK_EMPTY_POSITIVES_ZERO}
LOSS_KINDS = {
    "nt_xent": _abi.CK_LOSS_NT_XENT,
    "supcon": _abi.CK_LOSS_SUPCON,
    "firm": _abi.CK_LOSS_FIRM,
    "firm_pairwise": _abi.CK_LOSS_FIRM_PAIRWISE,
    "oecl": _abi.CK_LOSS_OECL,
    "outlier_exposure": _abi.CK_LOSS_OUTLIER_EXPOSURE,
    "cluster_aware": _abi.CK_LOSS_CLUSTER_AWARE,
}

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parents[1]


def _read_version() -> str:
    """The crate's version: _version.py written by the package build (setup.py reads Cargo.toml),
    else Cargo.toml itself when running from the repository."""
    try:
        from ._version import __version__ as v  # type: ignore[import-not-found]

        return v
    except ImportError:
        pass
    cargo = _REPO / "Cargo.toml"
    if cargo.exists():
        m = re.search(r'^\[package\][^\[]*?^version\s*=\s*"([^"]+)"', cargo.read_text(), re.M | re.S)
        if m:
            return m.group(1)
    return "0+unknown"


__version__ = _read_version()


class CkError(RuntimeError):
    """A failed library call: ``status`` is the CK_ERR_* code, the message the library's."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{STATUS_NAMES.get(status, status)}: {message}")
        self.status = status
        self.message = message


# Kept under their former names for scripts that used them.
_LossConfig = _abi.CkLossConfig
_LossInputs = _abi.CkLossInputs
_DetectionReport = _abi.CkDetectionReport

_lib: Optional[ctypes.CDLL] = None
_LIB_NAME = "libcontrastive_kernels.so"


def _candidate_paths() -> list:
    """Where the cdylib is looked for, in order: $CONTRASTIVE_KERNELS_LIB, the copy packaged next
    to this file (pip install), the repository's target/release (tests from the tree)."""
    env = os.environ.get("CONTRASTIVE_KERNELS_LIB")
    if env:
        return [Path(env)]
    return [_HERE / _LIB_NAME, _REPO / "target" / "release" / _LIB_NAME]


def library_path() -> Path:
    """The cdylib :func:`load_library` loads (the first candidate that exists)."""
    candidates = _candidate_paths()
    for path in candidates:
        if path.exists():
            return path
    raise FileNotFoundError(
        "the contrastive-kernels library was not found (looked at "
        + ", ".join(str(p) for p in candidates)
        + "): `pip install .` from the repository, `cargo build --release --lib`, or set CONTRASTIVE_KERNELS_LIB"
    )


def load_library(path: Optional[os.PathLike] = None) -> ctypes.CDLL:
    """Loads the cdylib once (``path``, else $CONTRASTIVE_KERNELS_LIB, else the packaged copy,
    else the repository's target/release) and declares every function's signature."""
    global _lib
    if _lib is not None and path is None:
        return _lib
    path = Path(path) if path is not None else library_path()
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build it with `cargo build --release --lib` or set CONTRASTIVE_KERNELS_LIB")
    lib = ctypes.CDLL(str(path))
    for name, (argtypes, restype) in _abi.SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            if name in _abi.OPTIONAL:
                continue
            raise
        fn.argtypes = argtypes
        fn.restype = restype
    _lib = lib
    return lib


def _host_function(name: str):
    """A host entry point of the C ABI, or a clear error when the loaded library predates it."""
    lib = load_library()
    try:
        return getattr(lib, name)
    except AttributeError:
        raise RuntimeError(
            f"{name}: the loaded library ({library_path()}) has no host entry points; rebuild it "
            "(`cargo build --release --lib`, or reinstall the package)"
        ) from None


def _check(status: int) -> None:
    if status != CK_OK:
        message = load_library().ck_last_error().decode("utf-8", "replace")
        raise CkError(status, message)


def version() -> str:
    return load_library().ck_version().decode()


def device_check(device: int = 0) -> Optional[CkError]:
    """None when ``device`` can run the kernels, else the reason as a CkError."""
    status = load_library().ck_device_check(device)
    if status == CK_OK:
        return None
    return CkError(status, load_library().ck_last_error().decode("utf-8", "replace"))


@dataclass(frozen=True)
class LossConfig:
    """A loss of DESIGN.md section 3. Build it with :meth:`preset`, adjust with ``dataclasses.replace``."""

    geometry: str = "self"
    temperature: float = 0.5
    scale: float = 1.0
    use_labels: bool = False
    reduction: str = "mean"
    empty_positives: str = "error"
    norm_penalty: float = 0.0

    @staticmethod
    def preset(kind: str, temperature: float, extra: float = 0.0, **changes) -> "LossConfig":
        """``kind`` in LOSS_KINDS; ``extra`` is SupCon's base temperature or OECL's alpha."""
        if kind not in LOSS_KINDS:
            raise ValueError(f"kind: one of {sorted(LOSS_KINDS)}, got {kind!r}")
        if kind == "supcon" and extra == 0.0:
            extra = 0.07
        raw = _LossConfig()
        _check(load_library().ck_loss_preset(LOSS_KINDS[kind], temperature, extra, ctypes.byref(raw)))
        config = LossConfig(
            geometry={v: k for k, v in GEOMETRIES.items()}[raw.geometry],
            temperature=raw.temperature,
            scale=raw.scale,
            use_labels=bool(raw.use_labels),
            reduction={v: k for k, v in REDUCTIONS.items()}[raw.reduction],
            empty_positives={v: k for k, v in EMPTY_POSITIVES.items()}[raw.empty_positives],
            norm_penalty=raw.norm_penalty,
        )
        return replace(config, **changes)

    def codes(self) -> tuple:
        """(geometry, temperature, scale, use_labels, reduction, empty_positives, norm_penalty) as
        the C ABI's codes, checked (plain Python: torch.compile traces it)."""
        for name, table in (("geometry", GEOMETRIES), ("reduction", REDUCTIONS), ("empty_positives", EMPTY_POSITIVES)):
            if getattr(self, name) not in table:
                raise ValueError(f"{name}: one of {sorted(table)}, got {getattr(self, name)!r}")
        for name in ("temperature", "scale", "norm_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name}: expected a number, got {value!r}")
        return (
            GEOMETRIES[self.geometry],
            float(self.temperature),
            float(self.scale),
            bool(self.use_labels),
            REDUCTIONS[self.reduction],
            EMPTY_POSITIVES[self.empty_positives],
            float(self.norm_penalty),
        )

    def to_c(self) -> _LossConfig:
        g, t, s, u, r, e, p = self.codes()
        return _LossConfig(g, t, s, int(u), r, e, p)


# ---------------------------------------------------------------------------------------------
# Tensor checks. They use only .shape, .dtype, .device, .is_contiguous() and .data_ptr(), so the
# tests exercise them with stand-in objects on machines without torch or a GPU.

_FLOAT_DTYPES = {"torch.float32": CK_F32, "torch.float16": CK_F16, "torch.bfloat16": CK_BF16}
_DEVICE_TYPES = ("cpu", "cuda")


def _dtype_code(name: str, t) -> int:
    code = _FLOAT_DTYPES.get(str(t.dtype))
    if code is None:
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {t.dtype}")
    return code


def _check_tensor(name: str, t, *, shape, dtype: Optional[str] = None, device=None):
    if t is None:
        return
    if getattr(t.device, "type", None) not in _DEVICE_TYPES:
        raise ValueError(f"{name}: expected a CPU or CUDA tensor, got one on {t.device}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the features' device), got {t.device}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if dtype is not None and str(t.dtype) != dtype:
        raise TypeError(f"{name}: expected {dtype}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (call .contiguous())")


def _ptr(t) -> Optional[int]:
    return None if t is None else t.data_ptr()


def describe_inputs(config: LossConfig, features, instance, label=None, role=None, weight=None, keys=None, key_instance=None, key_label=None, centers=None, proto_of=None, anchor_rows=None) -> _LossInputs:
    """Checks the tensors of one loss evaluation (all on one CPU or CUDA device; ids int32, roles
    uint8, weights float32) and returns their C description. ``anchor_rows`` (self geometry):
    only the first rows are anchors, the others columns only; None: every row."""
    if len(tuple(features.shape)) != 2:
        raise ValueError(f"features: expected an n x d matrix, got shape {tuple(features.shape)}")
    n, d = tuple(features.shape)
    code = _dtype_code("features", features)
    _check_tensor("features", features, shape=(n, d))
    dev = features.device
    if instance is None:
        raise ValueError("instance: required (one int32 id per row)")
    _check_tensor("instance", instance, shape=(n,), dtype="torch.int32", device=dev)
    if config.use_labels and label is None:
        raise ValueError("label: required by this loss (it makes positives from labels)")
    _check_tensor("label", label, shape=(n,), dtype="torch.int32", device=dev)
    _check_tensor("role", role, shape=(n,), dtype="torch.uint8", device=dev)
    _check_tensor("weight", weight, shape=(n,), dtype="torch.float32", device=dev)
    n_keys = 0
    if config.geometry == "pairwise":
        if keys is None or key_instance is None:
            raise ValueError("keys, key_instance: required by the pairwise geometry")
        if len(tuple(keys.shape)) != 2:
            raise ValueError(f"keys: expected an n_keys x d matrix, got shape {tuple(keys.shape)}")
        n_keys = tuple(keys.shape)[0]
        _check_tensor("keys", keys, shape=(n_keys, d), dtype=str(features.dtype), device=dev)
        _check_tensor("key_instance", key_instance, shape=(n_keys,), dtype="torch.int32", device=dev)
        if config.use_labels and key_label is None:
            raise ValueError("key_label: required by this loss")
        _check_tensor("key_label", key_label, shape=(n_keys,), dtype="torch.int32", device=dev)
    elif keys is not None:
        raise ValueError("keys: only the pairwise geometry takes keys")
    n_centers = 0
    if centers is not None:
        if len(tuple(centers.shape)) != 2:
            raise ValueError(f"centers: expected a K x d matrix, got shape {tuple(centers.shape)}")
        n_centers = tuple(centers.shape)[0]
        _check_tensor("centers", centers, shape=(n_centers, d), dtype=str(features.dtype), device=dev)
        if proto_of is None:
            raise ValueError("proto_of: required with centers (each row's prototype, or -1)")
        _check_tensor("proto_of", proto_of, shape=(n,), dtype="torch.int32", device=dev)
    elif proto_of is not None:
        raise ValueError("proto_of: only with centers (the prototype rows)")
    _check_anchor_rows(anchor_rows, n, config.geometry == "pairwise")
    return _LossInputs(
        code, n, d, _ptr(features), _ptr(instance), _ptr(label), _ptr(role), _ptr(weight),
        n_keys, _ptr(keys), _ptr(key_instance), _ptr(key_label), n_centers, _ptr(centers), _ptr(proto_of),
        0 if anchor_rows is None else anchor_rows,
    )


def _check_anchor_rows_type(anchor_rows) -> None:
    """anchor_rows: None or an int (not a bool)."""
    if anchor_rows is not None and (isinstance(anchor_rows, bool) or not isinstance(anchor_rows, int)):
        raise TypeError(f"anchor_rows: expected an int or None, got {type(anchor_rows).__name__}")


def _check_anchor_rows(anchor_rows, n: int, pairwise: bool) -> None:
    """anchor_rows: None (every row) or an int in 1..=n, self geometry only."""
    _check_anchor_rows_type(anchor_rows)
    if anchor_rows is None:
        return
    if pairwise:
        raise ValueError("anchor_rows: only the self geometry takes anchor_rows (the pairwise anchors are the features: pass only those)")
    if not 1 <= anchor_rows <= n:
        raise ValueError(f"anchor_rows: must be in 1..={n} (the feature rows; None for every row), got {anchor_rows}")


def detection_report(inlier_scores, outlier_scores) -> dict:
    """AUROC, AUPR and FPR at 95% TPR (anomalies positive, higher = more anomalous) of two
    sequences of scores (lists, numpy arrays or tensors), by the library's metrics (no GPU needed)."""
    inl = [float(v) for v in _flat(inlier_scores)]
    out = [float(v) for v in _flat(outlier_scores)]
    a = (ctypes.c_double * max(len(inl), 1))(*inl)
    b = (ctypes.c_double * max(len(out), 1))(*out)
    r = _DetectionReport()
    _check(load_library().ck_detection_report(a, len(inl), b, len(out), ctypes.byref(r)))
    return {"auroc": r.auroc, "aupr": r.aupr, "fpr_at_95_tpr": r.fpr_at_95_tpr}


def _flat(values):
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().double().reshape(-1).tolist()
    elif hasattr(values, "tolist") and hasattr(values, "reshape"):  # a numpy array
        values = values.reshape(-1).tolist()
    return values


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only where torch is missing
        raise ImportError("contrastive_kernels' tensor functions need PyTorch (pip install torch)") from e
    return torch


# ---------------------------------------------------------------------------------------------
# With PyTorch: the registered ops (contrastive_kernels.ops), the modules (nn), the search and
# scores (search) and the distributed forms (distributed). Without it the ctypes layer above
# still works (python/tests/test_module.py runs with the standard library alone).

try:
    import torch as _torch_module  # noqa: F401
except ImportError:  # pragma: no cover - exercised only where torch is missing
    _torch_module = None

if _torch_module is not None:
    from . import ops  # noqa: E402  (registers the torch.library ops)
    from .ops import contrastive_loss, topk  # noqa: E402,F401
    from .nn import (  # noqa: E402,F401
        ClusterAwareLoss,
        ContrastiveLoss,
        FIRMLoss,
        NTXentLoss,
        OECLLoss,
        OutlierExposureLoss,
        SupConLoss,
    )
    from .search import (  # noqa: E402,F401
        KNNIndex,
        csi_score,
        knn_distance,
        knn_search,
        mcod_score,
        mean_topk_similarity,
        norm_score,
        norm_weighted_mean_topk,
    )
    from . import distributed  # noqa: E402,F401
    from . import search as _search  # noqa: E402

    __all__ += [
        "ops",
        "distributed",
        "ClusterAwareLoss",
        "ContrastiveLoss",
        "FIRMLoss",
        "NTXentLoss",
        "OECLLoss",
        "OutlierExposureLoss",
        "SupConLoss",
    ] + _search.__all__  # the search module's names, imported above
else:

    def contrastive_loss(*args, **kwargs):
        """Needs PyTorch."""
        _torch()

    def topk(*args, **kwargs):
        """Needs PyTorch."""
        _torch()


def ContrastiveLossFunction():
    """Former entry point (an autograd.Function); the loss is now the registered op
    ``torch.ops.contrastive_kernels.contrastive_forward`` with registered autograd: use
    :func:`contrastive_loss`."""
    raise RuntimeError("ContrastiveLossFunction: replaced by contrastive_kernels.contrastive_loss (a torch.library op with autograd)")
