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

fn main() {
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
