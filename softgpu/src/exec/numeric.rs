//! Floating-point semantics of the PTX forms nvcc emits for `kernels/*.cu`, following the
//! PTX ISA (9.0) instruction pages. No kernel uses `.ftz`, `.sat` or a NaN-propagating
//! `.NaN` form, so subnormals are always kept.
//!
//! Most forms are already a Rust operator with exactly the PTX meaning (IEEE 754 binary32 /
//! binary64, round to nearest even, correctly rounded), and the interpreter uses those
//! directly:
//!
//! | PTX | Rust |
//! | --- | --- |
//! | `add`, `sub`, `mul` (`.rn` or none) `.f32`/`.f64` | `a + b`, `a - b`, `a * b` |
//! | `div.rn.f32`/`.f64` | `a / b` |
//! | `rcp.rn.f32`/`.f64` | `1.0 / a` |
//! | `sqrt.rn.f32`/`.f64` | `a.sqrt()` |
//! | `fma.rn.f32`/`.f64` | `a.mul_add(b, c)`: one rounding, never `a * b + c` |
//! | `abs.f32`, `neg.f32` | `a.abs()`, `-a`: sign-bit operations, NaN stays NaN |
//! | `cvt.f64.f32`, `cvt.rn.f64.s32`, `cvt.rn.f32.u16` | `f64::from(a)`, `f32::from(a)` (exact) |
//! | `cvt.rn.f32.f64`, `cvt.rn.f32.s32`, `cvt.rn.f64.s64` | `a as f32`, `a as f64` (nearest even) |
//!
//! On a real GPU ptxas may contract a `mul.f32` and an `add.f32` that carry no rounding
//! modifier into one FMA; the interpreter runs them as written, so such results can differ
//! from the hardware's in the last bit. The functions below are the forms whose PTX meaning
//! no single Rust operator has.

use half::f16;
use std::cmp::Ordering;

/// PTX's canonical f32 NaN, the result of `min`/`max` when both inputs are NaN.
const CANONICAL_NAN_F32: u32 = 0x7fff_ffff;

/// `cvt.rzi.s32.f32`: truncate toward zero; out-of-range values clamp to `i32::MIN..=i32::MAX`
/// ("the result is clamped to the destination range by default") and NaN gives 0 (source
/// not `.f64`, destination not 64-bit). Rust's `as` is defined to do exactly that.
pub fn cvt_rzi_s32_f32(a: f32) -> i32 {
    a as i32
}

/// `cvt.rn.f16.f32`: round to nearest even; overflow gives ±infinity, subnormal f16 results
/// are kept. Returns the `.b16` bits.
pub fn cvt_rn_f16_f32(a: f32) -> u16 {
    f16::from_f32(a).to_bits()
}

/// `cvt.f32.f16`: exact widening of the `.b16` bits.
pub fn cvt_f32_f16(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// `add.rz.f32`: the exact sum rounded toward zero.
///
/// The sum is first rounded to nearest; the two-sum error term (exact while nothing
/// overflows) then says on which side of the exact sum that landed, and a result that was
/// rounded away from zero steps one ulp back toward it. The exact sum of two f32 need not
/// fit in f64 (operand exponents can differ by up to 277), so f64 alone would not do.
pub fn add_rz_f32(a: f32, b: f32) -> f32 {
    let s = a + b;
    if !s.is_finite() {
        // Finite operands that overflowed: toward zero stops at the largest finite value.
        return if a.is_finite() && b.is_finite() { f32::MAX.copysign(s) } else { s };
    }
    let b_part = s - a;
    let err = (a - (s - b_part)) + (b - b_part);
    let rounded_away = err != 0.0 && (err < 0.0) != (s < 0.0);
    // |s| is then one ulp above |a + b| and s is not zero, so the next magnitude down is
    // the bit pattern below, for either sign.
    if rounded_away { f32::from_bits(s.to_bits() - 1) } else { s }
}

/// `ex2.approx.f32` (no `.ftz`): 2^a. The ISA allows 2 ulp of error from the correctly
/// rounded result and keeps subnormals; computing in f64 and rounding once stays within
/// one ulp. Special values as the ISA tabulates: −inf → +0, ±0 → 1, +inf → +inf, NaN → NaN.
pub fn ex2_approx_f32(a: f32) -> f32 {
    f64::from(a).exp2() as f32
}

/// `min.f32`: a NaN operand yields the other operand (canonical NaN if both are NaN), and
/// −0 counts as less than +0.
pub fn min_f32(a: f32, b: f32) -> f32 {
    pick_f32(a, b, Ordering::Less)
}

/// `max.f32`: a NaN operand yields the other operand (canonical NaN if both are NaN), and
/// +0 counts as greater than −0.
pub fn max_f32(a: f32, b: f32) -> f32 {
    pick_f32(a, b, Ordering::Greater)
}

// The ISA's min_num / max_num: `want` is the ordering of the operand to return.
fn pick_f32(a: f32, b: f32, want: Ordering) -> f32 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => f32::from_bits(CANONICAL_NAN_F32),
        (true, false) => b,
        (false, true) => a,
        // IEEE ordering says −0 == +0; PTX orders them by sign. Both being zeros, OR of
        // the bits is −0 if either is, AND is +0 if either is.
        (false, false) if a == 0.0 && b == 0.0 => {
            let bits =
                if want == Ordering::Less { a.to_bits() | b.to_bits() } else { a.to_bits() & b.to_bits() };
            f32::from_bits(bits)
        }
        (false, false) => {
            if a.partial_cmp(&b) == Some(want) {
                a
            } else {
                b
            }
        }
    }
}

/// The comparison of a floating-point `setp` (the IR's `Cmp`): the ordered ones are false
/// when either operand is NaN, the unordered ones (`…u`) true; `num` and `nan` test for
/// NaN only.
pub use crate::ptx::ir::Cmp as FloatCmp;

/// `setp.<cmp>.f32` / `.f64`. Note that ordered `ne` is false for NaN operands, unlike
/// Rust's `!=`, and that −0 equals +0.
pub fn setp_float<T: PartialOrd>(cmp: FloatCmp, a: T, b: T) -> bool {
    use Ordering::{Equal, Greater, Less};
    let ord = a.partial_cmp(&b);
    match cmp {
        FloatCmp::Eq => ord == Some(Equal),
        FloatCmp::Ne => matches!(ord, Some(Less | Greater)),
        FloatCmp::Lt => ord == Some(Less),
        FloatCmp::Le => matches!(ord, Some(Less | Equal)),
        FloatCmp::Gt => ord == Some(Greater),
        FloatCmp::Ge => matches!(ord, Some(Greater | Equal)),
        FloatCmp::Equ => matches!(ord, None | Some(Equal)),
        FloatCmp::Neu => ord != Some(Equal),
        FloatCmp::Ltu => matches!(ord, None | Some(Less)),
        FloatCmp::Leu => ord != Some(Greater),
        FloatCmp::Gtu => matches!(ord, None | Some(Greater)),
        FloatCmp::Geu => ord != Some(Less),
        FloatCmp::Num => ord.is_some(),
        FloatCmp::Nan => ord.is_none(),
    }
}
