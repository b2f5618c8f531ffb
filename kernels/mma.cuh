// The tensor-core main loop shared by the GEMM (kernels/gemm.cu) and the implicit-GEMM
// convolutions (kernels/conv.cu): a block computes a BM×BN tile of C = A·Bᵀ over a range
// of the reduction dimension in steps of BK = 32, with 8 or 4 warps each owning a 64×32
// warp tile (4×4 mma.sync m16n8k16, 64 FP32 accumulators per thread). The warp tiling,
// the cp.async ring, ldmatrix and the predication are described in gemm.cu.
//
// Block tiles (`Tile<WARPS_M, WARPS_N>`): 128×128 (8 warps) is the default; 128×64 and
// 64×128 (4 warps) serve layers with 64 output channels, where a 128-wide tile would
// compute half zeros. The host's tile table (backend/cuda/tiles.rs) picks one per layer.
//
// Two layouts of the operands in shared memory, as policies of one pipeline:
// - `KContig`: each tile row is one m (or n) with its 32 reduction elements contiguous
//   (64-byte rows; 16-byte chunk index XOR (row/2 mod 4)); fragments by ldmatrix. Used
//   when both operands are reduction-contiguous in global memory: GEMM NT, convolution
//   forward (NHWC × KRSC) and input gradient.
// - `KOuter`: each tile row is one reduction index with BM (or BN) elements of m (or n)
//   contiguous (128- or 256-byte rows; chunk index XOR (row mod 8)); fragments by
//   ldmatrix.trans, which hands out the transposed 8×8 pieces that m16n8k16 expects. Used
//   by the weight gradient, whose reduction runs over pixels: dy's and x's channels are
//   contiguous, the pixels are not.
#pragma once
#include "common.cuh"

namespace tc {
constexpr int BK = 32, STAGES = 3, WARP_M = 64, WARP_N = 32;

template <int WARPS_M_, int WARPS_N_>
struct Tile {
    static constexpr int WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
    static constexpr int BM = WARP_M * WARPS_M, BN = WARP_N * WARPS_N;
    static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
    static constexpr int STAGE_BYTES = (BM + BN) * BK * 2;
    static constexpr int SMEM_BYTES = STAGES * STAGE_BYTES;
    // The warp's corner in the block tile.
    static DF_DEVICE int wm() { return (threadIdx.x / 32 / WARPS_N) * WARP_M; }
    static DF_DEVICE int wn() { return (threadIdx.x / 32 % WARPS_N) * WARP_N; }
};
using Tile128x128 = Tile<2, 4>;
using Tile128x64 = Tile<2, 2>;
using Tile64x128 = Tile<1, 4>;

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
DF_DEVICE void ldmatrix_x4_trans(unsigned smem, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
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

// Fragments of one 16-deep slice: A 4×(m16k16), B 4×(n8k16) for the warp's 64×32 tile.
struct Fragments {
    unsigned a[4][4], b[4][2];
};

// Byte offset of (row, 16-byte chunk) in a KContig tile (64-byte rows). ldmatrix reads 8
// consecutive rows at one chunk: the XOR spreads them over the 8 bank groups.
DF_DEVICE int swz_contig(int row, int chunk) { return row * (BK * 2) + ((chunk ^ ((row >> 1) & 3)) << 4); }

// Byte offset of (row, chunk) in a KOuter tile of `width` halves per row (64 or 128).
DF_DEVICE int swz_outer(int row, int chunk, int width) { return row * width * 2 + ((chunk ^ (row & 7)) << 4); }

// Both operands reduction-contiguous: A through a loader (`at(m, k, ok)`), B a row-major
// N×K matrix.
template <class T, class ALoad>
struct KContig {
    ALoad a;
    const __half* B;
    int ldb, M, N, K, m0, n0;

    DF_DEVICE void load(unsigned stage, int kt) const {
        unsigned b_base = stage + T::BM * BK * 2;
        int k0 = kt * BK;
        constexpr int CHUNKS = BK / 8;
        for (int i = threadIdx.x; i < T::BM * CHUNKS; i += T::THREADS) {
            int row = i / CHUNKS, chunk = i % CHUNKS, k = k0 + chunk * 8;
            bool ok = m0 + row < M && k < K;
            const __half* src = nullptr;
            if (ok) src = a.at(m0 + row, k, ok);
            // A predicated-off copy reads nothing, but still needs a valid address.
            cp_async16(stage + swz_contig(row, chunk), ok ? src : B, ok);
        }
        for (int i = threadIdx.x; i < T::BN * CHUNKS; i += T::THREADS) {
            int row = i / CHUNKS, chunk = i % CHUNKS, k = k0 + chunk * 8;
            bool ok = n0 + row < N && k < K;
            const __half* src = ok ? B + (long long)(n0 + row) * ldb + k : B;
            cp_async16(b_base + swz_contig(row, chunk), src, ok);
        }
    }

    DF_DEVICE void fragments(unsigned stage, int kk, Fragments& f) const {
        unsigned b_base = stage + T::BM * BK * 2;
        int lane = threadIdx.x % 32, wm = T::wm(), wn = T::wn();
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
            // Lanes 0–15 address rows 0–15 at k 0–7, lanes 16–31 the same rows at k 8–15:
            // the four 8×8 matrices come out as a0..a3 of m16n8k16's A fragment.
            int row = wm + mi * 16 + (lane % 16);
            ldmatrix_x4(stage + swz_contig(row, kk * 2 + lane / 16), f.a[mi][0], f.a[mi][1], f.a[mi][2],
                        f.a[mi][3]);
        }
#pragma unroll
        for (int nj = 0; nj < 2; ++nj) {
            // B is N×K in shared memory, so its rows are the fragment's columns: lanes 0–7
            // give n 0–7 at k 0–7 (b0), 8–15 the same n at k 8–15 (b1), 16–31 the next
            // eight n.
            int row = wn + nj * 16 + (lane % 8) + (lane / 16) * 8;
            ldmatrix_x4(b_base + swz_contig(row, kk * 2 + (lane / 8) % 2), f.b[2 * nj][0], f.b[2 * nj][1],
                        f.b[2 * nj + 1][0], f.b[2 * nj + 1][1]);
        }
    }
};

// Both operands reduction-outer: loaders `at(k, col, ok)` give the 8 halves at columns
// col..col+7 of reduction row k (M and N multiples of 8, checked by the host).
template <class T, class ALoad, class BLoad>
struct KOuter {
    ALoad a;
    BLoad b;
    int M, N, K, m0, n0;

    DF_DEVICE void load(unsigned stage, int kt) const {
        unsigned b_base = stage + T::BM * BK * 2;
        int k0 = kt * BK;
        constexpr int A_CHUNKS = T::BM / 8, B_CHUNKS = T::BN / 8;
        for (int i = threadIdx.x; i < BK * A_CHUNKS; i += T::THREADS) {
            int row = i / A_CHUNKS, chunk = i % A_CHUNKS, m = m0 + chunk * 8;
            bool ok = k0 + row < K && m < M;
            const __half* src = nullptr;
            if (ok) src = a.at(k0 + row, m, ok);
            cp_async16(stage + swz_outer(row, chunk, T::BM), ok ? src : a.base(), ok);
        }
        for (int i = threadIdx.x; i < BK * B_CHUNKS; i += T::THREADS) {
            int row = i / B_CHUNKS, chunk = i % B_CHUNKS, n = n0 + chunk * 8;
            bool ok = k0 + row < K && n < N;
            const __half* src = nullptr;
            if (ok) src = b.at(k0 + row, n, ok);
            cp_async16(b_base + swz_outer(row, chunk, T::BN), ok ? src : b.base(), ok);
        }
    }

    DF_DEVICE void fragments(unsigned stage, int kk, Fragments& f) const {
        unsigned b_base = stage + T::BM * BK * 2;
        int lane = threadIdx.x % 32, wm = T::wm(), wn = T::wn();
        // Lane l addresses row i = l % 8 of matrix j = l / 8. Stored rows are reduction
        // indices, so .trans hands each thread the (m, k) pairs of a plain fragment.
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
            // Matrices: (m 0–7, k 0–7) = a0, (m 8–15, k 0–7) = a1, (m 0–7, k 8–15) = a2,
            // (m 8–15, k 8–15) = a3.
            int j = lane / 8, row = kk * 16 + lane % 8 + (j / 2) * 8;
            int chunk = (wm + mi * 16 + (j % 2) * 8) / 8;
            ldmatrix_x4_trans(stage + swz_outer(row, chunk, T::BM), f.a[mi][0], f.a[mi][1], f.a[mi][2],
                              f.a[mi][3]);
        }
#pragma unroll
        for (int nj = 0; nj < 2; ++nj) {
            // Matrices: (k 0–7, n 0–7) = b0 and (k 8–15, n 0–7) = b1 of the first n8 tile,
            // then the same for the next eight n.
            int j = lane / 8, row = kk * 16 + lane % 8 + (j % 2) * 8;
            int chunk = (wn + nj * 16 + (j / 2) * 8) / 8;
            ldmatrix_x4_trans(b_base + swz_outer(row, chunk, T::BN), f.b[2 * nj][0], f.b[2 * nj][1],
                              f.b[2 * nj + 1][0], f.b[2 * nj + 1][1]);
        }
    }
};

// The block's tile of A·Bᵀ over reduction tiles [kt_begin, kt_end) into `acc` (4×4
// m16n8 tiles of 4 floats per thread).
template <class T, class Tiles>
DF_DEVICE void mainloop(const Tiles& tiles, int kt_begin, int kt_end, float acc[4][4][4]) {
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned smem_base = (unsigned)__cvta_generic_to_shared(smem);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    int n_tiles = kt_end - kt_begin;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < n_tiles) tiles.load(smem_base + s * T::STAGE_BYTES, kt_begin + s);
        cp_async_commit();
    }
    for (int t = 0; t < n_tiles; ++t) {
        // Tile t has landed (at most STAGES − 2 younger groups still in flight), and every
        // warp is done with the stage the next prefetch overwrites.
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        int next = t + STAGES - 1;
        if (next < n_tiles) tiles.load(smem_base + (next % STAGES) * T::STAGE_BYTES, kt_begin + next);
        cp_async_commit();

        unsigned stage = smem_base + (t % STAGES) * T::STAGE_BYTES;
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            Fragments f;
            tiles.fragments(stage, kk, f);
#pragma unroll
            for (int mi = 0; mi < 4; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) mma16816(acc[mi][ni], f.a[mi], f.b[ni][0], f.b[ni][1]);
        }
    }
    cp_async_wait<0>();
}

// Output row m of the GEMM is row m of C.
struct DenseRows {
    DF_DEVICE long long at(int m) const { return m; }
};

// C = alpha·acc + beta·C (C read only when beta ≠ 0), + bias[col], ReLU; FP32 or FP16.
// GEMM row m goes to C's row `rows.at(m)` (the input gradient's stride phases scatter
// their rows; everything else is dense).
// Thread (group g = lane/4, t = lane%4) holds rows g and g+8, columns 2t and 2t+1 of
// each 16×8 tile: the two columns go out as one 8-byte (FP32) or 4-byte (FP16) store, so
// that a warp's store covers whole 32-byte sectors (softgpu's counters measured 0.50
// store efficiency with one 4-byte store per value). A pair that straddles N, or a row
// pitch that is odd (the pair would be misaligned), is stored value by value.
template <class T, class Rows = DenseRows>
DF_DEVICE void epilogue(const float acc[4][4][4], int M, int N, int m0, int n0, float alpha, float beta, void* C,
                        int ldc, int out_f16, const float* bias, int relu, Rows rows = Rows{}) {
    int lane = threadIdx.x % 32, wm = T::wm(), wn = T::wn();
    int g = lane / 4, t = lane % 4;
    bool pairs = (ldc % 2) == 0;
    auto finish = [&](float a, long long at, int col) {
        float v = alpha * a;
        if (beta != 0.0f) {
            float old = out_f16 ? __half2float(((const __half*)C)[at]) : ((const float*)C)[at];
            v = fmaf(beta, old, v);
        }
        if (bias) v += bias[col];
        if (relu) v = fmaxf(v, 0.0f);
        return v;
    };
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                int row = m0 + wm + mi * 16 + g + h * 8;
                int col = n0 + wn + ni * 8 + 2 * t;
                if (row >= M || col >= N) continue;
                long long at = rows.at(row) * ldc + col;
                float v0 = finish(acc[mi][ni][2 * h], at, col);
                if (pairs && col + 1 < N) {
                    float v1 = finish(acc[mi][ni][2 * h + 1], at + 1, col + 1);
                    if (out_f16)
                        *(__half2*)((__half*)C + at) = __halves2half2(__float2half_rn(v0), __float2half_rn(v1));
                    else
                        *(float2*)((float*)C + at) = make_float2(v0, v1);
                    continue;
                }
                if (out_f16)
                    ((__half*)C)[at] = __float2half_rn(v0);
                else
                    ((float*)C)[at] = v0;
                if (col + 1 < N) {
                    float v1 = finish(acc[mi][ni][2 * h + 1], at + 1, col + 1);
                    if (out_f16)
                        ((__half*)C)[at + 1] = __float2half_rn(v1);
                    else
                        ((float*)C)[at + 1] = v1;
                }
            }
}
}  // namespace tc
