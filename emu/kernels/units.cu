// Unit tests of the library's device functions (kernels/common/*.cuh), compiled only into the
// emulator and launched by emu/tests/units.rs: edge cases the kernels' own callers never reach
// through the public API, but that a device function must still answer in a defined way.
#include "common/select.cuh"

// find_bucket<256> by one warp over `hist`: out = {digit, above, count} (lane 0 writes).
extern "C" __global__ void ckemu_unit_find_bucket(const unsigned* hist, unsigned want, int* out) {
    const ck::Bucket b = ck::find_bucket<256>(hist, want);
    if (threadIdx.x == 0) {
        out[0] = b.digit;
        out[1] = (int)b.above;
        out[2] = (int)b.count;
    }
}

// warp_select_kth over n keys: out = the k-th largest (k may exceed n).
extern "C" __global__ void ckemu_unit_select_kth(const unsigned long long* keys, int n, int k, unsigned long long* out) {
    __shared__ unsigned hist[256];
    auto src = [keys](int i) { return keys[i]; };
    const unsigned long long theta = ck::warp_select_kth(src, n, k, hist);
    if (threadIdx.x == 0) out[0] = theta;
}
