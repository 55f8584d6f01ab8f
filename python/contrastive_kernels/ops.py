"""The library's loss forward / backward and top-k as ``torch.library`` custom ops.

``torch.ops.contrastive_kernels.contrastive_forward`` / ``contrastive_backward`` / ``topk`` each
have one implementation for both device types: CUDA tensors go to the fused kernels through the
device entry points of the C ABI (on PyTorch's current stream), CPU tensors to the library's f64
oracle through its host entry points (``ck_*_host``). Fake (meta) implementations give the output
shapes to torch.compile / FakeTensor, and the forward's autograd is registered (its backward is
the backward op), so ``torch.library.opcheck`` and ``torch.compile(fullgraph=True)`` work.

Ids (instance, label, key ids, proto_of) may be int32 or int64 (int64 values must fit in int32);
roles uint8 or any integer type (values 0, 1, 2); weights any float dtype (used as float32).
Features, keys and centers share one dtype: float32, float16 or bfloat16.
"""

from __future__ import annotations

import ctypes
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _abi
from . import (
    EMPTY_POSITIVES,
    GEOMETRIES,
    REDUCTIONS,
    LossConfig,
    _check,
    _check_anchor_rows,
    _check_anchor_rows_type,
    _host_function,
    describe_inputs,
    load_library,
)

__all__ = ["contrastive_loss", "topk", "contrastive_forward", "contrastive_backward", "topk_op"]

_GEOMETRY_NAMES = {v: k for k, v in GEOMETRIES.items()}
_REDUCTION_NAMES = {v: k for k, v in REDUCTIONS.items()}
_EMPTY_NAMES = {v: k for k, v in EMPTY_POSITIVES.items()}
_INT_DTYPES = (torch.int32, torch.int64)
_ROLE_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_FEATURE_DTYPES = {torch.float32: _abi.CK_F32, torch.float16: _abi.CK_F16, torch.bfloat16: _abi.CK_BF16}


def _config(geometry: int, temperature: float, scale: float, use_labels: bool, reduction: int, empty_positives: int, norm_penalty: float) -> LossConfig:
    for name, value, table in (
        ("geometry", geometry, _GEOMETRY_NAMES),
        ("reduction", reduction, _REDUCTION_NAMES),
        ("empty_positives", empty_positives, _EMPTY_NAMES),
    ):
        if value not in table:
            raise ValueError(f"{name}: one of {sorted(table)} ({', '.join(table.values())}), got {value!r}")
    return LossConfig(
        geometry=_GEOMETRY_NAMES[geometry],
        temperature=float(temperature),
        scale=float(scale),
        use_labels=bool(use_labels),
        reduction=_REDUCTION_NAMES[reduction],
        empty_positives=_EMPTY_NAMES[empty_positives],
        norm_penalty=float(norm_penalty),
    )


# ---------------------------------------------------------------------------------------------
# Shape checks (no data read: the fake implementations run them too) and conversions.


def _vector(name: str, t: Optional[Tensor], n: int, device, dtypes, what: str) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the features' device), got {t.device}")
    if tuple(t.shape) != (n,):
        raise ValueError(f"{name}: expected shape ({n},) ({what}), got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: expected {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")


def _matrix(name: str, t: Tensor, d: Optional[int], dtype, device) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a matrix (rows x d), got shape {tuple(t.shape)}")
    if dtype is None:
        if t.dtype not in _FEATURE_DTYPES:
            raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {t.dtype}")
    elif t.dtype != dtype:
        raise TypeError(f"{name}: expected {dtype} (the features' dtype), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the features' device), got {t.device}")
    if t.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"{name}: expected a CPU or CUDA tensor, got one on {t.device}")
    if d is not None and t.shape[1] != d:
        raise ValueError(f"{name}: expected {d} columns (the features' d), got shape {tuple(t.shape)}")


def _check_loss_shapes(features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of, geometry: int, use_labels: bool, anchor_rows: Optional[int] = None) -> None:
    _matrix("features", features, None, None, None)
    n, d = features.shape
    dev, dt = features.device, features.dtype
    if instance is None:
        raise ValueError("instance: required (one id per feature row)")
    _vector("instance", instance, n, dev, _INT_DTYPES, "one id per feature row")
    if use_labels and label is None:
        raise ValueError("label: required by this loss (it makes positives from labels)")
    _vector("label", label, n, dev, _INT_DTYPES, "one label per feature row, -1 for none")
    _vector("role", role, n, dev, _ROLE_DTYPES, "one role per feature row: 0 anchor, 1 negative-only, 2 norm-penalty-only")
    _vector("weight", weight, n, dev, (torch.float32, torch.float64, torch.float16, torch.bfloat16), "one weight per feature row")
    if geometry == _abi.CK_GEOMETRY_PAIRWISE:
        if keys is None or key_instance is None:
            raise ValueError("keys, key_instance: required by the pairwise geometry")
        _matrix("keys", keys, d, dt, dev)
        _vector("key_instance", key_instance, keys.shape[0], dev, _INT_DTYPES, "one id per key row")
        if use_labels and key_label is None:
            raise ValueError("key_label: required by this loss (it makes positives from labels)")
        _vector("key_label", key_label, keys.shape[0], dev, _INT_DTYPES, "one label per key row")
    else:
        for name, t in (("keys", keys), ("key_instance", key_instance), ("key_label", key_label)):
            if t is not None:
                raise ValueError(f"{name}: only the pairwise geometry takes keys")
    if centers is not None:
        _matrix("centers", centers, d, dt, dev)
        if proto_of is None:
            raise ValueError("proto_of: required with centers (each row's prototype, or -1)")
        _vector("proto_of", proto_of, n, dev, _INT_DTYPES, "each feature row's prototype, or -1")
    elif proto_of is not None:
        raise ValueError("proto_of: only with centers (the prototype rows)")
    _check_anchor_rows(anchor_rows, n, geometry == _abi.CK_GEOMETRY_PAIRWISE)


def _ids32(name: str, t: Optional[Tensor]) -> Optional[Tensor]:
    if t is None:
        return None
    if t.dtype == torch.int64 and t.numel() > 0:
        lo, hi = int(t.min()), int(t.max())
        if lo < -(2**31) or hi >= 2**31:
            raise ValueError(f"{name}: int64 ids must fit in int32, got values in [{lo}, {hi}]")
    return t.to(torch.int32).contiguous()


def _roles8(t: Optional[Tensor]) -> Optional[Tensor]:
    if t is None:
        return None
    if t.dtype != torch.uint8 and t.numel() > 0:
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi > 2:
            raise ValueError(f"role: values are 0 (anchor), 1 (negative-only) or 2 (norm-penalty-only), got values in [{lo}, {hi}]")
    return t.to(torch.uint8).contiguous()


def _prepared(features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of, config: LossConfig, anchor_rows: Optional[int]):
    """Contiguous tensors of the library's dtypes, and their C description (kept alive together)."""
    t = dict(
        features=features.contiguous(),
        instance=_ids32("instance", instance),
        label=_ids32("label", label),
        role=_roles8(role),
        weight=None if weight is None else weight.to(torch.float32).contiguous(),
        keys=None if keys is None else keys.contiguous(),
        key_instance=_ids32("key_instance", key_instance),
        key_label=_ids32("key_label", key_label),
        centers=None if centers is None else centers.contiguous(),
        proto_of=_ids32("proto_of", proto_of),
    )
    return t, describe_inputs(config, **t, anchor_rows=anchor_rows)


def _cuda_call(device: torch.device):
    index = device.index if device.index is not None else torch.cuda.current_device()
    return index, ctypes.c_void_p(torch.cuda.current_stream(index).cuda_stream)


# ---------------------------------------------------------------------------------------------
# The ops.


@torch.library.custom_op("contrastive_kernels::contrastive_forward", mutates_args=())
def contrastive_forward(
    features: Tensor,
    instance: Tensor,
    label: Optional[Tensor],
    role: Optional[Tensor],
    weight: Optional[Tensor],
    keys: Optional[Tensor],
    key_instance: Optional[Tensor],
    key_label: Optional[Tensor],
    centers: Optional[Tensor],
    proto_of: Optional[Tensor],
    geometry: int,
    temperature: float,
    scale: float,
    use_labels: bool,
    reduction: int,
    empty_positives: int,
    norm_penalty: float,
    anchor_rows: Optional[int],
) -> Tuple[Tensor, Tensor, Tensor]:
    """The loss forward: (out, lse, positives). ``out`` is the reduced loss (0-dim float32) for
    mean / sum, the per-anchor losses (n float32) for per_anchor; lse (n float32) and positives
    (n int32) are what the backward needs. ``anchor_rows`` (self geometry, 1..=n): only the first
    anchor_rows rows are anchors (None: every row)."""
    config = _config(geometry, temperature, scale, use_labels, reduction, empty_positives, norm_penalty)
    _check_loss_shapes(features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of, geometry, use_labels, anchor_rows)
    tensors, inputs = _prepared(features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of, config, anchor_rows)
    c_config = config.to_c()
    n, dev = features.shape[0], features.device
    loss = torch.empty((), dtype=torch.float32, device=dev)
    per_anchor = torch.empty(n, dtype=torch.float32, device=dev)
    lse = torch.empty(n, dtype=torch.float32, device=dev)
    positives = torch.empty(n, dtype=torch.int32, device=dev)
    if dev.type == "cuda":
        index, stream = _cuda_call(dev)
        status = load_library().ck_contrastive_forward(
            index, stream, ctypes.byref(c_config), ctypes.byref(inputs),
            loss.data_ptr(), per_anchor.data_ptr(), lse.data_ptr(), positives.data_ptr(), None,
        )
    else:
        status = _host_function("ck_contrastive_forward_host")(
            ctypes.byref(c_config), ctypes.byref(inputs), loss.data_ptr(), per_anchor.data_ptr(), lse.data_ptr(), positives.data_ptr(),
        )
    _check(status)
    del tensors  # kept alive until the call has run (CUDA: queued on the same stream)
    return (per_anchor if reduction == _abi.CK_REDUCTION_PER_ANCHOR else loss), lse, positives


@contrastive_forward.register_fake
def _(features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of, geometry, temperature, scale, use_labels, reduction, empty_positives, norm_penalty, anchor_rows):
    _config(geometry, temperature, scale, use_labels, reduction, empty_positives, norm_penalty)
    _check_loss_shapes(features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of, geometry, use_labels, anchor_rows)
    n = features.shape[0]
    out_shape = (n,) if reduction == _abi.CK_REDUCTION_PER_ANCHOR else ()
    return (
        features.new_empty(out_shape, dtype=torch.float32),
        features.new_empty((n,), dtype=torch.float32),
        features.new_empty((n,), dtype=torch.int32),
    )


@torch.library.custom_op("contrastive_kernels::contrastive_backward", mutates_args=())
def contrastive_backward(
    grad: Tensor,
    lse: Tensor,
    positives: Tensor,
    features: Tensor,
    instance: Tensor,
    label: Optional[Tensor],
    role: Optional[Tensor],
    weight: Optional[Tensor],
    keys: Optional[Tensor],
    key_instance: Optional[Tensor],
    key_label: Optional[Tensor],
    centers: Optional[Tensor],
    proto_of: Optional[Tensor],
    geometry: int,
    temperature: float,
    scale: float,
    use_labels: bool,
    reduction: int,
    empty_positives: int,
    norm_penalty: float,
    anchor_rows: Optional[int],
) -> Tuple[Tensor, Tensor, Tensor]:
    """The loss backward: (grad_features, grad_keys, grad_centers) in the features' dtype;
    grad_keys is (0, d) without keys and grad_centers (0, d) without centers. ``grad`` is the
    upstream gradient of the forward's ``out`` (0-dim, or n for per_anchor)."""
    config = _config(geometry, temperature, scale, use_labels, reduction, empty_positives, norm_penalty)
    _check_loss_shapes(features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of, geometry, use_labels, anchor_rows)
    _check_saved(grad, lse, positives, features, reduction)
    tensors, inputs = _prepared(features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of, config, anchor_rows)
    c_config = config.to_c()
    features = tensors["features"]
    d, dev = features.shape[1], features.device
    upstream = grad.detach().to(torch.float32).contiguous()
    lse, positives = lse.contiguous(), positives.contiguous()
    grad_features = torch.empty_like(features)
    grad_keys = torch.empty((0 if keys is None else keys.shape[0], d), dtype=features.dtype, device=dev)
    grad_centers = torch.empty((0 if centers is None else centers.shape[0], d), dtype=features.dtype, device=dev)
    gk = None if keys is None else grad_keys.data_ptr()
    gc = None if centers is None else grad_centers.data_ptr()
    if dev.type == "cuda":
        index, stream = _cuda_call(dev)
        status = load_library().ck_contrastive_backward(
            index, stream, ctypes.byref(c_config), ctypes.byref(inputs),
            lse.data_ptr(), positives.data_ptr(), upstream.data_ptr(), grad_features.data_ptr(), gk, gc,
        )
    else:
        status = _host_function("ck_contrastive_backward_host")(
            ctypes.byref(c_config), ctypes.byref(inputs),
            lse.data_ptr(), positives.data_ptr(), upstream.data_ptr(), grad_features.data_ptr(), gk, gc,
        )
    _check(status)
    del tensors
    return grad_features, grad_keys, grad_centers


def _check_saved(grad, lse, positives, features, reduction: int) -> None:
    n = features.shape[0]
    want = (n,) if reduction == _abi.CK_REDUCTION_PER_ANCHOR else ()
    if tuple(grad.shape) != want:
        raise ValueError(f"grad: expected shape {want} (the forward output's), got {tuple(grad.shape)}")
    _vector("lse", lse, n, features.device, (torch.float32,), "the forward's per-row log-sum-exp")
    _vector("positives", positives, n, features.device, (torch.int32,), "the forward's per-row positive counts")


@contrastive_backward.register_fake
def _(grad, lse, positives, features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of, geometry, temperature, scale, use_labels, reduction, empty_positives, norm_penalty, anchor_rows):
    _config(geometry, temperature, scale, use_labels, reduction, empty_positives, norm_penalty)
    _check_loss_shapes(features, instance, label, role, weight, keys, key_instance, key_label, centers, proto_of, geometry, use_labels, anchor_rows)
    _check_saved(grad, lse, positives, features, reduction)
    d = features.shape[1]
    return (
        torch.empty_like(features, memory_format=torch.contiguous_format),
        features.new_empty((0 if keys is None else keys.shape[0], d)),
        features.new_empty((0 if centers is None else centers.shape[0], d)),
    )


_N_TENSOR_INPUTS = 10


def _setup_context(ctx, inputs, output):
    tensors, config = inputs[:_N_TENSOR_INPUTS], inputs[_N_TENSOR_INPUTS:]
    _, lse, positives = output
    ctx.save_for_backward(*tensors, lse, positives)
    ctx.config = tuple(config)
    ctx.has_keys = tensors[5] is not None
    ctx.has_centers = tensors[8] is not None


def _backward(ctx, grad_out, _grad_lse, _grad_positives):
    saved = ctx.saved_tensors
    tensors, lse, positives = saved[:_N_TENSOR_INPUTS], saved[_N_TENSOR_INPUTS], saved[_N_TENSOR_INPUTS + 1]
    gf, gk, gc = contrastive_backward(grad_out, lse, positives, *tensors, *ctx.config)
    reduction, norm_penalty = ctx.config[4], ctx.config[6]
    role = tensors[3]
    if reduction == _abi.CK_REDUCTION_PER_ANCHOR and norm_penalty > 0.0 and role is not None:
        # The library's per-anchor backward adds the OECL penalty's gradient (upstream 1), but the
        # per-anchor output excludes the penalty: take that gradient back out so autograd matches
        # the output. d(alpha * mean_o ||x_o||)/dx_o = alpha / n_o * x_o / max(||x_o||, 1e-12).
        x = tensors[0].float()
        penalized = (role.to(torch.int64) == _abi.ROLE_NORM_PENALTY_ONLY).unsqueeze(1)
        n_o = penalized.sum().clamp(min=1).to(x.dtype)
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp(min=1e-12)
        gf = (gf.float() - torch.where(penalized, norm_penalty / n_o * x / norms, torch.zeros_like(x))).to(gf.dtype)
    grads = [None] * (_N_TENSOR_INPUTS + len(ctx.config))
    grads[0] = gf
    if ctx.has_keys:
        grads[5] = gk
    if ctx.has_centers:
        grads[8] = gc
    return tuple(grads)


torch.library.register_autograd("contrastive_kernels::contrastive_forward", _backward, setup_context=_setup_context)


@torch.library.custom_op("contrastive_kernels::topk", mutates_args=())
def topk_op(queries: Tensor, bank: Tensor, k: int, normalized: bool, exclude_offset: int) -> Tuple[Tensor, Tensor]:
    """The k most similar bank rows of each query (cosine), exact: values (nq x k float32,
    descending; NaN last) and indices (nq x k int64, ties to the smaller index).
    ``exclude_offset`` >= 0: query i skips bank row i + exclude_offset; -1: none."""
    _check_topk(queries, bank, k, exclude_offset)
    q, b = queries.contiguous(), bank.contiguous()
    nq, d = q.shape
    nb = b.shape[0]
    dev = q.device
    values = torch.empty((nq, k), dtype=torch.float32, device=dev)
    indices = torch.empty((nq, k), dtype=torch.int32, device=dev)
    code = _FEATURE_DTYPES[q.dtype]
    if dev.type == "cuda":
        index, stream = _cuda_call(dev)
        status = load_library().ck_topk(
            index, stream, code, q.data_ptr(), nq, b.data_ptr(), nb, d, k, int(normalized), exclude_offset,
            values.data_ptr(), indices.data_ptr(),
        )
    else:
        status = _host_function("ck_topk_host")(
            code, q.data_ptr(), nq, b.data_ptr(), nb, d, k, int(normalized), exclude_offset, values.data_ptr(), indices.data_ptr(),
        )
    _check(status)
    return values, indices.to(torch.int64)


def _check_topk(queries, bank, k: int, exclude_offset: int) -> None:
    _matrix("queries", queries, None, None, None)
    _matrix("bank", bank, queries.shape[1], queries.dtype, queries.device)
    nb = bank.shape[0]
    if exclude_offset < -1:
        raise ValueError(f"exclude_offset: -1 (none) or an offset >= 0, got {exclude_offset}")
    limit = nb - 1 if exclude_offset >= 0 else nb
    if not 1 <= k <= limit:
        raise ValueError(f"k: must be in 1..={limit} (the bank's rows{', less the excluded one' if exclude_offset >= 0 else ''}), got {k}")


@topk_op.register_fake
def _(queries, bank, k, normalized, exclude_offset):
    _check_topk(queries, bank, k, exclude_offset)
    nq = queries.shape[0]
    return queries.new_empty((nq, k), dtype=torch.float32), queries.new_empty((nq, k), dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# The functional forms.


def _as_tensor(name: str, x, dtype=None):
    """A tensor from a tensor or a numpy array (shared memory where numpy allows); None stays None."""
    if x is None or isinstance(x, Tensor):
        return x
    if hasattr(x, "__array__"):
        import numpy as np

        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name}: expected a torch.Tensor or a numpy array, got {type(x).__name__}")


def contrastive_loss(features, instance, *, config: LossConfig, label=None, role=None, weight=None, keys=None, key_instance=None, key_label=None, centers=None, proto_of=None, anchor_rows=None) -> Tensor:
    """The loss of ``config`` (:class:`LossConfig`, e.g. ``LossConfig.preset("supcon", 0.1)``),
    differentiable with respect to features, keys and centers: a 0-dim float32 tensor (mean /
    sum) or one loss per feature row (per_anchor, multiplied by ``weight`` when given; the OECL
    norm penalty is part of the reduced loss only). CUDA tensors run the fused kernels, CPU
    tensors (or numpy arrays) the library's f64 oracle. Ids int32 or int64; roles uint8 (0
    anchor, 1 negative-only, 2 norm-penalty-only); weights >= 0. ``anchor_rows`` (self geometry,
    1..=n): only the first anchor_rows rows are anchors, the rest columns only (their per-anchor
    loss 0), and the kernels compute anchor_rows x n logits; ``mean`` divides by the anchors among
    them. None: every row."""
    if not isinstance(config, LossConfig):
        raise TypeError(f"config: expected a contrastive_kernels.LossConfig, got {type(config).__name__}")
    geometry, temperature, scale, use_labels, reduction, empty_positives, norm_penalty = config.codes()  # checked, naming them
    _check_anchor_rows_type(anchor_rows)  # before the op's schema converts it
    args = [
        _as_tensor(name, x)
        for name, x in (
            ("features", features), ("instance", instance), ("label", label), ("role", role), ("weight", weight),
            ("keys", keys), ("key_instance", key_instance), ("key_label", key_label), ("centers", centers), ("proto_of", proto_of),
        )
    ]
    row_weight = None
    if reduction == _abi.CK_REDUCTION_PER_ANCHOR:
        # The per-anchor output is L_i unweighted (the library weights only its reduced loss, but
        # its per-anchor backward by w_i): the weight is applied here, under autograd, instead.
        row_weight, args[4] = args[4], None
    out, _, _ = torch.ops.contrastive_kernels.contrastive_forward(
        *args, geometry, temperature, scale, use_labels, reduction, empty_positives, norm_penalty, anchor_rows
    )
    if row_weight is not None:
        out = out * row_weight.to(out.dtype)
    return out


def topk(queries, bank, k: int, *, normalized: bool = False, exclude_self: bool = False):
    """The k most similar bank rows of each query (cosine), exact: (values float32 [nq, k]
    descending, indices int64 [nq, k], ties to the smaller index). CUDA tensors run the fused
    kernel, CPU tensors the oracle; numpy arrays in, numpy arrays out. ``exclude_self``: the
    queries are the bank's first rows (leave-one-out scoring of the bank)."""
    as_numpy = not isinstance(queries, Tensor) and hasattr(queries, "__array__")
    q, b = _as_tensor("queries", queries), _as_tensor("bank", bank)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    values, indices = torch.ops.contrastive_kernels.topk(q, b, k, bool(normalized), 0 if exclude_self else -1)
    if as_numpy:
        return values.numpy(), indices.numpy()
    return values, indices

