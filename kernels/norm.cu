// Batch norm over the channels of an NHWC tensor seen as [M, C] (M = N·H·W): training
// forward (batch statistics, running statistics updated), eval forward, backward, and
// the two that let backward recompute instead of keep ([train] activation_memory =
// "lean"): `batch_norm_normalize` is also the recomputation of a training forward's output
// from its input and saved statistics, and `batch_norm_relu_bwd_dx` is the backward of a
// fused ReLU whose mask is recomputed from the input x and β rather than read from the
// stored output (the same `bn_value` formula rounded to the stored dtype, so the mask is
// the one the output would give, and the gradients match `batch_norm_bwd_dx`'s bit for bit).
//
// Statistics are reduced deterministically and in the very order of the CPU twin
// (src/backend/cpu/norm.rs), so they agree bit for bit: the rows are cut into chunks of
// `rows` (the host passes the CPU twin's STATS_CHUNK_ROWS, 256); pass 1 (`batch_norm_chunk_sums_f64`) gives one thread each (chunk, channel) and sums
// that chunk's rows in order, in f64; pass 2 (`batch_norm_reduce_chunks_f64`) sums the chunk
// partials of a channel in order. Consecutive threads take consecutive channels, so each
// warp reads a contiguous run of a row (coalesced). The variance is two-pass (mean
// first), accurate when |mean| ≫ std. Element-wise arithmetic uses the round-to-nearest
// intrinsics so that the compiler does not fuse a multiply-add the CPU rounds twice.
//
// Bytes: the training forward reads x three times (two statistics passes, normalise) and
// writes y once; the backward reads dy and x twice — one pass takes both of its sums, Σg
// and Σg·x̂, each still in its own order (they were two passes: benches/step_traffic.rs
// counted batch norm's backward at 2.5× its least traffic, the largest excess after the
// convolutions'). At ResNet sizes (C ≤ 2048, M in the hundreds of thousands) the
// statistics passes are bandwidth-bound like the rest; a later version fuses the sums
// into the producing convolution's epilogue.
//
// Activations (x, y, dy, relu_y, dx) are FP32 or FP16: the kernels that touch them are
// templates on the element type with an `_f32` and an `_f16` entry (`batch_norm_chunk_sums`
// reads FP32 as `_f64`, named for its f64 partials); loads widen to FP32 and stores round
// once (`df_load` / `df_store`), so the FP16 entries match the CPU twin bit for bit too.
// Statistics, γ, β and their gradients are FP32 whatever the activations are. In FP16 the
// passes move half the bytes of the FP32 ones.
#include "common.cuh"

// What pass 1 sums, per element i of channel ch. SUM_GRADS takes two sums at once, Σg and
// Σg·x̂, and writes the partials of each chunk as 2C values: Σg's C, then Σg·x̂'s.
enum BnSum { SUM_X = 0, SUM_SQDEV = 1, SUM_GRADS = 2 };

// The normalised value before the ReLU and the rounding: one formula for the forward
// and for the mask recomputed in backward.
DF_DEVICE float bn_value(float x, float mean, float invstd, float gamma, float beta) {
    return __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(x, mean), invstd), gamma), beta);
}

// v as a tensor of x's element type stores it.
DF_DEVICE float rounded_as(const float*, float v) { return v; }
DF_DEVICE float rounded_as(const __half*, float v) { return __half2float(__float2half_rn(v)); }

// Where a fused ReLU's mask comes from in backward: the stored output `relu_y`, or (when
// `mask_beta` is given) the output recomputed from x, rounded to T as the forward stored it.
// Neither: no ReLU was fused.
template <typename T>
struct ReluMask {
    const T* relu_y;
    const T* x;
    const float* mean;
    const float* invstd;
    const float* gamma;
    const float* beta;
};

template <typename T>
DF_DEVICE float bn_grad(const T* dy, ReluMask<T> mask, long long i, int ch) {
    float g = df_load(dy, i);
    if (mask.relu_y) return df_load(mask.relu_y, i) > 0.0f ? g : 0.0f;
    if (mask.beta) {
        float y = fmaxf(bn_value(df_load(mask.x, i), mask.mean[ch], mask.invstd[ch], mask.gamma[ch], mask.beta[ch]),
                        0.0f);
        return rounded_as(mask.x, y) > 0.0f ? g : 0.0f;
    }
    return g;
}

template <typename T>
DF_DEVICE void chunk_sums(const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ relu_y,
                          const double* __restrict__ mean_d, const float* __restrict__ mean_f,
                          const float* __restrict__ invstd, const float* __restrict__ mask_gamma,
                          const float* __restrict__ mask_beta, int kind, long long M, int C, long long rows,
                          double* __restrict__ partials) {
    ReluMask<T> mask{relu_y, x, mean_f, invstd, mask_gamma, mask_beta};
    long long chunks = (M + rows - 1) / rows;
    DF_GRID_STRIDE(t, chunks * C) {
        int ch = (int)(t % C);
        long long chunk = t / C;
        long long end = min((chunk + 1) * rows, M);
        double acc = 0.0, acc_g = 0.0;
        for (long long row = chunk * rows; row < end; ++row) {
            long long i = row * C + ch;
            double v;
            switch (kind) {
                case SUM_X: v = (double)df_load(x, i); break;
                case SUM_SQDEV: {
                    double d = __dsub_rn((double)df_load(x, i), mean_d[ch]);
                    v = __dmul_rn(d, d);
                    break;
                }
                default: {
                    double g = (double)bn_grad(dy, mask, i, ch);
                    float xhat = __fmul_rn(__fsub_rn(df_load(x, i), mean_f[ch]), invstd[ch]);
                    acc_g = __dadd_rn(acc_g, g);
                    v = __dmul_rn(g, (double)xhat);
                }
            }
            acc = __dadd_rn(acc, v);
        }
        if (kind == SUM_GRADS) {
            partials[chunk * 2 * C + ch] = acc_g;
            partials[chunk * 2 * C + C + ch] = acc;
        } else {
            partials[t] = acc;
        }
    }
}

extern "C" __global__ void batch_norm_chunk_sums_f64(const float* __restrict__ x, const float* __restrict__ dy,
                                                     const float* __restrict__ relu_y,
                                                     const double* __restrict__ mean_d,
                                                     const float* __restrict__ mean_f,
                                                     const float* __restrict__ invstd,
                                                     const float* __restrict__ mask_gamma,
                                                     const float* __restrict__ mask_beta, int kind, long long M,
                                                     int C, long long rows, double* __restrict__ partials) {
    chunk_sums(x, dy, relu_y, mean_d, mean_f, invstd, mask_gamma, mask_beta, kind, M, C, rows, partials);
}

extern "C" __global__ void batch_norm_chunk_sums_f16(const __half* __restrict__ x, const __half* __restrict__ dy,
                                                     const __half* __restrict__ relu_y,
                                                     const double* __restrict__ mean_d,
                                                     const float* __restrict__ mean_f,
                                                     const float* __restrict__ invstd,
                                                     const float* __restrict__ mask_gamma,
                                                     const float* __restrict__ mask_beta, int kind, long long M,
                                                     int C, long long rows, double* __restrict__ partials) {
    chunk_sums(x, dy, relu_y, mean_d, mean_f, invstd, mask_gamma, mask_beta, kind, M, C, rows, partials);
}

extern "C" __global__ void batch_norm_reduce_chunks_f64(const double* __restrict__ partials, long long chunks, int C,
                                                double* __restrict__ out) {
    DF_GRID_STRIDE(ch, (long long)C) {
        double acc = 0.0;
        for (long long k = 0; k < chunks; ++k) acc = __dadd_rn(acc, partials[k * C + ch]);
        out[ch] = acc;
    }
}

// mean_d = Σx / M.
extern "C" __global__ void batch_norm_mean_f64(const double* __restrict__ sum, long long M, int C,
                                       double* __restrict__ mean_d) {
    DF_GRID_STRIDE(ch, (long long)C) mean_d[ch] = __ddiv_rn(sum[ch], (double)M);
}

// From Σ(x − mean)²: the saved mean and invstd (f32), and the running statistics,
// updated with the unbiased variance as PyTorch does.
extern "C" __global__ void batch_norm_train_stats_f32(const double* __restrict__ mean_d, const double* __restrict__ sqdev,
                                              long long M, int C, float eps, float momentum,
                                              float* __restrict__ mean_f, float* __restrict__ invstd,
                                              float* __restrict__ running_mean, float* __restrict__ running_var) {
    double mom = (double)momentum;
    double unbias = M > 1 ? __ddiv_rn((double)M, (double)(M - 1)) : 1.0;
    DF_GRID_STRIDE(ch, (long long)C) {
        double var = __ddiv_rn(sqdev[ch], (double)M);
        invstd[ch] = (float)__ddiv_rn(1.0, __dsqrt_rn(__dadd_rn(var, (double)eps)));
        mean_f[ch] = (float)mean_d[ch];
        running_mean[ch] =
            (float)__dadd_rn(__dmul_rn(1.0 - mom, (double)running_mean[ch]), __dmul_rn(mom, mean_d[ch]));
        running_var[ch] = (float)__dadd_rn(__dmul_rn(1.0 - mom, (double)running_var[ch]),
                                           __dmul_rn(__dmul_rn(mom, var), unbias));
    }
}

// Eval mode: invstd from the running variance, in f32 as the CPU twin.
extern "C" __global__ void batch_norm_invstd_f32(const float* __restrict__ var, int C, float eps,
                                         float* __restrict__ invstd) {
    DF_GRID_STRIDE(ch, (long long)C) invstd[ch] = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var[ch], eps)));
}

// y = (x − mean)·invstd·γ + β, then ReLU if asked.
template <typename T>
DF_DEVICE void normalize(const T* __restrict__ x, long long M, int C, const float* __restrict__ mean,
                         const float* __restrict__ invstd, const float* __restrict__ gamma,
                         const float* __restrict__ beta, int relu, T* __restrict__ y) {
    DF_GRID_STRIDE(i, M * C) {
        int ch = (int)(i % C);
        float v = bn_value(df_load(x, i), mean[ch], invstd[ch], gamma[ch], beta[ch]);
        df_store(y, i, relu ? fmaxf(v, 0.0f) : v);
    }
}

extern "C" __global__ void batch_norm_normalize_f32(const float* __restrict__ x, long long M, int C,
                                                    const float* __restrict__ mean, const float* __restrict__ invstd,
                                                    const float* __restrict__ gamma, const float* __restrict__ beta,
                                                    int relu, float* __restrict__ y) {
    normalize(x, M, C, mean, invstd, gamma, beta, relu, y);
}

extern "C" __global__ void batch_norm_normalize_f16(const __half* __restrict__ x, long long M, int C,
                                                    const float* __restrict__ mean, const float* __restrict__ invstd,
                                                    const float* __restrict__ gamma, const float* __restrict__ beta,
                                                    int relu, __half* __restrict__ y) {
    normalize(x, M, C, mean, invstd, gamma, beta, relu, y);
}

// From Σg and Σg·x̂ (`sums`: Σg's C values, then Σg·x̂'s): dβ, dγ, and their means for
// the input gradient.
extern "C" __global__ void batch_norm_bwd_stats_f32(const double* __restrict__ sums, long long M, int C, float* __restrict__ mean_g,
                                            float* __restrict__ mean_gx, float* __restrict__ dgamma,
                                            float* __restrict__ dbeta) {
    DF_GRID_STRIDE(ch, (long long)C) {
        double sum_g = sums[ch], sum_gx = sums[C + ch];
        mean_g[ch] = (float)__ddiv_rn(sum_g, (double)M);
        mean_gx[ch] = (float)__ddiv_rn(sum_gx, (double)M);
        dgamma[ch] = (float)sum_gx;
        dbeta[ch] = (float)sum_g;
    }
}

// dx = γ·invstd·(g − mean(g) − x̂·mean(g·x̂)).
template <typename T>
DF_DEVICE void bwd_dx(const T* __restrict__ dy, const T* __restrict__ x, ReluMask<T> mask, long long M, int C,
                      const float* __restrict__ gamma, const float* __restrict__ mean,
                      const float* __restrict__ invstd, const float* __restrict__ mean_g,
                      const float* __restrict__ mean_gx, T* __restrict__ dx) {
    DF_GRID_STRIDE(i, M * C) {
        int ch = (int)(i % C);
        float xhat = __fmul_rn(__fsub_rn(df_load(x, i), mean[ch]), invstd[ch]);
        float inner = __fsub_rn(__fsub_rn(bn_grad(dy, mask, i, ch), mean_g[ch]), __fmul_rn(xhat, mean_gx[ch]));
        df_store(dx, i, __fmul_rn(__fmul_rn(gamma[ch], invstd[ch]), inner));
    }
}

#define DF_BN_BWD_DX(name, T)                                                                                    \
    extern "C" __global__ void name(const T* __restrict__ dy, const T* __restrict__ x,                           \
                                    const T* __restrict__ relu_y, long long M, int C,                            \
                                    const float* __restrict__ gamma, const float* __restrict__ mean,             \
                                    const float* __restrict__ invstd, const float* __restrict__ mean_g,          \
                                    const float* __restrict__ mean_gx, T* __restrict__ dx) {                     \
        ReluMask<T> mask{relu_y, x, mean, invstd, gamma, nullptr};                                               \
        bwd_dx(dy, x, mask, M, C, gamma, mean, invstd, mean_g, mean_gx, dx);                                     \
    }

// The mask recomputed from x and β (no stored output).
#define DF_BN_RELU_BWD_DX(name, T)                                                                               \
    extern "C" __global__ void name(const T* __restrict__ dy, const T* __restrict__ x, long long M, int C,      \
                                    const float* __restrict__ gamma, const float* __restrict__ beta,             \
                                    const float* __restrict__ mean, const float* __restrict__ invstd,            \
                                    const float* __restrict__ mean_g, const float* __restrict__ mean_gx,         \
                                    T* __restrict__ dx) {                                                        \
        ReluMask<T> mask{nullptr, x, mean, invstd, gamma, beta};                                                 \
        bwd_dx(dy, x, mask, M, C, gamma, mean, invstd, mean_g, mean_gx, dx);                                     \
    }

DF_BN_BWD_DX(batch_norm_bwd_dx_f32, float)
DF_BN_BWD_DX(batch_norm_bwd_dx_f16, __half)
DF_BN_RELU_BWD_DX(batch_norm_relu_bwd_dx_f32, float)
DF_BN_RELU_BWD_DX(batch_norm_relu_bwd_dx_f16, __half)
