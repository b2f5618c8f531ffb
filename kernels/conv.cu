// conv2d forward, NHWC activations, KRSC weights, FP16 in, FP32 accumulate, FP16 out.
//
// Layout. x: N×H×W×C. w: K×R×S×C (K output channels, R×S window; C innermost so that a
// filter tap is one contiguous run of channels, the same run an NHWC pixel holds).
// y: N×P×Q×K with P = (H + 2·pad_h − R) / stride_h + 1 and Q likewise. No bias (ResNet
// convolutions feed batch norm).
//
// `conv2d_fwd_ref_f16` is the direct definition: one thread per output element, loops
// over R, S, C. It is the on-device oracle for the implicit-GEMM tensor-core kernels
// (forward, dgrad, wgrad) that replace it on the hot path; its cost is K·R·S·C global
// reads per output, far from any roofline, and that is accepted for a reference.
#include "common.cuh"

extern "C" __global__ void conv2d_fwd_ref_f16(const __half* __restrict__ x, const __half* __restrict__ w,
                                              __half* __restrict__ y, int N, int H, int W, int C, int K,
                                              int R, int S, int P, int Q, int stride_h, int stride_w,
                                              int pad_h, int pad_w) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)N * P * Q * K;
    if (idx >= total) return;
    int k = (int)(idx % K);
    int q = (int)((idx / K) % Q);
    int p = (int)((idx / ((long long)K * Q)) % P);
    int n = (int)(idx / ((long long)K * Q * P));
    float acc = 0.0f;
    for (int r = 0; r < R; ++r) {
        int h = p * stride_h - pad_h + r;
        if (h < 0 || h >= H) continue;
        for (int s = 0; s < S; ++s) {
            int wc = q * stride_w - pad_w + s;
            if (wc < 0 || wc >= W) continue;
            const __half* xp = x + (((long long)n * H + h) * W + wc) * C;
            const __half* wp = w + (((long long)k * R + r) * S + s) * C;
            for (int c = 0; c < C; ++c) acc = fmaf(__half2float(xp[c]), __half2float(wp[c]), acc);
        }
    }
    y[idx] = __float2half_rn(acc);
}
