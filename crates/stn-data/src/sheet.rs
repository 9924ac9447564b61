use std::path::Path;

use image::{GrayImage, ImageFormat, Luma};

use crate::write_atomic;

/// Square grey images (`side × side` bytes each) as a grid of `cols` columns with a 2-pixel grey
/// gutter.
fn sheet(images: &[&[u8]], side: usize, cols: usize) -> GrayImage {
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
    img
}

fn write_png(img: &GrayImage, path: &Path) -> std::io::Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, ImageFormat::Png)
        .map_err(std::io::Error::other)?;
    write_atomic(path, bytes.get_ref())
}

/// Writes square grey images as a PNG grid of `cols` columns, atomically: for people to look at
/// the data.
pub fn contact_sheet_png(
    images: &[&[u8]],
    side: usize,
    cols: usize,
    path: &Path,
) -> std::io::Result<()> {
    write_png(&sheet(images, side, cols), path)
}

/// Two contact sheets side by side in one PNG (e.g. digits before and after the spatial
/// transformer), each with `cols` columns, separated by a wider white gutter; written atomically.
pub fn side_by_side_png(
    left: &[&[u8]],
    left_side: usize,
    right: &[&[u8]],
    right_side: usize,
    cols: usize,
    path: &Path,
) -> std::io::Result<()> {
    let (a, b) = (sheet(left, left_side, cols), sheet(right, right_side, cols));
    let gutter = 12;
    let mut img = GrayImage::from_pixel(
        a.width() + gutter + b.width(),
        a.height().max(b.height()),
        Luma([255]),
    );
    image::imageops::replace(&mut img, &a, 0, 0);
    image::imageops::replace(&mut img, &b, (a.width() + gutter) as i64, 0);
    write_png(&img, path)
}
