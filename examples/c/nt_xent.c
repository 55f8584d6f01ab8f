/* NT-Xent forward and backward through the C ABI, on device memory the library allocates (so the
 * program needs no CUDA headers). Without a GPU it shows the documented statuses instead.
 *
 *   cargo build --release
 *   cc examples/c/nt_xent.c -Iinclude -Ltarget/release -lcontrastive_kernels -lm \
 *      -Wl,-rpath,"$PWD/target/release" -o nt_xent && ./nt_xent
 *
 * (-lm: sinf and sqrt below. tests/c_abi.rs runs the cc line as written, in a folder laid out
 * as the repository: examples/c/, include/, target/release/.)
 */
#include <math.h>
#include <stdio.h>

#include "contrastive_kernels.h"

#define CHECK(call)                                                                  \
    do {                                                                             \
        int32_t s_ = (call);                                                         \
        if (s_ != CK_OK) {                                                           \
            fprintf(stderr, "%s failed: %s: %s\n", #call, ck_status_name(s_), ck_last_error()); \
            return 1;                                                                \
        }                                                                            \
    } while (0)

enum { B = 4, N = 2 * B, D = 8 };

int main(void) {
    printf("contrastive-kernels %s\n", ck_version());

    CkLossConfig config;
    CHECK(ck_loss_preset(CK_LOSS_NT_XENT, 0.5f, 0.0f, &config));

    int32_t status = ck_device_check(0);
    if (status != CK_OK) {
        printf("no usable GPU: %s: %s\n", ck_status_name(status), ck_last_error());
        /* Argument checks come before any device work: a NULL input description is rejected. */
        status = ck_contrastive_forward(0, NULL, &config, NULL, NULL, NULL, NULL, NULL, NULL);
        printf("forward with inputs = NULL: %s: %s\n", ck_status_name(status), ck_last_error());
        return status == CK_ERR_INVALID_ARGUMENT ? 0 : 1;
    }

    /* Two views of B samples: row i and row i + B are views of instance i. */
    float x[N * D];
    int32_t instance[N];
    for (int i = 0; i < N; ++i) {
        instance[i] = i % B;
        for (int j = 0; j < D; ++j) x[i * D + j] = sinf(1.3f * (float)(i % B) + 0.7f * (float)j) + 0.05f * (float)(i / B);
    }
    const float one = 1.0f;
    void *d_x, *d_instance, *d_loss, *d_lse, *d_positives, *d_upstream, *d_grad;
    CHECK(ck_device_malloc(0, sizeof x, &d_x));
    CHECK(ck_device_malloc(0, sizeof instance, &d_instance));
    CHECK(ck_device_malloc(0, sizeof(float), &d_loss));
    CHECK(ck_device_malloc(0, N * sizeof(float), &d_lse));
    CHECK(ck_device_malloc(0, N * sizeof(int32_t), &d_positives));
    CHECK(ck_device_malloc(0, sizeof(float), &d_upstream));
    CHECK(ck_device_malloc(0, sizeof x, &d_grad));
    CHECK(ck_memcpy(0, d_x, x, sizeof x, 1));
    CHECK(ck_memcpy(0, d_instance, instance, sizeof instance, 1));
    CHECK(ck_memcpy(0, d_upstream, &one, sizeof one, 1));

    CkLossInputs inputs = {0};
    inputs.dtype = CK_F32;
    inputs.n = N;
    inputs.d = D;
    inputs.features = d_x;
    inputs.instance = (const int32_t *)d_instance;

    float loss = 0.0f;
    CHECK(ck_contrastive_forward(0, NULL, &config, &inputs, d_loss, NULL, d_lse, d_positives, &loss));
    CHECK(ck_contrastive_backward(0, NULL, &config, &inputs, d_lse, d_positives, d_upstream, d_grad, NULL, NULL));
    float grad[N * D];
    CHECK(ck_memcpy(0, grad, d_grad, sizeof grad, 0));
    double norm = 0.0;
    for (int k = 0; k < N * D; ++k) norm += (double)grad[k] * grad[k];
    printf("NT-Xent loss %.6f, |d loss / d x| %.6f\n", loss, sqrt(norm));

    void *buffers[] = {d_x, d_instance, d_loss, d_lse, d_positives, d_upstream, d_grad};
    for (unsigned k = 0; k < sizeof buffers / sizeof buffers[0]; ++k) CHECK(ck_device_free(0, buffers[k]));
    return 0;
}
