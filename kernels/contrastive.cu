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
#include "common/contrastive_backward.cuh"
#include "common/epilogue.cuh"
#include "common/reduce.cuh"
#include "common/row_stats.cuh"
#include "common/tile.cuh"
#include "params/contrastive.h"

namespace ck {

// Row roles, as ops::contrastive::RowRole (params/contrastive.h).
constexpr unsigned char kRoleAnchor = CK_CONTRASTIVE_ROLE_ANCHOR;
constexpr unsigned char kRoleNormPenaltyOnly = CK_CONTRASTIVE_ROLE_NORM_PENALTY_ONLY;

// One side of the similarity: rows (x: count x d of T) with their norms and ids, optional arrays
// null (params/contrastive.h). Read in place from the kernel's parameters (by reference).
template <typename T> using RowSet = CkRowSet;
template <typename T> __device__ __forceinline__ const T* rows_of(const RowSet<T>& r) { return static_cast<const T*>(r.x); }

struct ForwardOut {
    float* per_anchor;  // L_i, 0 for non-anchors and anchors without positives
    float* lse;         // LSE over A(i); -inf for rows outside the matrix
    int* positives;     // |P(i)|
};

template <typename T, class Cfg, int ROW_SLOTS>
__device__ __forceinline__ void fold_tile(RowStats (&stats)[ROW_SLOTS], const float (&acc)[Cfg::MI][Cfg::NI][4],
                                          const RowSet<T>& rows, const RowSet<T>& cols, int row0, int col0,
                                          bool exclude_self, const int* proto_of, float inv_tau) {
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int slot = mi * 2 + half;
            const int row = row0 + Cfg::acc_row(mi, 2 * half);
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
                    const int col = col0 + Cfg::acc_col(ni, e);
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
__device__ void contrastive_forward(const RowSet<T>& rows, const RowSet<T>& cols, const RowSet<T>& protos, const int* proto_of,
                                    int d, int exclude_self, float inv_tau, float scale, ForwardOut out) {
    using Cfg = typename TileFor<T, Tile128, Tile128F32>::type;
    constexpr int ROW_SLOTS = Cfg::MI * 2;
    __shared__ __align__(128) T smem[Cfg::SMEM_ELEMS];
    const int row0 = blockIdx.x * Cfg::BM;
    RowStats stats[ROW_SLOTS];
#pragma unroll
    for (int i = 0; i < ROW_SLOTS; ++i) stats[i].init();

    float acc[Cfg::MI][Cfg::NI][4];
    for (int col0 = 0; col0 < cols.count; col0 += Cfg::BN) {
        mma_block_tile<Cfg, ALIGNED>(acc, smem, rows_of<T>(rows), rows_of<T>(cols), rows.count, cols.count, d, row0, col0);
        fold_tile<T, Cfg>(stats, acc, rows, cols, row0, col0, exclude_self != 0, nullptr, inv_tau);
    }
    for (int col0 = 0; col0 < protos.count; col0 += Cfg::BN) {
        mma_block_tile<Cfg, ALIGNED>(acc, smem, rows_of<T>(rows), rows_of<T>(protos), rows.count, protos.count, d, row0, col0);
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
    static_assert(sizeof(RowStats) * Cfg::WARPS_N * Cfg::BM <= Cfg::SMEM_BYTES, "partials fit the tile buffers");
    RowStats* partial = reinterpret_cast<RowStats*>(smem);  // [WARPS_N][BM]
    if (Fragment::col(0) == 0) {  // one lane of each quad
#pragma unroll
        for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
            for (int half = 0; half < 2; ++half) partial[Cfg::warp_n() * Cfg::BM + Cfg::acc_row(mi, 2 * half)] = stats[mi * 2 + half];
    }
    __syncthreads();
    for (int r = threadIdx.x; r < Cfg::BM; r += Cfg::THREADS) {
        const int row = row0 + r;
        if (row >= rows.count) continue;
        RowStats total;
        total.init();
        for (int w = 0; w < Cfg::WARPS_N; ++w) total.merge(partial[w * Cfg::BM + r]);
        const unsigned char role = rows.role != nullptr ? rows.role[row] : kRoleAnchor;
        const bool in_matrix = role != kRoleNormPenaltyOnly;
        const float lse = in_matrix ? total.lse() : -INFINITY;
        out.lse[row] = lse;
        out.positives[row] = in_matrix ? total.pos_count : 0;
        out.per_anchor[row] =
            role == kRoleAnchor && total.pos_count > 0 ? scale * (lse - total.pos_sum / total.pos_count) : 0.f;
    }
}

// Deterministic reduction of the per-anchor losses, one block:
//   out[0] = sum_i w_i L_i / divisor + penalty / n_o * sum_{role == NormPenaltyOnly} ||x_o||,
//   divisor = the number of anchor rows (at least 1) when mean, else 1;
//   first_empty[0] = the smallest anchor row with no positive, or -1.
constexpr int kReduceThreads = CK_CONTRASTIVE_SINGLE_BLOCK_THREADS;

__device__ void contrastive_reduce(const float* per_anchor, const float* weight, const unsigned char* role,
                                   const int* positives, const float* norms, int n, int mean, float penalty,
                                   float* out, int* first_empty) {
    __shared__ float f_scratch[kReduceThreads / 32];
    __shared__ int i_scratch[kReduceThreads / 32];
    float loss = 0.f, norm_sum = 0.f;
    int penalized = 0, empty = 0x7fffffff, anchors = 0;
    for (int i = threadIdx.x; i < n; i += kReduceThreads) {
        const unsigned char r = role != nullptr ? role[i] : kRoleAnchor;
        if (r == kRoleAnchor) {
            anchors += 1;
            loss += (weight != nullptr ? weight[i] : 1.f) * per_anchor[i];
            if (positives[i] == 0) empty = min(empty, i);
        } else if (r == kRoleNormPenaltyOnly) {
            norm_sum += norms[i];
            penalized += 1;
        }
    }
    const float total = block_reduce<kReduceThreads>(loss, Sum(), f_scratch);
    const float norms_total = block_reduce<kReduceThreads>(norm_sum, Sum(), f_scratch);
    const int count = block_reduce<kReduceThreads>(penalized, Sum(), i_scratch);
    const int anchor_count = block_reduce<kReduceThreads>(anchors, Sum(), i_scratch);
    const int first = block_reduce<kReduceThreads>(empty, Min(), i_scratch);
    if (threadIdx.x == 0) {
        const float divisor = mean ? (float)max(anchor_count, 1) : 1.f;
        out[0] = total / divisor + (count > 0 ? penalty * norms_total / count : 0.f);
        first_empty[0] = first == 0x7fffffff ? -1 : first;
    }
}

// ---------------------------------------------------------------------------------------------
// Backward (DESIGN.md section 4). With G_ij = c_i scale (softmax_{A(i)}(s_i)_j - [j in P(i)] / |P(i)|),
// the gradient of a row k with respect to its unit vector is (1 / tau) sum_j H_kj u_j, where
// H_kj = G_kj (k as an anchor) + G_jk (k as a column of anchor j): (G + G^T) U in the self geometry.
// Every output row gets its whole gradient from the one pass in which it is the "own" side:
//   self geometry: own = the rows, other = the rows (both anchor sides), then the prototypes;
//   pairwise:      own = anchors, other = keys, then the prototypes; and own = keys, other = anchors;
//   prototypes:    own = the prototypes, other = the anchor rows.
// A block owns 64 own rows and G x WARP_D columns of d (BackwardTraits below: d up to 512 in one
// chunk for aligned f16 / bf16, 256 for f32 and `_unaligned`; grid.y covers a larger d). It sweeps
// the other side in tiles of 64 rows; per tile:
//  1. the logit tile, once for the whole chunk of d, with the tensor cores (f32: exact FFMA) from
//     the raw rows as the forward computes it (same products, same f32 inverse norms: the saved LSE
//     normalizes precisely these logits, which a separately rounded unit-row copy would not);
//  2. the epilogue (kernels/common/contrastive_backward.cuh): per-column data staged in shared
//     memory once per tile, per-row data once per sweep, base-2 logits and ex2, one exponential
//     per logit where the fixed offset 1/tau applies (tau >= ~0.029), two below; H written to
//     shared memory in the input dtype (f32 for f32);
//  3. every warp multiplies its 16 rows of H into its d-group's columns of the other side's
//     packed rows (tensor cores; f32: FFMA), accumulating in registers.
// The second product's operand is not the raw rows nor unit rows rounded to the input dtype: in
// the gradient of a row the radial part is large and the normalization backward removes it, so a
// per-element rounding of u_j leaks into the small tangential result (about 2 % of max |grad| for
// bf16 SupCon at tau = 0.07 on two close views, found with the CPU emulator). The packed copy
// (contrastive_pack_*) holds x_j scaled by a power of two (exact, norm in [1, 2)), and H_kj
// carries w_j = 2^e_j / max(|x_j|, eps) that makes it u_j, so its rounding error stays along u_j.
// The raw rows x_j would be as exact with 1 / max(|x_j|, eps) in H, but that scalar ranges with
// the norms, and H in f16 (at most 2^14 after sigma) would then overflow or sink into f16's
// subnormals for rows far from unit norm; the packed rows keep H's range fixed. So the other
// side's rows are read twice per tile (raw for S in BK stages, packed for H U): an O(n d) extra
// pass, against the n^2 d products. No n x n matrix, no atomics, fixed orders: deterministic.
// Two GEMM-equivalents per pass when the chunk covers d (before: one logit tile per 128 columns
// of d, five GEMM-equivalents at d = 512).
//
// The self geometry's symmetry (only tiles on and above the diagonal, each serving its rows and
// its columns) is not used: the column side's contributions G^T U would land in other blocks'
// rows, which needs float atomics (not deterministic), per-tile partial gradients merged in a
// fixed order (n / 64 partials of n x d f32: far over the 64 MiB bound at n = 65536), or blocks
// adding in turn behind a per-row-block ticket (spin-waits on other blocks: correct only if the
// hardware schedules blocks in index order, which CUDA does not promise).
//
// H is scaled by sigma (a power of two, contrastive_backward_prepare) so that |H| <= 2^14: f16's
// range holds it and its small entries stay above f16's subnormals; the epilogue divides it out.

// One side of a backward pass (params/contrastive.h). Optional arrays may be null.
using GradSide = CkGradSide;

// The backward's block (params/contrastive.h): BM = 64 own rows x BN = 64 other rows per logit
// tile, 4 row warps x G d-groups. The logit tile is MmaTileConfig<64, 64, BK, 4, G>: warp (m, g)
// computes rows 16 m.. x columns (64 / G) g.. of it, forms those H entries and writes them to
// shared memory; then warp (m, g) multiplies H's rows 16 m.. (all 64 columns) into WARP_D columns
// of the other side's packed rows, d-group g's share of the block's G WARP_D.
template <typename T, int G> struct BackwardTraits {
    static constexpr int E = (int)sizeof(T);
    // BK: every thread copies whole 16-byte chunks of a stage (64 x BK / 8 of them per operand).
    static constexpr int BK = E == 4 ? 16 : (G == 4 ? 64 : 32);
    using Cfg = MmaTileConfig<CK_CONTRASTIVE_BACKWARD_ROWS, 64, BK, 4, G, E>;
    static constexpr int WARP_D = E == 2 ? CK_CONTRASTIVE_BACKWARD_WARP_D_HALF : CK_CONTRASTIVE_BACKWARD_WARP_D_F32;
    static constexpr int CHUNK = WARP_D * G;                  // d columns of the gradient per block
    static constexpr int CHUNK_STRIDE = CHUNK + 16 / E;       // padded like the stages (conflict-free ldmatrix)
    static constexpr int H_STRIDE = Cfg::BN + 16 / E;
    static_assert(Cfg::MI == 1 && Cfg::THREADS == CK_CONTRASTIVE_BACKWARD_THREADS * G, "a warp owns 16 rows of the tile");
    static_assert(Cfg::BM == Cfg::BN, "a sweep's diagonal lies in the tile with col0 == row0");
};

template <typename T, int G> struct BackwardShared {
    using Tr = BackwardTraits<T, G>;
    T stages[Tr::Cfg::SMEM_ELEMS];
    T other[Tr::Cfg::BN * Tr::CHUNK_STRIDE];  // the other side's packed rows, one d chunk
    T h[Tr::Cfg::BM * Tr::H_STRIDE];          // H of the tile (f32 for the FFMA engine)
    bwd::Column cols[Tr::Cfg::BN];            // the tile's per-column data
    bwd::Row rows[Tr::Cfg::BM];               // the sweep's per-row data
};
static_assert(sizeof(BackwardShared<__half, 1>) == CK_CONTRASTIVE_BACKWARD_SMEM_HALF_G1 &&
                  sizeof(BackwardShared<__half, 2>) == CK_CONTRASTIVE_BACKWARD_SMEM_HALF_G2 &&
                  sizeof(BackwardShared<__half, 4>) == CK_CONTRASTIVE_BACKWARD_SMEM_HALF_G4 &&
                  sizeof(BackwardShared<float, 1>) == CK_CONTRASTIVE_BACKWARD_SMEM_F32_G1 &&
                  sizeof(BackwardShared<float, 2>) == CK_CONTRASTIVE_BACKWARD_SMEM_F32_G2,
              "params/contrastive.h: the backward's shared memory");

// One tile's H in the sweep's mode (a uniform branch per tile).
template <class Cfg>
__device__ __forceinline__ void tile_h_of_mode(int mode, float (&h)[2][Cfg::NI * 2], const float (&acc)[1][Cfg::NI][4],
                                               const bwd::Column* cols, const bwd::Row (&r)[2], float m2) {
    if (mode == bwd::kOneExp) bwd::tile_h<Cfg, bwd::kOneExp>(h, acc, cols, r, m2);
    else bwd::tile_h<Cfg, bwd::kTwoExp>(h, acc, cols, r, m2);
}

// Sweeps the column tiles [col_begin, col_end) of `other` (col_begin a multiple of BN).
template <typename T, bool ALIGNED, int G>
__device__ __forceinline__ void sweep_other(float (&dacc)[BackwardTraits<T, G>::WARP_D / 8][4], BackwardShared<T, G>& sh,
                                            const GradSide& own, const GradSide& other, int col_begin, int col_end,
                                            int row0, int dc0, int dp, int d, bool exclude_self, float inv_tau) {
    using Tr = BackwardTraits<T, G>;
    using Cfg = typename Tr::Cfg;
    const float m2 = inv_tau * bwd::kLog2e;
    const int mode = bwd::sweep_mode(m2);
    // Published by the first tile's barriers; the previous sweep's last barrier freed sh.rows.
    for (int r = threadIdx.x; r < Cfg::BM; r += Cfg::THREADS) sh.rows[r] = bwd::load_row(own, other, row0 + r, mode, inv_tau, m2);
    const int diagonal_col0 = exclude_self ? row0 : -1;  // the tile holding the diagonal, if any
    const T* own_x = static_cast<const T*>(own.x);
    const T* other_x = static_cast<const T*>(other.x);
    const T* other_u = static_cast<const T*>(other.u);
    const T* h_rows = sh.h + Cfg::warp_m() * 16 * Tr::H_STRIDE;  // this warp's 16 rows of H
    const T* v_cols = sh.other + Cfg::warp_n() * Tr::WARP_D;      // its d-group's columns
    float acc[1][Cfg::NI][4];
    for (int col0 = col_begin; col0 < col_end; col0 += Cfg::BN) {
        // The B operand of H U is issued first: it lands while the logits are recomputed
        // (mma_block_tile's waits drain this group too, and it ends with a barrier).
        if constexpr (sizeof(T) == 2) {
            bwd::load_rows_async<Cfg::BN, Tr::CHUNK, Tr::CHUNK_STRIDE, Cfg::THREADS>(sh.other, other_u, other.count, dp, col0, dc0);
            cp_async_commit();
        } else {
            load_tile_sync<Cfg::BN, Tr::CHUNK, Tr::CHUNK_STRIDE, Cfg::THREADS>(sh.other, other_u, other.count, dp, col0, dc0);
        }
        bwd::stage_columns<Cfg::BN, Cfg::THREADS>(sh.cols, own, other, col0, mode, inv_tau, m2);
        // S once per tile for the whole d (one chunk when G WARP_D >= d).
        mma_block_tile<Cfg, ALIGNED>(acc, sh.stages, own_x, other_x, own.count, other.count, d, row0, col0);
        if (d == 0) {
            cp_async_wait<0>();
            __syncthreads();  // otherwise mma_block_tile's barriers publish the staged columns and sh.other
        }

        float h[2][Cfg::NI * 2];
        const bwd::Row mine[2] = {sh.rows[Cfg::acc_row(0, 0)], sh.rows[Cfg::acc_row(0, 2)]};
        tile_h_of_mode<Cfg>(mode, h, acc, sh.cols, mine, m2);
#pragma unroll
        for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
            for (int half = 0; half < 2; ++half)
                bwd::store_h_pair<T>(sh.h + Cfg::acc_row(0, 2 * half) * Tr::H_STRIDE + Cfg::acc_col(ni, 0), h[half][ni * 2],
                                     h[half][ni * 2 + 1]);
        __syncthreads();  // H complete
        if (col0 == diagonal_col0) {  // one tile per sweep (BM = BN): the diagonal is no logit
            if (threadIdx.x < Cfg::BM) sh.h[threadIdx.x * Tr::H_STRIDE + threadIdx.x] = from_float<T>(0.f);
            __syncthreads();
        }

        // dacc += H U_other over the warp's rows and its d-group's columns.
        bwd::h_times_tile<Cfg::BN, Tr::WARP_D, Tr::H_STRIDE, Tr::CHUNK_STRIDE>(dacc, h_rows, v_cols);
        __syncthreads();  // sh.other, sh.h and sh.cols are refilled by the next tile
    }
}

template <typename T, bool ALIGNED, int G>
__device__ __forceinline__ void contrastive_backward(const GradSide& own, const GradSide& other, const GradSide& protos, int dp,
                                                     int d, int exclude_self, float inv_tau, const float* scalars, float* du,
                                                     int splits) {
    using Tr = BackwardTraits<T, G>;
    using Cfg = typename Tr::Cfg;
    extern __shared__ __align__(128) unsigned char backward_smem[];
    BackwardShared<T, G>& sh = *reinterpret_cast<BackwardShared<T, G>*>(backward_smem);
    const int row0 = blockIdx.x * Cfg::BM, dc0 = blockIdx.y * Tr::CHUNK;
    float dacc[Tr::WARP_D / 8][4];
#pragma unroll
    for (int nb = 0; nb < Tr::WARP_D / 8; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) dacc[nb][e] = 0.f;

    // This split's slice of the other side's column tiles; the prototypes go with split 0. G = 4
    // is never split (the host launches it with splits = 1): the bounds' registers spilled there.
    int split = 0, col_begin = 0, col_end = other.count;
    if constexpr (G != 4) {
        split = blockIdx.z;
        const int tiles = (other.count + Cfg::BN - 1) / Cfg::BN, per_split = (tiles + splits - 1) / splits;
        col_begin = split * per_split * Cfg::BN;
        col_end = min(other.count, (split + 1) * per_split * Cfg::BN);
    }
    // One copy of the sweep for both sides (half the code, and one register allocation).
#pragma unroll 1
    for (int pass = 0; pass < 2; ++pass)
        sweep_other<T, ALIGNED, G>(dacc, sh, own, pass == 0 ? other : protos, pass == 0 ? col_begin : 0,
                                   pass == 0 ? col_end : (split == 0 ? protos.count : 0), row0, dc0, dp, d,
                                   pass == 0 && exclude_self != 0, inv_tau);
    du += (size_t)split * own.count * d;

    const float out_scale = inv_tau * scalars[0];  // 1 / (sigma tau)
    const int wd0 = dc0 + Cfg::warp_n() * Tr::WARP_D;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int row = row0 + Cfg::acc_row(0, 2 * half);
        // Rows outside the matrix (NormPenaltyOnly) get 0: their column terms were not masked.
        const bool live = row < own.count && !(own.role != nullptr && own.role[row] == kRoleNormPenaltyOnly);
#pragma unroll
        for (int nb = 0; nb < Tr::WARP_D / 8; ++nb) {
            const int col = wd0 + nb * 8 + Fragment::col(0);
            store_pair<float>(du, own.count, d, row, col, live ? dacc[nb][half * 2] * out_scale : 0.f,
                              live ? dacc[nb][half * 2 + 1] * out_scale : 0.f, d % 2 == 0);
        }
    }
}

// u = x / 2^e with 2^e = pow2_floor(max(||x||, eps)): exact in T (an exponent shift; only parts
// below T's subnormals of a row whose norm is far above 1 are lost), into rows of dp >= d elements
// (zero padded to a multiple of 8, so the backward's loads are whole aligned 16-byte chunks). One
// warp per row.
constexpr int kPackThreads = CK_CONTRASTIVE_ROW_THREADS;
static_assert(CK_CONTRASTIVE_ROWS_PER_ROW_BLOCK * 32 == kPackThreads, "one warp per row");

template <typename T> __device__ void pack_scaled_rows(const T* __restrict__ x, int n, int d, int dp, T* __restrict__ u) {
    const int lane = threadIdx.x % 32;
    const long row = (long)blockIdx.x * (kPackThreads / 32) + threadIdx.x / 32;
    if (row >= n) return;
    const T* xr = x + row * d;
    const float inv_scale = inv_pow2_floor(norm_denominator(warp_row_norm(xr, d)));
    T* ur = u + row * dp;
    for (int j = lane; j < dp; j += 32) ur[j] = from_float<T>(j < d ? to_float(xr[j]) * inv_scale : 0.f);
}

// Per-row coefficients of the backward, one block:
//   c_i = upstream_i w_i / divisor for anchors with a positive (upstream_i = upstream[0] unless
//   per_row; divisor = the number of anchor rows when mean, else 1), 0 otherwise;
//   coef_a = sigma c_i scale, coef_b = coef_a / |P(i)|;
//   scalars[0] = 1 / sigma, scalars[1] = the number of NormPenaltyOnly rows.
constexpr int kPrepareThreads = CK_CONTRASTIVE_SINGLE_BLOCK_THREADS;

// upstream_i w_i scale for anchors with a positive, else 0 (before the division by the count).
__device__ __forceinline__ float anchor_weight(int i, const unsigned char* role, const float* weight,
                                               const int* positives, const float* upstream, int per_row, float scale) {
    const unsigned char r = role != nullptr ? role[i] : kRoleAnchor;
    if (r != kRoleAnchor || positives[i] == 0) return 0.f;
    return (per_row ? upstream[i] : upstream[0]) * (weight != nullptr ? weight[i] : 1.f) * scale;
}

__device__ void contrastive_backward_prepare(const unsigned char* role, const float* weight, const int* positives,
                                             const float* upstream, int per_row, int mean, float scale, int n,
                                             float* coef_a, float* coef_b, float* scalars) {
    __shared__ float f_scratch[kPrepareThreads / 32];
    __shared__ int i_scratch[kPrepareThreads / 32];
    __shared__ float s_factor;
    float local_max = 0.f;
    int penalized = 0, anchors = 0;
    // Not unrolled: at 1024 threads a thread has 64 registers, and unrolled bodies spill.
#pragma unroll 1
    for (int i = threadIdx.x; i < n; i += kPrepareThreads) {
        local_max = fmaxf(local_max, fabsf(anchor_weight(i, role, weight, positives, upstream, per_row, scale)));
        const unsigned char r = role != nullptr ? role[i] : kRoleAnchor;
        penalized += r == kRoleNormPenaltyOnly;
        anchors += r == kRoleAnchor;
    }
    float m = block_reduce<kPrepareThreads>(local_max, Max(), f_scratch);
    const int count = block_reduce<kPrepareThreads>(penalized, Sum(), i_scratch);
    const int anchor_count = block_reduce<kPrepareThreads>(anchors, Sum(), i_scratch);
    if (threadIdx.x == 0) {
        // Mean divides by every anchor row (empty-positive ones included), at least 1. The approximate
        // division (2 ulp) keeps the IEEE division's slow path, a call with a stack frame (and
        // spills at 1024 threads), out of the kernel.
        const float inv_divisor = mean ? __fdividef(1.f, (float)max(anchor_count, 1)) : 1.f;
        m *= inv_divisor;
        // max |c scale| lands in [2^12, 2^13): |H| <= 2 max <= 2^14.
        // (Exponent arithmetic on the bits: scalbnf / ilogbf are calls with a stack frame.)
        int sigma_exponent = 0;
        if (m > 0.f && m < INFINITY) {
            const int exponent = ((__float_as_int(m) >> 23) & 0xff) - 127;  // floor(log2 m); -127: subnormal
            sigma_exponent = min(max(12 - exponent, -126), 126);
        }
        s_factor = __int_as_float((sigma_exponent + 127) << 23) * inv_divisor;
        scalars[0] = __int_as_float((127 - sigma_exponent) << 23);  // 1 / sigma, exactly
        scalars[1] = (float)count;
    }
    __syncthreads();
    const float factor = s_factor;
#pragma unroll 1
    for (int i = threadIdx.x; i < n; i += kPrepareThreads) {
        const float a = factor * anchor_weight(i, role, weight, positives, upstream, per_row, scale);
        coef_a[i] = a;
        coef_b[i] = a != 0.f ? __fdividef(a, (float)positives[i]) : 0.f;
    }
}

// OECL's penalty: dx_o = upstream alpha / n_o * x_o / max(||x_o||, eps) on NormPenaltyOnly rows
// (whose gradient from the matrix is 0), written over the normalization backward's zeros.
template <typename T>
__device__ void norm_penalty_backward(const T* __restrict__ x, const unsigned char* __restrict__ role, int n, int d,
                                      const float* upstream, int per_row, float alpha, const float* scalars,
                                      T* __restrict__ dx) {
    const int lane = threadIdx.x % 32;
    const long row = (long)blockIdx.x * (kPackThreads / 32) + threadIdx.x / 32;
    if (row >= n || role[row] != kRoleNormPenaltyOnly) return;
    const T* xr = x + row * d;
    const float denom = norm_denominator(warp_row_norm(xr, d));
    const float factor = (per_row ? 1.f : upstream[0]) * alpha / scalars[1];
    for (int j = lane; j < d; j += 32) dx[row * d + j] = from_float<T>(factor * to_float(xr[j]) / denom);
}

}  // namespace ck

// The header's constants are the tiles' (the Rust grids come from the header).
static_assert(ck::Tile128::BM == CK_CONTRASTIVE_FORWARD_ROWS && ck::Tile128F32::BM == CK_CONTRASTIVE_FORWARD_ROWS, "params/contrastive.h");
static_assert(ck::Tile128::THREADS == CK_CONTRASTIVE_FORWARD_THREADS && ck::Tile128F32::THREADS == CK_CONTRASTIVE_FORWARD_THREADS,
              "params/contrastive.h");
static_assert(sizeof(CkGradSide) == 88, "10 pointers, 2 ints");

namespace ck {

template <typename T, bool ALIGNED> __device__ __forceinline__ void contrastive_forward(const CkContrastiveForwardParams& p) {
    contrastive_forward<T, ALIGNED>(p.rows, p.cols, p.protos, p.proto_of, p.d,
                                    p.exclude_self, p.inv_tau, p.scale, {p.per_anchor, p.lse, p.positives});
}

}  // namespace ck

#define CK_CONTRASTIVE_FORWARD(name, type, suffix, aligned)                                                     \
    extern "C" __global__ void __launch_bounds__(CK_CONTRASTIVE_FORWARD_THREADS)                                \
        contrastive_forward_##name##suffix(const __grid_constant__ CkContrastiveForwardParams p) {             \
        ck::contrastive_forward<type, aligned>(p);                                                             \
    }

#define CK_CONTRASTIVE_FORWARD_BOTH(name, type)           \
    CK_CONTRASTIVE_FORWARD(name, type, , true)            \
    CK_CONTRASTIVE_FORWARD(name, type, _unaligned, false)

CK_CONTRASTIVE_FORWARD_BOTH(f16, __half)
CK_CONTRASTIVE_FORWARD_BOTH(bf16, __nv_bfloat16)
// f32 always loads element-wise, so both names are the same kernel.
CK_CONTRASTIVE_FORWARD(f32, float, , false)
CK_CONTRASTIVE_FORWARD(f32, float, _unaligned, false)

// `_unaligned`: d % 8 != 0 or a raw-row base not 16-byte aligned (element-wise loads of the raw
// rows, as the forward's `_unaligned`); f32 always loads element-wise, so both are one kernel.
// `_g{G}`: G d-groups of 4 warps (BackwardTraits), 128 G threads, dynamic shared memory
// CK_CONTRASTIVE_BACKWARD_SMEM_*_G{G}.
#define CK_CONTRASTIVE_BACKWARD_KERNEL(name, type, suffix, aligned, groups)                                    \
    extern "C" __global__ void __launch_bounds__(CK_CONTRASTIVE_BACKWARD_THREADS * groups, 1)                   \
        contrastive_backward_##name##suffix##_g##groups(const __grid_constant__ CkContrastiveBackwardParams p) { \
        ck::contrastive_backward<type, aligned, groups>(p.own, p.other, p.protos, p.dp, p.d, p.exclude_self,     \
                                                        p.inv_tau, p.scalars, p.du, p.splits);                   \
    }
// G = 4 (512 threads, at most 128 registers: the 64 gradient accumulators, the logit tile's BK =
// 64 stages) only for aligned f16 / bf16: the element-wise loads of `_unaligned` and the f32 FFMA
// engine spilled there (ptxas sm_90a), so they stop at G = 2 (params/contrastive.h).
#define CK_CONTRASTIVE_BACKWARD(name, type)                                                                    \
    CK_CONTRASTIVE_BACKWARD_KERNEL(name, type, , sizeof(type) == 2, 1)                                         \
    CK_CONTRASTIVE_BACKWARD_KERNEL(name, type, , sizeof(type) == 2, 2)                                         \
    CK_CONTRASTIVE_BACKWARD_KERNEL(name, type, _unaligned, false, 1)                                           \
    CK_CONTRASTIVE_BACKWARD_KERNEL(name, type, _unaligned, false, 2)                                           \
    extern "C" __global__ void __launch_bounds__(ck::kPackThreads)                                             \
        contrastive_pack_##name(const __grid_constant__ CkContrastivePackParams p) {                           \
        ck::pack_scaled_rows<type>(static_cast<const type*>(p.x), p.n, p.d, p.dp, static_cast<type*>(p.u));    \
    }

CK_CONTRASTIVE_BACKWARD(f32, float)
CK_CONTRASTIVE_BACKWARD(f16, __half)
CK_CONTRASTIVE_BACKWARD(bf16, __nv_bfloat16)
CK_CONTRASTIVE_BACKWARD_KERNEL(f16, __half, , true, 4)
CK_CONTRASTIVE_BACKWARD_KERNEL(bf16, __nv_bfloat16, , true, 4)

// The column splits' partial gradients summed in split order (a fixed order: deterministic).
extern "C" __global__ void __launch_bounds__(CK_CONTRASTIVE_MERGE_THREADS)
    contrastive_backward_merge(const __grid_constant__ CkBackwardMergeParams p) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p.elems; i += stride) {
        float v = p.du[i];
        for (int z = 1; z < p.splits; ++z) v += p.du[z * p.elems + i];
        p.du[i] = v;
    }
}

#define CK_NORM_PENALTY_BACKWARD(name, type)                                                                   \
    extern "C" __global__ void __launch_bounds__(ck::kPackThreads)                                             \
        contrastive_norm_penalty_backward_##name(const __grid_constant__ CkNormPenaltyBackwardParams p) {      \
        ck::norm_penalty_backward<type>(static_cast<const type*>(p.x), p.role, p.n, p.d, p.upstream, p.per_row, \
                                        p.alpha, p.scalars, static_cast<type*>(p.dx));                         \
    }
CK_FOR_EACH_FLOAT(CK_NORM_PENALTY_BACKWARD)

extern "C" __global__ void __launch_bounds__(ck::kPrepareThreads)
    contrastive_backward_prepare(const __grid_constant__ CkBackwardPrepareParams p) {
    ck::contrastive_backward_prepare(p.role, p.weight, p.positives, p.upstream, p.per_row, p.mean, p.scale, p.n, p.coef_a,
                                     p.coef_b, p.scalars);
}

// Checks of device-resident inputs (the host API checks on the host): flags[k] becomes the first
// offending row of check k (atomicMin: the result does not depend on the schedule), or stays
// INT_MAX. Non-finite features show as non-finite norms. The codes: params/contrastive.h.
extern "C" __global__ void __launch_bounds__(CK_CONTRASTIVE_CHECK_THREADS)
    contrastive_check_inputs(const __grid_constant__ CkCheckInputsParams p) {
    const float *norms = p.norms, *weight = p.weight, *key_norms = p.key_norms, *center_norms = p.center_norms;
    const int *label = p.label, *proto_of = p.proto_of, *key_label = p.key_label;
    const unsigned char* role = p.role;
    const int n = p.n, n_keys = p.n_keys, n_centers = p.n_centers, has_penalty = p.has_penalty;
    int* flags = p.flags;
    // 64-bit index: with an int, n near 2^31 overflows `i += stride`.
    const long long stride = (long long)gridDim.x * blockDim.x, end = max(max(n, n_keys), n_centers);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < end; i += stride) {
        const int row = (int)i;  // < end <= INT_MAX
        if (row < n) {
            if (!isfinite(norms[row])) atomicMin(&flags[CK_CONTRASTIVE_CHECK_FEATURES], row);
            if (label != nullptr && label[row] < -1) atomicMin(&flags[CK_CONTRASTIVE_CHECK_LABEL], row);
            if (role != nullptr && role[row] > CK_CONTRASTIVE_ROLE_NORM_PENALTY_ONLY) atomicMin(&flags[CK_CONTRASTIVE_CHECK_ROLE], row);
            if (role != nullptr && role[row] == ck::kRoleNormPenaltyOnly && !has_penalty)
                atomicMin(&flags[CK_CONTRASTIVE_CHECK_PENALTY_ROLE], row);
            if (weight != nullptr && !(weight[row] >= 0.f && isfinite(weight[row]))) atomicMin(&flags[CK_CONTRASTIVE_CHECK_WEIGHT], row);
            if (proto_of != nullptr && (proto_of[row] < -1 || proto_of[row] >= n_centers))
                atomicMin(&flags[CK_CONTRASTIVE_CHECK_PROTO_OF], row);
        }
        if (row < n_keys && key_norms != nullptr) {
            if (!isfinite(key_norms[row])) atomicMin(&flags[CK_CONTRASTIVE_CHECK_KEYS], row);
            if (key_label != nullptr && key_label[row] < -1) atomicMin(&flags[CK_CONTRASTIVE_CHECK_KEY_LABEL], row);
        }
        if (row < n_centers && !isfinite(center_norms[row])) atomicMin(&flags[CK_CONTRASTIVE_CHECK_CENTERS], row);
    }
}

extern "C" __global__ void __launch_bounds__(ck::kReduceThreads) contrastive_reduce(const __grid_constant__ CkReduceParams p) {
    ck::contrastive_reduce(p.per_anchor, p.weight, p.role, p.positives, p.norms, p.n, p.mean, p.penalty, p.out, p.first_empty);
}
