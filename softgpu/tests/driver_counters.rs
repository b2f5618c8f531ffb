//! `SOFTGPU_COUNTERS` through the driver: a `cuLaunchKernel` appends one JSON line with
//! the launch's counters, and `SOFTGPU_REGISTERS` (a check-ptx.py report) adds its sm_80
//! occupancy. One test in its own binary: the variables are read once per process.

mod driver_support;

use std::ffi::c_void;

use driver_support::{device, ok};
use softgpu::driver::counters::{COUNTERS_VAR, REGISTERS_VAR};
use softgpu::driver::launch::cuLaunchKernel;
use softgpu::driver::memory::alloc::{cuMemAllocAsync, cuMemFreeAsync};
use softgpu::driver::module::{cuModuleGetFunction, cuModuleLoadData};

const NULL: *mut c_void = std::ptr::null_mut();

#[test]
fn each_launch_appends_a_json_line_with_occupancy_from_the_ptxas_report() {
    let dir = std::env::temp_dir().join(format!("softgpu-counters-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (lines, report) = (dir.join("counters.jsonl"), dir.join("ptxas-report.txt"));
    std::fs::write(
        &report,
        "module       kernel                           arch    regs    smem  stack  spill st  spill ld\n\
         ------------------------------------------------------------------------------------------\n\
         counters     copy_strided_f32                 sm_89     10       0      0         0         0\n",
    )
    .unwrap();
    // SAFETY: the only test of this binary sets them before anything reads the environment.
    unsafe {
        std::env::set_var(COUNTERS_VAR, &lines);
        std::env::set_var(REGISTERS_VAR, &report);
    }
    let _d = device();
    let text = std::ffi::CString::new(include_str!("ptx/counters.ptx")).unwrap();
    let (mut module, mut f) = (NULL, NULL);
    // SAFETY: NUL-terminated text and name; the handles are written.
    unsafe {
        ok(cuModuleLoadData(&mut module, text.as_ptr().cast()));
        ok(cuModuleGetFunction(&mut f, module, c"copy_strided_f32".as_ptr()));
    }
    let (mut x, mut y) = (0u64, 0u64);
    // SAFETY: the addresses are written.
    unsafe {
        ok(cuMemAllocAsync(&mut x, 1024, NULL));
        ok(cuMemAllocAsync(&mut y, 1024, NULL));
    }
    let (n, stride) = (256i32, 1i32);
    let mut args = [&raw const x, &raw const y].map(|p| p.cast_mut().cast::<c_void>()).to_vec();
    args.extend([&raw const n, &raw const stride].map(|p| p.cast_mut().cast::<c_void>()));
    for _ in 0..2 {
        // SAFETY: one pointer per parameter, each to a value of its size.
        ok(unsafe { cuLaunchKernel(f, 2, 1, 1, 128, 1, 1, 0, NULL, args.as_mut_ptr(), NULL.cast()) });
    }
    ok(cuMemFreeAsync(x, NULL));
    ok(cuMemFreeAsync(y, NULL));
    let written = std::fs::read_to_string(&lines).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let all: Vec<&str> = written.lines().collect();
    assert_eq!(all.len(), 2, "one line per launch: {written}");
    let line = all[0];
    assert!(
        line.starts_with(r#"{"kernel":"copy_strided_f32","grid":[2, 1, 1],"block":[128, 1, 1]"#),
        "{line}"
    );
    assert!(line.contains(r#""global_load":{"requests":8,"bytes":1024,"sectors":32}"#), "{line}");
    assert!(line.contains(r#""registers_per_thread":10,"blocks_per_sm":16"#), "{line}");
}
