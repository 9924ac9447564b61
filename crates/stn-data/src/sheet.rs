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

/// Lines drawn over one image: each a polyline of `(x, y)` points in the image's pixel coordinates
/// (pixel centres at integers; points may lie outside the image, where the line is clipped).
pub type Polylines = Vec<Vec<[f32; 2]>>;

/// As [`side_by_side_png`], with `lines[k]` drawn in red over left image `k`: the sampling grid
/// of the spatial transformer on its input (where the sampled image comes from).
pub fn side_by_side_with_lines_png(
    left: &[&[u8]],
    left_dims: [usize; 3],
    lines: &[Polylines],
    right: &[&[u8]],
    right_dims: [usize; 3],
    cols: usize,
    path: &Path,
) -> std::io::Result<()> {
    // Upscaled so that a line is thinner than a pixel: 3× for small images.
    let up = if left_dims[1].max(left_dims[2]) <= 64 {
        3
    } else {
        1
    };
    let scaled = |imgs: &[&[u8]], [c, h, w]: [usize; 3]| -> Vec<Vec<u8>> {
        imgs.iter()
            .map(|im| {
                let mut o = Vec::with_capacity(c * h * w * up * up);
                for ch in 0..c {
                    for y in 0..h * up {
                        for x in 0..w * up {
                            o.push(im[ch * h * w + (y / up) * w + x / up]);
                        }
                    }
                }
                o
            })
            .collect()
    };
    let (l, r) = (scaled(left, left_dims), scaled(right, right_dims));
    let ld = [left_dims[0], left_dims[1] * up, left_dims[2] * up];
    let rd = [right_dims[0], right_dims[1] * up, right_dims[2] * up];
    let lrefs: Vec<&[u8]> = l.iter().map(|v| v.as_slice()).collect();
    let rrefs: Vec<&[u8]> = r.iter().map(|v| v.as_slice()).collect();
    let mut a = sheet(&lrefs, ld, cols);
    let (gap, cols) = (2usize, cols.max(1));
    let (h, w) = (ld[1], ld[2]);
    for (k, polys) in lines.iter().enumerate().take(left.len()) {
        let (oy, ox) = ((k / cols) * (h + gap) + gap, (k % cols) * (w + gap) + gap);
        let to_px = |p: [f32; 2]| {
            (
                (p[0] + 0.5) * up as f32 - 0.5,
                (p[1] + 0.5) * up as f32 - 0.5,
            )
        };
        for poly in polys {
            for seg in poly.windows(2) {
                let ((x0, y0), (x1, y1)) = (to_px(seg[0]), to_px(seg[1]));
                let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).clamp(1, 4096);
                for s in 0..=steps {
                    let t = s as f32 / steps as f32;
                    let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
                    let (xi, yi) = (x.round(), y.round());
                    if xi >= 0.0 && yi >= 0.0 && (xi as usize) < w && (yi as usize) < h {
                        a.put_pixel(
                            (ox + xi as usize) as u32,
                            (oy + yi as usize) as u32,
                            Rgb([230, 40, 40]),
                        );
                    }
                }
            }
        }
    }
    let b = sheet(&rrefs, rd, cols);
    let gutter = 12;
    let mut img = RgbImage::from_pixel(
        a.width() + gutter + b.width(),
        a.height().max(b.height()),
        Rgb([255, 255, 255]),
    );
    image::imageops::replace(&mut img, &a, 0, 0);
    image::imageops::replace(&mut img, &b, (a.width() + gutter) as i64, 0);
    write_png(img, false, path)
}

/// The outline and a few inner lines of a sampling grid `[Ho, Wo, 2]` (normalised coordinates)
/// on an `h × w` input, in its pixel coordinates: what [`side_by_side_with_lines_png`] draws.
pub fn grid_lines(
    grid: &[f32],
    [ho, wo]: [usize; 2],
    [h, w]: [usize; 2],
    align_corners: bool,
) -> Polylines {
    let px = |g: f32, n: usize| {
        if align_corners {
            (g + 1.0) / 2.0 * (n as f32 - 1.0)
        } else {
            ((g + 1.0) * n as f32 - 1.0) / 2.0
        }
    };
    let at = |i: usize, j: usize| {
        let o = (i * wo + j) * 2;
        [px(grid[o], w), px(grid[o + 1], h)]
    };
    let mut lines = Vec::new();
    // Rows and columns 0, ¼, ½, ¾ and the last: the outline and a 4×4 mesh.
    let picks = |n: usize| -> Vec<usize> {
        let mut v: Vec<usize> = (0..=4).map(|k| k * (n - 1) / 4).collect();
        v.dedup();
        v
    };
    for i in picks(ho) {
        lines.push((0..wo).map(|j| at(i, j)).collect());
    }
    for j in picks(wo) {
        lines.push((0..ho).map(|i| at(i, j)).collect());
    }
    lines
}
