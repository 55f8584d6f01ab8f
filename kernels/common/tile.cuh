// The tile core, the one k-loop every kernel stands on: acc = op(A) op(B)^T for one BM x BN block
// tile (tile_config.cuh), global -> shared loaders with tails handled, two engines that multiply a
// shared stage into the warps' accumulators, and the accumulator traversal of epilogues.
//
// Operands. An operand is stored either
//   "rows" (TRANS = false): rows x d, row-major, the reduction dim d contiguous (feature matrices:
//     S = A B^T needs A as an m16k16 "row" fragment and B as a k16n8 "col" fragment, and a
//     row-major B (n x d) is exactly that col layout, so one loader and one ldmatrix pattern serve
//     both operands), or
//   "trans" (TRANS = true): d x rows, row-major, the output dim contiguous (a matrix whose transpose
//     is needed: the backward of a linear layer Y = X W^T computes dX = dZ W with W stored n x k as
//     the "trans" B, and dW = dZ^T X with both operands "trans", the reduction over the batch).
//
// Engines (EngineFor<T>): TensorCores, mma.sync m16n8k16 on f16 / bf16 with f32 accumulation; Ffma,
// exact f32 FFMA on CUDA cores (no TF32 rounding) computing the very accumulator elements the
// tensor-core fragments would hold, so every epilogue serves both. Each also multiplies a fragment
// held in registers by a shared tile (FlashAttention-2's P V), for the loss backward.
//
// Normalization is fused as a rank-1 epilogue: S_ij = scale * <a_i, b_j> / (max(|a_i|,eps) max(|b_j|,eps)),
// with the O(m + n) norms from the l2_normalize prologue. No normalized copy is ever written, and the
// products are of the raw inputs, so there is one rounding fewer than normalize-then-GEMM.
#pragma once
#include "dtype.cuh"
#include "tile_config.cuh"

namespace ck {

// ---------------------------------------------------------------------------------------------
// PTX wrappers. Under the CPU emulator (emu/, CK_EMULATOR) each has one host branch: the emulated
// instruction of emu/include/ckemu/runtime.h, with the semantics of the PTX ISA.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; bytes < 16 zero-fills the rest (0 = a pure zero fill, src is not read).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int bytes) {
#ifdef CK_EMULATOR
    ckemu::cp_async_16(CKEMU_SITE, dst, src, bytes);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(bytes));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef CK_EMULATOR
    ckemu::cp_async_commit(CKEMU_SITE);
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
#ifdef CK_EMULATOR
    ckemu::cp_async_wait(CKEMU_SITE, N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
#ifdef CK_EMULATOR
    ckemu::ldmatrix_x4(CKEMU_SITE, r, p, false);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
#endif
}

// The transposing form: lane t receives rows 2 (t % 4) + {0, 1} of column t / 4 of each 8 x 8
// matrix, i.e. a row-major k x n tile in shared memory arrives as the "col" B fragment (see
// warp_mma_stage's layouts), without a transposed copy in memory.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
#ifdef CK_EMULATOR
    ckemu::ldmatrix_x4(CKEMU_SITE, r, p, true);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
#endif
}

template <typename T> struct Mma16816;
template <> struct Mma16816<__half> {
    static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef CK_EMULATOR
        ckemu::mma_m16n8k16(CKEMU_SITE, c, a, b, ckemu::MmaType::F16);
#else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
    }
};
template <> struct Mma16816<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef CK_EMULATOR
        ckemu::mma_m16n8k16(CKEMU_SITE, c, a, b, ckemu::MmaType::BF16);
#else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
    }
};

// ---------------------------------------------------------------------------------------------
// Loaders: a stage of one operand into shared memory, zeros outside the matrix (zeros add nothing
// to a dot product).

// "rows": rows [row0, row0 + ROWS) x columns [k0, k0 + BK) of a row-major rows x d matrix into a
// [ROWS][STRIDE] tile. Fast path: d % 8 == 0 and a 16-byte aligned base, so every 8-element chunk
// is one aligned cp.async that is wholly inside or wholly outside the matrix.
template <int ROWS, int BK, int STRIDE, int THREADS, typename T>
__device__ __forceinline__ void load_tile_async(T* smem, const T* __restrict__ g, int rows, int d, int row0, int k0) {
    constexpr int CHUNKS_PER_ROW = BK / 8;
    constexpr int ITERS = ROWS * CHUNKS_PER_ROW / THREADS;
    static_assert((ROWS * CHUNKS_PER_ROW) % THREADS == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int it = 0; it < ITERS; ++it) {
        const int chunk = threadIdx.x + it * THREADS;
        const int r = chunk / CHUNKS_PER_ROW;
        const int kc = (chunk % CHUNKS_PER_ROW) * 8;
        const int gr = row0 + r, gk = k0 + kc;
        const bool inside = gr < rows && gk < d;
        const T* src = inside ? g + (size_t)gr * d + gk : g;
        cp_async_16(smem + r * STRIDE + kc, src, inside ? 16 : 0);
    }
}

// General path: any d and any alignment of the element type, one element per thread per step.
template <int ROWS, int BK, int STRIDE, int THREADS, typename T>
__device__ __forceinline__ void load_tile_sync(T* smem, const T* __restrict__ g, int rows, int d, int row0, int k0) {
    for (int i = threadIdx.x; i < ROWS * BK; i += THREADS) {
        const int r = i / BK, k = i % BK;
        const int gr = row0 + r, gk = k0 + k;
        smem[r * STRIDE + k] = (gr < rows && gk < d) ? g[(size_t)gr * d + gk] : from_float<T>(0.f);
    }
}

// "trans": stored rows [k0, k0 + BK) x columns [row0, row0 + ROWS) of a d x rows row-major matrix
// into a [BK][STRIDE] tile, staged as it is stored (k-major). Fast path: rows % 8 == 0 and a
// 16-byte aligned base.
template <int ROWS, int BK, int STRIDE, int THREADS, typename T>
__device__ __forceinline__ void load_tile_trans_async(T* smem, const T* __restrict__ g, int rows, int d, int row0,
                                                      int k0) {
    constexpr int CHUNKS_PER_K = ROWS / 8;
    constexpr int ITERS = BK * CHUNKS_PER_K / THREADS;
    static_assert((BK * CHUNKS_PER_K) % THREADS == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int it = 0; it < ITERS; ++it) {
        const int chunk = threadIdx.x + it * THREADS;
        const int kr = chunk / CHUNKS_PER_K;
        const int rc = (chunk % CHUNKS_PER_K) * 8;
        const int gk = k0 + kr, gr = row0 + rc;
        const bool inside = gk < d && gr < rows;
        const T* src = inside ? g + (size_t)gk * rows + gr : g;
        cp_async_16(smem + kr * STRIDE + rc, src, inside ? 16 : 0);
    }
}

template <int ROWS, int BK, int STRIDE, int THREADS, typename T>
__device__ __forceinline__ void load_tile_trans_sync(T* smem, const T* __restrict__ g, int rows, int d, int row0,
                                                     int k0) {
    for (int i = threadIdx.x; i < ROWS * BK; i += THREADS) {
        const int kr = i / ROWS, r = i % ROWS;  // consecutive threads read consecutive columns
        const int gk = k0 + kr, gr = row0 + r;
        smem[kr * STRIDE + r] = (gk < d && gr < rows) ? g[(size_t)gk * rows + gr] : from_float<T>(0.f);
    }
}

// The shared layout of one operand of one stage, and its loader. A "trans" stage is [BK][ROWS + 8]:
// the 8 addresses of one ldmatrix.trans matrix are 8 consecutive k rows (ROWS + 8) * 2 bytes apart
// (272 B for ROWS = 128, 68 words), so their 16-byte reads fall in 8 distinct bank groups.
template <class Cfg, int ROWS, bool TRANS> struct OperandTile {
    static constexpr int STRIDE = TRANS ? ROWS + 8 : Cfg::SMEM_STRIDE;
    static constexpr int ELEMS = TRANS ? Cfg::BK * STRIDE : ROWS * Cfg::SMEM_STRIDE;

    // async: cp.async 16-byte chunks (only for 2-byte elements; f32 always loads element-wise).
    template <bool ASYNC, typename T>
    static __device__ __forceinline__ void load(T* smem, const T* __restrict__ g, int rows, int d, int row0, int k0) {
        if constexpr (ASYNC) {
            if constexpr (TRANS) load_tile_trans_async<ROWS, Cfg::BK, STRIDE, Cfg::THREADS>(smem, g, rows, d, row0, k0);
            else load_tile_async<ROWS, Cfg::BK, STRIDE, Cfg::THREADS>(smem, g, rows, d, row0, k0);
        } else {
            if constexpr (TRANS) load_tile_trans_sync<ROWS, Cfg::BK, STRIDE, Cfg::THREADS>(smem, g, rows, d, row0, k0);
            else load_tile_sync<ROWS, Cfg::BK, STRIDE, Cfg::THREADS>(smem, g, rows, d, row0, k0);
        }
    }
};

// ---------------------------------------------------------------------------------------------
// Engines: acc[mi][ni] += A_warp[mi] * B_warp[ni]^T over one shared stage (BK of the reduction).
//
// Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4 * group + quad.
//   A (16 x 16): a0 (group, 2 quad), a1 (group + 8, 2 quad), a2 (group, 2 quad + 8), a3 (group + 8, 2 quad + 8)
//   B (16 x 8):  b0 (k = 2 quad, n = group), b1 (k = 2 quad + 8, n = group)
//   C (16 x 8):  Fragment in tile_config.cuh
// ldmatrix.x4 hands matrix j to the lanes whose addresses 8j..8j+7 named its rows, as "thread t
// holds row t / 4, columns 2 (t % 4) + {0, 1}", which is exactly these fragments when
//   A rows:  lane l addresses row (l % 16), column 8 (l / 16)                       -> r0..r3 = a0..a3
//   B rows:  lane l addresses row (l % 8) + 8 (l / 16), column 8 ((l / 8) % 2)
//            -> r0, r1 = b0, b1 of n8 block 0; r2, r3 of block 1
// and ldmatrix.trans (thread t gets rows 2 (t % 4) + {0, 1} of column t / 4) reads the same
// fragments from "trans" (k-major) storage when
//   A trans: lane l addresses stored row k = kk + (l % 8) + 8 (l / 16), column m0 + 8 ((l / 8) % 2)
//   B trans: lane l addresses stored row k = kk + (l % 8) + 8 ((l / 8) % 2), column n0 + 8 (l / 16)
struct TensorCores {
    template <class Cfg, bool TRANS_A, bool TRANS_B, typename T>
    static __device__ __forceinline__ void stage(float (&acc)[Cfg::MI][Cfg::NI][4], const T* sA, const T* sB) {
        static_assert(sizeof(T) == 2, "the tensor-core engine takes f16 / bf16");
        using TA = OperandTile<Cfg, Cfg::BM, TRANS_A>;
        using TB = OperandTile<Cfg, Cfg::BN, TRANS_B>;
        const int lane = threadIdx.x % 32, warp_m = Cfg::warp_m(), warp_n = Cfg::warp_n();
#pragma unroll
        for (int kk = 0; kk < Cfg::BK; kk += 16) {
            uint32_t a[Cfg::MI][4];
            uint32_t b[Cfg::NI][2];
#pragma unroll
            for (int mi = 0; mi < Cfg::MI; ++mi) {
                const int m0 = warp_m * Cfg::WM + mi * 16;
                if constexpr (TRANS_A)
                    ldmatrix_x4_trans(a[mi], sA + (kk + (lane % 8) + 8 * (lane / 16)) * TA::STRIDE + m0 + 8 * ((lane / 8) % 2));
                else
                    ldmatrix_x4(a[mi], sA + (m0 + lane % 16) * TA::STRIDE + kk + (lane / 16) * 8);
            }
#pragma unroll
            for (int ni = 0; ni < Cfg::NI; ni += 2) {
                const int n0 = warp_n * Cfg::WN + ni * 8;
                uint32_t r[4];
                if constexpr (TRANS_B)
                    ldmatrix_x4_trans(r, sB + (kk + (lane % 8) + 8 * ((lane / 8) % 2)) * TB::STRIDE + n0 + 8 * (lane / 16));
                else
                    ldmatrix_x4(r, sB + (n0 + (lane % 8) + (lane / 16) * 8) * TB::STRIDE + kk + ((lane / 8) % 2) * 8);
                b[ni][0] = r[0];
                b[ni][1] = r[1];
                b[ni + 1][0] = r[2];
                b[ni + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < Cfg::NI; ++ni) Mma16816<T>::run(acc[mi][ni], a[mi], b[ni]);
        }
    }
};

// The f32 engine: the same accumulator elements by exact FFMA from an f32 stage ("rows" operands).
// A thread reads rows group (+ 8) of A and columns 2 quad + {0, 1} of B per k.
struct Ffma {
    template <class Cfg, bool TRANS_A, bool TRANS_B>
    static __device__ __forceinline__ void stage(float (&acc)[Cfg::MI][Cfg::NI][4], const float* sA, const float* sB) {
        static_assert(Cfg::ELEM_BYTES == 4, "an f32 stage needs an f32 tile config");
        static_assert(!TRANS_A && !TRANS_B, "the FFMA engine reads \"rows\" operands");
        const int warp_m = Cfg::warp_m(), warp_n = Cfg::warp_n();
        // Not unrolled: unrolling k by 2-4 raised the f32 loss kernels to ptxas' register cap (168 at
        // 128 threads) with spills and the f32 similarity past 64; rolled, none spills (ptxas, sm_90a).
#pragma unroll 1
        for (int k = 0; k < Cfg::BK; ++k) {
            float a[Cfg::MI][2], b[Cfg::NI][2];
#pragma unroll
            for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
                for (int h = 0; h < 2; ++h) a[mi][h] = sA[(warp_m * Cfg::WM + mi * 16 + Fragment::row(2 * h)) * Cfg::SMEM_STRIDE + k];
#pragma unroll
            for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
                for (int e = 0; e < 2; ++e) b[ni][e] = sB[(warp_n * Cfg::WN + ni * 8 + Fragment::col(e)) * Cfg::SMEM_STRIDE + k];
#pragma unroll
            for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
#pragma unroll
                        for (int e = 0; e < 2; ++e) acc[mi][ni][2 * h + e] = fmaf(a[mi][h], b[ni][e], acc[mi][ni][2 * h + e]);
        }
    }
};

template <typename T> struct EngineFor { using type = TensorCores; };
template <> struct EngineFor<float> { using type = Ffma; };

// Zeroes MI x NI accumulator fragments (the k-loops' start).
template <int MI, int NI> __device__ __forceinline__ void zero_fragments(float (&acc)[MI][NI][4]) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;
}

// ---------------------------------------------------------------------------------------------
// The k-loop of one BM x BN block tile: acc = op(A)[row0 : row0 + BM] op(B)[col0 : col0 + BN]^T
// over the reduction dim d, double-buffered (the next stage's copy is in flight while this stage's
// MMAs run). op(A) is m x d and op(B) is n x d; a TRANS operand is stored d x m (d x n).
// ALIGNED: every operand's contiguous dimension is a multiple of 8 and its base 16-byte aligned
// (cp.async chunks; f32 always loads element-wise). smem holds Cfg::SMEM_ELEMS elements. Ends with
// a barrier (when d > 0), so the caller may reuse smem until its next call.
// The accumulator is Cfg's MI x NI fragments for the engines above; an engine with its own warp
// layout (the backward's split-k stage, contrastive_backward.cuh) brings its own MI_ x NI_.
template <class Cfg, bool ALIGNED, bool TRANS_A = false, bool TRANS_B = false, typename T,
          class Engine = typename EngineFor<T>::type, int MI_ = Cfg::MI, int NI_ = Cfg::NI>
__device__ __forceinline__ void mma_block_tile(float (&acc)[MI_][NI_][4], T* smem, const T* __restrict__ A,
                                               const T* __restrict__ B, int m, int n, int d, int row0, int col0) {
    using TA = OperandTile<Cfg, Cfg::BM, TRANS_A>;
    using TB = OperandTile<Cfg, Cfg::BN, TRANS_B>;
    static_assert(TA::ELEMS <= Cfg::SMEM_ELEMS_A && TB::ELEMS <= Cfg::SMEM_ELEMS_B, "a stage fits Cfg's shared memory");
    static_assert(sizeof(T) == Cfg::ELEM_BYTES, "the tile config's element size is T's");
    constexpr bool ASYNC = ALIGNED && sizeof(T) == 2;

    auto stage_a = [&](int s) { return smem + s * (Cfg::SMEM_ELEMS_A + Cfg::SMEM_ELEMS_B); };
    auto stage_b = [&](int s) { return stage_a(s) + Cfg::SMEM_ELEMS_A; };
    auto load_stage = [&](int s, int k0) {
        TA::template load<ASYNC>(stage_a(s), A, m, d, row0, k0);
        TB::template load<ASYNC>(stage_b(s), B, n, d, col0, k0);
        cp_async_commit();  // an empty group on the sync path keeps the wait counts uniform
    };

    const int k_tiles = (d + Cfg::BK - 1) / Cfg::BK;
    if (k_tiles == 0) {  // d = 0: a zero tile, and no copy issued that no wait would retire
        zero_fragments(acc);
        return;
    }
    load_stage(0, 0);
    // Zeroed after the first copy is issued, and the loop entered without a guard (k_tiles >= 1):
    // with the zeroing before the d = 0 exit and a guarded loop, the forward ran 3 x 32 CS2R per
    // tile (one before each branch, one in the preheader); now 2 x 32 (sm_90a). Dropping the d = 0
    // exit as well (one zeroing) or peeling the first stage with C = 0 made ptxas spill or grow
    // the forward's registers (128 -> spills, 168 -> 179..197).
    zero_fragments(acc);
    int kt = 0;
    do {
        if (kt + 1 < k_tiles) {
            load_stage((kt + 1) % 2, (kt + 1) * Cfg::BK);
            cp_async_wait<1>();  // this stage's group is done; the next one may still fly
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        Engine::template stage<Cfg, TRANS_A, TRANS_B>(acc, stage_a(kt % 2), stage_b(kt % 2));
        __syncthreads();  // the buffer is overwritten by the load two iterations on
    } while (++kt < k_tiles);
}

// The k-loop over operands already resident in shared memory, "rows" [BM][SMEM_STRIDE] and
// [BN][SMEM_STRIDE] (Cfg's stride, wider than BK), zero from d to a multiple of BK: the engine over
// BK-wide slices, with no copies and no barriers (the caller's barrier publishes the operands).
// acc = A B^T over [0, max(ceil(d / BK), 1) BK): the first slice always (the operands hold at least
// BK columns, zero past d), peeled out of the loop so that its MMAs add to a known zero (HMMA with
// RZ, sm_90a) and nothing zeroes the accumulators per tile (32 instructions of every tile of the
// backward at G = 1).
// An engine with its own warp layout brings its MI_ x NI_ (as mma_block_tile's).
template <class Cfg, typename T, class Engine = typename EngineFor<T>::type, int MI_ = Cfg::MI, int NI_ = Cfg::NI>
__device__ __forceinline__ void mma_resident_tile(float (&acc)[MI_][NI_][4], const T* sA, const T* sB, int d) {
    zero_fragments(acc);  // folded into the first slice's MMAs
    Engine::template stage<Cfg, false, false>(acc, sA, sB);
#pragma unroll 1
    for (int k0 = Cfg::BK; k0 < d; k0 += Cfg::BK) Engine::template stage<Cfg, false, false>(acc, sA + k0, sB + k0);
}

// Calls f(row, col, v0, v1) for each pair of horizontally adjacent accumulators (col, col + 1) of
// this thread, in block-tile coordinates; the epilogue decides what bounds and stores mean.
template <class Cfg, typename F>
__device__ __forceinline__ void for_each_acc_pair(const float (&acc)[Cfg::MI][Cfg::NI][4], F&& f) {
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
            for (int half = 0; half < 2; ++half)
                f(Cfg::acc_row(mi, 2 * half), Cfg::acc_col(ni, 0), acc[mi][ni][2 * half], acc[mi][ni][2 * half + 1]);
}

}  // namespace ck
