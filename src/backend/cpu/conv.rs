//! conv2d on the CPU: forward, grad-input (dgrad) and grad-weight (wgrad), NHWC × KRSC.
//!
//! The input is lowered to its im2col matrix `col` [N·P·Q, R·S·C] (one row per output
//! pixel, the R×S×C window it sees, zeros where it hangs over the padding) and the
//! convolution becomes GEMMs against the weights seen as [K, R·S·C]:
//!   forward  y_b [B, K]        = col_b · Wᵀ     per block b of output rows, in parallel
//!   dgrad    dcol_g [GPQ, RSC] = dy_g · W       per group g of images, in parallel, then
//!                                               col2im adds each row back to its pixels
//!   wgrad    dWᵀ [RSC, K]      = Σ_b col_bᵀ · dy_b, blocks b of output rows in order,
//!                                               dWᵀ's rows split over the threads
//! Only a block or a group is lowered at a time, into a per-thread scratch buffer (in
//! wgrad each thread lowers just the columns its rows of dWᵀ read); 1×1, stride-1,
//! unpadded convolutions skip the lowering (`col` is the input itself).
//!
//! The weights are packed for the GEMM once per forward or dgrad call (`PackedB`) and
//! shared by the tasks. With the AVX-512 kernel (gemm/avx512.rs) the other operand is
//! read in place, unpacked — `col` and `dy` in the forward and dgrad, `colᵀ` in wgrad —
//! so the forward reads each lowered block straight from L2, where matrixmultiply copied
//! it element by element (one core, 3136×576×64: 120 GFLOP/s with row-major `col`,
//! against 235 now).
//!
//! What limits it now: the lowering (im2col and col2im with their copies, ~10% of a
//! training step) and wgrad's transpose and dWᵀ traffic on layer4; the kernel itself runs
//! at 85–95% of a core's FMA peak.
//!
//! Why blocks and groups of `GEMM_ROWS` rows or more: matrixmultiply (the kernel where
//! there is no AVX-512) packs both operands at every call, and per image the weights'
//! packing outweighed the multiply on the small late maps (layer4 at 112²: 16 rows
//! against 4608×512 weights ran at 40 GFLOP/s on one core, against 150–200 for a GEMM of
//! 200+ rows). Forward blocks are also kept small enough to stay in L2 between im2col
//! and the GEMM. wgrad splits dWᵀ rather than the batch, so there are no partial sums to
//! add, and each element of dW sums its pixels in the same order whatever the thread
//! count.
//!
//! Activations are FP32 or FP16 (`Elem`), the filter FP32 (an FP16 filter is widened by
//! the caller, once): each block or group is widened to f32 on its own, multiplied in
//! f32, and an FP16 output rounded once at the end, as the tensor-core kernels
//! accumulate in FP32.

use std::cell::Cell;
use std::ops::Range;

use rayon::prelude::*;

use super::gemm::{MatRef, PackedB, gemm, row_tile};
use super::storage::Elem;
use super::window::Taps;
use crate::backend::params::Conv2dGeom;

/// The fewest GEMM rows (output pixels) worth one packing of the weights.
const GEMM_ROWS: usize = 256;

/// Elements of a lowered block that fit comfortably in a core's L2 cache (512 KiB of
/// the 1 MiB of the machine measured).
const LOWERED_BLOCK: usize = 128 << 10;

fn is_pointwise(g: &Conv2dGeom) -> bool {
    g.r == 1 && g.s == 1 && g.stride == [1, 1] && g.pad == [0, 0]
}

/// Output rows per wgrad block, fixed by the shapes alone since the blocks set the order
/// of the sums: at least `GEMM_ROWS`, and more while a thread's share of the block's
/// lowering (half its columns on the two cores measured) stays within `LOWERED_BLOCK`
/// elements.
fn wgrad_rows(g: &Conv2dGeom) -> usize {
    GEMM_ROWS.max(2 * LOWERED_BLOCK / (g.r * g.s * g.c).max(1))
}

/// The images that the output rows `rows` (counted across the batch) fall in, and those
/// rows counted from the first of them.
fn block_images(g: &Conv2dGeom, rows: &Range<usize>) -> (Range<usize>, Range<usize>) {
    let pq = g.p * g.q;
    let first = rows.start / pq * pq;
    (rows.start / pq..rows.end.div_ceil(pq), rows.start - first..rows.end - first)
}

/// Tasks for `work` units of `per_task` at most: a multiple of the thread count, so
/// that the threads share them evenly.
fn tasks(work: usize, per_task: usize) -> usize {
    work.div_ceil(per_task).next_multiple_of(rayon::current_num_threads()).max(1)
}

/// Images per parallel task (one GEMM) in dgrad: the fewest that make `GEMM_ROWS` rows,
/// fewer where that evens the tasks out between the threads (the grouping does not
/// change the results).
fn images_per_task(g: &Conv2dGeom) -> usize {
    let per_gemm = GEMM_ROWS.div_ceil(g.p * g.q).clamp(1, g.n.max(1));
    g.n.div_ceil(tasks(g.n, per_gemm)).max(1)
}

/// Output rows per forward task: at least `GEMM_ROWS`, and more while the lowered block
/// stays within `LOWERED_BLOCK` elements, so that the GEMM packs it from the cache
/// im2col wrote it to (a whole lowered image, 1.8 MB at layer1 of 112², did not fit).
fn rows_per_block(g: &Conv2dGeom) -> usize {
    let rows = g.n * g.p * g.q;
    rows.div_ceil(tasks(rows, GEMM_ROWS.max(LOWERED_BLOCK / (g.r * g.s * g.c).max(1)))).max(1)
}

/// Writes the columns `cols` (of R·S·C) of the rows from `first` on (output pixels,
/// counted across the images of `x` [N, H, W, C]) of the lowering into `col` [rows,
/// cols.len()]: per filter row, the taps inside the input are one contiguous run of x,
/// copied whole, and the rest zeros.
fn im2col(g: &Conv2dGeom, x: &[f32], first: usize, cols: Range<usize>, col: &mut [f32]) {
    let (hwc, pq, sc) = (g.h * g.w * g.c, g.p * g.q, g.s * g.c);
    for (row, dst_row) in (first..).zip(col.chunks_exact_mut(cols.len())) {
        let x_n = &x[row / pq * hwc..][..hwc];
        let along_h = Taps::of(row % pq / g.q, g.stride[0], g.pad[0], g.r, g.h);
        let along_w = Taps::of(row % g.q, g.stride[1], g.pad[1], g.s, g.w);
        for r in cols.start / sc..cols.end.div_ceil(sc) {
            // This filter row's columns within `cols`, and the run of them inside x.
            let seg = (r * sc).max(cols.start)..((r + 1) * sc).min(cols.end);
            let dst = &mut dst_row[seg.start - cols.start..seg.end - cols.start];
            if !along_h.taps.contains(&r) {
                dst.fill(0.0);
                continue;
            }
            let run_from = r * sc + along_w.taps.start * g.c;
            let run = run_from.clamp(seg.start, seg.end)
                ..(r * sc + along_w.taps.end * g.c).clamp(seg.start, seg.end);
            let (lo, hi) = (run.start - seg.start, run.end - seg.start);
            dst[..lo].fill(0.0);
            dst[hi..].fill(0.0);
            if !run.is_empty() {
                let h = along_h.first + r - along_h.taps.start;
                let at = (h * g.w + along_w.first) * g.c + run.start - run_from;
                dst[lo..hi].copy_from_slice(&x_n[at..at + run.len()]);
            }
        }
    }
}

/// Adds `dcol` [P·Q, R·S·C] back onto image `dx_n` [H, W, C] (which it overwrites), one
/// contiguous run of taps per filter row.
fn col2im(g: &Conv2dGeom, dcol: &[f32], dx_n: &mut [f32]) {
    dx_n.fill(0.0);
    let (rsc, sc) = (g.r * g.s * g.c, g.s * g.c);
    for (pq, row) in dcol.chunks_exact(rsc).enumerate() {
        let along_h = Taps::of(pq / g.q, g.stride[0], g.pad[0], g.r, g.h);
        let along_w = Taps::of(pq % g.q, g.stride[1], g.pad[1], g.s, g.w);
        let (lo, hi) = (along_w.taps.start * g.c, along_w.taps.end * g.c);
        for (r, h) in along_h.taps.clone().zip(along_h.inputs()) {
            let at = (h * g.w + along_w.first) * g.c;
            let src = &row[r * sc + lo..r * sc + hi];
            dx_n[at..at + hi - lo].iter_mut().zip(src).for_each(|(d, v)| *d += v);
        }
    }
}

thread_local! {
    /// Each thread's buffer for a lowered group, kept between calls: allocating and
    /// zeroing a fresh one per group cost about as much as the lowering itself.
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer cut to `len` elements of unspecified value.
/// A call nested inside `f` on the same thread (rayon runs other tasks while it waits)
/// finds the buffer taken and uses a new one.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.take();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let out = f(&mut buf[..len]);
    SCRATCH.set(buf);
    out
}

/// Runs `f` on the rows `rows` and columns `cols` of the GEMM operand `col` [N·P·Q,
/// R·S·C] of images `x`: a view of x itself for a pointwise conv, else that part
/// lowered by im2col into this thread's scratch.
fn with_lowered<R>(
    g: &Conv2dGeom,
    x: &[f32],
    rows: Range<usize>,
    cols: Range<usize>,
    f: impl FnOnce(MatRef) -> R,
) -> R {
    let rsc = g.r * g.s * g.c;
    if is_pointwise(g) {
        let data = &x[rows.start * rsc + cols.start..];
        return f(MatRef { data, rows: rows.len(), cols: cols.len(), row_stride: rsc, col_stride: 1 });
    }
    with_scratch(rows.len() * cols.len(), |col| {
        im2col(g, x, rows.start, cols.clone(), col);
        f(MatRef::row_major(col, rows.len(), cols.len()))
    })
}

/// y [N, P, Q, K] = conv(x [N, H, W, C], w [K, R, S, C]), in blocks of output rows
/// (`rows_per_block`) across the images, one task each.
pub fn conv2d_fwd<E: Elem>(g: &Conv2dGeom, x: &[E], w: &[f32], y: &mut [E]) {
    let (hwc, rsc, block) = (g.h * g.w * g.c, g.r * g.s * g.c, rows_per_block(g));
    let wt = PackedB::new(MatRef::row_major(w, g.k, rsc).t());
    y.par_chunks_mut(block * g.k).enumerate().for_each(|(b, y_b)| {
        let rows = b * block..b * block + y_b.len() / g.k;
        let (images, local) = block_images(g, &rows);
        let x_b = E::widen(&x[images.start * hwc..images.end * hwc]);
        with_lowered(g, &x_b, local, 0..rsc, |col| E::through_f32(y_b, |y_b| wt.gemm(1.0, col, 0.0, y_b)));
    });
}

/// dx [N, H, W, C] = ∂(Σ y·dy)/∂x for y = conv(x, w).
pub fn conv2d_dgrad<E: Elem>(g: &Conv2dGeom, dy: &[E], w: &[f32], dx: &mut [E]) {
    let (hwc, pq, rsc, per) = (g.h * g.w * g.c, g.p * g.q, g.r * g.s * g.c, images_per_task(g));
    let wm = PackedB::new(MatRef::row_major(w, g.k, rsc));
    dx.par_chunks_mut(per * hwc).zip(dy.par_chunks(per * pq * g.k)).for_each(|(dx_g, dy_g)| {
        let dy_g = E::widen(dy_g);
        let dy_m = MatRef::row_major(&dy_g, dy_g.len() / g.k, g.k);
        E::through_f32(dx_g, |dx_g| {
            if is_pointwise(g) {
                wm.gemm(1.0, dy_m, 0.0, dx_g);
                return;
            }
            with_scratch(dy_m.rows * rsc, |dcol| {
                wm.gemm(1.0, dy_m, 0.0, dcol);
                for (dx_n, dcol_n) in dx_g.chunks_exact_mut(hwc).zip(dcol.chunks_exact(pq * rsc)) {
                    col2im(g, dcol_n, dx_n);
                }
            });
        });
    });
}

/// dw [K, R, S, C] = ∂(Σ y·dy)/∂w for y = conv(x, w).
pub fn conv2d_wgrad<E: Elem>(g: &Conv2dGeom, x: &[E], dy: &[E], dw: &mut [f32]) {
    let (hwc, rsc, block) = (g.h * g.w * g.c, g.r * g.s * g.c, wgrad_rows(g));
    // One share of whole kernel tiles per thread (finer shares left the stem's last one
    // with 3 of 147 rows).
    let tile = row_tile();
    let task_rows = rsc.div_ceil(tile).div_ceil(rayon::current_num_threads()) * tile;
    let mut dw_t = vec![0.0f32; rsc * g.k];
    // The blocks run on a pool thread, so that each one's split over the threads is a
    // join inside the pool, not a job handed in from outside and waited for (a thread
    // wake-up per block, ~100 blocks a call at layer1).
    rayon::scope(|_| {
        for (b, dy_b) in dy.chunks((block * g.k).max(1)).enumerate() {
            let rows = b * block..b * block + dy_b.len() / g.k;
            let (images, local) = block_images(g, &rows);
            let (x_b, dy_b) = (E::widen(&x[images.start * hwc..images.end * hwc]), E::widen(dy_b));
            let dy_m = MatRef::row_major(&dy_b, rows.len(), g.k);
            // Each task lowers only the columns of col that its rows of dWᵀ need, and packs
            // dy for itself: packed once before the split, the stem's dy (1783×64 a block)
            // kept the other thread waiting for ~40% of the block's GEMM.
            dw_t.par_chunks_mut((task_rows * g.k).max(1)).enumerate().for_each(|(t, dw_rows)| {
                let cols = t * task_rows..t * task_rows + dw_rows.len() / g.k;
                with_lowered(g, &x_b, local.clone(), cols, |col| gemm(1.0, col.t(), dy_m, 1.0, dw_rows));
            });
        }
    });
    transpose(&dw_t, rsc, g.k, dw);
}

/// `out` [cols, rows] = `m` [rows, cols]ᵀ, in square tiles so that each cache line read
/// is used whole, rows of `out` in parallel.
fn transpose(m: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    const TILE: usize = 16;
    out.par_chunks_mut((TILE * rows).max(1)).enumerate().for_each(|(t, out_t)| {
        let first_col = t * TILE;
        for i0 in (0..rows).step_by(TILE) {
            for (j, out_j) in out_t.chunks_exact_mut(rows).enumerate() {
                let i1 = (i0 + TILE).min(rows);
                let src = m[i0 * cols + first_col + j..].iter().step_by(cols);
                out_j[i0..i1].iter_mut().zip(src).for_each(|(o, &v)| *o = v);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::{conv2d_dgrad, conv2d_fwd, conv2d_wgrad};
    use crate::backend::params::Conv2dGeom;

    /// The three ops give the same bits on 1, 2 and 3 threads, on shapes whose blocks,
    /// groups and dWᵀ shares fall unevenly (the module comment promises it).
    #[test]
    fn conv_results_do_not_depend_on_the_thread_count() {
        let shapes =
            [([3, 9, 11, 5], [7, 3, 3, 5], [1, 1], [1, 1]), ([2, 20, 17, 3], [13, 5, 5, 3], [2, 2], [2, 2])];
        for (x_dims, w_dims, stride, pad) in shapes {
            let g = Conv2dGeom::new(x_dims, w_dims, stride, pad).unwrap();
            let values = |len: usize, seed: usize| -> Vec<f32> {
                (0..len).map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 1001.5 - 1.0).collect()
            };
            let (x, w) = (values(x_dims.iter().product(), 1), values(w_dims.iter().product(), 2));
            let dy = values(g.y_dims().iter().product(), 3);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let mut y = vec![0.0f32; dy.len()];
                    let mut dx = vec![0.0f32; x.len()];
                    let mut dw = vec![0.0f32; w.len()];
                    conv2d_fwd(&g, &x, &w, &mut y);
                    conv2d_dgrad(&g, &dy, &w, &mut dx);
                    conv2d_wgrad(&g, &x, &dy, &mut dw);
                    [y, dx, dw].map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
                })
            };
            let one = run(1);
            for threads in [2, 3] {
                for (what, (a, b)) in ["y", "dx", "dw"].iter().zip(one.iter().zip(&run(threads))) {
                    assert!(a == b, "{what} of {x_dims:?} * {w_dims:?} differs on {threads} threads");
                }
            }
        }
    }
}
