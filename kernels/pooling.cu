// Pooling, NHWC: ResNet's max pool (3×3, stride 2, pad 1 after the stem), the global
// average pool over H×W, and the mean over the T frames of a clip (both are a mean over
// `group` consecutive rows of C channels).
//
// Layout: x [N, H, W, C], y [N, P, Q, C] for max pool; x [N·group, C] → y [N, C] for the
// means. Consecutive threads take consecutive channels, so every warp reads and writes
// contiguous runs of a row: coalesced without staging.
//
// Determinism and parity with the CPU twin (src/backend/cpu/pooling.rs), bit for bit:
//  * the max-pool winner is the first maximum in window scan order, NaN wins (PyTorch's
//    rule); the backward is a gather — each input cell sums, in output order, the
//    gradients of the windows it won — so no atomics and a fixed summation order;
//  * the means accumulate in f64 in row order and scale by 1/group in f64.
//
// Every kernel is a template on the element type with an `_f32` and an `_f16` entry (FP16
// activations under mixed precision): loads widen to FP32, sums stay FP32 (max-pool
// gradients) or f64 (means), and each result is rounded once on store, as in the CPU twin.
#include "common.cuh"

struct PoolGeom {
    int N, H, W, C, window, stride, pad, P, Q;
};

// Offset (within image n) of the cell that wins output (p, q, ch).
template <typename T>
DF_DEVICE long long pool_argmax(const PoolGeom& g, const T* x_n, int p, int q, int ch) {
    long long best = -1;
    float best_v = -INFINITY;
    for (int r = 0; r < g.window; ++r) {
        int h = p * g.stride + r - g.pad;
        if (h < 0 || h >= g.H) continue;
        for (int s = 0; s < g.window; ++s) {
            int w = q * g.stride + s - g.pad;
            if (w < 0 || w >= g.W) continue;
            long long at = ((long long)h * g.W + w) * g.C + ch;
            float v = df_load(x_n, at);
            if (best < 0 || v > best_v || isnan(v)) {
                best = at;
                best_v = v;
            }
        }
    }
    return best;
}

template <typename T>
DF_DEVICE void max_pool2d_fwd(const T* __restrict__ x, T* __restrict__ y, PoolGeom g) {
    long long total = (long long)g.N * g.P * g.Q * g.C;
    DF_GRID_STRIDE(i, total) {
        int ch = (int)(i % g.C);
        int q = (int)((i / g.C) % g.Q);
        int p = (int)((i / ((long long)g.C * g.Q)) % g.P);
        long long n = i / ((long long)g.C * g.Q * g.P);
        const T* x_n = x + n * g.H * g.W * g.C;
        df_store(y, i, df_load(x_n, pool_argmax(g, x_n, p, q, ch)));
    }
}

extern "C" __global__ void max_pool2d_fwd_f32(const float* __restrict__ x, float* __restrict__ y, PoolGeom g) {
    max_pool2d_fwd(x, y, g);
}

extern "C" __global__ void max_pool2d_fwd_f16(const __half* __restrict__ x, __half* __restrict__ y, PoolGeom g) {
    max_pool2d_fwd(x, y, g);
}

// One thread per input cell: the outputs whose window covers (h, w) are
// p ∈ [⌈(h + pad − window + 1) / stride⌉, ⌊(h + pad) / stride⌋] (and likewise q).
template <typename T>
DF_DEVICE void max_pool2d_bwd(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, PoolGeom g) {
    long long total = (long long)g.N * g.H * g.W * g.C;
    DF_GRID_STRIDE(i, total) {
        int ch = (int)(i % g.C);
        int w = (int)((i / g.C) % g.W);
        int h = (int)((i / ((long long)g.C * g.W)) % g.H);
        long long n = i / ((long long)g.C * g.W * g.H);
        const T* x_n = x + n * g.H * g.W * g.C;
        const T* dy_n = dy + n * g.P * g.Q * g.C;
        long long self = ((long long)h * g.W + w) * g.C + ch;
        int p_lo = max(0, (h + g.pad - g.window + g.stride) / g.stride);
        int p_hi = min(g.P - 1, (h + g.pad) / g.stride);
        int q_lo = max(0, (w + g.pad - g.window + g.stride) / g.stride);
        int q_hi = min(g.Q - 1, (w + g.pad) / g.stride);
        float sum = 0.0f;
        for (int p = p_lo; p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q)
                if (pool_argmax(g, x_n, p, q, ch) == self) sum += df_load(dy_n, ((long long)p * g.Q + q) * g.C + ch);
        df_store(dx, i, sum);
    }
}

extern "C" __global__ void max_pool2d_bwd_f32(const float* __restrict__ x, const float* __restrict__ dy,
                                              float* __restrict__ dx, PoolGeom g) {
    max_pool2d_bwd(x, dy, dx, g);
}

extern "C" __global__ void max_pool2d_bwd_f16(const __half* __restrict__ x, const __half* __restrict__ dy,
                                              __half* __restrict__ dx, PoolGeom g) {
    max_pool2d_bwd(x, dy, dx, g);
}

// y[n, ch] = mean over the `group` rows of block n of x[n·group + r, ch].
template <typename T>
DF_DEVICE void mean_rows(const T* __restrict__ x, T* __restrict__ y, long long blocks, int group, int C) {
    double inv = 1.0 / group;
    DF_GRID_STRIDE(i, blocks * C) {
        long long n = i / C;
        int ch = (int)(i % C);
        const T* base = x + n * group * C + ch;
        double acc = 0.0;
        for (int r = 0; r < group; ++r) acc += (double)df_load(base, (long long)r * C);
        df_store(y, i, (float)(acc * inv));
    }
}

extern "C" __global__ void mean_rows_f32(const float* __restrict__ x, float* __restrict__ y, long long blocks,
                                         int group, int C) {
    mean_rows(x, y, blocks, group, C);
}

extern "C" __global__ void mean_rows_f16(const __half* __restrict__ x, __half* __restrict__ y, long long blocks,
                                         int group, int C) {
    mean_rows(x, y, blocks, group, C);
}

// dx[n·group + r, ch] = dy[n, ch] / group.
template <typename T>
DF_DEVICE void mean_rows_bwd(const T* __restrict__ dy, T* __restrict__ dx, long long blocks, int group, int C) {
    float inv = 1.0f / group;
    DF_GRID_STRIDE(i, blocks * group * C) {
        long long n = i / ((long long)group * C);
        int ch = (int)(i % C);
        df_store(dx, i, df_load(dy, n * C + ch) * inv);
    }
}

extern "C" __global__ void mean_rows_bwd_f32(const float* __restrict__ dy, float* __restrict__ dx,
                                             long long blocks, int group, int C) {
    mean_rows_bwd(dy, dx, blocks, group, C);
}

extern "C" __global__ void mean_rows_bwd_f16(const __half* __restrict__ dy, __half* __restrict__ dx,
                                             long long blocks, int group, int C) {
    mean_rows_bwd(dy, dx, blocks, group, C);
}
