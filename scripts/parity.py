#!/usr/bin/env python3
"""Parity of the fused losses with PyTorch re-implementations of the reference code (GPU + torch).

For each loss, dtype and shape: the same random inputs go through the library (python/
contrastive_kernels over the C ABI) and through a plain-PyTorch re-implementation of the reference
formula, computed in float64 on the same rounded inputs; the script prints the loss's relative
difference and the gradients' max difference relative to max |grad|, checks them against DESIGN.md
section 7, and exits 1 on a violation.

References re-implemented (each normalizes first: the references take unit features, the library
takes raw ones and normalizes itself):
  * SimCLR NT-Xent: 2B x 2B logits, diagonal removed, the other view as the target class.
  * SupContrast `SupConLoss` (HobbitLong/SupContrast losses.py, contrast_mode "all"): label mask
    tiled over views, self-contrast masked, mean log-probability over positives, times
    -(tau / base_tau), mean over anchors.
  * FIRM, Willtl/firm `firm/loss.py`: "concat" (2B x 2B; inliers are positives of every inlier,
    outliers only of their paired view) and "pairwise" (B x B view 1 against view 2; outliers only
    the diagonal). Target distribution = mask / row count, loss = -sum(p * log_softmax) / rows.
  * Top-k: torch.mm of the normalized rows + torch.topk, in float64.

  python3 scripts/parity.py [--out parity.json] [--lib path/to/libcontrastive_kernels.so]
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import contrastive_kernels as ck  # noqa: E402

# DESIGN.md section 7: (loss relative, gradient relative to max |grad|).
TOLERANCES = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 1e-2), torch.bfloat16: (5e-3, 1e-2)}


def nt_xent_reference(x, tau):
    z = F.normalize(x, dim=1)
    n = z.shape[0]
    b = n // 2
    logits = z @ z.T / tau
    logits = logits.masked_fill(torch.eye(n, dtype=torch.bool, device=x.device), float("-inf"))
    target = torch.cat([torch.arange(b, n), torch.arange(0, b)]).to(x.device)
    return F.cross_entropy(logits, target)


def supcon_reference(x, labels, tau, base_tau):
    # x holds the views stacked view-major (view 1 of every sample, then view 2), as SupContrast's
    # torch.cat(torch.unbind(features, dim=1)) lays them out.
    z = F.normalize(x, dim=1)
    n = z.shape[0]
    views = n // labels.shape[0]
    logits = z @ z.T / tau
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    same = (labels[:, None] == labels[None, :]).to(x.dtype).repeat(views, views)
    not_self = 1.0 - torch.eye(n, dtype=x.dtype, device=x.device)
    positives = same * not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True))
    count = positives.sum(1)
    count = torch.where(count < 1e-6, torch.ones_like(count), count)
    mean_log_prob = (positives * log_prob).sum(1) / count
    return (-(tau / base_tau) * mean_log_prob).mean()


def firm_concat_reference(f1, f2, labels, tau, outlier=-1):
    z = F.normalize(torch.cat([f1, f2]), dim=1)
    n = z.shape[0]
    logits = z @ z.T / tau
    logits = logits.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), -1e9)
    log_q = F.log_softmax(logits, dim=1)
    both = torch.cat([labels, labels])[:, None]
    inlier = (both != outlier).to(z.dtype)
    pair = torch.eye(n, dtype=z.dtype, device=z.device)
    pair = pair + pair.roll(shifts=n // 2, dims=0)
    mask = inlier * (inlier @ inlier.T) + (1.0 - inlier) * pair
    mask = mask * (1.0 - torch.eye(n, dtype=z.dtype, device=z.device))
    target = mask / mask.sum(1, keepdim=True).clamp(min=1.0)
    return -(target * log_q).sum() / n


def firm_pairwise_reference(f1, f2, labels, tau, outlier=-1):
    u1, u2 = F.normalize(f1, dim=1), F.normalize(f2, dim=1)
    log_q = F.log_softmax(u1 @ u2.T / tau, dim=1)
    inlier = (labels != outlier).to(u1.dtype)[:, None]
    mask = inlier @ inlier.T + torch.eye(labels.shape[0], dtype=u1.dtype, device=u1.device) * (1.0 - inlier)
    target = mask / mask.sum(1, keepdim=True).clamp(min=1.0)
    return -(target * log_q).sum() / labels.shape[0]


def compare(name, dtype, b, d, lib_fn, ref_fn, inputs):
    """inputs: the differentiable tensors (in `dtype`); both functions take them in order."""
    lib_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    lib_loss = lib_fn(*lib_inputs)
    lib_loss.backward()
    ref_loss = ref_fn(*ref_inputs)
    ref_loss.backward()
    loss_rel = abs(lib_loss.item() - ref_loss.item()) / max(abs(ref_loss.item()), 1e-6)
    grad_rel = 0.0
    for lt, rt in zip(lib_inputs, ref_inputs):
        scale = rt.grad.abs().max().item()
        grad_rel = max(grad_rel, (lt.grad.double() - rt.grad).abs().max().item() / max(scale, 1e-30))
    loss_tol, grad_tol = TOLERANCES[dtype]
    ok = loss_rel <= loss_tol and grad_rel <= grad_tol
    row = {
        "loss": name, "dtype": str(dtype).replace("torch.", ""), "B": b, "d": d,
        "library": lib_loss.item(), "reference": ref_loss.item(),
        "loss_rel_err": loss_rel, "grad_rel_err": grad_rel, "loss_tol": loss_tol, "grad_tol": grad_tol, "ok": ok,
    }
    print(f"{name:14s} {row['dtype']:9s} B={b:5d} d={d:4d}  loss {lib_loss.item():+.6f} vs {ref_loss.item():+.6f}"
          f"  rel {loss_rel:.2e} (<= {loss_tol:.0e})  grad rel {grad_rel:.2e} (<= {grad_tol:.0e})  {'ok' if ok else 'FAIL'}")
    return row


def compare_topk(dtype, dev, gen, nq=1000, nb=5000, d=128, k=50):
    """The library's top-k against torch.mm + torch.topk on float64 cosines of the same inputs: the
    neighbours' true similarities must be the true top-k values (a different index is allowed only
    where similarities tie within the tolerance), and the returned values must match them."""
    q = torch.randn(nq, d, generator=gen).to(dev, dtype)
    b = torch.randn(nb, d, generator=gen).to(dev, dtype)
    values, indices = ck.topk(q, b, k)
    sims = F.normalize(q.double(), dim=1) @ F.normalize(b.double(), dim=1).T
    want = torch.topk(sims, k, dim=1).values
    got_true = sims.gather(1, indices.long())
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    rank_err = (got_true.sort(dim=1, descending=True).values - want).abs().max().item()
    value_err = (values.double() - got_true).abs().max().item()
    ok = rank_err <= tol and value_err <= tol
    name = str(dtype).replace("torch.", "")
    print(f"{'topk':14s} {name:9s} nq={nq} nb={nb} d={d} k={k}  neighbour-rank err {rank_err:.2e}, value err {value_err:.2e} (<= {tol:.0e})  {'ok' if ok else 'FAIL'}")
    return {"loss": "topk", "dtype": name, "B": nq, "d": d, "k": k, "rank_err": rank_err, "value_err": value_err, "tol": tol, "ok": ok}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--lib", help="the cdylib (default: $CONTRASTIVE_KERNELS_LIB or target/release)")
    args = parser.parse_args()
    ck.load_library(args.lib)
    if not torch.cuda.is_available():
        sys.exit("parity: no CUDA device visible to PyTorch")
    why = ck.device_check(0)
    if why is not None:
        sys.exit(f"parity: the library cannot use the GPU: {why}")
    dev = torch.device("cuda", 0)
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for b, d in ((512, 128), (100, 200), (1000, 64)):
            x = torch.randn(2 * b, d, generator=gen).to(dev, dtype)
            instance = torch.arange(b, dtype=torch.int32, device=dev).repeat(2)
            labels = torch.randint(0, 10, (b,), generator=gen).to(dev)
            firm_labels = torch.where(torch.rand(b, generator=gen) < 0.3, -1, 0).to(dev)

            cfg = ck.LossConfig.preset("nt_xent", 0.5)
            rows.append(compare("nt_xent", dtype, b, d,
                                lambda t: ck.contrastive_loss(t, instance, config=cfg),
                                lambda t: nt_xent_reference(t, 0.5), [x]))

            cfg = ck.LossConfig.preset("supcon", 0.1, 0.07)
            lab2 = labels.to(torch.int32).repeat(2)
            rows.append(compare("supcon", dtype, b, d,
                                lambda t: ck.contrastive_loss(t, instance, config=cfg, label=lab2),
                                lambda t: supcon_reference(t, labels, 0.1, 0.07), [x]))

            cfg = ck.LossConfig.preset("firm", 0.2)
            fl2 = firm_labels.to(torch.int32).repeat(2)
            rows.append(compare("firm_concat", dtype, b, d,
                                lambda t: ck.contrastive_loss(t, instance, config=cfg, label=fl2),
                                lambda t: firm_concat_reference(t[:b], t[b:], firm_labels, 0.2), [x]))

            cfg = ck.LossConfig.preset("firm_pairwise", 0.2)
            inst1 = torch.arange(b, dtype=torch.int32, device=dev)
            fl1 = firm_labels.to(torch.int32)
            rows.append(compare("firm_pairwise", dtype, b, d,
                                lambda t, k: ck.contrastive_loss(t, inst1, config=cfg, label=fl1, keys=k, key_instance=inst1, key_label=fl1),
                                lambda t, k: firm_pairwise_reference(t, k, firm_labels, 0.2), [x[:b].contiguous(), x[b:].contiguous()]))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        rows.append(compare_topk(dtype, dev, gen))
    failed = [r for r in rows if not r["ok"]]
    print(f"parity: {len(rows) - len(failed)} of {len(rows)} within DESIGN.md's tolerances")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(0), "rows": rows}, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
