"""kNN search shaped like FAISS (``D, I = index.search(x, k)``, int64 ids) and the anomaly scores
of DESIGN.md section 5, by the library's own functions.

The search is :func:`contrastive_kernels.topk` (cosine similarity, exact; the fused kernel on CUDA
tensors, the f64 oracle on CPU tensors). ``D`` holds similarities, descending (as FAISS's inner
product indexes do), not distances. The scores run on the host (``ck_topk_score``,
``ck_norm_score``, ``ck_mcod_score``): tensors are copied to the CPU, results are float64 tensors
(numpy arrays when the input was one).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _abi, _check, load_library
from .ops import _as_tensor, topk

__all__ = [
    "KNNIndex",
    "knn_search",
    "knn_distance",
    "mean_topk_similarity",
    "norm_weighted_mean_topk",
    "csi_score",
    "norm_score",
    "mcod_score",
]


def knn_search(queries, bank, k: int, *, normalized: bool = False, exclude_self: bool = False):
    """``(D, I)``: the k largest cosine similarities of each query to the bank (float32, nq x k,
    descending, NaN last) and their bank rows (int64, ties to the smaller index)."""
    return topk(queries, bank, k, normalized=normalized, exclude_self=exclude_self)


class KNNIndex:
    """A flat cosine-similarity index: ``add`` rows, then ``search``; like ``faiss.IndexFlatIP``
    on normalized rows, exact. Rows keep the dtype and device of the first ``add``."""

    def __init__(self, d: int, *, normalized: bool = False):
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"d: expected a positive int (the rows' width), got {d!r}")
        self.d = d
        self.normalized = normalized
        self._rows: list = []
        self._bank: Optional[Tensor] = None

    @property
    def ntotal(self) -> int:
        return sum(r.shape[0] for r in self._rows)

    def add(self, x) -> None:
        x = _as_tensor("x", x)
        if x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"x: expected rows of width {self.d} (n x {self.d}), got shape {tuple(x.shape)}")
        if self._rows and (x.dtype != self._rows[0].dtype or x.device != self._rows[0].device):
            raise ValueError(f"x: expected {self._rows[0].dtype} on {self._rows[0].device} (the index's rows), got {x.dtype} on {x.device}")
        self._rows.append(x.detach().contiguous())
        self._bank = None

    def reset(self) -> None:
        self._rows, self._bank = [], None

    def search(self, x, k: int):
        """``(D, I)`` of the k nearest rows of the index to each row of ``x``."""
        if not self._rows:
            raise ValueError("index: empty; add rows before searching")
        if self._bank is None:
            self._bank = torch.cat(self._rows) if len(self._rows) > 1 else self._rows[0]
        as_numpy = not isinstance(x, Tensor) and hasattr(x, "__array__")
        q = _as_tensor("x", x)
        if q.dim() != 2 or q.shape[1] != self.d:
            raise ValueError(f"x: expected rows of width {self.d} (n x {self.d}), got shape {tuple(q.shape)}")
        D, I = knn_search(q.to(device=self._bank.device, dtype=self._bank.dtype), self._bank, k, normalized=self.normalized)
        return (D.cpu().numpy(), I.cpu().numpy()) if as_numpy else (D, I)


def _host_f32(name: str, x, dims: int):
    as_numpy = not isinstance(x, Tensor) and hasattr(x, "__array__")
    t = _as_tensor(name, x)
    if t is None:
        raise ValueError(f"{name}: required")
    if t.dim() != dims:
        raise ValueError(f"{name}: expected {'a matrix' if dims == 2 else 'a vector'}, got shape {tuple(t.shape)}")
    if not (t.is_floating_point()):
        raise TypeError(f"{name}: expected floating-point values, got {t.dtype}")
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous(), as_numpy


def _result(out: Tensor, as_numpy: bool):
    return out.numpy() if as_numpy else out


def _topk_score(kind: int, D, k: Optional[int], norms=None):
    values, as_numpy = _host_f32("D", D, 2)
    rows, width = values.shape
    kth = width if k is None else k
    if isinstance(kth, bool) or not isinstance(kth, int):
        raise TypeError(f"k: expected an int, got {type(kth).__name__}")
    if not 1 <= kth <= width:
        raise ValueError(f"k: must be in 1..={width} (the columns of D), got {kth}")
    n = None
    if norms is not None:
        n, _ = _host_f32("norms", norms, 1)
        if n.shape[0] != rows:
            raise ValueError(f"norms: expected shape ({rows},) (one per query), got {tuple(n.shape)}")
    out = torch.empty(rows, dtype=torch.float64)
    _check(
        load_library().ck_topk_score(
            kind, values.data_ptr(), rows, width, kth, None if n is None else n.data_ptr(), out.data_ptr()
        )
    )
    return _result(out, as_numpy)


def knn_distance(D, k: Optional[int] = None):
    """Deep kNN's score, 2 - 2 s_(k) (higher = more anomalous), from ``D`` of a search (k: the
    k-th column, default the last)."""
    return _topk_score(_abi.CK_SCORE_KNN_DISTANCE, D, k)


def mean_topk_similarity(D, k: Optional[int] = None):
    """FIRM's cos_k: the mean of the first k similarities (higher = more normal)."""
    return _topk_score(_abi.CK_SCORE_MEAN_TOPK, D, k)


def norm_weighted_mean_topk(D, norms, k: Optional[int] = None):
    """cos_k times each query's raw norm (CSI-style)."""
    return _topk_score(_abi.CK_SCORE_NORM_WEIGHTED_MEAN_TOPK, D, k, norms)


def csi_score(D, norms):
    """CSI's SimCLR score: the largest similarity times the query's raw norm."""
    return _topk_score(_abi.CK_SCORE_CSI, D, None, norms)


def norm_score(features):
    """OECL's norm score ||x|| of each row (higher = more normal)."""
    x, as_numpy = _host_f32("features", features, 2)
    n, d = x.shape
    out = torch.empty(n, dtype=torch.float64)
    _check(load_library().ck_norm_score(x.data_ptr(), n, d, out.data_ptr()))
    return _result(out, as_numpy)


def mcod_score(h, memory, temperature: float = 1.0):
    """MCOD's memory score ||h - M^T softmax(M h / temperature)||^2 (higher = more anomalous)."""
    x, as_numpy = _host_f32("h", h, 2)
    m, _ = _host_f32("memory", memory, 2)
    if m.shape[1] != x.shape[1]:
        raise ValueError(f"memory: expected {x.shape[1]} columns (h's d), got shape {tuple(m.shape)}")
    out = torch.empty(x.shape[0], dtype=torch.float64)
    _check(load_library().ck_mcod_score(x.data_ptr(), x.shape[0], x.shape[1], m.data_ptr(), m.shape[0], float(temperature), out.data_ptr()))
    return _result(out, as_numpy)

