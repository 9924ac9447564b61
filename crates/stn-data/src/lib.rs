#![warn(missing_docs)]
//! MNIST for the stn project, the way a torchvision user expects it, done stricter:
//!
//! * [`IdxReader`] parses the IDX files (gzipped or raw) and checks magic, dimensions and counts;
//! * [`Mnist::load`] finds the four files ([`DataDir::resolve`]: `--data`, `STN_DATA`, `data/mnist`),
//!   verifies the SHA-256 of the decompressed bytes against the published files, and downloads what
//!   is missing from the usual mirrors unless offline;
//! * [`normalize`] is the seed's `(x/255 - 0.1307) / 0.3081`, in f32 like PyTorch; [`normalize_planes`]
//!   the same per channel, [`channel_stats`] a training set's per-channel mean and std;
//! * [`epoch_order`] gives a shuffled order that depends only on `(seed, epoch)`, on every machine;
//! * [`Mnist::load_idx`] reads any MNIST-format set of IDX files (Fashion-MNIST, KMNIST, EMNIST)
//!   without MNIST's checksums; [`ImageFolder`] reads torchvision's `ImageFolder` layout, resized to
//!   the network's input; [`decode_image`] decodes an image file within bounds;
//! * [`distort`] makes the distorted MNIST variants of the spatial-transformer paper (R, RTS, T, clutter).

mod decode;
pub mod distort;
mod download;
mod files;
mod idx;
mod image_folder;
mod mnist;
mod sheet;

pub use decode::{decode_image, ImageError, MAX_IMAGE_FILE_BYTES, MAX_IMAGE_SIDE};
pub use distort::{distort_split, Distortion};
pub use files::{read_regular, write_atomic, ReadError};
pub use idx::{IdxArray, IdxReader};
pub use image_folder::{prepare_image, FolderError, FolderSplit, ImageFolder, MAX_FOLDER_CLASSES};
pub use mnist::{
    channel_stats, epoch_order, mnist_paths, normalize, normalize_planes, DataDir, Mnist,
    MnistFile, MnistSplit, MAX_IDX_BYTES, MNIST_FILES, MNIST_MEAN, MNIST_STD,
};
pub use sheet::{
    contact_sheet_png, grid_lines, side_by_side_png, side_by_side_with_lines_png, Polylines,
};

use std::path::PathBuf;

/// Everything that can go wrong with the data. Every variant names the file or directory concerned.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file that is not what it should be (truncated, corrupt, wrong header).
    #[error("{file}: {what}")]
    Format {
        /// The file.
        file: String,
        /// What is wrong.
        what: String,
    },
    /// The operating system's error on a file or directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    #[error(
        "{file}: SHA-256 of the decompressed bytes is {actual}, expected {expected} (the published \
         MNIST file): the file is corrupt or not MNIST; delete it (it is downloaded again unless \
         --offline) or replace it"
    )]
    /// The decompressed bytes are not the published file's.
    Checksum {
        /// The file.
        file: String,
        /// The published SHA-256.
        expected: String,
        /// This file's SHA-256.
        actual: String,
    },
    #[error(
        "MNIST file(s) {missing} not found in {dir} ({origin}){why}.\n\
         Provide the four files (gzipped or raw) there, or point --data / STN_DATA at a directory \
         that has them: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, \
         t10k-labels-idx1-ubyte (each optionally with .gz)."
    )]
    /// Files not found (and not downloaded).
    Missing {
        /// Their names.
        missing: String,
        /// Where they were looked for.
        dir: String,
        /// How that directory was chosen.
        origin: String,
        /// Why they were not downloaded, if they were not.
        why: String,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
