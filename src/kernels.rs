//! The PTX of every `kernels/*.cu` file, embedded at build time (see build.rs).

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Whether this binary was built with nvcc and so carries kernels.
pub fn built_with_kernels() -> bool {
    KernelModule::ALL.iter().all(|m| m.ptx().is_some())
}

/// What a user without kernels should do about it.
pub const NO_KERNELS_HELP: &str = "this dfengine was built without CUDA kernels (no nvcc at build time); \
     install one with `scripts/install-nvcc.sh` (or set NVCC / CUDA_HOME) and rebuild";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_family_of_the_design_has_a_module() {
        let names: Vec<_> = KernelModule::ALL.iter().map(|m| m.name()).collect();
        for family in ["gemm", "conv", "preprocess", "loss", "eltwise", "optim", "pooling", "norm"] {
            assert!(names.contains(&family), "kernels/{family}.cu missing from {names:?}");
        }
    }

    #[test]
    fn embedded_ptx_names_its_entry_points() {
        if !built_with_kernels() {
            eprintln!("skipped: {NO_KERNELS_HELP}");
            return;
        }
        let gemm = KernelModule::Gemm.ptx().unwrap();
        assert!(gemm.contains(".entry gemm_ref_f16"), "gemm PTX lacks gemm_ref_f16");
        assert!(gemm.contains(&format!(".target {}", PTX_ARCH.replace("compute_", "sm_"))));
        let conv = KernelModule::Conv.ptx().unwrap();
        assert!(conv.contains(".entry conv2d_fwd_ref_f16"));
    }
}
