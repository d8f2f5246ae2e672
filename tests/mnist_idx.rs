//! The MNIST IDX loader of the `mnist_prune` example: the shipped subset loads, and every
//! malformed file is an error naming it.
#[path = "../examples/mnist_prune/idx.rs"]
#[allow(dead_code)]
mod idx;

use std::io::Write;
use std::path::Path;

#[test]
fn the_shipped_subset_loads() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist-5k");
    let train = idx::load(&dir, "train")?;
    let test = idx::load(&dir, "t10k")?;
    assert_eq!((train.count, test.count), (4000, 1000));
    assert_eq!(train.images.len(), 4000 * 784);
    assert!(train.images.iter().all(|&p| (0.0..=1.0).contains(&p)));
    // 400 of each digit in the training split, interleaved 0, 1, ..., 9.
    assert_eq!(&train.labels[..10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    for d in 0..10u8 {
        assert_eq!(train.labels.iter().filter(|&&l| l == d).count(), 400);
    }
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::File::create(dir.join(name))
        .and_then(|mut f| f.write_all(bytes))
        .expect("a temporary file");
}

fn header(magic: u32, dims: &[u32]) -> Vec<u8> {
    let mut h = magic.to_be_bytes().to_vec();
    for d in dims {
        h.extend_from_slice(&d.to_be_bytes());
    }
    h
}

#[test]
fn malformed_files_are_errors_naming_them() {
    let dir = std::env::temp_dir().join(format!("td-idx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Missing files.
    let e = idx::load(&dir, "train").err().unwrap().to_string();
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    // A count that does not match the file size (plain, not gzipped).
    let mut images = header(2051, &[2, 28, 28]);
    images.extend(vec![0u8; 784]); // one image of two
    write(&dir, "train-images-idx3-ubyte", &images);
    write(
        &dir,
        "train-labels-idx1-ubyte",
        &[header(2049, &[2]), vec![1, 2]].concat(),
    );
    let e = idx::load(&dir, "train").err().unwrap().to_string();
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("1568") && e.contains("784"),
        "{e}"
    );
    // A wrong magic number.
    let mut images = header(2049, &[2, 28, 28]);
    images.extend(vec![0u8; 2 * 784]);
    write(&dir, "train-images-idx3-ubyte", &images);
    let e = idx::load(&dir, "train").err().unwrap().to_string();
    assert!(e.contains("magic number 2049") && e.contains("2051"), "{e}");
    // Images and labels that disagree on the count.
    let mut images = header(2051, &[2, 28, 28]);
    images.extend(vec![0u8; 2 * 784]);
    write(&dir, "train-images-idx3-ubyte", &images);
    write(
        &dir,
        "train-labels-idx1-ubyte",
        &[header(2049, &[3]), vec![1, 2, 3]].concat(),
    );
    let e = idx::load(&dir, "train").err().unwrap().to_string();
    assert!(e.contains("2 images") && e.contains("3 labels"), "{e}");
    // A corrupt gzip stream.
    std::fs::remove_file(dir.join("train-images-idx3-ubyte")).unwrap();
    write(
        &dir,
        "train-images-idx3-ubyte.gz",
        &[0x1f, 0x8b, 8, 0, 1, 2, 3],
    );
    let e = idx::load(&dir, "train").err().unwrap().to_string();
    assert!(e.contains("gzip"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The real Fashion-MNIST files (60,000 + 10,000 images, gzipped), where Debian's
/// `dataset-fashion-mnist` puts them or in `$FASHION_MNIST_DIR`. CI sets that variable after
/// installing the package, so there a missing file fails; elsewhere the test says what is
/// missing and how to get it, and skips.
#[test]
fn the_full_fashion_mnist_files_load() -> anyhow::Result<()> {
    let (dir, required) = match std::env::var_os("FASHION_MNIST_DIR") {
        Some(d) => (std::path::PathBuf::from(d), true),
        None => (
            Path::new("/usr/share/datasets/fashion-mnist").to_path_buf(),
            false,
        ),
    };
    if !required && !dir.join("train-images-idx3-ubyte.gz").is_file() {
        eprintln!(
            "skipped: no Fashion-MNIST in {} (`apt-get install dataset-fashion-mnist`, or set \
             FASHION_MNIST_DIR to a folder with its IDX files)",
            dir.display()
        );
        return Ok(());
    }
    let train = idx::load(&dir, "train")?;
    let test = idx::load(&dir, "t10k")?;
    assert_eq!((train.count, test.count), (60_000, 10_000));
    assert_eq!(train.images.len(), 60_000 * 784);
    assert_eq!(test.images.len(), 10_000 * 784);
    // Ten balanced classes: 6,000 of each in training, 1,000 in test.
    for c in 0..10u8 {
        assert_eq!(train.labels.iter().filter(|&&l| l == c).count(), 6_000);
        assert_eq!(test.labels.iter().filter(|&&l| l == c).count(), 1_000);
    }
    // Pixels span the whole range (the images are not blank or clipped).
    let (lo, hi) = train
        .images
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &p| (lo.min(p), hi.max(p)));
    assert_eq!((lo, hi), (0.0, 1.0));
    // The first labels of each split as the files hold them (9 ankle boot, 0 T-shirt/top).
    assert_eq!(&train.labels[..5], &[9, 0, 0, 3, 0]);
    assert_eq!(&test.labels[..5], &[9, 2, 1, 1, 6]);
    Ok(())
}
