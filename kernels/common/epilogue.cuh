// Epilogue pieces shared by the kernels that write a scaled similarity tile.
#pragma once
#include "dtype.cuh"
#include "norm.cuh"

namespace ck {

// Per-row factor of the fused normalization: scale / max(||x||, eps) (NaN norms stay NaN).
__device__ __forceinline__ float inv_norm_factor(const float* norms, int i, int count, float scale) {
    return i < count ? scale / norm_denominator(norms[i]) : 0.f;
}

// Stores out[row, col] = v0 and out[row, col + 1] = v1 of a row-major rows x cols matrix, as one
// vector store when both are inside and the pair is aligned, else element by element.
template <typename T>
__device__ __forceinline__ void store_pair(T* out, int rows, int cols, int row, int col, float v0, float v1,
                                           bool pairs_aligned) {
    if (row >= rows) return;
    T* p = out + (size_t)row * cols + col;
    if (pairs_aligned && col + 1 < cols) {
        *reinterpret_cast<typename Pair<T>::type*>(p) = Pair<T>::make(v0, v1);
    } else {
        if (col < cols) p[0] = from_float<T>(v0);
        if (col + 1 < cols) p[1] = from_float<T>(v1);
    }
}

}  // namespace ck
