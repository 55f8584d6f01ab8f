// similarity: S = scale * normalize(A) normalize(B)^T, A (m x d), B (n x d), optionally with the
// diagonal S_ii set to a fill value (self-similarity, A == B).
//
// f16 / bf16 inputs: tensor cores (mma.sync m16n8k16, f32 accumulation) on the Tile128 core.
// f32 inputs: the tile core's exact FFMA engine (no TF32 rounding), so f32 results keep f32 accuracy.
// Any m, n, d: tails are zero-filled in shared memory and masked at the store. d % 8 != 0 or an
// operand not 16-byte aligned takes the `_unaligned` kernels (element-wise loads, same math).
// The row norms come from the l2_normalize prologue (norms only); see common/tile.cuh.
#include "common/epilogue.cuh"
#include "common/tile.cuh"
#include "params/similarity.h"

namespace ck {

struct SimilarityEpilogue {
    float scale;
    int mask_diagonal;  // 0 or 1
    float diagonal_value;
};

template <typename TOut, class Cfg>
__device__ __forceinline__ void similarity_store(const float (&acc)[Cfg::MI][Cfg::NI][4], const float* norms_a,
                                                 const float* norms_b, TOut* S, int m, int n, int row0, int col0,
                                                 SimilarityEpilogue ep) {
    const bool pairs_aligned = n % 2 == 0 && reinterpret_cast<uintptr_t>(S) % (2 * sizeof(TOut)) == 0;
    for_each_acc_pair<Cfg>(acc, [&](int r, int c, float v0, float v1) {
        const int row = row0 + r, col = col0 + c;
        const float fa = inv_norm_factor(norms_a, row, m, ep.scale);
        v0 *= fa * inv_norm_factor(norms_b, col, n, 1.f);
        v1 *= fa * inv_norm_factor(norms_b, col + 1, n, 1.f);
        if (ep.mask_diagonal) {
            if (row == col) v0 = ep.diagonal_value;
            if (row == col + 1) v1 = ep.diagonal_value;
        }
        store_pair(S, m, n, row, col, v0, v1, pairs_aligned);
    });
}

// One block tile on the tile core: tensor cores (Tile128) for f16 / bf16, the FFMA engine for f32
// (Tile64F32: a finer grid for the small matrices f32 is used with, the same epilogue).
template <typename T, typename TOut, bool ALIGNED>
__device__ void similarity_tile(const T* __restrict__ A, const T* __restrict__ B, const float* __restrict__ norms_a,
                                const float* __restrict__ norms_b, TOut* __restrict__ S, int m, int n, int d,
                                SimilarityEpilogue ep) {
    using Cfg = typename TileFor<T, Tile128, Tile64F32>::type;
    __shared__ __align__(128) T smem[Cfg::SMEM_ELEMS];
    const int row0 = blockIdx.y * Cfg::BM, col0 = blockIdx.x * Cfg::BN;
    float acc[Cfg::MI][Cfg::NI][4];
    mma_block_tile<Cfg, ALIGNED>(acc, smem, A, B, m, n, d, row0, col0);
    similarity_store<TOut, Cfg>(acc, norms_a, norms_b, S, m, n, row0, col0, ep);
}

}  // namespace ck

// The header's tile constants are the configs' (the Rust grid is computed from the header).
static_assert(CK_SIMILARITY_MMA_TILE == ck::Tile128::BM && CK_SIMILARITY_MMA_TILE == ck::Tile128::BN, "params/similarity.h");
static_assert(CK_SIMILARITY_FMA_TILE == ck::Tile64F32::BM && CK_SIMILARITY_FMA_TILE == ck::Tile64F32::BN, "params/similarity.h");
static_assert(CK_SIMILARITY_THREADS == ck::Tile128::THREADS && CK_SIMILARITY_THREADS == ck::Tile64F32::THREADS, "params/similarity.h");

#define CK_SIMILARITY_CALL(in_type, out_type, aligned)                                                        \
    ck::similarity_tile<in_type, out_type, aligned>(                                                          \
        static_cast<const in_type*>(p.a), static_cast<const in_type*>(p.b), p.norms_a, p.norms_b,             \
        static_cast<out_type*>(p.s), p.m, p.n, p.d, {p.scale, p.mask_diagonal, p.diagonal_value})

#define CK_SIMILARITY_MMA_KERNELS(in_name, in_type, out_name, out_type)                                       \
    extern "C" __global__ void __launch_bounds__(ck::Tile128::THREADS)                                        \
        similarity_##in_name##_##out_name(const __grid_constant__ CkSimilarityParams p) {                                       \
        CK_SIMILARITY_CALL(in_type, out_type, true);                                                          \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(ck::Tile128::THREADS)                                        \
        similarity_##in_name##_##out_name##_unaligned(const __grid_constant__ CkSimilarityParams p) {                           \
        CK_SIMILARITY_CALL(in_type, out_type, false);                                                         \
    }

#define CK_SIMILARITY_FMA_KERNEL(in_name, in_type, out_name, out_type)                                        \
    /* 4 blocks/SM: 64 registers, as the FFMA tile needs no more (20 KB of shared memory each) */       \
    extern "C" __global__ void __launch_bounds__(ck::Tile64F32::THREADS, 4)                                  \
        similarity_##in_name##_##out_name(const __grid_constant__ CkSimilarityParams p) {                                       \
        CK_SIMILARITY_CALL(in_type, out_type, false);                                                         \
    }

CK_FOR_EACH_FLOAT_PAIR_OUT(CK_SIMILARITY_MMA_KERNELS, f16, __half)
CK_FOR_EACH_FLOAT_PAIR_OUT(CK_SIMILARITY_MMA_KERNELS, bf16, __nv_bfloat16)
CK_FOR_EACH_FLOAT_PAIR_OUT(CK_SIMILARITY_FMA_KERNEL, f32, float)
