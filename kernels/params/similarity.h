// Parameters of kernels/similarity.cu, the one definition for the kernels and for Rust (build.rs
// generates crate::gpu::params::similarity from this file; see build_support/params.rs for the
// subset of C allowed here).
#pragma once
#include <stdint.h>

// Output rows and columns per block of the f16 / bf16 kernels (ck::Tile128).
#define CK_SIMILARITY_MMA_TILE 128
// Output rows and columns per block of the f32 kernels (ck::Tile64F32).
#define CK_SIMILARITY_FMA_TILE 64
// Threads per block of both.
#define CK_SIMILARITY_THREADS 256

// S = scale * normalize(A) normalize(B)^T, A (m x d), B (n x d), S (m x n) in the output dtype.
typedef struct CkSimilarityParams {
    const void* a;                // m x d, the input dtype
    const void* b;                // n x d, the input dtype
    const float* norms_a;         // m row norms
    const float* norms_b;         // n row norms
    void* s;                      // m x n, the output dtype
    int32_t m;
    int32_t n;
    int32_t d;
    float scale;
    int32_t mask_diagonal;        // 0 or 1: S[i][i] = diagonal_value
    float diagonal_value;
} CkSimilarityParams;
