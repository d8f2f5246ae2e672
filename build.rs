//! Compiles `kernels/*.cu` with nvcc into fatbins when the `cuda` feature is on. Without the
//! feature it does nothing and the crate needs no CUDA toolchain.
//!
//! Targets: by default machine code (SASS) for sm_80, sm_86, sm_89 and sm_90 (A100 / A30,
//! RTX 30xx / A10 / A40, RTX 40xx / L4 / L40, H100 / H200) plus compute_90 PTX that the driver
//! compiles for newer GPUs. With `CUDA_COMPUTE_CAP` (candle's variable, in any spelling candle
//! takes: `90`, `9.0`, `sm_90`, `90a`, `sm_90a`, `100a`, ...) exactly that target, SASS plus
//! PTX, as candle's own kernels are built; any other value fails the build, naming it. The
//! host compiler comes from `NVCC_CCBIN` (or candle's `CANDLE_NVCC_CCBIN`), extra nvcc flags
//! from `CUDA_NVCC_FLAGS`; the parsing is `build/nvcc_args.rs`, tested by
//! `tests/build_args.rs`. The lowest capability the fatbins load on and their targets are
//! passed to the crate (`TD_CUDA_MIN_CC`, `TD_CUDA_TARGETS`) for the load-time check.
#[path = "build/nvcc_args.rs"]
mod nvcc_args;

use std::path::{Path, PathBuf};
use std::process::Command;

fn find_nvcc() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NVCC") {
        return Some(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(home) = std::env::var(var) {
            let p = Path::new(&home).join("bin").join("nvcc");
            if p.exists() {
                return Some(p);
            }
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nvcc"))
        .find(|p| p.exists())
}

/// A variable's value, `None` when unset (or not Unicode, which no valid value is).
fn env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// The arguments every nvcc command gets from the environment (`build/nvcc_args.rs`): the
/// targets, the host compiler, the extra flags; the lowest capability and a description of
/// the targets. A bad `CUDA_COMPUTE_CAP` fails the build, naming the value.
fn nvcc_env_args() -> (Vec<String>, u32, String) {
    let (mut args, min_cc, desc) =
        nvcc_args::targets(env("CUDA_COMPUTE_CAP").as_deref()).unwrap_or_else(|e| panic!("{e}"));
    args.extend(nvcc_args::ccbin_args(
        env("NVCC_CCBIN").as_deref(),
        env("CANDLE_NVCC_CCBIN").as_deref(),
    ));
    args.extend(nvcc_args::extra_flags(env("CUDA_NVCC_FLAGS").as_deref()));
    (args, min_cc, desc)
}

/// With the `emulate` feature: the CUDA emulator (`emu/`) and the kernel sources compiled as
/// C++ with the host compiler (the flags of `scripts/emu/build.sh`), linked into the crate.
/// `TD_EMU_SANITIZE=address` or `thread` builds them under that sanitizer (and links its
/// runtime into the test binaries).
#[cfg(feature = "emulate")]
fn emulator() {
    println!("cargo:rerun-if-changed=emu");
    println!("cargo:rerun-if-env-changed=TD_EMU_SANITIZE");
    println!("cargo:rerun-if-env-changed=CXX");
    let san = std::env::var("TD_EMU_SANITIZE").ok();
    let san_flags: &[&str] = match san.as_deref() {
        None | Some("") => &[],
        Some("address") => &[
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
        ],
        Some("thread") => &["-fsanitize=thread"],
        Some(other) => panic!("TD_EMU_SANITIZE={other}: expected address or thread"),
    };
    let base = |b: &mut cc::Build| {
        b.cpp(true)
            .std("c++17")
            .opt_level(2)
            .include("emu")
            .include("emu/include")
            .flag("-pthread")
            .flag("-fno-strict-aliasing")
            // IEEE round-to-nearest in every operation, as the kernels' __fadd_rn and friends.
            .flag("-ffp-contract=off")
            .flag_if_supported("-Wno-unknown-pragmas");
    };
    // The runtime: under TSan it announces its fibers and barriers instead of being
    // instrumented (scripts/emu/build.sh).
    let mut rt = cc::Build::new();
    base(&mut rt);
    match san.as_deref() {
        Some("thread") => {
            rt.define("EMU_TSAN", None);
        }
        Some("address") => {
            for f in san_flags {
                rt.flag(f);
            }
        }
        _ => {}
    }
    let mut objects = rt.file("emu/emu.cpp").compile_intermediates();
    // The kernel table and the kernel sources, unchanged, with the emulator's CUDA header
    // force-included.
    let mut ks = cc::Build::new();
    base(&mut ks);
    for f in san_flags {
        ks.flag(f);
    }
    if san_flags.is_empty() {
        // The access hook (emu/emu.cpp): GCC's ThreadSanitizer instrumentation turns every
        // load and store of kernel code into a call that the emulator's own __tsan_*
        // functions answer (traffic counting, fibers interleaved at accesses); the TSan
        // runtime is not linked. GCC cannot combine it with ASan; under TSan it is TSan's.
        ks.flag("-fsanitize=thread")
            .flag("--param")
            .flag("tsan-instrument-func-entry-exit=0");
    }
    ks.flag("-include")
        .flag("emu/cuda_emu.h")
        .flag("-fno-extern-tls-init")
        .flag_if_supported("-Wno-maybe-uninitialized")
        .flag_if_supported("-Wno-unused-variable")
        .flag_if_supported("-Wno-unused-function")
        .files([
            "emu/k_weight.cpp",
            "emu/k_unit.cpp",
            "emu/k_nm.cpp",
            "emu/k_test.cpp",
        ]);
    objects.extend(ks.compile_intermediates());
    let mut tables = cc::Build::new();
    base(&mut tables);
    for f in san_flags {
        tables.flag(f);
    }
    objects.extend(
        tables
            .files(["emu/kernels.cpp", "emu/dyn_shared.cpp"])
            .compile_intermediates(),
    );
    // One archive, so that the linker resolves the references between its objects in any
    // order.
    let mut lib = cc::Build::new();
    base(&mut lib);
    lib.objects(objects).compile("td_emu");
    if let Some(s) = san.as_deref().filter(|s| !s.is_empty()) {
        let rt = if s == "address" {
            "address,undefined"
        } else {
            s
        };
        println!("cargo:rustc-link-arg=-fsanitize={rt}");
    }
}

fn main() {
    #[cfg(feature = "emulate")]
    emulator();
    println!("cargo:rerun-if-changed=build.rs");
    // A directory: cargo reruns the script when any file under it changes.
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_PATH");
    for var in nvcc_args::ENV_VARS {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let (env_args, min_cc, desc) = nvcc_env_args();
    let Some(nvcc) = find_nvcc() else {
        panic!(
            "the `cuda` feature needs nvcc: install the CUDA toolkit (or the PyPI wheels, see \
             scripts/cuda/setup.sh) and set NVCC, CUDA_HOME or PATH so that nvcc is found"
        );
    };
    println!("cargo:rustc-env=TD_CUDA_MIN_CC={min_cc}");
    println!("cargo:rustc-env=TD_CUDA_TARGETS={desc}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    // One nvcc per .cu file, all at once.
    let jobs: Vec<_> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .map(|cu| {
            let stem = cu.file_stem().expect("a file name").to_string_lossy();
            let fatbin = out_dir.join(format!("{stem}.fatbin"));
            let child = Command::new(&nvcc)
                .args(["--fatbin", "-O3", "-std=c++17", "-Ikernels"])
                .args(&env_args)
                .arg("-o")
                .arg(&fatbin)
                .arg(cu)
                .spawn()
                .unwrap_or_else(|e| panic!("could not run {}: {e}", nvcc.display()));
            (cu.clone(), child)
        })
        .collect();
    for (cu, mut child) in jobs {
        let status = child.wait().expect("nvcc runs");
        if !status.success() {
            panic!("nvcc failed on {} ({status})", cu.display());
        }
    }
}
