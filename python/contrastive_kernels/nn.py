"""``torch.nn.Module`` losses shaped like the reference implementations users know, on the
library's one generalized loss (DESIGN.md sections 2-3).

Views: ``features`` is ``[bsz, n_views, d]`` (SupContrast's layout) or two tensors ``z1, z2``
(``[bsz, d]`` each, SimCLR's). Rows are laid out view by view (``torch.cat(torch.unbind(features,
1))``, SupContrast's ``contrast_feature``), so row ``v * bsz + i`` is view v of sample i.

``gather=True`` (with torch.distributed initialized) computes the loss over the batch gathered from
every rank of ``group`` (:func:`contrastive_kernels.distributed.gather_loss`): every rank returns
the loss of the concatenated batch, and the gradient reaching its features is the global loss's.
Sample ids are made global by offsetting each rank's by the samples of the ranks before it;
labels and cluster ids must already be global.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import Tensor, nn

from . import LossConfig
from .ops import _as_tensor, contrastive_loss

__all__ = [
    "ContrastiveLoss",
    "NTXentLoss",
    "SupConLoss",
    "FIRMLoss",
    "OECLLoss",
    "OutlierExposureLoss",
    "ClusterAwareLoss",
]


def _views(features, z2=None, *, name: str = "features") -> Tensor:
    """``[bsz, n_views, d]`` from either layout."""
    x = _as_tensor(name, features)
    if z2 is not None:
        y = _as_tensor("z2", z2)
        if x.dim() != 2 or y.shape != x.shape:
            raise ValueError(f"{name}, z2: expected two [bsz, d] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        return torch.stack([x, y], dim=1)
    if x.dim() != 3:
        raise ValueError(f"{name}: expected [bsz, n_views, d] (or two [bsz, d] views), got shape {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one view, got shape {tuple(x.shape)}")
    return x


def _rows(views: Tensor) -> Tensor:
    return torch.cat(torch.unbind(views, dim=1), dim=0)


def _per_sample(name: str, t, bsz: int, device) -> Optional[Tensor]:
    if t is None:
        return None
    t = _as_tensor(name, t)
    if t.dim() != 1 or t.shape[0] != bsz:
        raise ValueError(f"{name}: expected shape ({bsz},) (one per sample), got {tuple(t.shape)}")
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: expected int32 or int64, got {t.dtype}")
    return t.to(device)


class ContrastiveLoss(nn.Module):
    """The generalized loss with an explicit row description: ``forward(features [n, d],
    instance, label=None, role=None, weight=None, keys=None, key_instance=None, key_label=None,
    centers=None, proto_of=None)`` (see :func:`contrastive_kernels.contrastive_loss`)."""

    def __init__(self, config: LossConfig, *, gather: bool = False, group=None):
        super().__init__()
        if not isinstance(config, LossConfig):
            raise TypeError(f"config: expected a contrastive_kernels.LossConfig, got {type(config).__name__}")
        config.codes()
        self.config = config
        self.gather = bool(gather)
        self.group = group

    def _loss(self, config: LossConfig, features: Tensor, instance: Tensor, **rows) -> Tensor:
        if self.gather:
            from .distributed import gather_loss

            return gather_loss(features, instance, config=config, group=self.group, **rows)
        return contrastive_loss(features, instance, config=config, **rows)

    def _instance(self, bsz: int, n_views: int, device) -> Tensor:
        """Sample ids 0..bsz-1 for every view (offset to global ids in gather mode)."""
        ids = torch.arange(bsz, dtype=torch.int64, device=device)
        if self.gather:
            from .distributed import sample_offset

            ids = ids + sample_offset(bsz, group=self.group, device=device)
        return ids.repeat(n_views)

    def forward(self, features, instance, **rows) -> Tensor:
        return self._loss(self.config, features, instance, **rows)

    def extra_repr(self) -> str:
        c = self.config
        return f"temperature={c.temperature:g}, reduction={c.reduction!r}, gather={self.gather}"


class NTXentLoss(ContrastiveLoss):
    """NT-Xent / InfoNCE (SimCLR): the other views of a sample are its positives, every other row
    a negative. ``forward(z1, z2)`` or ``forward(features [bsz, n_views, d])``."""

    def __init__(self, temperature: float = 0.5, *, reduction: str = "mean", gather: bool = False, group=None):
        super().__init__(LossConfig.preset("nt_xent", temperature, reduction=reduction), gather=gather, group=group)

    def forward(self, features, z2=None) -> Tensor:
        v = _views(features, z2)
        bsz, n_views = v.shape[:2]
        if n_views < 2:
            raise ValueError(f"features: NT-Xent needs at least two views per sample, got shape {tuple(v.shape)}")
        return self._loss(self.config, _rows(v), self._instance(bsz, n_views, v.device))


class SupConLoss(ContrastiveLoss):
    """SupCon (HobbitLong/SupContrast ``SupConLoss``): ``forward(features [bsz, n_views, d],
    labels=None)``; the loss is scaled by temperature / base_temperature, and an anchor without
    positives contributes 0 (SupContrast after its PR #142; ``empty_positives="error"`` raises
    instead). Without labels it is SimCLR's loss (positives: the other views). Flat ``[n, d]``
    features with labels are one view per row (positives: same label). ``contrast_mode="all"``
    only; SupContrast's explicit ``mask`` is not supported (give labels)."""

    def __init__(self, temperature: float = 0.07, contrast_mode: str = "all", base_temperature: float = 0.07, *, empty_positives: str = "zero", reduction: str = "mean", gather: bool = False, group=None):
        if contrast_mode != "all":
            raise ValueError(f"contrast_mode: only 'all' is supported, got {contrast_mode!r}")
        config = LossConfig.preset("supcon", temperature, base_temperature, empty_positives=empty_positives, reduction=reduction)
        super().__init__(config, gather=gather, group=group)

    def forward(self, features, labels=None, mask=None) -> Tensor:
        if mask is not None:
            raise ValueError("mask: not supported; describe positives with labels")
        x = _as_tensor("features", features)
        if x.dim() == 2:
            if labels is None:
                raise ValueError("labels: required with flat [n, d] features (each row is its own sample)")
            v = x.unsqueeze(1)
        else:
            v = _views(x)
        bsz, n_views = v.shape[:2]
        label = _per_sample("labels", labels, bsz, v.device)
        config = self.config if label is not None else replace(self.config, use_labels=False)
        return self._loss(
            config, _rows(v), self._instance(bsz, n_views, v.device), label=None if label is None else label.repeat(n_views)
        )


class FIRMLoss(ContrastiveLoss):
    """FIRM (Willtl/firm): inliers (labels >= 0) with the same label are positives, outliers
    (label -1) pair only with their own views. ``mode="concat"`` (the package default, all 2B
    views against each other) or ``"pairwise"`` (the paper's ``FIRMLoss``: view 1 against view 2).
    ``forward(z1, z2, labels)`` or ``forward(features [bsz, 2, d], labels=labels)``. An anchor
    without positives is an error (FIRM's package raises), unless ``empty_positives="zero"``."""

    def __init__(self, temperature: float = 0.2, mode: str = "concat", *, empty_positives: str = "error", reduction: str = "mean", gather: bool = False, group=None):
        kinds = {"concat": "firm", "pairwise": "firm_pairwise"}
        if mode not in kinds:
            raise ValueError(f"mode: 'concat' or 'pairwise', got {mode!r}")
        self.mode = mode
        super().__init__(LossConfig.preset(kinds[mode], temperature, empty_positives=empty_positives, reduction=reduction), gather=gather, group=group)

    def forward(self, features, z2=None, labels=None) -> Tensor:
        if labels is None:
            raise ValueError("labels: required (inlier class >= 0, outliers -1)")
        v = _views(features, z2)
        bsz, n_views = v.shape[:2]
        label = _per_sample("labels", labels, bsz, v.device)
        if self.mode == "concat":
            return self._loss(self.config, _rows(v), self._instance(bsz, n_views, v.device), label=label.repeat(n_views))
        if n_views != 2:
            raise ValueError(f"features: the pairwise form takes exactly two views, got shape {tuple(v.shape)}")
        ids = self._instance(bsz, 1, v.device)
        return self._loss(self.config, v[:, 0], ids, label=label, keys=v[:, 1], key_instance=ids, key_label=label)


def _outlier_rows(outliers, d: int, device, dtype) -> Optional[Tensor]:
    if outliers is None:
        return None
    o = _as_tensor("outliers", outliers)
    if o.dim() == 3:
        o = _rows(o)
    if o.dim() != 2 or o.shape[1] != d:
        raise ValueError(f"outliers: expected [m, d] or [m, n_views, d] with d = {d}, got shape {tuple(o.shape)}")
    if o.device != device or o.dtype != dtype:
        raise ValueError(f"outliers: expected {dtype} on {device} (the features'), got {o.dtype} on {o.device}")
    return o


class _WithOutliers(ContrastiveLoss):
    """Inlier views plus outlier rows of one role; outliers get ids no inlier has."""

    role: int

    def _with_outliers(self, config: LossConfig, features, z2, outliers) -> Tensor:
        v = _views(features, z2)
        bsz, n_views = v.shape[:2]
        if n_views < 2:
            raise ValueError(f"features: needs at least two views per sample, got shape {tuple(v.shape)}")
        rows = _rows(v)
        instance = self._instance(bsz, n_views, v.device)
        o = _outlier_rows(outliers, v.shape[2], v.device, v.dtype)
        if self.gather:
            # Every rank passes the same arguments (a rank may have no outliers this step).
            o = rows.new_empty((0, v.shape[2])) if o is None else o
        elif o is None or o.shape[0] == 0 or (self.role == 2 and config.norm_penalty == 0.0):
            # No outliers, or OECL with alpha = 0 (warm-up): penalty rows would contribute nothing
            # (they are never in the similarity matrix), and the library refuses penalty rows
            # without a penalty, so they are left out.
            return self._loss(config, rows, instance)
        # Outlier ids: negative and distinct per outlier row (-2, -3, ...), never an inlier's.
        outlier_ids = -2 - torch.arange(o.shape[0], dtype=torch.int64, device=v.device)
        if self.gather:
            from .distributed import sample_offset

            outlier_ids = outlier_ids - sample_offset(o.shape[0], group=self.group, device=v.device)
        role = torch.cat([torch.zeros(rows.shape[0], dtype=torch.uint8, device=v.device), torch.full((o.shape[0],), self.role, dtype=torch.uint8, device=v.device)])
        return self._loss(config, torch.cat([rows, o]), torch.cat([instance, outlier_ids]), role=role)


class OECLLoss(_WithOutliers):
    """OECL (Le-Gia & Ahn, ``NTXentOE``): NT-Xent over the in-distribution views plus ``alpha``
    times the mean raw norm of the outlier rows, which never enter the similarity matrix.
    ``forward(z1, z2, outliers=o)`` or ``forward(features [bsz, n_views, d], outliers=o)`` with
    ``o`` ``[m, d]`` or ``[m, n_views, d]``. ``alpha`` may be changed between steps; ``alpha = 0``
    (warm-up) is accepted: the outlier rows then contribute nothing."""

    role = 2

    def __init__(self, temperature: float = 0.5, alpha: float = 0.1, *, reduction: str = "mean", gather: bool = False, group=None):
        super().__init__(LossConfig.preset("oecl", temperature, alpha, reduction=reduction), gather=gather, group=group)
        self.alpha = alpha

    def forward(self, features, z2=None, outliers=None) -> Tensor:
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (alpha >= 0.0 and alpha != float("inf")):
            raise ValueError(f"alpha: must be finite and >= 0, got {alpha!r}")
        return self._with_outliers(replace(self.config, norm_penalty=float(alpha)), features, z2, outliers)


class OutlierExposureLoss(_WithOutliers):
    """NT-Xent with outlier-exposure negatives: outlier rows only enter the denominators (they
    are never anchors and never positives). ``forward(z1, z2, outliers=o)``."""

    role = 1

    def __init__(self, temperature: float = 0.5, *, reduction: str = "mean", gather: bool = False, group=None):
        super().__init__(LossConfig.preset("outlier_exposure", temperature, reduction=reduction), gather=gather, group=group)

    def forward(self, features, z2=None, outliers=None) -> Tensor:
        return self._with_outliers(self.config, features, z2, outliers)


class ClusterAwareLoss(ContrastiveLoss):
    """Cluster-aware contrastive loss (CCL, DESIGN.md's reading): samples of the same cluster and
    the cluster's prototype are positives, every prototype is in every denominator.
    ``forward(features [bsz, n_views, d] or z1, z2, clusters=[bsz] ids (-1: none),
    prototypes=[K, d])``; gradients reach the prototypes too."""

    def __init__(self, temperature: float = 0.5, *, empty_positives: str = "error", reduction: str = "mean", gather: bool = False, group=None):
        super().__init__(LossConfig.preset("cluster_aware", temperature, empty_positives=empty_positives, reduction=reduction), gather=gather, group=group)

    def forward(self, features, z2=None, clusters=None, prototypes=None) -> Tensor:
        if clusters is None or prototypes is None:
            raise ValueError("clusters, prototypes: both required (each sample's cluster id and the K x d prototypes)")
        v = _views(features, z2)
        bsz, n_views = v.shape[:2]
        cluster = _per_sample("clusters", clusters, bsz, v.device).repeat(n_views)
        centers = _as_tensor("prototypes", prototypes)
        return self._loss(self.config, _rows(v), self._instance(bsz, n_views, v.device), label=cluster, centers=centers, proto_of=cluster)
