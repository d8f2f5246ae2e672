//! The nvcc arguments `build.rs` takes from the environment (`CUDA_COMPUTE_CAP`,
//! `NVCC_CCBIN` / `CANDLE_NVCC_CCBIN`, `CUDA_NVCC_FLAGS`): the build script's own parsing
//! file, compiled here with its tests.
#[path = "../build/nvcc_args.rs"]
mod nvcc_args;
