"""Batches beyond one process, on torch.distributed (NCCL on GPUs, gloo on CPUs). The library's
kernels never communicate; these functions do, with torch.distributed's collectives.

:func:`gather_loss` -- the loss of the batch concatenated over the ranks of a group. Each rank
all-gathers the features (and keys), ids, labels, roles and prototype indices (shards may differ
in size), evaluates the loss over the global batch with weight 0 on the other ranks' anchors
(``Mean`` still divides by the global number of anchors: the library counts anchors, not weights,
so the shares add up exactly), and backpropagates through an all-gather whose backward sums every
rank's gradient and hands each row's to its owner (reduce-scatter on NCCL; all-reduce then slice
on gloo, which has no reduce-scatter). So:

* every rank returns the loss of the concatenated batch (its own share plus the others', summed
  with one all-reduce of a scalar; per-anchor reduction returns the rank's own rows' losses);
* ``loss.backward()`` on every rank (all ranks must call it: the backward communicates) leaves in
  each rank's features, keys and prototypes exactly the gradient of that global loss;
* with DistributedDataParallel, which averages parameter gradients over ranks, multiply the loss
  by the world size to step on the global loss's gradient (each rank's encoder gradient is the
  part that flows through its own rows; their sum is the global gradient).

Cost, honestly: each rank evaluates N_global x N_global logits (its weights zero the other rows'
losses, not their work), so the loss's compute does not shrink with more ranks; memory stays
O(N d). The faster form -- each rank only its own anchors' rows against all columns -- needs a
row offset in the kernels and the oracle (a follow-up in the C ABI).

OECL's norm-penalty rows never enter the similarity matrix: here they are left out of the
library's call and their penalty (alpha times the mean raw norm over every rank's penalty rows) is
computed with torch, so that it too is split into exact shares.

:func:`sharded_search` -- each rank holds a shard of the bank (rows in rank order; shards may
differ in size, even be empty) and the same queries; each searches its shard, the (value, global
index) lists are all-gathered and merged exactly: by value descending, NaN after every number,
ties to the smaller global index -- the order the library's search uses, so the result is
identical to one search over the whole bank.
"""

from __future__ import annotations

from dataclasses import replace
from typing import List

import torch
import torch.distributed as dist
from torch import Tensor

from . import ROLE_NORM_PENALTY_ONLY, LossConfig
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

    # One small collective: every rank's sizes and which optional arguments it passes.
    optional = [rows["label"], rows["role"], rows["proto_of"], key_label, centers]
    table = _counts([n, m] + [int(t is not None) for t in optional], group, dev)
    names = ["label", "role", "proto_of", "key_label", "centers"]
    for j, name in enumerate(names):
        flags = {r[2 + j] for r in table}
        if len(flags) != 1:
            raise ValueError(f"{name}: given on some ranks and not on others (every rank must pass the same arguments)")
    n_sizes, m_sizes = [r[0] for r in table], [r[1] for r in table]
    start = sum(n_sizes[:rank])
    n_global = sum(n_sizes)

    # Features (and keys) in one differentiable gather, so the backward has one collective.
    both = torch.cat([features, keys]) if pairwise else features
    gathered = _AllGatherRows.apply(both, [a + b for a, b in zip(n_sizes, m_sizes)], rank, group)
    pieces_f, pieces_k, offset = [], [], 0
    for a, b in zip(n_sizes, m_sizes):
        pieces_f.append(gathered[offset : offset + a])
        pieces_k.append(gathered[offset + a : offset + a + b])
        offset += a + b
    all_features = torch.cat(pieces_f) if world > 1 else pieces_f[0]
    all_keys = (torch.cat(pieces_k) if world > 1 else pieces_k[0]) if pairwise else None

    def ids(t, sizes):
        return None if t is None else _gather_padded(t.to(device=dev, dtype=torch.int64), sizes, group)

    all_rows = {name: ids(t, n_sizes) for name, t in rows.items()}
    all_key_instance = ids(key_instance, m_sizes) if pairwise else None
    all_key_label = ids(key_label, m_sizes) if pairwise else None

    # This rank's anchors keep their weights; the others' get 0.
    own = torch.zeros(n_global, dtype=torch.float32, device=dev)
    own[start : start + n] = 1.0 if weight is None else weight.to(device=dev, dtype=torch.float32)
    all_weight = own

    # OECL's penalty rows: out of the library's call, their penalty computed here in shares.
    penalty = None
    per_anchor = config.reduction == "per_anchor"
    if all_rows["role"] is not None:
        penalized = all_rows["role"] == ROLE_NORM_PENALTY_ONLY
        if bool(penalized.any()):
            keep = torch.nonzero(~penalized).squeeze(1)
            n_o = int(penalized.sum())
            mine = penalized[start : start + n]
            if config.norm_penalty > 0.0 and not per_anchor:
                own_norms = torch.linalg.vector_norm(features.float(), dim=1)
                penalty = config.norm_penalty * torch.where(mine, own_norms, torch.zeros_like(own_norms)).sum() / n_o
            all_features = all_features.index_select(0, keep)
            all_weight = all_weight.index_select(0, keep)
            all_rows = {k: None if v is None else v.index_select(0, keep) for k, v in all_rows.items()}
            kept_positions = torch.full((n_global,), -1, dtype=torch.int64, device=dev)
            kept_positions[keep] = torch.arange(keep.shape[0], device=dev)
        else:
            kept_positions = None
    else:
        kept_positions = None

    all_centers = None if centers is None else _SumGradients.apply(centers, group)
    library_config = replace(config, norm_penalty=0.0)
    out = contrastive_loss(
        all_features,
        all_rows["instance"],
        config=library_config,
        label=all_rows["label"],
        role=all_rows["role"],
        weight=None if per_anchor else all_weight,
        keys=all_keys,
        key_instance=all_key_instance,
        key_label=all_key_label,
        centers=all_centers,
        proto_of=all_rows["proto_of"],
    )
    if per_anchor:
        if kept_positions is not None:
            pos = kept_positions[start : start + n]
            out = torch.where(pos >= 0, out[pos.clamp(min=0)], torch.zeros((), dtype=out.dtype, device=dev))
        else:
            out = out[start : start + n]
        return out if weight is None else out * weight.to(device=dev, dtype=out.dtype)
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
