// Element types of the library and the macros that stamp out one extern "C" kernel per dtype.
// Names follow the Rust side's DType::name(): f32, f16, bf16.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace ck {

template <typename T> struct Dtype;

template <> struct Dtype<float> {
    static __device__ __forceinline__ float to_float(float x) { return x; }
    static __device__ __forceinline__ float from_float(float x) { return x; }
};

template <> struct Dtype<__half> {
    static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
    static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
};

template <> struct Dtype<__nv_bfloat16> {
    static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
    static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

template <typename T> __device__ __forceinline__ float to_float(T x) { return Dtype<T>::to_float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x) { return Dtype<T>::from_float(x); }

// Two values as one vector of T (a 4-byte store for f16 / bf16), and as the 32-bit word an mma
// operand register holds (lo in the low 16 bits).
template <typename T> struct Pair;
template <> struct Pair<float> { using type = float2; static __device__ __forceinline__ float2 make(float a, float b) { return make_float2(a, b); } };
template <> struct Pair<__half> { using type = __half2; static __device__ __forceinline__ __half2 make(float a, float b) { return __floats2half2_rn(a, b); } };
template <> struct Pair<__nv_bfloat16> { using type = __nv_bfloat162; static __device__ __forceinline__ __nv_bfloat162 make(float a, float b) { return __floats2bfloat162_rn(a, b); } };

template <typename T> __device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
    const typename Pair<T>::type v = Pair<T>::make(lo, hi);
    uint32_t r;
    memcpy(&r, &v, sizeof(r));
    return r;
}


}  // namespace ck

// M(name, type) for every floating dtype.
#define CK_FOR_EACH_FLOAT(M) M(f32, float) M(f16, __half) M(bf16, __nv_bfloat16)

// M(in_name, in_type, out_name, out_type) for every (input, output) pair of floating dtypes.
#define CK_FOR_EACH_FLOAT_PAIR_OUT(M, in_name, in_type) \
    M(in_name, in_type, f32, float) M(in_name, in_type, f16, __half) M(in_name, in_type, bf16, __nv_bfloat16)
#define CK_FOR_EACH_FLOAT_PAIR(M)                  \
    CK_FOR_EACH_FLOAT_PAIR_OUT(M, f32, float)      \
    CK_FOR_EACH_FLOAT_PAIR_OUT(M, f16, __half)     \
    CK_FOR_EACH_FLOAT_PAIR_OUT(M, bf16, __nv_bfloat16)
