//! `affine_grid(theta [N,2,3], size [N,C,H,W], align_corners) -> grid [N,H,W,2]`, x before y.

use dfdx::prelude::*;
use rayon::prelude::*;

use crate::op::{apply, Buf, CustomOp, Input, OpDevice, OpError, Real};
use crate::Dyn4;

#[cfg(feature = "cuda")]
use crate::cuda::{launch, CudaBuf, CudaKernels};
#[cfg(feature = "cuda")]
use cudarc::driver::CudaSlice;

/// `torch.nn.functional.affine_grid` for 2-d images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffineGrid {
    /// The output size `[N, C, H, W]` (C is not used, as in PyTorch).
    /// The sampled batch `[N, C, H, W]` (only N, H and W matter).
    pub size: [usize; 4],
    /// PyTorch's `align_corners`: the extreme coordinates ±1 at the corner pixels' centres (true)
    /// or at their outer edges (false).
    pub align_corners: bool,
}

impl AffineGrid {
    /// One image's grid `[H·W, 2]` into `g` from its `theta` (6 values) and the base coordinates:
    /// `(x·t0 + y·t1 + t2, x·t3 + y·t4 + t5)` — the forward's arithmetic, shared with
    /// `affine_sample` so that the two agree bit for bit. `xs` and `ys` are [`AffineGrid::base`]
    /// of the width and the height: a one-image caller (the fused forward) makes them once.
    #[inline(always)]
    pub fn image_grid<E: Real>(t: &[E], xs: &[E], ys: &[E], g: &mut [E]) {
        let w = xs.len();
        for (i, &y) in ys.iter().enumerate() {
            for (j, &x) in xs.iter().enumerate() {
                let o = (i * w + j) * 2;
                g[o] = x * t[0] + y * t[1] + t[2];
                g[o + 1] = x * t[3] + y * t[4] + t[5];
            }
        }
    }

    /// `gt += ` theta's gradient from one image's grid gradient `gg [H·W, 2]`: a sum over every
    /// grid point, accumulated in f64, so f32 keeps PyTorch-level accuracy (an f32 sum over 784
    /// points drifts by ~1e-5 relative). Shared with `affine_sample`.
    #[inline(always)]
    pub(crate) fn theta_grad<E: Real>(gg: &[E], xs: &[E], ys: &[E], gt: &mut [E]) {
        let w = xs.len();
        let f = |v: E| v.to_f64().unwrap_or(f64::NAN);
        let mut acc = [0f64; 6];
        for (i, &y) in ys.iter().enumerate() {
            let y = f(y);
            for (j, &x) in xs.iter().enumerate() {
                let x = f(x);
                let o = (i * w + j) * 2;
                let (gx, gy) = (f(gg[o]), f(gg[o + 1]));
                acc[0] += gx * x;
                acc[1] += gx * y;
                acc[2] += gx;
                acc[3] += gy * x;
                acc[4] += gy * y;
                acc[5] += gy;
            }
        }
        for k in 0..6 {
            gt[k] += E::of(acc[k]);
        }
    }

    /// PyTorch's `_linspace_from_neg_one`: `linspace(-1, 1, n)`, scaled by `(n-1)/n` without
    /// align_corners, computed in the element type in PyTorch's order of operations.
    pub fn base<E: Real>(n: usize, align_corners: bool) -> Vec<E> {
        if n <= 1 {
            return vec![E::zero(); n];
        }
        let (start, end) = (-E::one(), E::one());
        let step = (end - start) / E::of((n - 1) as f64);
        let half = n / 2;
        (0..n)
            .map(|i| {
                let v = if i < half {
                    start + step * E::of(i as f64)
                } else {
                    end - step * E::of((n - i - 1) as f64)
                };
                if align_corners {
                    v
                } else {
                    v * E::of((n - 1) as f64) / E::of(n as f64)
                }
            })
            .collect()
    }
}

impl<E: Real> CustomOp<E> for AffineGrid {
    const NAME: &'static str = "affine_grid";

    fn out_dims(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, OpError> {
        let [theta] = inputs else {
            return Err(OpError::shape("affine_grid", "expects one input (theta)"));
        };
        let [n, _, h, w] = self.size;
        if theta.len() != 3 || theta[1] != 2 || theta[2] != 3 {
            return Err(OpError::shape(
                "affine_grid",
                format!("theta must be N×2×3, got {theta:?}"),
            ));
        }
        if theta[0] != n {
            return Err(OpError::shape(
                "affine_grid",
                format!("theta batch {} ≠ size batch {n}", theta[0]),
            ));
        }
        Ok(vec![n, h, w, 2])
    }

    fn cpu_fwd(&self, inputs: &[Buf<E>], out: &mut [E]) {
        let [_, _, h, w] = self.size;
        let (xs, ys) = (
            Self::base::<E>(w, self.align_corners),
            Self::base::<E>(h, self.align_corners),
        );
        // Parallel over the batch, as every op (a serial op caps the step's scaling).
        inputs[0]
            .data
            .par_chunks_exact(6)
            .zip(out.par_chunks_exact_mut(h * w * 2))
            .for_each(|(t, g)| crate::dispatch!(I => Self::image_grid(t, &xs, &ys, g)));
    }

    fn cpu_bwd(&self, _inputs: &[Buf<E>], grad_out: &[E], grads: &mut [Option<&mut [E]>]) {
        let Some(gt) = grads[0].as_deref_mut() else {
            return;
        };
        let [_, _, h, w] = self.size;
        let (xs, ys) = (
            Self::base::<E>(w, self.align_corners),
            Self::base::<E>(h, self.align_corners),
        );
        grad_out
            .par_chunks_exact(h * w * 2)
            .zip(gt.par_chunks_exact_mut(6))
            .for_each(|(gg, gt)| crate::dispatch!(I => Self::theta_grad(gg, &xs, &ys, gt)));
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        k: &CudaKernels,
        inputs: &[CudaBuf],
        out: &mut CudaSlice<f32>,
    ) -> Result<(), OpError> {
        let [n, _, h, w] = self.size.map(|v| v as i64);
        let f = k.func("affine_grid_fwd")?;
        // SAFETY: theta is [n, 2, 3] (checked by out_dims), out [n, h, w, 2].
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
        _inputs: &[CudaBuf],
        grad_out: &CudaSlice<f32>,
        grads: &mut [Option<&mut CudaSlice<f32>>],
    ) -> Result<(), OpError> {
        let Some(gt) = grads[0].as_deref_mut() else {
            return Ok(());
        };
        let [n, _, h, w] = self.size.map(|v| v as i64);
        let f = k.func("affine_grid_bwd")?;
        // SAFETY: as in cuda_fwd.
        unsafe {
            launch(
                f,
                (n * h * w) as usize,
                (grad_out, gt, n, h, w, self.align_corners as i32),
            )
        }
    }
}

/// `affine_grid(theta, size, align_corners)`: the sampling grid `[N, H, W, 2]` of the affine maps
/// `theta [N, 2, 3]`, in normalised coordinates (−1 … 1), x before y.
pub fn affine_grid<S: Shape, E: Real, D: OpDevice<E>, T: Tape<E, D>>(
    theta: Tensor<S, E, D, T>,
    size: [usize; 4],
    align_corners: bool,
) -> Result<Tensor<Dyn4, E, D, T>, OpError> {
    let dev = theta.device().clone();
    let (theta, tape) = Input::new("affine_grid", theta)?;
    apply(
        AffineGrid {
            size,
            align_corners,
        },
        &dev,
        vec![theta],
        tape,
    )
}
