"""The registered ops on CPU tensors (the library's f64 oracle through the host entry points)
against independent float64 references; torch.library.opcheck; torch.compile(fullgraph=True);
int32 / int64 ids, numpy inputs, and errors naming the argument."""

import unittest

from torch_support import assert_grad_close, assert_loss_close, reference_loss, torch

import contrastive_kernels as ck


def pairs(b):
    return torch.arange(b).repeat(2)


def leaf(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)


class LossAgainstReference(unittest.TestCase):
    def check(self, config, x, instance, ref_kwargs, grads=("features",), upstream_seed=None, **rows):
        out = ck.contrastive_loss(x, instance, config=config, **rows)
        xr = x.detach().double().requires_grad_(True)
        ref_rows = {k: (v.detach().double().requires_grad_(True) if k in ("keys", "centers") else v) for k, v in rows.items()}
        want = reference_loss(xr, instance, temperature=config.temperature, scale=config.scale, reduction=config.reduction,
                              empty_positives=config.empty_positives, norm_penalty=config.norm_penalty, **ref_rows, **ref_kwargs)
        assert_loss_close(self, out.detach(), want.detach())
        if config.reduction == "per_anchor":
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed or 3), dtype=torch.float64)
            (out * g.float()).sum().backward()
            (want * g).sum().backward()
        else:
            out.backward()
            want.backward()
        assert_grad_close(self, x.grad, xr.grad, "features")
        for name in grads:
            if name != "features":
                assert_grad_close(self, rows[name].grad, ref_rows[name].grad, name)
        return out

    def test_nt_xent(self):
        x = leaf(12, 8)
        self.check(ck.LossConfig.preset("nt_xent", 0.5), x, pairs(6), {})

    def test_supcon_with_labels_and_zero_policy(self):
        x = leaf(12, 8, seed=1)
        label = torch.tensor([0, 1, 2, 0, 1, 3] * 2)
        config = ck.LossConfig.preset("supcon", 0.1, 0.07, empty_positives="zero")
        self.check(config, x, torch.arange(12), {}, label=label)  # ids all distinct: positives from labels only

    def test_firm_pairwise_keys_get_gradients(self):
        x, k = leaf(6, 8, seed=2), leaf(6, 8, seed=3)
        label = torch.tensor([0, 0, 1, -1, 1, -1])
        inst = torch.arange(6)
        config = ck.LossConfig.preset("firm_pairwise", 0.2)
        self.check(config, x, inst, {}, grads=("features", "keys"), label=label, keys=k, key_instance=inst, key_label=label)

    def test_oecl_penalty_rows(self):
        x = leaf(10, 8, seed=4)
        role = torch.tensor([0] * 8 + [2, 2], dtype=torch.uint8)
        inst = torch.cat([pairs(4), torch.tensor([100, 101])])
        self.check(ck.LossConfig.preset("oecl", 0.5, 0.1), x, inst, {}, role=role)

    def test_outlier_exposure_negatives_and_sum(self):
        x = leaf(10, 8, seed=5)
        role = torch.tensor([0] * 8 + [1, 1], dtype=torch.uint8)
        inst = torch.cat([pairs(4), torch.tensor([100, 100])])
        self.check(ck.LossConfig.preset("outlier_exposure", 0.5, reduction="sum"), x, inst, {}, role=role)

    def test_cluster_aware_centers_get_gradients(self):
        x, c = leaf(12, 8, seed=6), leaf(3, 8, seed=7)
        cluster = torch.tensor([0, 1, 2, 0, 1, 2] * 2)
        config = ck.LossConfig.preset("cluster_aware", 0.5)
        self.check(config, x, pairs(6), {}, grads=("features", "centers"), label=cluster, centers=c, proto_of=cluster)

    def test_per_anchor_with_weights_and_penalty(self):
        x = leaf(10, 8, seed=8)
        role = torch.tensor([0] * 8 + [2, 2], dtype=torch.uint8)
        weight = torch.linspace(0.5, 1.5, 10)
        inst = torch.cat([pairs(4), torch.tensor([100, 101])])
        config = ck.LossConfig.preset("oecl", 0.5, 0.3, reduction="per_anchor")
        out = self.check(config, x, inst, {}, role=role, weight=weight)
        self.assertEqual(tuple(out.shape), (10,))

    def test_anchor_rows_are_leading_anchors(self):
        # anchor_rows = 7 of 12: the reference's rows after them negative-only (columns only).
        x, c = leaf(12, 8, seed=14), leaf(3, 8, seed=15)
        cluster = torch.tensor([0, 1, 2, 0, 1, 2] * 2)
        for reduction in ("mean", "per_anchor"):
            config = ck.LossConfig.preset("cluster_aware", 0.5, reduction=reduction)
            x.grad, c.grad = None, None
            out = ck.contrastive_loss(x, pairs(6), config=config, label=cluster, centers=c, proto_of=cluster, anchor_rows=7)
            xr, cr = x.detach().double().requires_grad_(True), c.detach().double().requires_grad_(True)
            role = torch.tensor([0] * 7 + [1] * 5, dtype=torch.uint8)
            want = reference_loss(xr, pairs(6), temperature=0.5, label=cluster, role=role, centers=cr, proto_of=cluster, reduction=reduction)
            assert_loss_close(self, out.detach(), want.detach(), what=reduction)
            g = torch.linspace(0.5, 1.5, 12, dtype=torch.float64) if reduction == "per_anchor" else torch.tensor(1.0, dtype=torch.float64)
            (out * g.float()).sum().backward()
            (want * g).sum().backward()
            assert_grad_close(self, x.grad, xr.grad, f"features {reduction}")
            assert_grad_close(self, c.grad, cr.grad, f"centers {reduction}")
            if reduction == "per_anchor":
                self.assertTrue(torch.equal(out.detach()[7:], torch.zeros(5)), "rows past anchor_rows: no loss")

    def test_int32_and_int64_ids_agree(self):
        x = leaf(8, 4, seed=9)
        config = ck.LossConfig.preset("nt_xent", 0.5)
        a = ck.contrastive_loss(x, pairs(4).to(torch.int32), config=config)
        b = ck.contrastive_loss(x, pairs(4).to(torch.int64), config=config)
        self.assertEqual(a.item(), b.item())
        with self.assertRaises(ValueError) as e:
            ck.contrastive_loss(x, pairs(4) + 2**40, config=config)
        self.assertTrue(str(e.exception).startswith("instance"), str(e.exception))

    def test_numpy_inputs(self):
        import numpy as np

        x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
        out = ck.contrastive_loss(x, np.tile(np.arange(4), 2), config=ck.LossConfig.preset("nt_xent", 0.5))
        want = reference_loss(torch.from_numpy(x), pairs(4), temperature=0.5)
        assert_loss_close(self, out, want)

    def test_half_precision_inputs(self):
        for dtype, rtol in ((torch.float16, 2e-3), (torch.bfloat16, 5e-3)):
            x = leaf(12, 8, seed=10, dtype=dtype)
            out = ck.contrastive_loss(x, pairs(6), config=ck.LossConfig.preset("nt_xent", 0.5))
            want = reference_loss(x.detach(), pairs(6), temperature=0.5)
            assert_loss_close(self, out.detach(), want, rtol=rtol, what=str(dtype))
            out.backward()
            self.assertEqual(x.grad.dtype, dtype)

    def test_library_errors_come_through(self):
        x = leaf(4, 4)
        with self.assertRaises(ck.CkError) as e:  # instance 0..3: no row has a positive
            ck.contrastive_loss(x, torch.arange(4), config=ck.LossConfig.preset("nt_xent", 0.5))
        self.assertIn("positive", e.exception.message)

    def test_errors_name_the_argument(self):
        x = leaf(8, 4)
        nt = ck.LossConfig.preset("nt_xent", 0.5)
        cases = [
            (lambda: ck.contrastive_loss(x.detach().double(), pairs(4), config=nt), "features"),
            (lambda: ck.contrastive_loss(x.detach()[None], pairs(4), config=nt), "features"),
            (lambda: ck.contrastive_loss(x, pairs(3), config=nt), "instance"),
            (lambda: ck.contrastive_loss(x, pairs(4).float(), config=nt), "instance"),
            (lambda: ck.contrastive_loss(x, pairs(4), config=ck.LossConfig.preset("supcon", 0.1)), "label"),
            (lambda: ck.contrastive_loss(x, pairs(4), config=nt, role=torch.full((8,), 5)), "role"),
            (lambda: ck.contrastive_loss(x, pairs(4), config=nt, weight=torch.ones(7)), "weight"),
            (lambda: ck.contrastive_loss(x, pairs(4), config=nt, keys=x), "keys"),
            (lambda: ck.contrastive_loss(x, pairs(4), config=nt, centers=torch.ones(2, 4)), "proto_of"),
            (lambda: ck.contrastive_loss(x, pairs(4), config=nt, centers=torch.ones(2, 3), proto_of=pairs(4)), "centers"),
            (lambda: ck.contrastive_loss(x, pairs(4), config="nt_xent"), "config"),
            (lambda: ck.contrastive_loss(x, pairs(4), config=ck.LossConfig(reduction="median")), "reduction"),
            (lambda: ck.contrastive_loss(x, pairs(4), config=nt, anchor_rows=0), "anchor_rows"),
            (lambda: ck.contrastive_loss(x, pairs(4), config=nt, anchor_rows=9), "anchor_rows"),
            (lambda: ck.contrastive_loss(x, pairs(4), config=nt, anchor_rows=2.5), "anchor_rows"),
            (lambda: ck.contrastive_loss(x, pairs(4), config=ck.LossConfig.preset("firm_pairwise", 0.2), label=pairs(4), keys=x,
                                         key_instance=pairs(4), key_label=pairs(4), anchor_rows=2), "anchor_rows"),
            (lambda: ck.topk(x, x[:, :3], 2), "bank"),
            (lambda: ck.topk(x, x, 9), "k"),
            (lambda: ck.topk(x, x, 8, exclude_self=True), "k"),
        ]
        for run, arg in cases:
            with self.assertRaises((ValueError, TypeError, ck.CkError)) as e:
                run()
            message = e.exception.message if isinstance(e.exception, ck.CkError) else str(e.exception)
            self.assertTrue(message.startswith(arg) or f"`{arg}`" in message, f"{arg}: {message}")


class OpCheck(unittest.TestCase):
    """torch.library.opcheck: schema, fake tensors, autograd registration, AOT dispatch."""

    def args(self, **over):
        x = leaf(8, 4, seed=11)
        c = ck.LossConfig.preset("nt_xent", 0.5)
        a = dict(features=x, instance=pairs(4), label=None, role=None, weight=None, keys=None, key_instance=None, key_label=None, centers=None, proto_of=None,
                 geometry=0, temperature=c.temperature, scale=c.scale, use_labels=False, reduction=0, empty_positives=0, norm_penalty=0.0,
                 anchor_rows=None)
        a.update(over)
        return a

    def test_forward(self):
        op = torch.ops.contrastive_kernels.contrastive_forward.default
        torch.library.opcheck(op, tuple(self.args().values()))
        cluster = torch.tensor([0, 1, 0, 1] * 2)
        centers = leaf(2, 4, seed=12)
        torch.library.opcheck(op, tuple(self.args(label=cluster, use_labels=True, centers=centers, proto_of=cluster, reduction=2).values()))
        k = leaf(8, 4, seed=13)
        torch.library.opcheck(op, tuple(self.args(geometry=1, keys=k, key_instance=pairs(4)).values()))
        torch.library.opcheck(op, tuple(self.args(anchor_rows=5, reduction=2).values()))

    def test_backward(self):
        a = self.args()
        out, lse, positives = torch.ops.contrastive_kernels.contrastive_forward(*a.values())
        a["features"] = a["features"].detach()
        args = (torch.tensor(1.0), lse.detach(), positives) + tuple(a.values())  # no double backward
        torch.library.opcheck(torch.ops.contrastive_kernels.contrastive_backward.default, args)

    def test_topk(self):
        q, b = torch.randn(5, 8), torch.randn(20, 8)
        torch.library.opcheck(torch.ops.contrastive_kernels.topk.default, (q, b, 3, False, -1))
        torch.library.opcheck(torch.ops.contrastive_kernels.topk.default, (b, b, 3, False, 0))


class Compile(unittest.TestCase):
    def test_fullgraph_compile_of_a_training_step(self):
        loss_fn = ck.NTXentLoss(0.5)
        proj = torch.nn.Linear(6, 4)

        def step(images):
            z = proj(images)
            return loss_fn(z[:, 0], z[:, 1])

        images = torch.randn(5, 2, 6)
        eager = step(images)
        eager.backward()
        want = [p.grad.clone() for p in proj.parameters()]
        proj.zero_grad()
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        got = compiled(images)
        got.backward()
        self.assertEqual(got.item(), eager.item())
        for g, w in zip([p.grad for p in proj.parameters()], want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


if __name__ == "__main__":
    unittest.main()
