// Optimizer steps on FP32 master weights, and the gradient bookkeeping of mixed precision.
//
// Layout: flat FP32 arrays of n elements (a parameter, its gradient, its optimizer
// slots). The steps are element-wise and bandwidth-bound (AdamW: 4 arrays read, 3
// written = 28 bytes per parameter); one thread per element in a grid-stride loop.
// The formulas are the CPU twin's (src/backend/cpu/optim.rs), which are PyTorch's: the
// bias corrections are computed once on the host in f64 and passed in.
//
// sum_squares is deterministic: pass 1 gives each block a fixed contiguous chunk and
// reduces it in f64 with a fixed tree (`df_block_sum`) into partials[block]; pass 2, one
// block, sums the partials the same way. No atomics: the same gradients give the same
// norm bits on every run, so gradient clipping is reproducible.
#include "common.cuh"

// p ← p·decay; m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
// p ← p − step_size · m / (√v / bc2_sqrt + ε), with decay = 1 − lr·wd,
// step_size = lr / (1 − β1^t), bc2_sqrt = √(1 − β2^t).
extern "C" __global__ void adamw_step_f32(float* __restrict__ p, const float* __restrict__ g,
                                          float* __restrict__ m, float* __restrict__ v, long long n,
                                          float beta1, float beta2, float eps, float decay, float step_size,
                                          double bc2_sqrt) {
    DF_GRID_STRIDE(i, n) {
        float gi = g[i];
        float pi = p[i] * decay;
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        float denom = (float)((double)sqrtf(vi) / bc2_sqrt) + eps;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step_size * mi / denom;
    }
}

// torch.optim.SGD with dampening 0: g ← g + wd·p; buf ← μ·buf + g (g on the first step);
// p ← p − lr·(g + μ·buf if Nesterov, else buf).
extern "C" __global__ void sgd_step_f32(float* __restrict__ p, const float* __restrict__ g,
                                        float* __restrict__ buf, long long n, float lr, float momentum,
                                        int nesterov, float weight_decay, int first_step) {
    DF_GRID_STRIDE(i, n) {
        float gi = g[i] + weight_decay * p[i];
        if (momentum == 0.0f) {
            p[i] -= lr * gi;
            continue;
        }
        float b = first_step ? gi : momentum * buf[i] + gi;
        buf[i] = b;
        p[i] -= lr * (nesterov ? gi + momentum * b : b);
    }
}

// g ← g·inv_scale; *found = 1 if any element is inf or NaN (every writer writes 1, so
// the unordered stores give one answer).
extern "C" __global__ void unscale_check_f32(float* __restrict__ g, long long n, float inv_scale,
                                             int* __restrict__ found) {
    DF_GRID_STRIDE(i, n) {
        float x = g[i] * inv_scale;
        g[i] = x;
        if (!isfinite(x)) *found = 1;
    }
}

// Pass 1: block b sums g[b·chunk, (b+1)·chunk) squared, in f64. blockDim.x doubles of
// shared memory.
extern "C" __global__ void sum_squares_partial_f32(const float* __restrict__ g, long long n, long long chunk,
                                                   double* __restrict__ partials) {
    extern __shared__ double scratch_d[];
    long long begin = blockIdx.x * chunk, end = min(begin + chunk, n);
    double s = 0.0;
    for (long long i = begin + threadIdx.x; i < end; i += blockDim.x) s += (double)g[i] * (double)g[i];
    double total = df_block_sum(s, scratch_d);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// Pass 2: one block sums `count` partials into out[0].
extern "C" __global__ void sum_partials_f64(const double* __restrict__ partials, int count,
                                            double* __restrict__ out) {
    extern __shared__ double scratch_d[];
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partials[i];
    double total = df_block_sum(s, scratch_d);
    if (threadIdx.x == 0) out[0] = total;
}
