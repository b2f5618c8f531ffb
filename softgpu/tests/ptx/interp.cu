// Small kernels for softgpu's interpreter tests (softgpu/tests/exec_*.rs). Each one
// exercises one mechanism: plain SIMT, divergence and reconvergence, barriers, cp.async
// groups, and the checks that must fire (out-of-bounds store, missing wait, divergent
// barrier, unwritten shared memory, a missing barrier, an endless loop). See README.md.

extern "C" __global__ void vec_add_f32(const float* a, const float* b, float* c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}

// Three data-dependent paths, one with a per-thread trip count; then a barrier (which
// needs the warp reconverged) and a read of a neighbour's value.
extern "C" __global__ void diverge_i32(const int* in, int* out) {
    __shared__ int vals[128];
    int t = threadIdx.x;
    int x = in[t];
    int v;
    if (x % 3 == 0) {
        v = x * 2;
    } else if (x % 3 == 1) {
        v = 0;
        for (int k = 0; k < x % 7; ++k) v += k * x;
    } else {
        v = -x;
    }
    vals[t] = v;
    __syncthreads();
    out[t] = v + vals[(t + 1) % blockDim.x];
}

// Tree sum of one block in shared memory (blockDim.x a power of two, ≤ 256).
extern "C" __global__ void block_sum_f32(const float* in, float* out) {
    __shared__ float s[256];
    int t = threadIdx.x;
    s[t] = in[blockIdx.x * blockDim.x + t];
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

__device__ void cp_async16(void* smem, const void* gmem) {
    unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
}

// Each thread copies 16 bytes through shared memory with cp.async; `wait` = 0 leaves out
// the cp.async.wait_group, so the shared read sees what was there before the copy.
extern "C" __global__ void cp_async_copy(const float4* in, float4* out, int wait) {
    extern __shared__ float4 stage[];
    int t = threadIdx.x;
    cp_async16(&stage[t], &in[t]);
    asm volatile("cp.async.commit_group;\n" ::);
    if (wait) asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
    out[t] = stage[(t + 1) % blockDim.x];
}

// Only the first warp reaches the barrier.
extern "C" __global__ void divergent_barrier(float* out) {
    if (threadIdx.x < 32) {
        out[threadIdx.x] = 1.0f;
        __syncthreads();
    }
}

// Thread `skip` writes nothing, so its left neighbour reads a shared word no thread wrote
// (skip = -1: every word is written).
extern "C" __global__ void shared_unwritten(float* out, int skip) {
    __shared__ float s[128];
    int t = threadIdx.x;
    if (t != skip) s[t] = t;
    __syncthreads();
    out[t] = s[(t + 1) % blockDim.x];
}

// 64 threads: after the first barrier each thread overwrites its word and reads the
// mirror word, which the other warp writes; without the second barrier (sync = 0) that
// read races with the other warp's write.
extern "C" __global__ void shared_mirror(float* out, int sync) {
    __shared__ float s[64];
    int t = threadIdx.x;
    s[t] = 0.0f;
    __syncthreads();
    s[t] = 2.0f * t;
    if (sync) __syncthreads();
    out[t] = s[63 - t];
}

// Spins while *flag is 0: with flag = 0 it never ends, and the watchdog must stop it. The
// empty asm keeps the loop (and its reload of *flag) in the PTX.
extern "C" __global__ void spin_until(const int* flag, int* out) {
    int n = 0;
    while (*flag == 0) {
        ++n;
        asm volatile("" ::: "memory");
    }
    out[threadIdx.x] = n;
}
