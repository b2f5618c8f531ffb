//! Integer semantics against Rust, on a hand-written kernel: per-type widths and
//! signedness, division and remainder signs, wide and high multiplies, shift clamping,
//! bit-field insert and the conversions between widths.

mod exec_support;

use exec_support::{Arg, TestMemory, pack};
use softgpu::exec::{LaunchConfig, launch};

/// Thread t reads a = in[2t], b = in[2t+1] (s32) and writes 12 results (as u64) to
/// out[12t..].
const INT_PTX: &str = r#"
.version 9.0
.target sm_80
.address_size 64

.visible .entry int_ops(
	.param .u64 int_ops_param_0,
	.param .u64 int_ops_param_1
)
{
	.reg .b32 	%r<20>;
	.reg .b64 	%rd<20>;

	ld.param.u64 	%rd1, [int_ops_param_0];
	ld.param.u64 	%rd2, [int_ops_param_1];
	mov.u32 	%r1, %tid.x;
	mul.wide.u32 	%rd3, %r1, 8;
	add.s64 	%rd4, %rd1, %rd3;
	ld.global.v2.u32 	{%r2, %r3}, [%rd4];
	mul.wide.u32 	%rd5, %r1, 96;
	add.s64 	%rd6, %rd2, %rd5;
	shr.s32 	%r4, %r2, %r3;
	cvt.s64.s32 	%rd7, %r4;
	st.global.u64 	[%rd6], %rd7;
	shr.u32 	%r5, %r2, %r3;
	cvt.u64.u32 	%rd8, %r5;
	st.global.u64 	[%rd6+8], %rd8;
	shl.b32 	%r6, %r2, %r3;
	cvt.u64.u32 	%rd9, %r6;
	st.global.u64 	[%rd6+16], %rd9;
	div.s32 	%r7, %r2, %r3;
	cvt.s64.s32 	%rd10, %r7;
	st.global.u64 	[%rd6+24], %rd10;
	rem.s32 	%r8, %r2, %r3;
	cvt.s64.s32 	%rd11, %r8;
	st.global.u64 	[%rd6+32], %rd11;
	mul.hi.s32 	%r9, %r2, %r3;
	cvt.s64.s32 	%rd12, %r9;
	st.global.u64 	[%rd6+40], %rd12;
	mul.wide.s32 	%rd13, %r2, %r3;
	st.global.u64 	[%rd6+48], %rd13;
	min.u32 	%r10, %r2, %r3;
	cvt.u64.u32 	%rd14, %r10;
	st.global.u64 	[%rd6+56], %rd14;
	max.s32 	%r11, %r2, %r3;
	cvt.s64.s32 	%rd15, %r11;
	st.global.u64 	[%rd6+64], %rd15;
	bfi.b32 	%r12, %r2, %r3, 6, 26;
	cvt.u64.u32 	%rd16, %r12;
	st.global.u64 	[%rd6+72], %rd16;
	div.u32 	%r13, %r2, %r3;
	cvt.u64.u32 	%rd17, %r13;
	st.global.u64 	[%rd6+80], %rd17;
	mad.lo.s32 	%r14, %r2, %r3, -7;
	cvt.s64.s32 	%rd18, %r14;
	st.global.u64 	[%rd6+88], %rd18;
	ret;
}
"#;

fn expected(a: i32, b: i32) -> [u64; 12] {
    let (ua, ub) = (a as u32, b as u32);
    // PTX clamps shift amounts at the width (no wrap modulo 32 as on x86).
    let shr_s = if ub >= 32 { a >> 31 } else { a >> ub };
    let shr_u = if ub >= 32 { 0 } else { ua >> ub };
    let shl = if ub >= 32 { 0 } else { ua << ub };
    let bfi = (ub & !(0x3ff_ffff << 6)) | ((ua & 0x3ff_ffff) << 6);
    [
        shr_s as i64 as u64,
        shr_u as u64,
        shl as u64,
        a.wrapping_div(b) as i64 as u64,
        a.wrapping_rem(b) as i64 as u64,
        ((a as i64 * b as i64) >> 32) as i32 as i64 as u64,
        (a as i64 * b as i64) as u64,
        ua.min(ub) as u64,
        a.max(b) as i64 as u64,
        bfi as u64,
        (ua / ub) as u64,
        a.wrapping_mul(b).wrapping_sub(7) as i64 as u64,
    ]
}

#[test]
fn integer_ops_match_rust() {
    let module = softgpu::ptx::parse(INT_PTX).unwrap_or_else(|e| panic!("{e}"));
    let k = module.kernel("int_ops").expect("int_ops");
    let pairs: [(i32, i32); 8] =
        [(-17, 5), (17, -5), (i32::MIN, -1), (-1, 31), (-1, 32), (0x1234_5678, 40), (-100_000, 3), (7, 1)];
    let input: Vec<i32> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    let mut mem = TestMemory::new();
    let pin = mem.alloc_i32(&input);
    let pout = mem.alloc_bytes(&vec![0u8; pairs.len() * 96]);
    let params = pack(k, &[Arg::Ptr(pin), Arg::Ptr(pout)]);
    let cfg = LaunchConfig { grid: [1, 1, 1], block: [pairs.len() as u32, 1, 1], dynamic_shared: 0 };
    launch(k, &cfg, &params, &mem).unwrap_or_else(|e| panic!("{e}"));
    let out: Vec<u64> =
        mem.bytes(pout).chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    let names = [
        "shr.s32",
        "shr.u32",
        "shl.b32",
        "div.s32",
        "rem.s32",
        "mul.hi.s32",
        "mul.wide.s32",
        "min.u32",
        "max.s32",
        "bfi.b32",
        "div.u32",
        "mad.lo.s32",
    ];
    for (t, &(a, b)) in pairs.iter().enumerate() {
        let want = expected(a, b);
        for (i, name) in names.iter().enumerate() {
            assert_eq!(out[t * 12 + i], want[i], "{name} {a}, {b}");
        }
    }
}
