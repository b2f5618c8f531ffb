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
#include "common.cuh"

struct PoolGeom {
    int N, H, W, C, window, stride, pad, P, Q;
};

// Offset (within image n) of the cell that wins output (p, q, ch).
DF_DEVICE long long pool_argmax(const PoolGeom& g, const float* x_n, int p, int q, int ch) {
    long long best = -1;
    float best_v = -INFINITY;
    for (int r = 0; r < g.window; ++r) {
        int h = p * g.stride + r - g.pad;
        if (h < 0 || h >= g.H) continue;
        for (int s = 0; s < g.window; ++s) {
            int w = q * g.stride + s - g.pad;
            if (w < 0 || w >= g.W) continue;
            long long at = ((long long)h * g.W + w) * g.C + ch;
            float v = x_n[at];
            if (best < 0 || v > best_v || isnan(v)) {
                best = at;
                best_v = v;
            }
        }
    }
    return best;
}

extern "C" __global__ void max_pool2d_fwd_f32(const float* __restrict__ x, float* __restrict__ y, PoolGeom g) {
    long long total = (long long)g.N * g.P * g.Q * g.C;
    DF_GRID_STRIDE(i, total) {
        int ch = (int)(i % g.C);
        int q = (int)((i / g.C) % g.Q);
        int p = (int)((i / ((long long)g.C * g.Q)) % g.P);
        long long n = i / ((long long)g.C * g.Q * g.P);
        const float* x_n = x + n * g.H * g.W * g.C;
        y[i] = x_n[pool_argmax(g, x_n, p, q, ch)];
    }
}

// One thread per input cell: the outputs whose window covers (h, w) are
// p ∈ [⌈(h + pad − window + 1) / stride⌉, ⌊(h + pad) / stride⌋] (and likewise q).
extern "C" __global__ void max_pool2d_bwd_f32(const float* __restrict__ x, const float* __restrict__ dy,
                                              float* __restrict__ dx, PoolGeom g) {
    long long total = (long long)g.N * g.H * g.W * g.C;
    DF_GRID_STRIDE(i, total) {
        int ch = (int)(i % g.C);
        int w = (int)((i / g.C) % g.W);
        int h = (int)((i / ((long long)g.C * g.W)) % g.H);
        long long n = i / ((long long)g.C * g.W * g.H);
        const float* x_n = x + n * g.H * g.W * g.C;
        const float* dy_n = dy + n * g.P * g.Q * g.C;
        long long self = ((long long)h * g.W + w) * g.C + ch;
        int p_lo = max(0, (h + g.pad - g.window + g.stride) / g.stride);
        int p_hi = min(g.P - 1, (h + g.pad) / g.stride);
        int q_lo = max(0, (w + g.pad - g.window + g.stride) / g.stride);
        int q_hi = min(g.Q - 1, (w + g.pad) / g.stride);
        float sum = 0.0f;
        for (int p = p_lo; p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q)
                if (pool_argmax(g, x_n, p, q, ch) == self) sum += dy_n[((long long)p * g.Q + q) * g.C + ch];
        dx[i] = sum;
    }
}

// y[n, ch] = mean over the `group` rows of block n of x[n·group + r, ch].
extern "C" __global__ void mean_rows_f32(const float* __restrict__ x, float* __restrict__ y, long long blocks,
                                         int group, int C) {
    double inv = 1.0 / group;
    DF_GRID_STRIDE(i, blocks * C) {
        long long n = i / C;
        int ch = (int)(i % C);
        const float* base = x + n * group * C + ch;
        double acc = 0.0;
        for (int r = 0; r < group; ++r) acc += (double)base[(long long)r * C];
        y[i] = (float)(acc * inv);
    }
}

// dx[n·group + r, ch] = dy[n, ch] / group.
extern "C" __global__ void mean_rows_bwd_f32(const float* __restrict__ dy, float* __restrict__ dx,
                                             long long blocks, int group, int C) {
    float inv = 1.0f / group;
    DF_GRID_STRIDE(i, blocks * group * C) {
        long long n = i / ((long long)group * C);
        int ch = (int)(i % C);
        dx[i] = dy[n * C + ch] * inv;
    }
}
