"""The CUDA-tensor paths (the fused kernels through the device entry points, on PyTorch's current
stream) against the CPU paths (the library's f64 oracle), DESIGN.md section 7's tolerances.
Skipped where torch has no CUDA device or the library cannot use it; owed on a GPU
(benches/reports/PENDING.md)."""

import unittest

from torch_support import assert_loss_close, torch

import contrastive_kernels as ck

if not torch.cuda.is_available():
    raise unittest.SkipTest("no CUDA device for torch")
if ck.device_check(0) is not None:
    raise unittest.SkipTest(f"the library cannot use the GPU: {ck.device_check(0)}")

TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 1e-2), torch.bfloat16: (5e-3, 1e-2)}


def both(t):
    a = t.detach().clone().requires_grad_(t.requires_grad)
    b = t.detach().cuda().requires_grad_(t.requires_grad)
    return a, b


class CudaAgainstCpu(unittest.TestCase):
    def run_case(self, make, dtype, *tensors):
        cpu, gpu = zip(*(both(t) for t in tensors))
        loss_cpu, loss_gpu = make(*cpu), make(*gpu)
        rtol, gtol = TOL[dtype]
        assert_loss_close(self, loss_gpu.detach().cpu(), loss_cpu.detach(), rtol=rtol, what=str(dtype))
        loss_cpu.backward()
        loss_gpu.backward()
        for a, b in zip(cpu, gpu):
            if a.requires_grad:
                want, got = a.grad.double(), b.grad.cpu().double()
                err = (got - want).abs().max().item()
                self.assertLessEqual(err, gtol * want.abs().max().item() + 1e-6, f"{dtype}: gradient error {err}")

    def test_losses(self):
        g = torch.Generator().manual_seed(0)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            v = torch.randn(64, 2, 32, generator=g).to(dtype).requires_grad_(True)
            labels = torch.randint(0, 4, (64,), generator=g)
            self.run_case(lambda x: ck.NTXentLoss(0.5)(x), dtype, v)
            self.run_case(lambda x, lab: ck.SupConLoss(0.1)(x, lab), dtype, v, labels)
            self.run_case(lambda x, lab: ck.FIRMLoss(0.2, mode="pairwise")(x[:, 0], x[:, 1], labels=lab), dtype, v, labels)
            o = torch.randn(16, 32, generator=g).to(dtype).requires_grad_(True)
            self.run_case(lambda x, out: ck.OECLLoss(0.5, 0.1)(x, outliers=out), dtype, v, o)
            p = torch.randn(4, 32, generator=g).to(dtype).requires_grad_(True)
            self.run_case(lambda x, lab, c: ck.ClusterAwareLoss(0.5)(x, clusters=lab, prototypes=c), dtype, v, labels, p)

    def test_topk(self):
        g = torch.Generator().manual_seed(1)
        q, b = torch.randn(50, 64, generator=g), torch.randn(3000, 64, generator=g)
        for k in (1, 50, 1500):
            dc, ic = ck.knn_search(q, b, k)
            dg, ig = ck.knn_search(q.cuda(), b.cuda(), k)
            self.assertTrue(torch.equal(ig.cpu(), ic), f"k = {k}")
            torch.testing.assert_close(dg.cpu(), dc, rtol=0, atol=1e-5)

    def test_opcheck_on_cuda(self):
        x = torch.randn(16, 8, device="cuda", requires_grad=True)
        ids = torch.arange(8, device="cuda").repeat(2)
        c = ck.LossConfig.preset("nt_xent", 0.5)
        args = (x, ids, None, None, None, None, None, None, None, None, 0, c.temperature, c.scale, False, 0, 0, 0.0, None)
        torch.library.opcheck(torch.ops.contrastive_kernels.contrastive_forward.default, args)
        torch.library.opcheck(torch.ops.contrastive_kernels.topk.default, (x.detach(), x.detach(), 3, False, 0))


if __name__ == "__main__":
    unittest.main()
