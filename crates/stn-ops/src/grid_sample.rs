//! `grid_sample(input [N,C,H,W], grid [N,Ho,Wo,2], bilinear, padding, align_corners)
//! -> [N,C,Ho,Wo]`, with PyTorch's CPU kernel's arithmetic (`GridSamplerKernel.cpp`): the source
//! coordinate is `coord·scale + offset`, bilinear weights are products of `1 − frac` and `frac`,
//! out-of-image corners contribute zero, border/reflection clip (and reflect) the coordinate, and
//! the gradient through a clip is zero where the clip is active.

pub(crate) mod kernels;
mod modes;

pub use modes::Mode;

use std::str::FromStr;

use dfdx::prelude::*;
use dfdx::tensor::Merge;
use rayon::prelude::*;

use crate::isa::Isa;
use crate::op::{
    apply, per_image, AxisMap, Buf, CustomOp, Framed8, Input, OpDevice, OpError, Real,
};
use crate::simd::{Vector, V8};
use crate::Dyn4;

#[cfg(feature = "cuda")]
use crate::cuda::{launch, CudaBuf, CudaKernels};
#[cfg(feature = "cuda")]
use cudarc::driver::CudaSlice;

/// What a sample outside the image reads, as PyTorch's `padding_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Zeros outside the image.
    Zeros,
    /// The nearest border pixel.
    Border,
    /// The image mirrored at its borders.
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

/// `torch.nn.functional.grid_sample(input, grid, mode, padding_mode, align_corners)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridSample {
    /// How samples are interpolated.
    pub mode: Mode,
    /// What is sampled outside the image.
    pub padding: Padding,
    /// PyTorch's `align_corners`.
    pub align_corners: bool,
}

/// Points per vector: the kernels work on 8 grid points at once so that the coordinate and weight
/// arithmetic vectorises (PyTorch's CPU kernel does the same with its `Vectorized` type).
const LANES: usize = 8;

/// Where 8 grid points sample: per corner (nw, ne, sw, se) the flat indices (clamped to 0 outside
/// the image) with a 0/1 mask, the bilinear weights (already masked); the fractional parts; and
/// d(source coordinate)/d(grid coordinate). Branch-free: most samples of a random theta fall
/// outside the image, and a branch per corner would mispredict half the time.
struct Sample8<E> {
    idx: [[u32; LANES]; 4],
    mask: [[E; LANES]; 4],
    wt: [[E; LANES]; 4],
    fx: [E; LANES],
    fy: [E; LANES],
    dx: [E; LANES],
    dy: [E; LANES],
}

/// Unnormalisation along one axis: `source = coord·scale + offset`, then padding.
#[derive(Clone, Copy)]
pub(crate) struct Axis<E> {
    scale: E,
    offset: E,
    size: usize,
    size_e: E,
}

impl<E: Real> Axis<E> {
    pub(crate) fn new(size: usize, align_corners: bool) -> Self {
        let sz = size as f64;
        let scale = if align_corners {
            (sz - 1.0) / 2.0
        } else {
            sz / 2.0
        };
        Axis {
            scale: E::of(scale),
            offset: E::of((sz - 1.0) / 2.0),
            size,
            size_e: E::of(sz),
        }
    }
}

impl GridSample {
    /// Source coordinate of a normalised grid coordinate, and its derivative.
    #[inline(always)]
    fn source<E: Real>(&self, coord: E, ax: &Axis<E>) -> (E, E) {
        let x = coord * ax.scale + ax.offset;
        match self.padding {
            Padding::Zeros => (x, ax.scale),
            Padding::Border => {
                let (c, g) = clip(x, ax.size_e);
                (c, ax.scale * g)
            }
            Padding::Reflection => {
                let two = E::of(2.0);
                let (r, gr) = if self.align_corners {
                    reflect(x, E::zero(), two * (ax.size_e - E::one()))
                } else {
                    reflect(x, -E::one(), two * ax.size_e - E::one())
                };
                let (c, gc) = clip(r, ax.size_e);
                (c, ax.scale * gr * gc)
            }
        }
    }

    /// The samples of grid points `q0..q0+8` of one image's grid (`g` holds x, y pairs); lanes past
    /// the end of the grid repeat its last point (callers ignore them).
    #[inline(always)]
    fn sample8<E: Real>(&self, g: &[E], q0: usize, ax: &Axis<E>, ay: &Axis<E>) -> Sample8<E> {
        let last = g.len() / 2 - 1;
        // The grid's (x, y) pairs of these points; a chunk past the end repeats the last point.
        let mut gx = [E::zero(); LANES];
        let mut gy = [E::zero(); LANES];
        if q0 + LANES <= last + 1 {
            let pairs: &[E; 2 * LANES] =
                g[2 * q0..2 * q0 + 2 * LANES].try_into().expect("16 values");
            for l in 0..LANES {
                gx[l] = pairs[2 * l];
                gy[l] = pairs[2 * l + 1];
            }
        } else {
            for l in 0..LANES {
                let q = (q0 + l).min(last);
                gx[l] = g[2 * q];
                gy[l] = g[2 * q + 1];
            }
        }
        let mut x = [E::zero(); LANES];
        let mut y = [E::zero(); LANES];
        let mut dx = [E::zero(); LANES];
        let mut dy = [E::zero(); LANES];
        if self.padding == Padding::Zeros {
            // The common case, branch-free: an affine map of the coordinate.
            for l in 0..LANES {
                x[l] = gx[l] * ax.scale + ax.offset;
                y[l] = gy[l] * ay.scale + ay.offset;
                dx[l] = ax.scale;
                dy[l] = ay.scale;
            }
        } else {
            for l in 0..LANES {
                (x[l], dx[l]) = self.source(gx[l], ax);
                (y[l], dy[l]) = self.source(gy[l], ay);
            }
        }
        let (w, h) = (ax.size as i32, ay.size as i32);
        let mut sm = Sample8 {
            idx: [[0; LANES]; 4],
            mask: [[E::zero(); LANES]; 4],
            wt: [[E::zero(); LANES]; 4],
            fx: [E::zero(); LANES],
            fy: [E::zero(); LANES],
            dx,
            dy,
        };
        // Simple lane loops, one concern each, so LLVM vectorises them.
        let mut ix = [0i32; LANES];
        let mut iy = [0i32; LANES];
        for l in 0..LANES {
            let (x0, y0) = (x[l].floor(), y[l].floor());
            sm.fx[l] = x[l] - x0;
            sm.fy[l] = y[l] - y0;
            // Saturating casts send huge coordinates far outside, NaN to 0; a NaN coordinate then
            // has NaN weights, which the mask below zeroes, so it reads zeros like PyTorch.
            ix[l] = E::to_i32_sat(x0);
            iy[l] = E::to_i32_sat(y0);
        }
        for l in 0..LANES {
            let ok = !(x[l].is_nan() || y[l].is_nan());
            let inx0 = ok && (ix[l] as u32) < w as u32;
            let inx1 = ok && (ix[l].wrapping_add(1) as u32) < w as u32;
            let iny0 = ok && (iy[l] as u32) < h as u32;
            let iny1 = ok && (iy[l].wrapping_add(1) as u32) < h as u32;
            let m = |b: bool| if b { E::one() } else { E::zero() };
            sm.mask[0][l] = m(iny0 && inx0);
            sm.mask[1][l] = m(iny0 && inx1);
            sm.mask[2][l] = m(iny1 && inx0);
            sm.mask[3][l] = m(iny1 && inx1);
            // Clamped into the image: an outside corner reads (and writes) pixel 0 with weight 0.
            let cx0 = ix[l].clamp(0, w - 1);
            let cx1 = ix[l].saturating_add(1).clamp(0, w - 1);
            let cy0 = iy[l].clamp(0, h - 1);
            let cy1 = iy[l].saturating_add(1).clamp(0, h - 1);
            sm.idx[0][l] = (cy0 * w + cx0) as u32;
            sm.idx[1][l] = (cy0 * w + cx1) as u32;
            sm.idx[2][l] = (cy1 * w + cx0) as u32;
            sm.idx[3][l] = (cy1 * w + cx1) as u32;
        }
        for l in 0..LANES {
            let (fx, fy) = (sm.fx[l], sm.fy[l]);
            let (ex, sy) = (E::one() - fx, E::one() - fy);
            // Masks multiply NaN weights too: select instead of multiply.
            let sel = |m: E, v: E| if m == E::zero() { E::zero() } else { v };
            sm.wt[0][l] = sel(sm.mask[0][l], sy * ex);
            sm.wt[1][l] = sel(sm.mask[1][l], sy * fx);
            sm.wt[2][l] = sel(sm.mask[2][l], fy * ex);
            sm.wt[3][l] = sel(sm.mask[3][l], fy * fx);
        }
        sm
    }
}

/// PyTorch's `clip_coordinates_set_grad`.
#[inline(always)]
fn clip<E: Real>(x: E, size: E) -> (E, E) {
    let max = size - E::one();
    if x <= E::zero() {
        (E::zero(), E::zero())
    } else if x >= max {
        (max, E::zero())
    } else {
        (x, E::one())
    }
}

/// PyTorch's `reflect_coordinates_set_grad`: reflects `x` into `[low/2, high/2]`.
#[inline(always)]
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

fn dims4(d: &[usize], what: &str) -> Result<[usize; 4], OpError> {
    <[usize; 4]>::try_from(d).map_err(|_| {
        OpError::shape(
            "grid_sample",
            format!("{what} must have 4 dimensions, got {d:?}"),
        )
    })
}

impl GridSample {
    /// The sampler's forward of one image, `x [C, H, W]` (`h`, `w`) at `grid [P, 2]`, into `out
    /// [C, P]`, on the calling thread: what [`CustomOp::cpu_fwd`] runs per image, bit for bit.
    /// `scratch` is the caller's to keep between calls (the framed planes of some modes): a
    /// one-image caller (the fused forward) then allocates nothing per image, and no thread pool
    /// is entered.
    pub fn fwd_one<E: Real>(
        &self,
        x: &[E],
        [h, w]: [usize; 2],
        grid: &[E],
        scratch: &mut Vec<E>,
        out: &mut [E],
    ) {
        assert!(h * w > 0 && x.len().is_multiple_of(h * w) && grid.len().is_multiple_of(2));
        assert_eq!(
            out.len(),
            x.len() / (h * w) * (grid.len() / 2),
            "[C, P] outputs"
        );
        let (ax, ay) = (
            Axis::new(w, self.align_corners),
            Axis::new(h, self.align_corners),
        );
        self.fwd_image(x, grid, &ax, &ay, scratch, out)
    }

    /// One image's forward (`x [C, H, W]`, `g [P, 2]`, `o [C, P]`); `scratch` holds the framed
    /// planes where the mode uses them (kept zero where the frame is between calls).
    fn fwd_image<E: Real>(
        &self,
        x: &[E],
        g: &[E],
        ax: &Axis<E>,
        ay: &Axis<E>,
        scratch: &mut Vec<E>,
        o: &mut [E],
    ) {
        let (h, w) = (ay.size, ax.size);
        let c = x.len() / (h * w);
        let p = g.len() / 2;
        if self.modes_fast(false) {
            return self.modes_level(
                #[inline(always)]
                || self.modes_fast_fwd_image(x, g, ax, ay, scratch, o),
            );
        }
        if self.mode != Mode::Bilinear {
            return self.modes_level(
                #[inline(always)]
                || self.modes_fwd_image(x, g, ax, ay, o),
            );
        }
        if self.padding == Padding::Zeros {
            // Zero frames once; only the image's pixels are written later.
            if scratch.len() != paired_len(c, h, w) {
                scratch.clear();
                scratch.resize(paired_len(c, h, w), E::zero());
            }
            return crate::dispatch!(I => zeros_fwd_image::<E, I>(x, g, ax, ay, scratch, o));
        }
        crate::dispatch!(I => {
            for q0 in (0..p).step_by(LANES) {
                let s = self.sample8(g, q0, ax, ay);
                let lanes = (p - q0).min(LANES);
                for ch in 0..c {
                    let plane = &x[ch * h * w..(ch + 1) * h * w];
                    // ((p0·w0 + p1·w1) + p2·w2) + p3·w3, PyTorch's order (no fused multiply-add).
                    let corner =
                        |k: usize| V8::<E, I>::vmul(E::gather::<I>(plane, &s.idx[k]), V8::<E, I>::load(&s.wt[k]));
                    let v =
                        V8::<E, I>::vadd(V8::<E, I>::vadd(V8::<E, I>::vadd(corner(0), corner(1)), corner(2)), corner(3));
                    let v = V8::<E, I>::lanes(v);
                    let o = &mut o[ch * p + q0..];
                    if lanes == LANES {
                        o[..LANES].copy_from_slice(&v);
                    } else {
                        o[..lanes].copy_from_slice(&v[..lanes]);
                    }
                }
            }
        })
    }
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
        let (ax, ay) = (
            Axis::new(w, self.align_corners),
            Axis::new(h, self.align_corners),
        );
        out.par_chunks_mut(c * p)
            .zip(x.par_chunks(c * h * w))
            .zip(grid.par_chunks(p * 2))
            .for_each_init(Vec::new, |scratch, ((o, x), g)| {
                self.fwd_image(x, g, &ax, &ay, scratch, o)
            });
    }

    fn cpu_bwd(&self, inputs: &[Buf<E>], grad_out: &[E], grads: &mut [Option<&mut [E]>]) {
        let [n, c, h, w] = dims4(inputs[0].dims, "input").expect("checked");
        let p = inputs[1].dims[1] * inputs[1].dims[2];
        let (x, grid) = (inputs[0].data, inputs[1].data);
        let (ax, ay) = (
            Axis::new(w, self.align_corners),
            Axis::new(h, self.align_corners),
        );
        let [gi, gg] = grads else {
            unreachable!("two inputs")
        };
        if self.modes_fast(gi.is_some()) {
            let Some(gg) = gg.as_deref_mut() else {
                return;
            };
            return gg
                .par_chunks_mut(p * 2)
                .zip(x.par_chunks(c * h * w))
                .zip(grid.par_chunks(p * 2))
                .zip(grad_out.par_chunks(c * p))
                .for_each_init(Vec::new, |framed, (((gg, x), g), go)| {
                    self.modes_level(
                        #[inline(always)]
                        || self.modes_fast_bwd_grid_image(x, g, go, &ax, &ay, framed, gg),
                    )
                });
        }
        if self.mode != Mode::Bilinear {
            let (gi, gg) = (
                per_image(gi.as_deref_mut(), n, c * h * w),
                per_image(gg.as_deref_mut(), n, p * 2),
            );
            return gi
                .into_par_iter()
                .zip(gg)
                .enumerate()
                .for_each(|(b, (gi, gg))| {
                    self.modes_level(
                        #[inline(always)]
                        || {
                            self.modes_bwd_image(
                                &x[b * c * h * w..(b + 1) * c * h * w],
                                &grid[b * p * 2..(b + 1) * p * 2],
                                &grad_out[b * c * p..(b + 1) * c * p],
                                &ax,
                                &ay,
                                gi,
                                gg,
                            )
                        },
                    )
                });
        }
        if self.padding == Padding::Zeros && gi.is_none() {
            // The STN's case: only the grid's gradient (the images are data).
            let Some(gg) = gg.as_deref_mut() else {
                return;
            };
            return gg
                .par_chunks_mut(p * 2)
                .zip(x.par_chunks(c * h * w))
                .zip(grid.par_chunks(p * 2))
                .zip(grad_out.par_chunks(c * p))
                .for_each_init(
                    || vec![E::zero(); paired_len(c, h, w)],
                    |framed, (((gg, x), g), go)| {
                        crate::dispatch!(I => {
                            zeros_bwd_grid_image::<E, I>(x, g, go, &ax, &ay, framed, gg)
                        })
                    },
                );
        }
        let (gi, gg) = (
            per_image(gi.as_deref_mut(), n, c * h * w),
            per_image(gg.as_deref_mut(), n, p * 2),
        );
        gi.into_par_iter()
            .zip(gg)
            .enumerate()
            .for_each(|(b, (mut gi, mut gg))| crate::dispatch!(I => {
                let x = &x[b * c * h * w..(b + 1) * c * h * w];
                let g = &grid[b * p * 2..(b + 1) * p * 2];
                let go = &grad_out[b * c * p..(b + 1) * c * p];
                for q0 in (0..p).step_by(LANES) {
                    let s = self.sample8(g, q0, &ax, &ay);
                    let lanes = (p - q0).min(LANES);
                    let mut gout = [E::zero(); LANES];
                    let zero = V8::<E, I>::splat(E::zero());
                    let (mut dgx, mut dgy) = (zero, zero);
                    let (fx, fy) = (V8::<E, I>::load(&s.fx), V8::<E, I>::load(&s.fy));
                    let one = V8::<E, I>::splat(E::one());
                    let (ex, ey) = (V8::<E, I>::vsub(one, fx), V8::<E, I>::vsub(one, fy));
                    for ch in 0..c {
                        gout[..lanes].copy_from_slice(&go[ch * p + q0..ch * p + q0 + lanes]);
                        if let Some(gi) = gi.as_deref_mut() {
                            // Masked weights: an outside corner adds zero to (clamped) pixel 0. Lanes
                            // past the grid's end have gout = 0.
                            let plane = &mut gi[ch * h * w..(ch + 1) * h * w];
                            for l in 0..lanes {
                                for k in 0..4 {
                                    plane[s.idx[k][l] as usize] += s.wt[k][l] * gout[l];
                                }
                            }
                        }
                        if gg.is_some() {
                            // Lane-wise, in this order: ((ne − nw)(1 − fy) + (se − sw)fy)·gout
                            // for x, ((sw − nw)(1 − fx) + (se − ne)fx)·gout for y.
                            let plane = &x[ch * h * w..(ch + 1) * h * w];
                            let v = |k: usize| {
                                V8::<E, I>::vmul(E::gather::<I>(plane, &s.idx[k]), V8::<E, I>::load(&s.mask[k]))
                            };
                            let (nw, ne, sw, se) = (v(0), v(1), v(2), v(3));
                            let go = V8::<E, I>::load(&gout);
                            let tx =
                                V8::<E, I>::vadd(V8::<E, I>::vmul(V8::<E, I>::vsub(ne, nw), ey), V8::<E, I>::vmul(V8::<E, I>::vsub(se, sw), fy));
                            let ty =
                                V8::<E, I>::vadd(V8::<E, I>::vmul(V8::<E, I>::vsub(sw, nw), ex), V8::<E, I>::vmul(V8::<E, I>::vsub(se, ne), fx));
                            dgx = V8::<E, I>::vadd(dgx, V8::<E, I>::vmul(tx, go));
                            dgy = V8::<E, I>::vadd(dgy, V8::<E, I>::vmul(ty, go));
                        }
                    }
                    if let Some(gg) = gg.as_deref_mut() {
                        let (dgx, dgy) = (V8::<E, I>::lanes(dgx), V8::<E, I>::lanes(dgy));
                        for l in 0..lanes {
                            gg[2 * (q0 + l)] += dgx[l] * s.dx[l];
                            gg[2 * (q0 + l) + 1] += dgy[l] * s.dy[l];
                        }
                    }
                }
            }));
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        k: &CudaKernels,
        inputs: &[CudaBuf],
        out: &mut CudaSlice<f32>,
    ) -> Result<(), OpError> {
        let [n, c, h, w] = dims4(inputs[0].dims, "input")?.map(|v| v as i64);
        let p = (inputs[1].dims[1] * inputs[1].dims[2]) as i64;
        let f = k.func("grid_sample_fwd")?;
        let pad = self.padding as i32;
        // SAFETY: shapes checked by out_dims; out is [n, c, p].
        unsafe {
            launch(
                f,
                (n * p) as usize,
                (
                    inputs[0].data,
                    inputs[1].data,
                    out,
                    n,
                    c,
                    h,
                    w,
                    p,
                    pad,
                    self.align_corners as i32,
                    self.mode.code(),
                ),
            )
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_bwd(
        &self,
        k: &CudaKernels,
        inputs: &[CudaBuf],
        grad_out: &CudaSlice<f32>,
        grads: &mut [Option<&mut CudaSlice<f32>>],
    ) -> Result<(), OpError> {
        let [n, c, h, w] = dims4(inputs[0].dims, "input")?.map(|v| v as i64);
        let p = (inputs[1].dims[1] * inputs[1].dims[2]) as i64;
        let [gi, gg] = grads else {
            return Err(OpError::shape("grid_sample", "two gradients expected"));
        };
        let flags = self.padding as i32
            | (self.align_corners as i32) << 2
            | (gi.is_some() as i32) << 3
            | (gg.is_some() as i32) << 4
            | self.mode.code() << 5;
        let (mut d1, mut d2) = (k.dummy()?, k.dummy()?);
        let gi = gi.as_deref_mut().unwrap_or(&mut d1);
        let gg = gg.as_deref_mut().unwrap_or(&mut d2);
        let f = k.func("grid_sample_bwd")?;
        // SAFETY: shapes checked by out_dims; the flags keep the kernel off the dummies.
        unsafe {
            launch(
                f,
                (n * p) as usize,
                (
                    inputs[0].data,
                    inputs[1].data,
                    grad_out,
                    gi,
                    gg,
                    n,
                    c,
                    h,
                    w,
                    p,
                    flags,
                ),
            )
        }
    }
}

/// `grid_sample(input, grid, "bilinear", padding, align_corners)`: [`grid_sample_with`] in the
/// STN's usual mode.
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
    grid_sample_with(
        input,
        grid,
        GridSample {
            mode: Mode::Bilinear,
            padding,
            align_corners,
        },
    )
}

/// `grid_sample(input, grid, mode, padding, align_corners)` as `op` says. The output carries the
/// grid's tape, merged with the input's: the input's gradient is computed only when it has a tape
/// of its own (the images fed to an STN usually have none).
pub fn grid_sample_with<S1, S2, E, D, T1, T2>(
    input: Tensor<S1, E, D, T1>,
    grid: Tensor<S2, E, D, T2>,
    op: GridSample,
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
    apply(op, &dev, vec![input, grid], t2.merge(t1))
}

/// Scratch length of [`pair_rows`] for `c` planes of `h × w`.
pub(crate) fn paired_len(c: usize, h: usize, w: usize) -> usize {
    c * (h + 3) * (w + 4) * 2
}

/// Copies the planes of `x` into zero frames 2 pixels wide (`(H+4) × (W+4)`), stored row-paired:
/// element `2i` is frame pixel `i` and `2i + 1` the pixel below it, so a sample's four corners are
/// four adjacent values (`[nw, sw, ne, se]` from `2·(top-left corner)`; [`crate::op::SampleKernels::corners`]).
/// `paired` (`paired_len`) must hold zeros where the frame is, as a fresh buffer does: only the
/// image's pixels are written, so a scratch buffer can be reused for images of the same size.
#[inline(always)]
pub(crate) fn pair_rows<E: Real>(x: &[E], h: usize, w: usize, paired: &mut [E]) {
    let fw = w + 4;
    let plane_len = paired_len(1, h, w);
    assert!(x.len().is_multiple_of(h * w) && paired.len() == x.len() / (h * w) * plane_len);
    for (plane, f) in x
        .chunks_exact(h * w)
        .zip(paired.chunks_exact_mut(plane_len))
    {
        // Frame row r + 2 holds image row r, and pair row p frame rows p and p + 1: pair rows 1
        // to h + 1 hold image pixels. Rows 2 to h hold two image rows, written whole (two rows
        // interleaved, which vectorises); rows 1 and h + 1 one, the other half frame zeros.
        let row = |r: usize| &plane[r * w..(r + 1) * w];
        for p in 2..=h {
            let d = &mut f[2 * (p * fw + 2)..][..2 * w];
            for ((d, &a), &b) in d.chunks_exact_mut(2).zip(row(p - 2)).zip(row(p - 1)) {
                d[0] = a;
                d[1] = b;
            }
        }
        for (d, &b) in f[2 * (fw + 2)..][..2 * w].chunks_exact_mut(2).zip(row(0)) {
            d[1] = b;
        }
        for (d, &a) in f[2 * ((h + 1) * fw + 2)..][..2 * w]
            .chunks_exact_mut(2)
            .zip(row(h - 1))
        {
            d[0] = a;
        }
    }
}

/// The points `q0..q0+8` of `g` (x, y pairs; lanes past the end repeat the last point) in a framed
/// image ([`crate::op::SampleKernels::framed8`]: fractional parts, frame index of each top-left corner, finiteness).
#[inline(always)]
fn framed_points<E: Real, I: Isa>(g: &[E], q0: usize, ax: &Axis<E>, ay: &Axis<E>) -> Framed8<E, I> {
    let p = g.len() / 2;
    let map = |a: &Axis<E>| AxisMap {
        scale: a.scale,
        offset: a.offset,
        size: a.size,
    };
    if q0 + LANES <= p {
        return E::framed8::<I>(&g[2 * q0..2 * (q0 + LANES)], map(ax), map(ay));
    }
    let mut last = [E::zero(); 2 * LANES];
    for l in 0..LANES {
        let q = (q0 + l).min(p - 1);
        last[2 * l..2 * l + 2].copy_from_slice(&g[2 * q..2 * q + 2]);
    }
    E::framed8::<I>(&last, map(ax), map(ay))
}

/// Zero padding's grid gradient on one image (the input's gradient not asked for), from framed
/// row-paired planes as the forward: the general path's arithmetic without its masks, as an
/// outside corner reads the frame's zero (`gg += ((ne − nw)(1 − fy) + (se − sw)fy)·gout·scale` and likewise for y).
#[inline(always)]
pub(crate) fn zeros_bwd_grid_image<E: Real, I: Isa>(
    x: &[E],
    g: &[E],
    go: &[E],
    ax: &Axis<E>,
    ay: &Axis<E>,
    framed: &mut [E],
    gg: &mut [E],
) {
    let (h, w) = (ay.size, ax.size);
    let frame = paired_len(1, h, w);
    let c = x.len() / (h * w);
    let p = g.len() / 2;
    assert!(go.len() == c * p && gg.len() == 2 * p && p > 0);
    pair_rows(x, h, w, framed);
    let one = V8::<E, I>::splat(E::one());
    // Channel by channel, every point of a channel before the next (points first, for all of
    // them): one framed plane (8 KB for 28×28) stays in L1 while its points are sampled, where
    // point by point the ten planes of ten channels (80 KB) did not. Each point's sums still
    // add the channels in order, so the values are the same.
    // Loops, not iterator adapters, in the kernels: a closure handed to a library function that
    // is not inlined runs outside the ISA level's `target_feature` context (see `isa`).
    let mut pts: Vec<Framed8<E, I>> = Vec::with_capacity(p.div_ceil(LANES));
    for q0 in (0..p).step_by(LANES) {
        pts.push(framed_points::<E, I>(g, q0, ax, ay));
    }
    let zero = V8::<E, I>::splat(E::zero());
    let mut acc = vec![(zero, zero); pts.len()];
    for (f, go) in framed.chunks_exact(frame).zip(go.chunks_exact(p)) {
        for (i, (pt, (dgx, dgy))) in pts.iter().zip(acc.iter_mut()).enumerate() {
            let (q0, lanes) = (i * LANES, (p - i * LANES).min(LANES));
            let (ex, ey) = (V8::<E, I>::vsub(one, pt.fx), V8::<E, I>::vsub(one, pt.fy));
            // A full chunk without the mask.
            let go = if lanes == LANES {
                V8::<E, I>::load(&go[q0..])
            } else {
                V8::<E, I>::load_head(&go[q0..], lanes)
            };
            let [nw, ne, sw, se] = E::corners::<I>(f, &pt.base);
            let tx = V8::<E, I>::vadd(
                V8::<E, I>::vmul(V8::<E, I>::vsub(ne, nw), ey),
                V8::<E, I>::vmul(V8::<E, I>::vsub(se, sw), pt.fy),
            );
            let ty = V8::<E, I>::vadd(
                V8::<E, I>::vmul(V8::<E, I>::vsub(sw, nw), ex),
                V8::<E, I>::vmul(V8::<E, I>::vsub(se, ne), pt.fx),
            );
            *dgx = V8::<E, I>::vadd(*dgx, V8::<E, I>::vmul(tx, go));
            *dgy = V8::<E, I>::vadd(*dgy, V8::<E, I>::vmul(ty, go));
        }
    }
    for (i, &(dgx, dgy)) in acc.iter().enumerate() {
        let (q0, lanes) = (i * LANES, (p - i * LANES).min(LANES));
        let dgx = V8::<E, I>::vmul(dgx, V8::<E, I>::splat(ax.scale));
        let dgy = V8::<E, I>::vmul(dgy, V8::<E, I>::splat(ay.scale));
        if lanes == LANES {
            // (x, y) pairs: two vectors, added in place.
            let [lo, hi] = V8::<E, I>::interleave(dgx, dgy);
            V8::<E, I>::add_into(&mut gg[2 * q0..2 * q0 + 8], lo);
            V8::<E, I>::add_into(&mut gg[2 * q0 + 8..2 * q0 + 16], hi);
        } else {
            let (dgx, dgy) = (V8::<E, I>::lanes(dgx), V8::<E, I>::lanes(dgy));
            for l in 0..lanes {
                gg[2 * (q0 + l)] += dgx[l];
                gg[2 * (q0 + l) + 1] += dgy[l];
            }
        }
    }
}

/// Eight points' frame indices and bilinear weights.
type FramedWeights<E, I> = ([u32; LANES], [V8<E, I>; 4]);

/// Zero padding's forward on one image `[C, H, W]` for the points of `g` (x, y pairs), into
/// `out [C, P]`.
///
/// The planes are first copied into row-paired frames with a 2-pixel zero border ([`pair_rows`]),
/// and each coordinate's floor is clamped to [−2, W] (resp. H) ([`crate::op::SampleKernels::framed8`]): then a
/// sample's four corners are always inside the frame, an outside corner reads a zero, and no corner
/// needs a mask or a clamp of its own — half the work of the general sampler. The arithmetic is the
/// general path's (`((p0·w0 + p1·w1) + p2·w2) + p3·w3` with the same weights), so the result is the
/// same, and a point with a non-finite coordinate samples zero, as there.
#[inline(always)]
pub(crate) fn zeros_fwd_image<E: Real, I: Isa>(
    x: &[E],
    g: &[E],
    ax: &Axis<E>,
    ay: &Axis<E>,
    framed: &mut [E],
    out: &mut [E],
) {
    let (h, w) = (ay.size, ax.size);
    let frame = paired_len(1, h, w);
    let c = x.len() / (h * w);
    let p = g.len() / 2;
    assert!(out.len() == c * p && p > 0);
    pair_rows(x, h, w, framed);
    // Channel by channel, the points computed first (see `zeros_bwd_grid_image`).
    let mut pts: Vec<FramedWeights<E, I>> = Vec::with_capacity(p.div_ceil(LANES));
    for q0 in (0..p).step_by(LANES) {
        let f = framed_points::<E, I>(g, q0, ax, ay);
        pts.push((f.base, E::weights8::<I>(&f)));
    }
    for (f, o) in framed.chunks_exact(frame).zip(out.chunks_exact_mut(p)) {
        for (i, (base, w)) in pts.iter().enumerate() {
            let (q0, lanes) = (i * LANES, (p - i * LANES).min(LANES));
            let [p0, p1, p2, p3] = E::corners::<I>(f, base);
            let v = V8::<E, I>::vadd(
                V8::<E, I>::vadd(
                    V8::<E, I>::vadd(V8::<E, I>::vmul(p0, w[0]), V8::<E, I>::vmul(p1, w[1])),
                    V8::<E, I>::vmul(p2, w[2]),
                ),
                V8::<E, I>::vmul(p3, w[3]),
            );
            if lanes == LANES {
                V8::<E, I>::store(&mut o[q0..q0 + LANES], v);
            } else {
                o[q0..q0 + lanes].copy_from_slice(&V8::<E, I>::lanes(v)[..lanes]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's zero-padding bilinear sample, one point at a time: corners outside the image
    /// are skipped, a non-finite coordinate gives zero.
    fn reference(plane: &[f32], h: usize, w: usize, gx: f32, gy: f32, align: bool) -> f32 {
        let (ax, ay) = (Axis::<f32>::new(w, align), Axis::<f32>::new(h, align));
        let (x, y) = (gx * ax.scale + ax.offset, gy * ay.scale + ay.offset);
        if !(x.is_finite() && y.is_finite()) {
            return 0.0;
        }
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (x - x0, y - y0);
        let (ex, sy) = (1.0 - fx, 1.0 - fy);
        let corners = [
            (y0, x0, sy * ex),
            (y0, x0 + 1.0, sy * fx),
            (y0 + 1.0, x0, fy * ex),
            (y0 + 1.0, x0 + 1.0, fy * fx),
        ];
        let mut v = 0.0f32;
        for (k, (cy, cx, wt)) in corners.into_iter().enumerate() {
            let inside = cy >= 0.0 && cy < h as f32 && cx >= 0.0 && cx < w as f32;
            let p = if inside {
                plane[cy as usize * w + cx as usize] * wt
            } else {
                0.0
            };
            v = if k == 0 { p } else { v + p };
        }
        v
    }

    /// Every top-left corner a clamped sample can have, on both element types (f32 reads with
    /// AVX2 loads, f64 with the generic path): the four corners read from the row-paired frame
    /// are the zero-framed image's pixels.
    fn corners_are_the_framed_pixels<E: Real>() {
        let (c, h, w) = (2usize, 5usize, 7usize);
        let x: Vec<E> = (0..c * h * w).map(|i| E::of(i as f64 + 1.0)).collect();
        // Stale values where the image goes must be overwritten; the frame must stay zero.
        let mut paired = vec![E::zero(); paired_len(c, h, w)];
        pair_rows(
            &x.iter().map(|&v| -v).collect::<Vec<_>>(),
            h,
            w,
            &mut paired,
        );
        pair_rows(&x, h, w, &mut paired);
        let fw = w + 4;
        let pixel = |ch: usize, fy: usize, fx: usize| {
            let (y, x_) = (fy as i64 - 2, fx as i64 - 2);
            if (0..h as i64).contains(&y) && (0..w as i64).contains(&x_) {
                x[ch * h * w + y as usize * w + x_ as usize]
            } else {
                E::zero()
            }
        };
        let bases: Vec<u32> = (0..h + 3)
            .flat_map(|y| (0..w + 3).map(move |x| (y * fw + x) as u32))
            .collect();
        for ch in 0..c {
            let plane = &paired[ch * paired_len(1, h, w)..][..paired_len(1, h, w)];
            for chunk in bases.chunks(LANES) {
                let idx: [u32; LANES] = std::array::from_fn(|l| chunk[l.min(chunk.len() - 1)]);
                let got =
                    crate::dispatch!(I => E::corners::<I>(plane, &idx).map(V8::<E, I>::lanes));
                for (l, &b) in idx.iter().enumerate() {
                    let (fy, fx) = (b as usize / fw, b as usize % fw);
                    let want = [
                        pixel(ch, fy, fx),
                        pixel(ch, fy, fx + 1),
                        pixel(ch, fy + 1, fx),
                        pixel(ch, fy + 1, fx + 1),
                    ];
                    for k in 0..4 {
                        assert!(got[k][l] == want[k], "channel {ch} corner {k} of {fy},{fx}");
                    }
                }
            }
        }
    }

    #[test]
    fn row_paired_frames_give_each_samples_four_corners() {
        corners_are_the_framed_pixels::<f32>();
        corners_are_the_framed_pixels::<f64>();
    }

    #[test]
    fn zero_padding_fast_path_is_pytorchs_sampler_inside_outside_and_for_non_finite_points() {
        let (n, c, h, w, ho, wo) = (2usize, 3usize, 5usize, 7usize, 4usize, 9usize);
        let x: Vec<f32> = (0..n * c * h * w)
            .map(|i| ((i as f32) * 0.37).sin())
            .collect();
        let special = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
            -1.0,
            1.0,
            0.0,
            1.2,
            -1.3,
        ];
        let grid: Vec<f32> = (0..n * ho * wo * 2)
            .map(|i| {
                if i % 5 == 0 {
                    special[(i / 5) % special.len()]
                } else {
                    ((i as f32) * 0.731).sin() * 1.6
                }
            })
            .collect();
        for align in [false, true] {
            let op = GridSample {
                mode: Mode::Bilinear,
                padding: Padding::Zeros,
                align_corners: align,
            };
            let (xd, gd) = ([n, c, h, w], [n, ho, wo, 2]);
            let mut out = vec![f32::NAN; n * c * ho * wo];
            op.cpu_fwd(
                &[
                    Buf {
                        data: &x,
                        dims: &xd,
                    },
                    Buf {
                        data: &grid,
                        dims: &gd,
                    },
                ],
                &mut out,
            );
            // The grid's gradient alone (the fast path) is the general path's, bit for bit (NaN
            // where a coordinate is not finite, in both).
            let go: Vec<f32> = (0..out.len()).map(|i| ((i as f32) * 0.113).cos()).collect();
            let inputs = [
                Buf {
                    data: &x,
                    dims: &xd,
                },
                Buf {
                    data: &grid,
                    dims: &gd,
                },
            ];
            let mut fast = vec![0f32; grid.len()];
            op.cpu_bwd(&inputs, &go, &mut [None, Some(&mut fast[..])]);
            let (mut general, mut gi) = (vec![0f32; grid.len()], vec![0f32; x.len()]);
            op.cpu_bwd(
                &inputs,
                &go,
                &mut [Some(&mut gi[..]), Some(&mut general[..])],
            );
            for (i, (a, b)) in fast.iter().zip(&general).enumerate() {
                assert!(
                    a == b || (a.is_nan() && b.is_nan()),
                    "align {align} grid grad {i}: {a} vs {b}"
                );
            }
            assert!(fast.iter().any(|v| v.is_finite() && *v != 0.0));
            for b in 0..n {
                for ch in 0..c {
                    let plane = &x[(b * c + ch) * h * w..][..h * w];
                    for q in 0..ho * wo {
                        let g = &grid[(b * ho * wo + q) * 2..];
                        let want = reference(plane, h, w, g[0], g[1], align);
                        let got = out[(b * c + ch) * ho * wo + q];
                        assert!(
                            got == want,
                            "align {align} image {b} channel {ch} point {q} {:?}: {got} vs {want}",
                            &g[..2]
                        );
                    }
                }
            }
        }
    }
}
