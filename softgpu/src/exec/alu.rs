//! Arithmetic, comparison and conversion semantics, one warp-wide call per instruction.
//!
//! Slots hold values in their low bits and readers mask to their own type, so wrapping
//! operations (add, sub, mul.lo, bitwise) run on the full u64 and leave garbage above the
//! type's width; operations that depend on the upper bits (division, comparisons, right
//! shifts, high halves, conversions) first sign- or zero-extend their inputs.

use half::f16;

use super::lanes::{Lanes, map1, map2, map3, test2};
use super::numeric;
use crate::ptx::ir::{Cmp, CvtRnd, FloatOp, FloatUnOp, IntOp, IntUnOp, Reg, Rnd, Ty};

#[inline(always)]
fn sext(v: u64, sh: u32) -> i64 {
    ((v << sh) as i64) >> sh
}

#[inline(always)]
fn zext(v: u64, sh: u32) -> u64 {
    (v << sh) >> sh
}

#[inline(always)]
fn f32_of(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

#[inline(always)]
fn f64_of(v: u64) -> f64 {
    f64::from_bits(v)
}

#[inline(always)]
fn bits32(x: f32) -> u64 {
    x.to_bits() as u64
}

/// Width in bits and the shift that extends from it.
fn width(ty: Ty) -> (u32, u32) {
    let bits = ty.bytes() * 8;
    (bits, 64 - bits)
}

pub(crate) fn int(regs: &mut [Lanes], mask: u32, op: IntOp, ty: Ty, d: Reg, a: Reg, b: Reg) {
    let (bits, sh) = width(ty);
    let signed = ty.is_signed();
    match op {
        IntOp::Add => map2(regs, mask, d, a, b, |x, y| x.wrapping_add(y)),
        IntOp::Sub => map2(regs, mask, d, a, b, |x, y| x.wrapping_sub(y)),
        IntOp::MulLo => map2(regs, mask, d, a, b, |x, y| x.wrapping_mul(y)),
        IntOp::And => map2(regs, mask, d, a, b, |x, y| x & y),
        IntOp::Or => map2(regs, mask, d, a, b, |x, y| x | y),
        IntOp::Xor => map2(regs, mask, d, a, b, |x, y| x ^ y),
        IntOp::MulHi if signed => {
            map2(regs, mask, d, a, b, |x, y| ((sext(x, sh) as i128 * sext(y, sh) as i128) >> bits) as u64)
        }
        IntOp::MulHi => {
            map2(regs, mask, d, a, b, |x, y| ((zext(x, sh) as u128 * zext(y, sh) as u128) >> bits) as u64)
        }
        // Division by zero is unspecified in PTX; all ones is what the hardware gives for
        // unsigned operands. Signed MIN / -1 wraps.
        IntOp::Div if signed => map2(regs, mask, d, a, b, |x, y| {
            let (x, y) = (sext(x, sh), sext(y, sh));
            if y == 0 { u64::MAX } else { x.wrapping_div(y) as u64 }
        }),
        IntOp::Div => map2(regs, mask, d, a, b, |x, y| {
            let (x, y) = (zext(x, sh), zext(y, sh));
            x.checked_div(y).unwrap_or(u64::MAX)
        }),
        IntOp::Rem if signed => map2(regs, mask, d, a, b, |x, y| {
            let (x, y) = (sext(x, sh), sext(y, sh));
            if y == 0 { x as u64 } else { x.wrapping_rem(y) as u64 }
        }),
        IntOp::Rem => map2(regs, mask, d, a, b, |x, y| {
            let (x, y) = (zext(x, sh), zext(y, sh));
            x.checked_rem(y).unwrap_or(x)
        }),
        IntOp::Min if signed => map2(regs, mask, d, a, b, |x, y| sext(x, sh).min(sext(y, sh)) as u64),
        IntOp::Min => map2(regs, mask, d, a, b, |x, y| zext(x, sh).min(zext(y, sh))),
        IntOp::Max if signed => map2(regs, mask, d, a, b, |x, y| sext(x, sh).max(sext(y, sh)) as u64),
        IntOp::Max => map2(regs, mask, d, a, b, |x, y| zext(x, sh).max(zext(y, sh))),
        // Shift amounts are unsigned 32-bit and clamp at the width: left and logical right
        // shifts give 0, arithmetic right shifts the sign fill.
        IntOp::Shl => map2(regs, mask, d, a, b, |x, y| if (y as u32) >= bits { 0 } else { x << (y as u32) }),
        IntOp::Shr if signed => map2(regs, mask, d, a, b, |x, y| (sext(x, sh) >> (y as u32).min(63)) as u64),
        IntOp::Shr => {
            map2(regs, mask, d, a, b, |x, y| if (y as u32) >= bits { 0 } else { zext(x, sh) >> (y as u32) })
        }
    }
}

pub(crate) fn int_un(regs: &mut [Lanes], mask: u32, op: IntUnOp, ty: Ty, d: Reg, a: Reg) {
    let (_, sh) = width(ty);
    match op {
        IntUnOp::Neg => map1(regs, mask, d, a, |x| x.wrapping_neg()),
        IntUnOp::Not => map1(regs, mask, d, a, |x| !x),
        IntUnOp::Abs => map1(regs, mask, d, a, |x| sext(x, sh).wrapping_abs() as u64),
    }
}

pub(crate) fn mul_wide(regs: &mut [Lanes], mask: u32, ty: Ty, d: Reg, a: Reg, b: Reg) {
    let (_, sh) = width(ty);
    if ty.is_signed() {
        map2(regs, mask, d, a, b, |x, y| sext(x, sh).wrapping_mul(sext(y, sh)) as u64)
    } else {
        map2(regs, mask, d, a, b, |x, y| zext(x, sh).wrapping_mul(zext(y, sh)))
    }
}

pub(crate) fn mad_lo(regs: &mut [Lanes], mask: u32, d: Reg, abc: [Reg; 3]) {
    map3(regs, mask, d, abc, |x, y, z| x.wrapping_mul(y).wrapping_add(z))
}

/// `bfi`: the low `len` bits of `a` replace bits `pos..pos+len` of `b` (both clipped to the
/// type's width; only the low 8 bits of `pos` and `len` count).
pub(crate) fn bfi(regs: &mut [Lanes], mask: u32, ty: Ty, d: Reg, [a, b, pos, len]: [Reg; 4]) {
    let (bits, _) = width(ty);
    let (pv, lv) = (regs[pos as usize], regs[len as usize]);
    let mut pos_len = [0u64; 32];
    for (l, v) in pos_len.iter_mut().enumerate() {
        *v = (pv[l] & 0xff) | ((lv[l] & 0xff) << 8);
    }
    let bv = regs[b as usize];
    let av = regs[a as usize];
    let dv = &mut regs[d as usize];
    super::lanes::each(mask, |l| {
        let (p, n) = ((pos_len[l] & 0xff) as u32, (pos_len[l] >> 8) as u32);
        dv[l] = if n == 0 || p >= bits {
            bv[l]
        } else {
            let n = n.min(bits - p);
            let m = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
            (bv[l] & !(m << p)) | ((av[l] & m) << p)
        };
    });
}

/// `add/sub/mul/div/min/max` on f32 and f64 (decode admits only the `.rn` forms and
/// `add.rz.f32`, and min/max on f32).
pub(crate) fn float(regs: &mut [Lanes], mask: u32, op: FloatOp, rnd: Rnd, ty: Ty, [d, a, b]: [Reg; 3]) {
    if ty == Ty::F32 {
        let f = |g: fn(f32, f32) -> f32| move |x: u64, y: u64| bits32(g(f32_of(x), f32_of(y)));
        match (op, rnd) {
            (FloatOp::Add, Rnd::Rz) => map2(regs, mask, d, a, b, f(numeric::add_rz_f32)),
            (FloatOp::Add, _) => map2(regs, mask, d, a, b, f(|x, y| x + y)),
            (FloatOp::Sub, _) => map2(regs, mask, d, a, b, f(|x, y| x - y)),
            (FloatOp::Mul, _) => map2(regs, mask, d, a, b, f(|x, y| x * y)),
            (FloatOp::Div, _) => map2(regs, mask, d, a, b, f(|x, y| x / y)),
            (FloatOp::Min, _) => map2(regs, mask, d, a, b, f(numeric::min_f32)),
            (FloatOp::Max, _) => map2(regs, mask, d, a, b, f(numeric::max_f32)),
        }
    } else {
        let f = |g: fn(f64, f64) -> f64| move |x: u64, y: u64| g(f64_of(x), f64_of(y)).to_bits();
        match op {
            FloatOp::Add => map2(regs, mask, d, a, b, f(|x, y| x + y)),
            FloatOp::Sub => map2(regs, mask, d, a, b, f(|x, y| x - y)),
            FloatOp::Mul => map2(regs, mask, d, a, b, f(|x, y| x * y)),
            FloatOp::Div => map2(regs, mask, d, a, b, f(|x, y| x / y)),
            FloatOp::Min => map2(regs, mask, d, a, b, f(f64::min)),
            FloatOp::Max => map2(regs, mask, d, a, b, f(f64::max)),
        }
    }
}

pub(crate) fn float_un(regs: &mut [Lanes], mask: u32, op: FloatUnOp, ty: Ty, d: Reg, a: Reg) {
    let sign = if ty == Ty::F32 { 1u64 << 31 } else { 1u64 << 63 };
    match (op, ty) {
        (FloatUnOp::Neg, _) => map1(regs, mask, d, a, |x| x ^ sign),
        (FloatUnOp::Abs, _) => map1(regs, mask, d, a, |x| x & !sign),
        (FloatUnOp::Sqrt, Ty::F32) => map1(regs, mask, d, a, |x| bits32(f32_of(x).sqrt())),
        (FloatUnOp::Sqrt, _) => map1(regs, mask, d, a, |x| f64_of(x).sqrt().to_bits()),
        (FloatUnOp::Rcp, Ty::F32) => map1(regs, mask, d, a, |x| bits32(1.0 / f32_of(x))),
        (FloatUnOp::Rcp, _) => map1(regs, mask, d, a, |x| (1.0 / f64_of(x)).to_bits()),
        (FloatUnOp::Ex2Approx, _) => map1(regs, mask, d, a, |x| bits32(numeric::ex2_approx_f32(f32_of(x)))),
    }
}

pub(crate) fn fma(regs: &mut [Lanes], mask: u32, ty: Ty, d: Reg, abc: [Reg; 3]) {
    if ty == Ty::F32 {
        map3(regs, mask, d, abc, |x, y, z| bits32(f32_of(x).mul_add(f32_of(y), f32_of(z))))
    } else {
        map3(regs, mask, d, abc, |x, y, z| f64_of(x).mul_add(f64_of(y), f64_of(z)).to_bits())
    }
}

/// `setp`: the lanes of `mask` for which the comparison holds.
pub(crate) fn setp(regs: &[Lanes], mask: u32, cmp: Cmp, ty: Ty, a: Reg, b: Reg) -> u32 {
    let (_, sh) = width(ty);
    match ty {
        Ty::F32 => test2(regs, mask, a, b, |x, y| numeric::setp_float(cmp, f32_of(x), f32_of(y))),
        Ty::F64 => test2(regs, mask, a, b, |x, y| numeric::setp_float(cmp, f64_of(x), f64_of(y))),
        _ if ty.is_signed() => int_cmp(regs, mask, cmp, a, b, |x| sext(x, sh)),
        _ => int_cmp(regs, mask, cmp, a, b, |x| zext(x, sh)),
    }
}

#[inline(always)]
fn int_cmp<T: Ord>(regs: &[Lanes], mask: u32, cmp: Cmp, a: Reg, b: Reg, ext: impl Fn(u64) -> T) -> u32 {
    match cmp {
        Cmp::Eq => test2(regs, mask, a, b, |x, y| ext(x) == ext(y)),
        Cmp::Ne => test2(regs, mask, a, b, |x, y| ext(x) != ext(y)),
        Cmp::Lt => test2(regs, mask, a, b, |x, y| ext(x) < ext(y)),
        Cmp::Le => test2(regs, mask, a, b, |x, y| ext(x) <= ext(y)),
        Cmp::Gt => test2(regs, mask, a, b, |x, y| ext(x) > ext(y)),
        // Decode admits only the six ordered comparisons on integers.
        _ => test2(regs, mask, a, b, |x, y| ext(x) >= ext(y)),
    }
}

/// A source value of a `cvt`, read per its type.
enum Num {
    Int(i128),
    Float(f64),
}

fn read_num(v: u64, ty: Ty) -> Num {
    let (_, sh) = width(ty);
    match ty {
        Ty::F16 => Num::Float(numeric::cvt_f32_f16(v as u16) as f64),
        Ty::F32 => Num::Float(f32_of(v) as f64),
        Ty::F64 => Num::Float(f64_of(v)),
        _ if ty.is_signed() => Num::Int(sext(v, sh) as i128),
        _ => Num::Int(zext(v, sh) as i128),
    }
}

fn round_integral(x: f64, r: Rnd) -> f64 {
    match r {
        Rnd::Rn => x.round_ties_even(),
        Rnd::Rz => x.trunc(),
        Rnd::Rm => x.floor(),
        Rnd::Rp => x.ceil(),
    }
}

/// Float → integer: rounded, clamped to the destination's range, NaN → 0.
fn float_to_int(x: f64, r: Rnd, dty: Ty) -> u64 {
    if x.is_nan() {
        return 0;
    }
    let (bits, _) = width(dty);
    let x = round_integral(x, r);
    if dty.is_signed() {
        let (lo, hi) = (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1);
        ((x as i128).clamp(lo, hi) as i64) as u64
    } else {
        let hi = (1i128 << bits) - 1;
        (x as i128).clamp(0, hi) as u64
    }
}

/// `cvt` of one value. Decode admits: integer ↔ integer (no rounding), float → integer
/// with `.rni/.rzi/.rmi/.rpi`, integer → float and narrowing float → float with `.rn`,
/// widening float → float exact.
fn cvt_one(dty: Ty, sty: Ty, rnd: CvtRnd, v: u64) -> u64 {
    match (read_num(v, sty), dty) {
        (Num::Int(i), _) if !dty.is_float() => i as u64,
        (Num::Float(x), _) if !dty.is_float() => float_to_int(x, rnd_of(rnd), dty),
        (Num::Int(i), Ty::F16) => f16::from_f64(i as f64).to_bits() as u64,
        (Num::Int(i), Ty::F32) => bits32(i as f32),
        (Num::Int(i), _) => (i as f64).to_bits(),
        (Num::Float(x), Ty::F16) => match sty {
            Ty::F32 => numeric::cvt_rn_f16_f32(x as f32) as u64,
            _ => f16::from_f64(x).to_bits() as u64,
        },
        (Num::Float(x), Ty::F32) => match rnd {
            CvtRnd::Int(r) => bits32(round_integral(x, r) as f32),
            _ => bits32(x as f32),
        },
        (Num::Float(x), _) => match rnd {
            CvtRnd::Int(r) => round_integral(x, r).to_bits(),
            _ => x.to_bits(),
        },
    }
}

fn rnd_of(rnd: CvtRnd) -> Rnd {
    match rnd {
        CvtRnd::Int(r) | CvtRnd::Float(r) => r,
        CvtRnd::Exact => Rnd::Rz,
    }
}

pub(crate) fn cvt(regs: &mut [Lanes], mask: u32, dty: Ty, sty: Ty, rnd: CvtRnd, d: Reg, a: Reg) {
    let (_, sh) = width(sty);
    match (dty.is_float(), sty.is_float()) {
        // Integer ↔ integer is the hot case (index arithmetic): extend per the source
        // type; the destination's readers truncate.
        (false, false) if sty.is_signed() => map1(regs, mask, d, a, |x| sext(x, sh) as u64),
        (false, false) => map1(regs, mask, d, a, |x| zext(x, sh)),
        _ => map1(regs, mask, d, a, |x| cvt_one(dty, sty, rnd, x)),
    }
}
