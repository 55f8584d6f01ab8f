// The tile core with either operand transposed: acc = op(A) op(B)^T for one BM x BN block tile,
// where an operand is stored either
//   "row" (as in tile.cuh): rows x d, row-major, the reduction dim d contiguous, or
//   "trans": d x rows, row-major, the output dim contiguous (a matrix whose transpose is needed).
// Backward passes of a linear layer Y = X W^T need exactly these: dX = dZ W (B = W stored n x k is
// "trans" for a reduction over n) and dW = dZ^T X (both operands "trans": the reduction is over the
// batch, their slow dimension). tile.cuh's mma_block_tile is the <false, false> case.
//
// A "trans" operand is staged in shared memory as it is in global memory, [BK][ROWS + 8] (k-major),
// and turned into mma fragments by ldmatrix.trans: for an 8 x 8 matrix whose stored rows are k and
// columns are m, ldmatrix.trans gives lane t = 4 group + quad the elements (k = 2 quad + {0, 1},
// m = group): the "row" fragment layout of tile.cuh's comment, read from the transposed storage.
//   A (m16 x k16), lane l addresses stored row k = kk + (l % 8) + 8 (l / 16), column m0 + 8 ((l / 8) % 2)
//       -> matrices (k 0-7, m 0-7), (k 0-7, m 8-15), (k 8-15, m 0-7), (k 8-15, m 8-15) = a0, a1, a2, a3
//   B (k16 x n8, two n8 blocks), lane l addresses stored row k = kk + (l % 8) + 8 ((l / 8) % 2),
//       column n0 + 8 (l / 16)
//       -> matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15)
//          = b0, b1 of block ni, b0, b1 of block ni + 1
// The 8 addresses of one matrix are 8 consecutive k rows of stride (ROWS + 8) * 2 bytes = 272 B for
// ROWS = 128: 68 words apart, so their 16-byte reads fall in 8 distinct bank groups (conflict-free).
#pragma once
#include "tile.cuh"

namespace ck {

// ldmatrix_x4_trans is in tile.cuh (the loss backward uses it too).

// Loaders of a "trans" operand: stored rows [k0, k0 + BK) x columns [row0, row0 + ROWS) of a
// d x rows row-major matrix into a shared [BK][STRIDE] tile, zeros outside the matrix.
// Fast path: rows % 8 == 0 and a 16-byte aligned base (every 8-wide chunk is wholly in or out).
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

// Shared-memory layout of one operand of one stage.
template <class Cfg, int ROWS, bool TRANS> struct OperandTile {
    static constexpr int STRIDE = TRANS ? ROWS + 8 : Cfg::SMEM_STRIDE;
    static constexpr int ELEMS = TRANS ? Cfg::BK * STRIDE : ROWS * Cfg::SMEM_STRIDE;

    template <typename T>
    static __device__ __forceinline__ void load(T* smem, const T* __restrict__ g, int rows, int d, int row0, int k0,
                                                bool aligned_path) {
        if (aligned_path) {
            if constexpr (TRANS) load_tile_trans_async<ROWS, Cfg::BK, STRIDE, Cfg::THREADS>(smem, g, rows, d, row0, k0);
            else load_tile_async<ROWS, Cfg::BK, STRIDE, Cfg::THREADS>(smem, g, rows, d, row0, k0);
        } else {
            if constexpr (TRANS) load_tile_trans_sync<ROWS, Cfg::BK, STRIDE, Cfg::THREADS>(smem, g, rows, d, row0, k0);
            else load_tile_sync<ROWS, Cfg::BK, STRIDE, Cfg::THREADS>(smem, g, rows, d, row0, k0);
        }
    }
};

// One stage of warp MMAs with either operand transposed (see the mapping above).
template <class Cfg, bool TRANS_A, bool TRANS_B, typename T>
__device__ __forceinline__ void warp_mma_stage_op(float (&acc)[Cfg::MI][Cfg::NI][4], const T* sA, const T* sB,
                                                  int warp_m, int warp_n) {
    using TA = OperandTile<Cfg, Cfg::BM, TRANS_A>;
    using TB = OperandTile<Cfg, Cfg::BN, TRANS_B>;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int kk = 0; kk < Cfg::BK; kk += 16) {
        uint32_t a[Cfg::MI][4];
        uint32_t b[Cfg::NI][2];
#pragma unroll
        for (int mi = 0; mi < Cfg::MI; ++mi) {
            const int m0 = warp_m * Cfg::WM + mi * 16;
            if constexpr (TRANS_A) {
                const int k = kk + (lane % 8) + 8 * (lane / 16);
                ldmatrix_x4_trans(a[mi], sA + k * TA::STRIDE + m0 + 8 * ((lane / 8) % 2));
            } else {
                ldmatrix_x4(a[mi], sA + (m0 + lane % 16) * TA::STRIDE + kk + (lane / 16) * 8);
            }
        }
#pragma unroll
        for (int ni = 0; ni < Cfg::NI; ni += 2) {
            const int n0 = warp_n * Cfg::WN + ni * 8;
            uint32_t r[4];
            if constexpr (TRANS_B) {
                const int k = kk + (lane % 8) + 8 * ((lane / 8) % 2);
                ldmatrix_x4_trans(r, sB + k * TB::STRIDE + n0 + 8 * (lane / 16));
            } else {
                ldmatrix_x4(r, sB + (n0 + (lane % 8) + (lane / 16) * 8) * TB::STRIDE + kk + ((lane / 8) % 2) * 8);
            }
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

// acc = op(A)[row0 : row0 + BM] op(B)[col0 : col0 + BN]^T over the reduction dim d, double-buffered
// like mma_block_tile. op(A) is m x d and op(B) is n x d; a TRANS operand is stored d x m (d x n).
// ALIGNED: every operand's contiguous dimension is a multiple of 8 and its base 16-byte aligned.
// smem must hold Cfg::SMEM_BYTES (a transposed tile is never larger than a row tile, as BK <= BM, BN).
template <class Cfg, bool ALIGNED, bool TRANS_A, bool TRANS_B, typename T>
__device__ __forceinline__ void mma_block_tile_op(float (&acc)[Cfg::MI][Cfg::NI][4], T* smem, const T* __restrict__ A,
                                                  const T* __restrict__ B, int m, int n, int d, int row0, int col0) {
    using TA = OperandTile<Cfg, Cfg::BM, TRANS_A>;
    using TB = OperandTile<Cfg, Cfg::BN, TRANS_B>;
    static_assert(TA::ELEMS <= Cfg::SMEM_ELEMS_A && TB::ELEMS <= Cfg::SMEM_ELEMS_B, "a stage fits Cfg's shared memory");
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
        TA::load(stage_a(s), A, m, d, row0, k0, ALIGNED);
        TB::load(stage_b(s), B, n, d, col0, k0, ALIGNED);
        cp_async_commit();  // an empty group on the sync path keeps the wait counts uniform
    };

    const int k_tiles = (d + Cfg::BK - 1) / Cfg::BK;
    // An empty reduction (a batch of 0 rows for dW) is a zero tile: issue no copy, since no wait
    // would retire it (found by the CPU emulator).
    if (k_tiles == 0) return;
    load_stage(0, 0);
    for (int kt = 0; kt < k_tiles; ++kt) {
        if (kt + 1 < k_tiles) {
            load_stage((kt + 1) % 2, (kt + 1) * Cfg::BK);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        warp_mma_stage_op<Cfg, TRANS_A, TRANS_B>(acc, stage_a(kt % 2), stage_b(kt % 2), warp_m, warp_n);
        __syncthreads();
    }
}

}  // namespace ck
