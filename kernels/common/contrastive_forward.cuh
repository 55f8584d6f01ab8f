// Pieces of the fused contrastive forward (kernels/contrastive.cu): base-2 logits, the one-MUFU
// exponential and the per-row base-2 log-sum-exp statistics with their fixed-order merge.
//
// Logit convention: logits.cuh (shared with the backward, which recomputes these logits).
// The saved per-row LSE stays in natural units: lse_i = (m2_i + log2(sum_i)) ln(2).
#pragma once
#include <math.h>
#include "logits.cuh"

namespace ck {

// A compile-time flag passed as a value (to a generic lambda).
template <bool B> struct BoolConstant {
    static constexpr bool value = B;
};
template <int V> struct IntConstant {
    static constexpr int value = V;
};

// A row's statistics over some columns, in base 2: sum = sum_j 2^(t_ij - m2) over the row's
// denominator columns (m2 = -inf and sum = 0 when none was seen), pos_sum = sum of t_ij over its
// positives (base-2 logits), pos_count = |P(i)| among those columns, as an f32 (a predicated FADD
// per logit; exact below 2^24 columns, which the host checks).
struct Lse2 {
    float m2, sum, pos_sum;
    float pos_count;
    // The sums start at -0: -0 + x is x for every x, so the compiler folds the first add of a
    // fully unrolled fold away (0 + x is not x for x = -0, IEEE 754); a row or column that saw
    // nothing keeps -0, which every reader treats as 0 (lse -inf, count 0).
    __device__ __forceinline__ void init(float offset) {
        m2 = offset;
        sum = -0.f;
        pos_sum = -0.f;
        pos_count = -0.f;
    }
    // Folds another partial of the same row (other columns). Equal offsets (the fixed-offset path,
    // or one side empty) add the sums with no exponential.
    __device__ __forceinline__ void merge(const Lse2& o) {
        const float m = fmaxf(m2, o.m2);
        if (m != -INFINITY) {
            const float fa = m2 == m ? 1.f : ex2_approx(m2 - m);
            const float fb = o.m2 == m ? 1.f : ex2_approx(o.m2 - m);
            sum = sum * fa + o.sum * fb;
            m2 = m;
        }
        pos_sum += o.pos_sum;
        pos_count += o.pos_count;
    }
    // The natural-unit LSE, -inf for a row that saw no column.
    __device__ __forceinline__ float lse() const { return sum > 0.f ? (m2 + log2f(sum)) * kLn2 : -INFINITY; }
    // The mean positive logit in natural units (pos_count > 0).
    __device__ __forceinline__ float positive_mean() const { return pos_sum / pos_count * kLn2; }
};

// A partial of one row over one split of the column sweep, as stored in the scratch buffer.
__device__ __forceinline__ float4 pack_lse2(const Lse2& s) {
    return make_float4(s.m2, s.sum, s.pos_sum, s.pos_count);
}
__device__ __forceinline__ Lse2 unpack_lse2(float4 v) { return Lse2{v.x, v.y, v.z, v.w}; }

// Per-column data of one column tile, staged in shared memory once per tile, by column pairs: a
// thread's accumulator columns come in adjacent pairs (Fragment::col), so a pair is three vector
// loads (16 + 16 + 8 bytes). Per column:
//   cscale: the column's logit scale (0 for columns outside the matrix);
//   bias:   added to the scaled logit: the fixed offset -m2 (or 0 on the online-max path) for a
//           denominator column, -inf for a column outside A(i) (past the end, NormPenaltyOnly),
//           so its exponential is exactly 0 with no branch;
//   key:    instance id (prototype tiles: the prototype's index), compared with the row's;
//   label:  class id, or -2 (never equal to a row's label key) where labels make no positives;
//   veto:   0 for a column that may be a positive, ~0 for one that may not (ORed into the key test).
struct ColumnPair {
    float cscale[2], bias[2];
    int key[2], label[2];
    int veto[2];
};
template <int PAIRS> struct ColumnStage {
    float4 scale_bias[PAIRS];  // cscale0, cscale1, bias0, bias1
    int4 ids[PAIRS];           // key0, key1, label0, label1
    int2 veto[PAIRS];
    __device__ __forceinline__ ColumnPair pair(int k) const {
        const float4 a = scale_bias[k];
        const int4 b = ids[k];
        const int2 v = veto[k];
        return ColumnPair{{a.x, a.y}, {a.z, a.w}, {b.x, b.y}, {b.z, b.w}, {v.x, v.y}};
    }
    __device__ __forceinline__ void set(int j, float cscale, float bias, int key, int label, int veto_word) {
        float* sb = reinterpret_cast<float*>(&scale_bias[j / 2]);
        int* id = reinterpret_cast<int*>(&ids[j / 2]);
        sb[j % 2] = cscale;
        sb[2 + j % 2] = bias;
        id[j % 2] = key;
        id[2 + j % 2] = label;
        reinterpret_cast<int*>(&veto[j / 2])[j % 2] = veto_word;
    }
};

// Per-row data of a block's rows, staged once per kind of column tile: the row factor rinv, the
// key its columns' keys are compared with (instance id; for prototype tiles its prototype, -1 for
// none) and its label key (the label, or a value no column label equals).
struct RowKeys {
    float rinv;
    int key, label, unused;
};

}  // namespace ck
