//! GEMM on the CPU: `C = α·op(A)·op(B) + β·C` in f32, operands as strided views — so a
//! transpose is a swap of strides, never a copy.
//!
//! Two kernels, chosen at run time: our AVX-512 one (`avx512`, the module comment says
//! how and what it measured) where the CPU has AVX-512 (`simd::supported`), else
//! matrixmultiply's. B can be packed once and multiplied by many A (`PackedB`): a
//! convolution packs its weights once per call rather than once per block of output rows.

#[cfg(target_arch = "x86_64")]
mod avx512;

use std::cell::Cell;

#[cfg(target_arch = "x86_64")]
use super::simd::{Isa, supported};

/// A read-only matrix view: `rows × cols` elements at `data[i·row_stride + j·col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, row_stride: cols, col_stride: 1 }
    }
    /// The transpose: the same elements with the strides swapped.
    pub fn t(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
    fn span(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// Which micro-kernel multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// Ours, 12×32; only where the CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// matrixmultiply's, whatever the CPU.
    Portable,
}

impl Kernel {
    /// Ours where the CPU has AVX-512 (`simd::supported`: the kernels' results differ in
    /// their last bits, so the choice does not follow `simd::cap_vectors`).
    fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if supported() == Isa::Avx512 {
            return Kernel::Avx512;
        }
        Kernel::Portable
    }
}

/// The rows the chosen kernel's tiles come in: a split of the rows of C at multiples of
/// it leaves no partly empty tile.
pub fn row_tile() -> usize {
    match Kernel::best() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => avx512::ROW_STEP,
        // matrixmultiply's tiles: 16 rows with AVX-512, 8 or fewer without (16 is a
        // multiple of each).
        Kernel::Portable => 16,
    }
}

thread_local! {
    /// Each thread's buffer for packed B, kept between calls (returned on drop).
    static PACKED: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// The right-hand operand B [k, n] of many products, packed once for the kernel.
pub struct PackedB<'a> {
    b: MatRef<'a>,
    kernel: Kernel,
    /// B in the AVX-512 kernel's panels; empty for matrixmultiply, which packs per call.
    panels: Vec<f32>,
}

impl<'a> PackedB<'a> {
    /// Packs `b` for the best kernel this CPU runs.
    pub fn new(b: MatRef<'a>) -> Self {
        Self::for_kernel(Kernel::best(), b)
    }

    fn for_kernel(kernel: Kernel, b: MatRef<'a>) -> Self {
        assert!(b.span() <= b.data.len(), "gemm: b ({}×{}) reaches past its slice", b.rows, b.cols);
        let mut panels = PACKED.take();
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Avx512 {
            // `pack_b` writes every element: only growth needs filling.
            panels.resize(avx512::packed_len(b.rows, b.cols), 0.0);
            avx512::pack_b(b, &mut panels);
        }
        PackedB { b, kernel, panels }
    }

    /// `c[m×n, row-major] = α·a·b + β·c`. With β = 0, `c` is not read (it may hold NaN).
    pub fn gemm(&self, alpha: f32, a: MatRef, beta: f32, c: &mut [f32]) {
        let (m, k, n) = (a.rows, a.cols, self.b.cols);
        assert_eq!(self.b.rows, k, "gemm: inner dimensions differ ({m}×{k} · {}×{n})", self.b.rows);
        assert!(a.span() <= a.data.len(), "gemm: a ({m}×{k}) reaches past its slice");
        assert_eq!(c.len(), m * n, "gemm: output holds {} elements, {m}×{n} needed", c.len());
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            c.iter_mut().for_each(|v| *v = if beta == 0.0 { 0.0 } else { *v * beta });
            return;
        }
        match self.kernel {
            // SAFETY: `Avx512` is chosen only where the CPU has AVX-512F; the panels were
            // packed from b [k, n], and the asserts above bound a and c.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { avx512::gemm(alpha, a, &self.panels, n, beta, c) },
            // SAFETY: the asserts above (and in `for_kernel`) keep every element that the
            // strides address inside `a.data`, `b.data` and `c`; `c` is exclusively borrowed.
            Kernel::Portable => unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    alpha,
                    a.data.as_ptr(),
                    a.row_stride as isize,
                    a.col_stride as isize,
                    self.b.data.as_ptr(),
                    self.b.row_stride as isize,
                    self.b.col_stride as isize,
                    beta,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            },
        }
    }
}

impl Drop for PackedB<'_> {
    fn drop(&mut self) {
        PACKED.set(std::mem::take(&mut self.panels));
    }
}

/// `c[m×n, row-major] = α·a·b + β·c`. With β = 0, `c` is not read (it may hold NaN).
pub fn gemm(alpha: f32, a: MatRef, b: MatRef, beta: f32, c: &mut [f32]) {
    PackedB::new(b).gemm(alpha, a, beta, c);
}

#[cfg(test)]
mod tests {
    use super::{Kernel, MatRef, PackedB};

    /// Every kernel this CPU runs (the test says which it skipped).
    fn kernels() -> Vec<Kernel> {
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            all.push(Kernel::Avx512);
        } else {
            eprintln!("no AVX-512F on this CPU: the AVX-512 kernel is not tested");
        }
        all
    }

    /// A deterministic spread of values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Sizes off every tile (12×32 with its 4- and 8-row edges, matrixmultiply's 16×16),
    /// across the reduction blocks (256), k = 1, in all four transpose combinations, β = 0
    /// over NaN and β ≠ 0, against the definition in f64.
    #[test]
    fn gemm_matches_the_definition_on_every_kernel() {
        let sizes =
            [(1, 1, 1), (12, 32, 1), (13, 33, 7), (11, 31, 256), (25, 70, 257), (43, 5, 600), (3, 100, 40)];
        for kernel in kernels() {
            for (case, &(m, n, k)) in sizes.iter().enumerate() {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    for (alpha, beta) in [(1.0f32, 0.0f32), (0.75, 1.0), (-1.5, -0.5)] {
                        let (a, b) = (values(m * k, case as u64), values(k * n, 100 + case as u64));
                        let am =
                            if ta { MatRef::row_major(&a, k, m).t() } else { MatRef::row_major(&a, m, k) };
                        let bm =
                            if tb { MatRef::row_major(&b, n, k).t() } else { MatRef::row_major(&b, k, n) };
                        let c0 = if beta == 0.0 { vec![f32::NAN; m * n] } else { values(m * n, 200) };
                        let mut c = c0.clone();
                        PackedB::for_kernel(kernel, bm).gemm(alpha, am, beta, &mut c);
                        for (ij, (&got, &old)) in c.iter().zip(&c0).enumerate() {
                            let (i, j) = (ij / n, ij % n);
                            let dot: f64 = (0..k)
                                .map(|p| {
                                    let x = am.data[i * am.row_stride + p * am.col_stride] as f64;
                                    x * bm.data[p * bm.row_stride + j * bm.col_stride] as f64
                                })
                                .sum();
                            let want =
                                alpha as f64 * dot + if beta == 0.0 { 0.0 } else { beta as f64 * old as f64 };
                            let tol = 1e-5 * (1.0 + (k as f64).sqrt()) * (1.0 + want.abs());
                            assert!(
                                (got as f64 - want).abs() <= tol,
                                "{kernel:?} m{m} n{n} k{k} ta{ta} tb{tb} α{alpha} β{beta}: c[{i}][{j}] = {got}, want {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A product reused for several A, and over a B view inside a larger slice (a
    /// convolution's weights, wgrad's column blocks): the packed panels are B's.
    #[test]
    fn packed_b_serves_many_products_from_a_strided_view() {
        let (m, n, k, ld) = (29, 45, 300, 50);
        let b = values(k * ld, 7);
        let bm = MatRef { data: &b, rows: k, cols: n, row_stride: ld, col_stride: 1 };
        for kernel in kernels() {
            let packed = PackedB::for_kernel(kernel, bm);
            for seed in 0..3 {
                let a = values(m * k, seed);
                let mut c = vec![f32::NAN; m * n];
                packed.gemm(1.0, MatRef::row_major(&a, m, k), 0.0, &mut c);
                for (ij, &got) in c.iter().enumerate() {
                    let (i, j) = (ij / n, ij % n);
                    let want: f64 = (0..k).map(|p| a[i * k + p] as f64 * b[p * ld + j] as f64).sum();
                    assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{kernel:?} c[{i}][{j}]");
                }
            }
        }
    }
}
