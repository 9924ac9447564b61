//! Pictures of images for people to look at: contact sheets of a set, and two sets side by side
//! (before and after a spatial transformer). Images are planar bytes `[C, H, W]`, grey (C = 1) or
//! RGB (C = 3), of any size; the PNG is grey or RGB to match.

use std::path::Path;

use image::{ImageFormat, Rgb, RgbImage};

use crate::write_atomic;

/// Images of `dims` (`[C, H, W]`) as a grid of `cols` columns with a 2-pixel grey gutter.
fn sheet(images: &[&[u8]], [c, h, w]: [usize; 3], cols: usize) -> RgbImage {
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols).max(1);
    let gap = 2;
    let (width, height) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
    let mut img = RgbImage::from_pixel(width as u32, height as u32, Rgb([96, 96, 96]));
    let plane = h * w;
    for (k, im) in images.iter().enumerate() {
        let (oy, ox) = ((k / cols) * (h + gap) + gap, (k % cols) * (w + gap) + gap);
        for y in 0..h {
            for x in 0..w {
                let at = y * w + x;
                let px = if c >= 3 {
                    [im[at], im[plane + at], im[2 * plane + at]]
                } else {
                    [im[at]; 3]
                };
                img.put_pixel((ox + x) as u32, (oy + y) as u32, Rgb(px));
            }
        }
    }
    img
}

/// Writes `img` as a PNG atomically: grey when `grey` (every pixel's channels are equal).
fn write_png(img: RgbImage, grey: bool, path: &Path) -> std::io::Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    let img = image::DynamicImage::ImageRgb8(img);
    let img = if grey {
        image::DynamicImage::ImageLuma8(img.to_luma8())
    } else {
        img
    };
    img.write_to(&mut bytes, ImageFormat::Png)
        .map_err(std::io::Error::other)?;
    write_atomic(path, bytes.get_ref())
}

/// Writes images of `dims` (`[C, H, W]`, C = 1 or 3) as a PNG grid of `cols` columns, atomically:
/// for people to look at the data.
pub fn contact_sheet_png(
    images: &[&[u8]],
    dims: [usize; 3],
    cols: usize,
    path: &Path,
) -> std::io::Result<()> {
    write_png(sheet(images, dims, cols), dims[0] == 1, path)
}

/// Two contact sheets side by side in one PNG (e.g. images before and after the spatial
/// transformer), each with `cols` columns, separated by a wider white gutter; written atomically.
pub fn side_by_side_png(
    left: &[&[u8]],
    left_dims: [usize; 3],
    right: &[&[u8]],
    right_dims: [usize; 3],
    cols: usize,
    path: &Path,
) -> std::io::Result<()> {
    let (a, b) = (sheet(left, left_dims, cols), sheet(right, right_dims, cols));
    let gutter = 12;
    let mut img = RgbImage::from_pixel(
        a.width() + gutter + b.width(),
        a.height().max(b.height()),
        Rgb([255, 255, 255]),
    );
    image::imageops::replace(&mut img, &a, 0, 0);
    image::imageops::replace(&mut img, &b, (a.width() + gutter) as i64, 0);
    write_png(img, left_dims[0] == 1 && right_dims[0] == 1, path)
}
