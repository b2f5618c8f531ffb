//! Compiles every `kernels/*.cu` to PTX with nvcc and generates `kernels.rs` in OUT_DIR:
//! a typed `KernelModule` id per file with its embedded PTX, and one `Entry` constant per
//! kernel entry point (`entries::RELU_FWD_F32`), so that a misspelled kernel name fails
//! to compile. The entry names are read from the sources (an `extern "C" __global__`
//! function, or the name argument of a macro that defines one), which works without
//! nvcc; when the PTX is built, its `.entry` list must be exactly that set.
//!
//! nvcc is looked for in `$NVCC`, `$CUDA_HOME/bin`, `PATH`, then the toolchain that
//! `scripts/install-nvcc.sh` puts in `.toolchain/cuda`. With none, the build still
//! succeeds (a cargo warning) and the generated modules carry no PTX: the CUDA backend
//! then explains at run time how to get kernels. A kernel that fails to compile fails
//! the build: a half-built kernel set is worse than none.
//!
//! The PTX target is `compute_80` (mma.sync, ldmatrix, cp.async; JIT-compiled by the
//! driver for sm_89 and sm_90), overridable with `DFENGINE_CUDA_ARCH`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const ARCH_VAR: &str = "DFENGINE_CUDA_ARCH";
const DEFAULT_ARCH: &str = "compute_80";
const TOOLCHAIN_NVCC: &str = ".toolchain/cuda/bin/nvcc";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel_dir = root.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "PATH", ARCH_VAR] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let mut sources: Vec<PathBuf> = fs::read_dir(&kernel_dir)
        .expect("kernels/ exists")
        .map(|e| e.expect("readable kernels/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();

    let arch = env::var(ARCH_VAR).unwrap_or_else(|_| DEFAULT_ARCH.to_string());
    let nvcc = find_nvcc(&root);
    // Watch the toolchain stamp so that installing nvcc later rebuilds the kernels.
    println!("cargo:rerun-if-changed={}", root.join(".toolchain/cuda/.installed").display());

    let ptx_dir = out.join("ptx");
    // Start empty: PTX of a kernel file since renamed or removed must not linger there
    // for scripts/check-ptx.py to report.
    let _ = fs::remove_dir_all(&ptx_dir);
    fs::create_dir_all(&ptx_dir).expect("create OUT_DIR/ptx");
    let compiled = match &nvcc {
        Some(nvcc) => {
            compile_all(nvcc, &sources, &kernel_dir, &ptx_dir, &arch);
            true
        }
        None => {
            println!(
                "cargo:warning=nvcc not found (NVCC, CUDA_HOME, PATH, {TOOLCHAIN_NVCC}): building without \
                 CUDA kernels; run scripts/install-nvcc.sh to get them"
            );
            false
        }
    };
    let version = nvcc.as_deref().map(nvcc_version).unwrap_or_default();
    let entries: Vec<Vec<String>> = sources
        .iter()
        .map(|src| {
            let text = fs::read_to_string(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
            let names = entry_names(&text);
            if compiled {
                let ptx = ptx_dir.join(src.file_stem().expect("stem")).with_extension("ptx");
                check_against_ptx(src, &names, &ptx);
            }
            names
        })
        .collect();
    let mut code = generate(&sources, &ptx_dir, compiled, &arch, &version);
    code += &generate_entries(&sources, &entries);
    fs::write(out.join("kernels.rs"), code).expect("write kernels.rs");
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    let candidates = [
        env::var_os("NVCC").map(PathBuf::from),
        env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")),
        env::var_os("PATH")
            .and_then(|paths| env::split_paths(&paths).map(|p| p.join("nvcc")).find(|p| p.is_file())),
        Some(root.join(TOOLCHAIN_NVCC)),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

fn nvcc_version(nvcc: &Path) -> String {
    Command::new(nvcc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().find(|l| l.contains("release")).map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "unknown nvcc".to_string())
}

/// One nvcc per kernel file, all at once: they are independent and nvcc is slow.
fn compile_all(nvcc: &Path, sources: &[PathBuf], include: &Path, ptx_dir: &Path, arch: &str) {
    let children: Vec<_> = sources
        .iter()
        .map(|src| {
            let ptx = ptx_dir.join(src.file_stem().expect("a .cu file has a stem")).with_extension("ptx");
            let child = Command::new(nvcc)
                .args(["-ptx", "-O3", "-std=c++17", "-lineinfo", "--Werror", "all-warnings"])
                .arg(format!("-arch={arch}"))
                .arg("-I")
                .arg(include)
                .arg(src)
                .arg("-o")
                .arg(&ptx)
                .output();
            (src, child)
        })
        .collect();
    for (src, result) in children {
        let output = result.unwrap_or_else(|e| panic!("cannot run nvcc for {}: {e}", src.display()));
        if !output.status.success() {
            panic!(
                "nvcc failed on {} (-arch={arch}):\n{}{}",
                src.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// The kernel entry points a `.cu` file defines, in source order.
fn entry_names(text: &str) -> Vec<String> {
    // Join backslash-continued lines, so that a macro definition is one line.
    let joined = text.replace("\\\n", " ");
    let marker = "extern \"C\" __global__ void";
    let mut names = Vec::new();
    // (macro, index of its name parameter) for macros that define an entry point.
    let mut macros: Vec<(String, usize)> = Vec::new();
    for line in joined.lines() {
        let Some(at) = line.find(marker) else { continue };
        let mut rest = line[at + marker.len()..].trim_start();
        if let Some(bounds) = rest.strip_prefix("__launch_bounds__") {
            rest = bounds[bounds.find(')').expect("__launch_bounds__(...) closes") + 1..].trim_start();
        }
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        match line.trim_start().strip_prefix("#define ") {
            Some(def) => {
                let open = def.find('(').expect("a macro defining a kernel takes its name");
                let params: Vec<&str> = def[open + 1..def.find(')').expect("macro params close")]
                    .split(',')
                    .map(str::trim)
                    .collect();
                let index = params.iter().position(|p| *p == name).unwrap_or_else(|| {
                    panic!("macro {} defines kernel {name}, which is not one of its parameters", &def[..open])
                });
                macros.push((def[..open].to_string(), index));
            }
            None => names.push(name),
        }
    }
    for line in joined.lines() {
        for (mac, index) in &macros {
            let Some(args) = line.trim_start().strip_prefix(&format!("{mac}(")) else { continue };
            let args = &args[..args.rfind(')').expect("macro call closes")];
            let arg = args.split(',').nth(*index).expect("macro call has the name argument");
            names.push(arg.trim().to_string());
        }
    }
    names
}

/// The `.entry` names nvcc emitted must be exactly the ones read from the source.
fn check_against_ptx(src: &Path, names: &[String], ptx: &Path) {
    let text = fs::read_to_string(ptx).unwrap_or_else(|e| panic!("read {}: {e}", ptx.display()));
    let mut emitted: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix(".visible .entry "))
        .map(|l| l.split(|c: char| c == '(' || c.is_whitespace()).next().unwrap_or(""))
        .collect();
    let mut read: Vec<&str> = names.iter().map(String::as_str).collect();
    emitted.sort_unstable();
    read.sort_unstable();
    assert_eq!(
        emitted,
        read,
        "{}: the PTX's entry points differ from the ones build.rs reads in the source",
        src.display()
    );
}

/// `Entry` and one constant per entry point, in module `entries`.
fn generate_entries(sources: &[PathBuf], entries: &[Vec<String>]) -> String {
    let mut code = String::from(
        "\n/// A kernel entry point: the module that holds it and its `.entry` name.\n\
         #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]\n\
         pub struct Entry {\n    pub module: KernelModule,\n    pub name: &'static str,\n}\n\n\
         /// Every kernel entry point, one constant each, named as the entry in capitals.\n\
         pub mod entries {\n    use super::{Entry, KernelModule};\n",
    );
    for (src, names) in sources.iter().zip(entries) {
        let stem = src.file_stem().expect("stem").to_string_lossy();
        let variant = module_variant(&stem);
        for name in names {
            code += &format!(
                "    /// `{name}` in `kernels/{stem}.cu`.\n    pub const {}: Entry = Entry {{ module: KernelModule::{variant}, name: {name:?} }};\n",
                name.to_uppercase()
            );
        }
    }
    code += "}\n";
    code
}

/// `pooling` → `Pooling`, `mma_tile` → `MmaTile`.
fn module_variant(stem: &str) -> String {
    stem.split('_').map(|w| w[..1].to_uppercase() + &w[1..]).collect()
}

fn generate(sources: &[PathBuf], ptx_dir: &Path, compiled: bool, arch: &str, version: &str) -> String {
    let stems: Vec<String> =
        sources.iter().map(|s| s.file_stem().expect("stem").to_string_lossy().into_owned()).collect();
    let variant = module_variant;
    let mut code = String::from("// Generated by build.rs from kernels/*.cu. Do not edit.\n\n");
    code += "/// One PTX module per `kernels/*.cu` file.\n";
    code += "#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]\npub enum KernelModule {\n";
    for stem in &stems {
        code += &format!("    /// `kernels/{stem}.cu`\n    {},\n", variant(stem));
    }
    code += "}\n\nimpl KernelModule {\n";
    code += &format!("    pub const ALL: [KernelModule; {}] = [", stems.len());
    code += &stems.iter().map(|s| format!("KernelModule::{}", variant(s))).collect::<Vec<_>>().join(", ");
    code += "];\n\n    /// The kernel file's stem, e.g. `gemm`.\n    pub fn name(self) -> &'static str {\n        match self {\n";
    for stem in &stems {
        code += &format!("            KernelModule::{} => \"{stem}\",\n", variant(stem));
    }
    code += "        }\n    }\n\n    /// The module's PTX, or `None` in a build made without nvcc.\n";
    code += "    pub fn ptx(self) -> Option<&'static str> {\n        match self {\n";
    for stem in &stems {
        let body = if compiled {
            format!("Some(include_str!({:?}))", ptx_dir.join(format!("{stem}.ptx")))
        } else {
            "None".to_string()
        };
        code += &format!("            KernelModule::{} => {body},\n", variant(stem));
    }
    code += "        }\n    }\n}\n\n";
    code += &format!(
        "/// The virtual architecture the PTX was generated for.\npub const PTX_ARCH: &str = {arch:?};\n"
    );
    code += &format!(
        "/// The nvcc that built the PTX; empty when none was found.\npub const NVCC_VERSION: &str = {version:?};\n"
    );
    code
}
