//! Distorted MNIST as in the spatial-transformer paper (Jaderberg et al., 2015, §4.1):
//!
//! * `R`   — rotated by a random angle in ±90°, on the 28×28 canvas;
//! * `RTS` — rotated ±45°, scaled 0.7–1.2 and placed at a random position on a 42×42 canvas;
//! * `T`   — placed at a random position on a 60×60 canvas;
//! * `P`   — projective: each of the image's four corners moved by a normal offset
//!   (σ = [`P_CORNER_SIGMA`] px per axis, clamped to ±2σ), then scaled by 0.75–1.0 about the
//!   centre, on the 28×28 canvas;
//! * `E`   — elastic: scaled by 0.75–1.0, then a thin-plate-spline warp whose 4×4 control points
//!   (a regular grid over the image) move by normal offsets (σ = [`E_POINT_SIGMA`] px per axis);
//!
//! The paper gives P's scale range and that its corners move by normal offsets, and that E is a
//! random elastic warp; the constants are ours (P: σ = 3.5 px, clamped; E: a 4×4 TPS, σ = 1.5
//! px), chosen so that the digits stay readable — written here and in docs/paper-table.md, with a
//! contact sheet of each.
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
    /// Scaled 0.75–1.0 and projected: the corners moved at random (28×28).
    P,
    /// Scaled 0.75–1.0 and elastically warped by a random thin-plate spline (28×28).
    E,
}

/// P's corner offsets: σ in pixels, per axis (each clamped to ±2σ).
pub const P_CORNER_SIGMA: f32 = 3.5;
/// E's control-point offsets: σ in pixels, per axis (a 4×4 grid of control points).
pub const E_POINT_SIGMA: f32 = 1.5;
/// P's and E's scale range.
const PE_SCALE: (f32, f32) = (0.75, 1.0);

impl FromStr for Distortion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Distortion::None),
            "r" => Ok(Distortion::R),
            "rts" => Ok(Distortion::Rts),
            "t" => Ok(Distortion::T),
            "p" => Ok(Distortion::P),
            "e" => Ok(Distortion::E),
            other => Err(format!(
                "unknown distortion '{other}': expected none, r, rts, t, p or e"
            )),
        }
    }
}

impl Distortion {
    /// Side of the square canvas the distorted digits are drawn on.
    pub fn canvas(self) -> usize {
        match self {
            Distortion::None | Distortion::R | Distortion::P | Distortion::E => 28,
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
    if matches!(kind, Distortion::P | Distortion::E) {
        let canvas = warp_pe(split, index, kind, &mut rng);
        let ink = canvas.iter().map(|&p| p as u64).sum();
        return (canvas, ink);
    }
    let (angle, scale) = match kind {
        Distortion::None | Distortion::T | Distortion::P | Distortion::E => (0.0f32, 1.0f32),
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

/// A standard normal draw (Box–Muller; two uniforms, so every platform draws the same).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Solves `a x = b` in place (`a` n×n row-major, `b` n×m: `m` right-hand sides), Gaussian
/// elimination with partial pivoting; false if `a` is singular.
fn solve(a: &mut [f64], n: usize, b: &mut [f64], m: usize) -> bool {
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
            .expect("rows left");
        if a[piv * n + col].abs() < 1e-12 {
            return false;
        }
        for j in 0..n {
            a.swap(col * n + j, piv * n + j);
        }
        for j in 0..m {
            b.swap(col * m + j, piv * m + j);
        }
        for r in col + 1..n {
            let f = a[r * n + col] / a[col * n + col];
            for j in col..n {
                a[r * n + j] -= f * a[col * n + j];
            }
            for j in 0..m {
                b[r * m + j] -= f * b[col * m + j];
            }
        }
    }
    for col in (0..n).rev() {
        for j in 0..m {
            let mut v = b[col * m + j];
            for k in col + 1..n {
                v -= a[col * n + k] * b[k * m + j];
            }
            b[col * m + j] = v / a[col * n + col];
        }
    }
    true
}

/// The homography (8 values, h33 = 1) taking each `from[i]` to `to[i]` (4 point pairs).
fn homography(from: &[(f64, f64); 4], to: &[(f64, f64); 4]) -> Option<[f64; 8]> {
    let mut a = vec![0f64; 64];
    let mut b = vec![0f64; 8];
    for (i, (&(x, y), &(u, v))) in from.iter().zip(to).enumerate() {
        let r0 = [x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y];
        let r1 = [0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y];
        a[16 * i..16 * i + 8].copy_from_slice(&r0);
        a[16 * i + 8..16 * i + 16].copy_from_slice(&r1);
        b[2 * i] = u;
        b[2 * i + 1] = v;
    }
    solve(&mut a, 8, &mut b, 1).then(|| b.try_into().expect("8 values"))
}

/// P and E on the 28×28 canvas: every output pixel's source point, the source read bilinearly
/// (zeros outside). The warps are built as output → source maps (what rendering needs): P's is
/// the homography taking the moved corners back to the image's corners; E's the thin-plate
/// spline through the moved control points, after the inverse of the scale about the centre.
fn warp_pe(split: &MnistSplit, index: usize, kind: Distortion, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let src = split.image(index);
    let (h, w) = (split.rows, split.cols);
    let side = kind.canvas();
    let scale = rng.gen_range(PE_SCALE.0..=PE_SCALE.1) as f64;
    // Pixel-centre coordinates, the centre of the canvas at (c, c).
    let c = (side as f64 - 1.0) / 2.0;
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    // Output point → source point.
    let map: Box<dyn Fn(f64, f64) -> (f64, f64)> = match kind {
        Distortion::P => {
            // The image's corners (pixel edges), scaled about the centre, each moved at random.
            let corners = [
                (-0.5, -0.5),
                (w as f64 - 0.5, -0.5),
                (w as f64 - 0.5, h as f64 - 0.5),
                (-0.5, h as f64 - 0.5),
            ];
            // Each offset is clamped to ±2σ, so that no two corners cross (2·2σ < the side).
            let moved = corners.map(|(x, y)| {
                let s = P_CORNER_SIGMA as f64;
                let mut d = || (normal(rng) as f64).clamp(-2.0, 2.0) * s;
                let (dx, dy) = (d(), d());
                (c + (x - cx + dx) * scale, c + (y - cy + dy) * scale)
            });
            match homography(&moved, &corners) {
                Some(hm) => Box::new(move |x, y| {
                    let d = hm[6] * x + hm[7] * y + 1.0;
                    if d.abs() < 1e-9 {
                        return (f64::NAN, f64::NAN);
                    }
                    (
                        (hm[0] * x + hm[1] * y + hm[2]) / d,
                        (hm[3] * x + hm[4] * y + hm[5]) / d,
                    )
                }),
                // Degenerate corners (probability ~0): the scaled digit alone.
                None => Box::new(move |x, y| (cx + (x - c) / scale, cy + (y - c) / scale)),
            }
        }
        _ => {
            // A 4×4 control grid over the canvas; the spline maps each control point to it plus
            // a normal offset (in canvas pixels), then the scale is undone about the centre.
            const G: usize = 4;
            let k = G * G;
            let at = |i: usize| -0.5 + side as f64 * i as f64 / (G - 1) as f64;
            let ctrl: Vec<(f64, f64)> = (0..G)
                .flat_map(|i| (0..G).map(move |j| (at(j), at(i))))
                .collect();
            let u = |r2: f64| if r2 <= 0.0 { 0.0 } else { r2 * r2.ln() };
            let n = k + 3;
            let mut a = vec![0f64; n * n];
            let mut b = vec![0f64; n * 2];
            let s = E_POINT_SIGMA as f64;
            for (i, &(xi, yi)) in ctrl.iter().enumerate() {
                for (j, &(xj, yj)) in ctrl.iter().enumerate() {
                    a[i * n + j] = u((xi - xj).powi(2) + (yi - yj).powi(2));
                }
                for (q, v) in [1.0, xi, yi].into_iter().enumerate() {
                    a[i * n + k + q] = v;
                    a[(k + q) * n + i] = v;
                }
                b[2 * i] = xi + s * normal(rng) as f64;
                b[2 * i + 1] = yi + s * normal(rng) as f64;
            }
            let ok = solve(&mut a, n, &mut b, 2);
            Box::new(move |x, y| {
                let (mut sx, mut sy) = (x, y);
                if ok {
                    let (mut fx, mut fy) =
                        (b[2 * k] + b[2 * (k + 1)] * x + b[2 * (k + 2)] * y, 0.0);
                    fy += b[2 * k + 1] + b[2 * (k + 1) + 1] * x + b[2 * (k + 2) + 1] * y;
                    for (i, &(xi, yi)) in ctrl.iter().enumerate() {
                        let r = u((x - xi).powi(2) + (y - yi).powi(2));
                        fx += b[2 * i] * r;
                        fy += b[2 * i + 1] * r;
                    }
                    (sx, sy) = (fx, fy);
                }
                (cx + (sx - c) / scale, cy + (sy - c) / scale)
            })
        }
    };
    let at = |y: isize, x: isize| -> f64 {
        if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
            0.0
        } else {
            src[y as usize * w + x as usize] as f64
        }
    };
    let mut out = vec![0u8; side * side];
    for oy in 0..side {
        for ox in 0..side {
            let (sx, sy) = map(ox as f64, oy as f64);
            if !(sx.is_finite() && sy.is_finite()) {
                continue;
            }
            let (fx, fy) = (sx.floor(), sy.floor());
            let (ax, ay) = (sx - fx, sy - fy);
            let (ix, iy) = (fx as isize, fy as isize);
            let v = at(iy, ix) * (1.0 - ax) * (1.0 - ay)
                + at(iy, ix + 1) * ax * (1.0 - ay)
                + at(iy + 1, ix) * (1.0 - ax) * ay
                + at(iy + 1, ix + 1) * ax * ay;
            out[oy * side + ox] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
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
        for kind in [
            Distortion::R,
            Distortion::Rts,
            Distortion::T,
            Distortion::P,
            Distortion::E,
        ] {
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
        assert_eq!("p".parse::<Distortion>(), Ok(Distortion::P));
        assert_eq!("E".parse::<Distortion>(), Ok(Distortion::E));
        assert!("swirl".parse::<Distortion>().unwrap_err().contains("swirl"));
    }

    #[test]
    fn projective_and_elastic_warps_move_the_digit_but_keep_most_of_it() {
        // A thick "digit": a filled 12×12 square (one-pixel strokes lose much to resampling).
        let mut images = vec![0u8; 28 * 28];
        for y in 8..20 {
            for x in 8..20 {
                images[y * 28 + x] = 200;
            }
        }
        let s = MnistSplit {
            images,
            labels: vec![4],
            rows: 28,
            cols: 28,
        };
        for kind in [Distortion::P, Distortion::E] {
            let mut moved = 0;
            for seed in 0..50 {
                for i in 0..s.len() {
                    let (canvas, ink) = distort_one(&s, i, kind, 0, seed);
                    assert_eq!(canvas.len(), 28 * 28);
                    let orig: u64 = s.image(i).iter().map(|&p| p as u64).sum();
                    // Scaled by 0.75–1 (area 0.56–1) and warped, the ink stays within bounds.
                    assert!(
                        ink > orig / 4 && ink < orig * 2,
                        "{kind:?} seed {seed} image {i}: {ink} of {orig}"
                    );
                    moved += (canvas != s.image(i)) as usize;
                }
            }
            assert_eq!(moved, 50, "{kind:?}: every sample is warped");
        }
    }

    #[test]
    fn the_homography_solver_maps_the_corners() {
        let from = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)];
        let to = [(0.1, -0.2), (1.3, 0.1), (0.9, 1.2), (-0.2, 0.8)];
        let h = homography(&from, &to).unwrap();
        for (&(x, y), &(u, v)) in from.iter().zip(&to) {
            let d = h[6] * x + h[7] * y + 1.0;
            let (pu, pv) = (
                (h[0] * x + h[1] * y + h[2]) / d,
                (h[3] * x + h[4] * y + h[5]) / d,
            );
            assert!((pu - u).abs() < 1e-12 && (pv - v).abs() < 1e-12);
        }
        // Collinear points have no homography.
        let line = [(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)];
        assert!(homography(&line, &to).is_none());
    }
}
