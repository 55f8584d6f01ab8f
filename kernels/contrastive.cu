// Fused contrastive loss, forward: per anchor row i,
//   L_i = scale * ( LSE_{j in A(i)} s_ij - (1/|P(i)|) sum_{p in P(i)} s_ip ),  s_ij = <u_i, u_j> / tau,
// over the row roles of DESIGN.md section 2, without ever writing the n x n logits.
//
// FlashAttention-style: a block owns BM = 128 anchor rows and sweeps its split of the column tiles
// (then the prototype tiles) with the tensor-core tile core (ForwardTile: 8 warps as 4 x 2, a
// thread 4 rows x 16 columns). Normalization is fused: raw products, scaled in the epilogue.
// Logits are base 2 (common/contrastive_forward.cuh): t_ij = (acc_ij rinv_i) cscale_j with
// cscale_j = log2(e) / (tau max(|x_j|, eps)), so exp is one ex2.approx. Per logit of the fast path
// (fixed offset): one FMUL, one FFMA (the offset and the -inf of masked columns folded in as the
// column's bias), one MUFU, one FADD, and the positive test as one LOP3 and two compares feeding
// two predicated FADDs (no branch).
//   - Per-column data (cscale, bias, instance / label / veto words) is prepared once per forward
//     by contrastive_forward_columns in the layout a block stages: a tile costs one 2560-byte
//     cp.async, no gathers, no division.
//   - The offset: for tau >= 1/40 (the host's choice, DESIGN.md section 6) every row uses the
//     fixed m2 = log2(e) / tau: exp(s - 1/tau) >= exp(-80) stays a normal f32, so no running max
//     and no rescaling. Below that, the `_online` kernels keep a per-row running max, rescaled
//     once per row and tile.
//   - Split: grid.y blocks share a row block's sweep where one block per row block would leave
//     SMs idle (the host picks whole waves); each writes its per-row partial (m2, sum, pos_sum,
//     count) and contrastive_forward_merge merges them in split order.
// Every reduction has a fixed order (the quad's shuffles, the warps through shared memory, the
// splits in order): bitwise repeatable. The saved LSE is in natural units.
//
// The self geometry on the fixed-offset path runs contrastive_forward_sym instead (below): only
// the tiles on and above the diagonal, each serving its rows and, by its column sums, its columns
// (about half the MMAs and exponentials), still deterministic: the row blocks are grouped, and
// each (group, row) slot of the partials is added to by one block in a fixed order. The online
// path (small tau) keeps the row sweep: a row's and a column's running maxima differ.
//
// The host reduces the per-anchor losses (weights, mean / sum, OECL's norm penalty) with
// contrastive_reduce below, also in a fixed order.
#include "common/contrastive_backward.cuh"
#include "common/contrastive_forward.cuh"
#include "common/epilogue.cuh"
#include "common/reduce.cuh"
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

// The forward's tile: 128 x 128 outputs, 8 warps as 4 x 2 (a warp owns 32 rows x 64 columns, a
// thread 4 rows x 16 columns). Fewer rows per thread than Tile128's 8 halves the per-row state (the
// statistics and the row's scale and ids stay in registers across the sweep), which is what keeps
// the kernel within 128 registers: two blocks per SM. The k-loop costs the same ldmatrix count.
using ForwardTile = MmaTileConfig<128, 128, 32, 4, 2>;
using ForwardTileF32 = MmaTileConfig<128, 128, 16, 4, 2, 4>;

// A label key no column label equals (column labels are >= -1, or -2 where they make no positive).
constexpr int kNoLabelKey = -3;

// Writes row `row`'s outputs from its statistics over every column.
__device__ __forceinline__ void finish_row(const Lse2& total, int row, const unsigned char* role_of, float scale,
                                           float* per_anchor, float* lse_out, int* positives) {
    const unsigned char role = role_of != nullptr ? role_of[row] : kRoleAnchor;
    const bool in_matrix = role != kRoleNormPenaltyOnly;
    const float lse = in_matrix ? total.lse() : -INFINITY;
    lse_out[row] = lse;
    positives[row] = in_matrix ? (int)total.pos_count : 0;
    per_anchor[row] = role == kRoleAnchor && total.pos_count > 0.f ? scale * (lse - total.positive_mean()) : 0.f;
}

// The per-column data of every column tile (columns, then prototypes), prepared once per forward
// in the layout a block stages: tile b's ColumnStage is one 2560-byte copy (cp.async) instead of
// per-tile gathers of norms, ids and roles and a division per column. One thread per column.
constexpr int kForwardPairs = CK_CONTRASTIVE_FORWARD_COLS / 2;
using ForwardColumns = ColumnStage<kForwardPairs>;
static_assert(sizeof(ForwardColumns) == CK_CONTRASTIVE_FORWARD_COLUMN_TILE_BYTES, "params/contrastive.h");

__device__ void contrastive_forward_columns(const CkContrastiveColumnsParams& p) {
    const bool proto = (int)blockIdx.x >= p.col_tiles;
    const CkRowSet& c = proto ? p.protos : p.cols;
    const int j = threadIdx.x;
    const int col = (proto ? blockIdx.x - p.col_tiles : blockIdx.x) * CK_CONTRASTIVE_FORWARD_COLS + j;
    const bool inside = col < c.count;
    const bool denominator = inside && !(c.role != nullptr && c.role[col] == kRoleNormPenaltyOnly);
    const float offset = p.fixed_offset != 0 ? p.inv_tau * kLog2e : 0.f;  // as contrastive_forward's
    reinterpret_cast<ForwardColumns*>(p.out)[blockIdx.x].set(
        j, inside ? logit_column_scale(c.norms[col], p.inv_tau) : 0.f, denominator ? -offset : -INFINITY,
        inside ? (proto ? col : c.instance[col]) : 0, denominator && !proto && c.label != nullptr ? c.label[col] : -2,
        denominator ? 0 : ~0);
    // The same rows as the symmetric kernel's rows (the self geometry: the columns are the rows).
    if (!proto && p.row_keys != nullptr) {
        RowKeys key{0.f, 0, kNoLabelKey, ~0};  // outside the denominators: no sums, no positives
        if (denominator) {
            const int label = c.label != nullptr ? c.label[col] : -1;
            key = RowKeys{logit_row_inverse(c.norms[col]), c.instance[col], label >= 0 ? label : kNoLabelKey, 0};
        }
        static_cast<RowKeys*>(p.row_keys)[col] = key;
    }
}
static_assert(sizeof(RowKeys) == CK_CONTRASTIVE_FORWARD_ROW_RECORD_BYTES, "params/contrastive.h: the row records");

// Is column (key, label, veto) a positive of a row (row_key, row_label)? Branch-free: one LOP3 and
// two chained compares.
__device__ __forceinline__ bool is_positive(int row_key, int row_label, int key, int label, int veto) {
    return ((row_key ^ key) | veto) == 0 || label == row_label;
}

// A thread's rows' data for one tile, from the staged RowKeys of the tile's kind.
template <class Cfg, int ROWS> struct TileRows {
    float rinv[ROWS];
    int key[ROWS], label[ROWS];
    __device__ __forceinline__ explicit TileRows(const RowKeys* rows) {
#pragma unroll
        for (int slot = 0; slot < ROWS; ++slot) {
            const RowKeys k = rows[Cfg::acc_row(slot / 2, 2 * (slot % 2))];
            rinv[slot] = k.rinv;
            key[slot] = k.key;
            label[slot] = k.label;
        }
    }
};
template <class Cfg> __device__ __forceinline__ const RowKeys& row_keys_of(const RowKeys* rows, int slot) {
    return rows[Cfg::acc_row(slot / 2, 2 * (slot % 2))];
}

// Fixed-offset fold of one tile (unit rows, 2 m2 within f32's exponent range): x = t - m2 by one
// FMUL and one FFMA, 2^x by one MUFU, and the masks by selects. DIAG: the tile on the diagonal of
// the self geometry, where column == row is left out.
template <class Cfg, bool DIAG, int ROWS>
__device__ __forceinline__ void fold_fixed(Lse2 (&stats)[ROWS], const float (&acc)[Cfg::MI][Cfg::NI][4],
                                           const TileRows<Cfg, ROWS>& r, const ColumnStage<Cfg::BN / 2>& staged) {
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni) {
        const ColumnPair c = staged.pair(Cfg::acc_col(ni, 0) / 2);
#pragma unroll
        for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int slot = mi * 2 + half;
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float x = fmaf(acc[mi][ni][half * 2 + e] * r.rinv[slot], c.cscale[e], c.bias[e]);
                    bool pos = is_positive(r.key[slot], r.label[slot], c.key[e], c.label[e], c.veto[e]);
                    if constexpr (DIAG) {
                        const bool self = Cfg::acc_row(mi, 2 * half) == Cfg::acc_col(ni, e);
                        x = self ? -INFINITY : x;
                        pos = pos && !self;
                    }
                    stats[slot].sum += ex2_approx(x);
                    if (pos) {  // predicated adds (no branch, no select)
                        stats[slot].pos_sum += x;
                        stats[slot].pos_count += 1.f;
                    }
                }
            }
    }
}

// Online-max fold (small tau): the tile's logits in place, the per-row tile max, one rescale of
// the running sum per row and tile, then the exponentials against the new max.
template <class Cfg, bool DIAG, int ROWS>
__device__ __forceinline__ void fold_online(Lse2 (&stats)[ROWS], float (&acc)[Cfg::MI][Cfg::NI][4], const RowKeys* rows,
                                            const ColumnStage<Cfg::BN / 2>& staged) {
    // Pass 1 needs only the row factors; the ids are read for pass 2 (fewer live registers).
    float tile_max[ROWS], rinv[ROWS];
#pragma unroll
    for (int slot = 0; slot < ROWS; ++slot) {
        tile_max[slot] = -INFINITY;
        rinv[slot] = row_keys_of<Cfg>(rows, slot).rinv;
    }
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni) {
        const float4 c = staged.scale_bias[Cfg::acc_col(ni, 0) / 2];
        const float cscale[2] = {c.x, c.y}, bias[2] = {c.z, c.w};
#pragma unroll
        for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
            for (int half = 0; half < 2; ++half)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int slot = mi * 2 + half;
                    float t = fmaf(acc[mi][ni][half * 2 + e] * rinv[slot], cscale[e], bias[e]);
                    if constexpr (DIAG) t = Cfg::acc_row(mi, 2 * half) == Cfg::acc_col(ni, e) ? -INFINITY : t;
                    acc[mi][ni][half * 2 + e] = t;
                    tile_max[slot] = fmaxf(tile_max[slot], t);
                }
    }
    float m_use[ROWS];
#pragma unroll
    for (int slot = 0; slot < ROWS; ++slot) {
        Lse2& s = stats[slot];
        const float m_new = fmaxf(s.m2, tile_max[slot]);
        m_use[slot] = m_new == -INFINITY ? 0.f : m_new;  // a row with no column yet: its sum stays 0
        s.sum *= s.m2 == m_use[slot] ? 1.f : ex2_approx(s.m2 - m_use[slot]);
        s.m2 = m_new;
    }
    int key[ROWS], label[ROWS];
#pragma unroll
    for (int slot = 0; slot < ROWS; ++slot) {
        const RowKeys& k = row_keys_of<Cfg>(rows, slot);
        key[slot] = k.key;
        label[slot] = k.label;
    }
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni) {
        const int4 ids = staged.ids[Cfg::acc_col(ni, 0) / 2];
        const int2 veto = staged.veto[Cfg::acc_col(ni, 0) / 2];
        const int ckey[2] = {ids.x, ids.y}, clabel[2] = {ids.z, ids.w}, cveto[2] = {veto.x, veto.y};
#pragma unroll
        for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
            for (int half = 0; half < 2; ++half)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int slot = mi * 2 + half;
                    const float t = acc[mi][ni][half * 2 + e];
                    bool pos = is_positive(key[slot], label[slot], ckey[e], clabel[e], cveto[e]);
                    if constexpr (DIAG) pos = pos && Cfg::acc_row(mi, 2 * half) != Cfg::acc_col(ni, e);
                    stats[slot].sum += ex2_approx(t - m_use[slot]);
                    if (pos) {
                        stats[slot].pos_sum += t;
                        stats[slot].pos_count += 1.f;
                    }
                }
    }
}

// Merges the 4 lanes of a quad (they hold the same rows, other columns), then writes one partial
// per row and warp column, red[warp_n][row] (shared; the caller's barrier publishes it). ADD: the
// offsets are equal (the fixed offset), so a merge is three adds; else Lse2::merge.
template <class Cfg, bool ADD, int ROWS> __device__ __forceinline__ void rows_to_shared(Lse2 (&stats)[ROWS], float4* red) {
#pragma unroll
    for (int slot = 0; slot < ROWS; ++slot)
#pragma unroll
        for (int lanes = 1; lanes < 4; lanes <<= 1) {
            if constexpr (ADD) {
                stats[slot].sum += __shfl_xor_sync(0xffffffffu, stats[slot].sum, lanes);
                stats[slot].pos_sum += __shfl_xor_sync(0xffffffffu, stats[slot].pos_sum, lanes);
                stats[slot].pos_count += __shfl_xor_sync(0xffffffffu, stats[slot].pos_count, lanes);
            } else {
                Lse2 o;
                o.m2 = __shfl_xor_sync(0xffffffffu, stats[slot].m2, lanes);
                o.sum = __shfl_xor_sync(0xffffffffu, stats[slot].sum, lanes);
                o.pos_sum = __shfl_xor_sync(0xffffffffu, stats[slot].pos_sum, lanes);
                o.pos_count = __shfl_xor_sync(0xffffffffu, stats[slot].pos_count, lanes);
                stats[slot].merge(o);
            }
        }
    if (Fragment::col(0) == 0) {  // one lane of each quad
#pragma unroll
        for (int slot = 0; slot < ROWS; ++slot) red[Cfg::warp_n() * Cfg::BM + Cfg::acc_row(slot / 2, 2 * (slot % 2))] = pack_lse2(stats[slot]);
    }
}

// A block owns BM = 128 anchor rows and sweeps the column tiles [begin, end) of its split
// (blockIdx.y of gridDim.y): the column tiles, then the prototype tiles. With one split it writes
// the outputs; with several, its partial statistics (params' partials, [split][row]) for
// contrastive_forward_merge.
// This block's tiles of a split sweep: [x, y) of `tiles`, balanced over gridDim.y (64-bit products).
__device__ __forceinline__ int2 split_tiles(int tiles) {
    const long long t = tiles, s = blockIdx.y, k = gridDim.y;
    return make_int2((int)(t * s / k), (int)(t * (s + 1) / k));
}

// FIXED: the fixed offset m2 = inv_tau log2(e) for every row (unit rows, the host's choice where
// 2 m2 stays well inside f32's exponent range); else the online max. Two kernels: a runtime flag
// kept both epilogues' registers alive at once, and the fixed one fits 128 registers alone.
template <typename T, bool ALIGNED, bool FIXED> __device__ void contrastive_forward(const CkContrastiveForwardParams& p) {
    using Cfg = typename TileFor<T, ForwardTile, ForwardTileF32>::type;
    constexpr int ROWS = Cfg::MI * 2;
    __shared__ __align__(128) T smem[Cfg::SMEM_ELEMS];
    // One tile's columns (written after a barrier, read after the k-loop's barriers).
    __shared__ __align__(16) ColumnStage<Cfg::BN / 2> staged;
    __shared__ __align__(16) RowKeys row_keys[2][Cfg::BM];  // [0]: column tiles, [1]: prototype tiles
    const int row0 = blockIdx.x * Cfg::BM;
    constexpr bool fixed = FIXED;
    const float offset = fixed ? p.inv_tau * kLog2e : 0.f;
    const int col_tiles = (p.cols.count + Cfg::BN - 1) / Cfg::BN;
    const int tiles = col_tiles + (p.protos.count + Cfg::BN - 1) / Cfg::BN;
    const int2 range = split_tiles(tiles);
    const int begin = range.x, end = range.y;

    for (int i = threadIdx.x; i < Cfg::BM; i += Cfg::THREADS) {  // read by all after the k-loop's barriers
        const int row = row0 + i;
        RowKeys k{0.f, 0, kNoLabelKey, 0}, kp{0.f, -1, kNoLabelKey, 0};
        if (row < p.rows.count) {
            k.rinv = kp.rinv = logit_row_inverse(p.rows.norms[row]);
            k.key = p.rows.instance[row];
            const int label = p.rows.label != nullptr ? p.rows.label[row] : -1;
            k.label = label >= 0 ? label : kNoLabelKey;
            kp.key = p.proto_of != nullptr ? p.proto_of[row] : -1;  // prototype indices are >= 0
        }
        row_keys[0][i] = k;
        row_keys[1][i] = kp;
    }
    Lse2 stats[ROWS];
#pragma unroll
    for (int slot = 0; slot < ROWS; ++slot) stats[slot].init(fixed ? offset : -INFINITY);

    float acc[Cfg::MI][Cfg::NI][4];
    // One tile: stage its columns, multiply, fold.
    static_assert(Cfg::BN == CK_CONTRASTIVE_FORWARD_COLS, "the prepared column tiles");
    // The host guarantees d >= 1 (ops::check_features): without this the compiler keeps a
    // zero-k path of the k-loop, with its own copy of the accumulators' zeroing, in every tile.
    if (p.d < 1) __builtin_unreachable();
    auto one_tile = [&](auto diag, const CkRowSet& c, bool proto, int tile) {
        constexpr bool DIAG = decltype(diag)::value;
        const int col0 = tile * Cfg::BN;
        ColumnStage<Cfg::BN / 2>& buf = staged;
        __syncthreads();  // every warp has folded the previous tile: its staged columns are free
        // Committed with the k-loop's first stage and retired by its waits (it ends with a barrier).
        const char* src = reinterpret_cast<const char*>(p.columns) + (size_t)(proto ? col_tiles + tile : tile) * sizeof(buf);
        static_assert(sizeof(buf) / 16 <= Cfg::THREADS, "one 16-byte chunk per thread at most");
        if (threadIdx.x < sizeof(buf) / 16) cp_async_16(reinterpret_cast<char*>(&buf) + 16 * threadIdx.x, src + 16 * threadIdx.x, 16);
        mma_block_tile<Cfg, ALIGNED>(acc, smem, rows_of<T>(p.rows), rows_of<T>(c), p.rows.count, c.count, p.d, row0, col0);
        const RowKeys* rows = row_keys[proto ? 1 : 0];
        if constexpr (fixed) fold_fixed<Cfg, DIAG>(stats, acc, TileRows<Cfg, ROWS>(rows), buf);
        else fold_online<Cfg, DIAG>(stats, acc, rows, buf);
    };
    // The column tiles, then the prototype tiles. The self geometry's diagonal tile, the only one
    // that leaves a column out per row, is folded last, outside the loop: the loop's body holds
    // only the plain fold.
    const int diag_tile = p.exclude_self != 0 ? (int)blockIdx.x : -1;  // BM == BN
    for (int tile = begin; tile < end; ++tile) {
        if (tile == diag_tile) continue;
        const bool proto = tile >= col_tiles;
        one_tile(BoolConstant<false>{}, proto ? p.protos : p.cols, proto, proto ? tile - col_tiles : tile);
    }
    if (diag_tile >= begin && diag_tile < end) one_tile(BoolConstant<true>{}, p.cols, false, diag_tile);
    if constexpr (fixed) {  // positives were summed as t - m2 there: back to t
#pragma unroll
        for (int slot = 0; slot < ROWS; ++slot) stats[slot].pos_sum = fmaf(stats[slot].pos_count, offset, stats[slot].pos_sum);
    }

    // The quads, then the WARPS_N warps that share a row block, through shared memory (the tile
    // buffers are free: mma_block_tile ends with a barrier, and with no tile at all nothing used them).
    static_assert(sizeof(float4) * Cfg::WARPS_N * Cfg::BM <= Cfg::SMEM_BYTES, "partials fit the tile buffers");
    float4* partial = reinterpret_cast<float4*>(smem);  // [WARPS_N][BM]
    rows_to_shared<Cfg, false>(stats, partial);
    __syncthreads();
    for (int i = threadIdx.x; i < Cfg::BM; i += Cfg::THREADS) {
        const int row = row0 + i;
        if (row >= p.rows.count) continue;
        Lse2 total = unpack_lse2(partial[i]);
        for (int w = 1; w < Cfg::WARPS_N; ++w) total.merge(unpack_lse2(partial[w * Cfg::BM + i]));
        if (gridDim.y == 1) finish_row(total, row, p.rows.role, p.scale, p.per_anchor, p.lse, p.positives);
        else reinterpret_cast<float4*>(p.partials)[(size_t)blockIdx.y * p.rows.count + row] = pack_lse2(total);
    }
}

// The symmetric kernel's shared memory: the tile core's stages, one tile's staged columns, the
// block's rows' data (for column tiles and for prototype tiles).
template <class Cfg, typename T> struct ForwardShared {
    T smem[Cfg::SMEM_ELEMS];
    ColumnStage<Cfg::BN / 2> staged;
    RowKeys row_keys[2][Cfg::BM];
};


// ---------------------------------------------------------------------------------------------
// The self geometry's symmetry (DESIGN.md section 6: one exponential per pair). On the fixed-offset
// path e_ij = 2^(t_ij - m2) is the same number for row i and for row j, so a tile (I, J) above the
// diagonal serves the rows of block I (its row sums) and those of block J (its column sums): about
// half the tiles of the row sweep, and half the MMAs and exponentials.
//
// Determinism with no atomics: the row blocks are cut into Q groups of S; block x of the grid owns
// one pair of groups (P <= Q), computes its tiles (I in P, J in Q, J >= I on the diagonal pair)
// one at a time, and after each tile adds its row sums into partials[group Q][rows of I] and its
// column sums into partials[group P][rows of J]. Every (group, row) slot is written by exactly
// one block, in its fixed tile order; contrastive_forward_merge then folds each row's Q slots in
// group order. The diagonal tile (I, I) is folded as a row tile only (with its diagonal left out).
// Per tile, each thread sums its rows' column terms and the warp's 8 row groups add them by a
// fixed butterfly; the warps meet in shared memory. Prototype tiles have no transposed twin: the
// blocks after the pairs sweep them by row block, rows only, into the last slot. The host sizes
// the groups (ops::contrastive::gpu::forward_sym_groups): one row block per group up to
// n = 16384 (2080 single-tile blocks at n = 8192), the slots within 32 MiB above.
//
// Masks: a pair (i, j) counts for row i when j is a denominator column and for row j when i is
// one; both are denominators whenever the sum is used (an anchor is one), so the one mask
// "both" serves the two sides: column j's by its bias (-inf), row i's by a predicated add of the
// column sums. Positives: ((key_i ^ key_j) | veto_j) == 0 and i a denominator, or label_i ==
// label_j, with -3 (rows) / -2 (columns) for "no label or not a denominator": symmetric in i and j.

// A thread's rows of a symmetric tile: the row factor, the ids, and whether the row is a
// denominator (not past the end, not NormPenaltyOnly): a predicate, folded into the compares.
template <class Cfg, int ROWS> struct SymRows {
    float rinv[ROWS];
    int key[ROWS], label[ROWS];
    bool den[ROWS];
    __device__ __forceinline__ explicit SymRows(const RowKeys* rows) {
#pragma unroll
        for (int slot = 0; slot < ROWS; ++slot) {
            const RowKeys k = rows[Cfg::acc_row(slot / 2, 2 * (slot % 2))];
            rinv[slot] = k.rinv;
            key[slot] = k.key;
            label[slot] = k.label;
            den[slot] = k.unused == 0;
        }
    }
};

// The symmetric fold of one tile above the diagonal: the rows' sums into stats (as fold_fixed, but
// stats just initialized: its positive sums are set by the tile's first column, not added to), and
// per column the sums over this warp's rows into col_red[warp_m][column] (shared).
template <class Cfg, int ROWS>
__device__ __forceinline__ void fold_symmetric(Lse2 (&stats)[ROWS], const float (&acc)[Cfg::MI][Cfg::NI][4], const SymRows<Cfg, ROWS>& r,
                                               const ColumnStage<Cfg::BN / 2>& staged, float4* col_red) {
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni) {
        const ColumnPair c = staged.pair(Cfg::acc_col(ni, 0) / 2);
        float csum[2], cpos[2], ccount[2];  // set by the first row's selects
#pragma unroll
        for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int slot = mi * 2 + half;
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float x = fmaf(acc[mi][ni][half * 2 + e] * r.rinv[slot], c.cscale[e], c.bias[e]);
                    const float ex = ex2_approx(x);
                    stats[slot].sum += ex;
                    // A row outside the denominators is no positive on either side (its own sums
                    // are never read); its label key never equals a column's.
                    const bool pos = (((r.key[slot] ^ c.key[e]) | c.veto[e]) == 0 && r.den[slot]) || r.label[slot] == c.label[e];
                    // A sum's first term is a select, not a predicated add to a zero (two
                    // instructions there: sm_90a, 2026-12-03).
                    if (mi == 0 && half == 0) {  // a column's first row
                        csum[e] = r.den[slot] ? ex : 0.f;
                        cpos[e] = pos ? x : 0.f;
                        ccount[e] = pos ? 1.f : 0.f;
                    } else {  // predicated adds
                        if (r.den[slot]) csum[e] += ex;
                        if (pos) {
                            cpos[e] += x;
                            ccount[e] += 1.f;
                        }
                    }
                    if (ni == 0 && e == 0) {  // a row's first column
                        stats[slot].pos_sum = pos ? x : 0.f;
                        stats[slot].pos_count = pos ? 1.f : 0.f;
                    } else if (pos) {
                        stats[slot].pos_sum += x;
                        stats[slot].pos_count += 1.f;
                    }
                }
            }
        // The warp's 8 row groups (lanes 4 apart) hold the same two columns: a fixed butterfly. (A
        // reduce-scatter, 7 shuffles for the 6 sums instead of 18, took more instructions, its
        // selects, and spilled at 128 registers: sm_90a, tried 2026-12-02.)
#pragma unroll
        for (int e = 0; e < 2; ++e)
#pragma unroll
            for (int lanes = 4; lanes < 32; lanes <<= 1) {
                csum[e] += __shfl_xor_sync(0xffffffffu, csum[e], lanes);
                cpos[e] += __shfl_xor_sync(0xffffffffu, cpos[e], lanes);
                ccount[e] += __shfl_xor_sync(0xffffffffu, ccount[e], lanes);
            }
        if (Fragment::row(0) == 0) {
#pragma unroll
            for (int e = 0; e < 2; ++e)
                col_red[Cfg::warp_m() * Cfg::BN + Cfg::acc_col(ni, e)] = make_float4(0.f, csum[e], cpos[e], ccount[e]);
        }
    }
}

// Adds a tile's sums (sum, positive sum in t - m2 units, count) of one row into its slot; `first`
// stores instead (the slot's first tile). Always the same thread for a given slot and row within
// one tile; across tiles the block's barriers order the accesses.
__device__ __forceinline__ void add_to_slot(float4* slot, float4 v, bool first, float offset) {
    v.z = fmaf(v.w, offset, v.z);  // positives were summed as t - m2: back to t
    if (!first) {
        const float4 o = *slot;
        v.y = o.y + v.y;
        v.z = o.z + v.z;
        v.w = o.w + v.w;
    }
    v.x = offset;
    *slot = v;
}

// The sums of WARPS warps' partials red[w * STRIDE + i] (w in order) of one row added to its slot,
// as add_to_slot.
template <int WARPS, int STRIDE>
__device__ __forceinline__ void add_warp_sums_to_slot(float4* slot, const float4* red, int i, bool first, float offset) {
    float4 v = red[i];
#pragma unroll
    for (int w = 1; w < WARPS; ++w) {
        const float4 o = red[w * STRIDE + i];
        v.y += o.y;
        v.z += o.z;
        v.w += o.w;
    }
    add_to_slot(slot, v, first, offset);
}

// The kinds of tile of the symmetric kernel: above the diagonal (rows and columns), on it (rows,
// the diagonal left out), a prototype tile (rows).
enum SymTile : int { kSymPair = 0, kSymDiagonal = 1, kSymPrototypes = 2 };

template <typename T, bool ALIGNED> __device__ void contrastive_forward_sym(const CkContrastiveForwardParams& p) {
    using Cfg = typename TileFor<T, ForwardTile, ForwardTileF32>::type;
    constexpr int ROWS = Cfg::MI * 2;
    static_assert(Cfg::BM == Cfg::BN && Cfg::THREADS == Cfg::BM + Cfg::BN, "a thread per row and per column of a tile");
    static_assert(Cfg::BN == CK_CONTRASTIVE_FORWARD_COLS, "the prepared column tiles");
    __shared__ __align__(128) ForwardShared<Cfg, T> sh;
    const int n = p.rows.count, S = p.sym_group, groups = p.sym_groups;
    const int row_blocks = (n + Cfg::BM - 1) / Cfg::BM;
    const int pairs = groups * (groups + 1) / 2;
    // This block's pair of groups: the off-diagonal pairs first (they carry more tiles), row-major;
    // the blocks after the pairs take one row block's prototype tiles each (slot `groups`).
    int gp = 0, gq = groups, k = (int)blockIdx.x;
    const int off_diagonal = groups * (groups - 1) / 2;
    if (k < off_diagonal) {
        for (int len = groups - 1; k >= len; --len) {
            k -= len;
            ++gp;
        }
        gq = gp + 1 + k;
    } else if (k < pairs) {
        gp = gq = k - off_diagonal;
    }
    const bool diagonal = gp == gq;
    const float offset = p.inv_tau * kLog2e;
    float4* partials = reinterpret_cast<float4*>(p.partials);
    float4* row_red = reinterpret_cast<float4*>(sh.smem);          // [WARPS_N][BM]
    float4* col_red = row_red + Cfg::WARPS_N * Cfg::BM;            // [WARPS_M][BN]
    static_assert(sizeof(float4) * (Cfg::WARPS_N * Cfg::BM + Cfg::WARPS_M * Cfg::BN) <= Cfg::SMEM_BYTES, "sums fit the tile buffers");
    if (p.d < 1) __builtin_unreachable();  // as contrastive_forward's

    float acc[Cfg::MI][Cfg::NI][4];
    // Tile (bi, bj) (bj: a prototype tile for kSymPrototypes): stage its rows' data where the row
    // block starts, and its columns; multiply; fold; add its sums to the slots.
    auto one_tile = [&](auto kind, int bi, int bj, bool new_rows, bool first_row, bool first_col) {
        constexpr int KIND = decltype(kind)::value;
        constexpr bool PAIR = KIND == kSymPair, PROTO = KIND == kSymPrototypes;
        const int row0 = bi * Cfg::BM, col0 = bj * Cfg::BN;
        __syncthreads();  // the previous tile's sums are added and its staged data read: all free
        if (new_rows) {
            // The rows' records, prepared by contrastive_forward_columns: one 16-byte copy per row,
            // spelled as the columns' copy below (other forms spilled at 128 registers, sm_90a).
            if constexpr (!PROTO) {
                const char* rsrc = reinterpret_cast<const char*>(p.row_keys) + (size_t)row0 * sizeof(RowKeys);
                if (threadIdx.x < Cfg::BM) cp_async_16(reinterpret_cast<char*>(sh.row_keys[0]) + 16 * threadIdx.x, rsrc + 16 * threadIdx.x, 16);
            } else {  // prototype tiles: a row's key is its prototype (-1: none; indices are >= 0)
                for (int i = threadIdx.x; i < Cfg::BM; i += Cfg::THREADS) {
                    const int row = row0 + i;
                    const bool den = row < n && !(p.rows.role != nullptr && p.rows.role[row] == kRoleNormPenaltyOnly);
                    RowKeys key{0.f, -1, kNoLabelKey, ~0};
                    if (den) {
                        key.rinv = logit_row_inverse(p.rows.norms[row]);
                        key.key = p.proto_of != nullptr ? p.proto_of[row] : -1;
                        key.unused = 0;
                    }
                    sh.row_keys[0][i] = key;
                }
            }
        }
        ColumnStage<Cfg::BN / 2>& buf = sh.staged;
        const char* src = reinterpret_cast<const char*>(p.columns) + (size_t)(PROTO ? row_blocks + bj : bj) * sizeof(buf);
        if (threadIdx.x < sizeof(buf) / 16) cp_async_16(reinterpret_cast<char*>(&buf) + 16 * threadIdx.x, src + 16 * threadIdx.x, 16);
        const CkRowSet& c = PROTO ? p.protos : p.rows;
        mma_block_tile<Cfg, ALIGNED>(acc, sh.smem, rows_of<T>(p.rows), rows_of<T>(c), n, c.count, p.d, row0, col0);
        Lse2 stats[ROWS];
#pragma unroll
        for (int slot = 0; slot < ROWS; ++slot) stats[slot].init(offset);
        if constexpr (PAIR) fold_symmetric<Cfg>(stats, acc, SymRows<Cfg, ROWS>(sh.row_keys[0]), buf, col_red);
        else fold_fixed<Cfg, KIND == kSymDiagonal>(stats, acc, TileRows<Cfg, ROWS>(sh.row_keys[0]), buf);
        rows_to_shared<Cfg, true>(stats, row_red);
        __syncthreads();
        const int t = (int)threadIdx.x;
        if (t < Cfg::BM) {  // row t of block bi: its row sums, into slot gq
            const int row = row0 + t;
            if (row < n) add_warp_sums_to_slot<Cfg::WARPS_N, Cfg::BM>(&partials[(size_t)gq * n + row], row_red, t, first_row, offset);
        } else if (PAIR) {  // column t - BM of block bj: its column sums, into slot gp
            const int col = t - Cfg::BM, row = col0 + col;
            if (row < n) add_warp_sums_to_slot<Cfg::WARPS_M, Cfg::BN>(&partials[(size_t)gp * n + row], col_red, col, first_col, offset);
        }
    };
    if ((int)blockIdx.x >= pairs) {
        const int bi = (int)blockIdx.x - pairs, proto_tiles = (p.protos.count + Cfg::BN - 1) / Cfg::BN;
        for (int bj = 0; bj < proto_tiles; ++bj) one_tile(IntConstant<kSymPrototypes>{}, bi, bj, bj == 0, bj == 0, false);
        return;
    }
    // Rows of block bi in slot gq: on a diagonal pair, the column sums of the tiles (bi', bi) with
    // bi' < bi came first (the first of them stores), then the row sums.
    const int i_begin = gp * S, i_end = min(i_begin + S, row_blocks);
    const int j_begin = gq * S, j_end = min(j_begin + S, row_blocks);
    for (int bi = i_begin; bi < i_end; ++bi) {
        if (diagonal) one_tile(IntConstant<kSymDiagonal>{}, bi, bi, true, bi == i_begin, false);
        for (int bj = diagonal ? bi + 1 : j_begin; bj < j_end; ++bj)
            one_tile(IntConstant<kSymPair>{}, bi, bj, !diagonal && bj == j_begin, !diagonal && bj == j_begin, bi == i_begin);
    }
}

// The splits' partials of each row merged in split order (fixed: bitwise repeatable), then the
// outputs (the symmetric kernel's group slots likewise, in group order). One thread per row.
__device__ void contrastive_forward_merge(const CkContrastiveForwardMergeParams& p) {
    const int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= p.n) return;
    const float4* partials = reinterpret_cast<const float4*>(p.partials);
    Lse2 total = unpack_lse2(partials[row]);
    for (int s = 1; s < p.splits; ++s) total.merge(unpack_lse2(partials[(size_t)s * p.n + row]));
    finish_row(total, row, p.role, p.scale, p.per_anchor, p.lse, p.positives);
}

// Deterministic reduction of the per-anchor losses, one block:
//   out[0] = sum_i w_i L_i / divisor + penalty / n_o * sum_{role == NormPenaltyOnly} ||x_o||,
//   divisor = the number of anchor rows (at least 1) when mean, else 1;
//   first_empty[0] = the smallest anchor row with no positive, or -1.
// Rows at or past anchor_rows, which the forward did not sweep, are no anchors: their outputs are
// written here as the forward writes a row outside the matrix (0, -inf, 0).
constexpr int kReduceThreads = CK_CONTRASTIVE_SINGLE_BLOCK_THREADS;

__device__ void contrastive_reduce(const CkReduceParams& p) {
    __shared__ float f_scratch[kReduceThreads / 32];
    __shared__ int i_scratch[kReduceThreads / 32];
    float loss = 0.f, norm_sum = 0.f;
    int penalized = 0, empty = 0x7fffffff, anchors = 0;
    for (int i = threadIdx.x; i < p.n; i += kReduceThreads) {
        const unsigned char r = p.role != nullptr ? p.role[i] : kRoleAnchor;
        if (i >= p.anchor_rows) {
            p.per_anchor[i] = 0.f;
            p.lse[i] = -INFINITY;
            p.positives[i] = 0;
        } else if (r == kRoleAnchor) {
            anchors += 1;
            loss += (p.weight != nullptr ? p.weight[i] : 1.f) * p.per_anchor[i];
            if (p.positives[i] == 0) empty = min(empty, i);
        }
        if (r == kRoleNormPenaltyOnly) {
            norm_sum += p.norms[i];
            penalized += 1;
        }
    }
    const float total = block_reduce<kReduceThreads>(loss, Sum(), f_scratch);
    const float norms_total = block_reduce<kReduceThreads>(norm_sum, Sum(), f_scratch);
    const int count = block_reduce<kReduceThreads>(penalized, Sum(), i_scratch);
    const int anchor_count = block_reduce<kReduceThreads>(anchors, Sum(), i_scratch);
    const int first = block_reduce<kReduceThreads>(empty, Min(), i_scratch);
    if (threadIdx.x == 0) {
        const float divisor = p.mean ? (float)max(anchor_count, 1) : 1.f;
        p.out[0] = total / divisor + (count > 0 ? p.penalty * norms_total / count : 0.f);
        p.first_empty[0] = first == 0x7fffffff ? -1 : first;
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
// chunk for f16 / bf16, 128 for f32; grid.y covers a larger d). It sweeps the other side in tiles
// of BN rows (f16 / bf16 at G = 1: 128, else 64); per tile:
//  1. the logit tile, once for the whole chunk of d, with the tensor cores (f32: exact FFMA) as
//     the forward computes it (the same products up to exact powers of two, the same f32 inverse
//     norms: the saved LSE normalizes precisely these logits, which a separately rounded unit-row
//     copy would not);
//  2. the epilogue (kernels/common/contrastive_backward.cuh): per-column data prepared once per
//     pass (contrastive_backward_columns) and staged in shared memory by one 16-byte copy per
//     thread and tile, per-row data once per sweep, base-2 logits and ex2, one exponential
//     per logit where the fixed offset 1/tau applies (tau >= ~0.029), two below; H written to
//     shared memory in the input dtype (f32 for f32);
//  3. every warp multiplies its rows of H (32; f32: 16) into its columns of d of the other side's
//     packed rows (tensor cores; f32: FFMA), accumulating in registers (BackwardTraits' layouts).
// The second product's operand is not the raw rows nor unit rows rounded to the input dtype: in
// the gradient of a row the radial part is large and the normalization backward removes it, so a
// per-element rounding of u_j leaks into the small tangential result (about 2 % of max |grad| for
// bf16 SupCon at tau = 0.07 on two close views, found with the CPU emulator). The packed copy
// (contrastive_pack_*) holds x_j scaled by a power of two (exact, norm in [1, 2)), and H_kj
// carries w_j = 2^e_j / max(|x_j|, eps) that makes it u_j, so its rounding error stays along u_j.
// The raw rows x_j would be as exact with 1 / max(|x_j|, eps) in H, but that scalar ranges with
// the norms, and H in f16 (at most 2^14 after sigma) would then overflow or sink into f16's
// subnormals for rows far from unit norm; the packed rows keep H's range fixed. f16 / bf16
// multiply S from the packed rows as well (BackwardTraits::FROM_PACKED): products of x / 2^e are
// the raw ones scaled by 2^(e_i + e_j), exactly, and the logit factors carry the 2^e (w_i,
// 2^e_j cscale_j), so the logits come out as the forward's (scaling by a power of two commutes
// with f32 rounding; only values at the edge of f32's normal range could differ). The packed rows
// are always aligned and zero padded to dp (a multiple of 8): one kernel, with 16-byte copies,
// whatever the alignment of the caller's rows or of d (before, d % 8 != 0 or a misaligned base
// took `_unaligned` kernels with element-wise loads: estimated 1.3x slower at d <= 128, 2.6x at
// 256 < d <= 512, where they stopped at G = 2). Where one chunk covers d, both sides stay resident
// in shared memory for the whole d (BackwardTraits::RESIDENT), so each tile reads the other rows
// once; beyond (`_g4_chunked`), S's operands pass through the stages. f32 reads its raw rows for
// S, element-wise, and the packed ones for H U. No n x n matrix, no atomics, fixed orders:
// deterministic.
// Two GEMM-equivalents per pass when the chunk covers d (before: one logit tile per 128 columns
// of d, five GEMM-equivalents at d = 512).
//
// The self geometry's symmetry (only tiles on and above the diagonal, each serving its rows and
// its columns) is not used: the column side's contributions G^T U would land in other blocks'
// rows, which needs float atomics (not deterministic), per-tile partial gradients merged in a
// fixed order (n / 64 partials of n x d f32: far over the 64 MiB bound at n = 65536), or blocks
// adding in turn behind tickets (safe when drawn from an atomic counter, a block then waiting only
// on running ones, but each column block's turns chain across all row blocks, longer than the row
// sweep at the bench shapes, and read-modify-write 64 x d f32 per tile: README, "Contrastive losses").
//
// H is scaled by sigma (a power of two, contrastive_backward_prepare) so that |H| <= 2^14: f16's
// range holds it and its small entries stay above f16's subnormals; the epilogue divides it out.

// One side of a backward pass (params/contrastive.h). Optional arrays may be null.
using GradSide = CkGradSide;

// The backward's block (params/contrastive.h): BM = 64 own rows x BN other rows per logit tile
// (BN = WIDE_COLS = 128 for f16 / bf16 at G = 1, else 64), 4 G warps (f16 / bf16 at G = 4:
// WARPS_HALF_G4 = 8), CHUNK = G x WARP_D_HALF (f32: WARP_D_F32) columns of d.
// The logit tile (f16 / bf16): G = 1 (SQUARE), 64 x 128 on 2 x 2 warps of 32 x 64 (MI = 2, NI =
// 8): per k16 step 6 x4-ldmatrix for 16 MMAs (32 x 32 warps of a 64 x 64 tile: 4 for 8; static
// model at N = 8192, D = 128: 101.5 -> 88.7 us, 2026-12-03); H U then spans k = 128 per tile, and
// the block's registers (227) and shared memory (74 KiB) still fit 2 blocks per SM. G = 2, 4 keep
// 64 (their blocks' shared memory and registers are full). G = 2, 4: split over k (bwd::SplitKTile),
// each k-half on 2 x 2 warps of 32 x 32, the halves added through shared memory (unsplit, 8 warps
// would have 16 x 32 pieces whose B fragments serve one m16 fragment). f32: 4 x G warps, warp
// (m, g) computing rows 16 m.. x columns (64 / G) g.. .
// H U: f16 / bf16, 2 x 2G warps of 32 rows x 64 columns of d (G = 4: 1 x 8 warps of 64 rows x 64
// columns, U_MI = 4): per k16 step 6 x4-ldmatrix for 16 MMAs (a B fragment serves two m16
// fragments; 16 rows x 128 columns: 9; G = 4: 10 for 32). H passes through shared memory, so
// neither product needs a warp to own whole rows. f32: 4 x G warps of 16 rows (the FFMA engine's
// h_times_tile takes 16 rows) x WARP_D_F32 columns.
// G = 4 on 8 warps, not 16 (static model, estimated, bf16 N = 8192, D = 512, 2026-12-03): 2.00
// shared-memory wavefronts per MMA instead of 3.00 (the 16-warp split tile had 32 x 16 pieces),
// 28.2 -> 20.6 epilogue instructions per logit, 445.8 -> 323.2 us; 227 registers (the 256-thread
// bound allows 255), still 1 block per SM, so 8 warps per SM hide latency (the model does not
// see latency).
// Every layout is deterministic; all but the split-k tile give each output element the same
// products in the same order (the split-k logits differ from the forward's by f32 rounding only).
template <typename T, int G, bool CHUNKED = false> struct BackwardTraits {
    static constexpr int E = (int)sizeof(T);
    static constexpr bool SQUARE = E == 2 && G == 1;
    static constexpr bool WIDE_D = E == 2 && G == 4;
    static constexpr int WARPS = WIDE_D ? CK_CONTRASTIVE_BACKWARD_WARPS_HALF_G4 : 4 * G;
    // BK: every thread copies whole 16-byte chunks of a stage (64 x BK / 8 of them per operand).
    static constexpr int BK = E == 4 ? 16 : (G == 4 ? 64 : 32);
    static constexpr int LOGIT_WARPS_M = SQUARE ? 2 : 4, LOGIT_WARPS_N = SQUARE ? 2 : WARPS / 4;
    // Column tile: WIDE_COLS at SQUARE (warps of 32 x 64: per k16 step 6 x4-ldmatrix for 16 MMAs,
    // where 32 x 32 took 4 for 8, and H U's k spans 128 columns), else 64 (the G = 2, 4 blocks'
    // shared memory and registers are full).
    static constexpr int BN = SQUARE ? CK_CONTRASTIVE_BACKWARD_WIDE_COLS : 64;
    using Cfg = MmaTileConfig<CK_CONTRASTIVE_BACKWARD_ROWS, BN, BK, LOGIT_WARPS_M, LOGIT_WARPS_N, E>;
    static constexpr int THREADS = Cfg::THREADS;
    static constexpr int CHUNK =                                // d columns of the gradient per block
        G * (E == 2 ? CK_CONTRASTIVE_BACKWARD_WARP_D_HALF : CK_CONTRASTIVE_BACKWARD_WARP_D_F32);
    // H U: U_WARPS_M x U_WARPS_D warps, each U_MI m16 fragments of rows x WARP_D columns of d
    // (f16 / bf16: 2 x 2G warps of 32 rows x 64 columns; f32: 4 x G warps of 16 rows).
    static constexpr int U_WARPS_D = WIDE_D ? WARPS : E == 2 ? 2 * G : G, U_WARPS_M = WARPS / U_WARPS_D;
    static constexpr int U_MI = CK_CONTRASTIVE_BACKWARD_ROWS / 16 / U_WARPS_M;
    static constexpr int WARP_D = CHUNK / U_WARPS_D;
    static constexpr int CHUNK_STRIDE = CHUNK + 16 / E;       // padded like the stages (conflict-free ldmatrix)
    static constexpr int H_STRIDE = Cfg::BN + 16 / E;
    static_assert(Cfg::THREADS == 32 * WARPS && U_MI * U_WARPS_M * 16 == Cfg::BM,
                  "the warps cover the tile and the block's rows");
    static_assert(E == 2 || U_MI == 1, "the FFMA engine's H U takes 16 rows per warp");
    static_assert(Cfg::BN % Cfg::BM == 0 && CK_CONTRASTIVE_BACKWARD_WIDE_COLS % Cfg::BN == 0,
                  "a row block's diagonal lies in one column tile; the padding holds whole tiles");
    // f16 / bf16 at G = 2, 4: the logit tile split over k (bwd::SplitKTile); Cfg then names the
    // stages and loads.
    static constexpr bool SPLIT_K = E == 2 && G > 1;
    // f16 / bf16: S from the packed rows (always aligned: one kernel whatever the raw rows'
    // alignment, and the 16-byte cp.async loads; contrastive_backward_columns' `packed`), the logit
    // factors carrying their powers of two; f32: from the raw rows, element-wise.
    static constexpr bool FROM_PACKED = E == 2;
    // f16 / bf16 at G = 1, 2, 4 (one chunk: d <= 128 G; sweep_other): the packed rows of both
    // sides resident in shared memory for the whole chunk of d (the own rows once per sweep, in
    // the stages' space, widened at G = 4; the other side's chunk is H U's operand anyway): each
    // tile's other rows are read from memory once instead of twice, and the k-loop has no copies or
    // barriers. (G = 2 resident since 2026-12-02, when chunks moved to `_g4_chunked`: estimated
    // 1.35x at d = 256.)
    // CHUNKED (`_g4_chunked`, f16 / bf16 d over 512): grid.y chunks of G WARP_D columns, each block
    // computing S for the whole d, so S's operands pass through the stages (before 2026-12-02,
    // G = 2 chunks of 256: S twice as often; estimated 1.43x slower at d = 1024).
    static constexpr bool RESIDENT = FROM_PACKED && !CHUNKED;
    using ResidentCfg = MmaTileConfig<CK_CONTRASTIVE_BACKWARD_ROWS, BN, BK, LOGIT_WARPS_M, LOGIT_WARPS_N, E, CHUNK_STRIDE>;
    // The resident own rows, or the stages (a resident sweep has none).
    static constexpr int STAGE_ELEMS = RESIDENT ? Cfg::BM * CHUNK_STRIDE : Cfg::SMEM_ELEMS;
    using Split = bwd::SplitKTile<WARPS / 4>;
    // This thread's warp in H U.
    static __device__ __forceinline__ int u_warp_m() { return (int)(threadIdx.x / 32) / U_WARPS_D; }
    static __device__ __forceinline__ int u_warp_d() { return (int)(threadIdx.x / 32) % U_WARPS_D; }
};

// The split-k logit tile's partner slots (an empty base elsewhere: no bytes).
template <bool SPLIT_K, class Split> struct SplitKScratch {};
template <class Split> struct SplitKScratch<true, Split> {
    float red[Split::RED_FLOATS];
};

template <typename T, int G, bool CHUNKED = false>
struct BackwardShared
    : SplitKScratch<BackwardTraits<T, G, CHUNKED>::SPLIT_K, typename BackwardTraits<T, G, CHUNKED>::Split> {
    using Tr = BackwardTraits<T, G, CHUNKED>;
    T stages[Tr::STAGE_ELEMS];
    T other[Tr::Cfg::BN * Tr::CHUNK_STRIDE];  // the other side's packed rows, one d chunk
    T h[Tr::Cfg::BM * Tr::H_STRIDE];          // H of the tile (f32 for the FFMA engine)
    bwd::ColumnPair cols[Tr::Cfg::BN / 2];    // the tile's per-column data
    bwd::Row rows[Tr::Cfg::BM];               // the sweep's per-row data
};
static_assert(sizeof(BackwardShared<__half, 1>) == CK_CONTRASTIVE_BACKWARD_SMEM_HALF_G1 &&
                  sizeof(BackwardShared<__half, 2>) == CK_CONTRASTIVE_BACKWARD_SMEM_HALF_G2 &&
                  sizeof(BackwardShared<__half, 4>) == CK_CONTRASTIVE_BACKWARD_SMEM_HALF_G4 &&
                  sizeof(BackwardShared<__half, 4, true>) == CK_CONTRASTIVE_BACKWARD_SMEM_HALF_G4_CHUNKED &&
                  sizeof(BackwardShared<float, 1>) == CK_CONTRASTIVE_BACKWARD_SMEM_F32_G1 &&
                  sizeof(BackwardShared<float, 2>) == CK_CONTRASTIVE_BACKWARD_SMEM_F32_G2,
              "params/contrastive.h: the backward's shared memory");

// One tile's H in the sweep's mode, stored to the shared H tile: one uniform branch per tile.
template <class Cfg, int HS, typename T>
__device__ __forceinline__ void tile_h_of_mode(int mode, T* sh_h, const float (&acc)[Cfg::MI][Cfg::NI][4],
                                               const bwd::ColumnPair* cols, const bwd::Row* rows, float m2) {
    if (mode == bwd::kOneExp) bwd::tile_h_store<Cfg, bwd::kOneExp, HS>(sh_h, acc, cols, rows, m2);
    else bwd::tile_h_store<Cfg, bwd::kTwoExp, HS>(sh_h, acc, cols, rows, m2);
}

// Sweeps the column tiles [col_begin, col_end) of `other` (col_begin a multiple of BN); columns:
// contrastive_backward_columns' output for (own, other).
template <typename T, int G, bool CHUNKED>
__device__ __forceinline__ void sweep_other(float (&dacc)[BackwardTraits<T, G, CHUNKED>::U_MI][BackwardTraits<T, G, CHUNKED>::WARP_D / 8][4],
                                            BackwardShared<T, G, CHUNKED>& sh,
                                            const GradSide& own, const GradSide& other, const bwd::ColumnPair* columns, int col_begin, int col_end,
                                            int row0, int dc0, int dp, int d, bool exclude_self, float inv_tau) {
    using Tr = BackwardTraits<T, G, CHUNKED>;
    using Cfg = typename Tr::Cfg;
    const float m2 = inv_tau * kLog2e;
    const int mode = bwd::sweep_mode(m2);
    // f16 / bf16 multiply S from the packed rows (Tr::FROM_PACKED: always aligned, 16-byte copies),
    // whatever the raw rows' alignment; RESIDENT ones keep both sides in shared memory. f32 loads
    // its raw rows element-wise.
    constexpr bool RESIDENT = Tr::RESIDENT, ALIGNED = Tr::FROM_PACKED;
    // Published by the first tile's barriers; the previous sweep's last barrier freed sh.rows.
    for (int r = threadIdx.x; r < Cfg::BM; r += Cfg::THREADS)
        sh.rows[r] = bwd::load_row<Tr::FROM_PACKED>(own, other, row0 + r, mode, inv_tau, m2);
    T* own_rows = sh.stages;  // RESIDENT: the own packed rows [BM][CHUNK_STRIDE], for the whole sweep
    if (RESIDENT && col_begin < col_end) {  // waited for with the first tile's copies (none: no copy)
        bwd::load_rows_async<Cfg::BM, Tr::CHUNK, Tr::CHUNK_STRIDE, Cfg::THREADS>(own_rows, static_cast<const T*>(own.u), dp, row0,
                                                                              dc0);
        cp_async_commit();
    }
    // The column tile holding the block's diagonal, if any (tiles start at multiples of BN, a
    // multiple of BM): own row r is its column row0 - col0 + r.
    const int diagonal_col0 = exclude_self ? row0 - row0 % Cfg::BN : -1;
    T* diagonal_h = sh.h + threadIdx.x * (Tr::H_STRIDE + 1) + row0 % Cfg::BN;  // H_rr for thread r < BM
    const T* other_u = static_cast<const T*>(other.u);
    // S's operands: the packed rows ([count][dp], zero past d) or the raw ones ([count][d]).
    const T* own_s = static_cast<const T*>(Tr::FROM_PACKED ? own.u : own.x);
    const T* other_s = Tr::FROM_PACKED ? other_u : static_cast<const T*>(other.x);
    const int s_d = Tr::FROM_PACKED ? dp : d;
    const T* h_rows = sh.h + Tr::u_warp_m() * Tr::U_MI * 16 * Tr::H_STRIDE;  // this warp's rows of H
    const T* v_cols = sh.other + Tr::u_warp_d() * Tr::WARP_D;               // its columns of d
    constexpr bool SPLIT_K = Tr::SPLIT_K;
    using Epi = typename bwd::Pick<SPLIT_K, typename Tr::Split, Cfg>::type;
    float acc[Epi::MI][Epi::NI][4];
    for (int col0 = col_begin; col0 < col_end; col0 += Cfg::BN) {
        // The B operand of H U and the tile's prepared per-column data are issued first: they land
        // while the logits are recomputed (mma_block_tile's waits drain this group too, whatever the
        // dtype and alignment, and it ends with a barrier). RESIDENT: the rows are the logit tile's
        // operand as well, waited for before it. (The copies' order and form move ptxas' register
        // allocation by up to 18 on some kernels, sm_90a; this one is the best of those tried.)
        const bwd::ColumnPair* tile_columns = columns + col0 / 2;
        if constexpr (sizeof(T) == 2) {
            bwd::load_rows_async<Cfg::BN, Tr::CHUNK, Tr::CHUNK_STRIDE, Cfg::THREADS>(sh.other, other_u, dp, col0, dc0);
            bwd::stage_columns<Cfg::BN, Cfg::THREADS>(sh.cols, tile_columns);
            cp_async_commit();
        } else {
            bwd::stage_columns<Cfg::BN, Cfg::THREADS>(sh.cols, tile_columns);
            cp_async_commit();
            load_tile_sync<Cfg::BN, Tr::CHUNK, Tr::CHUNK_STRIDE, Cfg::THREADS>(sh.other, other_u, other.count, dp, col0, dc0);
        }
        // S once per tile for the whole d (one chunk when G WARP_D >= d).
        if constexpr (RESIDENT) {
            cp_async_wait<0>();
            __syncthreads();  // the rows (own: first tile) and the staged columns are in
            if constexpr (SPLIT_K) bwd::split_k_resident_tile<typename Tr::ResidentCfg, typename Tr::Split>(acc, sh.red, own_rows, sh.other, d);
            else mma_resident_tile<typename Tr::ResidentCfg>(acc, own_rows, sh.other, d);
        } else if constexpr (SPLIT_K)
            bwd::split_k_block_tile<Cfg, typename Tr::Split, ALIGNED>(acc, sh.red, sh.stages, own_s, other_s, own.count, other.count, s_d,
                                                                   row0, col0);
        else
            mma_block_tile<Cfg, ALIGNED>(acc, sh.stages, own_s, other_s, own.count, other.count, s_d, row0, col0);
        if (!RESIDENT && d == 0) {
            cp_async_wait<0>();
            __syncthreads();  // otherwise mma_block_tile's barriers publish the staged columns and sh.other
        }

        tile_h_of_mode<Epi, Tr::H_STRIDE>(mode, sh.h, acc, sh.cols, sh.rows, m2);
        __syncthreads();  // H complete
        if (col0 == diagonal_col0) {  // one tile per sweep: the diagonal is no logit
            if (threadIdx.x < Cfg::BM) *diagonal_h = from_float<T>(0.f);
            __syncthreads();
        }

        // dacc += H U_other over the warp's rows and its columns of d.
        bwd::h_times_tile<Tr::U_MI, Cfg::BN, Tr::WARP_D, Tr::H_STRIDE, Tr::CHUNK_STRIDE>(dacc, h_rows, v_cols);
        __syncthreads();  // sh.other, sh.h and sh.cols are refilled by the next tile
    }
}

template <typename T, int G, bool CHUNKED>
__device__ __forceinline__ void contrastive_backward(const GradSide& own, const GradSide& other, const GradSide& protos,
                                                     const bwd::ColumnPair* columns, const bwd::ColumnPair* proto_columns, int dp,
                                                     int d, int exclude_self, float inv_tau, const float* scalars, float* du,
                                                     int splits) {
    using Tr = BackwardTraits<T, G, CHUNKED>;
    using Cfg = typename Tr::Cfg;
    extern __shared__ __align__(128) unsigned char backward_smem[];
    BackwardShared<T, G, CHUNKED>& sh = *reinterpret_cast<BackwardShared<T, G, CHUNKED>*>(backward_smem);
    const int row0 = blockIdx.x * Cfg::BM, dc0 = blockIdx.y * Tr::CHUNK;
    float dacc[Tr::U_MI][Tr::WARP_D / 8][4];
#pragma unroll
    for (int mi = 0; mi < Tr::U_MI; ++mi)
#pragma unroll
        for (int nb = 0; nb < Tr::WARP_D / 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) dacc[mi][nb][e] = 0.f;

    // This split's slice of the other side's column tiles; the prototypes go with split 0. G = 4
    // is never split (the host launches it with splits = 1): at n = 8192 its 128 blocks, 1 per SM,
    // fill 97 % of a wave; splitting it for small n is not done yet.
    // A block whose own rows are all no anchors (at or past own.anchors: keys, prototypes, rows past
    // anchor_rows) has H_kj = G_jk only: the other side's columns past other.anchors, no anchors
    // either, add exact zeros, and its rows take no prototype terms.
    const bool own_anchors = row0 < own.anchors;
    const int cols = own_anchors ? other.count : min(other.count, other.anchors);
    int split = 0, col_begin = 0, col_end = cols;
    if constexpr (G != 4) {
        split = blockIdx.z;
        const int tiles = (cols + Cfg::BN - 1) / Cfg::BN, per_split = (tiles + splits - 1) / splits;
        col_begin = split * per_split * Cfg::BN;
        col_end = min(cols, (split + 1) * per_split * Cfg::BN);
    }
    // One copy of the sweep for both sides (half the code, and one register allocation).
#pragma unroll 1
    for (int pass = 0; pass < 2; ++pass)
        sweep_other<T, G, CHUNKED>(dacc, sh, own, pass == 0 ? other : protos, pass == 0 ? columns : proto_columns,
                                   pass == 0 ? col_begin : 0,
                                   pass == 0 ? col_end : (split == 0 && own_anchors ? protos.count : 0), row0, dc0, dp, d,
                                   pass == 0 && exclude_self != 0, inv_tau);
    du += (size_t)split * own.count * d;

    const float out_scale = inv_tau * scalars[0];  // 1 / (sigma tau)
    const int wd0 = dc0 + Tr::u_warp_d() * Tr::WARP_D;
#pragma unroll
    for (int mi = 0; mi < Tr::U_MI; ++mi)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int row = row0 + (Tr::u_warp_m() * Tr::U_MI + mi) * 16 + Fragment::row(2 * half);
            // Rows outside the matrix (NormPenaltyOnly) get 0: their column terms were not masked.
            const bool live = row < own.count && !(own.role != nullptr && own.role[row] == kRoleNormPenaltyOnly);
#pragma unroll
            for (int nb = 0; nb < Tr::WARP_D / 8; ++nb) {
                const int col = wd0 + nb * 8 + Fragment::col(0);
                store_pair<float>(du, own.count, d, row, col, live ? dacc[mi][nb][half * 2] * out_scale : 0.f,
                                  live ? dacc[mi][nb][half * 2 + 1] * out_scale : 0.f, d % 2 == 0);
            }
        }
}

// SCALED (contrastive_pack_*): u = x / 2^e with 2^e = pow2_floor(max(||x||, eps)): exact in T (an
// exponent shift; only parts below T's subnormals of a row whose norm is far above 1 are lost),
// into rows of dp >= d elements (zero padded to a multiple of 8, so the backward's loads are whole
// aligned 16-byte chunks). One warp per row.
constexpr int kPackThreads = CK_CONTRASTIVE_ROW_THREADS;
static_assert(CK_CONTRASTIVE_ROWS_PER_ROW_BLOCK * 32 == kPackThreads, "one warp per row");

// SCALED = false (contrastive_pad_*): x copied as it is (the factor 1 is exact) into the same
// zero-padded rows: the forward's f16 / bf16 operands where the caller's rows cannot be read by
// 16-byte copies (d % 8 != 0 or a base not 16-byte aligned), so that the one aligned kernel serves
// them; the zero columns add exact zeros to every product.
template <typename T, bool SCALED>
__device__ void copy_padded_rows(const T* __restrict__ x, int n, int d, int dp, T* __restrict__ u) {
    const int lane = threadIdx.x % 32;
    const long row = (long)blockIdx.x * (kPackThreads / 32) + threadIdx.x / 32;
    if (row >= n) return;
    const T* xr = x + row * d;
    const float inv_scale = SCALED ? inv_pow2_floor(norm_denominator(warp_row_norm(xr, d))) : 1.f;
    T* ur = u + row * dp;
    for (int j = lane; j < dp; j += 32) ur[j] = from_float<T>(j < d ? to_float(xr[j]) * inv_scale : 0.f);
}

// Per-row coefficients of the backward, one block:
//   c_i = upstream_i w_i / divisor for anchors with a positive (upstream_i = upstream[0] unless
//   per_row; divisor = the number of anchor rows when mean, else 1), 0 otherwise (rows at or past
//   anchor_rows are no anchors: their positives are not read);
//   coef_a = sigma c_i scale, coef_b = coef_a / |P(i)|;
//   scalars[0] = 1 / sigma, scalars[1] = the number of NormPenaltyOnly rows.
constexpr int kPrepareThreads = CK_CONTRASTIVE_SINGLE_BLOCK_THREADS;

// upstream_i w_i scale for anchors with a positive, else 0 (before the division by the count).
__device__ __forceinline__ float anchor_weight(int i, const unsigned char* role, const float* weight,
                                               const int* positives, const float* upstream, int per_row, float scale,
                                               int anchor_rows) {
    const unsigned char r = role != nullptr ? role[i] : kRoleAnchor;
    if (r != kRoleAnchor || i >= anchor_rows || positives[i] == 0) return 0.f;
    return (per_row ? upstream[i] : upstream[0]) * (weight != nullptr ? weight[i] : 1.f) * scale;
}

__device__ void contrastive_backward_prepare(const unsigned char* role, const float* weight, const int* positives,
                                             const float* upstream, int per_row, int mean, float scale, int n,
                                             int anchor_rows, float* coef_a, float* coef_b, float* scalars) {
    __shared__ float f_scratch[kPrepareThreads / 32];
    __shared__ int i_scratch[kPrepareThreads / 32];
    __shared__ float s_factor;
    float local_max = 0.f;
    int penalized = 0, anchors = 0;
    // Not unrolled: at 1024 threads a thread has 64 registers, and unrolled bodies spill.
#pragma unroll 1
    for (int i = threadIdx.x; i < n; i += kPrepareThreads) {
        local_max = fmaxf(local_max, fabsf(anchor_weight(i, role, weight, positives, upstream, per_row, scale, anchor_rows)));
        const unsigned char r = role != nullptr ? role[i] : kRoleAnchor;
        penalized += r == kRoleNormPenaltyOnly;
        anchors += r == kRoleAnchor && i < anchor_rows;
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
        const float a = factor * anchor_weight(i, role, weight, positives, upstream, per_row, scale, anchor_rows);
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
static_assert(ck::ForwardTile::BM == CK_CONTRASTIVE_FORWARD_ROWS && ck::ForwardTileF32::BM == CK_CONTRASTIVE_FORWARD_ROWS &&
                  ck::ForwardTile::BN == CK_CONTRASTIVE_FORWARD_COLS && ck::ForwardTileF32::BN == CK_CONTRASTIVE_FORWARD_COLS,
              "params/contrastive.h");
static_assert(ck::ForwardTile::THREADS == CK_CONTRASTIVE_FORWARD_THREADS && ck::ForwardTileF32::THREADS == CK_CONTRASTIVE_FORWARD_THREADS,
              "params/contrastive.h");
static_assert(sizeof(CkGradSide) == 88, "10 pointers, 2 ints");

// `_online`: the online-max epilogue (small tau). Only the fixed-offset f16 / bf16 kernels, the
// fast path, fit two blocks per SM (at most 128 registers, no spill); the online epilogue and the
// f32 FFMA engine's operands need more, so those ask for one. No `_unaligned` form: f16 / bf16 rows
// that 16-byte copies cannot read are padded first (contrastive_pad_*, the host), and f32 loads
// element-wise (ALIGNED = false) whatever the alignment.
#define CK_CONTRASTIVE_FORWARD(name, type, suffix, aligned, fixed, blocks)                                    \
    extern "C" __global__ void __launch_bounds__(CK_CONTRASTIVE_FORWARD_THREADS, blocks)                      \
        contrastive_forward_##name##suffix(const __grid_constant__ CkContrastiveForwardParams p) {           \
        ck::contrastive_forward<type, aligned, fixed>(p);                                                     \
    }

#define CK_CONTRASTIVE_FORWARD_ALL(name, type, aligned, blocks)                                              \
    CK_CONTRASTIVE_FORWARD(name, type, , aligned, true, blocks)                                                \
    CK_CONTRASTIVE_FORWARD(name, type, _online, aligned, false, CK_CONTRASTIVE_FORWARD_BLOCKS_PER_SM_SLOW)

CK_CONTRASTIVE_FORWARD_ALL(f16, __half, true, CK_CONTRASTIVE_FORWARD_BLOCKS_PER_SM)
CK_CONTRASTIVE_FORWARD_ALL(bf16, __nv_bfloat16, true, CK_CONTRASTIVE_FORWARD_BLOCKS_PER_SM)
CK_CONTRASTIVE_FORWARD_ALL(f32, float, false, CK_CONTRASTIVE_FORWARD_BLOCKS_PER_SM_SLOW)

// `_sym_`: the self geometry's symmetric form (fixed offset only: a row's and a column's online
// maxima differ), with the fast path's register budget where it fits.
#define CK_CONTRASTIVE_FORWARD_SYM(name, type, suffix, aligned, blocks)                                       \
    extern "C" __global__ void __launch_bounds__(CK_CONTRASTIVE_FORWARD_THREADS, blocks)                      \
        contrastive_forward_sym_##name##suffix(const __grid_constant__ CkContrastiveForwardParams p) {       \
        ck::contrastive_forward_sym<type, aligned>(p);                                                        \
    }
CK_CONTRASTIVE_FORWARD_SYM(f16, __half, , true, CK_CONTRASTIVE_FORWARD_BLOCKS_PER_SM)
CK_CONTRASTIVE_FORWARD_SYM(bf16, __nv_bfloat16, , true, CK_CONTRASTIVE_FORWARD_BLOCKS_PER_SM)
CK_CONTRASTIVE_FORWARD_SYM(f32, float, , false, CK_CONTRASTIVE_FORWARD_BLOCKS_PER_SM_SLOW)

extern "C" __global__ void __launch_bounds__(CK_CONTRASTIVE_FORWARD_COLS)
    contrastive_forward_columns(const __grid_constant__ CkContrastiveColumnsParams p) {
    ck::contrastive_forward_columns(p);
}

extern "C" __global__ void __launch_bounds__(CK_CONTRASTIVE_MERGE_THREADS)
    contrastive_forward_merge(const __grid_constant__ CkContrastiveForwardMergeParams p) {
    ck::contrastive_forward_merge(p);
}

// No `_unaligned` form: f16 / bf16 multiply S from the packed rows (always aligned, zero padded to
// dp), f32 loads its raw rows element-wise whatever their alignment (BackwardTraits::FROM_PACKED).
// `_g{G}`: G d-groups (BackwardTraits::THREADS: 128 G threads, f16 / bf16 G = 4: 256), dynamic shared memory
// CK_CONTRASTIVE_BACKWARD_SMEM_*_G{G}; `_chunked`: d over one chunk (grid.y chunks).
#define CK_CONTRASTIVE_BACKWARD_KERNEL_AS(name, type, groups, chunked, suffix)                                 \
    extern "C" __global__ void __launch_bounds__(ck::BackwardTraits<type, groups, chunked>::THREADS, 1)          \
        contrastive_backward_##name##_g##groups##suffix(const __grid_constant__ CkContrastiveBackwardParams p) { \
        ck::contrastive_backward<type, groups, chunked>(                                                       \
            p.own, p.other, p.protos, static_cast<const ck::bwd::ColumnPair*>(p.columns),                          \
            static_cast<const ck::bwd::ColumnPair*>(p.proto_columns), p.dp, p.d, p.exclude_self, p.inv_tau, p.scalars, \
            p.du, p.splits);                                                                                     \
    }
#define CK_CONTRASTIVE_BACKWARD_KERNEL(name, type, groups) CK_CONTRASTIVE_BACKWARD_KERNEL_AS(name, type, groups, false, )
// G = 4 (256 threads, 227 registers: the 128 gradient accumulators, the logit tile's BK = 64
// stages) only for f16 / bf16: the f32 FFMA engine spilled there (ptxas sm_90a), so it stops at
// G = 2 (params/contrastive.h).
#define CK_CONTRASTIVE_BACKWARD(name, type)                                                                    \
    CK_CONTRASTIVE_BACKWARD_KERNEL(name, type, 1)                                                              \
    CK_CONTRASTIVE_BACKWARD_KERNEL(name, type, 2)                                                              \
    extern "C" __global__ void __launch_bounds__(ck::kPackThreads)                                             \
        contrastive_pack_##name(const __grid_constant__ CkContrastivePackParams p) {                           \
        ck::copy_padded_rows<type, true>(static_cast<const type*>(p.x), p.n, p.d, p.dp, static_cast<type*>(p.u)); \
    }

CK_CONTRASTIVE_BACKWARD(f32, float)
CK_CONTRASTIVE_BACKWARD(f16, __half)
CK_CONTRASTIVE_BACKWARD(bf16, __nv_bfloat16)
CK_CONTRASTIVE_BACKWARD_KERNEL(f16, __half, 4)
CK_CONTRASTIVE_BACKWARD_KERNEL(bf16, __nv_bfloat16, 4)
// d over 512 (f16 / bf16): chunks of 512 columns, S once per chunk from the stages (two per tile at
// d = 1024 where G = 2 chunks of 256 took four).
CK_CONTRASTIVE_BACKWARD_KERNEL_AS(f16, __half, 4, true, _chunked)
CK_CONTRASTIVE_BACKWARD_KERNEL_AS(bf16, __nv_bfloat16, 4, true, _chunked)

// The forward's padded operands (copy_padded_rows unscaled; f16 / bf16 only: f32 loads element-wise).
#define CK_CONTRASTIVE_PAD(name, type)                                                                         \
    extern "C" __global__ void __launch_bounds__(ck::kPackThreads)                                             \
        contrastive_pad_##name(const __grid_constant__ CkContrastivePackParams p) {                            \
        ck::copy_padded_rows<type, false>(static_cast<const type*>(p.x), p.n, p.d, p.dp, static_cast<type*>(p.u)); \
    }
CK_CONTRASTIVE_PAD(f16, __half)
CK_CONTRASTIVE_PAD(bf16, __nv_bfloat16)

// Every column tile's per-column data for one backward sweep (bwd::column_data), in the layout a
// block stages: one 2048-byte copy per tile instead of per-tile gathers, a division and an
// exponential per column in every block. One thread per column.
static_assert(CK_CONTRASTIVE_BACKWARD_COLUMN_TILE_BYTES == CK_CONTRASTIVE_BACKWARD_ROWS * sizeof(ck::bwd::Column),
              "params/contrastive.h: a backward column tile");
extern "C" __global__ void __launch_bounds__(CK_CONTRASTIVE_BACKWARD_ROWS)
    contrastive_backward_columns(const __grid_constant__ CkBackwardColumnsParams p) {
    const float m2 = p.inv_tau * ck::kLog2e;
    const int col = blockIdx.x * CK_CONTRASTIVE_BACKWARD_ROWS + threadIdx.x;
    ck::bwd::store_column(static_cast<ck::bwd::ColumnPair*>(p.out), col,
                          ck::bwd::column_data(p.own, p.other, col, p.packed != 0, ck::bwd::sweep_mode(m2), p.inv_tau, m2));
}

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
    ck::contrastive_backward_prepare(p.role, p.weight, p.positives, p.upstream, p.per_row, p.mean, p.scale, p.n,
                                     p.anchor_rows, p.coef_a, p.coef_b, p.scalars);
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
    ck::contrastive_reduce(p);
}
