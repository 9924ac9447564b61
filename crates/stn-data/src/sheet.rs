use std::path::Path;

use image::{GrayImage, ImageFormat, Luma};

use crate::write_atomic;

/// Writes square grey images (`side × side` bytes each) as a PNG grid of `cols` columns with a
/// 2-pixel grey gutter, atomically. For people to look at the data or at what the STN does.
pub fn contact_sheet_png(
    images: &[&[u8]],
    side: usize,
    cols: usize,
    path: &Path,
) -> std::io::Result<()> {
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols).max(1);
    let gap = 2;
    let (w, h) = (cols * (side + gap) + gap, rows * (side + gap) + gap);
    let mut img = GrayImage::from_pixel(w as u32, h as u32, Luma([96]));
    for (k, im) in images.iter().enumerate() {
        let (oy, ox) = (
            (k / cols) * (side + gap) + gap,
            (k % cols) * (side + gap) + gap,
        );
        for y in 0..side {
            for x in 0..side {
                img.put_pixel((ox + x) as u32, (oy + y) as u32, Luma([im[y * side + x]]));
            }
        }
    }
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, ImageFormat::Png)
        .map_err(std::io::Error::other)?;
    write_atomic(path, bytes.get_ref())
}
