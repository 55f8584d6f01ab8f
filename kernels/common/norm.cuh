// The L2-normalization rule shared by every kernel: u = x / max(||x||, eps), eps = 1e-12,
// as torch.nn.functional.normalize. A NaN norm stays NaN (torch's clamp_min propagates NaN),
// so a row holding a NaN normalizes to an all-NaN row instead of a row of huge values.
#pragma once

namespace ck {

constexpr float kNormEps = 1e-12f;

__device__ __forceinline__ float norm_denominator(float norm) { return norm <= kNormEps ? kNormEps : norm; }

}  // namespace ck
