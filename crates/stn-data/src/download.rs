//! Downloading the gzipped MNIST files from the usual mirrors: a progress bar, the next mirror on
//! failure, verification of the decompressed bytes, then a temp file renamed into place.

use std::io::Read;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use crate::mnist::{gunzip, verify_raw};
use crate::{write_atomic, MnistFile};

/// The mirrors torchvision uses, in its order.
const MIRRORS: [&str; 2] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
];

/// Downloads `file.stem.gz` into `dir`, trying each mirror in turn. Returns every attempt's error
/// when none worked.
pub(crate) fn fetch(dir: &Path, file: &MnistFile) -> Result<(), String> {
    let mut errors = Vec::new();
    for mirror in MIRRORS {
        let url = format!("{mirror}{}.gz", file.stem);
        match fetch_one(&url, dir, file) {
            Ok(()) => return Ok(()),
            Err(e) => {
                // ureq's errors already name the URL.
                let e = if e.contains(&url) {
                    e
                } else {
                    format!("{url}: {e}")
                };
                eprintln!("warning: {e}; trying the next mirror");
                errors.push(e);
            }
        }
    }
    Err(errors.join("; "))
}

fn fetch_one(url: &str, dir: &Path, file: &MnistFile) -> Result<(), String> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(10))
        .timeout_read(std::time::Duration::from_secs(30))
        .build();
    let resp = agent.get(url).call().map_err(|e| e.to_string())?;
    let len = resp
        .header("Content-Length")
        .and_then(|l| l.parse::<u64>().ok());
    let bar = ProgressBar::new(len.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("{}.gz", file.stem));
    let mut gz = Vec::new();
    bar.wrap_read(resp.into_reader().take(64 << 20))
        .read_to_end(&mut gz)
        .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    let raw = gunzip(url, &gz, file).map_err(|e| e.to_string())?;
    verify_raw(url, &raw, file).map_err(|e| e.to_string())?;
    let dest = dir.join(format!("{}.gz", file.stem));
    write_atomic(&dest, &gz).map_err(|e| format!("{}: {e}", dest.display()))
}
