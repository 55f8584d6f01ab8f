// The emulation header: force-included (g++ -include) before every kernels/*.cu compiled for the
// host by emu/build.rs. It supplies what nvcc would: qualifiers, built-in variables, warp
// intrinsics, atomics, fast-math intrinsics; half and bfloat16 come from the host paths of
// cuda_fp16.h / cuda_bf16.h. The inline PTX of kernels/common/tile.cuh has one host branch per asm
// site there (#ifdef CK_EMULATOR), calling the ckemu:: functions of runtime.h.
//
// __global__, __shared__ and __launch_bounds__ expand to themselves, so they survive the
// preprocessor; the build then rewrites them (emu/build/rewrite.rs): each __shared__ declaration
// becomes a reference into the block's shared memory, and each kernel is registered by name with
// its launch bound.
#pragma once
#define CK_EMULATOR 1

#define __global__ __global__
#define __shared__ __shared__
#define __launch_bounds__(...) __launch_bounds__(__VA_ARGS__)
#define __device__
#define __host__
#define __grid_constant__
#define __noinline__ __attribute__((noinline))

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>
#include <vector_types.h>

#include "ckemu/runtime.h"

// crt/host_defines.h (included above) redefines __forceinline__ as always_inline; on the host that
// only costs compile time, so keep plain inline.
#undef __forceinline__
#define __forceinline__ inline

// ---------------------------------------------------------------------------------------------
// Built-in variables: the current fiber's thread, its block and the launch's shape.
#define threadIdx (::ckemu::self()->thread_idx)
#define blockIdx (::ckemu::self()->block->block_idx)
#define blockDim (::ckemu::self()->block->block_dim)
#define gridDim (::ckemu::self()->block->grid_dim)
#define warpSize 32

// ---------------------------------------------------------------------------------------------
// Synchronization and warp collectives (each records its call site for error messages).
#define __syncthreads() ::ckemu::syncthreads(CKEMU_SITE)
#define __syncwarp(...) ::ckemu::syncwarp_any(CKEMU_SITE, ##__VA_ARGS__)
#define __shfl_sync(...) ::ckemu::shfl_t(CKEMU_SITE, ::ckemu::Shfl::Idx, __VA_ARGS__)
#define __shfl_xor_sync(...) ::ckemu::shfl_t(CKEMU_SITE, ::ckemu::Shfl::Xor, __VA_ARGS__)
#define __shfl_down_sync(...) ::ckemu::shfl_t(CKEMU_SITE, ::ckemu::Shfl::Down, __VA_ARGS__)
#define __shfl_up_sync(...) ::ckemu::shfl_t(CKEMU_SITE, ::ckemu::Shfl::Up, __VA_ARGS__)
#define __ballot_sync(mask, predicate) ::ckemu::ballot(CKEMU_SITE, (mask), (predicate) ? 1 : 0)
#define __match_any_sync(mask, value) ::ckemu::match_any_t(CKEMU_SITE, (mask), (value))
#define __activemask() ::ckemu::activemask()
#define __cvta_generic_to_shared(p) ::ckemu::shared_offset(CKEMU_SITE, (p))

namespace ckemu {

inline void syncwarp_any(Site site, unsigned mask = 0xffffffffu) { syncwarp(site, mask); }

template <typename T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp exchanges move at most 64 bits");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    return bits;
}
template <typename T> inline T from_bits(uint64_t bits) {
    T v;
    memcpy(&v, &bits, sizeof(T));
    return v;
}

template <typename T>
inline T shfl_t(Site site, Shfl kind, unsigned mask, T var, int lane_arg, int width = 32) {
    return from_bits<T>(shfl(site, kind, mask, to_bits(var), lane_arg, width));
}

template <typename T> inline unsigned match_any_t(Site site, unsigned mask, T value) {
    return match_any(site, mask, to_bits(value));
}

// Atomics are real atomics: blocks run concurrently on several OS threads.
template <typename T> inline T atomic_add(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
template <typename T> inline T atomic_min(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
template <typename T> inline T atomic_max(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v > old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
inline float atomic_add_float(float* p, float v) {
    uint32_t old = __atomic_load_n(reinterpret_cast<uint32_t*>(p), __ATOMIC_SEQ_CST);
    for (;;) {
        float f;
        memcpy(&f, &old, 4);
        f += v;
        uint32_t next;
        memcpy(&next, &f, 4);
        if (__atomic_compare_exchange_n(reinterpret_cast<uint32_t*>(p), &old, next, true, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
            memcpy(&f, &old, 4);
            return f;
        }
    }
}

}  // namespace ckemu

// The overload set of CUDA's atomics (exact types, so implicit conversions behave as under nvcc).
inline int atomicAdd(int* p, int v) { return ckemu::atomic_add(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return ckemu::atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return ckemu::atomic_add(p, v); }
inline float atomicAdd(float* p, float v) { return ckemu::atomic_add_float(p, v); }
inline int atomicMin(int* p, int v) { return ckemu::atomic_min(p, v); }
inline unsigned atomicMin(unsigned* p, unsigned v) { return ckemu::atomic_min(p, v); }
inline long long atomicMin(long long* p, long long v) { return ckemu::atomic_min(p, v); }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) { return ckemu::atomic_min(p, v); }
inline int atomicMax(int* p, int v) { return ckemu::atomic_max(p, v); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return ckemu::atomic_max(p, v); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) { return ckemu::atomic_max(p, v); }

// ---------------------------------------------------------------------------------------------
// Integer and bit intrinsics, min / max as CUDA's device overloads.
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}

inline float __int_as_float(int x) { return ckemu::from_bits<float>((uint32_t)x); }
inline int __float_as_int(float x) { return (int)(uint32_t)ckemu::to_bits(x); }
inline float __uint_as_float(unsigned x) { return ckemu::from_bits<float>(x); }
inline unsigned __float_as_uint(float x) { return (unsigned)ckemu::to_bits(x); }
inline double __longlong_as_double(long long x) { return ckemu::from_bits<double>((uint64_t)x); }
inline long long __double_as_longlong(double x) { return (long long)ckemu::to_bits(x); }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

// ---------------------------------------------------------------------------------------------
// Fast-math intrinsics map to the accurate libm functions: results differ from a GPU's in the last
// bits (compare with tolerances), never in meaning.
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __saturatef(float x) { return x != x ? 0.f : fminf(fmaxf(x, 0.f), 1.f); }
inline float exp2f_approx(float x) { return exp2f(x); }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
