// Row statistics of the fused losses: an online log-sum-exp (running max, sum relative to it) and
// the sum and count of positive logits, folded tile by tile and merged across threads in a fixed
// order (deterministic).
#pragma once
#include <math.h>

namespace ck {

struct RowStats {
    float max, sum, pos_sum;
    int pos_count;
    __device__ __forceinline__ void init() {
        max = -INFINITY;
        sum = 0.f;
        pos_sum = 0.f;
        pos_count = 0;
    }
    // Folds a partial (max, sum) into this one: sum is relative to max.
    __device__ __forceinline__ void merge_lse(float other_max, float other_sum) {
        const float m = fmaxf(max, other_max);
        if (m == -INFINITY) return;  // both empty
        sum = sum * __expf(max - m) + other_sum * __expf(other_max - m);
        max = m;
    }
    // Folds all of another row's statistics (the same row seen over other columns).
    __device__ __forceinline__ void merge(const RowStats& o) {
        merge_lse(o.max, o.sum);
        pos_sum += o.pos_sum;
        pos_count += o.pos_count;
    }
    // max + log(sum), -inf for a row that saw no column.
    __device__ __forceinline__ float lse() const { return max > -INFINITY ? max + __logf(sum) : -INFINITY; }
};

}  // namespace ck
