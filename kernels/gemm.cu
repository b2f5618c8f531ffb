// GEMM: C = alpha · op(A) · op(B) + beta · C, FP16 inputs, FP32 accumulate.
//
// Layout. A is M×K (op = none) or K×M (op = transpose), B is K×N or N×K, all row-major
// with leading dimensions lda/ldb/ldc in elements. C is FP32 row-major M×N.
//
// This file holds the reference kernel, `gemm_ref_f16`: one thread per element of C,
// a plain K loop in FP32. It is the on-device oracle that the tensor-core kernel
// (mma.sync m16n8k16 with ldmatrix and a cp.async pipeline, to come) is checked against,
// so it is written to be obviously right, not fast: every operand is read from global
// memory K times, which puts it at a few percent of the card's FP16 peak.
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
