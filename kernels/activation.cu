// The activations of the MTCNN face detector, forward only, FP32: a convolution's bias
// added per channel (`bias_add_f32`), the same fused with PReLU's per-channel slope
// (`bias_prelu_f32`: y = v for v ≥ 0, alpha[c]·v below, v = y + bias[c]), and softmax
// over the last dimension (`softmax_rows_f32`).
//
// Layout: channels last, as everywhere (NHWC feature maps, [N, C] rows): y [rows, C] flat,
// bias and alpha [C]. The bias ops update y in place, since each follows a convolution
// whose fresh output nobody else holds: one read and one write of the map instead of a
// copy. One thread per element in a grid-stride loop (`grid_1d`): consecutive threads
// take consecutive elements, so a warp reads and writes 128 contiguous bytes, and the C
// values of bias and alpha (at most 256 floats) stay in L1. The channel costs one
// 64-bit remainder per element; these ops are bandwidth-bound (8 bytes per element
// against two FLOPs), so it is not what limits them. MTCNN's C (10 to 256) is too small
// and too odd for a block per row or float4 vectors across channels to pay.
//
// Softmax: one thread per row, looping over its C values three times (max, exp and sum,
// divide). MTCNN takes it over C = 2 (face / no face): a warp then reads 256 contiguous
// bytes, two rows' worth of floats per thread in turn, which L1 serves; a block or warp
// per row would leave all but two of its threads idle. A row of C in the thousands would
// want a block per row with a tree reduction instead.
//
// Parity with the CPU twins (src/backend/cpu/activation.rs): the bias ops perform the
// same FP32 operations and match bit for bit. Softmax subtracts the row's maximum, sums
// in the same order and divides correctly rounded, but takes the fast `__expf` (ex2.approx
// of x·log2 e; 2 + ⌊1.16·|x|⌋ ulp) where the CPU has libm's exp: a few ulp apart for the
// spreads of logits a classifier gives (about 3·10⁻⁶ relative at x − max = −20), and
// exp of arguments below −87 flushes to 0 where the CPU keeps a subnormal. The argument
// is never positive, so nothing overflows.
#include "common.cuh"

template <bool PRELU>
DF_DEVICE void bias_act(float* __restrict__ y, const float* __restrict__ bias, const float* __restrict__ alpha,
                        long long n, int c) {
    DF_GRID_STRIDE(i, n) {
        int ch = (int)(i % c);
        float v = y[i] + bias[ch];
        if (PRELU && v < 0.0f) v *= alpha[ch];
        y[i] = v;
    }
}

// y [n / c, c] += bias [c]
extern "C" __global__ void bias_add_f32(float* __restrict__ y, const float* __restrict__ bias, long long n,
                                        int c) {
    bias_act<false>(y, bias, nullptr, n, c);
}

// y ← PReLU(y + bias) with one slope per channel (PyTorch's nn.PReLU(C)).
extern "C" __global__ void bias_prelu_f32(float* __restrict__ y, const float* __restrict__ bias,
                                          const float* __restrict__ alpha, long long n, int c) {
    bias_act<true>(y, bias, alpha, n, c);
}

// y [rows, c] = exp(x − max) / Σ exp(x − max) over each row of x [rows, c].
extern "C" __global__ void softmax_rows_f32(const float* __restrict__ x, float* __restrict__ y, long long rows,
                                            int c) {
    DF_GRID_STRIDE(r, rows) {
        const float* xr = x + r * c;
        float* yr = y + r * c;
        float m = -INFINITY;
        for (int k = 0; k < c; ++k) m = fmaxf(m, xr[k]);
        float sum = 0.0f;
        for (int k = 0; k < c; ++k) {
            float e = __expf(xr[k] - m);
            yr[k] = e;
            sum += e;
        }
        for (int k = 0; k < c; ++k) yr[k] = __fdiv_rn(yr[k], sum);
    }
}
