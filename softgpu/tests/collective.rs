//! The warp collectives against the PTX ISA's fragment tables, independent of any kernel.
//!
//! The functions under test spell the tables as the ISA prints them (piecewise in the
//! element index a_i, b_i, c_i). These tests scatter and gather with the same tables
//! spelled per register instead (lane l, register r, half h; g = l/4, t = l%4):
//!
//! - A (16×16): register r, half h ↦ (g + 8·(r mod 2), 2t + h + 8·⌊r/2⌋)
//! - B (16×8):  register r, half h ↦ (2t + h + 8·r, g)
//! - C, D (16×8): register i ↦ (g + 8·⌊i/2⌋, 2t + (i mod 2))
//! - ldmatrix, matrix j: element (row, col) of the 8×8 matrix lands in lane 4·row + col/2,
//!   register j, half col mod 2 (`.trans`: the stored row and column swap roles).
//!
//! All values are small multiples of 1/4, so every product and sum is exact and results
//! are compared bit for bit.

use half::f16;
use softgpu::exec::collective::{MatrixCount, WARP, ldmatrix_m8n8_b16, mma_m16n8k16_f32_f16};

type MatA = [[f32; 16]; 16];
type MatB = [[f32; 8]; 16];
type MatC = [[f32; 8]; 16];

fn f16_bits(x: f32) -> u16 {
    let h = f16::from_f32(x);
    assert_eq!(h.to_f32(), x, "test value {x} is not exact in f16");
    h.to_bits()
}

fn pack(lo: f32, hi: f32) -> u32 {
    u32::from(f16_bits(lo)) | (u32::from(f16_bits(hi)) << 16)
}

/// Deterministic values in {−4, −3.75, …, 4}: exact in f16, exact products and sums.
struct Quarters(u64);

impl Quarters {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % 33) as f32 / 4.0 - 4.0
    }
}

fn scatter_a(a: &MatA) -> [[u32; 4]; WARP] {
    let mut frag = [[0u32; 4]; WARP];
    for (lane, regs) in frag.iter_mut().enumerate() {
        let (g, t) = (lane / 4, lane % 4);
        for (r, reg) in regs.iter_mut().enumerate() {
            let (row, col) = (g + 8 * (r % 2), 2 * t + 8 * (r / 2));
            *reg = pack(a[row][col], a[row][col + 1]);
        }
    }
    frag
}

fn scatter_b(b: &MatB) -> [[u32; 2]; WARP] {
    let mut frag = [[0u32; 2]; WARP];
    for (lane, regs) in frag.iter_mut().enumerate() {
        let (g, t) = (lane / 4, lane % 4);
        for (r, reg) in regs.iter_mut().enumerate() {
            let k = 2 * t + 8 * r;
            *reg = pack(b[k][g], b[k + 1][g]);
        }
    }
    frag
}

fn c_position(lane: usize, i: usize) -> (usize, usize) {
    (lane / 4 + 8 * (i / 2), 2 * (lane % 4) + i % 2)
}

fn scatter_c(c: &MatC) -> [[f32; 4]; WARP] {
    let mut frag = [[0f32; 4]; WARP];
    for (lane, regs) in frag.iter_mut().enumerate() {
        for (i, reg) in regs.iter_mut().enumerate() {
            let (m, n) = c_position(lane, i);
            *reg = c[m][n];
        }
    }
    frag
}

fn gather_d(d: &[[f32; 4]; WARP]) -> MatC {
    let mut out = [[0f32; 8]; 16];
    for (lane, regs) in d.iter().enumerate() {
        for (i, &v) in regs.iter().enumerate() {
            let (m, n) = c_position(lane, i);
            out[m][n] = v;
        }
    }
    out
}

fn reference(a: &MatA, b: &MatB, c: &MatC) -> MatC {
    let mut d = *c;
    for (m, row) in d.iter_mut().enumerate() {
        for (n, v) in row.iter_mut().enumerate() {
            *v += (0..16).map(|k| a[m][k] * b[k][n]).sum::<f32>();
        }
    }
    d
}

/// Bitwise comparison of two row-major matrices, reporting the first mismatches.
fn assert_same<const N: usize>(got: &[[f32; N]], want: &[[f32; N]], what: &str) {
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .flat_map(|(m, (g, w))| (0..N).map(move |n| (m, n, g[n], w[n])))
        .filter(|&(_, _, g, w)| g.to_bits() != w.to_bits())
        .map(|(m, n, g, w)| format!("[{m}][{n}] got {g} want {w}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} mismatches, first: {}",
        bad.len(),
        bad[..bad.len().min(5)].join("; ")
    );
}

fn random_abc(seed: u64) -> (MatA, MatB, MatC) {
    let mut q = Quarters(seed);
    let a = std::array::from_fn(|_| std::array::from_fn(|_| q.next()));
    let b = std::array::from_fn(|_| std::array::from_fn(|_| q.next()));
    let c = std::array::from_fn(|_| std::array::from_fn(|_| q.next()));
    (a, b, c)
}

#[test]
fn mma_matches_triple_loop() {
    for seed in 1..5 {
        let (a, b, c) = random_abc(seed);
        let d = mma_m16n8k16_f32_f16(&scatter_a(&a), &scatter_b(&b), &scatter_c(&c));
        assert_same(&gather_d(&d), &reference(&a, &b, &c), &format!("seed {seed}"));
    }
}

/// Each A element alone (all others zero) against a B whose entries name their (k, n):
/// D is zero except row m, which is row k of B — pinning a_i to (m, k) and D's layout.
#[test]
fn mma_places_every_a_element_per_table() {
    let b: MatB = std::array::from_fn(|k| std::array::from_fn(|n| (1 + 8 * k + n) as f32));
    let b_frag = scatter_b(&b);
    let zero_c = [[0f32; 4]; WARP];
    for lane in 0..WARP {
        for r in 0..4 {
            for h in 0..2 {
                let mut a_frag = [[0u32; 4]; WARP];
                a_frag[lane][r] = u32::from(f16_bits(1.0)) << (16 * h);
                let d = gather_d(&mma_m16n8k16_f32_f16(&a_frag, &b_frag, &zero_c));
                let (m, k) = (lane / 4 + 8 * (r % 2), 2 * (lane % 4) + h + 8 * (r / 2));
                let mut want = [[0f32; 8]; 16];
                want[m] = b[k];
                assert_same(&d, &want, &format!("A lane {lane} reg {r} half {h} → ({m}, {k})"));
            }
        }
    }
}

/// Each B element alone against an A whose entries name their (m, k): D is zero except
/// column n, which is column k of A.
#[test]
fn mma_places_every_b_element_per_table() {
    let a: MatA = std::array::from_fn(|m| std::array::from_fn(|k| (1 + 16 * m + k) as f32));
    let a_frag = scatter_a(&a);
    let zero_c = [[0f32; 4]; WARP];
    for lane in 0..WARP {
        for r in 0..2 {
            for h in 0..2 {
                let mut b_frag = [[0u32; 2]; WARP];
                b_frag[lane][r] = u32::from(f16_bits(1.0)) << (16 * h);
                let d = gather_d(&mma_m16n8k16_f32_f16(&a_frag, &b_frag, &zero_c));
                let (k, n) = (2 * (lane % 4) + h + 8 * r, lane / 4);
                let mut want = [[0f32; 8]; 16];
                for (m, row) in want.iter_mut().enumerate() {
                    row[n] = a[m][k];
                }
                assert_same(&d, &want, &format!("B lane {lane} reg {r} half {h} → ({k}, {n})"));
            }
        }
    }
}

/// The reference tells layouts apart: a fragment with A's registers 1 and 2 swapped (rows
/// 8–15 mistaken for columns 8–15) or with B's two registers swapped gives another D.
#[test]
fn mma_with_a_misread_table_differs() {
    let (a, b, c) = random_abc(7);
    let want = reference(&a, &b, &c);
    let (a_frag, b_frag, c_frag) = (scatter_a(&a), scatter_b(&b), scatter_c(&c));
    let mut a_swapped = a_frag;
    a_swapped.iter_mut().for_each(|regs| regs.swap(1, 2));
    let mut b_swapped = b_frag;
    b_swapped.iter_mut().for_each(|regs| regs.swap(0, 1));
    assert_ne!(gather_d(&mma_m16n8k16_f32_f16(&a_swapped, &b_frag, &c_frag)), want);
    assert_ne!(gather_d(&mma_m16n8k16_f32_f16(&a_frag, &b_swapped, &c_frag)), want);
}

/// 1 + sixteen products of 2^-25: summed in f32 step by step each addition rounds back to
/// 1; summed exactly and rounded once the result is 1 + 2^-21.
#[test]
fn mma_rounds_once() {
    let a: MatA = [[2f32.powi(-12); 16]; 16];
    let b: MatB = [[2f32.powi(-13); 8]; 16];
    let c: MatC = [[1.0; 8]; 16];
    let d = gather_d(&mma_m16n8k16_f32_f16(&scatter_a(&a), &scatter_b(&b), &scatter_c(&c)));
    assert_same(&d, &[[1.0 + 2f32.powi(-21); 8]; 16], "single rounding");
}

#[test]
fn mma_propagates_inf_and_nan_per_element() {
    let mut a: MatA = [[1.0; 16]; 16];
    a[3][5] = f32::INFINITY;
    let mut b: MatB = [[1.0; 8]; 16];
    b[5][2] = 0.0;
    let d = gather_d(&mma_m16n8k16_f32_f16(&scatter_a(&a), &scatter_b(&b), &scatter_c(&[[0.0; 8]; 16])));
    for (m, row) in d.iter().enumerate() {
        for (n, &v) in row.iter().enumerate() {
            match (m, n) {
                (3, 2) => assert!(v.is_nan(), "inf·0 at [3][2] gave {v}"),
                (3, _) => assert_eq!(v, f32::INFINITY, "[3][{n}]"),
                (_, 2) => assert_eq!(v, 15.0, "[{m}][2]"),
                _ => assert_eq!(v, 16.0, "[{m}][{n}]"),
            }
        }
    }
}

/// Every f16 bit pattern, in A's low half and in B's high half, comes out as the exact
/// f32 value `cvt.f32.f16` gives (any NaN for NaN; inf·1 stays inf, subnormals kept).
/// Every other operand is −0, so that −0 survives the sum.
#[test]
fn mma_widens_every_f16_exactly() {
    let one = f16_bits(1.0);
    let ones_a = [[u32::from(one) * 0x1_0001; 4]; WARP];
    let ones_b = [[u32::from(one) * 0x1_0001; 2]; WARP];
    let neg_zero = u32::from(f16_bits(-0.0));
    let zero_c = [[-0f32; 4]; WARP];
    for bits in 0..=u16::MAX {
        let want = f16::from_bits(bits).to_f32();
        let same = |got: f32| got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan());
        // A[0][0] = bits alone against B = ones: row 0 of D is the value.
        let mut a_frag = [[neg_zero * 0x1_0001; 4]; WARP];
        a_frag[0][0] = (neg_zero << 16) | u32::from(bits);
        let d = gather_d(&mma_m16n8k16_f32_f16(&a_frag, &ones_b, &zero_c));
        assert!(d[0].iter().all(|&v| same(v)), "A {bits:#06x}: row 0 is {:?}, want {want}", d[0]);
        // B[1][0] = bits alone against A = ones: column 0 of D is the value.
        let mut b_frag = [[neg_zero * 0x1_0001; 2]; WARP];
        b_frag[0][0] = (u32::from(bits) << 16) | neg_zero;
        let d = gather_d(&mma_m16n8k16_f32_f16(&ones_a, &b_frag, &zero_c));
        assert!(d.iter().all(|row| same(row[0])), "B {bits:#06x}: column 0 wrong, want {want}");
    }
}

/// Shared memory for ldmatrix: bytes with the interpreter's checks (16-byte aligned rows
/// inside the allocation).
struct Shared(Vec<u8>);

impl Shared {
    fn new(len: usize) -> Self {
        Shared(vec![0; len])
    }

    fn put(&mut self, addr: usize, value: u16) {
        self.0[addr..addr + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn read_row(&self, lane: usize, addr: u32) -> Result<[u8; 16], String> {
        let at = addr as usize;
        if at % 16 != 0 {
            return Err(format!("lane {lane}: row address {addr:#x} is not 16-byte aligned"));
        }
        self.0
            .get(at..at + 16)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| format!("lane {lane}: row {addr:#x}..+16 outside {} bytes", self.0.len()))
    }

    fn ldmatrix(
        &self,
        num: MatrixCount,
        trans: bool,
        addr: &[u32; WARP],
    ) -> Result<[[u32; 4]; WARP], String> {
        ldmatrix_m8n8_b16(num, trans, addr, |lane, a| self.read_row(lane, a))
    }
}

fn half_of(reg: u32, h: usize) -> u16 {
    (reg >> (16 * h)) as u16
}

/// (matrix, row, col) of every element of four 8×8 matrices.
fn cells() -> impl Iterator<Item = (usize, usize, usize)> {
    (0..4).flat_map(|j| (0..8).flat_map(move |row| (0..8).map(move |col| (j, row, col))))
}

/// The value stored at element (row, col) of matrix j: it names its place.
fn element(j: usize, row: usize, col: usize) -> u16 {
    (0x1000 * (j + 1) + 16 * row + col) as u16
}

/// Four 8×8 matrices of `element`s, each row at an address of its own (rows out of order,
/// gaps between them).
fn four_scattered_matrices() -> (Shared, [u32; WARP]) {
    let mut shared = Shared::new(4096);
    // Lane 8·j + row gives the address of row `row` of matrix j.
    let addr: [u32; WARP] = std::array::from_fn(|lane| (48 * ((lane * 11) % WARP) + 16 * (lane % 2)) as u32);
    for (j, row, col) in cells() {
        shared.put(addr[8 * j + row] as usize + 2 * col, element(j, row, col));
    }
    (shared, addr)
}

#[test]
fn ldmatrix_x4_hands_lane_4row_plus_col_half_each_pair() {
    let (shared, addr) = four_scattered_matrices();
    let regs = shared.ldmatrix(MatrixCount::X4, false, &addr).expect("in bounds");
    for (j, row, col) in cells() {
        let got = half_of(regs[4 * row + col / 2][j], col % 2);
        assert_eq!(got, element(j, row, col), "matrix {j} ({row}, {col})");
    }
}

#[test]
fn ldmatrix_x4_trans_hands_the_transposed_pairs() {
    let (shared, addr) = four_scattered_matrices();
    let regs = shared.ldmatrix(MatrixCount::X4, true, &addr).expect("in bounds");
    for (j, stored_row, stored_col) in cells() {
        // Column-major: the logical (row, col) is (stored_col, stored_row).
        let got = half_of(regs[4 * stored_col + stored_row / 2][j], stored_row % 2);
        assert_eq!(got, element(j, stored_row, stored_col), "matrix {j} stored ({stored_row}, {stored_col})");
    }
}

#[test]
fn ldmatrix_x1_and_x2_read_only_their_lanes() {
    let (shared, mut addr) = four_scattered_matrices();
    let all = shared.ldmatrix(MatrixCount::X4, false, &addr).expect("in bounds");
    // Addresses that would fault must not be touched by the lanes .x1/.x2 ignore.
    addr[16..].fill(0xdead_beef);
    let x2 = shared.ldmatrix(MatrixCount::X2, false, &addr).expect("lanes 16–31 unused");
    addr[8..].fill(0xdead_beef);
    let x1 = shared.ldmatrix(MatrixCount::X1, false, &addr).expect("lanes 8–31 unused");
    for lane in 0..WARP {
        assert_eq!(x2[lane], [all[lane][0], all[lane][1], 0, 0], "x2 lane {lane}");
        assert_eq!(x1[lane], [all[lane][0], 0, 0, 0], "x1 lane {lane}");
    }
}

#[test]
fn ldmatrix_returns_the_row_error_naming_its_lane() {
    let (shared, good) = four_scattered_matrices();
    let mut misaligned = good;
    misaligned[13] += 8;
    let err = shared.ldmatrix(MatrixCount::X4, false, &misaligned).expect_err("misaligned row");
    assert!(err.starts_with("lane 13: "), "{err}");
    let mut outside = good;
    outside[20] = 1 << 20;
    let err = shared.ldmatrix(MatrixCount::X4, true, &outside).expect_err("row out of bounds");
    assert!(err.starts_with("lane 20: "), "{err}");
}

/// Stores a row-major matrix of f16 (`rows` × `cols`, `cols` a multiple of 8) into shared
/// memory at `at(row, 16-byte chunk)`.
fn store(shared: &mut Shared, m: &[Vec<f32>], at: impl Fn(usize, usize) -> usize) {
    for (r, row) in m.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            shared.put(at(r, c / 8) + 2 * (c % 8), f16_bits(v));
        }
    }
}

fn random_matrix(q: &mut Quarters, rows: usize, cols: usize) -> Vec<Vec<f32>> {
    (0..rows).map(|_| (0..cols).map(|_| q.next()).collect()).collect()
}

/// The simplest pairing: A row-major 16×16 (32-byte rows) by ldmatrix.x4 — lanes 0–15
/// address rows 0–15 at k 0–7, lanes 16–31 the same rows at k 8–15 — and a K-outer B
/// (16×8, row k holds n 0–7) by ldmatrix.x2.trans with lane k addressing row k.
#[test]
fn ldmatrix_fragments_feed_mma() {
    let mut q = Quarters(11);
    let a = random_matrix(&mut q, 16, 16);
    let b = random_matrix(&mut q, 16, 8);
    let mut shared = Shared::new(1024);
    store(&mut shared, &a, |r, chunk| r * 32 + chunk * 16);
    store(&mut shared, &b, |k, _| 512 + k * 16);
    let a_addr = std::array::from_fn(|l| ((l % 16) * 32 + (l / 16) * 16) as u32);
    let b_addr = std::array::from_fn(|l| (512 + (l % 16) * 16) as u32);
    let a_frag = shared.ldmatrix(MatrixCount::X4, false, &a_addr).expect("A rows");
    let b_regs = shared.ldmatrix(MatrixCount::X2, true, &b_addr).expect("B rows");
    let b_frag = std::array::from_fn(|l| [b_regs[l][0], b_regs[l][1]]);
    let d = gather_d(&mma_m16n8k16_f32_f16(&a_frag, &b_frag, &[[0.0; 4]; WARP]));
    let want: MatC =
        std::array::from_fn(|m| std::array::from_fn(|n| (0..16).map(|k| a[m][k] * b[k][n]).sum()));
    assert_same(&d, &want, "ldmatrix → mma");
}

const BK: usize = 32;

/// kernels/mma.cuh `swz_contig`: 64-byte rows, chunk XOR (row/2 mod 4).
fn swz_contig(row: usize, chunk: usize) -> usize {
    row * BK * 2 + ((chunk ^ ((row >> 1) & 3)) << 4)
}

/// kernels/mma.cuh `swz_outer`: `width` halves per row, chunk XOR (row mod 8).
fn swz_outer(row: usize, chunk: usize, width: usize) -> usize {
    row * width * 2 + ((chunk ^ (row & 7)) << 4)
}

/// Fragments of one k16 step: A's four registers, and B's x4 load holding the first n8
/// tile in registers 0–1 and the second in 2–3 (mma.cuh's `f.b[2nj]`, `f.b[2nj+1]`).
type Step = ([[u32; 4]; WARP], [[u32; 4]; WARP]);

/// D (16 × 16, two n8 tiles) over the two k16 steps of a BK = 32 tile, accumulated the way
/// mma.cuh's main loop issues its mma16816 calls.
fn two_tiles_over_bk(steps: &[Step; BK / 16]) -> [[f32; 16]; 16] {
    let mut acc = [[[0f32; 4]; WARP]; 2];
    for (a, b) in steps {
        for (ni, acc_n) in acc.iter_mut().enumerate() {
            let b_frag = std::array::from_fn(|l| [b[l][2 * ni], b[l][2 * ni + 1]]);
            *acc_n = mma_m16n8k16_f32_f16(a, &b_frag, acc_n);
        }
    }
    let mut d = [[0f32; 16]; 16];
    for (ni, acc_n) in acc.iter().enumerate() {
        for (m, row) in gather_d(acc_n).iter().enumerate() {
            d[m][8 * ni..8 * ni + 8].copy_from_slice(row);
        }
    }
    d
}

/// mma.cuh's KContig fragments for warp tile (mi, nj) = (0, 0): A 16×32 and B 16×32 (N×K)
/// in swizzled 64-byte rows, `ldmatrix_x4` with its lane formulas; D = A·Bᵀ.
#[test]
fn kcontig_tile_as_mma_cuh_loads_it() {
    let mut q = Quarters(23);
    let a = random_matrix(&mut q, 16, BK);
    let b = random_matrix(&mut q, 16, BK);
    let b_base = 16 * BK * 2;
    let mut shared = Shared::new(2 * b_base);
    store(&mut shared, &a, swz_contig);
    store(&mut shared, &b, |r, c| b_base + swz_contig(r, c));
    let frag_of = |kk: usize| {
        let a_addr = std::array::from_fn(|l| swz_contig(l % 16, kk * 2 + l / 16) as u32);
        let b_addr =
            std::array::from_fn(|l| (b_base + swz_contig(l % 8 + (l / 16) * 8, kk * 2 + (l / 8) % 2)) as u32);
        let a = shared.ldmatrix(MatrixCount::X4, false, &a_addr).expect("A rows");
        let b = shared.ldmatrix(MatrixCount::X4, false, &b_addr).expect("B rows");
        (a, b)
    };
    let d = two_tiles_over_bk(&[frag_of(0), frag_of(1)]);
    let want: Vec<[f32; 16]> =
        (0..16).map(|m| std::array::from_fn(|n| (0..BK).map(|k| a[m][k] * b[n][k]).sum())).collect();
    assert_same(&d, &want, "KContig A·Bᵀ");
}

/// mma.cuh's KOuter fragments for (mi, nj) = (0, 0): A stored K×64 and B stored K×64
/// (rows are reduction indices) in swizzled rows, `ldmatrix_x4_trans` with its lane
/// formulas; D = Aᵀ·B over the stored layouts.
#[test]
fn kouter_tile_as_mma_cuh_loads_it() {
    const WIDTH: usize = 64;
    let mut q = Quarters(31);
    let a = random_matrix(&mut q, BK, WIDTH);
    let b = random_matrix(&mut q, BK, WIDTH);
    let b_base = BK * WIDTH * 2;
    let mut shared = Shared::new(2 * b_base);
    store(&mut shared, &a, |r, c| swz_outer(r, c, WIDTH));
    store(&mut shared, &b, |r, c| b_base + swz_outer(r, c, WIDTH));
    let frag_of = |kk: usize| {
        // mma.cuh's chunks (wm + mi·16 + (j%2)·8)/8 and (wn + nj·16 + (j/2)·8)/8 at
        // wm = wn = mi = nj = 0.
        let a_addr = std::array::from_fn(|l| {
            let j = l / 8;
            swz_outer(kk * 16 + l % 8 + (j / 2) * 8, j % 2, WIDTH) as u32
        });
        let b_addr = std::array::from_fn(|l| {
            let j = l / 8;
            (b_base + swz_outer(kk * 16 + l % 8 + (j % 2) * 8, j / 2, WIDTH)) as u32
        });
        let a = shared.ldmatrix(MatrixCount::X4, true, &a_addr).expect("A rows");
        let b = shared.ldmatrix(MatrixCount::X4, true, &b_addr).expect("B rows");
        (a, b)
    };
    let d = two_tiles_over_bk(&[frag_of(0), frag_of(1)]);
    let want: Vec<[f32; 16]> =
        (0..16).map(|m| std::array::from_fn(|n| (0..BK).map(|k| a[k][m] * b[k][n]).sum())).collect();
    assert_same(&d, &want, "KOuter Aᵀ·B");
}
