// l2_normalize: rows of X (n x d) to unit rows Z plus the row norms, and its backward.
//
// One warp per row, 8 rows per 256-thread block: rows are short (d up to a few thousand) and
// each lane strides the row, so loads are coalesced and the reduction is a warp shuffle.
// The forward doubles as the norm prologue of the fused kernels (z == nullptr: norms only).
#include "common/dtype.cuh"
#include "common/norm.cuh"
#include "common/reduce.cuh"
#include "params/normalize.h"

namespace ck {

constexpr int kNormalizeThreads = CK_NORMALIZE_THREADS;
constexpr int kRowsPerBlock = CK_NORMALIZE_ROWS_PER_BLOCK;
static_assert(kRowsPerBlock * 32 == kNormalizeThreads, "one warp per row");

// z (optional) = x / max(||x||, eps) in TZ; norms (optional) = ||x|| in f32.
template <typename TX, typename TZ>
__device__ void l2_normalize_forward(const TX* __restrict__ x, TZ* __restrict__ z, float* __restrict__ norms,
                                     int n, int d) {
    const int lane = threadIdx.x % 32;
    const long row = (long)blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
    if (row >= n) return;
    const TX* xr = x + row * d;
    const float norm = warp_row_norm(xr, d);
    if (z != nullptr) {
        const float denom = norm_denominator(norm);
        TZ* zr = z + row * d;
        for (int j = lane; j < d; j += 32) zr[j] = from_float<TZ>(to_float(xr[j]) / denom);
    }
    if (norms != nullptr && lane == 0) norms[row] = norm;
}

// dx = (dz - z <z, dz>) / ||x||  where ||x|| > eps (z = x / ||x||), and
// dx = dz / eps                  where ||x|| <= eps (the clamp makes the denominator constant;
//                                 this is also torch's autograd result there).
template <typename TX, typename TZ>
__device__ void l2_normalize_backward(const TX* __restrict__ x, const TZ* __restrict__ dz, TX* __restrict__ dx,
                                      int n, int d) {
    const int lane = threadIdx.x % 32;
    const long row = (long)blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
    if (row >= n) return;
    const TX* xr = x + row * d;
    const TZ* dzr = dz + row * d;
    float sum_sq = 0.f, x_dot_dz = 0.f;
    for (int j = lane; j < d; j += 32) {
        const float v = to_float(xr[j]);
        sum_sq = fmaf(v, v, sum_sq);
        x_dot_dz = fmaf(v, to_float(dzr[j]), x_dot_dz);
    }
    const float norm = sqrtf(warp_sum(sum_sq));
    x_dot_dz = warp_sum(x_dot_dz);
    TX* dxr = dx + row * d;
    if (norm <= kNormEps) {
        for (int j = lane; j < d; j += 32) dxr[j] = from_float<TX>(to_float(dzr[j]) / kNormEps);
    } else {
        // z <z, dz> = x <x, dz> / ||x||^2; NaN rows land here and stay NaN.
        const float proj = x_dot_dz / (norm * norm);
        for (int j = lane; j < d; j += 32)
            dxr[j] = from_float<TX>((to_float(dzr[j]) - to_float(xr[j]) * proj) / norm);
    }
}

}  // namespace ck

#define CK_NORMALIZE_KERNELS(in_name, in_type, out_name, out_type)                                          \
    extern "C" __global__ void __launch_bounds__(ck::kNormalizeThreads)                                     \
        l2_normalize_forward_##in_name##_##out_name(const __grid_constant__ CkNormalizeForwardParams p) {                     \
        ck::l2_normalize_forward<in_type, out_type>(static_cast<const in_type*>(p.x), static_cast<out_type*>(p.z), \
                                                    p.norms, p.n, p.d);                                     \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(ck::kNormalizeThreads)                                     \
        l2_normalize_backward_##in_name##_##out_name(const __grid_constant__ CkNormalizeBackwardParams p) {                   \
        ck::l2_normalize_backward<in_type, out_type>(static_cast<const in_type*>(p.x),                      \
                                                     static_cast<const out_type*>(p.dz), static_cast<in_type*>(p.dx), \
                                                     p.n, p.d);                                             \
    }

CK_FOR_EACH_FLOAT_PAIR(CK_NORMALIZE_KERNELS)
