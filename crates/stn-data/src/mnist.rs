use std::io::Read;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::{download, DataError, IdxReader};

/// The seed's normalisation mean (torchvision's MNIST mean).
pub const MNIST_MEAN: f32 = 0.1307;
/// The seed's normalisation standard deviation (torchvision's MNIST std).
pub const MNIST_STD: f32 = 0.3081;

/// One of the four published MNIST files.
#[derive(Debug, Clone, Copy)]
pub struct MnistFile {
    /// File name without `.gz`, as published.
    pub stem: &'static str,
    /// SHA-256 of the raw (decompressed) published bytes.
    pub sha256_raw: &'static str,
    /// Number of records (images or labels).
    pub records: usize,
}

/// train images, train labels, test images, test labels.
pub const MNIST_FILES: [MnistFile; 4] = [
    MnistFile {
        stem: "train-images-idx3-ubyte",
        sha256_raw: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        records: 60_000,
    },
    MnistFile {
        stem: "train-labels-idx1-ubyte",
        sha256_raw: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        records: 60_000,
    },
    MnistFile {
        stem: "t10k-images-idx3-ubyte",
        sha256_raw: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        records: 10_000,
    },
    MnistFile {
        stem: "t10k-labels-idx1-ubyte",
        sha256_raw: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        records: 10_000,
    },
];

/// Where the data lives and how that was decided (for error messages).
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The directory.
    pub dir: PathBuf,
    /// How it was chosen (`from --data`, `from STN_DATA`, the default).
    pub origin: &'static str,
}

impl DataDir {
    /// `--data DIR`, else the `STN_DATA` environment variable, else `data/mnist` under the current
    /// directory.
    pub fn resolve(cli: Option<&Path>) -> DataDir {
        if let Some(d) = cli {
            return DataDir {
                dir: d.to_path_buf(),
                origin: "from --data",
            };
        }
        match std::env::var_os("STN_DATA") {
            Some(d) if !d.is_empty() => DataDir {
                dir: PathBuf::from(d),
                origin: "from STN_DATA",
            },
            _ => DataDir {
                dir: PathBuf::from("data/mnist"),
                origin: "the default; set --data or STN_DATA",
            },
        }
    }
}

/// One split: `len()` images of `rows × cols` bytes, and their labels (0–9).
#[derive(Debug, Clone)]
pub struct MnistSplit {
    /// `len() · rows · cols` pixels, 0–255, image after image.
    pub images: Vec<u8>,
    /// One label 0–9 per image.
    pub labels: Vec<u8>,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
}

impl MnistSplit {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.images[i * n..(i + 1) * n]
    }
    /// The first `n` records (all of them when `n` is 0 or larger than the split).
    pub fn truncate(&mut self, n: usize) {
        if n > 0 && n < self.len() {
            self.labels.truncate(n);
            self.images.truncate(n * self.rows * self.cols);
        }
    }
    /// Number of each label 0–9.
    pub fn label_counts(&self) -> [usize; 10] {
        let mut c = [0; 10];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }
}

/// The verified MNIST database.
#[derive(Debug, Clone)]
pub struct Mnist {
    /// The 60,000 training images.
    pub train: MnistSplit,
    /// The 10,000 test images.
    pub test: MnistSplit,
}

/// The largest decompressed IDX file [`Mnist::load_idx`] reads.
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// Finds `stem.gz` or `stem` in `dir`.
fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Bytes of the decompressed published file: the IDX header, then the records.
fn raw_size(spec: &MnistFile) -> u64 {
    let (header, record) = if spec.stem.contains("images") {
        (16, 28 * 28)
    } else {
        (8, 1)
    };
    header + record * spec.records as u64
}

/// Reads a file of at most `limit` decompressed bytes, decompressing it when it starts with the
/// gzip magic (whatever its name). Never holds more than the limit: the IDX header is read first
/// and the size it claims checked against the limit, and decompression stops past the limit (a
/// small gzip can inflate to gigabytes). Non-regular files (FIFOs, devices) are refused unread.
fn read_maybe_gz(path: &Path, limit: u64) -> Result<Vec<u8>, DataError> {
    let name = path.display().to_string();
    let bad = |what: String| DataError::Format {
        file: name.clone(),
        what,
    };
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    // A gzip of incompressible bytes is a little larger than its content.
    let max_file = limit + limit / 64 + 4096;
    if meta.len() > max_file {
        return Err(bad(format!(
            "{} bytes, more than an MNIST file of {limit} bytes can take",
            meta.len()
        )));
    }
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut magic = [0u8; 2];
    let got = read_full(&mut file, &mut magic).map_err(|e| DataError::io(path, e))?;
    let head = std::io::Cursor::new(magic[..got].to_vec());
    let gz = got == 2 && magic == [0x1f, 0x8b];
    let mut stream: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(head.chain(file)))
    } else {
        Box::new(head.chain(file))
    };
    let corrupt = |e: std::io::Error| {
        if gz {
            DataError::Format {
                file: name.clone(),
                what: format!("gzip data is corrupt or truncated ({e})"),
            }
        } else {
            DataError::io(path, e)
        }
    };
    // The header: 4 bytes, then 4 per dimension.
    let mut out = vec![0u8; 4];
    let n = read_full(&mut stream, &mut out).map_err(corrupt)?;
    out.truncate(n);
    if n == 4 && out[0] == 0 && out[1] == 0 {
        let ndim = out[3] as usize;
        if ndim > crate::idx::MAX_DIMS {
            return Err(bad(format!(
                "{ndim} dimensions in the IDX header (at most {})",
                crate::idx::MAX_DIMS
            )));
        }
        let mut dims = vec![0u8; 4 * ndim];
        let n = read_full(&mut stream, &mut dims).map_err(corrupt)?;
        out.extend_from_slice(&dims[..n]);
        if n == dims.len() {
            let claimed = dims
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64)
                .try_fold(1u64, |a, d| a.checked_mul(d))
                .and_then(|c| c.checked_add(out.len() as u64));
            match claimed {
                // All of it at once: grown by doubling, the buffer was copied and faulted in
                // anew at each step (a tenth of a cold start's time for MNIST's 47 MB).
                Some(c) if c <= limit => out.reserve_exact(c as usize - out.len()),
                _ => {
                    return Err(bad(format!(
                    "the IDX header claims {} bytes, more than the {limit} of the published file",
                    claimed.map_or("over 2^64".to_string(), |c| c.to_string())
                )))
                }
            }
        }
    }
    stream
        .take(limit + 1 - out.len() as u64)
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() as u64 > limit {
        return Err(bad(format!(
            "holds more than the {limit} bytes of the published file{}",
            if gz { " once decompressed" } else { "" }
        )));
    }
    Ok(out)
}

/// `read` until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads, verifies and parses one file; returns its dimensions and data.
fn load_file(path: &Path, spec: &MnistFile) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let name = path.display().to_string();
    let bytes = read_maybe_gz(path, raw_size(spec))?;
    // Parse first: a truncated file then says "truncated", which is more useful than a checksum.
    IdxReader::check(&name, &bytes)?;
    let actual = hex::encode(Sha256::digest(&bytes));
    let arr = IdxReader::parse_owned(&name, bytes)?;
    if actual != spec.sha256_raw {
        return Err(DataError::Checksum {
            file: name,
            expected: spec.sha256_raw.into(),
            actual,
        });
    }
    if arr.dims[0] != spec.records {
        return Err(DataError::Format {
            file: name,
            what: format!("{} records, expected {}", arr.dims[0], spec.records),
        });
    }
    Ok((arr.dims, arr.data))
}

/// Checks downloaded, decompressed bytes (IDX structure and SHA-256) before they are renamed into place.
pub(crate) fn verify_raw(name: &str, raw: &[u8], spec: &MnistFile) -> Result<(), DataError> {
    IdxReader::parse(name, raw)?;
    let actual = hex::encode(Sha256::digest(raw));
    if actual != spec.sha256_raw {
        return Err(DataError::Checksum {
            file: name.into(),
            expected: spec.sha256_raw.into(),
            actual,
        });
    }
    Ok(())
}

/// Decompresses a downloaded file, stopping past the published file's size.
pub(crate) fn gunzip(name: &str, gz: &[u8], spec: &MnistFile) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    let limit = raw_size(spec);
    flate2::read::MultiGzDecoder::new(gz)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| DataError::Format {
            file: name.into(),
            what: format!("gzip data is corrupt ({e})"),
        })?;
    if out.len() as u64 > limit {
        return Err(DataError::Format {
            file: name.into(),
            what: format!("decompresses to more than the {limit} bytes of the published file"),
        });
    }
    Ok(out)
}

fn split(
    images: (Vec<usize>, Vec<u8>),
    labels: (Vec<usize>, Vec<u8>),
    dir: &Path,
    prefix: &str,
    max_label: u8,
) -> Result<MnistSplit, DataError> {
    let (idims, idata) = images;
    let (ldims, ldata) = labels;
    let iname = dir
        .join(format!("{prefix}-images-idx3-ubyte"))
        .display()
        .to_string();
    let lname = dir
        .join(format!("{prefix}-labels-idx1-ubyte"))
        .display()
        .to_string();
    if idims.len() != 3 {
        return Err(DataError::Format {
            file: iname,
            what: format!("images must have 3 dimensions, found {idims:?}"),
        });
    }
    if ldims.len() != 1 {
        return Err(DataError::Format {
            file: lname,
            what: format!("labels must have 1 dimension, found {ldims:?}"),
        });
    }
    if idims[0] != ldims[0] {
        return Err(DataError::Format {
            file: lname,
            what: format!("{} labels for {} images in {iname}", ldims[0], idims[0]),
        });
    }
    if let Some(bad) = ldata.iter().find(|&&l| l > max_label) {
        return Err(DataError::Format {
            file: lname,
            what: if max_label == 9 {
                format!("label {bad} is not a digit")
            } else {
                format!("label {bad} above {max_label}")
            },
        });
    }
    if idims[1] == 0 || idims[2] == 0 {
        return Err(DataError::Format {
            file: iname,
            what: format!("images of {}×{}", idims[1], idims[2]),
        });
    }
    Ok(MnistSplit {
        images: idata,
        labels: ldata,
        rows: idims[1],
        cols: idims[2],
    })
}

impl Mnist {
    /// Loads and verifies the four files from `dir`, downloading the missing ones first unless
    /// `offline`.
    pub fn load(data: &DataDir, offline: bool) -> Result<Mnist, DataError> {
        let mut loaded = load_files(data, offline, &MNIST_FILES)?;
        let (tel, tei) = (loaded.pop(), loaded.pop());
        let (trl, tri) = (loaded.pop(), loaded.pop());
        let dir = &data.dir;
        let take = |f: Option<_>| f.expect("four files loaded");
        Ok(Mnist {
            train: split(take(tri), take(trl), dir, "train", 9)?,
            test: split(take(tei), take(tel), dir, "t10k", 9)?,
        })
    }

    /// Any MNIST-format set in `dir` (Fashion-MNIST, KMNIST, EMNIST digits…): the four files under
    /// MNIST's names (gzipped or raw), read and parsed without MNIST's checksums or counts, at
    /// most [`MAX_IDX_BYTES`] each; never downloaded.
    pub fn load_idx(dir: &Path) -> Result<Mnist, DataError> {
        let missing: Vec<&str> = MNIST_FILES
            .iter()
            .filter(|f| find(dir, f.stem).is_none())
            .map(|f| f.stem)
            .collect();
        if !missing.is_empty() {
            return Err(DataError::Missing {
                missing: missing.join(", "),
                dir: dir.display().to_string(),
                origin: "from --data".into(),
                why: " (an IDX set has the four files under MNIST's names, gzipped or not)".into(),
            });
        }
        let mut loaded: Vec<IdxData> = MNIST_FILES
            .par_iter()
            .map(|f| {
                let path = find(dir, f.stem).expect("checked above");
                let bytes = read_maybe_gz(&path, MAX_IDX_BYTES)?;
                let arr = IdxReader::parse_owned(&path.display().to_string(), bytes)?;
                Ok((arr.dims, arr.data))
            })
            .collect::<Result<_, DataError>>()?;
        let (tel, tei) = (loaded.pop(), loaded.pop());
        let (trl, tri) = (loaded.pop(), loaded.pop());
        let take = |f: Option<_>| f.expect("four files loaded");
        Ok(Mnist {
            train: split(take(tri), take(trl), dir, "train", u8::MAX)?,
            test: split(take(tei), take(tel), dir, "t10k", u8::MAX)?,
        })
    }

    /// The test split alone (the two `t10k` files), for evaluation: the training files need not
    /// be there.
    pub fn load_test(data: &DataDir, offline: bool) -> Result<MnistSplit, DataError> {
        let mut loaded = load_files(data, offline, &MNIST_FILES[2..])?;
        let (labels, images) = (loaded.pop(), loaded.pop());
        let take = |f: Option<_>| f.expect("two files loaded");
        split(take(images), take(labels), &data.dir, "t10k", 9)
    }
}

/// One file's dimensions and bytes.
type IdxData = (Vec<usize>, Vec<u8>);

/// Finds (downloading what is missing unless `offline`), reads and verifies `files` from `data`,
/// in their order.
fn load_files(
    data: &DataDir,
    offline: bool,
    files: &[MnistFile],
) -> Result<Vec<IdxData>, DataError> {
    let dir = &data.dir;
    if dir.exists() && !dir.is_dir() {
        return Err(DataError::io(dir, std::io::Error::other("not a directory")));
    }
    if dir.is_dir() {
        std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    }
    let missing: Vec<&MnistFile> = files
        .iter()
        .filter(|f| find(dir, f.stem).is_none())
        .collect();
    if !missing.is_empty() {
        let names = missing
            .iter()
            .map(|f| f.stem)
            .collect::<Vec<_>>()
            .join(", ");
        let missing_err = |why: String| DataError::Missing {
            missing: names.clone(),
            dir: dir.display().to_string(),
            origin: data.origin.to_string(),
            why,
        };
        if offline {
            return Err(missing_err(" and --offline forbids downloading".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        for f in &missing {
            if let Err(e) = download::fetch(dir, f) {
                return Err(missing_err(format!("; downloading failed: {e}")));
            }
        }
    }
    files
        .par_iter()
        .map(|f| load_file(&find(dir, f.stem).expect("checked above"), f))
        .collect()
}

/// The paths of the MNIST files present in `dir` (gzipped or raw), e.g. to keep outputs off them.
pub fn mnist_paths(dir: &Path) -> Vec<PathBuf> {
    MNIST_FILES
        .iter()
        .flat_map(|f| [dir.join(format!("{}.gz", f.stem)), dir.join(f.stem)])
        .filter(|p| p.exists())
        .collect()
}

/// The seed's normalisation, computed in f32 exactly as PyTorch does: `(x / 255 - mean) / std`.
pub fn normalize(pixels: &[u8]) -> Vec<f32> {
    normalize_planes(pixels, pixels.len().max(1), &[MNIST_MEAN], &[MNIST_STD])
}

/// Per-channel normalisation of planar images (`[N, C, plane]`, C = `mean.len()`), in f32 as
/// torchvision's `ToTensor` then `Normalize` compute it: `(x / 255 - mean[c]) / std[c]`.
pub fn normalize_planes(pixels: &[u8], plane: usize, mean: &[f32], std: &[f32]) -> Vec<f32> {
    let c = mean.len().max(1);
    pixels
        .chunks(plane.max(1))
        .enumerate()
        .flat_map(|(i, p)| {
            let (m, s) = (mean[i % c], std[i % c]);
            p.iter().map(move |&p| (p as f32 / 255.0 - m) / s)
        })
        .collect()
}

/// The per-channel mean and standard deviation of planar images (`[N, C, plane]`) scaled to
/// [0, 1], summed in f64: the normalisation a spec without one gets from its training images. A
/// channel with no spread gets std 1.
pub fn channel_stats(pixels: &[u8], channels: usize, plane: usize) -> (Vec<f32>, Vec<f32>) {
    let mut sum = vec![0f64; channels];
    let mut sq = vec![0f64; channels];
    let mut count = vec![0u64; channels];
    for (i, p) in pixels.chunks(plane.max(1)).enumerate() {
        let c = i % channels;
        for &v in p {
            let x = v as f64 / 255.0;
            sum[c] += x;
            sq[c] += x * x;
        }
        count[c] += p.len() as u64;
    }
    let mut mean = Vec::with_capacity(channels);
    let mut std = Vec::with_capacity(channels);
    for c in 0..channels {
        let n = count[c].max(1) as f64;
        let m = sum[c] / n;
        let var = (sq[c] / n - m * m).max(0.0);
        mean.push(m as f32);
        std.push(if var > 1e-12 { var.sqrt() as f32 } else { 1.0 });
    }
    (mean, std)
}

/// The order in which to visit `n` records in `epoch` (1-based or 0-based, any u64): a Fisher–Yates
/// shuffle driven by ChaCha8 seeded from `(seed, epoch)`. It depends on nothing else, so a resumed
/// run visits the data in the same order as an uninterrupted one, on every machine.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..].copy_from_slice(b"stn-epoch-order!");
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(key);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // u64 range, so the stream of draws is the same on 32- and 64-bit machines.
        let j = rng.gen_range(0..=i as u64) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_matches_pytorch_float32() {
        let v = normalize(&[0, 255, 128]);
        // PyTorch float32: (0/255 - 0.1307)/0.3081 and (1 - 0.1307)/0.3081.
        assert_eq!(v[0], -0.424_212_96_f32);
        assert_eq!(v[1], 2.821_486_7_f32);
        assert_eq!(v[2], 1.205_001_1_f32); // values printed by numpy float32
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(1000, 1, 1);
        assert_eq!(a, epoch_order(1000, 1, 1));
        assert_ne!(a, epoch_order(1000, 1, 2));
        assert_ne!(a, epoch_order(1000, 2, 1));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        // Pinned, so a change of RNG or algorithm (which would change every run) is caught.
        assert_eq!(&epoch_order(10, 1, 1), &PINNED_ORDER);
    }
    #[test]
    fn planar_normalization_and_stats() {
        // Two images of two 2-pixel planes: channel 0 is {0, 255, 0, 255}, channel 1 all 51.
        let px = [0, 255, 51, 51, 255, 0, 51, 51];
        let (mean, std) = channel_stats(&px, 2, 2);
        assert_eq!(mean, vec![0.5, 0.2]);
        assert_eq!(std, vec![0.5, 1.0]);
        let v = normalize_planes(&px, 2, &mean, &std);
        assert_eq!(v, vec![-1.0, 1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0]);
        assert_eq!(
            normalize(&[0, 255, 128]),
            normalize_planes(&[0, 255, 128], 3, &[MNIST_MEAN], &[MNIST_STD])
        );
    }
    const PINNED_ORDER: [usize; 10] = [8, 1, 4, 0, 6, 9, 5, 7, 2, 3];
}
