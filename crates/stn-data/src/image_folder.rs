//! torchvision's `ImageFolder` layout as a dataset: `DIR/train/<class>/*.png|jpg|…` and
//! `DIR/test/<class>/*`, class names sorted (as torchvision sorts them), files sorted within a
//! class, each image converted to the network's channels (`convert("RGB")`, then PIL's `L` luma
//! for grey) and resized to its input as torchvision's `Resize((H, W))` does with PIL's bilinear
//! filter (a triangle filter widened by the scale when shrinking: antialiased).

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use rayon::prelude::*;

use crate::decode::{decode_image, ImageError};

/// The file extensions torchvision's `ImageFolder` takes (`IMG_EXTENSIONS`); stn decodes the
/// PNG, JPEG and PGM/PPM ones and refuses the others by name.
const IMG_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];
const DECODED: &[&str] = &["jpg", "jpeg", "png", "ppm", "pgm"];

/// The most classes (labels are bytes).
pub const MAX_FOLDER_CLASSES: usize = 256;

/// Why a folder dataset could not be read; each names the folder or file.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// The layout is not `DIR/{train,test}/<class>/<images>`.
    #[error("{path}: {what}")]
    Layout {
        /// The folder.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// An image that cannot be read.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// One split: images `[N, C, H, W]` (bytes, planar), labels, the files they came from.
#[derive(Debug, Clone)]
pub struct FolderSplit {
    /// Planar `[N, C, H, W]` pixels.
    pub images: Vec<u8>,
    /// Class indices into [`ImageFolder::classes`].
    pub labels: Vec<u8>,
    /// One image's `[C, H, W]`.
    pub dims: [usize; 3],
    /// The image files, in order.
    pub files: Vec<PathBuf>,
}

impl FolderSplit {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Image `i`'s planar pixels.
    pub fn image(&self, i: usize) -> &[u8] {
        let n: usize = self.dims.iter().product();
        &self.images[i * n..(i + 1) * n]
    }
    /// Keeps the first `n` images (0: all).
    pub fn truncate(&mut self, n: usize) {
        if n > 0 && n < self.len() {
            let len: usize = self.dims.iter().product();
            self.images.truncate(n * len);
            self.labels.truncate(n);
            self.files.truncate(n);
        }
    }
}

/// An image-folder dataset: both splits and the class names.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// `DIR/train`.
    pub train: FolderSplit,
    /// `DIR/test`.
    pub test: FolderSplit,
    /// The class folders' names, sorted; a label is an index into them.
    pub classes: Vec<String>,
}

fn layout(path: &Path, what: impl Into<String>) -> FolderError {
    FolderError::Layout {
        path: path.display().to_string(),
        what: what.into(),
    }
}

/// The sorted names of the sub-folders of `dir` (hidden ones skipped).
fn class_dirs(dir: &Path) -> Result<Vec<String>, FolderError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| layout(dir, format!("cannot list it: {e}")))?;
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(|e| layout(dir, format!("cannot list it: {e}")))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && e.path().is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The image files of one class folder, sorted, by torchvision's extensions.
fn class_files(dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| layout(dir, format!("cannot list it: {e}")))?;
    let mut files = Vec::new();
    for e in entries {
        let p = e
            .map_err(|e| layout(dir, format!("cannot list it: {e}")))?
            .path();
        let ext = p
            .extension()
            .map(|x| x.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden || !IMG_EXTENSIONS.contains(&ext.as_str()) {
            continue;
        }
        if !DECODED.contains(&ext.as_str()) {
            return Err(layout(
                &p,
                format!(".{ext} images are not read by stn (PNG, JPEG, PGM/PPM); convert them"),
            ));
        }
        files.push(p);
    }
    files.sort();
    Ok(files)
}

/// One image file as a network's `[C, H, W]` bytes (planar), as an image folder's images are
/// prepared: RGB (alpha dropped, as PIL's `convert("RGB")`), PIL's `L` luma for one channel,
/// resized with the triangle filter (PIL's bilinear).
pub fn prepare_image(path: &Path, [c, h, w]: [usize; 3]) -> Result<Vec<u8>, FolderError> {
    let rgb = decode_image(path)?.to_rgb8();
    let rgb = if (rgb.width() as usize, rgb.height() as usize) == (w, h) {
        rgb
    } else {
        imageops::resize(&rgb, w as u32, h as u32, FilterType::Triangle)
    };
    let plane = h * w;
    let mut out = vec![0u8; c * plane];
    for (i, p) in rgb.pixels().enumerate() {
        let [r, g, b] = p.0;
        if c == 3 {
            out[i] = r;
            out[plane + i] = g;
            out[2 * plane + i] = b;
        } else {
            // PIL's ITU-R 601-2 luma in fixed point: L = R·299/1000 + G·587/1000 + B·114/1000.
            let l = (r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16;
            for ch in 0..c {
                out[ch * plane + i] = l as u8;
            }
        }
    }
    Ok(out)
}

impl ImageFolder {
    /// Reads `dir/train` and `dir/test` as images of `dims` (`[C, H, W]`; C = 1 or 3). The two
    /// splits must have the same class folders, each with at least one image.
    pub fn load(dir: &Path, dims: [usize; 3]) -> Result<ImageFolder, FolderError> {
        if !matches!(dims[0], 1 | 3) {
            return Err(layout(
                dir,
                format!(
                    "images become 1 (grey) or 3 (RGB) channels, not {}",
                    dims[0]
                ),
            ));
        }
        let (train, classes) = Self::split(dir, "train", dims, None)?;
        let (test, _) = Self::split(dir, "test", dims, Some(&classes))?;
        Ok(ImageFolder {
            train,
            test,
            classes,
        })
    }

    /// Reads `dir/<name>` only (the test split for inference), checking its classes against
    /// `classes` when given.
    pub fn split(
        dir: &Path,
        name: &str,
        dims: [usize; 3],
        classes: Option<&[String]>,
    ) -> Result<(FolderSplit, Vec<String>), FolderError> {
        let root = dir.join(name);
        if !root.is_dir() {
            return Err(layout(
                &root,
                format!("no such folder: an image folder holds {name}/<class>/<images> (torchvision's ImageFolder layout)"),
            ));
        }
        let found = class_dirs(&root)?;
        if found.is_empty() {
            return Err(layout(&root, "no class folders in it"));
        }
        if found.len() > MAX_FOLDER_CLASSES {
            return Err(layout(
                &root,
                format!(
                    "{} class folders; at most {MAX_FOLDER_CLASSES}",
                    found.len()
                ),
            ));
        }
        if let Some(want) = classes {
            if found != want {
                return Err(layout(
                    &root,
                    format!("its classes {found:?} differ from the training split's (the model's) {want:?}"),
                ));
            }
        }
        let mut files = Vec::new();
        let mut labels = Vec::new();
        for (k, class) in found.iter().enumerate() {
            let d = root.join(class);
            let f = class_files(&d)?;
            if f.is_empty() {
                return Err(layout(
                    &d,
                    "a class folder with no images (.png, .jpg, .jpeg, .ppm, .pgm)",
                ));
            }
            labels.extend(std::iter::repeat_n(k as u8, f.len()));
            files.extend(f);
        }
        let images: Vec<Vec<u8>> = files
            .par_iter()
            .map(|p| prepare_image(p, dims))
            .collect::<Result<_, _>>()?;
        Ok((
            FolderSplit {
                images: images.concat(),
                labels,
                dims,
                files,
            },
            found,
        ))
    }
}
