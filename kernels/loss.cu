// Binary cross-entropy with logits, mean over the batch: forward and backward.
//
// Layout. logits, targets: n FP32 (one logit per clip; n is at most a few thousand).
// loss: 1 FP32. grad: n FP32, d(mean loss)/d(logit) times `scale` (the loss scale of
// mixed-precision training, folded in here so that no separate scaling pass is needed).
//
// The forward is one block: n is tiny, and a single block gives a fixed-order reduction
// (`df_block_sum`), so the same logits give the same loss bits on every run — a grid
// reduction with atomics would not. The loss uses the stable form
// max(x,0) − x·y + log1p(exp(−|x|)), exact for large |x| where the naive form overflows.
#include "common.cuh"

DF_DEVICE float bce_term(float x, float y) { return fmaxf(x, 0.0f) - x * y + log1pf(__expf(-fabsf(x))); }

// Launch with one block of a power-of-two size and blockDim.x floats of shared memory.
extern "C" __global__ void bce_with_logits_fwd_f32(const float* __restrict__ logits,
                                                   const float* __restrict__ targets, int n,
                                                   float* __restrict__ loss) {
    extern __shared__ float scratch[];
    float sum = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += bce_term(logits[i], targets[i]);
    float total = df_block_sum(sum, scratch);
    if (threadIdx.x == 0) loss[0] = n > 0 ? total / n : 0.0f;
}

extern "C" __global__ void bce_with_logits_bwd_f32(const float* __restrict__ logits,
                                                   const float* __restrict__ targets, int n, float scale,
                                                   float* __restrict__ grad) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) grad[i] = (df_sigmoid(logits[i]) - targets[i]) * (scale / n);
}
