// Tile shapes and the accumulator layout, kept apart from the algorithms that use them
// (flash-attention's "kernel traits").
#pragma once

namespace ck {

// The C / D fragment of mma.m16n8k16 (PTX ISA), which every engine of the tile core keeps (the
// FFMA engine for f32 too): lane = 4 group + quad holds, of a 16 x 8 block, element e (0..3) at
// row group + 8 (e / 2), column 2 quad + e % 2. The one place lane arithmetic of the fragment lives.
struct Fragment {
    static __device__ __forceinline__ int lane() { return threadIdx.x % 32; }
    static __device__ __forceinline__ int row(int e) { return lane() / 4 + (e / 2) * 8; }
    static __device__ __forceinline__ int col(int e) { return (lane() % 4) * 2 + e % 2; }
};

// A block tile: BM x BN outputs, BK of the reduction dimension per stage, WARPS_M x WARPS_N warps
// each owning a (BM / WARPS_M) x (BN / WARPS_N) warp tile of MI x NI fragments, and two
// shared-memory stages (cp.async double buffering).
//
// ELEM_BYTES = 4 is the f32 form of the same tile: the FFMA engine (tile.cuh) computes, on CUDA
// cores, the very accumulator elements the tensor-core fragments would hold, so every epilogue
// written against acc_row / acc_col serves f32 unchanged.
// STRIDE_: the shared rows' stride in elements, by default BK + 16 bytes of padding; a wider one
// describes operands resident in shared memory for the whole d (mma_resident_tile), read BK at a
// time.
template <int BM_, int BN_, int BK_, int WARPS_M_, int WARPS_N_, int ELEM_BYTES_ = 2, int STRIDE_ = BK_ + 16 / ELEM_BYTES_>
struct MmaTileConfig {
    static constexpr int BM = BM_, BN = BN_, BK = BK_;
    static constexpr int WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
    static constexpr int ELEM_BYTES = ELEM_BYTES_;
    static constexpr int THREADS = WARPS_M * WARPS_N * 32;
    static constexpr int WM = BM / WARPS_M;  // rows of one warp's tile
    static constexpr int WN = BN / WARPS_N;  // columns of one warp's tile
    static constexpr int MI = WM / 16;       // m16 fragments per warp
    static constexpr int NI = WN / 8;        // n8 fragments per warp
    static constexpr int STAGES = 2;
    // Shared rows are padded by 16 bytes: 8 consecutive rows then start in 8 distinct 16-byte bank
    // groups, so every ldmatrix phase is conflict-free (and the f32 FFMA reads of 8 rows hit 8
    // distinct banks), and cp.async stays 16-B aligned.
    static constexpr int SMEM_STRIDE = STRIDE_;
    static_assert(STRIDE_ >= BK && (STRIDE_ * ELEM_BYTES) % 16 == 0 && (STRIDE_ * ELEM_BYTES / 16) % 2 == 1,
                  "rows 16-byte aligned, an odd number of 16-byte groups apart (conflict-free ldmatrix)");
    static constexpr int SMEM_ELEMS_A = BM * SMEM_STRIDE;
    static constexpr int SMEM_ELEMS_B = BN * SMEM_STRIDE;
    static constexpr int SMEM_ELEMS = STAGES * (SMEM_ELEMS_A + SMEM_ELEMS_B);
    static constexpr int SMEM_BYTES = SMEM_ELEMS * ELEM_BYTES;

    static_assert(BK % 16 == 0, "BK is a multiple of the MMA k (16)");
    static_assert(WM % 16 == 0 && WN % 16 == 0, "a warp tile is made of m16 x n16 pieces");
    static_assert(ELEM_BYTES == 4 || ((BM * BK / 8) % THREADS == 0 && (BN * BK / 8) % THREADS == 0),
                  "every thread copies the same number of 16-byte chunks (f32 loads element-wise)");

    // This thread's warp in the block tile.
    static __device__ __forceinline__ int warp_m() { return (int)(threadIdx.x / 32) / WARPS_N; }
    static __device__ __forceinline__ int warp_n() { return (int)(threadIdx.x / 32) % WARPS_N; }
    // Where acc[mi][ni][e] of this thread lies in the block tile.
    static __device__ __forceinline__ int acc_row(int mi, int e) { return warp_m() * WM + mi * 16 + Fragment::row(e); }
    static __device__ __forceinline__ int acc_col(int ni, int e) { return warp_n() * WN + ni * 8 + Fragment::col(e); }
};

// 128 x 128 outputs per block, 8 warps of 64 x 32: 64 f32 accumulators per thread, 40 KB of
// static shared memory, two blocks per SM.
using Tile128 = MmaTileConfig<128, 128, 32, 2, 4>;

// 64 x 64 per block, 4 warps stacked along M: each warp owns 16 complete rows of the tile, so its
// accumulator fragment of S is also the A fragment of a second product S' V (FlashAttention-2's
// P V), with no trip through shared memory. 20 KB of shared stages.
using Tile64RowWarps = MmaTileConfig<64, 64, 32, 4, 1>;

// The f32 (FFMA) forms: BK = 16 keeps two stages within the 48 KB of static shared memory.
using Tile128F32 = MmaTileConfig<128, 128, 16, 2, 4, 4>;
using Tile64RowWarpsF32 = MmaTileConfig<64, 64, 16, 4, 1, 4>;
// 64 x 64 outputs per block with 8 warps of 32 x 16 (16 accumulators per thread): the f32
// similarity's tile, for small matrices a finer grid than Tile128F32.
using Tile64F32 = MmaTileConfig<64, 64, 16, 2, 4, 4>;

// The tile a kernel uses for element type T: TileFor<T, Tile128, Tile128F32>::type.
template <typename T, class Half, class Single> struct TileFor { using type = Half; };
template <class Half, class Single> struct TileFor<float, Half, Single> { using type = Single; };

}  // namespace ck
