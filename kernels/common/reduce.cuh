// Warp and block reductions shared by the kernels, each in a fixed order (deterministic).
#pragma once

namespace ck {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
    return v;
}

// op over the values of a whole block of THREADS threads (a multiple of 32), in a fixed order
// (deterministic): each warp reduces by shuffles, then every thread folds the warps' partials in
// warp order, so every thread gets the result. scratch: THREADS / 32 values of shared memory,
// reusable by the next call (the first barrier orders it after the previous call's reads).
template <int THREADS, typename T, class Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T* scratch) {
    static_assert(THREADS % 32 == 0, "whole warps");
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, offset));
    __syncthreads();
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    T r = scratch[0];
#pragma unroll 1
    for (int w = 1; w < THREADS / 32; ++w) r = op(r, scratch[w]);
    return r;
}

struct Sum {
    template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct Min {
    __device__ __forceinline__ int operator()(int a, int b) const { return min(a, b); }
};

}  // namespace ck
