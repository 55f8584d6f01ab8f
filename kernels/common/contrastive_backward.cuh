// Pieces of the fused contrastive backward (kernels/contrastive.cu): the per-column data of a
// logit tile staged in shared memory once per tile, the per-row data kept in registers, and the
// epilogue that turns a recomputed logit tile into H (DESIGN.md section 4) with base-2 exponentials.
// The self geometry's diagonal is no logit: the caller zeroes it in the stored H tile.
//
// Logits, as the forward computes them (kernels/common/logits.cuh, the one convention):
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
#include "logits.cuh"
#include "norm.cuh"
#include "tile.cuh"

namespace ck {
namespace bwd {

// 2 m2 at most 100: e >= 2^-100, and the per-row factor 2^(m2 - lse2) <= 2^(2 m2) <= 2^100 times a
// coefficient below 2^14 (contrastive_backward_prepare's sigma) stays far from f32's 2^128.
// tau >= 2 log2(e) / 100 ~ 0.0289 (DESIGN.md: 2 / tau < ~80 in natural units).
constexpr float kOneExpMaxRange = 100.f;

// How a tile's H entry is formed, chosen once per sweep from the temperature (a uniform branch):
// kOneExp while 2 m2 <= kOneExpMaxRange, else kTwoExp. Both serve every pass: where a side has no
// anchors (pairwise anchors x keys, keys x anchors, prototypes) its coefficients are 0, so kOneExp
// spends one exponential per logit in every geometry and kTwoExp two.
enum Mode : int { kTwoExp = 0, kOneExp = 1 };

// Per-column data of one column tile (32 bytes, shared by the thread's two rows).
//   rinv, cscale: the logit factors (0 past the end);
//   coef: the column's anchor weight coef_a (kOneExp: coef_a 2^(m2 - lse2) w, the per-column
//         factor and w folded in), 0 when the column is no anchor;  coef_b: its per-positive
//         weight (kOneExp: times w);
//   lse2: the column's base-2 LSE (m2 when it is no anchor, so 2^(t - lse2) <= 1 stays finite);
//   w:    2^e_j / max(|x_j|, eps): the packed row x_j / 2^e_j times w is u_j; 0 for a column outside
//         the matrix (past the end, NormPenaltyOnly), which selects H = 0;
//   key:  instance id (prototype tiles: the prototype's index; prototypes as own rows: the
//         column's proto_of);  label: class id, or -1 (never equal to a row's label key).
struct Column {
    float cscale, coef, coef_b, w;
    int key, label;
    float rinv, lse2;
};

// Two adjacent columns 2p and 2p + 1, as prepared and staged (64 bytes, 16-byte lines): a thread's
// accumulator pairs cover both (tile_h_store), so the one-exponential path reads them in three
// LDS.128 (the two heads and the keys) where two Columns took two LDS.128 and two LDS.64 (estimated
// 8 instructions of 800 per warp and tile at G = 1, sm_90a); the two-exponential path adds the tails.
struct ColumnPair {
    float4 head[2];  // column e: cscale, coef, coef_b, w
    int4 keys;       // key_0, label_0, key_1, label_1
    float4 tails;    // rinv_0, lse2_0, rinv_1, lse2_1
};
static_assert(sizeof(ColumnPair) == 2 * sizeof(Column), "the prepared tiles' bytes per column");

// Column e of a pair: TAILS (the two-exponential path) reads rinv and lse2, else they stay unset.
template <bool TAILS>
__device__ __forceinline__ void load_column_pair(Column (&c)[2], const ColumnPair& p) {
    const int4 keys = p.keys;
    float4 tails = make_float4(0.f, 0.f, 0.f, 0.f);
    if constexpr (TAILS) tails = p.tails;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        const float4 h = p.head[e];
        c[e] = Column{h.x, h.y, h.z, h.w, e == 0 ? keys.x : keys.z, e == 0 ? keys.y : keys.w, e == 0 ? tails.x : tails.z,
                      e == 0 ? tails.y : tails.w};
    }
}

// Stores column `col`'s data into its pair (contrastive_backward_columns).
__device__ __forceinline__ void store_column(ColumnPair* pairs, int col, const Column& k) {
    ColumnPair& p = pairs[col / 2];
    const int e = col % 2;
    p.head[e] = make_float4(k.cscale, k.coef, k.coef_b, k.w);
    reinterpret_cast<int2*>(&p.keys)[e] = make_int2(k.key, k.label);
    reinterpret_cast<float2*>(&p.tails)[e] = make_float2(k.rinv, k.lse2);
}

// An own row's data for one sweep, staged in shared memory at the sweep's start and read per tile
// (registers are the scarce resource: the block's gradient accumulators fill half the file).
// The one-exponential path reads the first 20 bytes (rinv, coef, coef_b, key; label).
struct Row {
    float rinv, coef, coef_b;  // rinv: 0 outside the matrix (past the end, NormPenaltyOnly); coef,
                               // coef_b as Column's (coef: kOneExp folds 2^(m2 - lse2) in)
    int key, label;            // label: the class id, or INT_MIN where labels make no positive
    int pad;
    float cscale, lse2;        // 0 / as Column's
};
static_assert(sizeof(Row) == 32, "two 16-byte loads");


// Row i of `side` as an anchor (Column's and Row's coef, coef_b, lse2), when it is one in this pass:
// its base-2 LSE and coefficients, kOneExp folding 2^(m2 - lse2) into coef.
template <class Data>
__device__ __forceinline__ void set_anchor_terms(Data& k, const CkGradSide& side, int i, int mode, float m2) {
    if (side.lse != nullptr && side.coef_a[i] != 0.f) {
        k.lse2 = side.lse[i] * kLog2e;
        k.coef = side.coef_a[i];
        k.coef_b = side.coef_b[i];
        if (mode == kOneExp) k.coef *= ex2_approx(m2 - k.lse2);
    }
}

// The data of column `col` of `other` for a sweep of `own` (contrastive_backward_columns: once per
// pass, not per tile and block).
// packed: the logit tile is multiplied from the packed rows x / 2^e (exact): the logit factors
// carry 2^e (rinv -> w, cscale -> 2^e cscale, both exact), so t comes out bitwise the same.
__device__ __forceinline__ Column column_data(const CkGradSide& own, const CkGradSide& other, int col, bool packed,
                                              int mode, float inv_tau, float m2) {
    Column k{0.f, 0.f, 0.f, 0.f, -1, -1, 0.f, m2};
    if (col < other.count && !(other.role != nullptr && other.role[col] == CK_CONTRASTIVE_ROLE_NORM_PENALTY_ONLY)) {
        const float denom = norm_denominator(other.norms[col]);
        const float rinv = logit_row_inverse(other.norms[col]);
        k.w = pow2_floor(denom) * rinv;
        k.rinv = packed ? k.w : rinv;
        k.cscale = logit_scale(k.rinv, inv_tau);
        if (other.instance == nullptr) {
            k.key = col;  // prototype columns: a row's own prototype is its positive
        } else if (own.instance == nullptr) {
            k.key = other.proto_of != nullptr ? other.proto_of[col] : -1;  // prototypes as own rows
        } else {
            k.key = other.instance[col];
            k.label = other.label != nullptr ? other.label[col] : -1;
        }
        set_anchor_terms(k, other, col, mode, m2);
        if (mode == kOneExp) {  // h_entry's FFMAs: (o.coef + c.coef) w as o.coef w + c.coef w
            k.coef *= k.w;
            k.coef_b *= k.w;
        }
    }
    return k;
}

// Stages a column tile's prepared data (BN / 2 ColumnPairs of contrastive_backward_columns' output)
// in shared memory: one 16-byte chunk per thread by cp.async, which the caller commits and waits for.
// (A grid-stride loop here compiled to a 4-way unrolled loop with a remainder: ptxas does not
// bound threadIdx.x by the launch bounds.)
template <int BN, int THREADS>
__device__ __forceinline__ void stage_columns(ColumnPair* cols, const ColumnPair* __restrict__ tile) {
    constexpr int CHUNKS = BN / 2 * (int)sizeof(ColumnPair) / 16;
    static_assert(CHUNKS % THREADS == 0 || CHUNKS < THREADS, "the same chunks per thread, or at most one");
#pragma unroll
    for (int i = 0; i < (CHUNKS + THREADS - 1) / THREADS; ++i) {
        const int c = (int)threadIdx.x + i * THREADS;
        if (CHUNKS % THREADS == 0 || c < CHUNKS)
            cp_async_16(reinterpret_cast<uint4*>(cols) + c, reinterpret_cast<const uint4*>(tile) + c, 16);
    }
}

// An own row's data for a sweep over `other` (its positive key depends on the other side).
// PACKED: as column_data's packed.
template <bool PACKED = false>
__device__ __forceinline__ Row load_row(const CkGradSide& own, const CkGradSide& other, int row, int mode,
                                        float inv_tau, float m2) {
    Row r{0.f, 0.f, 0.f, INT_MIN, INT_MIN, 0, 0.f, m2};
    if (row >= own.count || (own.role != nullptr && own.role[row] == CK_CONTRASTIVE_ROLE_NORM_PENALTY_ONLY)) return r;
    r.rinv = logit_row_inverse(own.norms[row]);
    if (PACKED) r.rinv *= pow2_floor(norm_denominator(own.norms[row]));
    r.cscale = logit_scale(r.rinv, inv_tau);
    if (own.instance == nullptr) {
        r.key = row;  // a prototype: positive of the anchors whose proto_of names it
    } else if (other.instance == nullptr) {
        r.key = own.proto_of != nullptr ? own.proto_of[row] : -1;  // against prototype columns (-1: none)
    } else {
        r.key = own.instance[row];
        const int label = own.label != nullptr ? own.label[row] : -1;
        r.label = label >= 0 ? label : INT_MIN;
    }
    set_anchor_terms(r, own, row, mode, m2);
    return r;
}

// The mode of a sweep at this temperature.
__device__ __forceinline__ int sweep_mode(float m2) { return 2.f * m2 <= kOneExpMaxRange ? kOneExp : kTwoExp; }

// Stores H entries (row, col), (row, col + 1) of the shared H tile (col even): T for the tensor
// cores, f32 for the FFMA engine.
template <typename T> __device__ __forceinline__ void store_h_pair(T* h, float v0, float v1) {
    if constexpr (sizeof(T) == 4) *reinterpret_cast<float2*>(h) = make_float2(v0, v1);
    else *reinterpret_cast<uint32_t*>(h) = pack_pair<T>(v0, v1);
}

// One H entry of logit accumulator a between own row o and column c. Branch-free: masks are
// selects or zero factors.
template <int MODE>
__device__ __forceinline__ float h_entry(float a, const Column& c, const Row& o, float m2) {
    const bool positive = c.key == o.key || c.label == o.label;
    if constexpr (MODE == kTwoExp) {
        // An exponent may overflow outside A(k) (a masked column): select, not multiply.
        const float v = o.coef * ex2_approx((a * o.rinv) * c.cscale - o.lse2) +
                        c.coef * ex2_approx((a * c.rinv) * o.cscale - c.lse2) - (positive ? o.coef_b + c.coef_b : 0.f);
        return c.w != 0.f ? v * c.w : 0.f;
    } else {
        // (e (o.coef + coef_a') - [positive] (o.coef_b + coef_b)) w, with Column's coef and coef_b
        // carrying w: three FFMAs. e <= ~1 and finite coefficients: a masked column's w = 0 (and
        // so its coef and coef_b) gives exactly 0.
        const float ek = ex2_approx((a * o.rinv) * c.cscale - m2);
        const float pos = positive ? fmaf(o.coef_b, c.w, c.coef_b) : 0.f;
        return fmaf(ek, fmaf(o.coef, c.w, c.coef), -pos);
    }
}

// H of a logit tile (this thread's accumulators acc, Cfg's fragment layout) stored to the shared H
// tile h (row stride HS; T: the input dtype, f32 for the FFMA engine). Column by column pair: each
// column's data is read once per tile and each pair stored as soon as it is formed (the rows' data,
// read first, stays in registers; loaded per m16 fragment with the stores in between, every
// column would be read again, since a store to h may alias them for the compiler).
template <class Cfg, int MODE, int HS, typename T>
__device__ __forceinline__ void tile_h_store(T* h, const float (&acc)[Cfg::MI][Cfg::NI][4], const ColumnPair* cols,
                                             const Row* rows, float m2) {
    Row mine[Cfg::MI][2];
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
        for (int half = 0; half < 2; ++half) mine[mi][half] = rows[Cfg::acc_row(mi, 2 * half)];
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni) {
        Column c[2];  // columns acc_col(ni, 0) (even) and acc_col(ni, 1) = acc_col(ni, 0) + 1: one pair
        load_column_pair<MODE == kTwoExp>(c, cols[Cfg::acc_col(ni, 0) / 2]);
#pragma unroll
        for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
            for (int half = 0; half < 2; ++half)
                store_h_pair<T>(h + Cfg::acc_row(mi, 2 * half) * HS + Cfg::acc_col(ni, 0),
                                h_entry<MODE>(acc[mi][ni][half * 2], c[0], mine[mi][half], m2),
                                h_entry<MODE>(acc[mi][ni][half * 2 + 1], c[1], mine[mi][half], m2));
    }
}

// Packed rows [row0, row0 + ROWS) x columns [k0, k0 + COLS) of a row-major matrix of leading
// dimension ld (a multiple of 8, 16-byte aligned) into a [ROWS][STRIDE] tile, zeros past column ld.
// The packed copies hold whole tiles of rows (contrastive_pack_*'s buffers are zero padded to a
// multiple of WIDE_COLS rows, the widest tile), so no row is checked: one 64-bit address per thread, stepped by
// ROW_STEP rows, and a loop-invariant size (0 past ld: a pure zero fill that reads nothing) make a
// copy one address product-add and one cp.async.
template <int ROWS, int COLS, int STRIDE, int THREADS, typename T>
__device__ __forceinline__ void load_rows_async(T* smem, const T* __restrict__ g, int ld, int row0, int k0) {
    constexpr int CHUNKS_PER_ROW = COLS / 8;
    static_assert(THREADS % CHUNKS_PER_ROW == 0 && ROWS % (THREADS / CHUNKS_PER_ROW) == 0, "whole rows per step");
    constexpr int ROW_STEP = THREADS / CHUNKS_PER_ROW;
    const int r0 = (int)(threadIdx.x / CHUNKS_PER_ROW), kc = (int)(threadIdx.x % CHUNKS_PER_ROW) * 8;
    const bool inside = k0 + kc < ld;
    const char* src = reinterpret_cast<const char*>(inside ? g + (size_t)(row0 + r0) * ld + k0 + kc : g);
    const unsigned row_elems = inside ? (unsigned)ld : 0u;
    const int bytes = inside ? 16 : 0;
    T* dst = smem + r0 * STRIDE + kc;
    // Copy it: its source address is src plus a 32 x 32 -> 64-bit product (ld times a constant): one
    // IMAD.WIDE.U32 (a 64-bit pointer step took two instructions per copy, sm_90a).
#pragma unroll
    for (int it = 0; it < ROWS / ROW_STEP; ++it)
        cp_async_16(dst + it * ROW_STEP * STRIDE,
                    src + (unsigned long long)row_elems * (unsigned)(it * ROW_STEP * sizeof(T)), bytes);
}

// acc[mi][nb] += H V for a warp's MI x 16 rows: H (MI 16 x K, row stride HS) and V (K x N, row
// stride VS) both in shared memory; acc in the C-fragment layout (tile_config.cuh's Fragment).
// Tensor cores for f16 / bf16 (H read by ldmatrix as the A fragments, V by ldmatrix.trans as the
// "col" B fragments): each B fragment serves MI MMAs, each A fragment N / 8.
template <int MI, int K, int N, int HS, int VS, typename T>
__device__ __forceinline__ void h_times_tile_mma(float (&acc)[MI][N / 8][4], const T* h, const T* v) {
    const int lane = threadIdx.x % 32;
    // Rolled over k: one k step is MI N / 8 independent MMAs already, and unrolled the loads of the
    // next steps would hold registers the block's accumulators need.
#pragma unroll 1
    for (int kk = 0; kk < K / 16; ++kk) {
        uint32_t a[MI][4];
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) ldmatrix_x4(a[mi], h + (mi * 16 + lane % 16) * HS + kk * 16 + (lane / 16) * 8);
        const int m = lane / 8;
        const T* base = v + (kk * 16 + (m % 2) * 8 + lane % 8) * VS + (m / 2) * 8;
#pragma unroll
        for (int nb = 0; nb < N / 8; nb += 2) {
            uint32_t r[4];
            ldmatrix_x4_trans(r, base + nb * 8);
            const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) {
                Mma16816<T>::run(acc[mi][nb], a[mi], b0);
                Mma16816<T>::run(acc[mi][nb + 1], a[mi], b1);
            }
        }
    }
}

// The logit tile of an 8-warp block (G = 2, 4), split over k: with 8 warps on 64 x 64 every warp
// would own a 16 x 32 piece whose B fragments serve one m16 fragment (5 x4-ldmatrix per 4 MMAs).
// Instead k-half q = warp / (2 WN) of every stage goes to 2 x WN warps of 32 x 64 / WN (WN = 2:
// 32 x 32, 4 x4 per 8 MMAs; WN = 4, a 16-warp block: 32 x 16, 3 per 4), and
// the two partial tiles are added through shared memory: each warp keeps m16 fragment q of its
// piece and hands the other to its partner of the other k-half (f32 addition commutes: both
// partners form the same bits). The view after the reduction, as a tile config for the epilogue
// (tile_h, acc_row / acc_col): one m16 fragment, NI n8 ones.
template <bool B, class A, class C> struct Pick { using type = A; };
template <class A, class C> struct Pick<false, A, C> { using type = C; };

template <int WN> struct SplitKTile {
    static constexpr int MI = 1, NI = 64 / WN / 8, HALF_WARPS = 2 * WN;
    static __device__ __forceinline__ int warp() { return (int)(threadIdx.x / 32); }
    static __device__ __forceinline__ int half() { return warp() / HALF_WARPS; }         // q: the k-half
    static __device__ __forceinline__ int warp_m() { return (warp() % HALF_WARPS) / WN; }  // of 32 rows
    static __device__ __forceinline__ int warp_n() { return warp() % WN; }                 // of 64 / WN columns
    static __device__ __forceinline__ int acc_row(int mi, int e) {
        return warp_m() * 32 + (half() + mi) * 16 + Fragment::row(e);
    }
    static __device__ __forceinline__ int acc_col(int ni, int e) {
        return warp_n() * (64 / WN) + ni * 8 + Fragment::col(e);
    }
    // The partners' shared slots: [k-half][warp % HALF_WARPS][n8 fragment][lane][4] floats.
    static constexpr int RED_FLOATS = 2 * HALF_WARPS * NI * 32 * 4;
};

// The split-k engine of tile.cuh's mma_block_tile: acc[mi][ni] (the warp's 32 x 64 / WN piece, its
// k-half only) over one stage of Cfg (64 x BK).
template <class Split> struct SplitKEngine {
    template <class Cfg, bool TRANS_A, bool TRANS_B, typename T>
    static __device__ __forceinline__ void stage(float (&acc)[2][Split::NI][4], const T* sA, const T* sB) {
        static_assert(!TRANS_A && !TRANS_B, "the split-k engine reads \"rows\" operands");
        constexpr int S = Cfg::SMEM_STRIDE;
        const int lane = threadIdx.x % 32;
        const int m0 = Split::warp_m() * 32, n0 = Split::warp_n() * (Split::NI * 8);
#pragma unroll
        for (int ks = 0; ks < Cfg::BK / 32; ++ks) {
            const int kk = Split::half() * (Cfg::BK / 2) + ks * 16;
            uint32_t a[2][4], b[Split::NI][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)  // acc[0]: the m16 fragment this k-half keeps (split_k_reduce)
                ldmatrix_x4(a[mi], sA + (m0 + (mi ^ Split::half()) * 16 + lane % 16) * S + kk + (lane / 16) * 8);
#pragma unroll
            for (int ni = 0; ni < Split::NI; ni += 2) {
                uint32_t r[4];
                ldmatrix_x4(r, sB + (n0 + ni * 8 + lane % 8 + (lane / 16) * 8) * S + kk + ((lane / 8) % 2) * 8);
                b[ni][0] = r[0];
                b[ni][1] = r[1];
                b[ni + 1][0] = r[2];
                b[ni + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < Split::NI; ++ni) Mma16816<T>::run(acc[mi][ni], a[mi], b[ni]);
        }
    }
};

// tile.cuh's mma_block_tile with the split-k engine, then the reduction of the two k-halves into
// out (Split's view). red: Split::RED_FLOATS floats of shared memory. Its barriers publish what the
// caller staged before it (as mma_block_tile's do); red is free again after the caller's next
// barrier.
template <class Split>
__device__ __forceinline__ void split_k_reduce(float (&out)[1][Split::NI][4], const float (&acc)[2][Split::NI][4], float* red);

template <class Cfg, class Split, bool ALIGNED, typename T>
__device__ __forceinline__ void split_k_block_tile(float (&out)[1][Split::NI][4], float* red, T* smem,
                                                   const T* __restrict__ A, const T* __restrict__ B, int m, int n, int d,
                                                   int row0, int col0) {
    static_assert(sizeof(T) == 2 && Cfg::THREADS == 2 * Split::HALF_WARPS * 32 && Cfg::BM == 64 && Cfg::BN == 64 &&
                      Cfg::BK % 32 == 0,
                  "two k-halves of 2 x WN warps of 32 x 64 / WN");
    float acc[2][Split::NI][4];
    mma_block_tile<Cfg, ALIGNED, false, false, T, SplitKEngine<Split>>(acc, smem, A, B, m, n, d, row0, col0);
    split_k_reduce<Split>(out, acc, red);
}

// The same over operands resident in shared memory (Cfg's stride; tile.cuh's mma_resident_tile):
// the caller's barrier publishes them, and red is free (the caller's previous tile ended with one).
template <class Cfg, class Split, typename T>
__device__ __forceinline__ void split_k_resident_tile(float (&out)[1][Split::NI][4], float* red, const T* sA, const T* sB, int d) {
    static_assert(sizeof(T) == 2 && Cfg::THREADS == 2 * Split::HALF_WARPS * 32 && Cfg::BM == 64 && Cfg::BN == 64 &&
                      Cfg::BK % 32 == 0,
                  "two k-halves of 2 x WN warps of 32 x 64 / WN");
    float acc[2][Split::NI][4];
    mma_resident_tile<Cfg, T, SplitKEngine<Split>>(acc, sA, sB, d);
    split_k_reduce<Split>(out, acc, red);
}

// The two k-halves' partial tiles added through shared memory (red: Split::RED_FLOATS floats):
// each warp keeps m16 fragment q of its piece and hands the other to its partner.
template <class Split>
__device__ __forceinline__ void split_k_reduce(float (&out)[1][Split::NI][4], const float (&acc)[2][Split::NI][4], float* red) {
    constexpr int NI = Split::NI;
    // SplitKEngine puts the kept fragment (q) in acc[0] and the partner's (1 - q) in acc[1]: no
    // selects by q here (they cost 2 instructions per logit at G = 4).
    const int lane = threadIdx.x % 32, q = Split::half(), w = Split::warp() % Split::HALF_WARPS;
    float4* mine = reinterpret_cast<float4*>(red) + ((q * Split::HALF_WARPS + w) * NI) * 32 + lane;
#pragma unroll
    for (int ni = 0; ni < NI; ++ni) mine[ni * 32] = make_float4(acc[1][ni][0], acc[1][ni][1], acc[1][ni][2], acc[1][ni][3]);
    __syncthreads();
    const float4* theirs = reinterpret_cast<const float4*>(red) + (((1 - q) * Split::HALF_WARPS + w) * NI) * 32 + lane;
#pragma unroll
    for (int ni = 0; ni < NI; ++ni) {
        const float4 t = theirs[ni * 32];
        const float theirs_e[4] = {t.x, t.y, t.z, t.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) out[0][ni][e] = acc[0][ni][e] + theirs_e[e];
    }
}

// f32: exact FFMA, the same accumulator elements (rows group, group + 8; columns 2 quad + {0, 1}).
template <int K, int N, int HS, int VS>
__device__ __forceinline__ void h_times_tile_ffma(float (&acc)[N / 8][4], const float* h, const float* v) {
    const int group = Fragment::row(0), col = Fragment::col(0);
    // Not unrolled over k: the FFMA body is long enough, and unrolled it raises the registers.
#pragma unroll 1
    for (int k = 0; k < K; ++k) {
        const float h0 = h[group * HS + k], h1 = h[(group + 8) * HS + k];
        const float* v_row = v + k * VS + col;
#pragma unroll
        for (int nb = 0; nb < N / 8; ++nb)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const float x = v_row[nb * 8 + c];
                acc[nb][c] = fmaf(h0, x, acc[nb][c]);
                acc[nb][2 + c] = fmaf(h1, x, acc[nb][2 + c]);
            }
    }
}

template <int MI, int K, int N, int HS, int VS, typename T>
__device__ __forceinline__ void h_times_tile(float (&acc)[MI][N / 8][4], const T* h, const T* v) {
    if constexpr (sizeof(T) == 4) {
        static_assert(MI == 1, "the FFMA form takes 16 rows");
        h_times_tile_ffma<K, N, HS, VS>(acc[0], h, v);
    } else {
        h_times_tile_mma<MI, K, N, HS, VS>(acc, h, v);
    }
}

}  // namespace bwd
}  // namespace ck
