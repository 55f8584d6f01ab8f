// CUDA-core (FFMA) block tile for f32 operands: the f32 counterpart of mma_block_tile in tile.cuh,
// for kernels that sweep many tiles and must keep exact f32 products (no TF32 rounding).
//
// acc[i][j] = <A[row0 + tm + i * THREADS_M], B[col0 + tn + j * THREADS_N]> over all of d, where
// thread t is (tm, tn) = (t / THREADS_N, t % THREADS_N). Operands are staged k-major in shared
// memory (one row padded by one float, so the transposing stores do not conflict); tails of the
// matrices are zero-filled. Any d and any 4-byte alignment. Ends with __syncthreads, so the caller
// may reuse the shared buffer until its next call.
#pragma once
#include "tile_config.cuh"

namespace ck {

// 128 x 128 outputs per block, 256 threads of 8 x 8: the register shape of Tile128's accumulators.
using FmaTile128 = FmaTileConfig<128, 128, 16, 8, 8>;

template <class Cfg> struct FmaTileSmem {
    static constexpr int A_FLOATS = Cfg::BK * (Cfg::BM + 1);
    static constexpr int B_FLOATS = Cfg::BK * (Cfg::BN + 1);
    static constexpr int BYTES = (A_FLOATS + B_FLOATS) * 4;
};

template <class Cfg>
__device__ __forceinline__ void fma_block_tile(float (&acc)[Cfg::TM][Cfg::TN], float* smem, const float* __restrict__ A,
                                               const float* __restrict__ B, int m, int n, int d, int row0, int col0) {
    float* sA = smem;                                // [BK][BM + 1]
    float* sB = smem + FmaTileSmem<Cfg>::A_FLOATS;   // [BK][BN + 1]
    const int tn = threadIdx.x % Cfg::THREADS_N, tm = threadIdx.x / Cfg::THREADS_N;
#pragma unroll
    for (int i = 0; i < Cfg::TM; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::TN; ++j) acc[i][j] = 0.f;
    for (int k0 = 0; k0 < d; k0 += Cfg::BK) {
        for (int i = threadIdx.x; i < Cfg::BM * Cfg::BK; i += Cfg::THREADS) {
            const int r = i / Cfg::BK, k = i % Cfg::BK;
            const int gr = row0 + r, gk = k0 + k;
            sA[k * (Cfg::BM + 1) + r] = (gr < m && gk < d) ? A[(size_t)gr * d + gk] : 0.f;
        }
        for (int i = threadIdx.x; i < Cfg::BN * Cfg::BK; i += Cfg::THREADS) {
            const int r = i / Cfg::BK, k = i % Cfg::BK;
            const int gr = col0 + r, gk = k0 + k;
            sB[k * (Cfg::BN + 1) + r] = (gr < n && gk < d) ? B[(size_t)gr * d + gk] : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < Cfg::BK; ++k) {
            float a[Cfg::TM], b[Cfg::TN];
#pragma unroll
            for (int i = 0; i < Cfg::TM; ++i) a[i] = sA[k * (Cfg::BM + 1) + tm + i * Cfg::THREADS_M];
#pragma unroll
            for (int j = 0; j < Cfg::TN; ++j) b[j] = sB[k * (Cfg::BN + 1) + tn + j * Cfg::THREADS_N];
#pragma unroll
            for (int i = 0; i < Cfg::TM; ++i)
#pragma unroll
                for (int j = 0; j < Cfg::TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
}

}  // namespace ck
