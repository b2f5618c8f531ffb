// Shared helpers for every dfengine kernel file.
//
// Conventions used across kernels/:
//  * Entry points are `extern "C"` and named `op_dtype` (e.g. `gemm_ref_f16`), so the
//    Rust side can load them by a stable, unmangled name.
//  * Sizes and strides are `int` when a tensor dimension can never pass 2^31 elements in
//    a 12 GB budget, and `long long` for flat element offsets.
//  * Reductions run in a fixed order (no atomics on floats) so two runs give the same bits.
#pragma once
#include <cuda_fp16.h>

#define DF_DEVICE __device__ __forceinline__

DF_DEVICE float df_sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }

// Loads widen to FP32 and stores round to nearest even, so that one kernel body templated
// on the element type serves FP32 and FP16 tensors with FP32 arithmetic (the CPU twins'
// `Elem` in src/backend/cpu/storage.rs does the same).
DF_DEVICE float df_load(const float* p, long long i) { return p[i]; }
DF_DEVICE float df_load(const __half* p, long long i) { return __half2float(p[i]); }
DF_DEVICE void df_store(float* p, long long i, float v) { p[i] = v; }
DF_DEVICE void df_store(__half* p, long long i, float v) { p[i] = __float2half_rn(v); }

// Sum of `v` over a block of `blockDim.x` threads (a power of two, at most 1024), in a
// fixed tree order. Every thread gets the total. `scratch` holds blockDim.x values.
template <typename T>
DF_DEVICE T df_block_sum(T v, T* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) scratch[threadIdx.x] += scratch[threadIdx.x + s];
        __syncthreads();
    }
    T total = scratch[0];
    __syncthreads();
    return total;
}

// Grid-stride loop: thread t of the grid takes items t, t + (threads in the grid), … below
// `n`. Element-wise kernels count their items in float4 vectors and do the tail after
// it, so they require 16-byte aligned base pointers (the pool's blocks are 512-byte
// aligned).
#define DF_GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)
