"""contrastive-kernels from Python: a thin ctypes layer over the C ABI (include/contrastive_kernels.h).

Nothing here is compiled: the module loads the library's cdylib (``cargo build --release`` writes
``target/release/libcontrastive_kernels.so``; ``CONTRASTIVE_KERNELS_LIB`` points elsewhere) and
wraps its functions. With PyTorch installed, :class:`ContrastiveLossFunction` and
:func:`contrastive_loss` run the fused loss forward and backward on CUDA tensors, on PyTorch's
current stream, with autograd. Every argument is checked here (dtype, device, contiguity, shapes)
and again by the library, whose errors arrive as :class:`CkError` with its message.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

__all__ = [
    "CkError",
    "detection_report",
    "topk",
    "LossConfig",
    "ContrastiveLossFunction",
    "contrastive_loss",
    "device_check",
    "load_library",
    "version",
]

# Status codes, dtypes and enumerations: the #defines of include/contrastive_kernels.h.
CK_OK = 0
STATUS_NAMES = {
    0: "CK_OK",
    1: "CK_ERR_INVALID_ARGUMENT",
    2: "CK_ERR_SHAPE",
    3: "CK_ERR_NO_DRIVER",
    4: "CK_ERR_NO_DEVICE",
    5: "CK_ERR_NOT_COMPILED",
    6: "CK_ERR_CUDA",
    7: "CK_ERR_INTERNAL",
}
CK_F32, CK_F16, CK_BF16 = 0, 1, 2
GEOMETRIES = {"self": 0, "pairwise": 1}
REDUCTIONS = {"mean": 0, "sum": 1, "per_anchor": 2}
EMPTY_POSITIVES = {"error": 0, "zero": 1}
LOSS_KINDS = {
    "nt_xent": 0,
    "supcon": 1,
    "firm": 2,
    "firm_pairwise": 3,
    "oecl": 4,
    "outlier_exposure": 5,
    "cluster_aware": 6,
}
ROLE_ANCHOR, ROLE_NEGATIVE_ONLY, ROLE_NORM_PENALTY_ONLY = 0, 1, 2


class CkError(RuntimeError):
    """A failed library call: ``status`` is the CK_ERR_* code, the message the library's."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{STATUS_NAMES.get(status, status)}: {message}")
        self.status = status
        self.message = message


class _LossConfig(ctypes.Structure):
    _fields_ = [
        ("geometry", ctypes.c_int32),
        ("temperature", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("use_labels", ctypes.c_int32),
        ("reduction", ctypes.c_int32),
        ("empty_positives", ctypes.c_int32),
        ("norm_penalty", ctypes.c_float),
    ]


class _LossInputs(ctypes.Structure):
    _fields_ = [
        ("dtype", ctypes.c_int32),
        ("n", ctypes.c_int64),
        ("d", ctypes.c_int64),
        ("features", ctypes.c_void_p),
        ("instance", ctypes.c_void_p),
        ("label", ctypes.c_void_p),
        ("role", ctypes.c_void_p),
        ("weight", ctypes.c_void_p),
        ("n_keys", ctypes.c_int64),
        ("keys", ctypes.c_void_p),
        ("key_instance", ctypes.c_void_p),
        ("key_label", ctypes.c_void_p),
        ("n_centers", ctypes.c_int64),
        ("centers", ctypes.c_void_p),
        ("proto_of", ctypes.c_void_p),
    ]


_P = ctypes.c_void_p
_SIGNATURES = {
    "ck_version": ([], ctypes.c_char_p),
    "ck_last_error": ([], ctypes.c_char_p),
    "ck_status_name": ([ctypes.c_int32], ctypes.c_char_p),
    "ck_device_check": ([ctypes.c_int32], ctypes.c_int32),
    "ck_loss_preset": ([ctypes.c_int32, ctypes.c_float, ctypes.c_float, ctypes.POINTER(_LossConfig)], ctypes.c_int32),
    "ck_contrastive_forward": (
        [ctypes.c_int32, _P, ctypes.POINTER(_LossConfig), ctypes.POINTER(_LossInputs), _P, _P, _P, _P, ctypes.POINTER(ctypes.c_float)],
        ctypes.c_int32,
    ),
    "ck_contrastive_backward": (
        [ctypes.c_int32, _P, ctypes.POINTER(_LossConfig), ctypes.POINTER(_LossInputs), _P, _P, _P, _P, _P, _P],
        ctypes.c_int32,
    ),
    "ck_l2_normalize": ([ctypes.c_int32, _P, ctypes.c_int32, _P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, _P, _P], ctypes.c_int32),
    "ck_topk": (
        [ctypes.c_int32, _P, ctypes.c_int32, _P, ctypes.c_int64, _P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, ctypes.c_int64, _P, _P],
        ctypes.c_int32,
    ),
    "ck_detection_report": (
        [ctypes.POINTER(ctypes.c_double), ctypes.c_int64, ctypes.POINTER(ctypes.c_double), ctypes.c_int64, ctypes.c_void_p],
        ctypes.c_int32,
    ),
    "ck_similarity": (
        [ctypes.c_int32, _P, ctypes.c_int32, _P, ctypes.c_int64, _P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, _P, ctypes.c_float, ctypes.c_int32, ctypes.c_float],
        ctypes.c_int32,
    ),
}

_lib: Optional[ctypes.CDLL] = None


def _default_library_path() -> Path:
    env = os.environ.get("CONTRASTIVE_KERNELS_LIB")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    return repo / "target" / "release" / "libcontrastive_kernels.so"


def load_library(path: Optional[os.PathLike] = None) -> ctypes.CDLL:
    """Loads the cdylib once (``path``, else $CONTRASTIVE_KERNELS_LIB, else target/release)."""
    global _lib
    if _lib is not None and path is None:
        return _lib
    path = Path(path) if path is not None else _default_library_path()
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: build it with `cargo build --release` or set CONTRASTIVE_KERNELS_LIB"
        )
    lib = ctypes.CDLL(str(path))
    for name, (argtypes, restype) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype
    _lib = lib
    return lib


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

    def to_c(self) -> _LossConfig:
        for name, table in (("geometry", GEOMETRIES), ("reduction", REDUCTIONS), ("empty_positives", EMPTY_POSITIVES)):
            if getattr(self, name) not in table:
                raise ValueError(f"{name}: one of {sorted(table)}, got {getattr(self, name)!r}")
        return _LossConfig(
            GEOMETRIES[self.geometry],
            self.temperature,
            self.scale,
            int(self.use_labels),
            REDUCTIONS[self.reduction],
            EMPTY_POSITIVES[self.empty_positives],
            self.norm_penalty,
        )


# ---------------------------------------------------------------------------------------------
# Tensor checks. They use only .shape, .dtype, .device, .is_contiguous() and .data_ptr(), so the
# tests exercise them with stand-in objects on machines without torch or a GPU.

_FLOAT_DTYPES = {"torch.float32": CK_F32, "torch.float16": CK_F16, "torch.bfloat16": CK_BF16}


def _dtype_code(name: str, t) -> int:
    code = _FLOAT_DTYPES.get(str(t.dtype))
    if code is None:
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {t.dtype}")
    return code


def _check_tensor(name: str, t, *, shape, dtype: Optional[str] = None, device=None):
    if t is None:
        return
    if getattr(t.device, "type", None) != "cuda":
        raise ValueError(f"{name}: expected a CUDA tensor, got one on {t.device}")
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


def describe_inputs(config: LossConfig, features, instance, label=None, role=None, weight=None, keys=None, key_instance=None, key_label=None, centers=None, proto_of=None) -> _LossInputs:
    """Checks the tensors of one loss evaluation and returns their C description."""
    if len(tuple(features.shape)) != 2:
        raise ValueError(f"features: expected an n x d matrix, got shape {tuple(features.shape)}")
    n, d = tuple(features.shape)
    code = _dtype_code("features", features)
    _check_tensor("features", features, shape=(n, d))
    dev = features.device
    _check_tensor("instance", instance, shape=(n,), dtype="torch.int32", device=dev)
    if instance is None:
        raise ValueError("instance: required (one int32 id per row)")
    if config.use_labels and label is None:
        raise ValueError("label: required by this loss (it makes positives from labels)")
    _check_tensor("label", label, shape=(n,), dtype="torch.int32", device=dev)
    _check_tensor("role", role, shape=(n,), dtype="torch.uint8", device=dev)
    _check_tensor("weight", weight, shape=(n,), dtype="torch.float32", device=dev)
    n_keys = 0
    if config.geometry == "pairwise":
        if keys is None or key_instance is None:
            raise ValueError("keys, key_instance: required by the pairwise geometry")
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
        n_centers = tuple(centers.shape)[0]
        _check_tensor("centers", centers, shape=(n_centers, d), dtype=str(features.dtype), device=dev)
        if proto_of is None:
            raise ValueError("proto_of: required with centers (each row's prototype, or -1)")
        _check_tensor("proto_of", proto_of, shape=(n,), dtype="torch.int32", device=dev)
    return _LossInputs(
        code, n, d, _ptr(features), _ptr(instance), _ptr(label), _ptr(role), _ptr(weight),
        n_keys, _ptr(keys), _ptr(key_instance), _ptr(key_label), n_centers, _ptr(centers), _ptr(proto_of),
    )


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only where torch is missing
        raise ImportError("contrastive_kernels' autograd functions need PyTorch") from e
    return torch


def _make_function():
    torch = _torch()

    class _ContrastiveLossFunction(torch.autograd.Function):
        """The fused loss with autograd. Returns the reduced loss (0-dim) for mean / sum, or the
        per-anchor losses (n) for per_anchor. Gradients flow to features, keys and centers."""

        @staticmethod
        def forward(ctx, config: LossConfig, features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of):
            c_config = config.to_c()
            inputs = describe_inputs(config, features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of)
            n = features.shape[0]
            dev = features.device
            loss = torch.empty((), dtype=torch.float32, device=dev)
            per_anchor = torch.empty(n, dtype=torch.float32, device=dev)
            lse = torch.empty(n, dtype=torch.float32, device=dev)
            positives = torch.empty(n, dtype=torch.int32, device=dev)
            stream = torch.cuda.current_stream(dev).cuda_stream
            _check(
                load_library().ck_contrastive_forward(
                    dev.index or 0, stream, ctypes.byref(c_config), ctypes.byref(inputs),
                    loss.data_ptr(), per_anchor.data_ptr(), lse.data_ptr(), positives.data_ptr(), None,
                )
            )
            ctx.config = config
            ctx.save_for_backward(features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of, lse, positives)
            return per_anchor if config.reduction == "per_anchor" else loss

        @staticmethod
        def backward(ctx, grad_output):
            (features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of, lse, positives) = ctx.saved_tensors
            config = ctx.config
            c_config = config.to_c()
            inputs = describe_inputs(config, features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of)
            upstream = grad_output.detach().to(dtype=torch.float32).contiguous()
            grad_features = torch.empty_like(features)
            grad_keys = torch.empty_like(keys) if keys is not None else None
            grad_centers = torch.empty_like(centers) if centers is not None else None
            dev = features.device
            stream = torch.cuda.current_stream(dev).cuda_stream
            _check(
                load_library().ck_contrastive_backward(
                    dev.index or 0, stream, ctypes.byref(c_config), ctypes.byref(inputs),
                    lse.data_ptr(), positives.data_ptr(), upstream.data_ptr(),
                    grad_features.data_ptr(), _ptr(grad_keys), _ptr(grad_centers),
                )
            )
            return (None, grad_features, None, None, None, None, grad_keys, None, None, grad_centers, None)

    return _ContrastiveLossFunction


_function = None


def ContrastiveLossFunction():
    """The torch.autograd.Function class (created on first use, so importing needs no torch)."""
    global _function
    if _function is None:
        _function = _make_function()
    return _function


def contrastive_loss(features, instance, *, config: LossConfig, label=None, role=None, weight=None, keys=None, key_instance=None, key_label=None, centers=None, proto_of=None):
    """The fused loss of ``config`` on CUDA tensors, differentiable with respect to features,
    keys and centers. Ids are int32, roles uint8, weights float32, one per row."""
    return ContrastiveLossFunction().apply(config, features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of)


class _DetectionReport(ctypes.Structure):
    _fields_ = [("auroc", ctypes.c_double), ("aupr", ctypes.c_double), ("fpr_at_95_tpr", ctypes.c_double)]


def detection_report(inlier_scores, outlier_scores) -> dict:
    """AUROC, AUPR and FPR at 95% TPR (anomalies positive, higher = more anomalous) of two
    sequences of scores, by the library's metrics (no GPU needed)."""
    inl = [float(v) for v in inlier_scores]
    out = [float(v) for v in outlier_scores]
    a = (ctypes.c_double * max(len(inl), 1))(*inl)
    b = (ctypes.c_double * max(len(out), 1))(*out)
    r = _DetectionReport()
    _check(load_library().ck_detection_report(a, len(inl), b, len(out), ctypes.byref(r)))
    return {"auroc": r.auroc, "aupr": r.aupr, "fpr_at_95_tpr": r.fpr_at_95_tpr}


def topk(queries, bank, k: int, *, normalized: bool = False, exclude_self: bool = False):
    """The k most similar bank rows of each query (cosine), exact, on CUDA tensors: returns
    (values float32 [nq, k] descending, indices int32 [nq, k], ties to the smaller index).
    ``exclude_self``: the queries are the bank's rows (leave-one-out scoring)."""
    torch = _torch()
    for name, t in (("queries", queries), ("bank", bank)):
        if len(tuple(t.shape)) != 2:
            raise ValueError(f"{name}: expected a matrix, got shape {tuple(t.shape)}")
    nq, d = tuple(queries.shape)
    nb = tuple(bank.shape)[0]
    code = _dtype_code("queries", queries)
    _check_tensor("queries", queries, shape=(nq, d))
    _check_tensor("bank", bank, shape=(nb, d), dtype=str(queries.dtype), device=queries.device)
    if not 1 <= k <= nb:
        raise ValueError(f"k: must be in 1..={nb} (the bank's rows), got {k}")
    dev = queries.device
    values = torch.empty((nq, k), dtype=torch.float32, device=dev)
    indices = torch.empty((nq, k), dtype=torch.int32, device=dev)
    stream = torch.cuda.current_stream(dev).cuda_stream
    _check(
        load_library().ck_topk(
            dev.index or 0, stream, code, queries.data_ptr(), nq, bank.data_ptr(), nb, d, k,
            int(normalized), 0 if exclude_self else -1, values.data_ptr(), indices.data_ptr(),
        )
    )
    return values, indices
