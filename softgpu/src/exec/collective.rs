//! The tensor-core collectives nvcc emits for `kernels/mma.cuh`, as pure functions of a
//! whole warp's registers:
//!
//! - `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32` → [`mma_m16n8k16_f32_f16`]
//! - `ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16` → [`ldmatrix_m8n8_b16`]
//!
//! Both follow the PTX ISA (9.0) tables word for word: §9.7.14.5.8 "Matrix Fragments for
//! mma.m16n8k16 with floating point type" and §9.7.14.5.15 "Warp-level matrix load
//! instruction: ldmatrix". The interpreter gathers the 32 lanes' operands, calls one of
//! these once per warp, and scatters the result back; checking that the whole warp is
//! converged on the instruction is its job, not theirs.

/// Threads in a warp: every fragment table below is indexed by `%laneid` in `0..WARP`.
pub const WARP: usize = 32;

// Every fragment table of the ISA places a lane by these two numbers.
#[inline(always)]
fn group_id(lane: usize) -> usize {
    lane >> 2
}

#[inline(always)]
fn thread_id_in_group(lane: usize) -> usize {
    lane % 4
}

/// (row, col) in the 16×16 matrix A of element `a_i` (`i` in `0..8`) held by `lane`:
/// a0,a1 are the low and high halves of the lane's first `.f16x2` register, and so on.
#[inline(always)]
fn a_coord(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (group_id(lane), thread_id_in_group(lane));
    let row = if i < 2 || (4..6).contains(&i) { g } else { g + 8 };
    let col = if i < 4 { t * 2 + (i & 1) } else { t * 2 + (i & 1) + 8 };
    (row, col)
}

/// (row, col) in the 16×8 matrix B of element `b_i` (`i` in `0..4`) held by `lane`.
#[inline(always)]
fn b_coord(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (group_id(lane), thread_id_in_group(lane));
    let row = if i < 2 { t * 2 + (i & 1) } else { t * 2 + (i & 1) + 8 };
    (row, g)
}

/// (row, col) in the 16×8 matrices C and D of element `c_i` (`i` in `0..4`) held by `lane`.
#[inline(always)]
fn c_coord(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (group_id(lane), thread_id_in_group(lane));
    let row = if i < 2 { g } else { g + 8 };
    (row, t * 2 + (i & 1))
}

/// f16 bits → f64 without branches, so that the widening of a warp's 384 operands
/// vectorises (half's conversion branches per value and costs twice as much here). The
/// exponent and mantissa bits land in f64's fields as if f16's bias were f64's; one exact
/// multiplication by 2^(1023 − 15) rebases normals and subnormals alike. Infinity and NaN
/// (exponent all ones) take f64's all-ones exponent instead.
#[inline(always)]
fn f16_to_f64(bits: u16) -> f64 {
    const REBASE: f64 = f64::from_bits((1023 + 1023 - 15) << 52);
    const EXP_ALL_ONES: u64 = 0x7c00 << 42;
    let magnitude = u64::from(bits & 0x7fff) << 42;
    let finite = f64::from_bits(magnitude) * REBASE;
    let special = f64::from_bits(magnitude | 0x7ff0_0000_0000_0000);
    let value = if magnitude >= EXP_ALL_ONES { special } else { finite };
    f64::from_bits(value.to_bits() | (u64::from(bits & 0x8000) << 48))
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 d, a, b, c` for the whole warp:
/// `a[lane]` is the lane's four `.f16x2` A registers, `b[lane]` its two B registers,
/// `c[lane]` its four f32 accumulators; the result is every lane's four D registers.
///
/// Each `D[m][n] = C[m][n] + Σₖ A[m][k]·B[k][n]` is summed in f64 in the order C, k = 0..15
/// and rounded once to f32 (round to nearest even). A product of two f16 values is exact
/// in f64, and so is the sum while its terms lie within about 2^24 of each other in
/// magnitude; beyond that each f64 addition errs by at most 2^-53 relative, far below
/// f32's 2^-24. A real tensor core aligns and truncates its partial sums its own way and
/// may differ in the last bits of f32: compare with tolerances. NaN and infinity propagate
/// as IEEE arithmetic does (NaN bit patterns are x86's, not PTX's canonical NaN);
/// subnormal f16 inputs are kept.
pub fn mma_m16n8k16_f32_f16(
    a: &[[u32; 4]; WARP],
    b: &[[u32; 2]; WARP],
    c: &[[f32; 4]; WARP],
) -> [[f32; 4]; WARP] {
    // The same body compiled for wider vectors where the CPU has them: the product is
    // 2,048 f64 multiply-adds a call and runs ~100k times per convolution launch, and
    // x86-64's baseline SSE2 does two at a time. Every variant performs the same IEEE
    // operations in the same order (Rust never contracts a·b + c into an FMA), so the
    // results are bit-identical whichever runs.
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { mma_avx512(a, b, c) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { mma_avx2(a, b, c) };
        }
    }
    mma_body(a, b, c)
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn mma_avx512(a: &[[u32; 4]; WARP], b: &[[u32; 2]; WARP], c: &[[f32; 4]; WARP]) -> [[f32; 4]; WARP] {
    mma_body(a, b, c)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mma_avx2(a: &[[u32; 4]; WARP], b: &[[u32; 2]; WARP], c: &[[f32; 4]; WARP]) -> [[f32; 4]; WARP] {
    mma_body(a, b, c)
}

#[inline(always)]
fn mma_body(a: &[[u32; 4]; WARP], b: &[[u32; 2]; WARP], c: &[[f32; 4]; WARP]) -> [[f32; 4]; WARP] {
    // The f16 bits are scattered into place first and widened afterwards in one pass
    // over each matrix, so the widening vectorises; the product below is plain array loops.
    let mut a_bits = [[0u16; 16]; 16];
    let mut b_bits = [[0u16; 8]; 16];
    let mut acc = [[0.0f64; 8]; 16];
    for lane in 0..WARP {
        for (r, &reg) in a[lane].iter().enumerate() {
            for (h, half) in [reg as u16, (reg >> 16) as u16].into_iter().enumerate() {
                let (m, k) = a_coord(lane, 2 * r + h);
                a_bits[m][k] = half;
            }
        }
        for (r, &reg) in b[lane].iter().enumerate() {
            for (h, half) in [reg as u16, (reg >> 16) as u16].into_iter().enumerate() {
                let (k, n) = b_coord(lane, 2 * r + h);
                b_bits[k][n] = half;
            }
        }
        for (i, &v) in c[lane].iter().enumerate() {
            let (m, n) = c_coord(lane, i);
            acc[m][n] = f64::from(v);
        }
    }
    let mut a_mat = [[0.0f64; 16]; 16];
    for (v, bits) in a_mat.as_flattened_mut().iter_mut().zip(a_bits.as_flattened()) {
        *v = f16_to_f64(*bits);
    }
    let mut b_mat = [[0.0f64; 8]; 16];
    for (v, bits) in b_mat.as_flattened_mut().iter_mut().zip(b_bits.as_flattened()) {
        *v = f16_to_f64(*bits);
    }
    // One row of accumulators stays in registers across the k loop; each element still
    // sums its products in k order.
    for (acc_row, a_row) in acc.iter_mut().zip(&a_mat) {
        let mut row = *acc_row;
        for (a, b_row) in a_row.iter().zip(&b_mat) {
            for (d, b) in row.iter_mut().zip(b_row) {
                *d += a * b;
            }
        }
        *acc_row = row;
    }
    let mut d = [[0.0f32; 4]; WARP];
    for (lane, regs) in d.iter_mut().enumerate() {
        for (i, reg) in regs.iter_mut().enumerate() {
            let (m, n) = c_coord(lane, i);
            *reg = acc[m][n] as f32;
        }
    }
    d
}

/// How many 8×8 matrices one `ldmatrix` loads (`.x1`, `.x2`, `.x4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixCount {
    X1,
    X2,
    X4,
}

impl MatrixCount {
    /// The number of matrices, which is also the number of destination registers.
    pub fn get(self) -> usize {
        match self {
            MatrixCount::X1 => 1,
            MatrixCount::X2 => 2,
            MatrixCount::X4 => 4,
        }
    }
}

/// `ldmatrix.sync.aligned.m8n8{.x1,.x2,.x4}{.trans}.shared.b16 {r0..}, [p]` for the whole
/// warp. `row_addr[lane]` is each lane's shared-memory address `p`; lanes 8·j..8·j+7 give
/// the rows 0–7 of matrix j, and only the first 8·`num` lanes' addresses are read (the
/// others may hold anything).
///
/// `read_row(lane, addr)` returns the 16 bytes (8 little-endian b16 elements) of the row
/// that `lane` addresses. The ISA requires each row address to be 16-byte aligned, so
/// `read_row` must reject a misaligned or out-of-bounds address; its first error is
/// returned as is and nothing is loaded.
///
/// Lane l receives in register j the pair of row l/4, columns 2·(l%4) and 2·(l%4)+1 of
/// matrix j (lower column in the low half). With `.trans` the matrix is read as stored
/// column-major: the pair is column l/4, rows 2·(l%4) and 2·(l%4)+1 of the stored rows.
/// Registers `num..4` of the result are zero and are not destinations.
pub fn ldmatrix_m8n8_b16<E>(
    num: MatrixCount,
    trans: bool,
    row_addr: &[u32; WARP],
    mut read_row: impl FnMut(usize, u32) -> Result<[u8; 16], E>,
) -> Result<[[u32; 4]; WARP], E> {
    let mut out = [[0u32; 4]; WARP];
    for j in 0..num.get() {
        let mut rows = [[0u16; 8]; 8];
        for (r, row) in rows.iter_mut().enumerate() {
            let lane = 8 * j + r;
            let bytes = read_row(lane, row_addr[lane])?;
            for (e, pair) in row.iter_mut().zip(bytes.chunks_exact(2)) {
                *e = u16::from_le_bytes([pair[0], pair[1]]);
            }
        }
        for (lane, regs) in out.iter_mut().enumerate() {
            let (r, c) = (group_id(lane), 2 * thread_id_in_group(lane));
            let (lo, hi) = if trans { (rows[c][r], rows[c + 1][r]) } else { (rows[r][c], rows[r][c + 1]) };
            regs[j] = u32::from(lo) | (u32::from(hi) << 16);
        }
    }
    Ok(out)
}
