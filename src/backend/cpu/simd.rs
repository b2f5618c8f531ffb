//! Loops compiled for the widest vectors the CPU has, chosen at run time.
//!
//! The crate is built for baseline x86-64 so that one binary runs on any x86-64 machine,
//! and baseline means SSE2: 4 f32 or 2 f64 lanes. The loops over a row's channels (batch
//! norm's f64 sums, normalisation, the FP16 conversions around them) are compute-bound at
//! that width: batch norm's backward over [100352, 64] FP32 took 17.3 ms on one core of
//! the 2-core AMD EPYC (Zen 5) VM measured, 7.4 ms built for AVX-512 (`-C
//! target-cpu=x86-64-v4`), and the forward 4.9 → 3.9 ms (FP16: 24.1 → 9.5 and 13.5 → 5.8).
//!
//! `vectorized!` gets that without the build flag: it defines a function whose body is
//! compiled three times — for AVX-512, for AVX2, and for the baseline — and which runs
//! the widest the CPU has (`widest`; `cap_vectors` narrows it). Batch norm, the
//! element-wise ops and AdamW use it. The body is repeated inside each
//! `#[target_feature]` function, so the closures it defines are compiled for that
//! instruction set too, and the generic and `#[inline]` functions it calls are inlined
//! into it. (A closure handed to one
//! `#[target_feature]` function is not: it is compiled on its own, for the baseline,
//! wherever the compiler chooses not to inline it — the first try measured so.)
//!
//! The results are the same bits on every path: Rust never contracts a multiply and an
//! add into an FMA, and wider vectors do each element's arithmetic in the same order (the
//! loops put one channel in each lane; no sum runs across lanes).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// A vector instruction set `vectorized!` compiles for, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Isa {
    /// What the crate is built for.
    Baseline,
    /// AVX2 and F16C.
    Avx2,
    /// AVX-512 F, BW and VL, with AVX2 and F16C.
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Baseline, Isa::Avx2, Isa::Avx512];
}

/// The widest `Isa` the CPU runs, whatever the cap.
pub fn supported() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx2") && has!("f16c") {
                let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
                return if avx512 { Isa::Avx512 } else { Isa::Avx2 };
            }
        }
        Isa::Baseline
    })
}

/// The widest `Isa` that `vectorized!` functions may use (`cap_vectors`).
static CAP: AtomicU8 = AtomicU8::new(Isa::Avx512 as u8);

/// Limits `vectorized!` functions to `isa` and narrower, for the whole process: benches
/// compare the paths in one run, and tests run each. Every path gives the same bits, so
/// a call running while another thread changes the cap is still right — which is why
/// nothing whose bits depend on the instruction set (the GEMM kernels) follows the cap.
pub fn cap_vectors(isa: Isa) {
    CAP.store(isa as u8, Ordering::Relaxed);
}

/// What `vectorized!` functions run now: the CPU's widest, within the cap.
#[inline]
pub fn widest() -> Isa {
    let cap = Isa::ALL[CAP.load(Ordering::Relaxed) as usize];
    supported().min(cap)
}

/// `vectorized! { fn name<E: Elem>(args) -> R { body } }` defines `name`, whose body runs
/// compiled for `widest()`. Generic parameters take one bound each.
macro_rules! vectorized {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$($gen:ident: $bound:path),*>)? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
        $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name $(<$($gen: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
                #[allow(clippy::too_many_arguments)]
                fn avx512 $(<$($gen: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? $body
                #[target_feature(enable = "avx2,f16c")]
                #[allow(clippy::too_many_arguments)]
                fn avx2 $(<$($gen: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? $body
                match $crate::backend::cpu::simd::widest() {
                    // SAFETY: `widest` found every feature the function is compiled for.
                    $crate::backend::cpu::simd::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::backend::cpu::simd::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::backend::cpu::simd::Isa::Baseline => {}
                }
            }
            $body
        }
    };
}
pub(crate) use vectorized;

#[cfg(test)]
mod tests {
    use super::*;

    vectorized! {
        /// Per lane: a product, a sum and a division in f32, then widened and added in f64.
        fn lanes(a: &[f32], b: &[f32], acc: &mut [f64]) {
            for ((s, &x), &y) in acc.iter_mut().zip(a).zip(b) {
                *s += ((x * y + x) / (y + 3.0)) as f64;
            }
        }
    }

    #[test]
    fn every_path_gives_the_baseline_bits() {
        let a: Vec<f32> = (0..1031).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
        let b: Vec<f32> = (0..1031).map(|i| (i as f32 * 0.11).cos()).collect();
        let run = |isa| {
            cap_vectors(isa);
            let mut acc = vec![0.25f64; a.len()];
            lanes(&a, &b, &mut acc);
            (widest(), acc)
        };
        let (_, want) = run(Isa::Baseline);
        for isa in Isa::ALL {
            let (ran, got) = run(isa);
            assert!(ran <= isa, "{ran:?} ran under a cap of {isa:?}");
            assert!(want.iter().zip(&got).all(|(w, g)| w.to_bits() == g.to_bits()), "{ran:?} differs");
        }
        cap_vectors(Isa::Avx512);
    }
}
