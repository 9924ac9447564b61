//! Training on the CPU: `grid_sample(x, affine_grid(theta, [N, C, Ho, Wo]), mode, zeros,
//! align_corners)` as one op, with the gradient for theta (the STN's case: the images are data),
//! for each sampling mode.
//!
//! Why: as two ops the grid is a tensor — written, copied again as the sampler's input, and its
//! gradient allocated, zeroed, written and read back by `affine_grid`'s backward, all of it
//! 16 bytes per sampled pixel. Here each image's grid and grid gradient live in per-thread scratch
//! that stays in cache. The arithmetic is the two ops' (the grid from `AffineGrid`'s base
//! coordinates and formula, the zero-padding sampler, theta's gradient summed in f64 in the same
//! order; the other modes through the same per-image kernels as `GridSample`'s), so values and
//! gradients are bit for bit theirs. Nearest sampling has no gradient for the grid, so none for
//! theta: its backward adds nothing. CUDA composes the two ops ([`OpDevice::HOST`]).

use dfdx::prelude::*;
use rayon::prelude::*;

use crate::grid_sample::{paired_len, zeros_bwd_grid_image, zeros_fwd_image, Axis};
use crate::op::{apply, Buf, CustomOp, Input, OpDevice, OpError, Real};
use crate::{AffineGrid, Dyn4};
use crate::{GridSample, Mode, Padding};

#[cfg(feature = "cuda")]
use crate::cuda::{CudaBuf, CudaKernels};
#[cfg(feature = "cuda")]
use cudarc::driver::CudaSlice;

/// `grid_sample(x, affine_grid(theta, [N, C, Ho, Wo], align_corners), mode, "zeros",
/// align_corners)`; inputs `x [N, C, H, W]` (no gradient) and `theta [N, 2, 3]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffineSampler {
    /// The sampled size `(Ho, Wo)`.
    pub out_hw: (usize, usize),
    /// PyTorch's `align_corners`, of the grid and the sampler.
    pub align_corners: bool,
    /// The sampling mode.
    pub mode: Mode,
}

struct Geom<E> {
    c: usize,
    h: usize,
    w: usize,
    wo: usize,
    xs: Vec<E>,
    ys: Vec<E>,
    ax: Axis<E>,
    ay: Axis<E>,
}

impl AffineSampler {
    /// The sampler of the other modes, whose per-image kernels this op runs.
    fn modes(&self) -> GridSample {
        GridSample {
            mode: self.mode,
            padding: Padding::Zeros,
            align_corners: self.align_corners,
        }
    }

    /// The sizes of a call on input dims `[N, C, H, W]`, the grid's base coordinates and the
    /// sampler's axes — what the forward and the backward both start from.
    fn geom<E: Real>(&self, x: &[usize]) -> Geom<E> {
        let [_, c, h, w] = x[..] else {
            unreachable!("checked by out_dims")
        };
        let (ho, wo) = self.out_hw;
        Geom {
            c,
            h,
            w,
            wo,
            xs: AffineGrid::base::<E>(wo, self.align_corners),
            ys: AffineGrid::base::<E>(ho, self.align_corners),
            ax: Axis::new(w, self.align_corners),
            ay: Axis::new(h, self.align_corners),
        }
    }
}

impl<E: Real> CustomOp<E> for AffineSampler {
    const NAME: &'static str = "affine_sampler";

    fn out_dims(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, OpError> {
        let [x, t] = inputs else {
            return Err(OpError::shape("affine_sampler", "expects input and theta"));
        };
        if x.len() != 4 || x[2] == 0 || x[3] == 0 {
            return Err(OpError::shape(
                "affine_sampler",
                format!("input must be N×C×H×W, got {x:?}"),
            ));
        }
        if t.len() != 3 || t[0] != x[0] || t[1] != 2 || t[2] != 3 {
            return Err(OpError::shape(
                "affine_sampler",
                format!("theta must be {}×2×3, got {t:?}", x[0]),
            ));
        }
        let (ho, wo) = self.out_hw;
        if ho == 0 || wo == 0 {
            return Err(OpError::shape("affine_sampler", "empty output size"));
        }
        Ok(vec![x[0], x[1], ho, wo])
    }

    fn cpu_fwd(&self, inputs: &[Buf<E>], out: &mut [E]) {
        let Geom {
            c,
            h,
            w,
            wo,
            xs,
            ys,
            ax,
            ay,
        } = self.geom(inputs[0].dims);
        let p = self.out_hw.0 * wo;
        if self.mode != Mode::Bilinear {
            let s = self.modes();
            return out
                .par_chunks_mut(c * p)
                .zip(inputs[0].data.par_chunks(c * h * w))
                .zip(inputs[1].data.par_chunks(6))
                .for_each_init(
                    || (vec![E::zero(); 2 * p], Vec::new()),
                    |(grid, framed), ((o, x), t)| {
                        s.modes_level(
                            #[inline(always)]
                            || {
                                AffineGrid::image_grid(t, &xs, &ys, grid);
                                s.modes_fast_fwd_image(x, grid, &ax, &ay, framed, o);
                            },
                        )
                    },
                );
        }
        out.par_chunks_mut(c * p)
            .zip(inputs[0].data.par_chunks(c * h * w))
            .zip(inputs[1].data.par_chunks(6))
            .for_each_init(
                || {
                    let grid = vec![E::zero(); 2 * p];
                    (grid, vec![E::zero(); paired_len(c, h, w)])
                },
                |(grid, framed), ((o, x), t)| {
                    crate::dispatch!(I => {
                        AffineGrid::image_grid(t, &xs, &ys, grid);
                        zeros_fwd_image::<E, I>(x, grid, &ax, &ay, framed, o);
                    })
                },
            );
    }

    fn cpu_bwd(&self, inputs: &[Buf<E>], grad_out: &[E], grads: &mut [Option<&mut [E]>]) {
        let Some(gt) = grads[1].as_deref_mut() else {
            return;
        };
        if self.mode == Mode::Nearest {
            // The grid's gradient is zero, and so theta's.
            return;
        }
        let Geom {
            c,
            h,
            w,
            wo,
            xs,
            ys,
            ax,
            ay,
        } = self.geom(inputs[0].dims);
        let p = self.out_hw.0 * wo;
        if self.mode == Mode::Bicubic {
            let s = self.modes();
            return gt
                .par_chunks_mut(6)
                .zip(inputs[0].data.par_chunks(c * h * w))
                .zip(inputs[1].data.par_chunks(6))
                .zip(grad_out.par_chunks(c * p))
                .for_each_init(
                    || (vec![E::zero(); 2 * p], vec![E::zero(); 2 * p], Vec::new()),
                    |(grid, gg, framed), (((gt, x), t), go)| {
                        s.modes_level(
                            #[inline(always)]
                            || {
                                AffineGrid::image_grid(t, &xs, &ys, grid);
                                gg.fill(E::zero());
                                s.modes_fast_bwd_grid_image(x, grid, go, &ax, &ay, framed, gg);
                                AffineGrid::theta_grad(gg, &xs, &ys, gt);
                            },
                        )
                    },
                );
        }
        gt.par_chunks_mut(6)
            .zip(inputs[0].data.par_chunks(c * h * w))
            .zip(inputs[1].data.par_chunks(6))
            .zip(grad_out.par_chunks(c * p))
            .for_each_init(
                || {
                    let grid = vec![E::zero(); 2 * p];
                    (
                        grid,
                        vec![E::zero(); 2 * p],
                        vec![E::zero(); paired_len(c, h, w)],
                    )
                },
                |(grid, gg, framed), (((gt, x), t), go)| {
                    crate::dispatch!(I => {
                        AffineGrid::image_grid(t, &xs, &ys, grid);
                        gg.fill(E::zero());
                        zeros_bwd_grid_image::<E, I>(x, grid, go, &ax, &ay, framed, gg);
                        AffineGrid::theta_grad(gg, &xs, &ys, gt);
                    })
                },
            );
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _k: &CudaKernels,
        _inputs: &[CudaBuf],
        _out: &mut CudaSlice<f32>,
    ) -> Result<(), OpError> {
        Err(OpError::cpu_only(
            "affine_sampler",
            "compose affine_grid and grid_sample",
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_bwd(
        &self,
        _k: &CudaKernels,
        _inputs: &[CudaBuf],
        _grad_out: &CudaSlice<f32>,
        _grads: &mut [Option<&mut CudaSlice<f32>>],
    ) -> Result<(), OpError> {
        Err(OpError::cpu_only(
            "affine_sampler",
            "compose affine_grid and grid_sample",
        ))
    }
}

/// `grid_sample(x, affine_grid(theta, [N, C, Ho, Wo]))` with zero padding, bilinear, the gradient
/// for theta only (`x` carries no tape), on the CPU.
pub fn affine_sample<Sx, St, E, D, T>(
    x: Tensor<Sx, E, D>,
    theta: Tensor<St, E, D, T>,
    out_hw: (usize, usize),
    align_corners: bool,
) -> Result<Tensor<Dyn4, E, D, T>, OpError>
where
    Sx: Shape,
    St: Shape,
    E: Real,
    D: OpDevice<E>,
    T: Tape<E, D>,
{
    affine_sample_with(x, theta, out_hw, align_corners, Mode::Bilinear)
}

/// [`affine_sample`] with any sampling `mode`.
pub fn affine_sample_with<Sx, St, E, D, T>(
    x: Tensor<Sx, E, D>,
    theta: Tensor<St, E, D, T>,
    out_hw: (usize, usize),
    align_corners: bool,
    mode: Mode,
) -> Result<Tensor<Dyn4, E, D, T>, OpError>
where
    Sx: Shape,
    St: Shape,
    E: Real,
    D: OpDevice<E>,
    T: Tape<E, D>,
{
    let dev = theta.device().clone();
    let (x, _) = Input::new("affine_sampler", x)?;
    let (theta, tape) = Input::new("affine_sampler", theta)?;
    apply(
        AffineSampler {
            out_hw,
            align_corners,
            mode,
        },
        &dev,
        vec![x, theta],
        tape,
    )
}
