// conv2d: forward, input gradient and weight gradient; NHWC activations, KRSC weights,
// FP16 in, FP32 accumulate.
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
// `conv2d_fwd_implicit_f16_<tile>`: the forward as the GEMM y [N·P·Q, K] = A · wᵀ, where
// A's row (n, p, q) is the receptive field of that output pixel laid out (r, s, c) — the
// order of a KRSC filter, so w is already the N×K operand of the tensor-core main loop
// (mma.cuh, KContig layout) with no reshaping. A is never materialised (no im2col
// buffer): the loader turns each 16-byte chunk (8 channels of one tap) into the NHWC
// address of that pixel, or a zero fill where the tap falls in the padding. That needs C
// to be a multiple of 8: the stem's 3 channels (input and filter) are zero-padded to 8 by
// `conv_pad_channels_f16` first — 8/3 of the stem's useful MACs, on tensor cores, instead
// of a CUDA-core kernel that would make it the slowest layer. Stride-1 1×1 layers skip
// this file and run the plain GEMM. The epilogue writes NHWC y directly, with the fused
// options of the GEMM (alpha, beta, bias, ReLU; FP16 or FP32). Index arithmetic: two
// divisions per chunk and stage; hoisting the (n, p, q) decode out of the K loop is the
// first optimisation owed to measurements on a GPU.
//
// `conv2d_dgrad_implicit_f16_<tile>`: the input gradient as the GEMM dx [N·H·W, C] =
// A · w'ᵀ, A's row (n, h, w) laid out (r, s, k): dy[n, (h + pad − r)/stride,
// (w + pad − s)/stride, k] where that division is exact and lands inside dy. With
// stride 2 it is exact for one tap in two along each axis, so a single GEMM over all
// rows and taps would spend three quarters of its A chunks on zero fills (softgpu's
// counters: 0.75 of a 3×3 stride-2 layer's cp.async bytes, and the MACs with them). So
// the GEMM is split by stride phase: the rows h with (h + pad) ≡ φ (mod stride) meet only
// the taps r ≡ φ, and phase (φh, φw) is its own launch (grid over its rows, reduction
// over its taps) whose epilogue scatters its rows back into dx (`PhaseRows`). A phase
// with no taps (a 1×1 stride-2 layer's odd rows) runs no reduction and writes its rows'
// zeros (β·dx). Stride 1 is the one phase of the whole GEMM. w' is the filter
// transposed to C×R×S×K per phase (`conv_weight_krsc_to_crsk_f16`: each phase's block,
// its taps only, in phase order), which makes it the N×K operand. Needs K (output
// channels) a multiple of 8, as every ResNet layer has.
//
// `conv2d_wgrad_implicit_f16_<tile>`: the weight gradient as the GEMM dw [K, R·S·C] =
// dyᵀ · A over the N·P·Q output pixels, A the forward's receptive-field matrix (the same
// loader, `ConvA`). Here the reduction runs over pixels and neither operand is
// contiguous along it — dy's and x's channels are — so both tiles are stored
// reduction-outer (mma.cuh, KOuter layout) and fragments come out by ldmatrix.trans.
// Few output tiles (64×576 for a 64-channel 3×3 layer) over a long reduction (N·P·Q =
// 1.6 M pixels at 512 frames of 56²) would leave most of the GPU idle, so the reduction
// is split (grid z): each split writes FP32 partials to a workspace and
// `conv2d_wgrad_reduce_f32` sums them in split order — deterministic, no atomics — and
// drops the stem's padded channels. The split count comes from the host's tile table.
//
// Tiles: 128×128 (8 warps) by default, 128×64 (fwd, dgrad) or 64×128 (wgrad) where the
// output channels are 64 or the grid is under one wave. Registers (ptxas 13.0, sm_90):
// 120–128 per thread (128: the phase-split input gradient's 128×128 tile, at the limit),
// no spills: two 8-warp blocks or four 4-warp blocks per SM.
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

// A's element (m, k) of the convolution's implicit GEMM, 8 channels at a time: the
// receptive field of output pixel m = (n, p, q) at column k = (r, s, c). The weight
// gradient reads x the same way (as its B operand, reduction row m, column k).
struct ConvA {
    const __half* x;
    int H, W, C, S, P, Q, stride_h, stride_w, pad_h, pad_w;
    DF_DEVICE const __half* base() const { return x; }
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

// The kernels' shared argument list: NHWC/KRSC dimensions and the window geometry.
#define CONV_GEOM_PARAMS                                                                                  \
    int N, int H, int W, int C, int K, int R, int S, int P, int Q, int stride_h, int stride_w, int pad_h, \
        int pad_w
#define CONV_GEOM_ARGS N, H, W, C, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w

template <class T>
DF_DEVICE void conv2d_fwd_implicit(const __half* __restrict__ x, const __half* __restrict__ w,
                                   void* __restrict__ y, CONV_GEOM_PARAMS, float alpha, float beta, int out_f16,
                                   const float* __restrict__ bias, int relu) {
    int M = N * P * Q, KK = R * S * C;
    int m0 = blockIdx.y * T::BM, n0 = blockIdx.x * T::BN;
    tc::KContig<T, ConvA> tiles{{x, H, W, C, S, P, Q, stride_h, stride_w, pad_h, pad_w}, w, KK, M, K, KK, m0, n0};
    float acc[4][4][4];
    tc::mainloop<T>(tiles, 0, (KK + tc::BK - 1) / tc::BK, acc);
    tc::epilogue<T>(acc, M, K, m0, n0, alpha, beta, y, K, out_f16, bias, relu);
}

#define CONV_FWD(TILE, NAME)                                                                              \
    extern "C" __global__ void __launch_bounds__(TILE::THREADS)                                           \
        NAME(const __half* __restrict__ x, const __half* __restrict__ w, void* __restrict__ y,           \
             CONV_GEOM_PARAMS, float alpha, float beta, int out_f16, const float* __restrict__ bias,     \
             int relu) {                                                                                  \
        conv2d_fwd_implicit<TILE>(x, w, y, CONV_GEOM_ARGS, alpha, beta, out_f16, bias, relu);            \
    }
CONV_FWD(tc::Tile128x128, conv2d_fwd_implicit_f16_128x128)
CONV_FWD(tc::Tile128x64, conv2d_fwd_implicit_f16_128x64)

// x [rows, c] → [rows, c_pad] with zeros in the added channels: the stem's 3 channels
// (and its filter's) become the 8 the implicit-GEMM loaders copy at a time.
extern "C" __global__ void conv_pad_channels_f16(const __half* __restrict__ src, __half* __restrict__ dst,
                                                 long long rows, int c, int c_pad) {
    DF_GRID_STRIDE(i, rows * c_pad) {
        long long row = i / c_pad;
        int ci = (int)(i - row * c_pad);
        dst[i] = ci < c ? src[row * c + ci] : __float2half_rn(0.0f);
    }
}

// Stride phases along one axis of `n` positions, window `taps`, padding `pad`: phase φ
// holds the positions h with (h + pad) ≡ φ (mod stride), from `first(φ)` every `stride`,
// and the taps r ≡ φ. The host (backend/cuda/conv.rs, `Phase`) counts them the same way.
DF_DEVICE int phase_first(int phase, int pad, int stride) { return ((phase - pad) % stride + stride) % stride; }
DF_DEVICE int phase_count(int first, int n, int stride) { return first < n ? (n - first + stride - 1) / stride : 0; }

// The input-gradient rows of phase (φh, φw): output pixels (n, h0 + i·sh, w0 + j·sw).
struct PhaseRows {
    int H, W, Hp, Wp, h0, w0, sh, sw;
    DF_DEVICE long long at(int m) const {
        int hw = Hp * Wp;
        int n = m / hw, rem = m - n * hw;
        int i = rem / Wp, j = rem - i * Wp;
        return ((long long)n * H + h0 + i * sh) * W + w0 + j * sw;
    }
};

// A's element (m, kk) of phase (φh, φw)'s GEMM: m = (n, i, j), the pixel of `rows`;
// kk = (ri, si, k_out), tap (φh + ri·sh, φw + si·sw). The division by the stride is exact
// by construction; what remains is whether the tap lands inside dy.
struct DgradA {
    const __half* dy;
    PhaseRows rows;
    int K, Sp, P, Q, pad_h, pad_w, phase_h, phase_w;
    DF_DEVICE const __half* at(int m, int kk, bool& ok) const {
        int hw = rows.Hp * rows.Wp;
        int n = m / hw, rem = m - n * hw;
        int i = rem / rows.Wp, j = rem - i * rows.Wp;
        int ko = kk % K, rs = kk / K;
        int ri = rs / Sp, si = rs - ri * Sp;
        int p = (rows.h0 + i * rows.sh + pad_h - phase_h) / rows.sh - ri;
        int q = (rows.w0 + j * rows.sw + pad_w - phase_w) / rows.sw - si;
        ok = p >= 0 && p < P && q >= 0 && q < Q;
        return dy + (((long long)n * P + p) * Q + q) * K + ko;
    }
};

// Halves before phase (φh, φw)'s block of the transposed filter: the blocks of the
// earlier row phases (each C·Rφ·S·K), then of the earlier column phases in this one.
DF_DEVICE long long phase_offset(int phase_h, int phase_w, int R, int S, int C, int K, int sh, int sw) {
    int r_before = 0, s_before = 0;
    for (int f = 0; f < phase_h; ++f) r_before += phase_count(f, R, sh);
    for (int f = 0; f < phase_w; ++f) s_before += phase_count(f, S, sw);
    return (long long)C * K * (r_before * S + phase_count(phase_h, R, sh) * s_before);
}

// w [K, R, S, C] → wt: per stride phase (φh, φw), in phase order, the block
// [C, Rφ, Sφ, K] of its taps (r = φh + ri·sh, s = φw + si·sw). Stride 1: [C, R, S, K].
extern "C" __global__ void conv_weight_krsc_to_crsk_f16(const __half* __restrict__ w, __half* __restrict__ wt,
                                                        int K, int R, int S, int C, int sh, int sw) {
    long long total = (long long)K * R * S * C;
    DF_GRID_STRIDE(i, total) {
        int c = (int)(i % C);
        int s = (int)((i / C) % S);
        int r = (int)((i / ((long long)C * S)) % R);
        int k = (int)(i / ((long long)C * R * S));
        int phase_h = r % sh, phase_w = s % sw;
        int rp = phase_count(phase_h, R, sh), sp = phase_count(phase_w, S, sw);
        long long at = phase_offset(phase_h, phase_w, R, S, C, K, sh, sw) +
                       (((long long)c * rp + r / sh) * sp + s / sw) * K + k;
        wt[at] = w[i];
    }
}

template <class T>
DF_DEVICE void conv2d_dgrad_implicit(const __half* __restrict__ dy, const __half* __restrict__ wt,
                                     void* __restrict__ dx, CONV_GEOM_PARAMS, int phase_h, int phase_w,
                                     float alpha, float beta, int out_f16) {
    int h0 = phase_first(phase_h, pad_h, stride_h), w0 = phase_first(phase_w, pad_w, stride_w);
    PhaseRows rows{H, W, phase_count(h0, H, stride_h), phase_count(w0, W, stride_w), h0, w0, stride_h, stride_w};
    int Rp = phase_count(phase_h, R, stride_h), Sp = phase_count(phase_w, S, stride_w);
    int M = N * rows.Hp * rows.Wp, KK = Rp * Sp * K;
    int m0 = blockIdx.y * T::BM, n0 = blockIdx.x * T::BN;
    const __half* b = wt + phase_offset(phase_h, phase_w, R, S, C, K, stride_h, stride_w);
    tc::KContig<T, DgradA> tiles{{dy, rows, K, Sp, P, Q, pad_h, pad_w, phase_h, phase_w}, b, KK, M, C, KK, m0, n0};
    float acc[4][4][4];
    tc::mainloop<T>(tiles, 0, (KK + tc::BK - 1) / tc::BK, acc);
    tc::epilogue<T>(acc, M, C, m0, n0, alpha, beta, dx, C, out_f16, nullptr, 0, rows);
}

#define CONV_DGRAD(TILE, NAME)                                                                            \
    extern "C" __global__ void __launch_bounds__(TILE::THREADS)                                           \
        NAME(const __half* __restrict__ dy, const __half* __restrict__ wt, void* __restrict__ dx,        \
             CONV_GEOM_PARAMS, int phase_h, int phase_w, float alpha, float beta, int out_f16) {          \
        conv2d_dgrad_implicit<TILE>(dy, wt, dx, CONV_GEOM_ARGS, phase_h, phase_w, alpha, beta, out_f16); \
    }
CONV_DGRAD(tc::Tile128x128, conv2d_dgrad_implicit_f16_128x128)
CONV_DGRAD(tc::Tile128x64, conv2d_dgrad_implicit_f16_128x64)

// The weight gradient's A operand: dy as [N·P·Q, K], reduction row = output pixel.
struct WgradDy {
    const __half* dy;
    int K;
    DF_DEVICE const __half* base() const { return dy; }
    DF_DEVICE const __half* at(int pix, int k, bool& ok) const {
        ok = true;
        return dy + (long long)pix * K + k;
    }
};

// Split `blockIdx.z` of the weight gradient: reduction tiles [z·tiles_per_split, …) into
// out + z·K·R·S·C (FP32).
template <class T>
DF_DEVICE void conv2d_wgrad_implicit(const __half* __restrict__ x, const __half* __restrict__ dy,
                                     float* __restrict__ out, CONV_GEOM_PARAMS, int tiles_per_split, float alpha,
                                     float beta) {
    int M = K, NN = R * S * C, KK = N * P * Q;
    int m0 = blockIdx.y * T::BM, n0 = blockIdx.x * T::BN;
    int k_tiles = (KK + tc::BK - 1) / tc::BK;
    int kt0 = blockIdx.z * tiles_per_split, kt1 = min(kt0 + tiles_per_split, k_tiles);
    tc::KOuter<T, WgradDy, ConvA> tiles{
        {dy, K}, {x, H, W, C, S, P, Q, stride_h, stride_w, pad_h, pad_w}, M, NN, KK, m0, n0};
    float acc[4][4][4];
    tc::mainloop<T>(tiles, kt0, kt1, acc);
    tc::epilogue<T>(acc, M, NN, m0, n0, alpha, beta, out + (long long)blockIdx.z * M * NN, NN, 0, nullptr, 0);
}

#define CONV_WGRAD(TILE, NAME)                                                                            \
    extern "C" __global__ void __launch_bounds__(TILE::THREADS)                                           \
        NAME(const __half* __restrict__ x, const __half* __restrict__ dy, float* __restrict__ out,       \
             CONV_GEOM_PARAMS, int tiles_per_split, float alpha, float beta) {                            \
        conv2d_wgrad_implicit<TILE>(x, dy, out, CONV_GEOM_ARGS, tiles_per_split, alpha, beta);           \
    }
CONV_WGRAD(tc::Tile128x128, conv2d_wgrad_implicit_f16_128x128)
CONV_WGRAD(tc::Tile64x128, conv2d_wgrad_implicit_f16_64x128)

// dw [krs, c] = alpha · Σ_z ws[z][krs, c_pad] (+ beta · dw), the splits summed in index
// order so the bits do not depend on scheduling; c < c_pad drops the stem's padding.
extern "C" __global__ void conv2d_wgrad_reduce_f32(const float* __restrict__ ws, float* __restrict__ dw, int splits,
                                                   long long krs, int c_pad, int c, float alpha, float beta) {
    long long split_stride = krs * c_pad;
    DF_GRID_STRIDE(i, krs * c) {
        long long row = i / c;
        long long j = row * c_pad + (i - row * c);
        float sum = 0.0f;
        for (int z = 0; z < splits; ++z) sum += ws[z * split_stride + j];
        dw[i] = beta == 0.0f ? alpha * sum : fmaf(beta, dw[i], alpha * sum);
    }
}
