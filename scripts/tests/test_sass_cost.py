"""Tests of scripts/sass_cost.py (the static SASS cost model), standard library only.

    python3 -m unittest discover -s scripts/tests       # scripts/test.sh runs this with CK_REQUIRE_NVCC=1

The toolchain tests compile one small .cu of their own (a few seconds): real ptxas / cuobjdump output
must parse, and a planted change (an IEEE division instead of a multiply in the epilogue of a
column-tile loop) must move the per-logit numbers and the time estimate. Without nvcc they skip,
unless CK_REQUIRE_NVCC=1 (then they fail).
"""

import os
import re
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import sass_cost as sc  # noqa: E402

# One warp per block, a 16 x 8 tile (one mma.m16n8k16 per k step of 16, 4 logits per thread): the
# k-loop inside a column-tile loop, as the fused loss kernels. `OP` is planted: * or /.
PLANTED_KERNEL = r"""
#include <cuda_bf16.h>
// One m16n8k16 step of block row blockIdx.x against column tile col0 at k0 (d columns per row).
__device__ __forceinline__ void mma_k16(float (&c)[4], const unsigned* a, const unsigned* b, int col0, int d, int k0) {
    const int lane = threadIdx.x % 32;
    const unsigned* ak = a + (blockIdx.x * 16 * d + k0) / 2 + lane * 4;
    const unsigned* bk = b + (col0 * d + k0) / 2 + lane * 2;
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(ak[0]), "r"(ak[1]), "r"(ak[2]), "r"(ak[3]), "r"(bk[0]), "r"(bk[1]));
}
template <bool DIV>
__device__ __forceinline__ void sweep(const unsigned* a, const unsigned* b, const float* norms, int n, int d, float* out) {
    const int lane = threadIdx.x % 32;
    float sum = 0.f;
#pragma unroll 1
    for (int col0 = 0; col0 < n; col0 += 8) {
        float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 1
        for (int k0 = 0; k0 < d; k0 += 16) mma_k16(c, a, b, col0, d, k0);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float w = norms[col0 + (lane % 4) * 2 + e % 2];
            sum += DIV ? c[e] / w : c[e] * w;
        }
    }
    out[blockIdx.x * 32 + lane] = sum;
}
extern "C" __global__ void __launch_bounds__(32) planted_mul(const unsigned* a, const unsigned* b, const float* norms, int n, int d, float* out) {
    sweep<false>(a, b, norms, n, d, out);
}
extern "C" __global__ void __launch_bounds__(32) planted_div(const unsigned* a, const unsigned* b, const float* norms, int n, int d, float* out) {
    sweep<true>(a, b, norms, n, d, out);
}
// D = 64 known at compile time: the k steps unrolled into the column-tile loop (no k-loop).
extern "C" __global__ void __launch_bounds__(32) planted_unrolled(const unsigned* a, const unsigned* b, float* out, int n) {
    const int lane = threadIdx.x % 32;
    float sum = 0.f;
#pragma unroll 1
    for (int col0 = 0; col0 < n; col0 += 8) {
        float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int k0 = 0; k0 < 64; k0 += 16) mma_k16(c, a, b, col0, 64, k0);
        sum += c[0] + c[1] + c[2] + c[3];
    }
    out[blockIdx.x * 32 + lane] = sum;
}
// The first k step peeled (tile.cuh's mma_resident_tile): its MMA takes a zero accumulator (RZ), so
// nothing zeroes the accumulators per tile, and the k-loop starts at k = 16.
extern "C" __global__ void __launch_bounds__(32) planted_peeled(const unsigned* a, const unsigned* b, const float* norms, int n, int d, float* out) {
    const int lane = threadIdx.x % 32;
    float sum = 0.f;
#pragma unroll 1
    for (int col0 = 0; col0 < n; col0 += 8) {
        float c[4] = {0.f, 0.f, 0.f, 0.f};
        mma_k16(c, a, b, col0, d, 0);
#pragma unroll 1
        for (int k0 = 16; k0 < d; k0 += 16) mma_k16(c, a, b, col0, d, k0);
#pragma unroll
        for (int e = 0; e < 4; ++e) sum += c[e] * norms[col0 + (lane % 4) * 2 + e % 2];
    }
    out[blockIdx.x * 32 + lane] = sum;
}
// Resources only: 4000 bytes of static shared memory, 128 threads.
extern "C" __global__ void __launch_bounds__(128) smem_probe(const float* x, float* out) {
    __shared__ float buf[1000];
    for (int i = threadIdx.x; i < 1000; i += 128) buf[i] = x[i];
    __syncthreads();
    out[threadIdx.x] = buf[999 - threadIdx.x];
}
"""

TEST_TILE = sc.Tile("PlantedTile", 16, 8, 16, 1, 1)
TEST_MODEL = sc.KernelModel(r"^planted_(mul|div|unrolled|peeled)$", ("PlantedTile",), "HMMA",
                            lambda n, d, h, kernel, tile: (sc.ceil_div(n, 16), sc.ceil_div(n, tile.BN)),
                            sc.forward_flops, "forward")


def toolchain():
    nvcc, cuobjdump = sc.find_tool("nvcc"), sc.find_tool("cuobjdump")
    return (nvcc, cuobjdump) if nvcc and cuobjdump else None


REQUIRE = os.environ.get("CK_REQUIRE_NVCC") == "1"


def toolchain_or_skip():
    """toolchain(), or the test class skipped (an error under CK_REQUIRE_NVCC=1) where it is missing."""
    tools = toolchain()
    if tools is None:
        if REQUIRE:
            raise AssertionError("CK_REQUIRE_NVCC=1 but nvcc / cuobjdump were not found")
        raise unittest.SkipTest("nvcc / cuobjdump not found")
    return tools


class ToolchainOutput(unittest.TestCase):
    """This toolchain's real ptxas / cuobjdump output, on the kernel above."""

    @classmethod
    def setUpClass(cls):
        tools = toolchain_or_skip()
        cls.tmp = tempfile.TemporaryDirectory(prefix="sass-cost-test-")
        src = os.path.join(cls.tmp.name, "planted.cu")
        with open(src, "w") as f:
            f.write(PLANTED_KERNEL)
        cubin, report = sc.compile_cubin(tools[0], src, cls.tmp.name, cls.tmp.name)
        sc.KERNEL_MODELS.append(TEST_MODEL)
        try:
            cls.costs = {c.kernel: c for c in sc.analyse_cubin(cubin, report, "planted", tools[1],
                                                              {"PlantedTile": TEST_TILE})}
        finally:
            sc.KERNEL_MODELS.remove(TEST_MODEL)
        cls.report = report
        cls.cubin, cls.cuobjdump = cubin, tools[1]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_ptxas_report_parses(self):
        info = sc.parse_ptxas_report(self.report)
        self.assertEqual(set(info), {"planted_mul", "planted_div", "planted_unrolled", "planted_peeled", "smem_probe"})
        for name, i in info.items():
            self.assertTrue(8 <= i.regs <= 255, (name, i))
            self.assertEqual((i.spill_stores, i.spill_loads), (0, 0), name)
        self.assertEqual(info["smem_probe"].smem_bytes, 4000)
        self.assertEqual(info["smem_probe"].barriers, 1)
        self.assertEqual(info["planted_mul"].smem_bytes, 0)

    def test_launch_bounds_from_the_elf(self):
        threads = sc.parse_elf_max_threads(sc.run_tool(self.cuobjdump, "-elf", self.cubin))
        self.assertEqual(threads, {"planted_mul": 32, "planted_div": 32, "planted_unrolled": 32, "planted_peeled": 32,
                                   "smem_probe": 128})

    def test_sass_and_loops(self):
        sass = sc.parse_sass(sc.run_tool(self.cuobjdump, "-sass", self.cubin))
        self.assertEqual(set(sass), {"planted_mul", "planted_div", "planted_unrolled", "planted_peeled", "smem_probe"})
        mul = sass["planted_mul"]
        self.assertEqual(sum(i.base == "HMMA" for i in mul), 1)
        self.assertTrue(any(i.base == "EXIT" for i in mul))
        addrs = [i.addr for i in mul]
        self.assertEqual(addrs, sorted(addrs))
        roots = sc.find_loops(mul)
        self.assertEqual(len(roots), 1, "one column-tile loop")
        self.assertEqual(len(roots[0].children), 1, "holding one k-loop")
        k_loop = roots[0].children[0]
        self.assertEqual(sc.count(sc.body(mul, k_loop), "HMMA").mma, 1)
        self.assertEqual(sc.count(sc.body(mul, roots[0]), "HMMA").mma, 0, "the epilogue holds no MMA")

    def test_multiply_kernel_numbers(self):
        c = self.costs["planted_mul"]
        self.assertEqual(c.threads, 32)
        self.assertEqual(c.logits_per_thread, 4)
        self.assertEqual(c.k_loop.mma, 1)
        self.assertEqual(c.k_per_iteration, 16)
        self.assertEqual(c.mufu_per_logit, 0)
        self.assertEqual(c.calls, 0)
        self.assertGreater(c.epilogue.instructions, 4, "at least a multiply-add per logit")
        self.assertLess(c.epilogue_instructions_per_logit, 30)
        self.assertEqual(c.ctas_per_sm, 32, "one-warp blocks: the 32-block limit")
        self.assertEqual(c.notes, [])

    def test_planted_division_moves_the_numbers(self):
        mul, div = self.costs["planted_mul"], self.costs["planted_div"]
        self.assertGreaterEqual(div.mufu_per_logit, 1.0, "an IEEE division is a MUFU.RCP per logit")
        self.assertGreater(div.epilogue_instructions_per_logit, mul.epilogue_instructions_per_logit + 3)
        self.assertGreater(div.epilogue_instructions_per_logit_all_paths, div.epilogue_instructions_per_logit,
                           "the slow-path call blocks are off the hot path")
        self.assertGreaterEqual(div.calls, 1, "the division's slow path is a CALL")
        # The same k-loop: the change is the epilogue's alone.
        self.assertEqual(div.k_loop.mma, mul.k_loop.mma)
        sc.KERNEL_MODELS.append(TEST_MODEL)
        try:
            em, ed = (sc.estimate_shape(c, 8192, 128, {}) for c in (mul, div))
        finally:
            sc.KERNEL_MODELS.remove(TEST_MODEL)
        self.assertEqual(em.t_mufu, 0)
        self.assertGreater(ed.t_mufu, 0)
        self.assertGreater(ed.t_issue, em.t_issue)
        self.assertEqual(ed.mma_flops, em.mma_flops)
        self.assertEqual(em.mma_flops, em.useful_flops, "one m16n8k16 per 16 x 8 x 16 block: no waste")

    def test_unrolled_k_steps(self):
        c = self.costs["planted_unrolled"]
        self.assertTrue(c.k_unrolled)
        self.assertEqual(len(c.notes), 1, c.notes)
        self.assertEqual(c.epilogue.mma, 4, "D = 64: four k16 steps in the column-tile loop")
        self.assertGreaterEqual(c.epilogue.mma_pipeline, 4)
        self.assertLess(c.epilogue_instructions_per_logit, c.epilogue.instructions / c.logits_per_thread)
        sc.KERNEL_MODELS.append(TEST_MODEL)
        try:
            e = sc.estimate_shape(c, 8192, 64, {})
        finally:
            sc.KERNEL_MODELS.remove(TEST_MODEL)
        self.assertEqual(e.mma_flops, e.useful_flops, "the four MMAs per tile count once")

    def test_peeled_first_k_step(self):
        c, mul = self.costs["planted_peeled"], self.costs["planted_mul"]
        sass = sc.parse_sass(sc.run_tool(self.cuobjdump, "-sass", self.cubin))["planted_peeled"]
        self.assertTrue(any(i.base == "HMMA" and i.operands.endswith("RZ") for i in sass), "the peeled MMA adds to zero")
        self.assertFalse(c.k_unrolled)
        self.assertEqual((c.k_peel_steps, c.epilogue.mma), (1, 1), c.notes)
        self.assertGreaterEqual(c.k_peel_pipeline, 1)
        self.assertTrue(any("peeled" in n for n in c.notes), c.notes)
        # Its MMA is k-loop work: the per-logit figure leaves it out, and one k-loop trip fewer.
        self.assertEqual(c.epilogue_instructions_per_logit,
                         (c.epilogue.instructions - c.k_peel_pipeline) / c.logits_per_thread)
        self.assertEqual([c.k_trips(d) for d in (16, 64, 72)], [0, 3, 4])
        self.assertEqual([mul.k_trips(d) for d in (16, 64, 72)], [1, 4, 5])
        sc.KERNEL_MODELS.append(TEST_MODEL)
        try:
            e, em = sc.estimate_shape(c, 8192, 128, {}), sc.estimate_shape(mul, 8192, 128, {})
        finally:
            sc.KERNEL_MODELS.remove(TEST_MODEL)
        self.assertEqual(e.mma_flops, e.useful_flops, "the peeled MMA and the k-loop's count once each")
        self.assertEqual(e.mma_flops, em.mma_flops)

    def test_resource_only_kernel(self):
        c = self.costs["smem_probe"]
        self.assertIsNone(c.epilogue)
        self.assertEqual(c.threads, 128)
        # (4000 + 1024 reserved -> 5120 B) x 32 blocks fit; 4 warps x 32 blocks > 64 warps: 16.
        self.assertEqual((c.ctas_per_sm, c.occupancy_limiter), (16, "warps"))


REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


class RepositoryBackward(unittest.TestCase):
    """kernels/contrastive.cu as this toolchain compiles it (about half a minute): every kernel has a
    model or a stated reason for the resource columns only, and the rebuilt backward's structure is
    found (its author's SASS counts: ~12 instructions and 1 MUFU per logit on the one-exponential
    path, 2 CTAs per SM at G = 1, 1 at G = 4)."""

    @classmethod
    def setUpClass(cls):
        tools = toolchain_or_skip()
        kernels = os.path.join(REPO, "kernels")
        cls.tmp = tempfile.TemporaryDirectory(prefix="sass-cost-repo-")
        src = os.path.join(kernels, "contrastive.cu")
        cubin, report = sc.compile_cubin(tools[0], src, kernels, cls.tmp.name)
        cls.header = sc.header_constants(kernels)
        costs = sc.analyse_cubin(cubin, report, "contrastive", tools[1], sc.tile_configs(kernels, [src]),
                                 header=cls.header)
        cls.costs = {c.kernel: c for c in costs}

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_every_contrastive_kernel_has_a_model(self):
        # A renamed kernel matches neither list: this fails instead of the report dropping its rows.
        self.assertGreater(len(self.costs), 20)
        for name in self.costs:
            self.assertTrue(name.startswith("contrastive_"), name)
            self.assertTrue(sc.model_for(name) is not None or sc.resource_only_reason(name) is not None,
                            f"{name}: no KERNEL_MODELS entry and not in RESOURCE_ONLY")
        for name, c in self.costs.items():
            if re.match(r"contrastive_(forward|backward)_(f16|bf16)", name):
                self.assertIsNotNone(sc.model_for(name), name)
                self.assertIsNotNone(c.epilogue, f"{name}: {c.notes}")

    def test_backward_structure(self):
        # G = 1: 4 warps; G = 4: 8 (WARPS_HALF_G4), each with all 64 rows of H U (4 m16 fragments).
        for name, ctas, threads, u_mma in (("contrastive_backward_bf16_g1", 2, 128, 16),
                                           ("contrastive_backward_f16_g4", 1, 256, 32)):
            c = self.costs[name]
            g = sc.backward_groups(name)
            self.assertEqual(c.threads, threads, name)
            self.assertEqual(c.dynamic_smem, self.header[f"CONTRASTIVE_BACKWARD_SMEM_HALF_G{g}"], name)
            self.assertEqual(c.ctas_per_sm, ctas, name)
            self.assertEqual(c.k_loop.mma % c.tile.mma_per_warp_per_k_step, 0, name)
            self.assertEqual(c.product_loop.mma, u_mma, f"{name}: U_MI x WARP_D / 8 MMAs per k16 step of H U")
            self.assertEqual(c.arms["hot"][1], 1.0, f"{name}: one ex2 per logit")
            self.assertEqual(c.arms["cold"][1], 2.0, f"{name}: two below tau ~0.029")
            self.assertLess(c.arms["hot"][0], 14, name)
            # + the staging's peeled per-column iteration (an rcp and an ex2 per column), counted for
            # every warp though only the first BN / 32 warps run it.
            self.assertLessEqual(c.mufu_per_logit, 1.0 + 2 / c.logits_per_thread, name)
            self.assertEqual(c.other_inner_loops.instructions, 0, f"{name}: {c.notes}")
            self.assertEqual(c.k_peel_steps, 1, f"{name}: mma_resident_tile's first k-step: {c.notes}")
        for name, d in (("contrastive_backward_bf16_g1", 128), ("contrastive_backward_f16_g4", 512)):
            e = sc.estimate_shape(self.costs[name], 8192, d, self.header)
            self.assertEqual(e.mma_flops, e.useful_flops, f"{name}: S once per tile, H U once: 4 N^2 D")
            # The whole-launch counts that scripts/ncu_compare.py sets beside ncu's.
            self.assertEqual(e.mma_instructions * 2 * 16 * 8 * 16, e.mma_flops, f"{name}: m16n8k16 MMAs")
            self.assertGreater(e.warp_instructions, e.mma_instructions, name)
            self.assertLess(0, e.smem_wavefronts_min)
            self.assertLessEqual(e.smem_wavefronts_min, e.smem_wavefronts, name)
            # One warp MUFU instruction serves 32 logits: n^2 / 32 x MUFU per logit over the launch.
            self.assertAlmostEqual(e.mufu_instructions, 8192 * 8192 / 32 * self.costs[name].mufu_per_logit, delta=1)
            self.assertGreaterEqual(e.wave_efficiency, 0.9, name)
        self.assertIsNone(sc.estimate_shape(self.costs["contrastive_backward_bf16_g1"], 8192, 512, self.header))

    def test_backward_tile_mirrors_the_source(self):
        with open(os.path.join(REPO, "kernels", "contrastive.cu"), encoding="utf-8") as f:
            text = f.read()
        # backward_tile mirrors these lines of BackwardTraits.
        self.assertIn("BK = E == 4 ? 16 : (G == 4 ? 64 : 32);", text)
        self.assertIn("SQUARE = E == 2 && G == 1;", text)
        self.assertIn("LOGIT_WARPS_M = SQUARE ? 2 : 4, LOGIT_WARPS_N = SQUARE ? 2 : WARPS / 4;", text)
        self.assertIn("WARPS = WIDE_D ? CK_CONTRASTIVE_BACKWARD_WARPS_HALF_G4 : 4 * G;", text)
        self.assertIn("WIDE_D = E == 2 && G == 4;", text)
        self.assertIn("BN = SQUARE ? CK_CONTRASTIVE_BACKWARD_WIDE_COLS : 64;", text)
        self.assertIn("MmaTileConfig<CK_CONTRASTIVE_BACKWARD_ROWS, BN, BK, LOGIT_WARPS_M, LOGIT_WARPS_N, E>", text)


class Occupancy(unittest.TestCase):
    """cuda_occupancy.h's rules for compute capability 9.x, worked by hand."""

    def test_registers(self):
        # 172 regs: 5504 -> 5632 per warp; 16384 / 5632 = 2 warps per sub-partition, 8 per SM: one 8-warp CTA.
        self.assertEqual(sc.occupancy(172, 256, 40960), (1, "registers"))
        # 128 regs: 4096 per warp, 4 per sub-partition, 16 per SM: two 8-warp CTAs.
        self.assertEqual(sc.occupancy(128, 256, 40960), (2, "registers"))
        # 202 regs: 6464 -> 6656; 2 per sub-partition; 8 warps: two 4-warp CTAs.
        self.assertEqual(sc.occupancy(202, 128, 37888), (2, "registers"))
        # 255 regs: 8160 -> 8192; 2 per sub-partition; 8 warps: one 8-warp CTA.
        self.assertEqual(sc.occupancy(255, 256, 0), (1, "registers"))
        # 80 regs: 2560 per warp; 6 per sub-partition (16384 / 2560 = 6.4); 24 warps: three 8-warp CTAs.
        self.assertEqual(sc.occupancy(80, 256, 0), (3, "registers"))

    def test_warps_blocks_and_shared_memory(self):
        self.assertEqual(sc.occupancy(32, 1024, 256), (2, "warps"))
        self.assertEqual(sc.occupancy(16, 32, 0), (32, "blocks"))
        # 100 KB + 1 KB reserved = 103424 B; 233472 / 103424 = 2.
        self.assertEqual(sc.occupancy(32, 128, 100 * 1024), (2, "shared memory"))
        # 40 KB + 1 KB = 41984 B: 233472 / 41984 = 5 CTAs (registers and warps would allow 16).
        self.assertEqual(sc.occupancy(32, 128, 40 * 1024), (5, "shared memory"))
        self.assertEqual(sc.occupancy(32, 128, 228 * 1024)[0], 0, "more than 227 KB per block does not launch")

    def test_wave_quantization(self):
        self.assertEqual(sc.wave_quantization(64, 1), (1, 64 / 132))
        self.assertEqual(sc.wave_quantization(132, 1), (1, 1.0))
        self.assertEqual(sc.wave_quantization(512, 2), (2, 512 / 528))
        self.assertEqual(sc.wave_quantization(265, 2), (2, 265 / 528))


class Schedules(unittest.TestCase):
    """The grids mirror src/ops/contrastive/gpu.rs."""

    def test_forward_without_splits(self):
        h = {"CONTRASTIVE_FORWARD_ROWS": 128}
        self.assertEqual(sc.forward_schedule(8192, 128, h, "contrastive_forward_bf16", sc.Tile("T", 128, 128, 32, 2, 4)),
                         (64, 64))

    def test_forward_splits(self):
        # 64 row blocks x 64 tiles on 132 SMs x 2: s = 4 fills 256 of 264 slots in one wave, 16 tiles each.
        self.assertEqual(sc.forward_splits(64, 64, 132, 2, 16), 4)
        # One SM slot per CTA: 2 splits (128 CTAs, one wave of 132, 32 tiles each).
        self.assertEqual(sc.forward_splits(64, 64, 132, 1, 16), 2)
        # n = 65536: 512 row blocks x 512 tiles, 4 waves of 132 fill 97 % unsplit: no split.
        self.assertEqual(sc.forward_splits(512, 512, 132, 1, 16), 1)
        # None reaches 90 % (s = 1, 2, 3 cost 1 x 3, 2 x 2, 3 x 1 waves x tiles): the cheapest, ties to fewer.
        self.assertEqual(sc.forward_splits(100, 3, 132, 1, 16), 1)
        # 40 row blocks x 3 tiles: s = 3 fills 120 of 132 slots in one wave (91 %).
        self.assertEqual(sc.forward_splits(40, 3, 132, 1, 16), 3)
        h = {"CONTRASTIVE_FORWARD_ROWS": 128, "CONTRASTIVE_FORWARD_MAX_SPLITS": 16,
             "CONTRASTIVE_FORWARD_BLOCKS_PER_SM": 2, "CONTRASTIVE_FORWARD_BLOCKS_PER_SM_SLOW": 1}
        tile = sc.Tile("T", 128, 128, 32, 4, 2)
        self.assertEqual(sc.forward_schedule(8192, 128, h, "contrastive_forward_bf16", tile), (256, 16))
        self.assertEqual(sc.forward_schedule(8192, 128, h, "contrastive_forward_bf16_online", tile), (128, 32))

    def test_forward_symmetric(self):
        # The values tests/contrastive.rs' forward_sym_groups_bound_the_partials checks on the Rust side.
        h = {"CONTRASTIVE_FORWARD_ROWS": 128, "CONTRASTIVE_FORWARD_SYM_PARTIAL_BYTES": 33554432}
        for n, centers, want in [(8192, 0, (1, 64)), (16384, 0, (1, 128)), (16384, 3, (2, 64)), (65536, 0, (16, 32)),
                                 (32768, 0, (4, 64)), (1 << 20, 0, (357, 23)), (300, 0, (1, 3)), (1, 0, (1, 1))]:
            self.assertEqual(sc.forward_sym_groups(n, h, centers), want, n)
        tile = sc.Tile("T", 128, 128, 32, 4, 2)
        # One CTA per pair of groups, S x S tiles each: 2080 single tiles at n = 8192, 528 of 256 at 65536.
        self.assertEqual(sc.forward_sym_schedule(8192, 128, h, "contrastive_forward_sym_bf16", tile), (2080, 1))
        self.assertEqual(sc.forward_sym_schedule(65536, 512, h, "contrastive_forward_sym_bf16", tile), (528, 256))

    H = {"CONTRASTIVE_BACKWARD_ROWS": 64, "CONTRASTIVE_BACKWARD_WIDE_COLS": 128, "CONTRASTIVE_BACKWARD_WARPS_HALF_G4": 8,
         "CONTRASTIVE_BACKWARD_WARP_D_HALF": 128, "CONTRASTIVE_BACKWARD_WARP_D_F32": 64,
         "CONTRASTIVE_BACKWARD_MAX_GROUPS_HALF": 4, "CONTRASTIVE_BACKWARD_MAX_GROUPS_F32": 2,
         "CONTRASTIVE_BACKWARD_CHUNKED_GROUPS_HALF": 4, "CONTRASTIVE_BACKWARD_CHUNKED_GROUPS_F32": 2,
         "CONTRASTIVE_BACKWARD_SPLIT_TARGET_CTAS": 264, "CONTRASTIVE_BACKWARD_MAX_SPLITS": 8,
         "CONTRASTIVE_BACKWARD_SMEM_HALF_G1": 75776, "CONTRASTIVE_BACKWARD_SMEM_HALF_G4": 116736,
         "CONTRASTIVE_BACKWARD_SMEM_HALF_G4_CHUNKED": 133120,
         "CONTRASTIVE_BACKWARD_SMEM_F32_G2": 75776}

    def test_backward_launch(self):
        # gpu.rs BackwardShape / backward_splits, worked by hand. (G, chunk, splits, chunked):
        # d = 128 bf16: G = 1; 128 row blocks, 264 / 1 / 128 = 2 splits (256 CTAs, one wave at 2 per SM).
        self.assertEqual(sc.backward_launch("bf16", 128, 8192, 8192, self.H), (1, 128, 2, False))
        # d = 512: G = 4, never split.
        self.assertEqual(sc.backward_launch("bf16", 512, 8192, 8192, self.H), (4, 512, 1, False))
        # d = 640: no G covers it in one chunk (the resident G = 4's S needs d resident): the
        # `_g4_chunked` kernel, 2 chunks of 512, never split.
        self.assertEqual(sc.backward_launch("bf16", 640, 8192, 8192, self.H), (4, 512, 1, True))
        # d = 300 (not a multiple of 8: the same kernels, from the packed rows): G = 4, one chunk.
        self.assertEqual(sc.backward_launch("f16", 300, 8192, 8192, self.H), (4, 512, 1, False))
        # f32 at d = 300: at most G = 2, 3 chunks of 128; 264 / 2 / 384 = 0 -> 1 split.
        self.assertEqual(sc.backward_launch("f32", 300, 8192, 8192, self.H), (2, 128, 1, True))
        # f32: WARP_D 64, so d = 128 takes G = 2; 264 / 2 / 128 = 1.
        self.assertEqual(sc.backward_launch("f32", 128, 8192, 8192, self.H), (2, 128, 1, False))
        # n = 65536: 1024 row blocks, no split; a small grid is clamped by MAX_SPLITS and the tiles.
        self.assertEqual(sc.backward_launch("bf16", 128, 65536, 65536, self.H), (1, 128, 1, False))
        self.assertEqual(sc.backward_launch("bf16", 64, 64, 8192, self.H), (1, 128, 8, False))
        # 192 columns are 2 of G = 1's 128-column tiles (f32's G = 2 tiles are 64 wide: 3).
        self.assertEqual(sc.backward_launch("bf16", 64, 64, 192, self.H), (1, 128, 2, False))
        self.assertEqual(sc.backward_launch("f32", 64, 64, 192, self.H), (1, 64, 3, False))

    def test_backward_schedule_and_tile(self):
        g1 = sc.backward_tile("contrastive_backward_bf16_g1", self.H)
        g4 = sc.backward_tile("contrastive_backward_f16_g4", self.H)
        f32 = sc.backward_tile("contrastive_backward_f32_g2", self.H)
        # G = 1: 64 x 128 on 2 x 2 warps of 32 x 64, 2 x 8 MMAs per k16 step, two per BK = 32.
        self.assertEqual((g1.BM, g1.BN, g1.BK, g1.threads, g1.mma_per_warp_per_k_step), (64, 128, 32, 128, 32))
        # G = 4 (f16 / bf16): 8 warps (the header's WARPS_HALF_G4), 4 x 2 of 16 x 32 in the
        # stages' terms (the split-k engine's warps: 2 k-halves of 2 x 2 warps of 32 x 32).
        self.assertEqual((g4.BK, g4.threads, g4.mma_per_warp_per_k_step), (64, 256, 16))
        self.assertEqual((f32.BK, f32.threads, f32.elem_bytes), (16, 256, 4))
        # 128 row blocks x 2 splits, each sweeping 32 of the 64 column tiles (8192 / 128).
        self.assertEqual(sc.backward_schedule(8192, 128, self.H, "contrastive_backward_bf16_g1", g1), (256, 32))
        self.assertEqual(sc.backward_schedule(8192, 512, self.H, "contrastive_backward_f16_g4", g4), (128, 128))
        # The host picks G = 4 at d = 512: the G = 1 kernel is not launched there, and G = 4 not at 128.
        self.assertIsNone(sc.backward_schedule(8192, 512, self.H, "contrastive_backward_bf16_g1", g1))
        self.assertIsNone(sc.backward_schedule(8192, 128, self.H, "contrastive_backward_f16_g4", g4))
        # d = 1024: the chunked G = 4 kernel, 128 row blocks x 2 chunks; the resident one not there.
        g4c = sc.backward_tile("contrastive_backward_f16_g4_chunked", self.H)
        self.assertEqual((g4c.BK, g4c.threads), (64, 256))
        self.assertEqual(sc.backward_schedule(8192, 1024, self.H, "contrastive_backward_f16_g4_chunked", g4c), (256, 128))
        self.assertIsNone(sc.backward_schedule(8192, 1024, self.H, "contrastive_backward_f16_g4", g4))
        self.assertIsNone(sc.backward_schedule(8192, 512, self.H, "contrastive_backward_f16_g4_chunked", g4c))
        self.assertEqual(sc.backward_dynamic_smem("contrastive_backward_bf16_g4_chunked", self.H), 133120)
        self.assertEqual(sc.backward_dynamic_smem("contrastive_backward_bf16_g1", self.H), 75776)
        self.assertEqual(sc.backward_dynamic_smem("contrastive_backward_f32_g2", self.H), 75776)
        # Occupancy with the dynamic shared memory: G = 1 (228 registers) stays at 2 by registers
        # (52224 B per CTA would allow 4); 116736 B alone allows one G = 4 CTA.
        self.assertEqual(sc.occupancy(228, 128, 51200), (2, "registers"))
        self.assertEqual(sc.occupancy(32, 128, 116736), (1, "shared memory"))
        self.assertEqual(sc.occupancy(32, 128, 51200), (4, "shared memory"))
        # G = 1 since its 128-column tile: 221 registers (224 x 32 = 7168 per warp, 2 per
        # sub-partition: two 4-warp CTAs) and 75776 + 1024 B (3 would fit): 2 by registers.
        self.assertEqual(sc.occupancy(221, 128, 75776), (2, "registers"))

    def test_backward_chosen_for_a_forward(self):
        est = {("contrastive_backward_bf16_g1", 8192, 128): 1, ("contrastive_backward_bf16_g4", 8192, 512): 1}
        self.assertEqual(sc.backward_for("contrastive_forward_bf16", est, 8192, 128), "contrastive_backward_bf16_g1")
        self.assertEqual(sc.backward_for("contrastive_forward_bf16_online", est, 8192, 512), "contrastive_backward_bf16_g4")
        self.assertEqual(sc.backward_for("contrastive_forward_sym_bf16", est, 8192, 128), "contrastive_backward_bf16_g1")
        self.assertIsNone(sc.backward_for("contrastive_forward_f16", est, 8192, 128))

    def test_k_tail(self):
        # A k-loop unrolled over 2 BK = 64 steps (128 per iteration), one step of remainder code.
        c = sc.KernelCost("k", "m", sc.PtxasInfo(), 512, 1, "registers", 0)
        c.tile, c.k_per_iteration = sc.Tile("T", 64, 64, 64, 4, 4), 128
        c.k_tail, c.k_tail_steps = sc.Counts(mma=8, mma_flops=8 * 4096), 1
        self.assertEqual([c.k_tail_trips(d) for d in (64, 128, 192, 512)], [1, 0, 1, 0])
        c.epilogue, c.other_inner_loops, c.k_loop = sc.Counts(), sc.Counts(), sc.Counts(mma=16)
        self.assertEqual([c.per_tile(d).mma for d in (64, 128, 192)], [16 + 8, 16, 32 + 8])


class Targets(unittest.TestCase):
    def test_target_rows(self):
        def cost(name, insts, mufu, ctas):
            c = sc.KernelCost(name, "m", sc.PtxasInfo(), 256, ctas, "registers", 0)
            c.epilogue, c.logits_per_thread = sc.Counts(instructions=insts, mufu=mufu), 64
            return c
        costs = [cost("contrastive_forward_bf16", 640, 64, 2), cost("contrastive_backward_bf16_g1", 1000, 65, 1),
                 cost("contrastive_backward_bf16_g2", 100, 0, 2)]
        pairs = [{"kernel": "contrastive_forward_bf16 + contrastive_backward_bf16_g1", "n": 8192, "d": 128,
                  "percent_of_peak": 40.0}]
        # Only the G variants the host launches at a target shape (an estimate there) are targets.
        estimates = {("contrastive_backward_bf16_g1", 8192, 128): None}
        rows = {what: met for what, _, _, met in sc.target_checks(costs, estimates, pairs)}
        self.assertEqual(rows["contrastive_forward_bf16: epilogue instructions / logit"], True)  # 10
        self.assertEqual(rows["contrastive_backward_bf16_g1: epilogue instructions / logit"], False)  # 15.6
        self.assertEqual(rows["contrastive_forward_bf16: MUFU / logit"], True)
        self.assertEqual(rows["contrastive_backward_bf16_g1: MUFU / logit"], False)
        self.assertEqual(rows["contrastive_backward_bf16_g1: CTAs / SM"], False)
        self.assertEqual(
            rows["contrastive_forward_bf16 + contrastive_backward_bf16_g1: forward + backward % of 989 TFLOP/s, "
                 "N = 8192, D = 128"], True)
        self.assertEqual(len(rows), 7)
        # A symmetric forward (half the logits computed, each serving two): its per-logit figures
        # also per logit of the n x n matrix, and its pair with the backward is a target too.
        costs.append(cost("contrastive_forward_sym_bf16", 1600, 64, 2))  # 25 / logit, 1 MUFU
        sym = sc.ShapeEstimate("contrastive_forward_sym_bf16", 8192, 128, 2080, 8, 0.985, 1024, 100.0, 51.0,
                               1e-6, 1e-6, 1e-6, 1e-6)
        estimates[("contrastive_forward_sym_bf16", 8192, 128)] = sym
        pairs.append({"kernel": "contrastive_forward_sym_bf16 + contrastive_backward_bf16_g1", "n": 8192, "d": 128,
                      "percent_of_peak": 30.0})
        rows = {what: met for what, _, _, met in sc.target_checks(costs, estimates, pairs)}
        self.assertEqual(rows["contrastive_forward_sym_bf16: epilogue instructions / logit"], False)  # 25
        self.assertEqual(rows["contrastive_forward_sym_bf16: epilogue instructions / logit of the n x n matrix "
                              "(x 0.51 computed), N = 8192"], False)  # 12.75
        self.assertEqual(rows["contrastive_forward_sym_bf16: MUFU / logit of the n x n matrix, N = 8192"], True)
        self.assertEqual(
            rows["contrastive_forward_sym_bf16 + contrastive_backward_bf16_g1: forward + backward % of 989 TFLOP/s, "
                 "N = 8192, D = 128"], False)
        costs.pop()
        del estimates[("contrastive_forward_sym_bf16", 8192, 128)]
        pairs.pop()
        costs[1].arms = {"hot": (11.0, 1.0), "cold": (16.5, 2.0)}
        rows = {what: met for what, _, _, met in sc.target_checks(costs, estimates, pairs)}
        self.assertEqual(rows["contrastive_backward_bf16_g1: one-exponential path's own instructions / logit"], True)
        self.assertEqual(len(rows), 8)


class Parsing(unittest.TestCase):
    """The parsers on canned text (no toolchain)."""

    def test_ptxas_report_skips_subroutines(self):
        text = """ptxas info    : Compiling entry function 'k' for 'sm_90a'
ptxas info    : Function properties for k
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 40960 bytes smem
ptxas info    : Function properties for $__internal_0_$__cuda_sm3x_div_rn_noftz_f32_slowpath
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""
        info = sc.parse_ptxas_report(text)
        self.assertEqual(list(info), ["k"])
        k = info["k"]
        self.assertEqual((k.regs, k.stack_bytes, k.spill_stores, k.spill_loads, k.smem_bytes, k.barriers),
                         (168, 8, 4, 12, 40960, 1))

    def test_loops_nest_and_the_trap_loop_is_none(self):
        def ins(addr, text, pred=""):
            op, _, rest = text.partition(" ")
            return sc.Instr(addr, pred, op, rest)
        code = [ins(0x00, "MOV R1, R2"), ins(0x10, "HMMA.16816.F32.BF16 R4, R8, R12, R4"),
                ins(0x20, "BRA 0x10", "@P0"),            # inner loop [0x10, 0x20]
                ins(0x30, "MUFU.EX2 R3, R3"), ins(0x40, "BRA 0x0", "@P1"),  # outer loop [0x0, 0x40]
                ins(0x50, "EXIT"), ins(0x60, "BRA 0x60")]  # the trap after EXIT
        roots = sc.find_loops(code)
        self.assertEqual([(lp.start, lp.end) for lp in roots], [(0x0, 0x40)])
        self.assertEqual([(lp.start, lp.end) for lp in roots[0].children], [(0x10, 0x20)])
        outer = sc.count(sc.body(code, roots[0]), "HMMA")
        self.assertEqual((outer.instructions, outer.mufu, outer.mma), (3, 1, 0))

    def test_mode_arms(self):
        def ins(addr, text, pred=""):
            op, _, rest = text.partition(" ")
            return sc.Instr(addr, pred, op, rest)
        # if (P0) { one ex2 } else { two ex2 }; a plain skip branch (no else) is no pair of arms.
        code = [ins(0x00, "BRA 0x20", "@P1"), ins(0x10, "MUFU.RCP R1, R1"),
                ins(0x20, "BRA 0x70", "@!P0"), ins(0x30, "FMUL R2, R2, R3"), ins(0x40, "MUFU.EX2 R2, R2"),
                ins(0x50, "FADD R2, R2, R3"), ins(0x60, "BRA 0xb0"),
                ins(0x70, "MUFU.EX2 R2, R2"), ins(0x80, "MUFU.EX2 R4, R4"), ins(0x90, "FADD R2, R2, R4"),
                ins(0xa0, "FMUL R2, R2, R5"), ins(0xb0, "STS [R0], R2")]
        then, other = sc.mode_arms(code)
        self.assertEqual([i.addr for i in then], [0x30, 0x40, 0x50, 0x60])
        self.assertEqual([i.addr for i in other], [0x70, 0x80, 0x90, 0xa0])
        self.assertIsNone(sc.mode_arms(code[:2] + code[-1:]))

    def test_partial_overlaps_merge(self):
        # (50, 150) overlaps (0, 100) past a loop nested in the latter: the union, holding the nested one.
        self.assertEqual(sc.merge_partial_overlaps([(0, 100), (10, 20), (50, 150)]), [(0, 150), (10, 20)])
        self.assertEqual(sc.merge_partial_overlaps([(0, 10), (20, 30)]), [(0, 10), (20, 30)])

    def test_slow_path_blocks(self):
        def ins(addr, text, pred=""):
            op, _, rest = text.partition(" ")
            return sc.Instr(addr, pred, op, rest)
        code = [ins(0x00, "MUFU.RCP R1, R2"), ins(0x10, "FCHK P0, R3, R2"), ins(0x20, "BRA 0x60", "@!P0"),
                ins(0x30, "MOV R20, 0x50"), ins(0x40, "CALL.REL.NOINC 0x100"), ins(0x50, "MOV R1, R21"),
                ins(0x60, "FADD R5, R5, R1"), ins(0x70, "EXIT")]
        self.assertEqual(sc.slow_path_addresses(code), {0x30, 0x40, 0x50})
        c = sc.count(code, "HMMA", sc.slow_path_addresses(code))
        self.assertEqual((c.instructions, c.instructions_all_paths, c.calls, c.mufu), (5, 8, 1, 1))

    def test_wavefronts_and_mma_flops(self):
        def w(op):
            return sc.smem_wavefronts(sc.Instr(0, "", op, ""))
        self.assertEqual([w("LDSM.16.M88.4"), w("LDSM.16.MT88.2"), w("LDS"), w("LDS.64"), w("LDS.128"),
                          w("LDGSTS.E.BYPASS.128"), w("FADD")], [4, 2, 1, 2, 4, 4, 0])
        # The floor: a (possibly broadcast) LDS / STS takes one wavefront; ldmatrix and cp.async do not shrink.
        def w_min(op):
            return sc.smem_wavefronts_min(sc.Instr(0, "", op, ""))
        self.assertEqual([w_min("LDSM.16.M88.4"), w_min("LDS.128"), w_min("LDS.64"), w_min("STS.128"), w_min("LDS"),
                          w_min("LDGSTS.E.BYPASS.128"), w_min("FADD")], [4, 1, 1, 1, 1, 4, 0])
        code = [sc.Instr(0, "", "LDS.128", ""), sc.Instr(16, "", "LDSM.16.M88.4", ""), sc.Instr(32, "", "STS.64", "")]
        c = sc.count(code, "HMMA")
        self.assertEqual((c.smem_wavefronts, c.smem_wavefronts_min), (10, 6))
        self.assertEqual(sc.mma_flops(sc.Instr(0, "", "HMMA.16816.F32.BF16", "")), 4096)
        self.assertEqual(sc.mma_flops(sc.Instr(0, "", "HMMA.1688.F32.TF32", "")), 2048)
        self.assertEqual(sc.mma_flops(sc.Instr(0, "", "HGMMA.64x128x16.F32.BF16", "")), 2 * 64 * 128 * 16 // 4)

    def test_header_constants(self):
        with tempfile.NamedTemporaryFile("w", suffix=".h", delete=False) as f:
            f.write("#define CK_A_THREADS 256\n#define CK_A_ROWS (CK_A_THREADS / 32) // rows\n#define CK_B 1.5f\n")
        try:
            self.assertEqual(sc.parse_header_constants(f.name), {"A_THREADS": 256, "A_ROWS": 8})
        finally:
            os.unlink(f.name)

    def test_tile_configs_of_this_repository(self):
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
        kernels = os.path.join(root, "kernels")
        tiles = sc.tile_configs(kernels, [os.path.join(kernels, f) for f in sorted(os.listdir(kernels)) if f.endswith(".cu")])
        header = sc.header_constants(kernels)
        for model in sc.KERNEL_MODELS:
            self.assertRegex(model.example, model.pattern)
            tile = sc.model_tile(model, tiles, model.example, header)
            self.assertIsNotNone(tile, f"{model.pattern}: none of {model.tiles} is defined / a constant is missing")
            self.assertEqual(header[model.rows_constant], tile.BM, model.pattern)
            if model.dynamic_smem:
                self.assertGreater(model.dynamic_smem(model.example, header), 0, model.pattern)
            ctas, tiles_per_cta = model.schedule(8192, 128, header, model.example, tile)  # reads constants that exist
            self.assertGreater(ctas, 0, model.pattern)
            self.assertGreater(tiles_per_cta, 0, model.pattern)


if __name__ == "__main__":
    unittest.main()
