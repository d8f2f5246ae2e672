//! Compiles `kernels/*.cu` with nvcc into fatbins when the `cuda` feature is on. Without the
//! feature it does nothing and the crate needs no CUDA toolchain.
//!
//! Targets: by default machine code (SASS) for sm_80, sm_86, sm_89 and sm_90 (A100 / A30,
//! RTX 30xx / A10 / A40, RTX 40xx / L4 / L40, H100 / H200) plus compute_90 PTX that the driver
//! compiles for newer GPUs. With `CUDA_COMPUTE_CAP=NN` (candle's convention: 75, 80, 86, 89,
//! 90, ...) exactly that target, SASS sm_NN plus compute_NN PTX, as candle's own kernels are
//! built. The lowest capability the fatbins load on and their targets are passed to the crate
//! (`TD_CUDA_MIN_CC`, `TD_CUDA_TARGETS`) for the load-time check.
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

/// The nvcc `-gencode` arguments, the lowest compute capability and a description.
fn targets() -> (Vec<String>, u32, String) {
    match std::env::var("CUDA_COMPUTE_CAP") {
        Ok(cc) => {
            let cc = cc.trim();
            let num: u32 = cc.trim_end_matches(['a', 'f']).parse().unwrap_or_else(|_| {
                panic!("CUDA_COMPUTE_CAP={cc}: expected a number such as 75, 86 or 90")
            });
            (
                vec![format!(
                    "-gencode=arch=compute_{cc},code=[sm_{cc},compute_{cc}]"
                )],
                num,
                format!("sm_{cc} + compute_{cc} PTX, CUDA_COMPUTE_CAP={cc}"),
            )
        }
        Err(_) => {
            let mut args: Vec<String> = [80, 86, 89, 90]
                .iter()
                .map(|a| format!("-gencode=arch=compute_{a},code=sm_{a}"))
                .collect();
            args.push("-gencode=arch=compute_90,code=compute_90".into());
            (
                args,
                80,
                "sm_80, sm_86, sm_89, sm_90 + compute_90 PTX".into(),
            )
        }
    }
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
    ks.flag("-include")
        .flag("emu/cuda_emu.h")
        .flag("-fno-extern-tls-init")
        .flag_if_supported("-Wno-maybe-uninitialized")
        .flag_if_supported("-Wno-unused-variable")
        .flag_if_supported("-Wno-unused-function")
        .files(["emu/k_weight.cpp", "emu/k_unit.cpp", "emu/k_weight_v5.cpp"]);
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
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_PATH");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let Some(nvcc) = find_nvcc() else {
        panic!(
            "the `cuda` feature needs nvcc: install the CUDA toolkit (or the PyPI wheels, see \
             scripts/cuda/setup.sh) and set NVCC, CUDA_HOME or PATH so that nvcc is found"
        );
    };
    let (gencode, min_cc, desc) = targets();
    println!("cargo:rustc-env=TD_CUDA_MIN_CC={min_cc}");
    println!("cargo:rustc-env=TD_CUDA_TARGETS={desc}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    // Every file under kernels/ (the headers too) reruns the build when it changes.
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    // One nvcc per .cu file, all at once.
    let jobs: Vec<_> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .map(|cu| {
            let stem = cu.file_stem().expect("a file name").to_string_lossy();
            let fatbin = out_dir.join(format!("{stem}.fatbin"));
            let child = Command::new(&nvcc)
                .args(["--fatbin", "-O3", "-std=c++17", "-Ikernels"])
                .args(&gencode)
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
