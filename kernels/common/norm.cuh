// The L2-normalization rule shared by every kernel: u = x / max(||x||, eps), eps = 1e-12,
// as torch.nn.functional.normalize. A NaN norm stays NaN (torch's clamp_min propagates NaN),
// so a row holding a NaN normalizes to an all-NaN row instead of a row of huge values.
#pragma once
#include "dtype.cuh"
#include "reduce.cuh"

namespace ck {

constexpr float kNormEps = 1e-12f;

__device__ __forceinline__ float norm_denominator(float norm) { return norm <= kNormEps ? kNormEps : norm; }

// 2^floor(log2 v) and its inverse for a positive normal float v, from the exponent bits. Scaling a
// row by the inverse is exact (a shift of every element's exponent) and brings its norm into
// [1, 2); the unit row is then that row times pow2_floor(denom) / denom, a scalar in (0.5, 1].
__device__ __forceinline__ float pow2_floor(float v) { return __int_as_float(__float_as_int(v) & 0x7f800000); }
__device__ __forceinline__ float inv_pow2_floor(float v) {
    const int biased = min(max((__float_as_int(v) >> 23) & 0xff, 1), 253);
    return __int_as_float((254 - biased) << 23);
}

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
