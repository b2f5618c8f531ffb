// conv2d forward, NHWC activations, KRSC weights, FP16 in, FP32 accumulate, FP16 out.
//
// Layout. x: N×H×W×C. w: K×R×S×C (K output channels, R×S window; C innermost so that a
// filter tap is one contiguous run of channels, the same run an NHWC pixel holds).
// y: N×P×Q×K with P = (H + 2·pad_h − R) / stride_h + 1 and Q likewise. No bias (ResNet
// convolutions feed batch norm).
//
// `conv2d_fwd_ref_f16` is the direct definition: one thread per output element, loops
// over R, S, C. It is the on-device oracle for the implicit-GEMM tensor-core kernels
// that replace it on the hot path; its cost is K·R·S·C global reads per output, far from
// any roofline, and that is accepted for a reference.
//
// `conv2d_fwd_implicit_f16`: the forward as the GEMM y [N·P·Q, K] = A · wᵀ, where A's row
// (n, p, q) is the receptive field of that output pixel laid out (r, s, c) — the order
// of a KRSC filter, so w is already the N×K operand of the tensor-core main loop
// (mma.cuh) with no reshaping. A is never materialised (no im2col buffer): the loader
// turns each 16-byte chunk (8 channels of one tap) into the NHWC address of that pixel,
// or a zero fill where the tap falls in the padding. That needs C to be a multiple of 8
// (every ResNet layer but the stem, whose 3 channels the host pads to 8 with zero
// weights). The epilogue writes NHWC y directly, with the fused options of the GEMM
// (alpha, beta, bias, ReLU; FP16 or FP32). Index arithmetic: two divisions per chunk and
// stage; hoisting the (n, p, q) decode out of the K loop is the first optimisation owed
// to measurements on a GPU.
//
// `conv2d_dgrad_implicit_f16`: the input gradient as the GEMM dx [N·H·W, C] = A · w'ᵀ,
// A's row (n, h, w) laid out (r, s, k): dy[n, (h + pad − r)/stride, (w + pad − s)/stride, k]
// where that division is exact and lands inside dy, zero elsewhere — so stride 2 is
// handled by the same loader (three quarters of its A chunks are zero fills: a
// phase-split version that skips them is owed to GPU measurements). w' is the filter
// transposed to C×R×S×K (`conv_weight_krsc_to_crsk_f16`, once per step), which makes it
// the N×K operand. Needs K (output channels) a multiple of 8, as every ResNet layer has.
#include "mma.cuh"

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

// A's element (m, k) of the convolution's implicit GEMM, 8 channels at a time.
struct ConvA {
    const __half* x;
    int H, W, C, S, P, Q, stride_h, stride_w, pad_h, pad_w;
    DF_DEVICE const __half* at(int m, int k, bool& ok) const {
        int pq = P * Q;
        int n = m / pq, rem = m - n * pq;
        int p = rem / Q, q = rem - p * Q;
        int c = k % C, rs = k / C;
        int r = rs / S, s = rs - r * S;
        int h = p * stride_h - pad_h + r, w = q * stride_w - pad_w + s;
        ok = h >= 0 && h < H && w >= 0 && w < W;
        return x + (((long long)n * H + h) * W + w) * C + c;
    }
};

extern "C" __global__ void __launch_bounds__(tc::THREADS)
    conv2d_fwd_implicit_f16(const __half* __restrict__ x, const __half* __restrict__ w, void* __restrict__ y,
                            int N, int H, int W, int C, int K, int R, int S, int P, int Q, int stride_h,
                            int stride_w, int pad_h, int pad_w, float alpha, float beta, int out_f16,
                            const float* __restrict__ bias, int relu) {
    int M = N * P * Q, KK = R * S * C;
    int m0 = blockIdx.y * tc::BM, n0 = blockIdx.x * tc::BN;
    ConvA a{x, H, W, C, S, P, Q, stride_h, stride_w, pad_h, pad_w};
    float acc[4][4][4];
    tc::mainloop(a, w, KK, M, K, KK, m0, n0, acc);
    tc::epilogue(acc, M, K, m0, n0, alpha, beta, y, K, out_f16, bias, relu);
}

// A's element (m, k) of the input-gradient GEMM: m = (n, h, w), k = (r, s, k_out).
struct DgradA {
    const __half* dy;
    int H, W, K, S, P, Q, stride_h, stride_w, pad_h, pad_w;
    DF_DEVICE const __half* at(int m, int kk, bool& ok) const {
        int hw = H * W;
        int n = m / hw, rem = m - n * hw;
        int h = rem / W, w = rem - h * W;
        int ko = kk % K, rs = kk / K;
        int r = rs / S, s = rs - r * S;
        int ph = h + pad_h - r, pw = w + pad_w - s;
        int p = ph / stride_h, q = pw / stride_w;
        ok = ph >= 0 && pw >= 0 && p * stride_h == ph && q * stride_w == pw && p < P && q < Q;
        return dy + (((long long)n * P + p) * Q + q) * K + ko;
    }
};

// w [K, R, S, C] → wt [C, R, S, K].
extern "C" __global__ void conv_weight_krsc_to_crsk_f16(const __half* __restrict__ w, __half* __restrict__ wt,
                                                        int K, int R, int S, int C) {
    long long total = (long long)K * R * S * C;
    DF_GRID_STRIDE(i, total) {
        int c = (int)(i % C);
        long long rs = (i / C) % ((long long)R * S);
        int k = (int)(i / ((long long)C * R * S));
        wt[((long long)c * R * S + rs) * K + k] = w[i];
    }
}

extern "C" __global__ void __launch_bounds__(tc::THREADS)
    conv2d_dgrad_implicit_f16(const __half* __restrict__ dy, const __half* __restrict__ wt, void* __restrict__ dx,
                              int N, int H, int W, int C, int K, int R, int S, int P, int Q, int stride_h,
                              int stride_w, int pad_h, int pad_w, float alpha, float beta, int out_f16) {
    int M = N * H * W, KK = R * S * K;
    int m0 = blockIdx.y * tc::BM, n0 = blockIdx.x * tc::BN;
    DgradA a{dy, H, W, K, S, P, Q, stride_h, stride_w, pad_h, pad_w};
    float acc[4][4][4];
    tc::mainloop(a, wt, KK, M, C, KK, m0, n0, acc);
    tc::epilogue(acc, M, C, m0, n0, alpha, beta, dx, C, out_f16, nullptr, 0);
}
