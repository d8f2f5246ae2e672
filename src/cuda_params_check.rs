//! Checks, with no GPU and no libclang, that the committed bindings (`cuda_params.rs`) are
//! those of `kernels/params.h` as it stands (every constant's value, every struct's fields in
//! order; bindgen's own layout assertions in the generated file check sizes and offsets), that
//! the constants the host uses are the header's, and that the kernel sources define no
//! constant of their own outside the header.

use crate::cuda_params::*;

const HEADER: &str = include_str!("../kernels/params.h");
const BINDINGS: &str = include_str!("cuda_params.rs");

/// `#define NAME VALUE` lines with a numeric value.
fn defines(src: &str) -> Vec<(String, String)> {
    src.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some("#define")).then_some(())?;
            let name = it.next()?.to_string();
            let value = it.next()?.to_string();
            value
                .starts_with(|c: char| c.is_ascii_digit())
                .then_some((name, value))
        })
        .collect()
}

/// The field names of each `typedef struct NAME { ... }` of the header, in order.
fn header_structs() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = HEADER;
    while let Some(i) = rest.find("typedef struct ") {
        rest = &rest[i + "typedef struct ".len()..];
        let name = rest.split_whitespace().next().unwrap().to_string();
        let body = &rest[rest.find('{').unwrap() + 1..rest.find('}').unwrap()];
        let fields = body
            .split(';')
            // An array field `name[N]` is `name` in the bindings.
            .filter_map(|f| f.split_whitespace().last())
            .map(|f| f.split('[').next().unwrap_or(f).to_string())
            .collect();
        out.push((name, fields));
    }
    out
}

/// The field names of `pub struct NAME { ... }` in the bindings.
fn binding_fields(name: &str) -> Vec<String> {
    let start = BINDINGS
        .find(&format!("pub struct {name} {{"))
        .unwrap_or_else(|| panic!("{name} is not in src/cuda_params.rs: run scripts/bindgen.sh"));
    let body = &BINDINGS[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find('}').unwrap()];
    body.split(',')
        .filter_map(|f| {
            let f = f.trim().strip_prefix("pub ")?;
            Some(f.split(':').next()?.trim().to_string())
        })
        .collect()
}

#[test]
fn constants_are_the_headers() {
    let ours: &[(&str, u64)] = &[
        ("TD_BLOCK", TD_BLOCK as u64),
        ("TD_TINY_ROW", TD_TINY_ROW as u64),
        ("TD_RADIX_BITS", TD_RADIX_BITS as u64),
        ("TD_CAND_RADIX_BITS", TD_CAND_RADIX_BITS as u64),
        ("TD_CAND_RADIX_BINS", TD_CAND_RADIX_BINS as u64),
        ("TD_WARP_RANK", TD_WARP_RANK as u64),
        ("TD_UNIT_LANES", TD_UNIT_LANES as u64),
        ("TD_PACK_CHUNK", TD_PACK_CHUNK as u64),
        ("TD_ALWAYS", TD_ALWAYS as u64),
        ("TD_MAX_ROW", TD_MAX_ROW as u64),
        ("TD_NV", TD_NV as u64),
        ("TD_MAX_THREADS", TD_MAX_THREADS as u64),
        ("TD_CAP", TD_CAP as u64),
        ("TD_GROUP", TD_GROUP as u64),
        ("TD_LONG_THREADS", TD_LONG_THREADS as u64),
        ("TD_LONG_NV", TD_LONG_NV as u64),
        ("TD_LONG_STATE_BYTES", TD_LONG_STATE_BYTES as u64),
        ("TD_RADIX_BINS", TD_RADIX_BINS as u64),
    ];
    let header = defines(HEADER);
    let mut names: Vec<&str> = header.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    let mut expected: Vec<&str> = ours.iter().map(|(n, _)| *n).collect();
    expected.sort();
    assert_eq!(
        names, expected,
        "the header's constants and the bindings' differ"
    );
    for (name, value) in &header {
        let v: u64 = value.parse().unwrap_or_else(|_| {
            panic!("{name} = {value}: keep the header's constants plain decimal numbers")
        });
        let ours = ours.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(
            v, ours,
            "{name}: header {v}, bindings {ours}: run scripts/bindgen.sh"
        );
    }
    // The host's own copies of shared constants, and the relations the kernels assume.
    assert_eq!(crate::philox::THRESHOLD_ALWAYS, TD_ALWAYS);
    assert_eq!(TD_MAX_ROW as u64, (1u64 << 32) - 1);
    assert_eq!(TD_RADIX_BINS, 1 << TD_RADIX_BITS, "a bin per digit value");
    assert_eq!(
        TD_CAND_RADIX_BINS,
        1 << TD_CAND_RADIX_BITS,
        "a bin per digit value"
    );
    assert_eq!(TD_WARP_RANK, 32, "one warp ranks the last candidates");
    assert_eq!(
        TD_PACK_CHUNK,
        32 * TD_BLOCK,
        "a mask word per thread of a pack block"
    );
    // The CPU select takes the kernels' first digit, and the CPU unit scores their lanes.
    assert_eq!(crate::select::FIRST_DIGIT, TD_RADIX_BITS);
    assert_eq!(crate::cpu::SCORE_LANES as u32, TD_UNIT_LANES);
}

#[test]
fn structs_are_the_headers() {
    let structs = header_structs();
    assert!(structs.len() >= 6, "{structs:?}");
    for (name, fields) in structs {
        assert_eq!(
            binding_fields(&name),
            fields,
            "{name}: the header's fields and the bindings' differ: run scripts/bindgen.sh"
        );
    }
}

#[test]
fn kernels_define_no_constants_of_their_own() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.file_name().unwrap() == "params.h" {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        let own = defines(&src);
        assert!(
            own.is_empty(),
            "{}: numeric constants outside params.h: {own:?}",
            path.display()
        );
    }
}
