// Element-wise ops on FP32 (and the FP32 ↔ FP16 casts of mixed precision): ReLU forward
// and backward, residual add, scale, fill, sigmoid; ReLU and the residual add also on
// FP16 activations (`_f16`).
//
// Layout: flat arrays of n elements, 16-byte aligned. Each thread moves float4 vectors
// (128-bit loads and stores) in a grid-stride loop over n/4 vectors, then the n mod 4
// tail; the grid is sized by the host to a few waves of the device (`grid_1d`), so one
// launch covers any n. These ops are bandwidth-bound (8–12 bytes per element against
// one or two FLOPs): the target is ≥ 0.8 of the device-to-device copy bandwidth on
// tensors of 64 MB and more (benches owed to a GPU run). Every result is the IEEE result
// of the same FP32 operations the CPU twin (src/backend/cpu/eltwise.rs) performs, so
// the parity test asks for equality, except sigmoid (fast exp: 2 ulp).
//
// The FP16 variants widen each element to FP32, compute, and round the result to nearest
// even once, as the CPU twin's `Elem` does, so they too match it bit for bit. They move
// one 2-byte element per thread and iteration (a warp reads 64 contiguous bytes:
// coalesced, but half the bytes per request of the FP32 kernels' float4); 16-byte
// vectors of 8 halves are the next step once a GPU run measures them against the copy
// bandwidth.
#include "common.cuh"

#define VEC4(ptr) reinterpret_cast<float4*>(ptr)
#define CVEC4(ptr) reinterpret_cast<const float4*>(ptr)

extern "C" __global__ void relu_fwd_f32(const float* __restrict__ x, float* __restrict__ y, long long n) {
    long long v = n / 4;
    DF_GRID_STRIDE(i, v) {
        float4 a = CVEC4(x)[i];
        VEC4(y)[i] = make_float4(fmaxf(a.x, 0.0f), fmaxf(a.y, 0.0f), fmaxf(a.z, 0.0f), fmaxf(a.w, 0.0f));
    }
    DF_GRID_STRIDE(i, n - 4 * v) y[4 * v + i] = fmaxf(x[4 * v + i], 0.0f);
}

// dx = dy where the forward output was positive, else 0.
extern "C" __global__ void relu_bwd_f32(const float* __restrict__ dy, const float* __restrict__ y,
                                        float* __restrict__ dx, long long n) {
    long long v = n / 4;
    DF_GRID_STRIDE(i, v) {
        float4 g = CVEC4(dy)[i], o = CVEC4(y)[i];
        VEC4(dx)[i] = make_float4(o.x > 0.0f ? g.x : 0.0f, o.y > 0.0f ? g.y : 0.0f, o.z > 0.0f ? g.z : 0.0f,
                                  o.w > 0.0f ? g.w : 0.0f);
    }
    DF_GRID_STRIDE(i, n - 4 * v) {
        long long j = 4 * v + i;
        dx[j] = y[j] > 0.0f ? dy[j] : 0.0f;
    }
}

// y += x
extern "C" __global__ void add_assign_f32(float* __restrict__ y, const float* __restrict__ x, long long n) {
    long long v = n / 4;
    DF_GRID_STRIDE(i, v) {
        float4 a = VEC4(y)[i], b = CVEC4(x)[i];
        VEC4(y)[i] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
    }
    DF_GRID_STRIDE(i, n - 4 * v) y[4 * v + i] += x[4 * v + i];
}

// y *= alpha
extern "C" __global__ void scale_f32(float* __restrict__ y, float alpha, long long n) {
    long long v = n / 4;
    DF_GRID_STRIDE(i, v) {
        float4 a = VEC4(y)[i];
        VEC4(y)[i] = make_float4(a.x * alpha, a.y * alpha, a.z * alpha, a.w * alpha);
    }
    DF_GRID_STRIDE(i, n - 4 * v) y[4 * v + i] *= alpha;
}

extern "C" __global__ void fill_f32(float* __restrict__ y, float value, long long n) {
    long long v = n / 4;
    DF_GRID_STRIDE(i, v) VEC4(y)[i] = make_float4(value, value, value, value);
    DF_GRID_STRIDE(i, n - 4 * v) y[4 * v + i] = value;
}

extern "C" __global__ void relu_fwd_f16(const __half* __restrict__ x, __half* __restrict__ y, long long n) {
    DF_GRID_STRIDE(i, n) df_store(y, i, fmaxf(df_load(x, i), 0.0f));
}

extern "C" __global__ void relu_bwd_f16(const __half* __restrict__ dy, const __half* __restrict__ y,
                                        __half* __restrict__ dx, long long n) {
    DF_GRID_STRIDE(i, n) df_store(dx, i, df_load(y, i) > 0.0f ? df_load(dy, i) : 0.0f);
}

extern "C" __global__ void add_assign_f16(__half* __restrict__ y, const __half* __restrict__ x, long long n) {
    DF_GRID_STRIDE(i, n) df_store(y, i, __fadd_rn(df_load(y, i), df_load(x, i)));
}

extern "C" __global__ void sigmoid_f32(const float* __restrict__ x, float* __restrict__ y, long long n) {
    DF_GRID_STRIDE(i, n) y[i] = df_sigmoid(x[i]);
}

// Round to nearest even, as the CPU's `half::f16::from_f32`.
extern "C" __global__ void cast_f32_f16(const float* __restrict__ x, __half* __restrict__ y, long long n) {
    DF_GRID_STRIDE(i, n) y[i] = __float2half_rn(x[i]);
}

extern "C" __global__ void cast_f16_f32(const __half* __restrict__ x, float* __restrict__ y, long long n) {
    DF_GRID_STRIDE(i, n) y[i] = __half2float(x[i]);
}
