// Fused contrastive loss, forward: per anchor row i,
//   L_i = scale * ( LSE_{j in A(i)} s_ij - (1/|P(i)|) sum_{p in P(i)} s_ip ),  s_ij = <u_i, u_j> / tau,
// over the row roles of DESIGN.md section 2, without ever writing the n x n logits.
//
// FlashAttention-style: a block owns BM = 128 anchor rows and sweeps every column tile (then the
// prototype columns) with the Tile128 tensor-core core. Each thread keeps, for each of its 8 rows,
// an online log-sum-exp (running max, running sum) and the sum / count of positive logits; those
// are merged across the quad (4 lanes share a row) and across the WARPS_N warps at the end, in a
// fixed order, so the result is deterministic. Normalization is fused as in similarity.cu: raw
// products, scaled by the inverse norms (from the l2_normalize prologue) in the epilogue.
//
// The host reduces the per-anchor losses (weights, mean / sum, OECL's norm penalty) with
// contrastive_reduce below, also in a fixed order.
#include "common/epilogue.cuh"
#include "common/reduce.cuh"
#include "common/tile.cuh"

namespace ck {

// Row roles, as ops::contrastive::RowRole.
constexpr unsigned char kRoleAnchor = 0;
constexpr unsigned char kRoleNormPenaltyOnly = 2;

// One side of the similarity: rows with their norms and ids. Optional arrays may be null.
template <typename T> struct RowSet {
    const T* x;
    const float* norms;
    const int* instance;        // null: no instance positives (prototype columns)
    const int* label;           // null: labels do not make positives
    const unsigned char* role;  // null: every row an anchor
    int count;
};

struct ForwardOut {
    float* per_anchor;  // L_i, 0 for non-anchors and anchors without positives
    float* lse;         // LSE over A(i); -inf for rows outside the matrix
    int* positives;     // |P(i)|
};

// Online statistics of one row, over the columns this thread has seen.
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
};

template <typename T, class Cfg, int ROW_SLOTS>
__device__ __forceinline__ void fold_tile(RowStats (&stats)[ROW_SLOTS], const float (&acc)[Cfg::MI][Cfg::NI][4],
                                          const RowSet<T>& rows, const RowSet<T>& cols, int row0, int col0,
                                          bool exclude_self, const int* proto_of, float inv_tau) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int warp_m = warp / Cfg::WARPS_N, warp_n = warp % Cfg::WARPS_N;
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int slot = mi * 2 + half;
            const int row = row0 + warp_m * Cfg::WM + mi * 16 + lane / 4 + half * 8;
            if (row >= rows.count) continue;
            const float row_factor = inv_tau / norm_denominator(rows.norms[row]);
            const int row_instance = rows.instance[row];
            const int row_label = rows.label != nullptr ? rows.label[row] : -1;
            const int row_proto = proto_of != nullptr ? proto_of[row] : -1;
            float s[Cfg::NI * 2];
            bool valid[Cfg::NI * 2];
            float tile_max = -INFINITY;
#pragma unroll
            for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int k = ni * 2 + e;
                    const int col = col0 + warp_n * Cfg::WN + ni * 8 + (lane % 4) * 2 + e;
                    valid[k] = col < cols.count && !(exclude_self && col == row) &&
                               !(cols.role != nullptr && cols.role[col] == kRoleNormPenaltyOnly);
                    s[k] = valid[k] ? acc[mi][ni][half * 2 + e] * row_factor / norm_denominator(cols.norms[col]) : -INFINITY;
                    tile_max = fmaxf(tile_max, s[k]);
                    if (valid[k]) {
                        const bool positive =
                            cols.instance != nullptr
                                ? (cols.instance[col] == row_instance ||
                                   (row_label >= 0 && cols.label != nullptr && cols.label[col] == row_label))
                                : col == row_proto;  // prototype columns: the row's own prototype
                        if (positive) {
                            stats[slot].pos_sum += s[k];
                            stats[slot].pos_count += 1;
                        }
                    }
                }
            if (tile_max == -INFINITY) continue;
            float tile_sum = 0.f;
#pragma unroll
            for (int k = 0; k < Cfg::NI * 2; ++k) tile_sum += valid[k] ? __expf(s[k] - tile_max) : 0.f;
            stats[slot].merge_lse(tile_max, tile_sum);
        }
}

template <typename T, bool ALIGNED>
__device__ void contrastive_forward(RowSet<T> rows, RowSet<T> cols, RowSet<T> protos, const int* proto_of,
                                    int d, int exclude_self, float inv_tau, float scale, ForwardOut out) {
    using Cfg = Tile128;
    constexpr int ROW_SLOTS = Cfg::MI * 2;
    __shared__ __align__(128) T smem[Cfg::SMEM_BYTES / sizeof(T)];
    const int row0 = blockIdx.x * Cfg::BM;
    RowStats stats[ROW_SLOTS];
#pragma unroll
    for (int i = 0; i < ROW_SLOTS; ++i) stats[i].init();

    float acc[Cfg::MI][Cfg::NI][4];
    for (int col0 = 0; col0 < cols.count; col0 += Cfg::BN) {
        mma_block_tile<Cfg, ALIGNED>(acc, smem, rows.x, cols.x, rows.count, cols.count, d, row0, col0);
        fold_tile<T, Cfg>(stats, acc, rows, cols, row0, col0, exclude_self != 0, nullptr, inv_tau);
    }
    for (int col0 = 0; col0 < protos.count; col0 += Cfg::BN) {
        mma_block_tile<Cfg, ALIGNED>(acc, smem, rows.x, protos.x, rows.count, protos.count, d, row0, col0);
        fold_tile<T, Cfg>(stats, acc, rows, protos, row0, col0, false, proto_of, inv_tau);
    }

    // Merge the 4 lanes of a quad (they hold the same rows, other columns).
#pragma unroll
    for (int i = 0; i < ROW_SLOTS; ++i)
#pragma unroll
        for (int offset = 1; offset < 4; offset <<= 1) {
            const float other_max = __shfl_xor_sync(0xffffffffu, stats[i].max, offset);
            const float other_sum = __shfl_xor_sync(0xffffffffu, stats[i].sum, offset);
            stats[i].pos_sum += __shfl_xor_sync(0xffffffffu, stats[i].pos_sum, offset);
            stats[i].pos_count += __shfl_xor_sync(0xffffffffu, stats[i].pos_count, offset);
            stats[i].merge_lse(other_max, other_sum);
        }

    // Then the WARPS_N warps that share a row block, through shared memory (the tile buffers are
    // free: mma_block_tile ends with a barrier).
    struct Partial {
        float max, sum, pos_sum;
        int pos_count;
    };
    static_assert(sizeof(Partial) * Cfg::WARPS_N * Cfg::BM <= Cfg::SMEM_BYTES, "partials fit the tile buffers");
    Partial* partial = reinterpret_cast<Partial*>(smem);  // [WARPS_N][BM]
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int warp_m = warp / Cfg::WARPS_N, warp_n = warp % Cfg::WARPS_N;
    if (lane % 4 == 0) {
#pragma unroll
        for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const RowStats& st = stats[mi * 2 + half];
                const int r = warp_m * Cfg::WM + mi * 16 + lane / 4 + half * 8;
                partial[warp_n * Cfg::BM + r] = {st.max, st.sum, st.pos_sum, st.pos_count};
            }
    }
    __syncthreads();
    for (int r = threadIdx.x; r < Cfg::BM; r += Cfg::THREADS) {
        const int row = row0 + r;
        if (row >= rows.count) continue;
        RowStats total;
        total.init();
        for (int w = 0; w < Cfg::WARPS_N; ++w) {
            const Partial p = partial[w * Cfg::BM + r];
            total.merge_lse(p.max, p.sum);
            total.pos_sum += p.pos_sum;
            total.pos_count += p.pos_count;
        }
        const unsigned char role = rows.role != nullptr ? rows.role[row] : kRoleAnchor;
        const bool in_matrix = role != kRoleNormPenaltyOnly;
        const float lse = in_matrix && total.max > -INFINITY ? total.max + __logf(total.sum) : -INFINITY;
        out.lse[row] = lse;
        out.positives[row] = in_matrix ? total.pos_count : 0;
        out.per_anchor[row] =
            role == kRoleAnchor && total.pos_count > 0 ? scale * (lse - total.pos_sum / total.pos_count) : 0.f;
    }
}

// Deterministic reduction of the per-anchor losses, one block:
//   out[0] = sum_i w_i L_i / divisor + penalty / n_o * sum_{role == NormPenaltyOnly} ||x_o||
//   first_empty[0] = the smallest anchor row with no positive, or -1.
constexpr int kReduceThreads = 1024;

__device__ void contrastive_reduce(const float* per_anchor, const float* weight, const unsigned char* role,
                                   const int* positives, const float* norms, int n, float divisor, float penalty,
                                   float* out, int* first_empty) {
    __shared__ float s_loss[kReduceThreads / 32], s_norm[kReduceThreads / 32];
    __shared__ int s_penalized[kReduceThreads / 32], s_empty[kReduceThreads / 32];
    float loss = 0.f, norm_sum = 0.f;
    int penalized = 0, empty = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += kReduceThreads) {
        const unsigned char r = role != nullptr ? role[i] : kRoleAnchor;
        if (r == kRoleAnchor) {
            loss += (weight != nullptr ? weight[i] : 1.f) * per_anchor[i];
            if (positives[i] == 0) empty = min(empty, i);
        } else if (r == kRoleNormPenaltyOnly) {
            norm_sum += norms[i];
            penalized += 1;
        }
    }
    loss = warp_sum(loss);
    norm_sum = warp_sum(norm_sum);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        penalized += __shfl_xor_sync(0xffffffffu, penalized, offset);
        empty = min(empty, __shfl_xor_sync(0xffffffffu, empty, offset));
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        s_loss[warp] = loss;
        s_norm[warp] = norm_sum;
        s_penalized[warp] = penalized;
        s_empty[warp] = empty;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.f, norms_total = 0.f;
        int count = 0, first = 0x7fffffff;
        for (int w = 0; w < kReduceThreads / 32; ++w) {
            total += s_loss[w];
            norms_total += s_norm[w];
            count += s_penalized[w];
            first = min(first, s_empty[w]);
        }
        out[0] = total / divisor + (count > 0 ? penalty * norms_total / count : 0.f);
        first_empty[0] = first == 0x7fffffff ? -1 : first;
    }
}

}  // namespace ck

#define CK_CONTRASTIVE_FORWARD(name, type, suffix, aligned)                                                     \
    extern "C" __global__ void __launch_bounds__(ck::Tile128::THREADS) contrastive_forward_##name##suffix(      \
        const type* x, const float* norms, const int* instance, const int* label, const unsigned char* role,   \
        int n, const type* keys, const float* key_norms, const int* key_instance, const int* key_label,        \
        const unsigned char* key_role, int n_keys, const type* centers, const float* center_norms, int n_centers, \
        const int* proto_of, int d, int exclude_self, float inv_tau, float scale, float* per_anchor, float* lse, \
        int* positives) {                                                                                      \
        ck::RowSet<type> rows{x, norms, instance, label, role, n};                                             \
        ck::RowSet<type> cols{keys, key_norms, key_instance, key_label, key_role, n_keys};                     \
        ck::RowSet<type> protos{centers, center_norms, nullptr, nullptr, nullptr, n_centers};                  \
        ck::contrastive_forward<type, aligned>(rows, cols, protos, proto_of, d, exclude_self, inv_tau, scale,  \
                                               {per_anchor, lse, positives});                                  \
    }

#define CK_CONTRASTIVE_FORWARD_BOTH(name, type)           \
    CK_CONTRASTIVE_FORWARD(name, type, , true)            \
    CK_CONTRASTIVE_FORWARD(name, type, _unaligned, false)

CK_CONTRASTIVE_FORWARD_BOTH(f16, __half)
CK_CONTRASTIVE_FORWARD_BOTH(bf16, __nv_bfloat16)

extern "C" __global__ void __launch_bounds__(ck::kReduceThreads)
    contrastive_reduce(const float* per_anchor, const float* weight, const unsigned char* role, const int* positives,
                       const float* norms, int n, float divisor, float penalty, float* out, int* first_empty) {
    ck::contrastive_reduce(per_anchor, weight, role, positives, norms, n, divisor, penalty, out, first_empty);
}
