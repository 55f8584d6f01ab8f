"""The nn modules against the reference formulas (SupContrast's own SupConLoss code for SupCon),
the FAISS-shaped search against brute force, and the anomaly scores, on CPU tensors."""

import unittest

from torch_support import F, assert_grad_close, assert_loss_close, reference_loss, supcon_reference, torch

import numpy as np  # noqa: E402  (after torch_support, which skips this module without torch)

import contrastive_kernels as ck


def views(bsz, n_views=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(bsz, n_views, d, generator=g).requires_grad_(True)


def flat(v):
    return torch.cat(torch.unbind(v, dim=1))


class Modules(unittest.TestCase):
    def compare(self, got, want, leaves):
        assert_loss_close(self, got.detach(), want.detach())
        got.backward()
        want.backward()
        for a, b in leaves:
            assert_grad_close(self, a.grad, b.grad)

    def test_nt_xent_both_layouts(self):
        v = views(6)
        vr = v.detach().double().requires_grad_(True)
        got = ck.NTXentLoss(0.5)(v)
        want = reference_loss(flat(vr), torch.arange(6).repeat(2), temperature=0.5)
        self.compare(got, want, [(v, vr)])
        z1, z2 = v.detach()[:, 0], v.detach()[:, 1]
        self.assertEqual(ck.NTXentLoss(0.5)(z1, z2).item(), got.item())

    def test_supcon_matches_supcontrast(self):
        v = views(8, seed=1)
        labels = torch.tensor([0, 1, 0, 2, 1, 3, 0, 2])  # label 3: one sample, its other view only
        vr = v.detach().double().requires_grad_(True)
        got = ck.SupConLoss(0.1, base_temperature=0.07)(v, labels)
        want = supcon_reference(F.normalize(vr, dim=2), labels, temperature=0.1, base_temperature=0.07)
        self.compare(got, want, [(v, vr)])

    def test_supcon_without_labels_is_simclr_and_flat_rows_take_labels(self):
        v = views(5, seed=2)
        vr = v.detach().double().requires_grad_(True)
        self.compare(ck.SupConLoss(0.5, base_temperature=0.5)(v), supcon_reference(F.normalize(vr, dim=2), None, 0.5, 0.5), [(v, vr)])
        x = views(10, 1, seed=3)
        xr = x.detach().double().requires_grad_(True)
        labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 4])  # 4: no positive, contributes 0
        got = ck.SupConLoss(0.1)(x[:, 0], labels)
        want = supcon_reference(F.normalize(xr, dim=2), labels, 0.1, 0.07)
        self.compare(got, want, [(x, xr)])
        with self.assertRaises(ValueError) as e:
            ck.SupConLoss()(v, labels=torch.arange(5), mask=torch.eye(5))
        self.assertTrue(str(e.exception).startswith("mask"))

    def test_firm_concat_and_pairwise(self):
        v = views(6, seed=4)
        labels = torch.tensor([0, 0, -1, 1, 1, -1])
        vr = v.detach().double().requires_grad_(True)
        want = reference_loss(flat(vr), torch.arange(6).repeat(2), temperature=0.2, label=labels.repeat(2))
        self.compare(ck.FIRMLoss(0.2)(v, labels=labels), want, [(v, vr)])
        v.grad = None
        vr = v.detach().double().requires_grad_(True)
        ids = torch.arange(6)
        want = reference_loss(vr[:, 0], ids, temperature=0.2, label=labels, keys=vr[:, 1], key_instance=ids, key_label=labels)
        self.compare(ck.FIRMLoss(0.2, mode="pairwise")(v[:, 0], v[:, 1], labels=labels), want, [(v, vr)])

    def test_oecl_and_its_warm_up(self):
        v, o = views(4, seed=5), views(3, 1, seed=6)
        vr, orr = v.detach().double().requires_grad_(True), o.detach().double().requires_grad_(True)
        rows = torch.cat([flat(vr), orr[:, 0]])
        inst = torch.cat([torch.arange(4).repeat(2), torch.tensor([-2, -3, -4])])
        role = torch.tensor([0] * 8 + [2] * 3)
        loss = ck.OECLLoss(0.5, alpha=0.1)
        want = reference_loss(rows, inst, temperature=0.5, role=role, norm_penalty=0.1)
        self.compare(loss(v, outliers=o[:, 0]), want, [(v, vr), (o, orr)])
        # alpha = 0 (warm-up): accepted, the outliers contribute nothing (no gradient either).
        loss.alpha = 0.0
        v.grad, o.grad = None, None
        got = loss(v, outliers=o[:, 0])
        got.backward()
        self.assertEqual(got.item(), ck.NTXentLoss(0.5)(v).item())
        self.assertTrue(o.grad is None or bool((o.grad == 0).all()))
        loss.alpha = -1.0
        with self.assertRaises(ValueError) as e:
            loss(v, outliers=o[:, 0])
        self.assertTrue(str(e.exception).startswith("alpha"))

    def test_outlier_exposure(self):
        v, o = views(4, seed=7), views(2, 2, seed=8)
        vr, orr = v.detach().double().requires_grad_(True), o.detach().double().requires_grad_(True)
        rows = torch.cat([flat(vr), flat(orr)])
        inst = torch.cat([torch.arange(4).repeat(2), torch.tensor([-2, -3, -4, -5])])
        role = torch.tensor([0] * 8 + [1] * 4)
        want = reference_loss(rows, inst, temperature=0.5, role=role)
        self.compare(ck.OutlierExposureLoss(0.5)(v, outliers=o), want, [(v, vr), (o, orr)])

    def test_cluster_aware(self):
        v = views(6, seed=9)
        protos = torch.randn(3, 8, generator=torch.Generator().manual_seed(10)).requires_grad_(True)
        clusters = torch.tensor([0, 1, 2, 0, 1, 2])
        vr, pr = v.detach().double().requires_grad_(True), protos.detach().double().requires_grad_(True)
        want = reference_loss(flat(vr), torch.arange(6).repeat(2), temperature=0.5, label=clusters.repeat(2), centers=pr, proto_of=clusters.repeat(2))
        self.compare(ck.ClusterAwareLoss(0.5)(v, clusters=clusters, prototypes=protos), want, [(v, vr), (protos, pr)])

    def test_module_errors_name_the_argument(self):
        v = views(4)
        cases = [
            (lambda: ck.NTXentLoss(-0.5), "temperature"),
            (lambda: ck.NTXentLoss(0.5)(v[:, 0]), "features"),
            (lambda: ck.NTXentLoss(0.5)(v[:, :1]), "features"),
            (lambda: ck.NTXentLoss(0.5)(v[:, 0], v[:3, 1]), "features"),
            (lambda: ck.SupConLoss(contrast_mode="one"), "contrast_mode"),
            (lambda: ck.SupConLoss()(v, labels=torch.arange(3)), "labels"),
            (lambda: ck.FIRMLoss(mode="both"), "mode"),
            (lambda: ck.FIRMLoss()(v), "labels"),
            (lambda: ck.OECLLoss()(v, outliers=torch.ones(2, 5)), "outliers"),
            (lambda: ck.ClusterAwareLoss()(v, clusters=torch.arange(4)), "clusters"),
            (lambda: ck.NTXentLoss(0.5, gather=True)(v), "group"),
        ]
        for run, arg in cases:
            with self.assertRaises((ValueError, TypeError, RuntimeError, ck.CkError)) as e:
                run()
            message = e.exception.message if isinstance(e.exception, ck.CkError) else str(e.exception)
            self.assertTrue(message.startswith(arg) or f"`{arg}`" in message, f"{arg}: {message}")


def brute_force(q, b, k, exclude_self=False):
    s = F.normalize(q.double(), dim=1) @ F.normalize(b.double(), dim=1).T
    if exclude_self:
        s.fill_diagonal_(float("-inf"))
    # Ties to the smaller index: sort by index, then stably by value.
    order = torch.sort(-s, dim=1, stable=True).indices[:, :k]
    return s.gather(1, order), order


class Search(unittest.TestCase):
    def test_knn_search_is_exact_with_int64_ids(self):
        g = torch.Generator().manual_seed(0)
        q, b = torch.randn(7, 16, generator=g), torch.randn(50, 16, generator=g)
        D, I = ck.knn_search(q, b, 5)
        wd, wi = brute_force(q, b, 5)
        self.assertEqual(I.dtype, torch.int64)
        self.assertTrue(torch.equal(I, wi))
        torch.testing.assert_close(D.double(), wd, rtol=0, atol=1e-6)

    def test_ties_go_to_the_smaller_index_and_exclusion(self):
        b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 0.0]])
        D, I = ck.knn_search(torch.tensor([[1.0, 0.0]]), b, 3)
        self.assertEqual(I.tolist(), [[0, 2, 3]])
        D, I = ck.knn_search(b, b, 2, exclude_self=True)
        wd, wi = brute_force(b, b, 2, exclude_self=True)
        self.assertTrue(torch.equal(I, wi))

    def test_numpy_in_numpy_out_and_the_index(self):
        rng = np.random.default_rng(1)
        b = rng.standard_normal((40, 8)).astype(np.float32)
        q = rng.standard_normal((3, 8)).astype(np.float32)
        D, I = ck.knn_search(q, b, 4)
        self.assertIsInstance(D, np.ndarray)
        self.assertEqual(I.dtype, np.int64)
        index = ck.KNNIndex(8)
        index.add(b[:25])
        index.add(b[25:])
        self.assertEqual(index.ntotal, 40)
        D2, I2 = index.search(q, 4)
        np.testing.assert_array_equal(I, I2)
        np.testing.assert_array_equal(D, D2)
        with self.assertRaises(ValueError) as e:
            index.add(b[:, :4])
        self.assertTrue(str(e.exception).startswith("x"))

    def test_scores(self):
        g = torch.Generator().manual_seed(2)
        q, b = torch.randn(6, 8, generator=g) * 3, torch.randn(30, 8, generator=g)
        D, _ = ck.knn_search(q, b, 5)
        Dd = D.double()
        torch.testing.assert_close(ck.knn_distance(D), 2 - 2 * Dd[:, 4])
        torch.testing.assert_close(ck.knn_distance(D, 2), 2 - 2 * Dd[:, 1])
        torch.testing.assert_close(ck.mean_topk_similarity(D, 3), Dd[:, :3].mean(1))
        norms = torch.linalg.vector_norm(q, dim=1)
        torch.testing.assert_close(ck.norm_weighted_mean_topk(D, norms, 3), Dd[:, :3].mean(1) * norms.double())
        torch.testing.assert_close(ck.csi_score(D, norms), Dd[:, 0] * norms.double())
        torch.testing.assert_close(ck.norm_score(q), torch.linalg.vector_norm(q.double(), dim=1), rtol=1e-6, atol=1e-6)
        memory = torch.randn(4, 8, generator=g)
        h, m = q.double(), memory.double()
        recon = torch.softmax(h @ m.T / 0.5, dim=1) @ m
        torch.testing.assert_close(ck.mcod_score(q, memory, 0.5), ((h - recon) ** 2).sum(1), rtol=1e-5, atol=1e-6)
        r = ck.detection_report(torch.tensor([0.1, 0.2, 0.3]), np.array([0.25, 0.9]))
        self.assertAlmostEqual(r["auroc"], 5 / 6, places=12)
        for run, arg in (
            (lambda: ck.knn_distance(D, 6), "k"),
            (lambda: ck.knn_distance(D[0]), "D"),
            (lambda: ck.csi_score(D, norms[:3]), "norms"),
            (lambda: ck.mcod_score(q, memory[:, :4]), "memory"),
            (lambda: ck.KNNIndex(0), "d"),
            (lambda: ck.KNNIndex(8).search(q, 1), "index"),
            (lambda: ck.knn_search(q, b, 2.5), "k"),
        ):
            with self.assertRaises((ValueError, TypeError)) as e:
                run()
            self.assertTrue(str(e.exception).startswith(arg), f"{arg}: {e.exception}")


if __name__ == "__main__":
    unittest.main()
