//! `grid_sample(input [N,C,H,W], grid [N,Ho,Wo,2], bilinear, padding, align_corners)
//! -> [N,C,Ho,Wo]`, with PyTorch's CPU kernel's arithmetic (`GridSamplerKernel.cpp`): the source
//! coordinate is `coord·scale + offset`, bilinear weights are products of `1 − frac` and `frac`,
//! out-of-image corners contribute zero, border/reflection clip (and reflect) the coordinate, and
//! the gradient through a clip is zero where the clip is active.

use std::str::FromStr;

use dfdx::prelude::*;
use dfdx::tensor::Merge;
use rayon::prelude::*;

use crate::op::{apply, Buf, CustomOp, Input, OpDevice, OpError, Real};
use crate::Dyn4;

/// What a sample outside the image reads, as PyTorch's `padding_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Zeros,
    Border,
    Reflection,
}

impl FromStr for Padding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "zeros" => Ok(Padding::Zeros),
            "border" => Ok(Padding::Border),
            "reflection" => Ok(Padding::Reflection),
            o => Err(format!(
                "unknown padding mode '{o}': expected zeros, border or reflection"
            )),
        }
    }
}

/// `torch.nn.functional.grid_sample(input, grid, mode="bilinear", padding_mode, align_corners)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridSample {
    pub padding: Padding,
    pub align_corners: bool,
}

/// Where one grid point samples: its four corners' flat indices (or `usize::MAX` when outside the
/// image) and weights, the fractional parts, and d(source coordinate)/d(grid coordinate).
#[derive(Clone, Copy)]
struct Sample<E> {
    idx: [usize; 4],
    wt: [E; 4],
    frac: [E; 2],
    dsrc: [E; 2],
}

const OUT: usize = usize::MAX;

impl GridSample {
    /// Source coordinate of a normalised grid coordinate along an axis of `size` pixels, and its
    /// derivative.
    #[inline]
    fn source<E: Real>(&self, coord: E, size: usize) -> (E, E) {
        let two = E::of(2.0);
        let sz = E::of(size as f64);
        let scale = if self.align_corners {
            (sz - E::one()) / two
        } else {
            sz / two
        };
        let offset = (sz - E::one()) / two;
        let x = coord * scale + offset;
        match self.padding {
            Padding::Zeros => (x, scale),
            Padding::Border => {
                let (c, g) = clip(x, size);
                (c, scale * g)
            }
            Padding::Reflection => {
                let (r, gr) = if self.align_corners {
                    reflect(x, E::zero(), two * (sz - E::one()))
                } else {
                    reflect(x, -E::one(), two * sz - E::one())
                };
                let (c, gc) = clip(r, size);
                (c, scale * gr * gc)
            }
        }
    }

    #[inline]
    fn sample<E: Real>(&self, gx: E, gy: E, h: usize, w: usize) -> Sample<E> {
        let (x, dx) = self.source(gx, w);
        let (y, dy) = self.source(gy, h);
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (x - x0, y - y0);
        let (ex, sy) = (E::one() - fx, E::one() - fy);
        let wt = [sy * ex, sy * fx, fy * ex, fy * fx];
        let mut idx = [OUT; 4];
        // NaN or huge coordinates fall through every bounds test, so they read zeros.
        let inside = |v: E, n: usize| v >= E::zero() && v < E::of(n as f64);
        let (x1, y1) = (x0 + E::one(), y0 + E::one());
        for (k, (cy, cx)) in [(y0, x0), (y0, x1), (y1, x0), (y1, x1)]
            .into_iter()
            .enumerate()
        {
            if inside(cx, w) && inside(cy, h) {
                idx[k] = cy.to_usize().unwrap_or(0) * w + cx.to_usize().unwrap_or(0);
            }
        }
        Sample {
            idx,
            wt,
            frac: [fx, fy],
            dsrc: [dx, dy],
        }
    }
}

/// PyTorch's `clip_coordinates_set_grad`.
#[inline]
fn clip<E: Real>(x: E, size: usize) -> (E, E) {
    let max = E::of(size as f64 - 1.0);
    if x <= E::zero() {
        (E::zero(), E::zero())
    } else if x >= max {
        (max, E::zero())
    } else {
        (x, E::one())
    }
}

/// PyTorch's `reflect_coordinates_set_grad`: reflects `x` into `[low/2, high/2]`.
#[inline]
fn reflect<E: Real>(x: E, twice_low: E, twice_high: E) -> (E, E) {
    if twice_low == twice_high {
        return (E::zero(), E::zero());
    }
    let two = E::of(2.0);
    let min = twice_low / two;
    let span = (twice_high - twice_low) / two;
    let mut v = x - min;
    let mut g = E::one();
    if v < E::zero() {
        g = -E::one();
        v = -v;
    }
    let extra = v % span;
    let flips = (v / span).floor();
    if flips % two == E::zero() {
        (extra + min, g)
    } else {
        (span - extra + min, -g)
    }
}

/// Splits an optional gradient into one optional slice per image.
pub(crate) fn per_image<E>(g: Option<&mut [E]>, n: usize, len: usize) -> Vec<Option<&mut [E]>> {
    match g {
        Some(g) => g.chunks_mut(len).map(Some).collect(),
        None => (0..n).map(|_| None).collect(),
    }
}

fn dims4(d: &[usize], what: &str) -> Result<[usize; 4], OpError> {
    <[usize; 4]>::try_from(d).map_err(|_| {
        OpError::shape(
            "grid_sample",
            format!("{what} must have 4 dimensions, got {d:?}"),
        )
    })
}

impl<E: Real> CustomOp<E> for GridSample {
    const NAME: &'static str = "grid_sample";

    fn out_dims(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, OpError> {
        let [x, g] = inputs else {
            return Err(OpError::shape("grid_sample", "expects input and grid"));
        };
        let [n, c, h, w] = dims4(x, "input")?;
        let [gn, ho, wo, two] = dims4(g, "grid")?;
        if gn != n {
            return Err(OpError::shape(
                "grid_sample",
                format!("grid batch {gn} ≠ input batch {n}"),
            ));
        }
        if two != 2 {
            return Err(OpError::shape(
                "grid_sample",
                format!("grid last dimension must be 2 (x, y), got {two}"),
            ));
        }
        if h == 0 || w == 0 {
            return Err(OpError::shape(
                "grid_sample",
                format!("empty input image {h}×{w}"),
            ));
        }
        Ok(vec![n, c, ho, wo])
    }

    fn cpu_fwd(&self, inputs: &[Buf<E>], out: &mut [E]) {
        let [_, c, h, w] = dims4(inputs[0].dims, "input").expect("checked");
        let p = inputs[1].dims[1] * inputs[1].dims[2];
        let (x, grid) = (inputs[0].data, inputs[1].data);
        out.par_chunks_mut(c * p)
            .zip(x.par_chunks(c * h * w))
            .zip(grid.par_chunks(p * 2))
            .for_each(|((o, x), g)| {
                for (q, gq) in g.chunks_exact(2).enumerate() {
                    let s = self.sample(gq[0], gq[1], h, w);
                    for ch in 0..c {
                        let plane = &x[ch * h * w..(ch + 1) * h * w];
                        let mut v = E::zero();
                        for k in 0..4 {
                            if s.idx[k] != OUT {
                                v += plane[s.idx[k]] * s.wt[k];
                            }
                        }
                        o[ch * p + q] = v;
                    }
                }
            });
    }

    fn cpu_bwd(&self, inputs: &[Buf<E>], grad_out: &[E], grads: &mut [Option<&mut [E]>]) {
        let [n, c, h, w] = dims4(inputs[0].dims, "input").expect("checked");
        let p = inputs[1].dims[1] * inputs[1].dims[2];
        let (x, grid) = (inputs[0].data, inputs[1].data);
        let (gi, gg) = match grads {
            [a, b] => (a.as_deref_mut(), b.as_deref_mut()),
            _ => unreachable!("two inputs"),
        };
        let (gi, gg) = (per_image(gi, n, c * h * w), per_image(gg, n, p * 2));
        gi.into_par_iter()
            .zip(gg)
            .enumerate()
            .for_each(|(b, (mut gi, mut gg))| {
                let x = &x[b * c * h * w..(b + 1) * c * h * w];
                let g = &grid[b * p * 2..(b + 1) * p * 2];
                let go = &grad_out[b * c * p..(b + 1) * c * p];
                for q in 0..p {
                    let s = self.sample(g[2 * q], g[2 * q + 1], h, w);
                    let (mut dgx, mut dgy) = (E::zero(), E::zero());
                    for ch in 0..c {
                        let gout = go[ch * p + q];
                        if let Some(gi) = gi.as_deref_mut() {
                            let plane = &mut gi[ch * h * w..(ch + 1) * h * w];
                            for k in 0..4 {
                                if s.idx[k] != OUT {
                                    plane[s.idx[k]] += s.wt[k] * gout;
                                }
                            }
                        }
                        if gg.is_some() {
                            let plane = &x[ch * h * w..(ch + 1) * h * w];
                            let v = |k: usize| {
                                if s.idx[k] != OUT {
                                    plane[s.idx[k]]
                                } else {
                                    E::zero()
                                }
                            };
                            let (nw, ne, sw, se) = (v(0), v(1), v(2), v(3));
                            let [fx, fy] = s.frac;
                            dgx += ((ne - nw) * (E::one() - fy) + (se - sw) * fy) * gout;
                            dgy += ((sw - nw) * (E::one() - fx) + (se - ne) * fx) * gout;
                        }
                    }
                    if let Some(gg) = gg.as_deref_mut() {
                        gg[2 * q] += dgx * s.dsrc[0];
                        gg[2 * q + 1] += dgy * s.dsrc[1];
                    }
                }
            });
    }
}

/// `grid_sample(input, grid, padding, align_corners)` (bilinear). The output carries the grid's
/// tape, merged with the input's: the input's gradient is computed only when it has a tape of its
/// own (the images fed to an STN usually have none).
pub fn grid_sample<S1, S2, E, D, T1, T2>(
    input: Tensor<S1, E, D, T1>,
    grid: Tensor<S2, E, D, T2>,
    padding: Padding,
    align_corners: bool,
) -> Result<Tensor<Dyn4, E, D, T2>, OpError>
where
    S1: Shape,
    S2: Shape,
    E: Real,
    D: OpDevice<E>,
    T1: Tape<E, D>,
    T2: Tape<E, D> + Merge<T1>,
{
    let dev = grid.device().clone();
    let (input, t1) = Input::new("grid_sample", input)?;
    let (grid, t2) = Input::new("grid_sample", grid)?;
    apply(
        GridSample {
            padding,
            align_corners,
        },
        &dev,
        vec![input, grid],
        t2.merge(t1),
    )
}
