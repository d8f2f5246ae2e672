//! The text corpus: every `*.txt` file of a folder, read as UTF-8 and modelled as bytes; one
//! file held out for validation. Every bad input is an error naming the folder or the file.
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The training text (the training files joined by a blank line) and the held-out text.
pub struct Corpus {
    pub train: Vec<u8>,
    pub valid: Vec<u8>,
    pub train_files: Vec<String>,
    pub valid_file: String,
}

/// Loads every `*.txt` file of `dir` (name order). `valid_file` names the held-out file; by
/// default the last one in name order. Both texts must hold more than `context` bytes, the
/// length of one training window plus the byte it predicts.
pub fn load(dir: &Path, valid_file: Option<&str>, context: usize) -> Result<Corpus> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading the text folder {}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "txt") {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    if names.is_empty() {
        bail!(
            "{}: no .txt files (expected a folder of plain-text files, as data/shakespeare)",
            dir.display()
        )
    }
    let valid_name = match valid_file {
        Some(v) => {
            if !names.iter().any(|n| n == v) {
                bail!(
                    "{}: the validation file {v} is not one of its .txt files ({})",
                    dir.display(),
                    names.join(", ")
                )
            }
            v.to_string()
        }
        None => names.last().cloned().expect("at least one name"),
    };
    if names.len() < 2 {
        bail!(
            "{}: one .txt file ({valid_name}); at least two are needed, one of them held out for validation",
            dir.display()
        )
    }
    let mut train = Vec::new();
    let mut train_files = Vec::new();
    let mut valid = Vec::new();
    for name in &names {
        let text = read_text(&dir.join(name))?;
        if *name == valid_name {
            valid = text;
        } else {
            if !train.is_empty() {
                train.extend_from_slice(b"\n\n");
            }
            train.extend_from_slice(&text);
            train_files.push(name.clone());
        }
    }
    for (what, text) in [("training text", &train), ("validation text", &valid)] {
        if text.len() <= context {
            bail!(
                "{}: the {what} ({}) holds {} bytes, not more than the context of {context}",
                dir.display(),
                if what == "training text" {
                    train_files.join(", ")
                } else {
                    valid_name.clone()
                },
                text.len()
            )
        }
    }
    Ok(Corpus {
        train,
        valid,
        train_files,
        valid_file: valid_name,
    })
}

/// A file's bytes, which must be UTF-8 text.
fn read_text(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if let Err(e) = std::str::from_utf8(&bytes) {
        bail!(
            "{}: not UTF-8 text (invalid byte 0x{:02x} at offset {})",
            path.display(),
            bytes[e.valid_up_to()],
            e.valid_up_to()
        )
    }
    Ok(bytes)
}
