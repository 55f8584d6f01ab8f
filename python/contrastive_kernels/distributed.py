"""Batches beyond one process, on torch.distributed (NCCL on GPUs, gloo on CPUs). The library's
kernels never communicate; these functions do, with torch.distributed's collectives.

:func:`gather_loss` -- the loss of the batch concatenated over the ranks of a group. Each rank
all-gathers what it needs of the other ranks' rows (shards may differ in size, even be empty)
and computes only its own anchors against every column:

* self geometry: the gathered rows with this rank's own first (the loss does not depend on the
  columns' order) and the library's ``anchor_rows`` set to them, so the kernels compute an
  m x N block of logits (m own rows, N global) in the forward, and in the backward the m x N
  block plus the other rows' columns against the m anchors: about 2 m N of the N^2 logit
  products, so the work per rank shrinks with the number of ranks;
* pairwise geometry: this rank's anchors (its features, not gathered) against every rank's keys.

Each rank's share is summed with weights w_i / (the global number of anchors) for ``mean`` (the
library's count: every anchor row, empty-positive ones included), so the shares add up to the
global loss; every rank returns that total (one all-reduce of a scalar), or for ``per_anchor``
its own rows' losses. The backward runs through an all-gather whose backward sums every rank's
gradient and hands each row's to its owner (reduce-scatter on NCCL; all-reduce then slice on
gloo, which has no reduce-scatter). So:

* ``loss.backward()`` on every rank (all ranks must call it: the backward communicates) leaves in
  each rank's features, keys and prototypes exactly the gradient of that global loss;
* with DistributedDataParallel, which averages parameter gradients over ranks, multiply the loss
  by the world size to step on the global loss's gradient (each rank's encoder gradient is the
  part that flows through its own rows; their sum is the global gradient).

A library error on one rank (an anchor with no positive under the "error" policy) is raised on
every rank, naming the global row, instead of leaving the others waiting in a collective.

OECL's norm-penalty rows never enter the similarity matrix: here (in either geometry) they are
left out of the library's call and their penalty (alpha times the mean raw norm over every rank's
penalty rows) is computed with torch, so that it too is split into exact shares.

:func:`sharded_search` -- each rank holds a shard of the bank (rows in rank order; shards may
differ in size, even be empty) and the same queries; each searches its shard, the (value, global
index) lists are all-gathered and merged exactly: by value descending, NaN after every number,
ties to the smaller global index -- the order the library's search uses, so the result is
identical to one search over the whole bank.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import List

import torch
import torch.distributed as dist
from torch import Tensor

from . import ROLE_ANCHOR, ROLE_NORM_PENALTY_ONLY, CkError, LossConfig
from .ops import _as_tensor, contrastive_loss, topk

__all__ = ["gather_loss", "sharded_search", "sample_offset", "all_gather_rows"]


def _require(group):
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("group: torch.distributed is not initialized (call torch.distributed.init_process_group first)")
    return dist.get_rank(group), dist.get_world_size(group)


def _counts(values: List[int], group, device) -> List[List[int]]:
    """Every rank's list of small integers (sizes, presence flags), in rank order."""
    _, world = _require(group)
    t = torch.tensor(values, dtype=torch.int64, device=device)
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t, group=group)
    return [[int(v) for v in o.tolist()] for o in out]


def sample_offset(n: int, *, group=None, device=None) -> int:
    """The number of rows (samples) the ranks before this one hold: makes per-rank ids global."""
    rank, _ = _require(group)
    device = device if device is not None else _collective_device(group)
    return sum(c[0] for c in _counts([n], group, device)[:rank])


def _collective_device(group) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")


def _gather_padded(x: Tensor, sizes: List[int], group) -> Tensor:
    """Rows of every rank concatenated in rank order (no autograd). all_gather needs one shape:
    shards are padded to the largest and trimmed after."""
    m = max(sizes)
    if m == 0:
        return x.new_empty((0,) + tuple(x.shape[1:]))
    xp = x.contiguous()
    if xp.shape[0] < m:
        xp = torch.cat([xp, xp.new_zeros((m - xp.shape[0],) + tuple(xp.shape[1:]))])
    bufs = [torch.empty_like(xp) for _ in sizes]
    dist.all_gather(bufs, xp, group=group)
    return torch.cat([b[:s] for b, s in zip(bufs, sizes)])


class _AllGatherRows(torch.autograd.Function):
    """all-gather of rows whose backward sums the ranks' gradients and returns each rank its rows."""

    @staticmethod
    def forward(ctx, x, sizes, rank, group):
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        sizes, rank, group = ctx.sizes, ctx.rank, ctx.group
        grad = grad.contiguous()
        start, n = sum(sizes[:rank]), sizes[rank]
        if dist.get_backend(group) == "nccl":
            m = max(sizes)
            chunks, offset = [], 0
            for s in sizes:
                c = grad[offset : offset + s]
                if s < m:
                    c = torch.cat([c, c.new_zeros((m - s,) + tuple(c.shape[1:]))])
                chunks.append(c.contiguous())
                offset += s
            out = grad.new_empty((m,) + tuple(grad.shape[1:]))
            dist.reduce_scatter(out, chunks, group=group)
            return out[:n], None, None, None
        total = grad.clone()
        dist.all_reduce(total, group=group)
        return total[start : start + n], None, None, None


class _SumGradients(torch.autograd.Function):
    """Identity whose backward all-reduces the gradient: a tensor replicated on every rank (the
    prototypes) receives the gradient of the sum of every rank's share."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


def all_gather_rows(x: Tensor, *, group=None) -> Tensor:
    """The rows of ``x`` from every rank, concatenated in rank order (shards may differ in size),
    differentiable: the backward returns each rank the summed gradient of its own rows."""
    rank, _ = _require(group)
    sizes = [c[0] for c in _counts([x.shape[0]], group, x.device)]
    return _AllGatherRows.apply(x, sizes, rank, group)


def gather_loss(
    features,
    instance,
    *,
    config: LossConfig,
    label=None,
    role=None,
    weight=None,
    keys=None,
    key_instance=None,
    key_label=None,
    centers=None,
    proto_of=None,
    group=None,
) -> Tensor:
    """:func:`contrastive_kernels.contrastive_loss` over the batch concatenated from every rank of
    ``group`` (see the module's text). Per-rank arguments are this rank's rows; ids and labels
    must be global (distinct samples on different ranks have different instance ids:
    :func:`sample_offset` helps); ``centers`` (prototypes) are the same on every rank. Every rank
    must pass the same optional arguments."""
    if not isinstance(config, LossConfig):
        raise TypeError(f"config: expected a contrastive_kernels.LossConfig, got {type(config).__name__}")
    config.codes()
    rank, world = _require(group)
    features = _as_tensor("features", features)
    if features.dim() != 2:
        raise ValueError(f"features: expected an n x d matrix, got shape {tuple(features.shape)}")
    n, d = features.shape
    dev = features.device
    rows = {
        "instance": _as_tensor("instance", instance),
        "label": _as_tensor("label", label),
        "role": _as_tensor("role", role),
        "proto_of": _as_tensor("proto_of", proto_of),
    }
    pairwise = config.geometry == "pairwise"
    if rows["instance"] is None:
        raise ValueError("instance: required (one id per feature row)")
    for name, t in rows.items():
        if t is not None and (t.dim() != 1 or t.shape[0] != n):
            raise ValueError(f"{name}: expected shape ({n},) (one per feature row), got {tuple(t.shape)}")
    weight = _as_tensor("weight", weight)
    if weight is not None and (weight.dim() != 1 or weight.shape[0] != n):
        raise ValueError(f"weight: expected shape ({n},) (one per feature row), got {tuple(weight.shape)}")
    keys, key_instance, key_label = _as_tensor("keys", keys), _as_tensor("key_instance", key_instance), _as_tensor("key_label", key_label)
    if pairwise:
        if keys is None or key_instance is None:
            raise ValueError("keys, key_instance: required by the pairwise geometry")
        if keys.dim() != 2 or keys.shape[1] != d or keys.dtype != features.dtype or keys.device != dev:
            raise ValueError(f"keys: expected an m x {d} matrix of {features.dtype} on {dev}, got {tuple(keys.shape)} {keys.dtype} on {keys.device}")
        m = keys.shape[0]
        for name, t in (("key_instance", key_instance), ("key_label", key_label)):
            if t is not None and (t.dim() != 1 or t.shape[0] != m):
                raise ValueError(f"{name}: expected shape ({m},) (one per key row), got {tuple(t.shape)}")
    elif keys is not None or key_instance is not None or key_label is not None:
        raise ValueError("keys: only the pairwise geometry takes keys")
    else:
        m = 0
    centers = _as_tensor("centers", centers)

    # One small collective: every rank's sizes, its anchor and norm-penalty row counts (the
    # library's: rows of role anchor, of role norm-penalty-only) and which optional arguments it passes.
    optional = [rows["label"], rows["role"], rows["proto_of"], key_label, centers]
    role_codes = None if rows["role"] is None else rows["role"].to(device=dev, dtype=torch.int64)
    own_penalized = torch.zeros(n, dtype=torch.bool, device=dev) if role_codes is None else role_codes == ROLE_NORM_PENALTY_ONLY
    own_anchors = n if role_codes is None else int((role_codes == ROLE_ANCHOR).sum())
    table = _counts([n, m, own_anchors, int(own_penalized.sum())] + [int(t is not None) for t in optional], group, dev)
    names = ["label", "role", "proto_of", "key_label", "centers"]
    for j, name in enumerate(names):
        flags = {r[4 + j] for r in table}
        if len(flags) != 1:
            raise ValueError(f"{name}: given on some ranks and not on others (every rank must pass the same arguments)")
    n_sizes, m_sizes = [r[0] for r in table], [r[1] for r in table]
    global_anchors, global_penalized = sum(r[2] for r in table), sum(r[3] for r in table)
    start = sum(n_sizes[:rank])
    per_anchor = config.reduction == "per_anchor"
    all_centers = None if centers is None else _SumGradients.apply(centers, group)

    def ids(t, sizes):
        return None if t is None else _gather_padded(t.to(device=dev, dtype=torch.int64), sizes, group)

    # This rank's weights: Sum of w_i L_i / (the global anchor count) for mean, so that the
    # shares add up to the global mean; per_anchor weights its own outputs below.
    own_weight = torch.ones(n, dtype=torch.float32, device=dev) if weight is None else weight.to(device=dev, dtype=torch.float32)
    if config.reduction == "mean":
        own_weight = own_weight / max(global_anchors, 1)
    library_config = replace(config, norm_penalty=0.0, reduction="per_anchor" if per_anchor else "sum")

    # OECL's penalty rows: out of the library's call, their penalty (alpha times the mean raw norm
    # over every rank's penalty rows) computed here, this rank's share of it.
    penalty = None
    if global_penalized > 0 and config.norm_penalty > 0.0 and not per_anchor:
        own_norms = torch.linalg.vector_norm(features.float(), dim=1)
        penalty = config.norm_penalty * torch.where(own_penalized, own_norms, torch.zeros_like(own_norms)).sum() / global_penalized
    if pairwise:
        # The anchors are this rank's own (kept) features; the keys every rank's (one
        # differentiable gather).
        all_keys = _AllGatherRows.apply(keys, m_sizes, rank, group)
        own_rows = torch.nonzero(~own_penalized).squeeze(1)  # library row i is local row own_rows[i]
        anchor_count = int(own_rows.shape[0])
        pick = (lambda t: t) if anchor_count == n else (lambda t: None if t is None else t.index_select(0, own_rows))
        call = dict(
            features=pick(features), **{name: pick(t) for name, t in rows.items()},
            keys=all_keys, key_instance=ids(key_instance, m_sizes), key_label=ids(key_label, m_sizes),
            weight=None if per_anchor else pick(own_weight), anchor_rows=None,
        )
        connected = [all_keys, features]
    else:
        gathered = _AllGatherRows.apply(features, n_sizes, rank, group)
        all_rows = {name: ids(t, n_sizes) for name, t in rows.items()}
        n_global = sum(n_sizes)
        mine = torch.zeros(n_global, dtype=torch.bool, device=dev)
        mine[start : start + n] = True
        kept = torch.ones(n_global, dtype=torch.bool, device=dev)
        if all_rows["role"] is not None:
            kept = all_rows["role"] != ROLE_NORM_PENALTY_ONLY
        # This rank's kept rows first (the anchors: anchor_rows), then every other kept row.
        order = torch.cat([torch.nonzero(kept & mine).squeeze(1), torch.nonzero(kept & ~mine).squeeze(1)])
        anchor_count = int((kept & mine).sum())
        own_rows = order[:anchor_count] - start
        weight_rows = torch.zeros(order.shape[0], dtype=torch.float32, device=dev)
        weight_rows[:anchor_count] = own_weight.index_select(0, own_rows)
        call = dict(
            features=gathered.index_select(0, order),
            **{name: None if t is None else t.index_select(0, order) for name, t in all_rows.items()},
            keys=None, key_instance=None, key_label=None,
            weight=None if per_anchor else weight_rows, anchor_rows=anchor_count,
        )
        connected = [gathered]
    if all_centers is not None:
        connected.append(all_centers)

    # The library call, then (before any other collective) whether any rank failed: a failure on
    # one rank is raised on every rank instead of leaving the others in a collective.
    error, out = None, None
    if anchor_count > 0:
        try:
            out = contrastive_loss(call.pop("features"), call.pop("instance"), config=library_config, centers=all_centers, **call)
        except CkError as e:
            error = e
    failed = _counts([0 if error is None else 1], group, dev)
    if any(f[0] for f in failed):
        if error is not None:
            message = re.sub(r"\brow (\d+)\b", lambda g: f"row {start + int(own_rows[int(g.group(1))])} (global)", error.message)
            raise CkError(error.status, f"rank {rank}: {message}")
        raise RuntimeError(f"gather_loss: failed on rank(s) {[r for r, f in enumerate(failed) if f[0]]} (their error names the row)")
    if out is None:
        # No anchor here: a zero share that still takes part in the backward's collectives.
        out = sum(t.sum() for t in connected) * 0.0
        if per_anchor:
            out = out.expand(0)
    if per_anchor:
        # The library's per-anchor output holds L_i of its first anchor_count rows: this rank's.
        own = torch.zeros(n, dtype=torch.float32, device=dev)
        if anchor_count > 0:
            own = own.index_copy(0, own_rows, out[:anchor_count].to(torch.float32))
        else:
            own = own + out.sum()
        return own if weight is None else own * weight.to(device=dev, dtype=own.dtype)
    share = out if penalty is None else out + penalty
    total = share.detach().clone()
    dist.all_reduce(total, group=group)
    return share + (total - share.detach())


def sharded_search(queries, bank_shard, k: int, *, normalized: bool = False, group=None):
    """``(D, I)`` of the k most similar rows of the bank whose shards the ranks of ``group`` hold
    (rank order; I holds global int64 row indices), identical to one search over the whole bank.
    ``queries`` must be the same on every rank."""
    rank, _ = _require(group)
    q, b = _as_tensor("queries", queries), _as_tensor("bank_shard", bank_shard)
    if q.dim() != 2:
        raise ValueError(f"queries: expected a matrix, got shape {tuple(q.shape)}")
    if b.dim() != 2 or b.shape[1] != q.shape[1]:
        raise ValueError(f"bank_shard: expected rows of width {q.shape[1]} (the queries' d), got shape {tuple(b.shape)}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    sizes = [c[0] for c in _counts([b.shape[0]], group, q.device)]
    nb = sum(sizes)
    if not 1 <= k <= nb:
        raise ValueError(f"k: must be in 1..={nb} (the rows of the whole bank), got {k}")
    nq, dev = q.shape[0], q.device
    local_k = min(k, b.shape[0])
    # Every rank contributes k slots; slots past its shard's rows are marked invalid (index -1).
    values = torch.full((nq, k), float("nan"), dtype=torch.float32, device=dev)
    indices = torch.full((nq, k), -1, dtype=torch.int64, device=dev)
    if local_k > 0:
        v, i = topk(q, b, local_k, normalized=normalized)
        values[:, :local_k] = v
        indices[:, :local_k] = i + sum(sizes[:rank])
    all_values = _gather_padded(values.t().contiguous(), [k] * len(sizes), group).t()
    all_indices = _gather_padded(indices.t().contiguous(), [k] * len(sizes), group).t()
    return _merge(all_values, all_indices, k, nb)


def _merge(values: Tensor, indices: Tensor, k: int, nb: int):
    """The k best of candidate lists by the search's own order: class (number, NaN, invalid
    slot), then value descending, then index ascending (three stable sorts, last key first)."""
    valid = indices >= 0
    idx_key = torch.where(valid, indices, torch.full_like(indices, nb))
    order = torch.sort(idx_key, dim=1, stable=True).indices
    values, indices, valid = values.gather(1, order), indices.gather(1, order), valid.gather(1, order)
    nan = torch.isnan(values)
    value_key = torch.where(nan | ~valid, torch.full_like(values, float("-inf")), values)
    order = torch.sort(value_key, dim=1, descending=True, stable=True).indices
    values, indices, valid, nan = values.gather(1, order), indices.gather(1, order), valid.gather(1, order), nan.gather(1, order)
    cls = torch.where(valid, nan.to(torch.int64), torch.full_like(indices, 2))
    order = torch.sort(cls, dim=1, stable=True).indices
    return values.gather(1, order)[:, :k].contiguous(), indices.gather(1, order)[:, :k].contiguous()
