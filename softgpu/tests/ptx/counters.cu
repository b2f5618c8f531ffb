// Kernels whose counters are known by hand, for softgpu/tests/exec_counters.rs: global
// coalescing (32-byte sectors per request), shared-memory bank conflicts (st.shared and
// ldmatrix wavefronts) and tensor-core work (one mma.sync). Regenerate counters.ptx with
// the command in README.md.
#include <cuda_fp16.h>

// y[i] = x[i·stride]. stride 1: every warp-level load and store is 32 consecutive
// floats, 4 sectors of 32 bytes; stride 32: each lane's float sits in its own 128-byte
// line, 32 sectors per load (the stores stay coalesced); stride 0: every lane reads x[0],
// one sector per request and one in the launch's footprint.
extern "C" __global__ void copy_strided_f32(const float* __restrict__ x, float* __restrict__ y, int n,
                                            int stride) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[(long long)i * stride];
}

// One warp stores its lane number at word lane·stride of shared memory, then reads the
// next lane's word back: stride 1 and 33 are conflict-free (32 distinct banks), stride 32
// puts every lane in bank 0 (32-way). Dynamic shared: 32·stride words.
extern "C" __global__ void shared_stride_f32(float* __restrict__ out, int stride) {
    extern __shared__ float words[];
    int t = threadIdx.x;
    words[t * stride] = (float)t;
    __syncthreads();
    out[t] = words[((t + 1) % 32) * stride];
}

// Row address of lane `lane` for ldmatrix.x4: matrix j = lane / 8 is 16-byte chunk j of
// rows 0–7 (row = lane % 8), rows `row_bytes` apart. `swizzle` 0: none; 1: chunk XOR
// (row / 2 mod 4), the KContig layout of kernels/mma.cuh (64-byte rows); 2: chunk XOR
// (row mod 8), its KOuter layout (128-byte rows).
__device__ unsigned row_offset(int lane, int row_bytes, int swizzle) {
    int row = lane % 8, chunk = lane / 8;
    if (swizzle == 1) chunk ^= (row >> 1) & 3;
    if (swizzle == 2) chunk ^= row & 7;
    return row * row_bytes + chunk * 16;
}

// One warp fills 8 rows of shared memory, then loads four 8×8 b16 matrices with one
// ldmatrix.x4 and writes each lane's four registers out.
extern "C" __global__ void ldmatrix_layout(unsigned* __restrict__ out, int row_bytes, int swizzle) {
    extern __shared__ unsigned rows[];
    int lane = threadIdx.x;
    for (int i = lane; i < 8 * row_bytes / 4; i += 32) rows[i] = i;
    __syncthreads();
    unsigned base = static_cast<unsigned>(__cvta_generic_to_shared(rows));
    unsigned r0, r1, r2, r3;
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(base + row_offset(lane, row_bytes, swizzle)));
    out[4 * lane] = r0;
    out[4 * lane + 1] = r1;
    out[4 * lane + 2] = r2;
    out[4 * lane + 3] = r3;
}

// One m16n8k16 tile: each lane loads its A (4 × f16x2), B (2 × f16x2) fragment registers,
// one mma.sync with zero accumulators, its 4 results stored.
extern "C" __global__ void mma_tile(const unsigned* __restrict__ a, const unsigned* __restrict__ b,
                                    float* __restrict__ d) {
    int lane = threadIdx.x;
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[4 * lane]), "r"(a[4 * lane + 1]), "r"(a[4 * lane + 2]), "r"(a[4 * lane + 3]),
          "r"(b[2 * lane]), "r"(b[2 * lane + 1]));
    for (int k = 0; k < 4; ++k) d[4 * lane + k] = c[k];
}
