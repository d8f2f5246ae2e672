//! The nvcc arguments that the environment chooses, parsed apart from `build.rs` so that a
//! test compiles the same file (`tests/build_args.rs` mods it by path): the targets from
//! `CUDA_COMPUTE_CAP`, the host compiler from `NVCC_CCBIN` / `CANDLE_NVCC_CCBIN`, and the
//! extra flags of `CUDA_NVCC_FLAGS`. Pure functions of the variables' values: `build.rs`
//! reads the environment and passes them in.

/// The environment variables this file reads, for `cargo:rerun-if-env-changed`.
pub const ENV_VARS: [&str; 4] = [
    "CUDA_COMPUTE_CAP",
    "NVCC_CCBIN",
    "CANDLE_NVCC_CCBIN",
    "CUDA_NVCC_FLAGS",
];

/// A compute capability as nvcc names it: `base` = major * 10 + minor (90 for 9.0) and an
/// optional architecture suffix (`a`: arch-specific, `f`: family-specific).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComputeCap {
    pub base: u32,
    pub suffix: Option<char>,
}

impl ComputeCap {
    /// `90`, `90a`, `100f`: the part after `sm_` / `compute_`.
    pub fn name(&self) -> String {
        match self.suffix {
            Some(s) => format!("{}{s}", self.base),
            None => self.base.to_string(),
        }
    }
}

/// `CUDA_COMPUTE_CAP` in every spelling candle's build (cudaforge's `GpuArch::parse`) takes,
/// and nvidia-smi's: `90`, `9.0`, `9`, `sm_90`, `90a`, `sm_90a`, `100a`, `121f` (case and
/// surrounding spaces ignored). A single-digit major (`9`, `9.0`) is the major version;
/// `9.0` and `8.6` are nvidia-smi's `compute_cap`. Anything else is an error naming the value.
///
/// Unlike cudaforge, a plain `90` stays `sm_90` (no implied `a`): the kernels use no
/// arch-specific instruction, and plain targets keep the PTX loadable on newer GPUs.
pub fn parse_compute_cap(value: &str) -> Result<ComputeCap, String> {
    let bad = || {
        format!(
            "CUDA_COMPUTE_CAP={value:?}: expected a compute capability as candle takes it, such \
             as 90, 9.0, sm_90, 90a, sm_90a or 100a"
        )
    };
    let s = value.trim().to_ascii_lowercase();
    let s = s.strip_prefix("sm_").unwrap_or(&s);
    let (num, suffix) = match s.chars().last() {
        Some(c @ ('a' | 'f')) => (&s[..s.len() - 1], Some(c)),
        _ => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.len() <= 3 && t.bytes().all(|b| b.is_ascii_digit());
    let base = match num.split_once('.') {
        // nvidia-smi's "major.minor": one digit of minor.
        Some((major, minor)) if digits(major) && minor.len() == 1 && digits(minor) => {
            let major: u32 = major.parse().map_err(|_| bad())?;
            major * 10 + minor.parse::<u32>().map_err(|_| bad())?
        }
        Some(_) => return Err(bad()),
        None if digits(num) => {
            let n: u32 = num.parse().map_err(|_| bad())?;
            // cudaforge's rule: below 20 it is a major version (8 -> 80, 12 -> 120).
            if n < 20 {
                n * 10
            } else {
                n
            }
        }
        None => return Err(bad()),
    };
    if base < 10 {
        return Err(bad());
    }
    Ok(ComputeCap { base, suffix })
}

/// The default targets: SASS for sm_80, sm_86, sm_89 and sm_90 and compute_90 PTX.
pub const DEFAULT_SASS: [u32; 4] = [80, 86, 89, 90];

/// The nvcc targets: the `-gencode` arguments, the lowest compute capability the fatbins
/// load on, and a description for error messages. `cap` is `CUDA_COMPUTE_CAP`, if set.
pub fn targets(cap: Option<&str>) -> Result<(Vec<String>, u32, String), String> {
    match cap {
        Some(value) => {
            let cc = parse_compute_cap(value)?;
            let n = cc.name();
            Ok((
                vec![format!(
                    "-gencode=arch=compute_{n},code=[sm_{n},compute_{n}]"
                )],
                cc.base,
                format!(
                    "sm_{n} + compute_{n} PTX, CUDA_COMPUTE_CAP={}",
                    value.trim()
                ),
            ))
        }
        None => {
            let mut args: Vec<String> = DEFAULT_SASS
                .iter()
                .map(|a| format!("-gencode=arch=compute_{a},code=sm_{a}"))
                .collect();
            args.push("-gencode=arch=compute_90,code=compute_90".into());
            let sass: Vec<String> = DEFAULT_SASS.iter().map(|a| format!("sm_{a}")).collect();
            Ok((
                args,
                DEFAULT_SASS[0],
                format!("{} + compute_90 PTX", sass.join(", ")),
            ))
        }
    }
}

/// The host-compiler arguments: `NVCC_CCBIN`, else candle's `CANDLE_NVCC_CCBIN`, passed as
/// cudaforge passes it (`-allow-unsupported-compiler -ccbin PATH`). Empty values are unset.
pub fn ccbin_args(nvcc_ccbin: Option<&str>, candle_nvcc_ccbin: Option<&str>) -> Vec<String> {
    match set(nvcc_ccbin).or(set(candle_nvcc_ccbin)) {
        Some(path) => vec![
            "-allow-unsupported-compiler".into(),
            "-ccbin".into(),
            path.into(),
        ],
        None => vec![],
    }
}

/// A variable's value trimmed, `None` when unset or empty.
fn set(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|v| !v.is_empty())
}

/// `CUDA_NVCC_FLAGS`, split at whitespace (no quoting), appended to every nvcc command.
pub fn extra_flags(cuda_nvcc_flags: Option<&str>) -> Vec<String> {
    cuda_nvcc_flags
        .map(|f| f.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(base: u32, suffix: Option<char>) -> ComputeCap {
        ComputeCap { base, suffix }
    }

    #[test]
    fn every_spelling_candle_takes() {
        for (s, want) in [
            ("90", cc(90, None)),
            ("9.0", cc(90, None)),
            ("9", cc(90, None)),
            ("sm_90", cc(90, None)),
            ("SM_90", cc(90, None)),
            (" 90\n", cc(90, None)),
            ("90a", cc(90, Some('a'))),
            ("sm_90a", cc(90, Some('a'))),
            ("100a", cc(100, Some('a'))),
            ("sm_100a", cc(100, Some('a'))),
            ("120a", cc(120, Some('a'))),
            ("121f", cc(121, Some('f'))),
            ("12", cc(120, None)),
            ("12.0", cc(120, None)),
            ("75", cc(75, None)),
            ("7.5", cc(75, None)),
            ("8.6", cc(86, None)),
            ("86", cc(86, None)),
            ("89", cc(89, None)),
        ] {
            assert_eq!(parse_compute_cap(s), Ok(want), "{s:?}");
        }
    }

    #[test]
    fn anything_else_is_an_error_naming_the_value() {
        for s in [
            "",
            " ",
            "sm_",
            "a",
            "9x",
            "90b",
            "9.",
            ".9",
            "9.0.1",
            "9.10",
            "ninety",
            "-90",
            "+90",
            "0",
            "0.5",
            "sm90",
            "compute_90",
            "90aa",
            "1000",
            "9,0",
            "9 0",
        ] {
            let err = parse_compute_cap(s).expect_err(s);
            assert!(err.contains(&format!("{s:?}")), "{s:?}: {err}");
            assert!(err.contains("CUDA_COMPUTE_CAP"), "{s:?}: {err}");
        }
        assert!(targets(Some("sm_9x")).unwrap_err().contains("\"sm_9x\""));
    }

    #[test]
    fn targets_of_one_capability_and_the_default() {
        let (args, min, desc) = targets(Some("sm_90a")).unwrap();
        assert_eq!(
            args,
            ["-gencode=arch=compute_90a,code=[sm_90a,compute_90a]"]
        );
        assert_eq!(min, 90);
        assert_eq!(desc, "sm_90a + compute_90a PTX, CUDA_COMPUTE_CAP=sm_90a");
        let (args, min, _) = targets(Some("7.5")).unwrap();
        assert_eq!(args, ["-gencode=arch=compute_75,code=[sm_75,compute_75]"]);
        assert_eq!(min, 75);
        let (args, min, desc) = targets(None).unwrap();
        assert_eq!(
            args,
            [
                "-gencode=arch=compute_80,code=sm_80",
                "-gencode=arch=compute_86,code=sm_86",
                "-gencode=arch=compute_89,code=sm_89",
                "-gencode=arch=compute_90,code=sm_90",
                "-gencode=arch=compute_90,code=compute_90",
            ]
        );
        assert_eq!(min, 80);
        assert_eq!(desc, "sm_80, sm_86, sm_89, sm_90 + compute_90 PTX");
    }

    #[test]
    fn host_compiler_and_extra_flags() {
        // Every variable read here is one build.rs watches.
        for var in [
            "CUDA_COMPUTE_CAP",
            "NVCC_CCBIN",
            "CANDLE_NVCC_CCBIN",
            "CUDA_NVCC_FLAGS",
        ] {
            assert!(ENV_VARS.contains(&var), "{var}");
        }
        let ccbin = ["-allow-unsupported-compiler", "-ccbin", "/usr/bin/g++-12"];
        assert_eq!(ccbin_args(Some("/usr/bin/g++-12"), None), ccbin);
        assert_eq!(ccbin_args(None, Some("/usr/bin/g++-12")), ccbin);
        assert_eq!(ccbin_args(Some("/usr/bin/g++-12"), Some("/other")), ccbin);
        assert_eq!(ccbin_args(Some(" "), Some("/usr/bin/g++-12")), ccbin);
        assert!(ccbin_args(None, None).is_empty());
        assert!(ccbin_args(Some(""), Some("")).is_empty());
        assert_eq!(
            extra_flags(Some(" -lineinfo  --ptxas-options=-v\t-DX=1 ")),
            ["-lineinfo", "--ptxas-options=-v", "-DX=1"]
        );
        assert!(extra_flags(Some("   ")).is_empty());
        assert!(extra_flags(None).is_empty());
    }
}
