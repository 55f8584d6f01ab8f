// Views and synthetic outliers of small images on the GPU (ops::augment's transforms), one thread
// per output pixel. Images are rows of a matrix, channel-major (C x H x W), f32 in [0, 1].
//
// augment_views: per view, a translation with zero fill, an optional mirror and a gain (drawn on
// the host, ops::augment::Augment::draw), then Gaussian noise and a clamp to [0, 1]. Pixel p's
// noise is the p-th normal of SplitMix64 seeded with the view's noise seed: SplitMix64's state
// after k steps is seed + k * golden, so the thread jumps straight to draws 2p + 1 and 2p + 2, and
// the CPU oracle (Augment::apply_drawn) draws the same numbers in order. Box-Muller in double, as
// the oracle computes it.
// rotate_views: rotations by quarter turns counter-clockwise (numpy's rot90), square images.
#include "params/augment.h"

namespace ck {

constexpr unsigned long long kGolden = 0x9E3779B97F4A7C15ull;

__device__ __forceinline__ unsigned long long splitmix_output(unsigned long long state) {
    unsigned long long z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The p-th standard normal of SplitMix64(seed), as rng::SplitMix64::normal draws it.
__device__ __forceinline__ double nth_normal(unsigned long long seed, unsigned long long p) {
    const unsigned long long z1 = splitmix_output(seed + (2 * p + 1) * kGolden);
    const unsigned long long z2 = splitmix_output(seed + (2 * p + 2) * kGolden);
    const double u1 = 1.0 - (double)(z1 >> 11) * (1.0 / 9007199254740992.0);  // (0, 1]
    const double u2 = (double)(z2 >> 11) * (1.0 / 9007199254740992.0);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * 3.141592653589793 * u2);
}

}  // namespace ck

extern "C" __global__ void __launch_bounds__(CK_AUGMENT_THREADS) augment_views(const __grid_constant__ CkAugmentViewsParams params) {
    const float* images = params.images;
    const int *src_row = params.src_row, *shift_y = params.shift_y, *shift_x = params.shift_x, *flip = params.flip;
    const float* gain = params.gain;
    const uint64_t* noise_seed = params.noise_seed;
    float* out = params.out;
    const int n_images = params.n_images, channels = params.channels, h = params.h, w = params.w;
    const int n_views = params.n_views;
    const float noise_std = params.noise_std;
    const long long pixels = (long long)channels * h * w;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pixels * n_views) return;
    const int v = (int)(i / pixels);
    const long long p = i % pixels;
    const int c = (int)(p / ((long long)h * w)), y = (int)(p / w % h), x = (int)(p % w);
    const int r = src_row[v];
    const int xs = flip[v] ? w - 1 - x : x;
    const int sy = y - shift_y[v], sx = xs - shift_x[v];
    float value = 0.f;
    if (r >= 0 && r < n_images && sy >= 0 && sy < h && sx >= 0 && sx < w)
        value = images[(long long)r * pixels + (long long)c * h * w + (long long)sy * w + sx];
    const float noise = noise_std > 0.f ? noise_std * (float)ck::nth_normal(noise_seed[v], (unsigned long long)p) : 0.f;
    out[i] = fminf(fmaxf(value * gain[v] + noise, 0.f), 1.f);
}

extern "C" __global__ void __launch_bounds__(CK_AUGMENT_THREADS) rotate_views(const __grid_constant__ CkRotateViewsParams params) {
    const float* images = params.images;
    const int *src_row = params.src_row, *quarter_turns = params.quarter_turns;
    float* out = params.out;
    const int n_images = params.n_images, channels = params.channels, n = params.n, n_views = params.n_views;
    const long long pixels = (long long)channels * n * n;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pixels * n_views) return;
    const int v = (int)(i / pixels);
    const long long p = i % pixels;
    const int c = (int)(p / ((long long)n * n)), row = (int)(p / n % n), col = (int)(p % n);
    int sr, sc;
    switch (quarter_turns[v] & 3) {
        case 0: sr = row; sc = col; break;
        case 1: sr = col; sc = n - 1 - row; break;
        case 2: sr = n - 1 - row; sc = n - 1 - col; break;
        default: sr = n - 1 - col; sc = row; break;
    }
    const int r = src_row[v];
    out[i] = (r >= 0 && r < n_images) ? images[(long long)r * pixels + (long long)c * n * n + (long long)sr * n + sc] : 0.f;
}
