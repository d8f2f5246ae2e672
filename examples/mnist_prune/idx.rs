//! MNIST's IDX format, gzipped or not: every malformed file is an error naming it.
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A dataset split: images as f32 in [0, 1] (`[count, 784]`) and labels 0..9.
pub struct Split {
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
    pub count: usize,
}

/// `name` or `name.gz` in `dir`, whichever exists.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{}: no {name} or {name}.gz (expected MNIST's IDX files, as from yann.lecun.com or data/mnist-5k)",
        dir.display()
    )
}

/// The decompressed bytes of a file, gunzipped when it starts with the gzip magic.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{}: not a valid gzip file", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of unsigned bytes with `rank` dimensions and the given magic number.
fn parse(path: &Path, bytes: &[u8], magic: u32, rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        bail!(
            "{}: {} bytes, shorter than the {header}-byte IDX header",
            path.display(),
            bytes.len()
        )
    }
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let got = be(0);
    if got != magic {
        bail!(
            "{}: magic number {got} (0x{got:08x}), expected {magic} (0x{magic:08x})",
            path.display()
        )
    }
    let dims: Vec<usize> = (0..rank).map(|d| be(4 + 4 * d) as usize).collect();
    let want = dims.iter().product::<usize>();
    let have = bytes.len() - header;
    if have != want {
        bail!(
            "{}: the header says {dims:?} = {want} bytes of data but the file holds {have}",
            path.display()
        )
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Loads `{prefix}-images-idx3-ubyte` and `{prefix}-labels-idx1-ubyte` (each optionally
/// `.gz`) from `dir`; `prefix` is `train` or `t10k`.
pub fn load(dir: &Path, prefix: &str) -> Result<Split> {
    let ip = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lp = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (idims, pixels) = parse(&ip, &read_bytes(&ip)?, 2051, 3)?;
    let (ldims, labels) = parse(&lp, &read_bytes(&lp)?, 2049, 1)?;
    if idims[1..] != [28, 28] {
        bail!(
            "{}: images are {}x{}, expected 28x28",
            ip.display(),
            idims[1],
            idims[2]
        )
    }
    if idims[0] != ldims[0] {
        bail!(
            "{} holds {} images but {} holds {} labels",
            ip.display(),
            idims[0],
            lp.display(),
            ldims[0]
        )
    }
    if let Some(bad) = labels.iter().find(|&&l| l > 9) {
        bail!("{}: label {bad} is not a digit", lp.display())
    }
    Ok(Split {
        images: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        labels,
        count: idims[0],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_files() {
        let p = Path::new("x");
        assert!(parse(p, &[0, 0, 8, 3], 2051, 3)
            .unwrap_err()
            .to_string()
            .contains("shorter"));
        let mut b = vec![0, 0, 8, 1, 0, 0, 0, 3, 1, 2];
        assert!(parse(p, &b, 2051, 1)
            .unwrap_err()
            .to_string()
            .contains("magic number 2049"));
        assert!(parse(p, &b, 2049, 1)
            .unwrap_err()
            .to_string()
            .contains("holds 2"));
        b.push(3);
        assert_eq!(parse(p, &b, 2049, 1).unwrap().1, [1, 2, 3]);
    }
}
