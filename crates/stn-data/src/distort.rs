//! Distorted MNIST as in the spatial-transformer paper (Jaderberg et al., 2015, §4.1):
//!
//! * `R`   — rotated by a random angle in ±90°, on the 28×28 canvas;
//! * `RTS` — rotated ±45°, scaled 0.7–1.2 and placed at a random position on a 42×42 canvas;
//! * `T`   — placed at a random position on a 60×60 canvas;
//! * clutter — optional random 6×6 crops of other digits scattered on the canvas.
//!
//! Every sample depends only on `(seed, index)`, so a split is generated identically on every
//! machine and in any order (it is built in parallel). The digit's ink is placed by its bounding
//! box, so it always lies wholly inside the canvas.

use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::MnistSplit;

/// Which distortion to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distortion {
    /// The plain 28×28 digits.
    None,
    /// Rotated by up to ±90° (28×28).
    R,
    /// Rotated ±45°, scaled 0.7–1.2 and placed at random on 42×42.
    Rts,
    /// Placed at random on 60×60.
    T,
}

impl FromStr for Distortion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Distortion::None),
            "r" => Ok(Distortion::R),
            "rts" => Ok(Distortion::Rts),
            "t" => Ok(Distortion::T),
            other => Err(format!(
                "unknown distortion '{other}': expected none, r, rts or t"
            )),
        }
    }
}

impl Distortion {
    /// Side of the square canvas the distorted digits are drawn on.
    pub fn canvas(self) -> usize {
        match self {
            Distortion::None | Distortion::R => 28,
            Distortion::Rts => 42,
            Distortion::T => 60,
        }
    }
}

/// Side of a clutter piece, as in the paper.
const CLUTTER_SIDE: usize = 6;
/// Scratch canvas the digit is rotated and scaled on before it is placed (28·1.2·√2 < 48).
const SCRATCH: usize = 48;

/// A new split with every image distorted; labels are kept. `clutter` pieces per image.
pub fn distort_split(
    split: &MnistSplit,
    kind: Distortion,
    clutter: usize,
    seed: u64,
) -> MnistSplit {
    let side = kind.canvas();
    let images: Vec<u8> = (0..split.len())
        .into_par_iter()
        .flat_map_iter(|i| distort_one(split, i, kind, clutter, seed).0)
        .collect();
    MnistSplit {
        images,
        labels: split.labels.clone(),
        rows: side,
        cols: side,
    }
}

fn rng_for(seed: u64, index: usize) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(index as u64).to_le_bytes());
    key[16..].copy_from_slice(b"stn-distortions!");
    ChaCha8Rng::from_seed(key)
}

/// Distorts image `index` of `split`; returns the canvas and the ink (sum of pixel values) of the
/// digit as rendered before placement, so a test can check that nothing was cut off.
pub(crate) fn distort_one(
    split: &MnistSplit,
    index: usize,
    kind: Distortion,
    clutter: usize,
    seed: u64,
) -> (Vec<u8>, u64) {
    let side = kind.canvas();
    let mut rng = rng_for(seed, index);
    let (angle, scale) = match kind {
        Distortion::None | Distortion::T => (0.0f32, 1.0f32),
        Distortion::R => (rng.gen_range(-90.0f32..=90.0).to_radians(), 1.0),
        Distortion::Rts => (
            rng.gen_range(-45.0f32..=45.0).to_radians(),
            rng.gen_range(0.7f32..=1.2),
        ),
    };
    let src = split.image(index);
    let (h, w) = (split.rows, split.cols);
    let mut canvas = vec![0u8; side * side];

    if clutter > 0 && split.len() > 1 {
        for _ in 0..clutter {
            let mut other = rng.gen_range(0..split.len() - 1);
            if other >= index {
                other += 1;
            }
            let o = split.image(other);
            let (sy, sx) = (
                rng.gen_range(0..=h - CLUTTER_SIDE),
                rng.gen_range(0..=w - CLUTTER_SIDE),
            );
            let (dy, dx) = (
                rng.gen_range(0..=side - CLUTTER_SIDE),
                rng.gen_range(0..=side - CLUTTER_SIDE),
            );
            for y in 0..CLUTTER_SIDE {
                for x in 0..CLUTTER_SIDE {
                    let d = &mut canvas[(dy + y) * side + dx + x];
                    *d = (*d).max(o[(sy + y) * w + sx + x]);
                }
            }
        }
    }

    if kind == Distortion::None {
        for (d, &s) in canvas.iter_mut().zip(src) {
            *d = (*d).max(s);
        }
        return (canvas, src.iter().map(|&p| p as u64).sum());
    }

    // Render rotated and scaled on the scratch canvas; shrink if the ink would not fit the canvas.
    let mut scale = scale;
    let (scratch, (y0, x0, y1, x1)) = loop {
        let s = warp(src, h, w, angle, scale);
        let bbox = ink_bbox(&s, SCRATCH).unwrap_or((0, 0, SCRATCH - 1, SCRATCH - 1));
        let extent = (bbox.2 - bbox.0 + 1).max(bbox.3 - bbox.1 + 1);
        if extent <= side {
            break (s, bbox);
        }
        scale *= side as f32 / extent as f32 * 0.999;
    };
    let (bh, bw) = (y1 - y0 + 1, x1 - x0 + 1);
    let (oy, ox) = match kind {
        // R keeps the digit centred, like MNIST itself.
        Distortion::R => ((side - bh) / 2, (side - bw) / 2),
        _ => (rng.gen_range(0..=side - bh), rng.gen_range(0..=side - bw)),
    };
    let mut ink = 0u64;
    for y in 0..bh {
        for x in 0..bw {
            let v = scratch[(y0 + y) * SCRATCH + x0 + x];
            ink += v as u64;
            let d = &mut canvas[(oy + y) * side + ox + x];
            *d = (*d).max(v);
        }
    }
    (canvas, ink)
}

/// Rotates by `angle` and scales by `scale` about the image centre, onto the SCRATCH canvas centre,
/// with bilinear interpolation (inverse mapping, zeros outside the source).
fn warp(src: &[u8], h: usize, w: usize, angle: f32, scale: f32) -> Vec<u8> {
    let (sin, cos) = angle.sin_cos();
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    let c = (SCRATCH as f32 - 1.0) / 2.0;
    let at = |y: isize, x: isize| -> f32 {
        if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
            0.0
        } else {
            src[y as usize * w + x as usize] as f32
        }
    };
    let mut out = vec![0u8; SCRATCH * SCRATCH];
    for oy in 0..SCRATCH {
        for ox in 0..SCRATCH {
            let (dx, dy) = ((ox as f32 - c) / scale, (oy as f32 - c) / scale);
            // Inverse rotation.
            let sx = cos * dx + sin * dy + cx;
            let sy = -sin * dx + cos * dy + cy;
            let (fx, fy) = (sx.floor(), sy.floor());
            let (ax, ay) = (sx - fx, sy - fy);
            let (ix, iy) = (fx as isize, fy as isize);
            let v = at(iy, ix) * (1.0 - ax) * (1.0 - ay)
                + at(iy, ix + 1) * ax * (1.0 - ay)
                + at(iy + 1, ix) * (1.0 - ax) * ay
                + at(iy + 1, ix + 1) * ax * ay;
            out[oy * SCRATCH + ox] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Bounding box (y0, x0, y1, x1), inclusive, of the non-zero pixels of a square image.
fn ink_bbox(img: &[u8], side: usize) -> Option<(usize, usize, usize, usize)> {
    let mut b: Option<(usize, usize, usize, usize)> = None;
    for (i, &v) in img.iter().enumerate() {
        if v > 0 {
            let (y, x) = (i / side, i % side);
            b = Some(match b {
                None => (y, x, y, x),
                Some((y0, x0, y1, x1)) => (y0.min(y), x0.min(x), y1.max(y), x1.max(x)),
            });
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few synthetic "digits": strokes that reach the 20×20 box's corners, the worst case for
    /// rotations.
    fn toy_split() -> MnistSplit {
        let mut images = vec![0u8; 3 * 28 * 28];
        for k in 0..20 {
            images[(4 + k) * 28 + 4 + k] = 255; // diagonal, corner to corner
            images[28 * 28 + (4 + k) * 28 + 14] = 200; // vertical bar
            images[2 * 28 * 28 + 4 * 28 + 4 + k] = 255; // top edge
            images[2 * 28 * 28 + 23 * 28 + 4 + k] = 255; // bottom edge
        }
        MnistSplit {
            images,
            labels: vec![1, 7, 3],
            rows: 28,
            cols: 28,
        }
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let s = toy_split();
        for kind in [Distortion::R, Distortion::Rts, Distortion::T] {
            let a = distort_split(&s, kind, 2, 7);
            assert_eq!(a.images, distort_split(&s, kind, 2, 7).images);
            assert_ne!(a.images, distort_split(&s, kind, 2, 8).images);
            assert_eq!((a.rows, a.cols), (kind.canvas(), kind.canvas()));
            assert_eq!(a.labels, s.labels);
        }
    }

    #[test]
    fn digits_stay_inside_the_canvas() {
        let s = toy_split();
        for kind in [Distortion::R, Distortion::Rts, Distortion::T] {
            for seed in 0..200 {
                for i in 0..s.len() {
                    let (canvas, ink_rendered) = distort_one(&s, i, kind, 0, seed);
                    let on_canvas: u64 = canvas.iter().map(|&p| p as u64).sum();
                    assert_eq!(
                        on_canvas, ink_rendered,
                        "{kind:?} seed {seed} image {i}: ink was cut off"
                    );
                    assert!(on_canvas > 0);
                }
            }
        }
        // Translation moves whole pixels: the ink is exactly the original's.
        let (canvas, _) = distort_one(&s, 0, Distortion::T, 0, 3);
        assert_eq!(canvas.iter().map(|&p| p as u64).sum::<u64>(), 20 * 255);
    }

    #[test]
    fn clutter_adds_ink_and_names_are_parsed() {
        let s = toy_split();
        let plain: u64 = distort_one(&s, 0, Distortion::T, 0, 1)
            .0
            .iter()
            .map(|&p| p as u64)
            .sum();
        let cluttered: u64 = distort_one(&s, 0, Distortion::T, 8, 1)
            .0
            .iter()
            .map(|&p| p as u64)
            .sum();
        assert!(cluttered > plain, "{cluttered} vs {plain}");
        // The digit keeps all its ink (clutter is drawn under it with max), and in most seeds
        // some pieces land on the other digits' ink and add to it.
        let ink = |c: Vec<u8>| c.iter().map(|&p| p as u64).sum::<u64>();
        let mut added = 0;
        for seed in 0..20 {
            let with = ink(distort_one(&s, 0, Distortion::T, 8, seed).0);
            let without = ink(distort_one(&s, 0, Distortion::T, 0, seed).0);
            assert!(with >= without, "seed {seed}: {with} < {without}");
            added += (with > without) as usize;
        }
        assert!(added >= 10, "clutter added ink in {added} of 20 seeds");
        assert_eq!("RTS".parse::<Distortion>(), Ok(Distortion::Rts));
        assert!("swirl".parse::<Distortion>().unwrap_err().contains("swirl"));
    }
}
