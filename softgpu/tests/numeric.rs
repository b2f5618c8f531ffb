//! The floating-point forms of the interpreter against their definitions in the PTX ISA
//! and IEEE 754: rounding ties, ±0, ±inf, NaN, subnormals, saturation.

use softgpu::exec::numeric::{
    FloatCmp, add_rz_f32, cvt_f32_f16, cvt_rn_f16_f32, cvt_rzi_s32_f32, ex2_approx_f32, max_f32, min_f32,
    setp_float,
};

/// 2^e for e in −149..=127, built from its bits: `powi` has unspecified precision (a
/// debug build computes 2^-149 as 1 / 2^149 in f32, which overflows).
fn p2(e: i32) -> f32 {
    assert!((-149..=127).contains(&e), "2^{e} is not a finite f32");
    if e >= -126 { f32::from_bits(((e + 127) as u32) << 23) } else { f32::from_bits(1 << (e + 149)) }
}

/// Distance in representable values between two finite f32 of the same sign.
fn ulps(a: f32, b: f32) -> u32 {
    a.to_bits().abs_diff(b.to_bits())
}

#[test]
fn cvt_rzi_s32_f32_truncates_saturates_and_zeroes_nan() {
    let cases = [
        (2.9, 2),
        (-2.9, -2),
        (0.5, 0),
        (-0.0, 0),
        (1e-45, 0),
        (2147483520.0, 2147483520), // the largest f32 below 2^31
        (2147483648.0, i32::MAX),
        (3e9, i32::MAX),
        (-2147483648.0, i32::MIN),
        (-3e9, i32::MIN),
        (f32::INFINITY, i32::MAX),
        (f32::NEG_INFINITY, i32::MIN),
        (f32::NAN, 0),
        (-f32::NAN, 0),
    ];
    for (x, want) in cases {
        assert_eq!(cvt_rzi_s32_f32(x), want, "cvt.rzi.s32.f32 {x}");
    }
}

#[test]
fn cvt_rn_f16_f32_rounds_to_nearest_even() {
    let cases: [(f32, u16); 17] = [
        (1.0, 0x3c00),
        (1.0 + p2(-11), 0x3c00),           // halfway, even below
        (1.0 + 3.0 * p2(-11), 0x3c02),     // halfway, even above
        (1.0 + p2(-11) + p2(-20), 0x3c01), // just above halfway
        (65504.0, 0x7bff),                 // largest finite
        (65519.996, 0x7bff),               // just below the overflow tie
        (65520.0, 0x7c00),                 // the tie rounds to even: infinity
        (-1e6, 0xfc00),
        (f32::INFINITY, 0x7c00),
        (p2(-14), 0x0400),       // smallest normal
        (p2(-24), 0x0001),       // smallest subnormal, kept
        (p2(-25), 0x0000),       // halfway to zero, even is zero
        (3.0 * p2(-25), 0x0002), // halfway between 1 and 2 subnormal ulps
        (p2(-25) + p2(-40), 0x0001),
        (-p2(-26), 0x8000), // underflow keeps the sign
        (-0.0, 0x8000),
        (0.0, 0x0000),
    ];
    for (x, want) in cases {
        assert_eq!(cvt_rn_f16_f32(x), want, "cvt.rn.f16.f32 {x:e}: got {:#06x}", cvt_rn_f16_f32(x));
    }
    let nan = cvt_rn_f16_f32(f32::NAN);
    assert!(nan & 0x7c00 == 0x7c00 && nan & 0x03ff != 0, "NaN gave {nan:#06x}");
}

#[test]
fn cvt_f32_f16_is_exact_and_inverts_rn() {
    assert_eq!(cvt_f32_f16(0x0001), p2(-24));
    assert_eq!(cvt_f32_f16(0x03ff), 1023.0 * p2(-24));
    assert_eq!(cvt_f32_f16(0x7bff), 65504.0);
    assert_eq!(cvt_f32_f16(0x7c00), f32::INFINITY);
    assert_eq!(cvt_f32_f16(0x8000).to_bits(), (-0.0f32).to_bits());
    assert!(cvt_f32_f16(0x7e00).is_nan());
    for bits in 0..=u16::MAX {
        let x = cvt_f32_f16(bits);
        if !x.is_nan() {
            assert_eq!(cvt_rn_f16_f32(x), bits, "round trip of {bits:#06x}");
        }
    }
}

/// Round toward zero from the exact sum, computed a second way: in f64, which holds the
/// sum of two f32 exactly when their exponents differ by at most 29.
fn add_rz_reference(a: f32, b: f32) -> f32 {
    let exact = f64::from(a) + f64::from(b);
    let nearest = exact as f32;
    if f64::from(nearest).abs() > exact.abs() { f32::from_bits(nearest.to_bits() - 1) } else { nearest }
}

#[test]
fn add_rz_matches_exact_sum_rounded_toward_zero() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut checked = 0;
    for _ in 0..200_000 {
        let r = next();
        let sign = |bit: u64| if r >> bit & 1 == 1 { -1.0 } else { 1.0 };
        let mantissa = |shift: u32| 1.0 + ((r >> shift) & 0x7f_ffff) as f32 * p2(-23);
        let e = (r >> 48 & 0xff) as i32 - 128; // −128..127
        let e_b = (e + (r >> 56 & 0x1f) as i32 - 16).clamp(-149, 127); // within 16 of e
        let a = sign(62) * mantissa(0) * p2(e.clamp(-126, 126));
        let b = sign(63) * mantissa(23) * p2(e_b.clamp(-126, 126));
        assert_eq!(f64::from(a) + f64::from(b) - f64::from(a), f64::from(b), "f64 sum exact");
        let (got, want) = (add_rz_f32(a, b), add_rz_reference(a, b));
        assert_eq!(got.to_bits(), want.to_bits(), "add.rz {a:e} + {b:e}: got {got:e} want {want:e}");
        checked += 1;
    }
    assert_eq!(checked, 200_000);
}

#[test]
fn add_rz_edge_cases() {
    let below_one = f32::from_bits(0x3f7f_ffff);
    let cases = [
        (1.0, 1e-30, 1.0), // exponents 100 apart: beyond f64's reach
        (1.0, -1e-30, below_one),
        (-1.0, 1e-30, -below_one),
        (-1.0, -1e-30, -1.0),
        (1e30, 1e-30, 1e30),
        (1.0, p2(-24), 1.0), // a tie: toward zero, not to even
        (1.0, 3.0 * p2(-24), 1.0 + p2(-23)),
        (f32::MAX, f32::MAX, f32::MAX), // overflow stops at the largest finite
        (-f32::MAX, -f32::MAX, -f32::MAX),
        (f32::MAX, p2(103), f32::MAX), // the tie that rounds to infinity under .rn
        (f32::INFINITY, 1.0, f32::INFINITY),
        (f32::NEG_INFINITY, -f32::MAX, f32::NEG_INFINITY),
        (p2(-149), p2(-149), p2(-148)), // subnormals add exactly
        (1e-45, -1e-45, 0.0),
    ];
    for (a, b, want) in cases {
        let got = add_rz_f32(a, b);
        assert_eq!(got.to_bits(), want.to_bits(), "add.rz {a:e} + {b:e}: got {got:e} want {want:e}");
    }
    assert_eq!(add_rz_f32(2.5, -2.5).to_bits(), 0.0f32.to_bits(), "x − x is +0");
    assert_eq!(add_rz_f32(-0.0, -0.0).to_bits(), (-0.0f32).to_bits());
    assert!(add_rz_f32(f32::INFINITY, f32::NEG_INFINITY).is_nan());
    assert!(add_rz_f32(f32::NAN, 1.0).is_nan());
}

#[test]
fn ex2_approx_specials_and_powers_of_two() {
    assert_eq!(ex2_approx_f32(f32::NEG_INFINITY).to_bits(), 0.0f32.to_bits());
    assert_eq!(ex2_approx_f32(-0.0), 1.0);
    assert_eq!(ex2_approx_f32(0.0), 1.0);
    assert_eq!(ex2_approx_f32(f32::INFINITY), f32::INFINITY);
    assert!(ex2_approx_f32(f32::NAN).is_nan());
    assert_eq!(ex2_approx_f32(128.0), f32::INFINITY);
    // Without .ftz subnormal results are kept, down to 2^-149.
    for k in -149..=127 {
        assert_eq!(ex2_approx_f32(k as f32), 2f64.powi(k) as f32, "ex2({k})");
    }
    assert!(ex2_approx_f32(-150.0) <= p2(-149));
}

#[test]
fn ex2_approx_within_two_ulp() {
    assert!(ulps(ex2_approx_f32(0.5), std::f32::consts::SQRT_2) <= 2);
    let mut x = -149.0f32;
    while x < 128.0 {
        let want = 2f64.powf(f64::from(x)) as f32;
        let got = ex2_approx_f32(x);
        assert!(ulps(got, want) <= 2, "ex2({x}) = {got:e}, correctly rounded {want:e}");
        x += 0.0371;
    }
}

#[test]
fn min_max_follow_ptx_nan_and_zero_rules() {
    let canonical = 0x7fff_ffffu32;
    let cases = [
        // (a, b, min, max)
        (1.0, 2.0, 1.0, 2.0),
        (2.0, 1.0, 1.0, 2.0),
        (f32::NAN, 3.0, 3.0, 3.0),
        (3.0, f32::NAN, 3.0, 3.0),
        (-0.0, 0.0, -0.0, 0.0),
        (0.0, -0.0, -0.0, 0.0),
        (-0.0, -0.0, -0.0, -0.0),
        (f32::NEG_INFINITY, 5.0, f32::NEG_INFINITY, 5.0),
        (1e-45, 0.0, 0.0, 1e-45),
        (-1e-45, -0.0, -1e-45, -0.0),
    ];
    for (a, b, lo, hi) in cases {
        assert_eq!(min_f32(a, b).to_bits(), f32::to_bits(lo), "min({a}, {b})");
        assert_eq!(max_f32(a, b).to_bits(), f32::to_bits(hi), "max({a}, {b})");
    }
    assert_eq!(min_f32(f32::NAN, -f32::NAN).to_bits(), canonical);
    assert_eq!(max_f32(f32::NAN, f32::NAN).to_bits(), canonical);
}

/// setp from the ISA's wording, spelled with Rust's operators: ordered comparisons are
/// false when either operand is NaN, unordered ones true.
fn setp_reference(cmp: FloatCmp, a: f64, b: f64) -> bool {
    let unordered = a.is_nan() || b.is_nan();
    match cmp {
        FloatCmp::Eq => !unordered && a == b,
        FloatCmp::Ne => !unordered && a != b,
        FloatCmp::Lt => !unordered && a < b,
        FloatCmp::Le => !unordered && a <= b,
        FloatCmp::Gt => !unordered && a > b,
        FloatCmp::Ge => !unordered && a >= b,
        FloatCmp::Equ => unordered || a == b,
        FloatCmp::Neu => unordered || a != b,
        FloatCmp::Ltu => unordered || a < b,
        FloatCmp::Leu => unordered || a <= b,
        FloatCmp::Gtu => unordered || a > b,
        FloatCmp::Geu => unordered || a >= b,
        FloatCmp::Num => !unordered,
        FloatCmp::Nan => unordered,
    }
}

#[test]
fn setp_ordered_and_unordered() {
    use FloatCmp::*;
    let all = [Eq, Ne, Lt, Le, Gt, Ge, Equ, Neu, Ltu, Leu, Gtu, Geu, Num, Nan];
    let values = [f32::NAN, f32::NEG_INFINITY, -1.0, -0.0, 0.0, 1e-45, 1.0, f32::INFINITY];
    for cmp in all {
        for a in values {
            for b in values {
                let want = setp_reference(cmp, f64::from(a), f64::from(b));
                assert_eq!(setp_float(cmp, a, b), want, "setp.{cmp:?}.f32 {a} {b}");
                assert_eq!(setp_float(cmp, f64::from(a), f64::from(b)), want, "setp.{cmp:?}.f64 {a} {b}");
            }
        }
    }
    // The forms the kernels use, on the cases that matter to them.
    assert!(!setp_float(Ne, f32::NAN, 0.0), "ordered ne is false on NaN, unlike Rust's !=");
    assert!(setp_float(Neu, f32::NAN, 0.0));
    assert!(setp_float(Leu, f32::NAN, 0.0));
    assert!(setp_float(Gtu, f32::NAN, f32::INFINITY), "|x| gtu inf is nvcc's isnan test");
    assert!(!setp_float(Gtu, f32::INFINITY, f32::INFINITY));
    assert!(setp_float(Eq, -0.0f32, 0.0));
}

/// The forms numeric.rs's table maps to plain Rust operators really are correctly rounded
/// to nearest even, fused where PTX fuses, and keep subnormals.
#[test]
fn rust_operators_are_the_rn_forms() {
    // cvt.rn.f32.f64: ties to even, overflow to infinity, subnormals kept.
    assert_eq!((1.0 + 2f64.powi(-24)) as f32, 1.0);
    assert_eq!((1.0 + 3.0 * 2f64.powi(-24)) as f32, 1.0 + p2(-22));
    assert_eq!(1e39f64 as f32, f32::INFINITY);
    assert_eq!(1e-45f64 as f32, p2(-149));
    // cvt.rn.f32.s32 and cvt.rn.f64.s64: ties to even.
    assert_eq!(16_777_217i32 as f32, 16_777_216.0);
    assert_eq!(16_777_219i32 as f32, 16_777_220.0);
    assert_eq!(((1i64 << 53) + 1) as f64, 2f64.powi(53));
    assert_eq!(((1i64 << 53) + 3) as f64, 2f64.powi(53) + 4.0);
    // fma.rn: one rounding. (1 + 2^-12)² = 1 + 2^-11 + 2^-24 loses its 2^-24 when rounded.
    let a = 1.0 + p2(-12);
    let c = -(1.0 + p2(-11));
    assert_eq!(a.mul_add(a, c), p2(-24));
    assert_eq!(a * a + c, 0.0);
    assert_eq!(f64::from(a).mul_add(f64::from(a), f64::from(c)), f64::from(p2(-24)));
    // div.rn, rcp.rn, sqrt.rn: the correctly rounded values.
    assert_eq!((1.0f32 / 3.0).to_bits(), 0x3eaa_aaab);
    assert_eq!((2.0f32).sqrt().to_bits(), 0x3fb5_04f3);
    assert_eq!((1.0f64 / 3.0).to_bits(), 0x3fd5_5555_5555_5555);
    assert_eq!(1.0f32 / -0.0, f32::NEG_INFINITY);
    assert!((-1.0f32).sqrt().is_nan());
    assert_eq!((-0.0f32).sqrt().to_bits(), (-0.0f32).to_bits());
    assert_eq!(p2(-149) / 2.0, 0.0, "the subnormal tie rounds to even zero");
    // abs and neg only touch the sign bit.
    assert_eq!((-0.0f32).abs().to_bits(), 0);
    assert_eq!((-(0.0f32)).to_bits(), 0x8000_0000);
    assert!((-f32::NAN).is_nan() && f32::NAN.abs().is_nan());
}
