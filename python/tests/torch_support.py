"""Shared by the PyTorch tests: the import (skipped without torch, unless CK_REQUIRE_TORCH=1, as in
CI's torch venv, makes a missing torch a failure), and independent float64 references of the
losses written from DESIGN.md sections 2-3 with plain torch ops (dense masks, autograd)."""

import os
import sys
import unittest
from pathlib import Path

if os.environ.get("CK_TEST_INSTALLED") != "1":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def require_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        if os.environ.get("CK_REQUIRE_TORCH") == "1":
            raise
        raise unittest.SkipTest("PyTorch is not installed (CI's torch venv runs these tests)")
    return torch


torch = require_torch()
F = torch.nn.functional

# DESIGN.md section 7, f32 inputs.
LOSS_RTOL = 1e-4


def assert_grad_close(test, got, want, what=""):
    test.assertEqual(tuple(got.shape), tuple(want.shape), what)
    if want.numel() == 0:
        return
    got, want = got.double(), want.double()
    tol = 1e-4 * want.abs().max().item() + 1e-6
    err = (got - want).abs().max().item()
    test.assertLessEqual(err, tol, f"{what}: max abs error {err:.3g} > {tol:.3g}")


def assert_loss_close(test, got, want, rtol=LOSS_RTOL, what=""):
    got, want = torch.as_tensor(got).double(), torch.as_tensor(want).double()
    err = (got - want).abs().max().item()
    tol = rtol * max(want.abs().max().item(), 1e-6)
    test.assertLessEqual(err, tol, f"{what}: {got.tolist()} vs {want.tolist()} (error {err:.3g} > {tol:.3g})")


def reference_loss(x, instance, *, temperature, scale=1.0, label=None, role=None, weight=None, keys=None, key_instance=None, key_label=None, centers=None, proto_of=None, reduction="mean", empty_positives="error", norm_penalty=0.0):
    """DESIGN.md's loss in float64, dense. Returns the reduced loss (or per-anchor losses)."""
    x = x.double()
    n = x.shape[0]
    role = torch.zeros(n, dtype=torch.int64) if role is None else role.long()
    u = F.normalize(x, dim=1, eps=1e-12)
    pairwise = keys is not None
    if pairwise:
        cols = F.normalize(keys.double(), dim=1, eps=1e-12)
        col_inst, col_label = key_instance.long(), None if key_label is None else key_label.long()
        col_ok = torch.ones(cols.shape[0], dtype=torch.bool)
    else:
        cols, col_inst, col_label = u, instance.long(), None if label is None else label.long()
        col_ok = role != 2
    s = u @ cols.T / temperature
    inst = instance.long()
    pos = inst[:, None] == col_inst[None, :]
    if label is not None:
        lab = label.long()
        pos = pos | ((lab[:, None] >= 0) & (lab[:, None] == col_label[None, :]))
    allowed = col_ok[None, :].expand(n, -1).clone()
    if not pairwise:
        allowed &= ~torch.eye(n, dtype=torch.bool)
    pos &= allowed
    if centers is not None:
        c = F.normalize(centers.double(), dim=1, eps=1e-12)
        s = torch.cat([s, u @ c.T / temperature], dim=1)
        p = proto_of.long()
        proto_pos = (p[:, None] == torch.arange(c.shape[0])[None, :]) & (p[:, None] >= 0)
        pos = torch.cat([pos, proto_pos], dim=1)
        allowed = torch.cat([allowed, torch.ones(n, c.shape[0], dtype=torch.bool)], dim=1)
    masked = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(masked, dim=1)
    count = pos.sum(1)
    anchors = role == 0
    if empty_positives == "error" and bool((anchors & (count == 0)).any()):
        raise ValueError("reference: an anchor without positives")
    pos_mean = torch.where(pos, s, torch.zeros_like(s)).sum(1) / count.clamp(min=1)
    per = scale * (lse - pos_mean)
    per = torch.where(anchors & (count > 0), per, torch.zeros_like(per))
    if reduction == "per_anchor":
        return per if weight is None else per * weight.double()
    w = torch.ones(n, dtype=torch.float64) if weight is None else weight.double()
    total = (per * w).sum()
    if reduction == "mean":
        total = total / max(int(anchors.sum()), 1)
    outl = role == 2
    if bool(outl.any()):
        total = total + norm_penalty * torch.linalg.vector_norm(x[outl], dim=1).mean()
    return total


def supcon_reference(features, labels=None, temperature=0.07, base_temperature=0.07):
    """HobbitLong/SupContrast losses.py SupConLoss (contrast_mode 'all'), on unit features, with
    its PR #142 guard for anchors without positives."""
    bsz = features.shape[0]
    if labels is None:
        mask = torch.eye(bsz, dtype=torch.float64)
    else:
        labels = labels.contiguous().view(-1, 1)
        mask = torch.eq(labels, labels.T).double()
    contrast_count = features.shape[1]
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor_feature, anchor_count = contrast_feature, contrast_count
    anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), temperature)
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(anchor_count, contrast_count)
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(bsz * anchor_count).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mask_pos_pairs = mask.sum(1)
    mask_pos_pairs = torch.where(mask_pos_pairs < 1e-6, torch.ones_like(mask_pos_pairs), mask_pos_pairs)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask_pos_pairs
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(anchor_count, bsz).mean()
