// The emulator's ISA test kernels (emu/tests/isa.rs launches them): each drives one emulated
// instruction through the very wrappers the library's kernels use (kernels/common/tile.cuh), with
// every layout decision left to the host test, which writes it from the PTX ISA's tables. So a
// wrong fragment layout in the emulator cannot be mirrored here by accident.
//
// One warp (32 threads) per launch unless said otherwise.
#include "common/tile.cuh"

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16. `image` (32 rows x kLdRowElems b16) is copied
// to shared memory as is; lane l hands the instruction the address of image row row_of_lane[l]
// (the host decides which row holds which matrix row, so each lane's own address is exercised);
// out[4 l + j] = the lane's register j.
constexpr int kLdRows = 32;
constexpr int kLdRowElems = 24;  // 48-byte rows: padded past the 16 bytes a matrix row needs, 16-byte aligned

extern "C" __global__ void ckemu_isa_ldmatrix(const uint16_t* image, const int* row_of_lane, int trans, uint32_t* out) {
    __shared__ __align__(16) uint16_t sm[kLdRows * kLdRowElems];
    const int lane = threadIdx.x;
    for (int i = lane; i < kLdRows * kLdRowElems; i += 32) sm[i] = image[i];
    __syncthreads();
    uint32_t r[4];
    const uint16_t* p = sm + row_of_lane[lane] * kLdRowElems;
    if (trans) ck::ldmatrix_x4_trans(r, p);
    else ck::ldmatrix_x4(r, p);
    for (int j = 0; j < 4; ++j) out[lane * 4 + j] = r[j];
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 on raw per-lane registers: lane l
// holds a[4 l .. 4 l + 3], b[2 l, 2 l + 1], c[4 l .. 4 l + 3]; its d registers go to d[4 l + i].
extern "C" __global__ void ckemu_isa_mma(const uint32_t* a, const uint32_t* b, const float* c, int bf16, float* d) {
    const int lane = threadIdx.x;
    uint32_t ra[4], rb[2];
    float acc[4];
    for (int i = 0; i < 4; ++i) ra[i] = a[lane * 4 + i];
    for (int i = 0; i < 2; ++i) rb[i] = b[lane * 2 + i];
    for (int i = 0; i < 4; ++i) acc[i] = c[lane * 4 + i];
    if (bf16) ck::Mma16816<__nv_bfloat16>::run(acc, ra, rb);
    else ck::Mma16816<__half>::run(acc, ra, rb);
    for (int i = 0; i < 4; ++i) d[lane * 4 + i] = acc[i];
}

// cp.async.cg.shared.global 16 with commit_group / wait_group, per lane (each thread has its own
// groups). src holds 3 x 32 chunks of 16 bytes (sets X, Y, Z); out[lane][stage] gets the lane's
// shared 16 bytes at each stage:
//   0: after issue + commit, before any wait (undefined on a GPU, where it races with the copy; the
//      emulator shows 0xff bytes there until wait_group lands the data)
//   1: after wait_group 0 (X)
//   2: the zero-fill form with source size lane % 17 (lanes 16 and 17.. cover 16 and 0 too)
//   3, 4: two groups (Y into slot 0, then Z into slot 1), after wait_group 1: slot 0, slot 1
//   5: slot 1 after wait_group 0
constexpr uint32_t kOld = 0xa5a5a5a5u;

extern "C" __global__ void ckemu_isa_cp_async(const uint4* src, uint4* out) {
    __shared__ __align__(16) uint4 slot[2][32];
    const int lane = threadIdx.x;
    const uint4 old = make_uint4(kOld, kOld, kOld, kOld);
    uint4* o = out + lane * 6;
    slot[0][lane] = old;
    ck::cp_async_16(&slot[0][lane], &src[lane], 16);
    ck::cp_async_commit();
    o[0] = slot[0][lane];
    ck::cp_async_wait<0>();
    o[1] = slot[0][lane];

    slot[0][lane] = old;
    ck::cp_async_16(&slot[0][lane], &src[lane], lane % 17);
    ck::cp_async_commit();
    ck::cp_async_wait<0>();
    o[2] = slot[0][lane];

    slot[0][lane] = old;
    slot[1][lane] = old;
    ck::cp_async_16(&slot[0][lane], &src[32 + lane], 16);
    ck::cp_async_commit();
    ck::cp_async_16(&slot[1][lane], &src[64 + lane], 16);
    ck::cp_async_commit();
    ck::cp_async_wait<1>();  // retires the older group only
    o[3] = slot[0][lane];
    o[4] = slot[1][lane];
    ck::cp_async_wait<0>();
    o[5] = slot[1][lane];
}

// ---------------------------------------------------------------------------------------------
// Misuse the emulator must report (the launch fails with CUDA_ERROR_LAUNCH_FAILED, the cause on
// stderr naming the kernel).

// ldmatrix's operand must be shared memory; `g` is global.
extern "C" __global__ void ckemu_isa_bad_ldmatrix_global(const uint16_t* g, uint32_t* out) {
    uint32_t r[4];
    ck::ldmatrix_x4(r, g + (threadIdx.x % 32) * 8);
    out[threadIdx.x] = r[0];
}

// A barrier reached by half of the block.
extern "C" __global__ void ckemu_isa_bad_partial_syncthreads(int* out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1;
}

// Lanes of one warp at different collectives with the same full mask.
extern "C" __global__ void ckemu_isa_bad_divergent_collective(int* out) {
    const int lane = threadIdx.x % 32;
    int v;
    if (lane < 16) v = __shfl_sync(0xffffffffu, lane, 0);
    else v = (int)__ballot_sync(0xffffffffu, 1);
    out[threadIdx.x] = v;
}

// A committed cp.async group never waited for: its shared write would land after the thread left.
extern "C" __global__ void ckemu_isa_bad_unwaited_cp_async(const uint4* src) {
    __shared__ __align__(16) uint4 slot[32];
    ck::cp_async_16(&slot[threadIdx.x % 32], &src[threadIdx.x % 32], 16);
    ck::cp_async_commit();
}
