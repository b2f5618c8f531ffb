// GEMM: C = alpha · op(A) · op(B) + beta · C, FP16 inputs, FP32 accumulate.
//
// Layout. A is M×K (op = none) or K×M (op = transpose), B is K×N or N×K, all row-major
// with leading dimensions lda/ldb/ldc in elements. C is FP32 row-major M×N.
//
// Two kernels. `gemm_ref_f16`: one thread per element of C, a plain K loop in FP32 — the
// on-device oracle, written to be obviously right, not fast (every operand is read from
// global memory K times: a few percent of FP16 peak).
//
// `gemm_tc_f16_<tile>`: the tensor-core kernel, for the shape the model needs most — both
// operands K-contiguous (A M×K, B N×K: y = x·Wᵀ for linear layers and the implicit-GEMM
// convolution's NHWC × KRSC). Tiling: a 256-thread block owns a 128×128 tile of C and
// walks K in steps of 32 (a 128-thread 128×64 variant serves N ≤ 64 and grids of less
// than one wave; backend/cuda/tiles.rs picks); its 8 warps are 2×4, each computing 64×32 with 4×4
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
#include "mma.cuh"

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

template <class T>
DF_DEVICE void gemm_tc(int M, int N, int K, float alpha, const __half* __restrict__ A, int lda,
                       const __half* __restrict__ B, int ldb, float beta, void* __restrict__ C, int ldc, int out_f16,
                       const float* __restrict__ bias, int relu) {
    int m0 = blockIdx.y * T::BM, n0 = blockIdx.x * T::BN;
    tc::KContig<T, tc::RowMajorA> tiles{{A, lda}, B, ldb, M, N, K, m0, n0};
    float acc[4][4][4];
    tc::mainloop<T>(tiles, 0, (K + tc::BK - 1) / tc::BK, acc);
    tc::epilogue<T>(acc, M, N, m0, n0, alpha, beta, C, ldc, out_f16, bias, relu);
}

#define GEMM_TC(TILE, NAME)                                                                               \
    extern "C" __global__ void __launch_bounds__(TILE::THREADS)                                           \
        NAME(int M, int N, int K, float alpha, const __half* __restrict__ A, int lda,                    \
             const __half* __restrict__ B, int ldb, float beta, void* __restrict__ C, int ldc, int out_f16, \
             const float* __restrict__ bias, int relu) {                                                  \
        gemm_tc<TILE>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, out_f16, bias, relu);                 \
    }
GEMM_TC(tc::Tile128x128, gemm_tc_f16_128x128)
GEMM_TC(tc::Tile128x64, gemm_tc_f16_128x64)
