//! Compiles `kernels/*.cu` with nvcc into fatbins (sm_90 machine code plus compute_80 PTX,
//! so that other GPUs load them too) when the `cuda` feature is on. Without the feature it
//! does nothing and the crate needs no CUDA toolchain.
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

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_PATH");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let Some(nvcc) = find_nvcc() else {
        panic!(
            "the `cuda` feature needs nvcc: install the CUDA toolkit (or the PyPI wheels, see \
             shared/cuda/setup.sh) and set NVCC, CUDA_HOME or PATH so that nvcc is found"
        );
    };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    kernels.sort();
    for cu in &kernels {
        println!("cargo:rerun-if-changed={}", cu.display());
        let stem = cu.file_stem().expect("a file name").to_string_lossy();
        let fatbin = out_dir.join(format!("{stem}.fatbin"));
        let status = Command::new(&nvcc)
            .args(["--fatbin", "-O3", "-std=c++17"])
            .args(["-gencode=arch=compute_90,code=sm_90"])
            .args(["-gencode=arch=compute_80,code=compute_80"])
            .arg("-o")
            .arg(&fatbin)
            .arg(cu)
            .status()
            .unwrap_or_else(|e| panic!("could not run {}: {e}", nvcc.display()));
        if !status.success() {
            panic!("nvcc failed on {} ({status})", cu.display());
        }
    }
}
