// The unfused contrastive loss: what PyTorch does, as the honest baseline of the benches and a
// second GPU oracle for the fused kernels (src/ops/contrastive/unfused.rs drives it):
//   l2_normalize -> cuBLAS GEMM writing the whole logit matrix S (n x (n_cols + n_centers), f32)
//   -> contrastive_unfused_softmax (this file: row-wise masked log-softmax, per-anchor loss)
//   -> contrastive_reduce (contrastive.cu);
// backward: contrastive_backward_prepare (contrastive.cu) -> contrastive_unfused_grad_* (this file:
// the materialized dS = G in the input dtype) -> cuBLAS GEMMs -> l2_normalize_backward.
//
// The masks are exactly those of the fused forward (contrastive.cu, fold_tile): column j of row i
//   j <  n_cols: excluded when (self geometry and j == i) or column j is NormPenaltyOnly;
//                positive when instance equal, or label_i >= 0 and label equal;
//   j >= n_cols: prototype k = j - n_cols, always in the denominator, positive when k == proto_of[i].
// Reductions run in a fixed order (deterministic); exp / log are the accurate expf / logf, since
// this path is also an oracle.
#include "common/dtype.cuh"
#include "common/reduce.cuh"
#include "params/contrastive_unfused.h"

namespace ck {
namespace unfused {

constexpr unsigned char kRoleAnchor = CK_CONTRASTIVE_ROLE_ANCHOR;  // as ops::contrastive::RowRole
constexpr unsigned char kRoleNormPenaltyOnly = CK_CONTRASTIVE_ROLE_NORM_PENALTY_ONLY;
constexpr int kThreads = CK_CONTRASTIVE_UNFUSED_THREADS;  // one block per row of S
constexpr int kWarps = kThreads / 32;

struct Row {
    int instance, label, proto;
};

__device__ __forceinline__ Row load_row(const int* instance, const int* label, const int* proto_of, int i) {
    return {instance[i], label != nullptr ? label[i] : -1, proto_of != nullptr ? proto_of[i] : -1};
}

// 0: masked out of A(i); 1: in A(i), not a positive; 2: a positive.
__device__ __forceinline__ int column_kind(const Row& r, int i, int j, const int* col_instance, const int* col_label,
                                           const unsigned char* col_role, int n_cols, bool exclude_self) {
    if (j >= n_cols) return j - n_cols == r.proto ? 2 : 1;
    if ((exclude_self && j == i) || (col_role != nullptr && col_role[j] == kRoleNormPenaltyOnly)) return 0;
    const bool positive = col_instance[j] == r.instance || (r.label >= 0 && col_label != nullptr && col_label[j] == r.label);
    return positive ? 2 : 1;
}

// Row i of S (ld elements apart, logits already divided by tau): LSE over A(i), |P(i)|, and
// L_i = scale (LSE - mean of the positives) for anchors with a positive.
__device__ void masked_log_softmax(const float* __restrict__ s, long ld, const int* instance, const int* label,
                                   const unsigned char* role, const int* proto_of, const int* col_instance,
                                   const int* col_label, const unsigned char* col_role, int n_cols, int n_centers,
                                   bool exclude_self, float scale, float* per_anchor, float* lse, int* positives) {
    __shared__ float scratch[kWarps];
    const int i = blockIdx.x;
    const unsigned char row_role = role != nullptr ? role[i] : kRoleAnchor;
    if (row_role == kRoleNormPenaltyOnly) {  // outside the matrix (uniform across the block)
        if (threadIdx.x == 0) {
            lse[i] = -INFINITY;
            positives[i] = 0;
            per_anchor[i] = 0.f;
        }
        return;
    }
    const Row r = load_row(instance, label, proto_of, i);
    const float* si = s + i * ld;
    const int m = n_cols + n_centers;
    float max = -INFINITY, pos_sum = 0.f, pos_count = 0.f;  // counts are exact in f32 below 2^24
    for (int j = threadIdx.x; j < m; j += kThreads) {
        const int kind = column_kind(r, i, j, col_instance, col_label, col_role, n_cols, exclude_self);
        if (kind == 0) continue;
        max = fmaxf(max, si[j]);
        if (kind == 2) {
            pos_sum += si[j];
            pos_count += 1.f;
        }
    }
    max = block_reduce<kThreads>(max, Max(), scratch);
    pos_sum = block_reduce<kThreads>(pos_sum, Sum(), scratch);
    pos_count = block_reduce<kThreads>(pos_count, Sum(), scratch);
    float sum = 0.f;
    if (max > -INFINITY) {
        for (int j = threadIdx.x; j < m; j += kThreads)
            if (column_kind(r, i, j, col_instance, col_label, col_role, n_cols, exclude_self) != 0) sum += expf(si[j] - max);
    }
    sum = block_reduce<kThreads>(sum, Sum(), scratch);
    if (threadIdx.x == 0) {
        const float l = max > -INFINITY ? max + logf(sum) : -INFINITY;
        const int count = (int)pos_count;
        lse[i] = l;
        positives[i] = count;
        per_anchor[i] = row_role == kRoleAnchor && count > 0 ? scale * (l - pos_sum / pos_count) : 0.f;
    }
}

// dS row i: G_ij = coef_a[i] exp(s_ij - lse_i) - [j in P(i)] coef_b[i] on A(i), 0 elsewhere, in T.
// coef_a / coef_b come from contrastive_backward_prepare and carry its power-of-two scale sigma
// (|G| <= 2^13: f16 holds it and its small entries stay above f16's subnormals); the GEMMs divide it
// out through gemm_scalars = {1 / (sigma tau), 0, 1} (alpha, beta = 0, beta = 1), written here so
// that cuBLAS reads them in device pointer mode without a host round trip.
template <typename T>
__device__ void unfused_grad(const float* __restrict__ s, long ld, const float* lse, const float* coef_a,
                             const float* coef_b, const int* instance, const int* label, const int* proto_of,
                             const int* col_instance, const int* col_label, const unsigned char* col_role, int n_cols,
                             int n_centers, bool exclude_self, const float* scalars, float inv_tau, T* __restrict__ g,
                             float* gemm_scalars) {
    const int i = blockIdx.x;
    if (i == 0 && threadIdx.x == 0) {
        gemm_scalars[0] = scalars[0] * inv_tau;
        gemm_scalars[1] = 0.f;
        gemm_scalars[2] = 1.f;
    }
    const int m = n_cols + n_centers;
    T* gi = g + i * ld;
    const float a = coef_a[i];
    if (a == 0.f) {  // not an anchor, or no positive (its LSE may be -inf: no exp of it)
        for (int j = threadIdx.x; j < m; j += kThreads) gi[j] = from_float<T>(0.f);
        return;
    }
    const float b = coef_b[i], l = lse[i];
    const Row r = load_row(instance, label, proto_of, i);
    const float* si = s + i * ld;
    for (int j = threadIdx.x; j < m; j += kThreads) {
        const int kind = column_kind(r, i, j, col_instance, col_label, col_role, n_cols, exclude_self);
        const float v = kind == 0 ? 0.f : a * expf(si[j] - l) - (kind == 2 ? b : 0.f);
        gi[j] = from_float<T>(v);
    }
}

}  // namespace unfused
}  // namespace ck

// 4 blocks/SM (at most 64 registers; it needs about 40): without the hint, ptxas settles on 32
// registers and an 8-byte spill for this kernel once its arguments are one struct.
extern "C" __global__ void __launch_bounds__(ck::unfused::kThreads, 4)
    contrastive_unfused_softmax(const __grid_constant__ CkUnfusedSoftmaxParams p) {
    ck::unfused::masked_log_softmax(p.s, p.ld, p.instance, p.label, p.role, p.proto_of, p.col_instance, p.col_label,
                                    p.col_role, p.n_cols, p.n_centers, p.exclude_self != 0, p.scale, p.per_anchor, p.lse,
                                    p.positives);
}

#define CK_UNFUSED_GRAD(name, type)                                                                              \
    extern "C" __global__ void __launch_bounds__(ck::unfused::kThreads)                                         \
        contrastive_unfused_grad_##name(const __grid_constant__ CkUnfusedGradParams p) {                        \
        ck::unfused::unfused_grad<type>(p.s, p.ld, p.lse, p.coef_a, p.coef_b, p.instance, p.label, p.proto_of,  \
                                        p.col_instance, p.col_label, p.col_role, p.n_cols, p.n_centers,        \
                                        p.exclude_self != 0, p.scalars, p.inv_tau, static_cast<type*>(p.g),     \
                                        p.gemm_scalars);                                                         \
    }
CK_FOR_EACH_FLOAT(CK_UNFUSED_GRAD)
