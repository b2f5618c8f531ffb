// Binary cross-entropy with logits, mean over the batch: forward and backward.
//
// Layout. logits, targets: n FP32 (one logit per clip; n is at most a few thousand).
// loss: 1 FP32. grad: n FP32, d(mean loss)/d(logit) times `scale` (the loss scale of
// mixed-precision training, folded in here so that no separate scaling pass is needed).
//
// With p = pos_weight (PyTorch's) and y the target smoothed to y·(1−ε) + ε/2:
//   loss = p·y·softplus(−x) + (1−y)·softplus(x),  ∂loss/∂x = (1−y)·σ(x) − p·y·σ(−x),
// softplus(z) = max(z, 0) + log1p(exp(−|z|)), exact for large |z| where the naive form
// overflows. The forward is one block: n is tiny, and a single block gives a fixed-order
// reduction (`df_block_sum`), so the same logits give the same loss bits on every run — a
// grid reduction with atomics would not.
#include "common.cuh"

DF_DEVICE float softplus(float z) { return fmaxf(z, 0.0f) + log1pf(__expf(-fabsf(z))); }
DF_DEVICE float smoothed(float t, float eps) { return t * (1.0f - eps) + 0.5f * eps; }

// Launch with one block of a power-of-two size and blockDim.x floats of shared memory.
extern "C" __global__ void bce_with_logits_fwd_f32(const float* __restrict__ logits,
                                                   const float* __restrict__ targets, int n, float pos_weight,
                                                   float smoothing, float* __restrict__ loss) {
    extern __shared__ float scratch[];
    float sum = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float x = logits[i], y = smoothed(targets[i], smoothing);
        sum += pos_weight * y * softplus(-x) + (1.0f - y) * softplus(x);
    }
    float total = df_block_sum(sum, scratch);
    if (threadIdx.x == 0) loss[0] = n > 0 ? total / n : 0.0f;
}

extern "C" __global__ void bce_with_logits_bwd_f32(const float* __restrict__ logits,
                                                   const float* __restrict__ targets, int n, float pos_weight,
                                                   float smoothing, float scale, float* __restrict__ grad) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = logits[i], y = smoothed(targets[i], smoothing);
    grad[i] = (scale / n) * ((1.0f - y) * df_sigmoid(x) - pos_weight * y * df_sigmoid(-x));
}
