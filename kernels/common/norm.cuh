// The L2-normalization rule shared by every kernel: u = x / max(||x||, eps), eps = 1e-12,
// as torch.nn.functional.normalize. A NaN norm stays NaN (torch's clamp_min propagates NaN),
// so a row holding a NaN normalizes to an all-NaN row instead of a row of huge values.
#pragma once
#include "dtype.cuh"
#include "reduce.cuh"

namespace ck {

constexpr float kNormEps = 1e-12f;

__device__ __forceinline__ float norm_denominator(float norm) { return norm <= kNormEps ? kNormEps : norm; }

// ||row|| of a d-element row, one warp per row (lane j reads elements j, j + 32, ...): every lane
// gets the result. f32 accumulation in a fixed order, so every kernel gets the same bits.
template <typename T> __device__ __forceinline__ float warp_row_norm(const T* __restrict__ row, int d) {
    const int lane = threadIdx.x % 32;
    float sum_sq = 0.f;
    for (int j = lane; j < d; j += 32) {
        const float v = to_float(row[j]);
        sum_sq = fmaf(v, v, sum_sq);
    }
    return sqrtf(warp_sum(sum_sq));
}

}  // namespace ck
