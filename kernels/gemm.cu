// GEMM: C = alpha · op(A) · op(B) + beta · C, FP16 inputs, FP32 accumulate.
//
// Layout. A is M×K (op = none) or K×M (op = transpose), B is K×N or N×K, all row-major
// with leading dimensions lda/ldb/ldc in elements. C is FP32 row-major M×N.
//
// Two kernels. `gemm_ref_f16`: one thread per element of C, a plain K loop in FP32 — the
// on-device oracle, written to be obviously right, not fast (every operand is read from
// global memory K times: a few percent of FP16 peak).
//
// `gemm_tc_f16`: the tensor-core kernel, for the shape the model needs most — both
// operands K-contiguous (A M×K, B N×K: y = x·Wᵀ for linear layers and the implicit-GEMM
// convolution's NHWC × KRSC). Tiling: a 256-thread block owns a 128×128 tile of C and
// walks K in steps of 32; its 8 warps are 2×4, each computing 64×32 with 4×4
// mma.sync.m16n8k16 (FP16 in, FP32 accumulate: 64 accumulators per thread). Operand
// tiles reach shared memory by cp.async (16 bytes per copy, no registers on the way)
// in a 3-stage ring, so loads of tile k+2 overlap the math on tile k; fragments come
// out with ldmatrix.x4. Shared rows are 64 bytes (32 halves): ldmatrix reads 8 rows at
// one 16-byte column, which without care would land 4 to a bank group, so the 16-byte
// chunk index is XOR-swizzled with (row / 2) mod 4 — the eight rows then hit eight
// distinct bank groups. Edges are predicated: rows past M or N and chunks past K are
// zero-filled by cp.async's src-size operand, and the epilogue stores only inside C.
// Requirements (the host checks them and falls back to the reference otherwise): K, lda
// and ldb multiples of 8 and A, B 16-byte aligned. Epilogue, fused: alpha, beta (C read
// only when beta ≠ 0), a per-column bias, ReLU, FP32 or FP16 output.
// Shared memory: 3 stages × (128 + 128) rows × 64 B = 48 KiB (dynamic). At this tile
// shape the mma.sync path is bounded by instruction issue on Hopper (~0.65 of its dense
// FP16 peak); the measurement beside cuBLAS is owed to a GPU run (docs/BENCHMARKS.md).
#include "common.cuh"

extern "C" __global__ void gemm_ref_f16(int M, int N, int K, float alpha, const __half* __restrict__ A,
                                        int lda, int trans_a, const __half* __restrict__ B, int ldb,
                                        int trans_b, float beta, float* __restrict__ C, int ldc) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (row >= M || col >= N) return;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) {
        float a = __half2float(trans_a ? A[(long long)k * lda + row] : A[(long long)row * lda + k]);
        float b = __half2float(trans_b ? B[(long long)col * ldb + k] : B[(long long)k * ldb + col]);
        acc = fmaf(a, b, acc);
    }
    long long at = (long long)row * ldc + col;
    // beta == 0 must not read C: it may be uninitialised memory holding NaNs.
    C[at] = beta == 0.0f ? alpha * acc : fmaf(beta, C[at], alpha * acc);
}

namespace tc {
constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3, THREADS = 256;
// Halves per shared row (BK) and 16-byte chunks per row.
constexpr int CHUNKS = BK / 8;
constexpr int STAGE_HALVES = (BM + BN) * BK;

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

// Copies the K-slice `kt` of the block's A and B tiles into stage `stage`.
DF_DEVICE void load_stage(unsigned smem_base, int stage, int kt, const __half* A, int lda, const __half* B,
                          int ldb, int M, int N, int K, int m0, int n0) {
    unsigned a_base = smem_base + stage * STAGE_HALVES * 2;
    unsigned b_base = a_base + BM * BK * 2;
    int k0 = kt * BK;
    // BM·CHUNKS = 512 chunks per operand, two per thread.
    for (int i = threadIdx.x; i < BM * CHUNKS; i += THREADS) {
        int row = i / CHUNKS, chunk = i % CHUNKS, k = k0 + chunk * 8;
        bool a_ok = m0 + row < M && k < K;
        const __half* a_src = a_ok ? A + (long long)(m0 + row) * lda + k : A;
        cp_async16(a_base + swz(row, chunk), a_src, a_ok);
        bool b_ok = n0 + row < N && k < K;
        const __half* b_src = b_ok ? B + (long long)(n0 + row) * ldb + k : B;
        cp_async16(b_base + swz(row, chunk), b_src, b_ok);
    }
}
}  // namespace tc

extern "C" __global__ void __launch_bounds__(tc::THREADS)
    gemm_tc_f16(int M, int N, int K, float alpha, const __half* __restrict__ A, int lda,
                const __half* __restrict__ B, int ldb, float beta, void* __restrict__ C, int ldc, int out_f16,
                const float* __restrict__ bias, int relu) {
    using namespace tc;
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned smem_base = (unsigned)__cvta_generic_to_shared(smem);
    int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    int k_tiles = (K + BK - 1) / BK;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < k_tiles) load_stage(smem_base, s, s, A, lda, B, ldb, M, N, K, m0, n0);
        cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
        // Tile kt has landed (at most STAGES − 2 younger groups still in flight), and every
        // warp is done with the stage the next prefetch overwrites.
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        int next = kt + STAGES - 1;
        if (next < k_tiles) load_stage(smem_base, next % STAGES, next, A, lda, B, ldb, M, N, K, m0, n0);
        cp_async_commit();

        unsigned a_base = smem_base + (kt % STAGES) * STAGE_HALVES * 2;
        unsigned b_base = a_base + BM * BK * 2;
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            unsigned a[4][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < 4; ++mi) {
                // Lanes 0–15 address rows 0–15 at k 0–7, lanes 16–31 the same rows at k 8–15:
                // the four 8×8 matrices come out as a0..a3 of m16n8k16's A fragment.
                int row = wm + mi * 16 + (lane % 16);
                ldmatrix_x4(a_base + swz(row, kk * 2 + lane / 16), a[mi][0], a[mi][1], a[mi][2], a[mi][3]);
            }
#pragma unroll
            for (int nj = 0; nj < 2; ++nj) {
                // B is N×K in shared memory, so its rows are the fragment's columns: lanes
                // 0–7 give n 0–7 at k 0–7 (b0), 8–15 the same n at k 8–15 (b1), 16–31 the
                // next eight n.
                int row = wn + nj * 16 + (lane % 8) + (lane / 16) * 8;
                ldmatrix_x4(b_base + swz(row, kk * 2 + (lane / 8) % 2), b[2 * nj][0], b[2 * nj][1],
                            b[2 * nj + 1][0], b[2 * nj + 1][1]);
            }
#pragma unroll
            for (int mi = 0; mi < 4; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) mma16816(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
        }
    }
    cp_async_wait<0>();

    // Epilogue: thread (group g = lane/4, t = lane%4) holds rows g and g+8, columns 2t and
    // 2t+1 of each 16×8 tile.
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
