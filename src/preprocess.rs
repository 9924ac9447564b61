//! Photos and scans of digits prepared the way MNIST itself was made, so that the model sees what
//! it was trained on: grey; inverted when the digit is dark on light; cropped to the ink; scaled to
//! fit 20×20 keeping the aspect ratio; placed in 28×28 with its centre of mass at the centre.

use std::path::Path;

use image::{imageops, GrayImage, Luma};

/// Reads an image file as grey, its format told by its content (a PNG named `.jpg` is a PNG),
/// within bounded sizes ([`stn_data::decode_image`]). Transparent pixels are composited onto the
/// background the digit needs: black for `raw` (MNIST-like, light on black) images; for others,
/// white under dark ink and black under light ink (so a black digit on a transparent background
/// reads as a digit on paper, not as black on black). A JPEG without its end-of-image marker is
/// refused as truncated.
pub fn read_grey(path: &Path, raw: bool) -> anyhow::Result<GrayImage> {
    let img = stn_data::decode_image(path)?;
    if !img.color().has_alpha() {
        return Ok(img.to_luma8());
    }
    let la = img.to_luma_alpha8();
    let background = if raw {
        0.0
    } else {
        // The visible pixels' mean grey, weighted by their opacity: dark ink goes on white.
        let (mut sum, mut weight) = (0f64, 0f64);
        for p in la.pixels() {
            let a = p[1] as f64 / 255.0;
            sum += a * p[0] as f64;
            weight += a;
        }
        if weight > 0.0 && sum / weight < 128.0 {
            255.0
        } else {
            0.0
        }
    };
    Ok(GrayImage::from_fn(la.width(), la.height(), |x, y| {
        let p = la.get_pixel(x, y);
        let a = p[1] as f64 / 255.0;
        Luma([(a * p[0] as f64 + (1.0 - a) * background).round() as u8])
    }))
}

/// The 28×28 grey image (0–255, light digit on black) an arbitrary picture of a digit becomes.
pub fn mnist_like(img: &GrayImage) -> GrayImage {
    let (w, h) = img.dimensions();
    // Dark on light (paper) when the border is bright: invert.
    let border: Vec<u8> = (0..w)
        .flat_map(|x| [img.get_pixel(x, 0)[0], img.get_pixel(x, h - 1)[0]])
        .chain((0..h).flat_map(|y| [img.get_pixel(0, y)[0], img.get_pixel(w - 1, y)[0]]))
        .collect();
    // Wide sums: a 1×9,000,000 strip's border overflows a u32.
    let bg = (border.iter().map(|&v| v as u64).sum::<u64>() / border.len().max(1) as u64) as u32;
    let mut g = img.clone();
    if bg > 127 {
        imageops::invert(&mut g);
    }
    // Ink: clearly brighter than the (now dark) background.
    let bg = if bg > 127 { 255 - bg } else { bg };
    let thr = (bg + 40).min(200) as u8;
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (x, y, p) in g.enumerate_pixels() {
        if p[0] > thr {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    if x0 > x1 {
        return GrayImage::new(28, 28); // no ink: an empty image
    }
    let crop = imageops::crop_imm(&g, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image();
    // Remove the background level so the canvas around the digit is black, like MNIST.
    let crop = GrayImage::from_fn(crop.width(), crop.height(), |x, y| {
        let v = crop.get_pixel(x, y)[0];
        Luma([((v.saturating_sub(bg as u8)) as u32 * 255 / (255 - bg).max(1)) as u8])
    });
    let (cw, ch) = crop.dimensions();
    let scale = 20.0 / cw.max(ch) as f32;
    let (nw, nh) = (
        ((cw as f32 * scale).round() as u32).max(1),
        ((ch as f32 * scale).round() as u32).max(1),
    );
    let small = imageops::resize(&crop, nw, nh, imageops::FilterType::Triangle);
    // Centre of mass to the centre of the 28×28 canvas.
    let (mut m, mut mx, mut my) = (0f64, 0f64, 0f64);
    for (x, y, p) in small.enumerate_pixels() {
        let v = p[0] as f64;
        m += v;
        mx += v * x as f64;
        my += v * y as f64;
    }
    let (cx, cy) = if m > 0.0 {
        (mx / m, my / m)
    } else {
        (nw as f64 / 2.0, nh as f64 / 2.0)
    };
    let (ox, oy) = ((14.0 - cx).round() as i64, (14.0 - cy).round() as i64);
    let mut out = GrayImage::new(28, 28);
    imageops::overlay(&mut out, &small, ox, oy);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dark_digit_on_paper_becomes_a_centred_light_digit() {
        // A black bar, off-centre, on a white 100×60 page.
        let mut page = GrayImage::from_pixel(100, 60, Luma([240]));
        for y in 5..45 {
            for x in 70..78 {
                page.put_pixel(x, y, Luma([10]));
            }
        }
        let d = mnist_like(&page);
        assert_eq!(d.dimensions(), (28, 28));
        assert_eq!(d.get_pixel(0, 0)[0], 0, "background is black");
        // The ink is 20 pixels tall and centred.
        let rows: Vec<u32> = (0..28)
            .filter(|&y| (0..28).any(|x| d.get_pixel(x, y)[0] > 128))
            .collect();
        assert!((19..=21).contains(&rows.len()), "{rows:?}");
        let mid = (rows[0] + rows[rows.len() - 1]) as f32 / 2.0;
        assert!((mid - 14.0).abs() <= 1.0, "{mid}");
        let cols: Vec<u32> = (0..28)
            .filter(|&x| (0..28).any(|y| d.get_pixel(x, y)[0] > 128))
            .collect();
        let midx = (cols[0] + cols[cols.len() - 1]) as f32 / 2.0;
        assert!((midx - 14.0).abs() <= 1.0, "{midx}");
    }

    #[test]
    fn a_blank_image_stays_blank() {
        let d = mnist_like(&GrayImage::from_pixel(50, 50, Luma([255])));
        assert!(d.pixels().all(|p| p[0] == 0));
    }
}
