//! Image files decoded within bounds, their format told by their content.

use std::path::Path;

use image::{DynamicImage, ImageFormat};

use crate::ReadError;

/// The largest image file read.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;
/// The largest side decoded (a 16384×16384 grey image is 256 MB).
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// Why an image file could not be read; names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not readable as a file (missing, not regular, too large).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Read, but not a usable image.
    #[error("{path}: {what}")]
    Decode {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
}

/// Decodes an image file (PNG, JPEG, PGM/PPM, told by its content: a PNG named `.jpg` is a PNG),
/// at most [`MAX_IMAGE_FILE_BYTES`] and [`MAX_IMAGE_SIDE`] a side. A JPEG without its
/// end-of-image marker is refused as truncated; an empty image is refused.
pub fn decode_image(path: &Path) -> Result<DynamicImage, ImageError> {
    let bytes = crate::read_regular(path, MAX_IMAGE_FILE_BYTES)?;
    let bad = |what: String| ImageError::Decode {
        path: path.display().to_string(),
        what,
    };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Pnm)) => f,
        Some(f) => {
            return Err(bad(format!(
                "a {f:?} image; stn reads PNG, JPEG and PGM/PPM"
            )))
        }
        None => {
            return Err(bad(
                "not an image (neither PNG, JPEG nor PGM/PPM by its content)".into(),
            ))
        }
    };
    if format == ImageFormat::Jpeg {
        let tail = &bytes[bytes.len().saturating_sub(64)..];
        if !tail.windows(2).any(|w| w == [0xff, 0xd9]) {
            return Err(bad("truncated JPEG (no end-of-image marker)".into()));
        }
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(bad(format!(
            "an empty ({}×{}) image",
            img.width(),
            img.height()
        )));
    }
    Ok(img)
}
