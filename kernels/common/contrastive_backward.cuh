// Pieces of the fused contrastive backward (kernels/contrastive.cu): the per-column data of a
// logit tile staged in shared memory once per tile, the per-row data kept in registers, and the
// epilogue that turns a recomputed logit tile into H (DESIGN.md section 4) with base-2 exponentials.
//
// Logits, as the forward computes them (kernels/common/contrastive_forward.cuh's convention):
//   t_kj = (acc_kj * rinv_k) * cscale_j,  rinv = 1 / max(|x|, eps),  cscale = rinv * (inv_tau log2(e)),
//   p_kj = 2^(t_kj - lse2_k),  lse2 = lse log2(e) (the forward saves lse in natural units).
// Row k's gradient takes p_kj (k the anchor) and p_jk (k a column of anchor j); t_jk is computed as
// (acc * rinv_j) * cscale_k, which differs from t_kj only by f32 rounding (a relative 2^-23 of a
// logit: far inside DESIGN.md section 7's gradient tolerances).
//
// One exponential per logit where it can (DESIGN.md section 6): logits of unit rows lie in
// [-m2, m2], m2 = inv_tau log2(e), so with the fixed offset m2, e_kj = 2^(t_kj - m2) >= 2^(-2 m2)
// stays a normal float while 2 m2 <= kOneExpMaxRange, and serves both terms:
//   p_kj = e_kj 2^(m2 - lse2_k) (a per-row factor), p_jk ~ e_kj 2^(m2 - lse2_j) (a per-column factor).
// Below that temperature each term keeps its own exponential.
#pragma once
#include <limits.h>
#include <math.h>
#include "../params/contrastive.h"
#include "norm.cuh"

namespace ck {
namespace bwd {

constexpr float kLog2e = 1.4426950408889634f;
// 2 m2 at most 100: e >= 2^-100, and the per-row factor 2^(m2 - lse2) <= 2^(2 m2) <= 2^100 times a
// coefficient below 2^14 (contrastive_backward_prepare's sigma) stays far from f32's 2^128.
// tau >= 2 log2(e) / 100 ~ 0.0289 (DESIGN.md: 2 / tau < ~80 in natural units).
constexpr float kOneExpMaxRange = 100.f;

// 2^x by the MUFU (ex2.approx.ftz: about 2 ulp; 2^-inf = 0).
__device__ __forceinline__ float ex2(float x) {
#ifdef CK_EMULATOR
    return exp2f_approx(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// How a tile's H entry is formed, chosen once per sweep (a uniform branch):
//   kRowOnly: own rows are anchors, the other side's rows are not (pairwise anchors x keys, any
//             rows x prototypes): one exponential, the anchor term;
//   kColOnly: the other side's rows are the anchors (keys x anchors, prototypes x anchors);
//   kBothTwoExp / kBothOneExp: the self geometry, both terms, two exponentials or one (see above).
enum Mode : int { kRowOnly = 0, kColOnly = 1, kBothTwoExp = 2, kBothOneExp = 3 };

// Per-column data of one column tile (32 bytes: two 16-byte shared loads per column, shared by the
// thread's two rows).
//   rinv, cscale: the logit factors (0 past the end);
//   coef: the column's anchor weight coef_a (kBothOneExp: coef_a 2^(m2 - lse2), the per-column
//         factor folded in), 0 when the column is no anchor;  coef_b: its per-positive weight;
//   lse2: the column's base-2 LSE (m2 when it is no anchor, so 2^(t - lse2) <= 1 stays finite);
//   w:    2^e_j / max(|x_j|, eps): the packed row x_j / 2^e_j times w is u_j; 0 for a column outside
//         the matrix (past the end, NormPenaltyOnly), which selects H = 0;
//   key:  instance id (prototype tiles: the prototype's index; prototypes as own rows: the
//         column's proto_of);  label: class id, or -1 (never equal to a row's label key).
struct Column {
    float rinv, cscale, coef, coef_b;
    float lse2, w;
    int key, label;
};
static_assert(sizeof(Column) == 32, "two 16-byte loads");

// What a thread keeps about one own row, for the whole sweep (registers).
struct Row {
    bool live;     // inside the matrix (not past the end, not NormPenaltyOnly): its output is kept
    float rinv, cscale;
    float coef, coef_b, lse2;  // as Column's (coef: kBothOneExp folds 2^(m2 - lse2) in)
    int key, label;            // label: the class id, or INT_MIN where labels make no positive
};


// Stages the data of columns [col0, col0 + BN) of `other` (threads of the block, one column each).
// The caller's barrier publishes it.
template <int BN, int THREADS>
__device__ __forceinline__ void stage_columns(Column* cols, const CkGradSide& own, const CkGradSide& other, int col0,
                                              int mode, float inv_tau, float m2) {
    for (int c = threadIdx.x; c < BN; c += THREADS) {
        const int col = col0 + c;
        Column k{0.f, 0.f, 0.f, 0.f, m2, 0.f, -1, -1};
        if (col < other.count && !(other.role != nullptr && other.role[col] == CK_CONTRASTIVE_ROLE_NORM_PENALTY_ONLY)) {
            const float denom = norm_denominator(other.norms[col]);
            k.rinv = 1.f / denom;
            k.cscale = k.rinv * (inv_tau * kLog2e);
            k.w = pow2_floor(denom) / denom;
            if (other.instance == nullptr) {
                k.key = col;  // prototype columns: a row's own prototype is its positive
            } else if (own.instance == nullptr) {
                k.key = other.proto_of != nullptr ? other.proto_of[col] : -1;  // prototypes as own rows
            } else {
                k.key = other.instance[col];
                k.label = other.label != nullptr ? other.label[col] : -1;
            }
            if (other.lse != nullptr && other.coef_a[col] != 0.f) {
                k.lse2 = other.lse[col] * kLog2e;
                k.coef = other.coef_a[col];
                k.coef_b = other.coef_b[col];
                if (mode == kBothOneExp) k.coef *= ex2(m2 - k.lse2);
            }
        }
        cols[c] = k;
    }
}

// An own row's data for a sweep over `other` (its positive key depends on the other side).
__device__ __forceinline__ Row load_row(const CkGradSide& own, const CkGradSide& other, int row, int mode,
                                        float inv_tau, float m2) {
    Row r{false, 0.f, 0.f, 0.f, 0.f, m2, INT_MIN, INT_MIN};
    if (row >= own.count || (own.role != nullptr && own.role[row] == CK_CONTRASTIVE_ROLE_NORM_PENALTY_ONLY)) return r;
    r.live = true;
    const float denom = norm_denominator(own.norms[row]);
    r.rinv = 1.f / denom;
    r.cscale = r.rinv * (inv_tau * kLog2e);
    if (own.instance == nullptr) {
        r.key = row;  // a prototype: positive of the anchors whose proto_of names it
    } else if (other.instance == nullptr) {
        r.key = own.proto_of != nullptr ? own.proto_of[row] : -1;  // against prototype columns (-1: none)
    } else {
        r.key = own.instance[row];
        const int label = own.label != nullptr ? own.label[row] : -1;
        r.label = label >= 0 ? label : INT_MIN;
    }
    if (own.lse != nullptr && own.coef_a[row] != 0.f) {
        r.lse2 = own.lse[row] * kLog2e;
        r.coef = own.coef_a[row];
        r.coef_b = own.coef_b[row];
        if (mode == kBothOneExp) r.coef *= ex2(m2 - r.lse2);
    }
    return r;
}

// The mode of a sweep of `own` against `other`: both terms when both sides are anchors (the self
// geometry), one exponential for them when the temperature allows it.
__device__ __forceinline__ int sweep_mode(const CkGradSide& own, const CkGradSide& other, float m2) {
    if (own.lse != nullptr && other.lse != nullptr) return 2.f * m2 <= kOneExpMaxRange ? kBothOneExp : kBothTwoExp;
    return own.lse != nullptr ? kRowOnly : kColOnly;
}

// H of this thread's accumulators of one logit tile (Cfg: MI = 1, the warp's 16 rows; columns at
// Cfg::acc_col in the tile): h[half][2 ni + e] for the rows r[half]. Branch-free: masks are selects.
template <class Cfg, int MODE>
__device__ __forceinline__ void tile_h(float (&h)[2][Cfg::NI * 2], const float (&acc)[1][Cfg::NI][4],
                                       const Column* cols, const Row (&r)[2], float m2) {
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const Column c = cols[Cfg::acc_col(ni, e)];
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const Row& o = r[half];
                const float a = acc[0][ni][half * 2 + e];
                const bool positive = c.key == o.key || c.label == o.label;
                float v;
                if constexpr (MODE == kRowOnly) {
                    v = o.coef * ex2((a * o.rinv) * c.cscale - o.lse2) - (positive ? o.coef_b : 0.f);
                } else if constexpr (MODE == kColOnly) {
                    v = c.coef * ex2((a * c.rinv) * o.cscale - c.lse2) - (positive ? c.coef_b : 0.f);
                } else if constexpr (MODE == kBothTwoExp) {
                    v = o.coef * ex2((a * o.rinv) * c.cscale - o.lse2) + c.coef * ex2((a * c.rinv) * o.cscale - c.lse2) -
                        (positive ? o.coef_b + c.coef_b : 0.f);
                } else {
                    const float ek = ex2((a * o.rinv) * c.cscale - m2);
                    v = ek * (o.coef + c.coef) - (positive ? o.coef_b + c.coef_b : 0.f);
                }
                h[half][ni * 2 + e] = c.w != 0.f ? v * c.w : 0.f;
            }
        }
}

}  // namespace bwd
}  // namespace ck
