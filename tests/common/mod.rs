//! Shared helpers of the top-level tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The MNIST directory the tests read: `STN_DATA`, else `../shared/data/mnist` beside the repo.
pub fn mnist_dir() -> PathBuf {
    match std::env::var_os("STN_DATA") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist"),
    }
}

/// `../shared` beside the repository: fixtures, the reference script, data.
pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// Runs one of this package's binaries with `args`.
pub fn run(bin: &str, args: &[&str]) -> Output {
    let exe = match bin {
        "stn-train" => env!("CARGO_BIN_EXE_stn-train"),
        "stn-export" => env!("CARGO_BIN_EXE_stn-export"),
        "stn-infer" => env!("CARGO_BIN_EXE_stn-infer"),
        other => panic!("unknown binary {other}"),
    };
    Command::new(exe).args(args).output().expect("binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
