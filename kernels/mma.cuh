// The tensor-core main loop shared by the GEMM (kernels/gemm.cu) and the implicit-GEMM
// convolution (kernels/conv.cu): a 256-thread block computes a 128×128 tile of
// C = A·Bᵀ over K in steps of 32, with B N×K row-major in global memory and A given by a
// loader (a plain row-major matrix for the GEMM; gathered from NHWC activations for the
// convolution, without an im2col buffer). The design — warp tiling, mma.sync m16n8k16,
// ldmatrix, the cp.async ring, the swizzle, the predication — is described in gemm.cu.
#pragma once
#include "common.cuh"

namespace tc {
constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3, THREADS = 256;
// Halves per shared row (BK) and 16-byte chunks per row.
constexpr int CHUNKS = BK / 8;
constexpr int STAGE_HALVES = (BM + BN) * BK;
constexpr int SMEM_BYTES = STAGES * STAGE_HALVES * 2;

// Byte offset of (row, 16-byte chunk) in a tile of 64-byte rows, swizzled.
DF_DEVICE int swz(int row, int chunk) { return row * (BK * 2) + ((chunk ^ ((row >> 1) & 3)) << 4); }

DF_DEVICE void cp_async16(unsigned smem, const void* gmem, bool valid) {
    int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(bytes));
}
DF_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
DF_DEVICE void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

DF_DEVICE void ldmatrix_x4(unsigned smem, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem));
}

DF_DEVICE void mma16816(float* d, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A as a plain row-major M×K matrix.
struct RowMajorA {
    const __half* A;
    int lda;
    // The 8 halves at (m, k) (m < M and k < K already checked); `ok` false zero-fills.
    DF_DEVICE const __half* at(int m, int k, bool& ok) const {
        ok = true;
        return A + (long long)m * lda + k;
    }
};

// Copies the K-slice `kt` of the block's A and B tiles into stage `stage`.
template <class ALoad>
DF_DEVICE void load_stage(unsigned smem_base, int stage, int kt, const ALoad& a, const __half* B, int ldb, int M,
                          int N, int K, int m0, int n0) {
    unsigned a_base = smem_base + stage * STAGE_HALVES * 2;
    unsigned b_base = a_base + BM * BK * 2;
    int k0 = kt * BK;
    // BM·CHUNKS = 512 chunks per operand, two per thread.
    for (int i = threadIdx.x; i < BM * CHUNKS; i += THREADS) {
        int row = i / CHUNKS, chunk = i % CHUNKS, k = k0 + chunk * 8;
        bool a_ok = m0 + row < M && k < K;
        const __half* a_src = nullptr;
        if (a_ok) a_src = a.at(m0 + row, k, a_ok);
        // A predicated-off copy reads nothing, but still needs a valid address.
        cp_async16(a_base + swz(row, chunk), a_ok ? a_src : B, a_ok);
        bool b_ok = n0 + row < N && k < K;
        const __half* b_src = b_ok ? B + (long long)(n0 + row) * ldb + k : B;
        cp_async16(b_base + swz(row, chunk), b_src, b_ok);
    }
}

// The block's 128×128 tile of A·Bᵀ into `acc` (4×4 m16n8 tiles of 4 floats per thread).
template <class ALoad>
DF_DEVICE void mainloop(const ALoad& a, const __half* B, int ldb, int M, int N, int K, int m0, int n0,
                        float acc[4][4][4]) {
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned smem_base = (unsigned)__cvta_generic_to_shared(smem);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    int k_tiles = (K + BK - 1) / BK;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < k_tiles) load_stage(smem_base, s, s, a, B, ldb, M, N, K, m0, n0);
        cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
        // Tile kt has landed (at most STAGES − 2 younger groups still in flight), and every
        // warp is done with the stage the next prefetch overwrites.
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        int next = kt + STAGES - 1;
        if (next < k_tiles) load_stage(smem_base, next % STAGES, next, a, B, ldb, M, N, K, m0, n0);
        cp_async_commit();

        unsigned a_base = smem_base + (kt % STAGES) * STAGE_HALVES * 2;
        unsigned b_base = a_base + BM * BK * 2;
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            unsigned af[4][4], bf[4][2];
#pragma unroll
            for (int mi = 0; mi < 4; ++mi) {
                // Lanes 0–15 address rows 0–15 at k 0–7, lanes 16–31 the same rows at k 8–15:
                // the four 8×8 matrices come out as a0..a3 of m16n8k16's A fragment.
                int row = wm + mi * 16 + (lane % 16);
                ldmatrix_x4(a_base + swz(row, kk * 2 + lane / 16), af[mi][0], af[mi][1], af[mi][2], af[mi][3]);
            }
#pragma unroll
            for (int nj = 0; nj < 2; ++nj) {
                // B is N×K in shared memory, so its rows are the fragment's columns: lanes
                // 0–7 give n 0–7 at k 0–7 (b0), 8–15 the same n at k 8–15 (b1), 16–31 the
                // next eight n.
                int row = wn + nj * 16 + (lane % 8) + (lane / 16) * 8;
                ldmatrix_x4(b_base + swz(row, kk * 2 + (lane / 8) % 2), bf[2 * nj][0], bf[2 * nj][1],
                            bf[2 * nj + 1][0], bf[2 * nj + 1][1]);
            }
#pragma unroll
            for (int mi = 0; mi < 4; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) mma16816(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
        }
    }
    cp_async_wait<0>();
}

// C = alpha·acc + beta·C (C read only when beta ≠ 0), + bias[col], ReLU; FP32 or FP16.
// Thread (group g = lane/4, t = lane%4) holds rows g and g+8, columns 2t and 2t+1 of
// each 16×8 tile.
DF_DEVICE void epilogue(const float acc[4][4][4], int M, int N, int m0, int n0, float alpha, float beta, void* C,
                        int ldc, int out_f16, const float* bias, int relu) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
    int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                int row = m0 + wm + mi * 16 + g + (r / 2) * 8;
                int col = n0 + wn + ni * 8 + 2 * t + (r % 2);
                if (row >= M || col >= N) continue;
                long long at = (long long)row * ldc + col;
                float v = alpha * acc[mi][ni][r];
                if (beta != 0.0f) {
                    float old = out_f16 ? __half2float(((const __half*)C)[at]) : ((const float*)C)[at];
                    v = fmaf(beta, old, v);
                }
                if (bias) v += bias[col];
                if (relu) v = fmaxf(v, 0.0f);
                if (out_f16)
                    ((__half*)C)[at] = __float2half_rn(v);
                else
                    ((float*)C)[at] = v;
            }
}
}  // namespace tc
