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

/// Two contact sheets side by side in one PNG (e.g. digits before and after the spatial
/// transformer), each with `cols` columns, separated by a wider gutter; written atomically.
pub fn side_by_side_png(
    left: &[&[u8]],
    left_side: usize,
    right: &[&[u8]],
    right_side: usize,
    cols: usize,
    path: &Path,
) -> std::io::Result<()> {
    let sheet = |imgs: &[&[u8]], side: usize| -> GrayImage {
        let cols = cols.max(1);
        let rows = imgs.len().div_ceil(cols).max(1);
        let gap = 2;
        let mut img = GrayImage::from_pixel(
            (cols * (side + gap) + gap) as u32,
            (rows * (side + gap) + gap) as u32,
            Luma([96]),
        );
        for (k, im) in imgs.iter().enumerate() {
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
        img
    };
    let (a, b) = (sheet(left, left_side), sheet(right, right_side));
    let gutter = 12;
    let mut img = GrayImage::from_pixel(
        a.width() + gutter + b.width(),
        a.height().max(b.height()),
        Luma([255]),
    );
    image::imageops::replace(&mut img, &a, 0, 0);
    image::imageops::replace(&mut img, &b, (a.width() + gutter) as i64, 0);
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, ImageFormat::Png)
        .map_err(std::io::Error::other)?;
    write_atomic(path, bytes.get_ref())
}
