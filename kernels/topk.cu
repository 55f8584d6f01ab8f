// topk: for queries Q (nq x d) and a bank B (nb x d), the k largest cosine similarities of each
// query and their bank indices, ties to the smaller index, without writing the nq x nb matrix.
//
// Order and determinism. Each (similarity, index) is one 64-bit key (common/select.cuh) whose
// unsigned order is the result order (NaN similarities rank last). A query's keys are distinct,
// so its top k is a set fixed by the keys alone, and every stage below is an exact selection:
// the answer does not depend on tile order, slicing, atomics' order or how the bank is chunked.
//
// Strategy 1, k <= 1024: threshold filter + per-query candidate pools (topk_tiles, topk_merge).
//   * Grid = (query blocks of 128) x (slices of the bank). A block sweeps its slice in 128 x 128
//     tiles on the tile core (tensor cores for f16/bf16, FFMA for f32), with the normalization
//     fused as in similarity.cu: s = <q, b> * (1/|q|) * (1/|b|) from the norm prologue.
//   * Each query row has, in shared memory, a threshold t (the k-th best key of its pool once the
//     pool has held k keys; 0 before) and a fill count; its pool (cap = k + max(k, 256) keys) is
//     global scratch that only the survivors of the filter ever touch (L2-resident in practice).
//     After a tile, every thread tests its 64 values against their row's t: a float compare
//     rejects almost everything; survivors are appended to the row's pool with a shared atomic.
//   * After the tile, a row whose pool could not take another full tile row (count > cap - 128)
//     is compacted by one warp: radix select of its k-th key (the new t, which only grows), then
//     the keys above it move to the front. So an insert never finds its pool full, and nothing
//     is dropped that could be in the top k (a key <= t already has k better keys in the pool).
//     For iid data a row receives about k (1 + ln(n / k)) survivors over n columns: selection
//     work per column falls as 1/n while the GEMM work per column is constant.
//   * At the end of its slice each row's pool is cut to its top k (sentinel-padded), and
//     topk_merge (one warp per query) selects the top k of all slices' lists (and, for a bank
//     streamed in chunks, of the running result), sorts them with a bitonic network and decodes.
//   Like FAISS's WarpSelect this is "filter by the current k-th, insert rarely"; unlike it, the
//   per-query state does not live in the registers of one warp (a tile's row is spread over 16
//   threads of 4 warps, and the accumulators already use 64 registers), and the merge is a radix
//   select rather than a sorting network, so k is bounded only by the 1024-key merge buffers.
//
// Strategy 2, any k up to nb: multi-pass radix select over recomputed tiles (topk_radix_*).
//   Per pass the tiles are recomputed and each row's keys that match its prefix so far are
//   histogrammed on a 7-bit digit (shared memory, 128 rows x 128 bins, flushed to global);
//   topk_radix_step picks each row's bin, and stops the row as soon as the whole bin is in its top
//   k. At most 10 passes (64 bits), typically 3 - 5. A final pass collects the exactly k keys with
//   (key & mask) >= prefix, and topk_sort_rows sorts them (bitonic, one block per row). Each pass
//   costs one GEMM; nothing of size nq x nb is written.
//
// topk_dense_rows is the library's unfused baseline: plain top-k (block radix select) over a
// similarity block that cuBLAS wrote to global memory.
#include "common/norm.cuh"
#include "common/select.cuh"
#include "common/tile.cuh"
#include "params/topk.h"

namespace ck {

// ---------------------------------------------------------------------------------------------
// The tile core behind one face: compute a 128 x 128 tile of raw dot products (tensor cores for
// f16 / bf16, the FFMA engine for f32), then read this thread's 64 values as SLOTS rows x VALS
// columns of the tile: slot = 2 mi + half, value = 2 ni + e of the accumulator fragments.
template <typename T> struct TileEngine {
    using Cfg = typename TileFor<T, Tile128, Tile128F32>::type;
    static constexpr int BM = Cfg::BM, BN = Cfg::BN, THREADS = Cfg::THREADS;
    static constexpr int SLOTS = Cfg::MI * 2, VALS = Cfg::NI * 2;
    static constexpr int SMEM_BYTES = Cfg::SMEM_BYTES;
    float acc[Cfg::MI][Cfg::NI][4];

    template <bool ALIGNED>
    __device__ __forceinline__ void compute(unsigned char* smem, const T* A, const T* B, int m, int n, int d, int row0,
                                            int col0) {
        mma_block_tile<Cfg, ALIGNED>(acc, reinterpret_cast<T*>(smem), A, B, m, n, d, row0, col0);
    }
    static __device__ __forceinline__ int row(int slot) { return Cfg::acc_row(slot / 2, (slot % 2) * 2); }
    static __device__ __forceinline__ int col(int v) { return Cfg::acc_col(v / 2, v % 2); }
    __device__ __forceinline__ float value(int slot, int v) const { return acc[slot / 2][v / 2][(slot % 2) * 2 + v % 2]; }
};

// ---------------------------------------------------------------------------------------------
// What every sweep over the bank tiles shares.
template <typename T> struct Sweep {
    const T* Q;
    const T* B;
    const float* q_norms;   // null: rows taken as already normalized
    const float* b_norms;   // null: likewise
    const float* col_bias;  // null, or added to every similarity of a bank row (euclidean k-means)
    const int* exclude;     // null, or per query the global bank index to skip (-1: none)
    int diag_offset;        // >= 0: query i skips global bank index i + diag_offset
    int nq, nb, d;
    int col_base;           // global index of bank row 0 (a chunk of a larger bank)
    int tiles_per_slice;

    __device__ __forceinline__ int excluded(int row) const {
        return exclude != nullptr ? exclude[row] : (diag_offset >= 0 ? row + diag_offset : -1);
    }
    // The factors of similarity.cu's epilogue: 1 / max(|x|, eps), NaN norms stay NaN.
    __device__ __forceinline__ float row_factor(int row) const {
        return q_norms != nullptr ? 1.f / norm_denominator(q_norms[row]) : 1.f;
    }
    __device__ __forceinline__ float col_factor(int col) const {
        return b_norms != nullptr ? 1.f / norm_denominator(b_norms[col]) : 1.f;
    }
};

enum SweepMode { kPool = 0, kHist = 1, kCollect = 2 };

// Per-row state of the radix strategy, as the host lays it out (3 x u64 per row).
struct RadixRow {
    SelectKey prefix;  // digits chosen so far
    SelectKey mask;    // bits they cover
    unsigned want;     // rank of the k-th key among the keys matching prefix
    int done;          // 1: every key with (key & mask) >= prefix is in the top k, exactly k of them
};
static_assert(sizeof(RadixRow) == 24, "3 x u64 per row on the host");


struct SweepOut {
    // kPool
    int k, cap;
    SelectKey* pools;  // [nq][slices][cap]
    // kHist, kCollect
    const RadixRow* state;
    int level;
    unsigned* hist;    // [nq][kRadixBins]
    SelectKey* keys;   // [nq][key_stride]
    int key_stride;
    int* counts;       // [nq]
};

template <int MODE, class Engine, bool ALIGNED, typename T>
__device__ __forceinline__ void topk_sweep(const Sweep<T>& sw, const SweepOut& out) {
    constexpr int BM = Engine::BM, BN = Engine::BN, THREADS = Engine::THREADS, WARPS = THREADS / 32;
    constexpr int SLOTS = Engine::SLOTS, VALS = Engine::VALS;
    static_assert(BN <= 256, "a compacted pool (k keys) has room for a tile row: cap >= k + 256");
    __shared__ __align__(128) unsigned char smem[Engine::SMEM_BYTES];
    __shared__ float s_rowf[BM], s_colf[BN], s_bias[BN];
    __shared__ int s_excl[BM];
    __shared__ SelectKey s_key[BM];   // kPool: the row's threshold t; radix: its prefix
    __shared__ SelectKey s_mask[BM];  // radix: the prefix's bits
    __shared__ int s_count[BM];       // kPool: pool fill; radix: 1 if the row takes part in this pass
    extern __shared__ unsigned s_hist[];  // kHist: [BM][kRadixBins]; kPool: [WARPS][kRadixBins] for compactions

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    // Block coordinates are re-read where used rather than kept live across the MMA k-loop,
    // which needs every register of the 128 that two blocks per SM allow.
    auto row0 = [] { return (int)blockIdx.x * BM; };
    for (int r = tid; r < BM; r += THREADS) {
        const int row = row0() + r;
        const bool valid = row < sw.nq;
        s_rowf[r] = valid ? sw.row_factor(row) : 0.f;
        s_excl[r] = valid ? sw.excluded(row) : -1;
        if constexpr (MODE == kPool) {
            s_key[r] = 0;
            s_count[r] = 0;
        } else {
            const RadixRow st = valid ? out.state[row] : RadixRow{0, 0, 0, 1};
            s_key[r] = st.prefix;
            s_mask[r] = st.mask;
            s_count[r] = valid && (MODE == kCollect || !st.done);
        }
    }
    if constexpr (MODE == kHist)
        for (int i = tid; i < BM * kRadixBins; i += THREADS) s_hist[i] = 0;
    __syncthreads();

    auto pool_of = [&out](int r) {
        return out.pools + ((size_t)((int)blockIdx.x * BM + r) * gridDim.y + blockIdx.y) * out.cap;
    };
    const RadixLevel lv(MODE == kPool ? 0 : out.level);

    const int col_tiles = (sw.nb + BN - 1) / BN;
    const int t_begin = (int)blockIdx.y * sw.tiles_per_slice, t_end = min(t_begin + sw.tiles_per_slice, col_tiles);
    Engine eng;
    for (int t = t_begin; t < t_end; ++t) {
        const int col0 = t * BN;
        // Read only after the barriers inside compute(); written only after the last tile's barrier.
        for (int c = tid; c < BN; c += THREADS) {
            const int col = col0 + c;
            s_colf[c] = col < sw.nb ? sw.col_factor(col) : 0.f;
            s_bias[c] = (sw.col_bias != nullptr && col < sw.nb) ? sw.col_bias[col] : 0.f;
        }
        eng.template compute<ALIGNED>(smem, sw.Q, sw.B, sw.nq, sw.nb, sw.d, row0(), col0);

        if constexpr (MODE == kPool) {
#pragma unroll
            for (int slot = 0; slot < SLOTS; ++slot) {
                const int r = Engine::row(slot);
                if (row0() + r >= sw.nq) continue;
                const SelectKey th = s_key[r];
                const float floor = select_key_floor(th);
                const float rf = s_rowf[r];
                const int ex = s_excl[r];
#pragma unroll
                for (int v = 0; v < VALS; ++v) {
                    const int c = Engine::col(v), col = col0 + c;
                    if (col >= sw.nb || sw.col_base + col == ex) continue;
                    const float s = eng.value(slot, v) * (rf * s_colf[c]) + s_bias[c];
                    if (s < floor) continue;  // NaN goes on to the key compare
                    const SelectKey key = select_key(s, sw.col_base + col);
                    if (key <= th) continue;
                    // Room for a whole tile row is guaranteed below, so pos < cap.
                    pool_of(r)[atomicAdd(&s_count[r], 1)] = key;
                }
                // Keeps the compiler from hoisting all slots' row loads at once (register pressure).
                asm volatile("" ::: "memory");
            }
            __syncthreads();
            // Rows that could not take another full tile row are cut back to their top k. The
            // accumulators are dead here; the next tile's first barrier orders this before any
            // reader of s_key / s_count, and the histograms have their own shared memory.
            for (int r = warp; r < BM; r += WARPS) {
                if (s_count[r] <= out.cap - BN) continue;
                SelectKey* pool = pool_of(r);
                const int n = s_count[r];
                auto src = [pool](int i) { return pool[i]; };
                const SelectKey theta = warp_select_kth(src, n, out.k, s_hist + warp * kRadixBins);
                warp_compact_top(src, n, out.k, theta, pool);
                if (lane == 0) {
                    s_key[r] = theta;
                    s_count[r] = out.k;
                }
                __syncwarp();  // the end phase below reads s_count[r] from every lane of this warp
            }
        } else {
#pragma unroll
            for (int slot = 0; slot < SLOTS; ++slot) {
                const int r = Engine::row(slot);
                if (!s_count[r]) continue;
                const SelectKey prefix = s_key[r], mask = s_mask[r];
                const float rf = s_rowf[r];
                const int ex = s_excl[r];
                int run_digit = -1;  // run-length merge of equal digits: one shared atomic per run
                unsigned run = 0;
#pragma unroll
                for (int v = 0; v < VALS; ++v) {
                    const int c = Engine::col(v), col = col0 + c;
                    if (col >= sw.nb || sw.col_base + col == ex) continue;
                    const float s = eng.value(slot, v) * (rf * s_colf[c]) + s_bias[c];
                    const SelectKey key = select_key(s, sw.col_base + col);
                    if constexpr (MODE == kHist) {
                        if ((key & mask) != prefix) continue;
                        const int digit = lv.digit(key);
                        if (digit != run_digit) {
                            if (run) atomicAdd(&s_hist[r * kRadixBins + run_digit], run);
                            run_digit = digit;
                            run = 0;
                        }
                        ++run;
                    } else {
                        if ((key & mask) < prefix) continue;
                        const int row = row0() + r;
                        const int pos = atomicAdd(&out.counts[row], 1);
                        if (pos < out.k) out.keys[(size_t)row * out.key_stride + pos] = key;
                    }
                }
                if (MODE == kHist && run) atomicAdd(&s_hist[r * kRadixBins + run_digit], run);
            }
            __syncthreads();  // s_colf / s_bias are rewritten for the next tile
        }
    }

    if constexpr (MODE == kPool) {
        // Cut each row's pool to its top k, padded with the sentinel: the slice's list. Same
        // warp-to-row mapping as the compactions above, so no barrier is needed.
        for (int r = warp; r < BM; r += WARPS) {
            if (row0() + r >= sw.nq) continue;
            SelectKey* pool = pool_of(r);
            int n = s_count[r];
            if (n > out.k) {
                auto src = [pool](int i) { return pool[i]; };
                const SelectKey theta = warp_select_kth(src, n, out.k, s_hist + warp * kRadixBins);
                warp_compact_top(src, n, out.k, theta, pool);
                n = out.k;
            }
            for (int i = n + lane; i < out.k; i += 32) pool[i] = 0ull;
        }
    } else if constexpr (MODE == kHist) {
        for (int i = tid; i < BM * kRadixBins; i += THREADS) {
            const int r = i / kRadixBins;
            if (s_count[r] && s_hist[i]) atomicAdd(&out.hist[(size_t)(row0() + r) * kRadixBins + i % kRadixBins], s_hist[i]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Merge: per query, the top k of `slices` lists of k keys (stride cap) plus an optional running
// list of k keys, sorted descending. Writes the keys (may be the running list itself) and/or the
// decoded values and indices. One warp per query.
constexpr int kMergeWarps = 4;
constexpr int kMaxSmallK = 1024;

__device__ __forceinline__ int pow2_at_least(int k) {
    int p = 1;
    while (p < k) p <<= 1;
    return p;
}

__device__ void topk_merge(const SelectKey* pools, int slices, int cap, const SelectKey* running, int nq, int k,
                           SelectKey* keys_out, float* values, int* indices) {
    __shared__ SelectKey s_buf[kMergeWarps][kMaxSmallK];
    __shared__ unsigned s_hist[kMergeWarps][kRadixBins];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int row = blockIdx.x * kMergeWarps + warp;
    if (row >= nq) return;  // whole warps only: no block barrier below
    const SelectKey* lists = pools + (size_t)row * slices * cap;
    const SelectKey* run = running != nullptr ? running + (size_t)row * k : nullptr;
    const int n = slices * k + (run != nullptr ? k : 0);
    auto src = [=](int i) {
        const int list = i / k, pos = i - list * k;
        return list < slices ? lists[(size_t)list * cap + pos] : run[pos];
    };
    SelectKey* buf = s_buf[warp];
    const SelectKey theta = warp_select_kth(src, n, k, s_hist[warp]);
    warp_compact_top(src, n, k, theta, buf);
    const int kpad = pow2_at_least(k);
    for (int i = k + lane; i < kpad; i += 32) buf[i] = 0ull;
    __syncwarp();
    bitonic_sort_desc(buf, kpad, lane, 32, [] { __syncwarp(); });
    for (int i = lane; i < k; i += 32) {
        const SelectKey key = buf[i];
        const size_t o = (size_t)row * k + i;
        if (keys_out != nullptr) keys_out[o] = key;
        if (values != nullptr) values[o] = select_key_value(key);
        if (indices != nullptr) indices[o] = select_key_index(key);
    }
}

// One step of the radix strategy after a histogram pass: each unfinished row picks its bin.
// Clears the row's histogram for the next pass and counts the rows still unfinished.
constexpr int kStepWarps = 4;

__device__ void topk_radix_step(RadixRow* state, unsigned* hist, int nq, int level, int* unfinished) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int row = blockIdx.x * kStepWarps + warp;
    if (row >= nq) return;
    RadixRow st = state[row];
    if (st.done) return;
    unsigned* h = hist + (size_t)row * kRadixBins;
    const Bucket b = find_bucket<kRadixBins>(h, st.want);
    __syncwarp();
    for (int i = lane; i < kRadixBins; i += 32) h[i] = 0;
    if (lane == 0) {
        st.want -= b.above;
        radix_extend(st.prefix, st.mask, level, b.digit);
        st.done = b.count == st.want || level == kRadixLevels - 1;
        state[row] = st;
        if (!st.done) atomicAdd(unfinished, 1);
    }
}

// Sorts each row's kpad keys (descending, in place) and decodes the first k. One block per row;
// in shared memory when use_smem (dynamic size >= kpad keys), else in global memory.
constexpr int kSortThreads = 512;

__device__ void topk_sort_rows(SelectKey* keys, int k, int kpad, int use_smem, float* values, int* indices) {
    extern __shared__ SelectKey s_sort[];
    SelectKey* g = keys + (size_t)blockIdx.x * kpad;
    SelectKey* x = use_smem ? s_sort : g;
    if (use_smem) {
        for (int i = threadIdx.x; i < kpad; i += kSortThreads) x[i] = g[i];
        __syncthreads();
    }
    bitonic_sort_desc(x, kpad, threadIdx.x, kSortThreads, [] { __syncthreads(); });
    for (int i = threadIdx.x; i < k; i += kSortThreads) {
        const SelectKey key = x[i];
        const size_t o = (size_t)blockIdx.x * k + i;
        values[o] = select_key_value(key);
        indices[o] = select_key_index(key);
    }
}

// The unfused baseline's selection: per row of a dense block S (rows x n, raw dot products from
// cuBLAS), the top k of s_ij = S_ij (1/|q_i|) (1/|b_j|), by block radix select, then sort.
constexpr int kDenseThreads = 512;

__device__ void topk_dense_rows(const float* S, int n, const float* q_norms, const float* b_norms, const int* exclude,
                                int diag_offset, int k, int kpad, SelectKey* scratch, int use_smem, float* values,
                                int* indices) {
    extern __shared__ SelectKey s_dense[];
    __shared__ unsigned s_hist[kRadixBins];
    __shared__ Bucket s_bucket;
    __shared__ SelectKey s_result;
    __shared__ int s_count;
    const int row = blockIdx.x;
    const float* s_row = S + (size_t)row * n;
    const float rf = q_norms != nullptr ? 1.f / norm_denominator(q_norms[row]) : 1.f;
    const int ex = exclude != nullptr ? exclude[row] : (diag_offset >= 0 ? row + diag_offset : -1);
    auto src = [=](int j) {
        if (j == ex) return 0ull;  // the sentinel: below every real key, never selected
        const float cf = b_norms != nullptr ? 1.f / norm_denominator(b_norms[j]) : 1.f;
        return select_key(s_row[j] * (rf * cf), j);
    };
    const SelectKey theta = block_select_kth<kDenseThreads>(src, n, k, s_hist, &s_bucket, &s_result);
    SelectKey* buf = use_smem ? s_dense : scratch + (size_t)row * kpad;
    if (threadIdx.x == 0) s_count = 0;
    __syncthreads();
    for (int j = threadIdx.x; j < n; j += kDenseThreads) {
        const SelectKey key = src(j);
        if (key > theta) buf[atomicAdd(&s_count, 1)] = key;
    }
    __syncthreads();
    for (int i = s_count + threadIdx.x; i < kpad; i += kDenseThreads) buf[i] = i < k ? theta : 0ull;
    __syncthreads();
    bitonic_sort_desc(buf, kpad, threadIdx.x, kDenseThreads, [] { __syncthreads(); });
    for (int i = threadIdx.x; i < k; i += kDenseThreads) {
        const SelectKey key = buf[i];
        const size_t o = (size_t)row * k + i;
        values[o] = select_key_value(key);
        indices[o] = select_key_index(key);
    }
}

}  // namespace ck

// ---------------------------------------------------------------------------------------------
// The header's constants are the kernels' (the Rust grids and shared memory come from the header).
static_assert(CK_TOPK_TILE == ck::TileEngine<__half>::BM && CK_TOPK_TILE == ck::TileEngine<float>::BM, "params/topk.h");
static_assert(CK_TOPK_TILE_THREADS == ck::TileEngine<__half>::THREADS && CK_TOPK_TILE_THREADS == ck::TileEngine<float>::THREADS,
              "params/topk.h");
static_assert(CK_TOPK_MAX_FUSED_K == ck::kMaxSmallK && CK_TOPK_MERGE_WARPS == ck::kMergeWarps, "params/topk.h");
static_assert(CK_TOPK_STEP_WARPS == ck::kStepWarps && CK_TOPK_SORT_THREADS == ck::kSortThreads, "params/topk.h");
static_assert(CK_TOPK_DENSE_THREADS == ck::kDenseThreads, "params/topk.h");
static_assert(CK_TOPK_RADIX_BINS == ck::kRadixBins && CK_TOPK_RADIX_LEVELS == ck::kRadixLevels, "params/topk.h");
static_assert(CK_TOPK_POOL_DYN_SMEM == CK_TOPK_TILE_THREADS / 32 * ck::kRadixBins * sizeof(unsigned), "kPool: [WARPS][kRadixBins]");
static_assert(CK_TOPK_HIST_DYN_SMEM == CK_TOPK_TILE * ck::kRadixBins * sizeof(unsigned), "kHist: [BM][kRadixBins]");
static_assert(sizeof(CkTopkRadixRow) == sizeof(ck::RadixRow) && offsetof(CkTopkRadixRow, prefix) == offsetof(ck::RadixRow, prefix) &&
                  offsetof(CkTopkRadixRow, mask) == offsetof(ck::RadixRow, mask) &&
                  offsetof(CkTopkRadixRow, want) == offsetof(ck::RadixRow, want) &&
                  offsetof(CkTopkRadixRow, done) == offsetof(ck::RadixRow, done),
              "ck::RadixRow is laid out as CkTopkRadixRow");
static_assert(sizeof(uint64_t) == sizeof(ck::SelectKey), "keys are 64-bit");

namespace ck {

template <typename T> __device__ __forceinline__ Sweep<T> sweep_of(const CkTopkSweep& s) {
    return Sweep<T>{static_cast<const T*>(s.q), static_cast<const T*>(s.b), s.q_norms,
                    s.b_norms,                  s.col_bias,                   s.exclude,
                    s.diag_offset,              s.nq,                         s.nb,
                    s.d,                        s.col_base,                   s.tiles_per_slice};
}
inline __device__ SelectKey* keys_of(uint64_t* p) { return reinterpret_cast<SelectKey*>(p); }
inline __device__ const SelectKey* keys_of(const uint64_t* p) { return reinterpret_cast<const SelectKey*>(p); }

}  // namespace ck

// One kernel per (mode, dtype, loader). The tensor-core tile kernels run two blocks per SM (at
// most 128 registers), their radix passes one; the FFMA tile kernel one, its radix passes two (at
// most 128 registers: 109 KB of shared memory a block, 64 KB of it histograms, fit twice).
#define CK_TOPK_KERNELS(name, type, engine, suffix, aligned, tile_blocks, radix_blocks)                          \
    extern "C" __global__ void __launch_bounds__(engine::THREADS, tile_blocks)                                   \
        topk_tiles_##name##suffix(const __grid_constant__ CkTopkTilesParams p) {                                                   \
        ck::SweepOut out{};                                                                                      \
        out.k = p.k;                                                                                             \
        out.cap = p.cap;                                                                                         \
        out.pools = ck::keys_of(p.pools);                                                                        \
        ck::topk_sweep<ck::kPool, engine, aligned, type>(ck::sweep_of<type>(p.sweep), out);                      \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(engine::THREADS, radix_blocks)                                  \
        topk_radix_hist_##name##suffix(const __grid_constant__ CkTopkRadixHistParams p) {                                          \
        ck::SweepOut out{};                                                                                      \
        out.state = reinterpret_cast<const ck::RadixRow*>(p.state);                                              \
        out.level = p.level;                                                                                     \
        out.hist = p.hist;                                                                                       \
        ck::topk_sweep<ck::kHist, engine, aligned, type>(ck::sweep_of<type>(p.sweep), out);                      \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(engine::THREADS, radix_blocks)                                  \
        topk_radix_collect_##name##suffix(const __grid_constant__ CkTopkRadixCollectParams p) {                                    \
        ck::SweepOut out{};                                                                                      \
        out.state = reinterpret_cast<const ck::RadixRow*>(p.state);                                              \
        out.k = p.k;                                                                                             \
        out.keys = ck::keys_of(p.keys);                                                                          \
        out.key_stride = p.key_stride;                                                                           \
        out.counts = p.counts;                                                                                   \
        ck::topk_sweep<ck::kCollect, engine, aligned, type>(ck::sweep_of<type>(p.sweep), out);                   \
    }

CK_TOPK_KERNELS(f16, __half, ck::TileEngine<__half>, , true, 2, 1)
CK_TOPK_KERNELS(f16, __half, ck::TileEngine<__half>, _unaligned, false, 2, 1)
CK_TOPK_KERNELS(bf16, __nv_bfloat16, ck::TileEngine<__nv_bfloat16>, , true, 2, 1)
CK_TOPK_KERNELS(bf16, __nv_bfloat16, ck::TileEngine<__nv_bfloat16>, _unaligned, false, 2, 1)
CK_TOPK_KERNELS(f32, float, ck::TileEngine<float>, , false, 1, 2)

// The parameter structs are __grid_constant__ (read in place from the parameter space, never
// copied: without it topk_dense_rows takes 56 registers instead of 32), except here, where ptxas
// happens to schedule the copy better (58 registers against 60).
extern "C" __global__ void __launch_bounds__(ck::kMergeWarps * 32) topk_merge(const CkTopkMergeParams p) {
    ck::topk_merge(ck::keys_of(p.pools), p.slices, p.cap, ck::keys_of(p.running), p.nq, p.k, ck::keys_of(p.keys_out),
                   p.values, p.indices);
}

extern "C" __global__ void __launch_bounds__(ck::kStepWarps * 32) topk_radix_step(const __grid_constant__ CkTopkRadixStepParams p) {
    ck::topk_radix_step(reinterpret_cast<ck::RadixRow*>(p.state), p.hist, p.nq, p.level, p.unfinished);
}

extern "C" __global__ void __launch_bounds__(ck::kSortThreads) topk_sort_rows(const __grid_constant__ CkTopkSortParams p) {
    ck::topk_sort_rows(ck::keys_of(p.keys), p.k, p.kpad, p.use_smem, p.values, p.indices);
}

extern "C" __global__ void __launch_bounds__(ck::kDenseThreads) topk_dense_rows(const __grid_constant__ CkTopkDenseParams p) {
    ck::topk_dense_rows(p.s, p.n, p.q_norms, p.b_norms, p.exclude, p.diag_offset, p.k, p.kpad, ck::keys_of(p.scratch),
                        p.use_smem, p.values, p.indices);
}
