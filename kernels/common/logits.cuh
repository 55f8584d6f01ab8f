// The fused loss's logit convention, shared by its forward (contrastive_forward.cuh) and its
// backward (contrastive_backward.cuh), which recomputes the forward's logits:
//   t_ij = (acc_ij * rinv_i) * cscale_j,  rinv_i = 1 / max(|x_i|, eps),
//   cscale_j = rinv_j * (inv_tau * log2(e)),
// so t_ij = s_ij log2(e) and exp(s_ij - c) = 2^(t_ij - c log2(e)): one ex2.approx per logit.
#pragma once
#include <math.h>
#include "norm.cuh"

namespace ck {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.69314718055994531f;

// 2^x by the MUFU (ex2.approx.ftz: about 2 ulp, subnormal results flushed to 0; 2^-inf = 0).
__device__ __forceinline__ float ex2_approx(float x) {
#ifdef CK_EMULATOR
    return exp2f_approx(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// The row factor rinv_i (one IEEE division per row) and a row's scale as a column, cscale_j.
__device__ __forceinline__ float logit_row_inverse(float norm) { return 1.f / norm_denominator(norm); }
__device__ __forceinline__ float logit_scale(float rinv, float inv_tau) { return rinv * (inv_tau * kLog2e); }
__device__ __forceinline__ float logit_column_scale(float norm, float inv_tau) {
    return logit_scale(logit_row_inverse(norm), inv_tau);
}

}  // namespace ck
