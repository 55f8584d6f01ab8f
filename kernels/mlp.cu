// mlp: the encoder's kernels, f16 / bf16 compute with f32 accumulation and f32 master weights.
//
//   linear_forward_T          Y = act(X W^T + b)       X m x k, W n x k, b f32, Y m x n (T)
//   linear_backward_data_T    dX = (dZ W) [X' > 0]     dZ m x n, W n x k, dX m x k (T); the optional
//                                                      mask X' (m x k) fuses the previous layer's ReLU'
//   linear_backward_weight_T  dW = dZ^T X              dW n x k (f32)
//   column_sums_T             db = sum_rows dZ         db n (f32), fixed summation order
//   adamw_T                   AdamW on f32 master weights, writes the T compute copy
//   convert_f32_T             T copy of an f32 buffer (the first compute copy, input batches)
//
// The three GEMMs are the Tile128 tensor-core core (mma.sync m16n8k16) with operands loaded as
// rows or transposed ("rows" / "trans" operands of common/tile.cuh). Every output element is owned by one thread of one
// block and reduced in a fixed order: results are deterministic run to run.
// `_unaligned` variants: some contiguous dimension is not a multiple of 8 or a base is not 16-byte
// aligned; element-wise loads, same math.
#include "common/epilogue.cuh"
#include "common/tile.cuh"
#include "params/mlp.h"

namespace ck {

template <typename T, bool ALIGNED>
__device__ void linear_forward(const T* __restrict__ X, const T* __restrict__ W, const float* __restrict__ bias,
                               T* __restrict__ Y, int m, int n, int k, int relu) {
    using Cfg = Tile128;
    __shared__ __align__(128) T smem[Cfg::SMEM_BYTES / sizeof(T)];
    const int row0 = blockIdx.y * Cfg::BM, col0 = blockIdx.x * Cfg::BN;
    float acc[Cfg::MI][Cfg::NI][4];
    mma_block_tile<Cfg, ALIGNED, false, false>(acc, smem, X, W, m, n, k, row0, col0);
    const bool pairs_aligned = n % 2 == 0 && reinterpret_cast<uintptr_t>(Y) % (2 * sizeof(T)) == 0;
    for_each_acc_pair<Cfg>(acc, [&](int r, int c, float v0, float v1) {
        const int row = row0 + r, col = col0 + c;
        if (bias != nullptr) {
            if (col < n) v0 += bias[col];
            if (col + 1 < n) v1 += bias[col + 1];
        }
        if (relu) {
            v0 = v0 < 0.f ? 0.f : v0;  // NaN stays NaN, as torch.relu
            v1 = v1 < 0.f ? 0.f : v1;
        }
        store_pair(Y, m, n, row, col, v0, v1, pairs_aligned);
    });
}

template <typename T, bool ALIGNED>
__device__ void linear_backward_data(const T* __restrict__ dZ, const T* __restrict__ W, const T* __restrict__ mask,
                                     T* __restrict__ dX, int m, int n, int k) {
    using Cfg = Tile128;
    __shared__ __align__(128) T smem[Cfg::SMEM_BYTES / sizeof(T)];
    const int row0 = blockIdx.y * Cfg::BM, col0 = blockIdx.x * Cfg::BN;
    float acc[Cfg::MI][Cfg::NI][4];
    // Output m x k, reduction over n: A = dZ (m x n, rows), B = W^T, and W (n x k) is its "trans" storage.
    mma_block_tile<Cfg, ALIGNED, false, true>(acc, smem, dZ, W, m, k, n, row0, col0);
    const bool pairs_aligned = k % 2 == 0 && reinterpret_cast<uintptr_t>(dX) % (2 * sizeof(T)) == 0;
    for_each_acc_pair<Cfg>(acc, [&](int r, int c, float v0, float v1) {
        const int row = row0 + r, col = col0 + c;
        if (mask != nullptr && row < m) {
            const T* mrow = mask + (size_t)row * k;
            if (col < k && !(to_float(mrow[col]) > 0.f)) v0 = 0.f;
            if (col + 1 < k && !(to_float(mrow[col + 1]) > 0.f)) v1 = 0.f;
        }
        store_pair(dX, m, k, row, col, v0, v1, pairs_aligned);
    });
}

template <typename T, bool ALIGNED>
__device__ void linear_backward_weight(const T* __restrict__ dZ, const T* __restrict__ X, float* __restrict__ dW,
                                       int m, int n, int k) {
    using Cfg = Tile128;
    __shared__ __align__(128) T smem[Cfg::SMEM_BYTES / sizeof(T)];
    const int row0 = blockIdx.y * Cfg::BM, col0 = blockIdx.x * Cfg::BN;
    float acc[Cfg::MI][Cfg::NI][4];
    // Output n x k, reduction over the batch m: A = dZ^T (stored m x n), B = X^T (stored m x k).
    mma_block_tile<Cfg, ALIGNED, true, true>(acc, smem, dZ, X, n, k, m, row0, col0);
    const bool pairs_aligned = k % 2 == 0 && reinterpret_cast<uintptr_t>(dW) % (2 * sizeof(float)) == 0;
    for_each_acc_pair<Cfg>(acc, [&](int r, int c, float v0, float v1) {
        store_pair(dW, n, k, row0 + r, col0 + c, v0, v1, pairs_aligned);
    });
}

// Column sums of dZ (m x n): a 32 x 8 block owns 32 columns; thread (x, y) sums rows y, y + 8, ...
// of its column, then row y = 0 adds the eight partial sums in order (deterministic).
constexpr int kColSumX = CK_MLP_COLSUM_X, kColSumY = CK_MLP_COLSUM_Y;

template <typename T>
__device__ void column_sums(const T* __restrict__ dZ, float* __restrict__ out, int m, int n) {
    __shared__ float partial[kColSumY][kColSumX];
    const int col = blockIdx.x * kColSumX + threadIdx.x;
    float s = 0.f;
    if (col < n)
        for (int row = threadIdx.y; row < m; row += kColSumY) s += to_float(dZ[(size_t)row * n + col]);
    partial[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < n) {
        float total = 0.f;
#pragma unroll
        for (int y = 0; y < kColSumY; ++y) total += partial[y][threadIdx.x];
        out[col] = total;
    }
}

// AdamW (torch.optim.AdamW's update, in f32): p <- p (1 - lr wd); m <- b1 m + (1 - b1) g;
// v <- b2 v + (1 - b2) g^2; p <- p - lr (m / c1) / (sqrt(v / c2) + eps). c1, c2 = 1 - beta^t come
// from the host (computed in f64 there, as the oracle does).
struct AdamWArgs {
    float lr, beta1, beta2, eps, weight_decay, c1, c2;
};

// Grid-stride loops index in 64 bits: with an int index, count near 2^31 overflows `i += stride`.
template <typename T>
__device__ void adamw(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m_state,
                      float* __restrict__ v_state, T* __restrict__ p_compute, int count, AdamWArgs a) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x) {
        const float gi = g[i];
        const float mi = a.beta1 * m_state[i] + (1.f - a.beta1) * gi;
        const float vi = a.beta2 * v_state[i] + (1.f - a.beta2) * gi * gi;
        const float pi = p[i] * (1.f - a.lr * a.weight_decay) - a.lr * (mi / a.c1) / (sqrtf(vi / a.c2) + a.eps);
        m_state[i] = mi;
        v_state[i] = vi;
        p[i] = pi;
        if (p_compute != nullptr) p_compute[i] = from_float<T>(pi);
    }
}

}  // namespace ck

// The header's tile constants are Tile128's (the Rust grid is computed from the header).
static_assert(CK_MLP_TILE == ck::Tile128::BM && CK_MLP_TILE == ck::Tile128::BN, "params/mlp.h");
static_assert(CK_MLP_GEMM_THREADS == ck::Tile128::THREADS, "params/mlp.h");

namespace ck {

// The kernels' bodies on their parameter structs.
template <typename T, bool ALIGNED> __device__ __forceinline__ void linear_forward(const CkLinearForwardParams& p) {
    linear_forward<T, ALIGNED>(static_cast<const T*>(p.x), static_cast<const T*>(p.w), p.bias, static_cast<T*>(p.y), p.m,
                               p.n, p.k, p.relu);
}
template <typename T, bool ALIGNED>
__device__ __forceinline__ void linear_backward_data(const CkLinearBackwardDataParams& p) {
    linear_backward_data<T, ALIGNED>(static_cast<const T*>(p.dz), static_cast<const T*>(p.w), static_cast<const T*>(p.mask),
                                     static_cast<T*>(p.dx), p.m, p.n, p.k);
}
template <typename T, bool ALIGNED>
__device__ __forceinline__ void linear_backward_weight(const CkLinearBackwardWeightParams& p) {
    linear_backward_weight<T, ALIGNED>(static_cast<const T*>(p.dz), static_cast<const T*>(p.x), p.dw, p.m, p.n, p.k);
}

}  // namespace ck

#define CK_MLP_GEMM_KERNELS(name, type)                                                                          \
    extern "C" __global__ void __launch_bounds__(ck::Tile128::THREADS)                                          \
        linear_forward_##name(const __grid_constant__ CkLinearForwardParams p) {                                                  \
        ck::linear_forward<type, true>(p);                                                                      \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(ck::Tile128::THREADS)                                          \
        linear_forward_##name##_unaligned(const __grid_constant__ CkLinearForwardParams p) {                                      \
        ck::linear_forward<type, false>(p);                                                                     \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(ck::Tile128::THREADS)                                          \
        linear_backward_data_##name(const __grid_constant__ CkLinearBackwardDataParams p) {                                       \
        ck::linear_backward_data<type, true>(p);                                                                \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(ck::Tile128::THREADS)                                          \
        linear_backward_data_##name##_unaligned(const __grid_constant__ CkLinearBackwardDataParams p) {                           \
        ck::linear_backward_data<type, false>(p);                                                               \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(ck::Tile128::THREADS)                                          \
        linear_backward_weight_##name(const __grid_constant__ CkLinearBackwardWeightParams p) {                                   \
        ck::linear_backward_weight<type, true>(p);                                                              \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(ck::Tile128::THREADS)                                          \
        linear_backward_weight_##name##_unaligned(const __grid_constant__ CkLinearBackwardWeightParams p) {                       \
        ck::linear_backward_weight<type, false>(p);                                                             \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(ck::kColSumX * ck::kColSumY)                                   \
        column_sums_##name(const __grid_constant__ CkColumnSumsParams p) {                                                        \
        ck::column_sums<type>(static_cast<const type*>(p.dz), p.out, p.m, p.n);                                \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(CK_MLP_ELEMENTWISE_THREADS) adamw_##name(const __grid_constant__ CkAdamwParams a) { \
        ck::adamw<type>(a.p, a.g, a.m_state, a.v_state, static_cast<type*>(a.p_compute), a.count,               \
                        {a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.c1, a.c2});                           \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(CK_MLP_ELEMENTWISE_THREADS)                                    \
        convert_f32_##name(const __grid_constant__ CkConvertParams p) {                                                           \
        type* dst = static_cast<type*>(p.dst);                                                                  \
        for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p.count;                       \
             i += (long long)gridDim.x * blockDim.x)                                                            \
            dst[i] = ck::from_float<type>(p.src[i]);                                                            \
    }

CK_MLP_GEMM_KERNELS(f16, __half)
CK_MLP_GEMM_KERNELS(bf16, __nv_bfloat16)
