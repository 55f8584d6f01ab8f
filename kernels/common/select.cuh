// Exact k-selection building blocks, generic over where the keys come from.
//
// Keys. A (similarity, bank index) pair is packed into one 64-bit key whose unsigned order is the
// result order: larger similarity first, then the smaller index. The high word is the float's
// order-preserving bit pattern (NaN -> 0, the lowest; -0 folded into +0 so the index decides),
// the low word ~index (index < 2^31, so the low word is >= 2^31). Key 0 is thus below every real
// key and serves as the "empty" sentinel. Real keys of one query are all distinct, so "top k" is
// a set defined by key comparisons alone: any exact selection, in any order, chunked or not, gives
// the same answer, which is what makes the kernels deterministic.
//
// Radix select, the one scheme of the library (these warp / block selects and topk.cu's multi-pass
// radix strategy): MSB first, 7-bit digits (kRadixLevels = 10 levels, the last one 1 bit); per
// level a kRadixBins-bin histogram of the keys that match the prefix found so far, then the bin
// holding the k-th key; stops early when every key of that bin is in the top k (the answer is then
// the bin's minimum).
// Compaction moves the keys above the k-th to the front (order-preserving, in place allowed).
// Bitonic sort orders a power-of-two array, descending.
//
// src/ops/topk/select_model.rs is a line-for-line Rust model of these functions, unit-tested on the CPU.
#pragma once
#include <stdint.h>
#include "reduce.cuh"

namespace ck {

using SelectKey = unsigned long long;

constexpr int kRadixBits = 7;
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kRadixLevels = 10;  // ceil(64 / 7)
// Level p covers bits [shift, shift + width) with width = min(7, 64 - 7p).
__device__ __forceinline__ int radix_width(int level) { return min(kRadixBits, 64 - kRadixBits * level); }
__device__ __forceinline__ int radix_shift(int level) { return 64 - kRadixBits * level - radix_width(level); }
// One level's digit of a key (its shift and mask computed once, outside the loops over keys).
struct RadixLevel {
    int shift;
    unsigned digit_mask;
    __device__ __forceinline__ explicit RadixLevel(int level)
        : shift(radix_shift(level)), digit_mask((1u << radix_width(level)) - 1u) {}
    __device__ __forceinline__ int digit(SelectKey key) const { return (int)((key >> shift) & digit_mask); }
};
// Appends level's digit to a prefix and its bits to the prefix's mask.
__device__ __forceinline__ void radix_extend(SelectKey& prefix, SelectKey& mask, int level, int digit) {
    prefix |= (SelectKey)digit << radix_shift(level);
    mask |= (((SelectKey)1 << radix_width(level)) - 1) << radix_shift(level);
}

__device__ __forceinline__ uint32_t order_bits(float v) {
    if (v != v) return 0u;  // NaN ranks below every number
    uint32_t b = __float_as_uint(v);
    if ((b << 1) == 0u) b = 0u;  // -0 -> +0
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float order_bits_value(uint32_t o) {
    if (o == 0u) return __uint_as_float(0x7fc00000u);  // canonical NaN
    return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

__device__ __forceinline__ SelectKey select_key(float v, int index) {
    return ((SelectKey)order_bits(v) << 32) | (SelectKey)(~(uint32_t)index);
}
__device__ __forceinline__ float select_key_value(SelectKey key) { return order_bits_value((uint32_t)(key >> 32)); }
__device__ __forceinline__ int select_key_index(SelectKey key) { return (int)~(uint32_t)key; }

// A float f with "s < f implies select_key(s, any) < key" for every s: the fast reject of the
// filters. -inf when the key's value is NaN or the sentinel (then only the full key compare works).
__device__ __forceinline__ float select_key_floor(SelectKey key) {
    const uint32_t o = (uint32_t)(key >> 32);
    return o == 0u ? -INFINITY : order_bits_value(o);
}

// ---------------------------------------------------------------------------------------------
// Bucket search over a histogram of BINS bins (BINS a multiple of 32), by one full warp: the bin
// b such that (keys in bins above b) < want <= (keys in bins above b) + hist[b], scanning from the
// largest digit down. Lane l owns bins [l * PER, (l + 1) * PER). `want` is clamped to [1, total]:
// a rank past the last key gives the bucket of the smallest key (the callers then select every
// key), and an empty histogram gives bin 0 with no keys, never digit -1 (found by the CPU
// emulator's review; src/ops/topk/select_model.rs models the same rule).
struct Bucket {
    int digit;
    unsigned above;  // keys in the bins above `digit`
    unsigned count;  // keys in `digit`
};

template <int BINS>
__device__ __forceinline__ Bucket find_bucket(const unsigned* hist, unsigned want) {
    static_assert(BINS % 32 == 0, "whole bins per lane");
    constexpr int PER = BINS / 32;
    const int lane = threadIdx.x % 32;
    unsigned c[PER];
    unsigned total = 0;
#pragma unroll
    for (int j = 0; j < PER; ++j) {
        c[j] = hist[lane * PER + j];
        total += c[j];
    }
    unsigned suffix = total;  // inclusive suffix sum over lanes: keys in lanes >= this one
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
        const unsigned y = __shfl_down_sync(kFullMask, suffix, offset);
        if (lane + offset < 32) suffix += y;
    }
    const unsigned keys = __shfl_sync(kFullMask, suffix, 0);  // every key of the histogram
    want = want < 1u ? 1u : (want > keys ? keys : want);
    unsigned run = suffix - total;
    int found = -1;
    unsigned found_above = 0, found_count = 0;
#pragma unroll
    for (int j = PER - 1; j >= 0; --j) {
        if (found < 0 && run < want && want <= run + c[j]) {
            found = lane * PER + j;
            found_above = run;
            found_count = c[j];
        }
        run += c[j];
    }
    const unsigned ballot = __ballot_sync(kFullMask, found >= 0);
    if (ballot == 0) return Bucket{0, 0u, 0u};  // no keys at all
    const int src = __ffs(ballot) - 1;
    Bucket b;
    b.digit = __shfl_sync(kFullMask, found, src);
    b.above = __shfl_sync(kFullMask, found_above, src);
    b.count = __shfl_sync(kFullMask, found_count, src);
    return b;
}

__device__ __forceinline__ SelectKey warp_min_key(SelectKey v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const SelectKey o = __shfl_xor_sync(kFullMask, v, offset);
        v = o < v ? o : v;
    }
    return v;
}

// One warp's 32 keys src(base + lane) into this level's histogram, keys outside the current
// prefix skipped: one shared atomic per distinct bin of the warp (a query's keys crowd into a few
// bins). Every lane of the warp calls it with the same base.
template <class Src>
__device__ __forceinline__ void histogram_warp_chunk(unsigned* hist, const Src& src, int base, int n, SelectKey mask,
                                                     SelectKey prefix, const RadixLevel& lv) {
    const int lane = threadIdx.x % 32, i = base + lane;
    int bin = -1;
    if (i < n) {
        const SelectKey key = src(i);
        if ((key & mask) == prefix) bin = lv.digit(key);
    }
    const unsigned peers = __match_any_sync(kFullMask, bin);
    if (bin >= 0 && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], (unsigned)__popc(peers));
}

// The k-th largest of src(0) .. src(n - 1) (1 <= k <= n), by one full warp: the key t with
// #(keys > t) < k <= #(keys >= t). `hist` is kRadixBins words of this warp's shared memory.
// `src(i)` is called with the same i by one lane at a time; it may read global or shared memory.
template <class Src>
__device__ __forceinline__ SelectKey warp_select_kth(const Src& src, int n, int k, unsigned* hist) {
    const int lane = threadIdx.x % 32;
    SelectKey prefix = 0, mask = 0;
    unsigned want = (unsigned)min(k, n);  // k > n: every key is in the top k
    for (int level = 0; level < kRadixLevels; ++level) {
        const RadixLevel lv(level);
        for (int i = lane; i < kRadixBins; i += 32) hist[i] = 0;
        __syncwarp();
        for (int base = 0; base < n; base += 32) histogram_warp_chunk(hist, src, base, n, mask, prefix, lv);
        __syncwarp();
        const Bucket b = find_bucket<kRadixBins>(hist, want);
        want -= b.above;
        radix_extend(prefix, mask, level, b.digit);
        __syncwarp();  // every lane has read hist before the next pass clears it
        if (b.count == want) {  // the whole bin is in the top k: the answer is its minimum
            SelectKey lo = ~0ull;
            for (int i = lane; i < n; i += 32) {
                const SelectKey key = src(i);
                if ((key & mask) == prefix && key < lo) lo = key;
            }
            return warp_min_key(lo);
        }
    }
    return prefix;
}

// Writes the keys > theta (in their src order) to dst[0 ..), then theta into the rest of
// dst[0 .. k): exactly the top k when theta is the k-th largest. Returns #(keys > theta).
// dst may be the same memory as src (a write never lands past the chunk being read).
template <class Src>
__device__ __forceinline__ int warp_compact_top(const Src& src, int n, int k, SelectKey theta, SelectKey* dst) {
    const int lane = threadIdx.x % 32;
    int out = 0;
    for (int base = 0; base < n; base += 32) {
        const int i = base + lane;
        const SelectKey key = i < n ? src(i) : 0ull;
        const bool keep = i < n && key > theta;
        const unsigned ballot = __ballot_sync(kFullMask, keep);
        if (keep) dst[out + __popc(ballot & ((1u << lane) - 1u))] = key;
        out += __popc(ballot);
    }
    __syncwarp();
    for (int i = out + lane; i < k; i += 32) dst[i] = theta;
    __syncwarp();
    return out;
}

// Sorts x[0 .. n) descending (n a power of two) with P cooperating threads of rank t; sync() is
// the barrier among them (__syncwarp or __syncthreads). Pair p of a stage compares i and i + stride.
template <class Sync>
__device__ void bitonic_sort_desc(SelectKey* x, int n, int t, int P, Sync sync) {
    for (int size = 2; size <= n; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int p = t; p < n / 2; p += P) {
                const int i = ((p & ~(stride - 1)) << 1) | (p & (stride - 1));
                const int j = i + stride;
                const SelectKey a = x[i], b = x[j];
                const bool descending = (i & size) == 0;
                if ((a < b) == descending) {
                    x[i] = b;
                    x[j] = a;
                }
            }
            sync();
        }
    }
}

// Block-wide version of warp_select_kth (THREADS threads, all of them call it). Shared scratch:
// hist (kRadixBins words), bucket (one Bucket), result (one key).
template <int THREADS, class Src>
__device__ SelectKey block_select_kth(const Src& src, int n, int k, unsigned* hist, Bucket* bucket, SelectKey* result) {
    const int lane = threadIdx.x % 32;
    SelectKey prefix = 0, mask = 0;
    unsigned want = (unsigned)min(k, n);  // k > n: every key is in the top k
    for (int level = 0; level < kRadixLevels; ++level) {
        const RadixLevel lv(level);
        for (int i = threadIdx.x; i < kRadixBins; i += THREADS) hist[i] = 0;
        __syncthreads();
        for (int base = threadIdx.x - lane; base < n; base += THREADS) histogram_warp_chunk(hist, src, base, n, mask, prefix, lv);
        __syncthreads();
        if (threadIdx.x < 32) {
            const Bucket b = find_bucket<kRadixBins>(hist, want);
            if (threadIdx.x == 0) *bucket = b;
        }
        __syncthreads();
        const Bucket b = *bucket;
        want -= b.above;
        radix_extend(prefix, mask, level, b.digit);
        if (b.count == want) {
            if (threadIdx.x == 0) *result = ~0ull;
            __syncthreads();
            SelectKey lo = ~0ull;
            for (int i = threadIdx.x; i < n; i += THREADS) {
                const SelectKey key = src(i);
                if ((key & mask) == prefix && key < lo) lo = key;
            }
            lo = warp_min_key(lo);
            if (lane == 0) atomicMin(result, lo);
            __syncthreads();
            return *result;
        }
        __syncthreads();  // bucket is rewritten next pass
    }
    return prefix;
}

}  // namespace ck
