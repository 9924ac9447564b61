//! The data layer end to end: the real MNIST files, and what stn-train does with broken ones.

mod common;

use std::io::{Read, Write};

use stn_data::{DataDir, Mnist};

#[test]
fn label_counts_match_the_published_readme() {
    let m = Mnist::load(&DataDir::resolve(Some(&common::mnist_dir())), true).expect("MNIST loads");
    // From ../shared/data/mnist/README.md.
    assert_eq!(
        m.train.label_counts(),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        m.test.label_counts(),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    assert_eq!((m.train.rows, m.train.cols, m.test.len()), (28, 28, 10_000));
}

/// A copy of the data directory whose `name` is replaced by `bytes` (gzipped).
fn broken_copy(name: &str, mutate: impl FnOnce(Vec<u8>) -> Vec<u8>) -> tempfile::TempDir {
    let src = common::mnist_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut mutate = Some(mutate);
    for f in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        let from = src.join(format!("{f}.gz"));
        let to = dir.path().join(format!("{f}.gz"));
        if f == name {
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&from).unwrap())
                .read_to_end(&mut raw)
                .unwrap();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&(mutate.take().unwrap())(raw)).unwrap();
            std::fs::write(&to, gz.finish().unwrap()).unwrap();
        } else {
            std::fs::copy(&from, &to).unwrap();
        }
    }
    dir
}

fn train_offline(dir: &std::path::Path) -> (bool, String) {
    // The checkpoint goes beside the data (never the repository's models/).
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("out.safetensors");
    let o = common::run(
        "stn-train",
        &[
            "--out",
            out.to_str().unwrap(),
            "--data",
            dir.to_str().unwrap(),
            "--offline",
            "--epochs",
            "1",
            "--limit",
            "64",
        ],
    );
    (o.status.success(), common::stderr(&o))
}

#[test]
fn truncated_test_images_are_named_in_the_error() {
    let dir = broken_copy("t10k-images-idx3-ubyte", |mut raw| {
        raw.truncate(raw.len() / 2);
        raw
    });
    let (ok, err) = train_offline(dir.path());
    assert!(!ok);
    assert!(
        err.contains("t10k-images") && err.contains("truncated"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn truncated_gzip_stream_is_a_clear_error() {
    let dir = broken_copy("t10k-labels-idx1-ubyte", |raw| raw);
    let p = dir.path().join("t10k-labels-idx1-ubyte.gz");
    let gz = std::fs::read(&p).unwrap();
    std::fs::write(&p, &gz[..gz.len() / 2]).unwrap();
    let (ok, err) = train_offline(dir.path());
    assert!(!ok);
    assert!(err.contains("t10k-labels") && err.contains("gzip"), "{err}");
}

#[test]
fn wrong_magic_checksum_and_count_mismatch_are_errors() {
    let dir = broken_copy("train-labels-idx1-ubyte", |mut raw| {
        raw[2] = 0x0d; // float data, not bytes
        raw
    });
    let (ok, err) = train_offline(dir.path());
    assert!(
        !ok && err.contains("train-labels") && err.contains("element type"),
        "{err}"
    );

    let dir = broken_copy("train-images-idx3-ubyte", |mut raw| {
        raw[1000] ^= 0xff; // same size, one pixel changed
        raw
    });
    let (ok, err) = train_offline(dir.path());
    assert!(
        !ok && err.contains("train-images") && err.contains("SHA-256"),
        "{err}"
    );

    let dir = broken_copy("t10k-labels-idx1-ubyte", |mut raw| {
        raw.truncate(8 + 9_999);
        raw[4..8].copy_from_slice(&9_999u32.to_be_bytes());
        raw
    });
    let (ok, err) = train_offline(dir.path());
    assert!(!ok && err.contains("t10k-labels"), "{err}");
}

#[test]
fn missing_files_offline_say_where_and_how() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = train_offline(dir.path());
    assert!(!ok);
    assert!(
        err.contains(dir.path().to_str().unwrap())
            && err.contains("--offline")
            && err.contains("STN_DATA"),
        "{err}"
    );
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let (ok, err) = train_offline(&not_a_dir);
    assert!(!ok && err.contains("not a directory"), "{err}");
}
