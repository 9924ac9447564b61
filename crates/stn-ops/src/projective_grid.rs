//! `projective_grid(h [N, 8], size) -> grid [N, H, W, 2]`: the sampling grid of a homography
//! `[[h0 h1 h2] [h3 h4 h5] [h6 h7 1]]` — each output point `(x, y)` (affine_grid's normalised base
//! coordinates) maps to `(u / w, v / w)` with `u = h0 x + h1 y + h2`, `v = h3 x + h4 y + h5`,
//! `w = h6 x + h7 y + 1`.
//!
//! Where `|w|` is below [`ProjectiveGrid::MIN_W`], `w` is replaced by `±MIN_W` (its sign, + at 0)
//! and no gradient flows through it: a point whose homography sends it to infinity lands far outside
//! the image (sampled as padding), finite, and training never sees an infinite or NaN gradient.
//! The identity is `h = [1, 0, 0, 0, 1, 0, 0, 0]`.

use dfdx::prelude::*;
use rayon::prelude::*;

use crate::affine_grid::AffineGrid;
use crate::op::{apply, Buf, CustomOp, Input, OpDevice, OpError, Real};
use crate::Dyn4;

#[cfg(feature = "cuda")]
use crate::cuda::{launch, CudaBuf, CudaKernels};
#[cfg(feature = "cuda")]
use cudarc::driver::CudaSlice;

/// The projective transformer's grid generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectiveGrid {
    /// The grid's batch, height and width `[N, H, W]`.
    pub size: [usize; 3],
    /// PyTorch's `align_corners`, as in `affine_grid`.
    pub align_corners: bool,
}

impl ProjectiveGrid {
    /// The smallest `|w|` the division uses (see the module's note).
    pub const MIN_W: f64 = 1e-3;

    /// `w` clamped away from zero, and whether it was.
    #[inline(always)]
    fn clamp_w<E: Real>(w: E) -> (E, bool) {
        let min = E::of(Self::MIN_W);
        if w.abs() >= min {
            (w, false)
        } else if w < E::zero() {
            (-min, true)
        } else {
            // 0 and NaN: NaN stays NaN (a NaN homography is the caller's).
            (if w.is_nan() { w } else { min }, true)
        }
    }

    #[inline(always)]
    fn image_grid<E: Real>(h: &[E], xs: &[E], ys: &[E], g: &mut [E]) {
        let wd = xs.len();
        for (i, &y) in ys.iter().enumerate() {
            for (j, &x) in xs.iter().enumerate() {
                let o = (i * wd + j) * 2;
                let u = x * h[0] + y * h[1] + h[2];
                let v = x * h[3] + y * h[4] + h[5];
                let (w, _) = Self::clamp_w(x * h[6] + y * h[7] + E::one());
                g[o] = u / w;
                g[o + 1] = v / w;
            }
        }
    }

    /// `gh += ` the homography's gradient from one image's grid gradient, accumulated in f64 (a sum
    /// over every grid point, as `AffineGrid::theta_grad`).
    #[inline(always)]
    fn h_grad<E: Real>(h: &[E], gg: &[E], xs: &[E], ys: &[E], gh: &mut [E]) {
        let f = |v: E| v.to_f64().unwrap_or(f64::NAN);
        let hd: Vec<f64> = h.iter().map(|&v| f(v)).collect();
        let wd = xs.len();
        let mut acc = [0f64; 8];
        for (i, &y) in ys.iter().enumerate() {
            let y = f(y);
            for (j, &x) in xs.iter().enumerate() {
                let x = f(x);
                let o = (i * wd + j) * 2;
                let (gx, gy) = (f(gg[o]), f(gg[o + 1]));
                let u = x * hd[0] + y * hd[1] + hd[2];
                let v = x * hd[3] + y * hd[4] + hd[5];
                let (w, clamped) = Self::clamp_w(x * hd[6] + y * hd[7] + 1.0);
                let (gu, gv) = (gx / w, gy / w);
                let gw = if clamped {
                    0.0
                } else {
                    -(gx * u + gy * v) / (w * w)
                };
                acc[0] += gu * x;
                acc[1] += gu * y;
                acc[2] += gu;
                acc[3] += gv * x;
                acc[4] += gv * y;
                acc[5] += gv;
                acc[6] += gw * x;
                acc[7] += gw * y;
            }
        }
        for k in 0..8 {
            gh[k] += E::of(acc[k]);
        }
    }

    fn bases<E: Real>(&self) -> (Vec<E>, Vec<E>) {
        let [_, h, w] = self.size;
        (
            AffineGrid::base::<E>(w, self.align_corners),
            AffineGrid::base::<E>(h, self.align_corners),
        )
    }
}

impl<E: Real> CustomOp<E> for ProjectiveGrid {
    const NAME: &'static str = "projective_grid";

    fn out_dims(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, OpError> {
        let [h] = inputs else {
            return Err(OpError::shape(
                "projective_grid",
                "expects one input (the homography)",
            ));
        };
        let [n, ho, wo] = self.size;
        if h.len() != 2 || h[1] != 8 {
            return Err(OpError::shape(
                "projective_grid",
                format!("the homography must be N×8, got {h:?}"),
            ));
        }
        if h[0] != n {
            return Err(OpError::shape(
                "projective_grid",
                format!("homography batch {} ≠ size batch {n}", h[0]),
            ));
        }
        Ok(vec![n, ho, wo, 2])
    }

    fn cpu_fwd(&self, inputs: &[Buf<E>], out: &mut [E]) {
        let [_, h, w] = self.size;
        let (xs, ys) = self.bases::<E>();
        inputs[0]
            .data
            .par_chunks_exact(8)
            .zip(out.par_chunks_exact_mut(h * w * 2))
            .for_each(|(hm, g)| crate::dispatch!(I => Self::image_grid(hm, &xs, &ys, g)));
    }

    fn cpu_bwd(&self, inputs: &[Buf<E>], grad_out: &[E], grads: &mut [Option<&mut [E]>]) {
        let Some(gh) = grads[0].as_deref_mut() else {
            return;
        };
        let [_, h, w] = self.size;
        let (xs, ys) = self.bases::<E>();
        inputs[0]
            .data
            .par_chunks_exact(8)
            .zip(grad_out.par_chunks_exact(h * w * 2))
            .zip(gh.par_chunks_exact_mut(8))
            .for_each(|((hm, gg), gh)| crate::dispatch!(I => Self::h_grad(hm, gg, &xs, &ys, gh)));
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        k: &CudaKernels,
        inputs: &[CudaBuf],
        out: &mut CudaSlice<f32>,
    ) -> Result<(), OpError> {
        let [n, h, w] = self.size.map(|v| v as i64);
        let f = k.func("projective_grid_fwd")?;
        // SAFETY: the homography is [n, 8] (checked by out_dims), out [n, h, w, 2].
        unsafe {
            launch(
                f,
                (n * h * w) as usize,
                (inputs[0].data, out, n, h, w, self.align_corners as i32),
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
        let Some(gh) = grads[0].as_deref_mut() else {
            return Ok(());
        };
        let [n, h, w] = self.size.map(|v| v as i64);
        let f = k.func("projective_grid_bwd")?;
        // SAFETY: as in cuda_fwd.
        unsafe {
            launch(
                f,
                (n * h * w) as usize,
                (
                    inputs[0].data,
                    grad_out,
                    gh,
                    n,
                    h,
                    w,
                    self.align_corners as i32,
                ),
            )
        }
    }
}

/// `projective_grid(h, [N, H, W], align_corners)`: the sampling grid `[N, H, W, 2]` of the
/// homographies `h [N, 8]` (the 3×3 matrix row by row, its last entry fixed to 1).
pub fn projective_grid<S: Shape, E: Real, D: OpDevice<E>, T: Tape<E, D>>(
    h: Tensor<S, E, D, T>,
    size: [usize; 3],
    align_corners: bool,
) -> Result<Tensor<Dyn4, E, D, T>, OpError> {
    let dev = h.device().clone();
    let (h, tape) = Input::new("projective_grid", h)?;
    apply(
        ProjectiveGrid {
            size,
            align_corners,
        },
        &dev,
        vec![h],
        tape,
    )
}
