// The reusable tile core: global -> shared loaders with tails handled, the tensor-core warp MMA,
// the k-loop that drives them, and accumulator traversal for epilogues.
//
// Operands are row-major feature matrices (rows x d, d contiguous), for both sides: S = A B^T
// needs A as an m16k16 "row" fragment and B as a k16n8 "col" fragment, and a row-major B (n x d)
// is exactly that col layout, so one loader and one ldmatrix pattern serve both operands.
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
// Loaders: rows [row0, row0 + ROWS) x columns [k0, k0 + BK) of a row-major rows x d matrix into a
// shared tile of row stride STRIDE, zeros outside the matrix (zeros add nothing to a dot product).

// Fast path: d % 8 == 0 and a 16-byte aligned base, so every 8-element chunk is one aligned
// cp.async that is wholly inside or wholly outside the matrix.
template <int ROWS, int BK, int STRIDE, int THREADS, typename T>
__device__ __forceinline__ void load_tile_async(T* smem, const T* __restrict__ g, int rows, int d, int row0, int k0) {
    constexpr int CHUNKS_PER_ROW = BK / 8;
    constexpr int ITERS = ROWS * CHUNKS_PER_ROW / THREADS;
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

// ---------------------------------------------------------------------------------------------
// Warp MMA over one shared stage: acc[mi][ni] += A_warp[mi] * B_warp[ni]^T for the stage's BK.
//
// Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4 * group + quad.
//   A (16 x 16): a0 (group, 2 quad), a1 (group + 8, 2 quad), a2 (group, 2 quad + 8), a3 (group + 8, 2 quad + 8)
//   B (16 x 8):  b0 (k = 2 quad, n = group), b1 (k = 2 quad + 8, n = group)
//   C (16 x 8):  c0, c1 (group, 2 quad + {0, 1}), c2, c3 (group + 8, 2 quad + {0, 1})
// ldmatrix.x4 hands matrix j to the lanes whose addresses 8j..8j+7 named its rows, as
// "thread t holds row t / 4, columns 2 (t % 4) + {0, 1}", which is exactly these fragments when
//   A: lane l addresses row (l % 16), column 8 (l / 16)        -> r0..r3 = a0..a3
//   B: lane l addresses row (l % 8) + 8 (l / 16), column 8 ((l / 8) % 2)
//                                                               -> r0, r1 = b0, b1 of n8 block 0; r2, r3 of block 1
// (The 16-bit overload is limited to 2-byte types, so that the f32 call below is not ambiguous for
// a C++ compiler that ranks the two like g++ does.)
template <class Cfg, typename T>
__device__ __forceinline__ typename EnableIf<sizeof(T) == 2>::type warp_mma_stage(float (&acc)[Cfg::MI][Cfg::NI][4],
                                                                                const T* sA, const T* sB, int warp_m,
                                                                                int warp_n) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int kk = 0; kk < Cfg::BK; kk += 16) {
        uint32_t a[Cfg::MI][4];
        uint32_t b[Cfg::NI][2];
#pragma unroll
        for (int mi = 0; mi < Cfg::MI; ++mi) {
            const int row = warp_m * Cfg::WM + mi * 16 + (lane % 16);
            ldmatrix_x4(a[mi], sA + row * Cfg::SMEM_STRIDE + kk + (lane / 16) * 8);
        }
#pragma unroll
        for (int ni = 0; ni < Cfg::NI; ni += 2) {
            const int row = warp_n * Cfg::WN + ni * 8 + (lane % 8) + (lane / 16) * 8;
            uint32_t r[4];
            ldmatrix_x4(r, sB + row * Cfg::SMEM_STRIDE + kk + ((lane / 8) % 2) * 8);
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

// The f32 form: the same accumulator elements (see the C layout above), by exact FFMA from the
// f32 stage. A thread reads rows group (+ 8) of A and columns 2 quad + {0, 1} of B per k.
template <class Cfg>
__device__ __forceinline__ void warp_mma_stage(float (&acc)[Cfg::MI][Cfg::NI][4], const float* sA, const float* sB,
                                               int warp_m, int warp_n) {
    static_assert(Cfg::ELEM_BYTES == 4, "an f32 stage needs an f32 tile config");
    const int lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
#pragma unroll 4
    for (int k = 0; k < Cfg::BK; ++k) {
        float a[Cfg::MI][2], b[Cfg::NI][2];
#pragma unroll
        for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) a[mi][h] = sA[(warp_m * Cfg::WM + mi * 16 + group + 8 * h) * Cfg::SMEM_STRIDE + k];
#pragma unroll
        for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
            for (int e = 0; e < 2; ++e) b[ni][e] = sB[(warp_n * Cfg::WN + ni * 8 + 2 * quad + e) * Cfg::SMEM_STRIDE + k];
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

// The k-loop of one BM x BN block tile: acc = A[row0 : row0 + BM] B[col0 : col0 + BN]^T over all of d,
// double-buffered (the next stage's copy is in flight while this stage's MMAs run).
// ALIGNED selects load_tile_async (d % 8 == 0, 16-byte aligned bases) over load_tile_sync; f32
// always loads element-wise (the async loader moves 8 two-byte elements per 16-byte copy).
template <class Cfg, bool ALIGNED, typename T>
__device__ __forceinline__ void mma_block_tile(float (&acc)[Cfg::MI][Cfg::NI][4], T* smem, const T* __restrict__ A,
                                               const T* __restrict__ B, int m, int n, int d, int row0, int col0) {
    const int warp = threadIdx.x / 32;
    const int warp_m = warp / Cfg::WARPS_N, warp_n = warp % Cfg::WARPS_N;
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

    auto stage_a = [&](int s) { return smem + s * (Cfg::SMEM_ELEMS_A + Cfg::SMEM_ELEMS_B); };
    auto stage_b = [&](int s) { return stage_a(s) + Cfg::SMEM_ELEMS_A; };
    auto load_stage = [&](int s, int k0) {
        if constexpr (ALIGNED && sizeof(T) == 2) {
            load_tile_async<Cfg::BM, Cfg::BK, Cfg::SMEM_STRIDE, Cfg::THREADS>(stage_a(s), A, m, d, row0, k0);
            load_tile_async<Cfg::BN, Cfg::BK, Cfg::SMEM_STRIDE, Cfg::THREADS>(stage_b(s), B, n, d, col0, k0);
        } else {
            load_tile_sync<Cfg::BM, Cfg::BK, Cfg::SMEM_STRIDE, Cfg::THREADS>(stage_a(s), A, m, d, row0, k0);
            load_tile_sync<Cfg::BN, Cfg::BK, Cfg::SMEM_STRIDE, Cfg::THREADS>(stage_b(s), B, n, d, col0, k0);
        }
        cp_async_commit();  // an empty group on the sync path keeps the wait counts uniform
    };

    const int k_tiles = (d + Cfg::BK - 1) / Cfg::BK;
    if (k_tiles == 0) return;  // d = 0: a zero tile, and no copy issued that no wait would retire
    load_stage(0, 0);
    for (int kt = 0; kt < k_tiles; ++kt) {
        if (kt + 1 < k_tiles) {
            load_stage((kt + 1) % 2, (kt + 1) * Cfg::BK);
            cp_async_wait<1>();  // this stage's group is done; the next one may still fly
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        warp_mma_stage<Cfg>(acc, stage_a(kt % 2), stage_b(kt % 2), warp_m, warp_n);
        __syncthreads();  // the buffer is overwritten by the load two iterations on
    }
}

// Calls f(row, col, v0, v1) for each pair of horizontally adjacent accumulators (col, col + 1) of
// this thread, in block-tile coordinates; the epilogue decides what bounds and stores mean.
template <class Cfg, typename F>
__device__ __forceinline__ void for_each_acc_pair(const float (&acc)[Cfg::MI][Cfg::NI][4], F&& f) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int warp_m = warp / Cfg::WARPS_N, warp_n = warp % Cfg::WARPS_N;
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int row = warp_m * Cfg::WM + mi * 16 + lane / 4 + half * 8;
                const int col = warp_n * Cfg::WN + ni * 8 + (lane % 4) * 2;
                f(row, col, acc[mi][ni][2 * half], acc[mi][ni][2 * half + 1]);
            }
}

}  // namespace ck
