// kmeans: the centroid update of k-means, a segmented mean. Assignment is the top-1 of
// kernels/topk.cu against the centroids; seeding and the empty-cluster rule run on the host
// (src/ops/kmeans/gpu.rs).
//
// out[c] = mean over p in [offsets[c], offsets[c + 1]) of w_i x_i, i = perm[p], where w_i = 1 /
// max(|x_i|, eps) (spherical: the mean of unit vectors; the caller then normalizes it) or 1
// (euclidean). One thread per (cluster, feature): it sums its segment in order, so the result
// is deterministic (no atomics).
#include "common/dtype.cuh"
#include "common/norm.cuh"
#include "params/kmeans.h"

namespace ck {

constexpr int kMeanThreads = CK_KMEANS_MEAN_THREADS;

template <typename TX, typename TOut>
__device__ void kmeans_mean(const TX* __restrict__ x, int d, const float* __restrict__ norms, const int* __restrict__ perm,
                            const int* __restrict__ offsets, TOut* __restrict__ out) {
    const int c = blockIdx.y;
    const int j = blockIdx.x * kMeanThreads + threadIdx.x;
    if (j >= d) return;
    const int begin = offsets[c], end = offsets[c + 1];
    float sum = 0.f;
    for (int p = begin; p < end; ++p) {
        const int i = perm[p];
        const float w = norms != nullptr ? 1.f / norm_denominator(norms[i]) : 1.f;
        sum = fmaf(to_float(x[(size_t)i * d + j]), w, sum);
    }
    out[(size_t)c * d + j] = from_float<TOut>(end > begin ? sum / (float)(end - begin) : 0.f);
}

}  // namespace ck

#define CK_KMEANS_MEAN(in_name, in_type, out_name, out_type)                                                  \
    extern "C" __global__ void __launch_bounds__(ck::kMeanThreads) kmeans_mean_##in_name##_##out_name(        \
        const __grid_constant__ CkKmeansMeanParams p) {                                                                       \
        ck::kmeans_mean<in_type, out_type>(static_cast<const in_type*>(p.x), p.d, p.norms, p.perm, p.offsets, \
                                           static_cast<out_type*>(p.out));                                    \
    }

CK_FOR_EACH_FLOAT_PAIR(CK_KMEANS_MEAN)
