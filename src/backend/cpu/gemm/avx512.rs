//! The AVX-512 GEMM: `C [m×n, row-major] = α·A·B + β·C` with B packed ahead (once per
//! weight matrix in a convolution) and A read where it lies whenever one of its indices
//! is contiguous.
//!
//! Micro-kernel: a 12×32 tile of C in 24 zmm accumulators (12 rows × 2 vectors of 16
//! columns). Per step of the reduction it loads one row of B's panel (2 vectors) and
//! broadcasts 12 elements of A, one per row: 24 FMAs for 14 loads, within Zen 5's two
//! 512-bit loads a cycle, where matrixmultiply's 16×16 tile asks 17 loads for 16 FMAs.
//! 24 accumulators, 2 of B and 1 broadcast leave 5 of the 32 registers free; 14×32 ran
//! the same to within noise.
//!
//! Layouts. B is packed into blocks of `KC` reduction steps, each a row of panels of 32
//! columns, each panel [kc][32] (zeros past n): `KC·32·4 = 32 KiB`, most of Zen 5's 48
//! KiB L1, streamed from L2 once per 12 rows of A. A is never packed when one of its
//! indices is contiguous: the kernel reads a strip of 12 rows in place, either as 12
//! streams along the reduction (the forward's im2col block, dgrad's dy) or as 12
//! adjacent floats per step (wgrad's `colᵀ`); the strip stays in L1 across the row of
//! panels. Only an A with neither index contiguous, or a last strip of fewer than 12
//! rows, is copied into a zero-padded [kc][12] panel; a short strip runs a kernel of 4, 8
//! or 12 rows (its rows rounded up) and stores only those that exist. Columns past n are
//! masked off at the store.
//!
//! Order of the sums: each element of C adds its products in reduction order, block by
//! block (a block's 256 products in one register, then added to C), however the rows are
//! split between calls or threads — so results do not depend on the thread count.
//!
//! Measured (one Zen 5 core, GFLOP/s, B packed ahead; a loop of independent FMAs peaks
//! at 251–253): 3136×576×64 with A row-major 234–239 (matrixmultiply: 122–150), 784×1152
//! ×128 242–246 (172–179), 196×4608×512 214–216, wgrad's 4608×256×512 with A = colᵀ 215,
//! 1024³ 219–228 (195–202). Packing layer4's weights (4608×512, transposed) takes ~1 ms.

use std::arch::x86_64::{
    __m512, __mmask16, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps,
    _mm512_maskz_loadu_ps, _mm512_mul_ps, _mm512_set1_ps, _mm512_setzero_ps,
};

use rayon::prelude::*;

use super::MatRef;

/// Rows of A (and C) per micro-kernel tile.
const MR: usize = 12;
/// The rows a last, short strip is rounded up to: it runs a kernel of 4, 8 or 12 rows.
pub const ROW_STEP: usize = 4;
/// Columns of B (and C) per micro-kernel tile: two zmm vectors.
const NR: usize = 32;
/// Reduction steps per packed block of B (the L1-sized panel, see the module comment).
const KC: usize = 256;

/// Floats of B packed for this kernel: every block of `KC` reduction steps holds whole
/// panels of `NR` columns.
pub fn packed_len(k: usize, n: usize) -> usize {
    k * n.div_ceil(NR) * NR
}

/// Floats of packed B above which its blocks pack in parallel: the weights of layer2 to
/// layer4 (0.15 to 2.4 million floats; ~1 ms of one core at layer4). A wgrad block of
/// dy, or a small B packed outside the pool, stays on its thread with no task handed out.
const PACK_IN_PARALLEL: usize = 1 << 17;

/// Packs `b` [k, n] into `out` (`packed_len` floats): block `p0 / KC` starts at
/// `p0 · panels · NR`, its panel `jp` at `jp · kc · NR` within it, row-major [kc][NR].
pub fn pack_b(b: MatRef, out: &mut [f32]) {
    let (k, n) = (b.rows, b.cols);
    let per_block = KC * n.div_ceil(NR) * NR;
    let pack_block = |(block, out_block): (usize, &mut [f32])| {
        let (p0, kc) = (block * KC, KC.min(k - block * KC));
        for (jp, panel) in out_block.chunks_exact_mut(kc * NR).enumerate() {
            let (j0, width) = (jp * NR, NR.min(n - jp * NR));
            if b.col_stride == 1 {
                for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                    dst[..width].copy_from_slice(&b.data[(p0 + p) * b.row_stride + j0..][..width]);
                    dst[width..].fill(0.0);
                }
            } else {
                // Column by column, so that reads run along the source when the reduced
                // index is the contiguous one (the forward's weights).
                for j in 0..NR {
                    let column = panel.iter_mut().skip(j).step_by(NR);
                    if j < width {
                        let src = &b.data[(j0 + j) * b.col_stride + p0 * b.row_stride..];
                        column.zip(src.iter().step_by(b.row_stride)).for_each(|(d, &v)| *d = v);
                    } else {
                        column.for_each(|d| *d = 0.0);
                    }
                }
            }
        }
    };
    if out.len() > PACK_IN_PARALLEL {
        out.par_chunks_mut(per_block).enumerate().for_each(pack_block);
    } else {
        out.chunks_mut(per_block).enumerate().for_each(pack_block);
    }
}

/// `c [m, n] (row stride n) = α·a·B + β·c` for B packed by `pack_b` from a [k, n] matrix,
/// `k = a.cols ≥ 1`; with β = 0, `c` is not read.
///
/// # Safety
/// The CPU must support AVX-512F; `packed` must come from `pack_b` of a [a.cols, n]
/// matrix, `a` must be in bounds (its `span` within its slice) and `c.len() == a.rows · n`.
#[target_feature(enable = "avx512f")]
pub unsafe fn gemm(alpha: f32, a: MatRef, packed: &[f32], n: usize, beta: f32, c: &mut [f32]) {
    let (m, k, panels) = (a.rows, a.cols, n.div_ceil(NR));
    // A strip of MR rows as a [kc][MR] panel, where A cannot be read in place.
    let mut strip = [0.0f32; MR * KC];
    for (block, b_block) in packed.chunks(KC * panels * NR).enumerate() {
        let (p0, kc) = (block * KC, KC.min(k - block * KC));
        // The first block scales C by β (or ignores it); later ones add to it.
        let beta = (block == 0).then_some(beta);
        for i0 in (0..m).step_by(MR) {
            let rows = MR.min(m - i0);
            let at = i0 * a.row_stride + p0 * a.col_stride;
            let (a_ptr, step, by_rows) = match (a.col_stride, a.row_stride) {
                (1, row_stride) if rows == MR => (a.data[at..].as_ptr(), row_stride, true),
                (col_stride, 1) if rows == MR => (a.data[at..].as_ptr(), col_stride, false),
                _ => {
                    for (p, dst) in strip.chunks_exact_mut(MR).take(kc).enumerate() {
                        let row_0 = at + p * a.col_stride;
                        for (i, d) in dst.iter_mut().enumerate() {
                            *d = if i < rows { a.data[row_0 + i * a.row_stride] } else { 0.0 };
                        }
                    }
                    (strip.as_ptr(), MR, false)
                }
            };
            for (jp, b_panel) in b_block.chunks_exact(kc * NR).enumerate() {
                let c_tile = &mut c[i0 * n + jp * NR..];
                let tile = Tile { rows, cols: NR.min(n - jp * NR), ldc: n, alpha, beta };
                let (b_ptr, c_ptr) = (b_panel.as_ptr(), c_tile.as_mut_ptr());
                // SAFETY: AVX-512F is enabled on this function; `a_ptr` addresses MR × kc
                // elements of A at `step` (all inside `a.data`: a full strip of its rows
                // and this block's columns) or of `strip` (of which a kernel of R ≤ MR rows
                // reads the first R per step); `b_panel` holds kc·NR floats; the tile's
                // rows and columns lie inside `c_tile` (rows ≤ m − i0 at stride n, columns
                // ≤ n − jp·NR).
                unsafe {
                    match (by_rows, rows.next_multiple_of(ROW_STEP)) {
                        (true, _) => kernel::<MR, true>(kc, a_ptr, step, b_ptr, c_ptr, tile),
                        (false, 4) => kernel::<4, false>(kc, a_ptr, step, b_ptr, c_ptr, tile),
                        (false, 8) => kernel::<8, false>(kc, a_ptr, step, b_ptr, c_ptr, tile),
                        (false, _) => kernel::<MR, false>(kc, a_ptr, step, b_ptr, c_ptr, tile),
                    }
                }
            }
        }
    }
}

/// The part of C a kernel call writes, `rows ≤ R` rows of `cols ≤ NR` at stride `ldc`,
/// and how: C becomes α·sums + β·C, or α·sums + C where `beta` is `None` (a later block
/// of the reduction); with β = 0, C is not read.
#[derive(Clone, Copy)]
struct Tile {
    rows: usize,
    cols: usize,
    ldc: usize,
    alpha: f32,
    beta: Option<f32>,
}

/// One R×NR tile (R ≤ MR) over `kc` reduction steps into `tile`: A's element (i, p) at
/// `a[i·step + p]` when `BY_ROWS` (its rows contiguous along the reduction), else at
/// `a[p·step + i]`; B's panel row-major [kc][NR].
///
/// # Safety
/// AVX-512F; every address above in bounds for i < R, p < kc, and C's tile in bounds.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn kernel<const R: usize, const BY_ROWS: bool>(
    kc: usize,
    a: *const f32,
    step: usize,
    b: *const f32,
    c: *mut f32,
    tile: Tile,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..kc {
        // SAFETY: p < kc and i < R keep both reads inside the panels (the contract).
        unsafe {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a.add(if BY_ROWS { i * step + p } else { p * step + i }));
                acc_i[0] = _mm512_fmadd_ps(ai, b0, acc_i[0]);
                acc_i[1] = _mm512_fmadd_ps(ai, b1, acc_i[1]);
            }
        }
    }
    let mask = |from: usize| -> __mmask16 { ((1u32 << tile.cols.saturating_sub(from).min(16)) - 1) as u16 };
    let masks = [mask(0), mask(16)];
    for (i, acc_i) in acc.iter().enumerate().take(tile.rows) {
        for (half, (&sum, &mask)) in acc_i.iter().zip(&masks).enumerate() {
            // SAFETY: row i < tile.rows and the masked columns < tile.cols are inside C.
            unsafe {
                let at = c.add(i * tile.ldc + half * 16);
                let scaled = _mm512_mul_ps(_mm512_set1_ps(tile.alpha), sum);
                let out: __m512 = match tile.beta {
                    Some(0.0) => scaled,
                    Some(beta) => {
                        _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(mask, at), scaled)
                    }
                    None => _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), scaled),
                };
                _mm512_mask_storeu_ps(at, mask, out);
            }
        }
    }
}
