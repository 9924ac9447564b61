//! `max_pool2d(x [N,C,H,W], kernel, stride)` (floor mode, no padding), PyTorch's tie rule: the first
//! maximum of a window in row-major order wins, and a NaN wins over numbers.

pub(crate) mod kernels;

use dfdx::prelude::*;
use rayon::prelude::*;

use crate::op::{apply, Buf, CustomOp, Input, OpDevice, OpError, Real};
use crate::Dyn4;

#[cfg(feature = "cuda")]
use crate::cuda::{launch, CudaBuf, CudaKernels};
#[cfg(feature = "cuda")]
use cudarc::driver::CudaSlice;

/// `torch.nn.functional.max_pool2d(x, kernel, stride)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Followed by a ReLU (dfdx's: `max(x, 0)`, gradient where `x > 0`) in the same op: the
    /// seed's every pool is, and as one op the ReLU costs neither a tensor nor a pass of its own.
    pub relu: bool,
}

/// A pool's output `(Ho, Wo)`: floor mode, no padding.
pub(crate) fn pool_out_hw(kernel: usize, stride: usize, h: usize, w: usize) -> (usize, usize) {
    ((h - kernel) / stride + 1, (w - kernel) / stride + 1)
}

/// A pool's output dimensions `[N, C, Ho, Wo]` for its one input `[N, C, H, W]`, or the error
/// naming `op` when the input is not 4-D or the window does not fit.
pub(crate) fn pool_out_dims(
    op: &'static str,
    kernel: usize,
    stride: usize,
    inputs: &[&[usize]],
) -> Result<Vec<usize>, OpError> {
    let [x] = inputs else {
        return Err(OpError::shape(op, "expects one input"));
    };
    if x.len() != 4 {
        return Err(OpError::shape(
            op,
            format!("input must be N×C×H×W, got {x:?}"),
        ));
    }
    if kernel == 0 || stride == 0 || x[2] < kernel || x[3] < kernel {
        return Err(OpError::shape(
            op,
            format!("kernel {kernel} stride {stride} does not fit input {x:?}"),
        ));
    }
    let (ho, wo) = pool_out_hw(kernel, stride, x[2], x[3]);
    Ok(vec![x[0], x[1], ho, wo])
}

impl MaxPool2d {
    fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        pool_out_hw(self.kernel, self.stride, h, w)
    }

    /// Index (in the input plane) of each output's maximum.
    #[inline(always)]
    fn argmax<E: Real>(&self, plane: &[E], w: usize, oy: usize, ox: usize) -> usize {
        let (y0, x0) = (oy * self.stride, ox * self.stride);
        let mut best = y0 * w + x0;
        let mut m = plane[best];
        for ky in 0..self.kernel {
            for kx in 0..self.kernel {
                let i = (y0 + ky) * w + x0 + kx;
                let v = plane[i];
                if v > m || v.is_nan() {
                    m = v;
                    best = i;
                    if v.is_nan() {
                        return best;
                    }
                }
            }
        }
        best
    }
}

impl MaxPool2d {
    /// The backward into `gx`, the gradient of `x [N, C, H, W]`: added to it, or with `fresh` written
    /// over whatever it holds — each plane zeroed by the thread that then scatters into it, while
    /// its lines are in that core's cache (a separate zeroing pass over a recycled buffer was a
    /// memset as large as the conv's output, 2.7% of a training step).
    pub(crate) fn bwd_planes<E: Real>(&self, x: Buf<E>, grad_out: &[E], gx: &mut [E], fresh: bool) {
        let (h, w) = (x.dims[2], x.dims[3]);
        let (ho, wo) = self.out_hw(h, w);
        if self.kernel == 2 && self.stride == 2 {
            return x
                .data
                .par_chunks(h * w)
                .zip(gx.par_chunks_mut(h * w))
                .zip(grad_out.par_chunks(ho * wo))
                .for_each(|((plane, g), go)| {
                    if fresh {
                        g.fill(E::zero());
                    }
                    crate::dispatch!(I => E::pool2_plane_bwd::<I>(plane, w, go, g, wo, self.relu))
                });
        }
        x.data
            .par_chunks(h * w)
            .zip(gx.par_chunks_mut(h * w))
            .zip(grad_out.par_chunks(ho * wo))
            .for_each(|((plane, g), go)| {
                if fresh {
                    g.fill(E::zero());
                }
                for oy in 0..ho {
                    for ox in 0..wo {
                        let i = self.argmax(plane, w, oy, ox);
                        if !self.relu || plane[i] > E::zero() {
                            g[i] += go[oy * wo + ox];
                        }
                    }
                }
            });
    }
}

impl<E: Real> CustomOp<E> for MaxPool2d {
    const NAME: &'static str = "max_pool2d";

    fn out_dims(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, OpError> {
        pool_out_dims("max_pool2d", self.kernel, self.stride, inputs)
    }

    // Every output is its window's maximum, in both paths below.
    const CPU_FWD_WRITES_ALL: bool = true;

    fn cpu_fwd(&self, inputs: &[Buf<E>], out: &mut [E]) {
        let (h, w) = (inputs[0].dims[2], inputs[0].dims[3]);
        let (ho, wo) = self.out_hw(h, w);
        if self.kernel == 2 && self.stride == 2 {
            // The seed network's pooling: whole output rows at a time (vectorised).
            return inputs[0]
                .data
                .par_chunks(h * w)
                .zip(out.par_chunks_mut(ho * wo))
                .for_each(|(plane, o)| {
                    crate::dispatch!(I => E::pool2_plane::<I>(plane, w, o, wo, self.relu))
                });
        }
        inputs[0]
            .data
            .par_chunks(h * w)
            .zip(out.par_chunks_mut(ho * wo))
            .for_each(|(plane, o)| {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let v = plane[self.argmax(plane, w, oy, ox)];
                        o[oy * wo + ox] = if self.relu { v.max(E::zero()) } else { v };
                    }
                }
            });
    }

    fn cpu_bwd(&self, inputs: &[Buf<E>], grad_out: &[E], grads: &mut [Option<&mut [E]>]) {
        if let Some(gx) = grads[0].as_deref_mut() {
            self.bwd_planes(inputs[0], grad_out, gx, false);
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        k: &CudaKernels,
        inputs: &[CudaBuf],
        out: &mut CudaSlice<f32>,
    ) -> Result<(), OpError> {
        if self.relu {
            // The fused ReLU.
            return Err(OpError::cpu_only(
                "max_pool2d_relu",
                "use max_pool2d, then relu",
            ));
        }
        let x = inputs[0].dims;
        let (h, w) = (x[2], x[3]);
        let (ho, wo) = self.out_hw(h, w);
        let planes = (x[0] * x[1]) as i64;
        let f = k.func("max_pool2d_fwd")?;
        // SAFETY: shapes checked by out_dims.
        unsafe {
            launch(
                f,
                planes as usize * ho * wo,
                (
                    inputs[0].data,
                    out,
                    planes,
                    h as i64,
                    w as i64,
                    self.kernel as i64,
                    self.stride as i64,
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
        if self.relu {
            // The fused ReLU.
            return Err(OpError::cpu_only(
                "max_pool2d_relu",
                "use max_pool2d, then relu",
            ));
        }
        let Some(gx) = grads[0].as_deref_mut() else {
            return Ok(());
        };
        let x = inputs[0].dims;
        let (h, w) = (x[2], x[3]);
        let (ho, wo) = self.out_hw(h, w);
        let planes = (x[0] * x[1]) as i64;
        let f = k.func("max_pool2d_bwd")?;
        // SAFETY: shapes checked by out_dims.
        unsafe {
            launch(
                f,
                planes as usize * ho * wo,
                (
                    inputs[0].data,
                    grad_out,
                    gx,
                    planes,
                    h as i64,
                    w as i64,
                    self.kernel as i64,
                    self.stride as i64,
                ),
            )
        }
    }
}

/// `max_pool2d(x, kernel, stride)` on `[N, C, H, W]`.
pub fn max_pool2d<S: Shape, E: Real, D: OpDevice<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    kernel: usize,
    stride: usize,
) -> Result<Tensor<Dyn4, E, D, T>, OpError> {
    pool(x, kernel, stride, false)
}

/// `relu(max_pool2d(x, kernel, stride))` as one op (the CPU's; CUDA's pool has no ReLU).
pub fn max_pool2d_relu<S: Shape, E: Real, D: OpDevice<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    kernel: usize,
    stride: usize,
) -> Result<Tensor<Dyn4, E, D, T>, OpError> {
    pool(x, kernel, stride, true)
}

fn pool<S: Shape, E: Real, D: OpDevice<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    kernel: usize,
    stride: usize,
    relu: bool,
) -> Result<Tensor<Dyn4, E, D, T>, OpError> {
    let dev = x.device().clone();
    let (x, tape) = Input::new("max_pool2d", x)?;
    let op = MaxPool2d {
        kernel,
        stride,
        relu,
    };
    apply(op, &dev, vec![x], tape)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Planes with ties, ±0, infinities and NaNs, of even and odd sizes, narrow and wide.
    fn planes(n: usize, h: usize, w: usize, seed: usize) -> Vec<f32> {
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];
        (0..n * h * w)
            .map(|i| {
                if (i * 7 + seed).is_multiple_of(11) {
                    special[(i / 11 + seed) % special.len()]
                } else {
                    ((i as f32 * 0.913 + seed as f32).sin() * 3.0).round() * 0.5
                }
            })
            .collect()
    }

    #[test]
    fn the_2x2_fast_paths_follow_the_argmax_rule() {
        for (kernel, relu) in [(2, false), (2, true), (3, true)] {
            check(MaxPool2d {
                kernel,
                stride: 2,
                relu,
            });
        }
    }

    /// Forward and backward against `argmax` (and dfdx's ReLU: `max(v, 0)`, gradient where v > 0).
    fn check(op: MaxPool2d) {
        for (h, w) in [
            (2, 2),
            (4, 6),
            (5, 7),
            (11, 11),
            (24, 24),
            (22, 35),
            (3, 40),
            // Rows of 4 outputs (two rows per 8-lane pass), and 15 = 8 + 4 + 3 over 7 rows.
            (8, 8),
            (14, 30),
            // 1–3 outputs past the 8-output groups, two rows per pass while it stays inside
            // the plane: localization.0's 11 = 8 + 3, localization.3's 3, odd sizes.
            (22, 22),
            (7, 7),
            (9, 23),
            (21, 13),
            (6, 18),
        ] {
            if h < op.kernel || w < op.kernel {
                continue;
            }
            let n = 3;
            let x = planes(n, h, w, h + w);
            let (ho, wo) = op.out_hw(h, w);
            let go: Vec<f32> = (0..n * ho * wo).map(|i| 1.0 + i as f32 * 0.25).collect();
            let dims = [1, n, h, w];
            let input = [Buf {
                data: &x,
                dims: &dims,
            }];
            let mut out = vec![0f32; n * ho * wo];
            op.cpu_fwd(&input, &mut out);
            let mut gx = vec![0f32; x.len()];
            op.cpu_bwd(&input, &go, &mut [Some(&mut gx[..])]);
            let (mut want_out, mut want_gx) = (vec![0f32; out.len()], vec![0f32; x.len()]);
            for p in 0..n {
                let plane = &x[p * h * w..(p + 1) * h * w];
                for oy in 0..ho {
                    for ox in 0..wo {
                        let i = op.argmax(plane, w, oy, ox);
                        let v = plane[i];
                        want_out[p * ho * wo + oy * wo + ox] = if op.relu { v.max(0.0) } else { v };
                        if !op.relu || v > 0.0 {
                            want_gx[p * h * w + i] += go[p * ho * wo + oy * wo + ox];
                        }
                    }
                }
            }
            for (i, (g, e)) in out.iter().zip(&want_out).enumerate() {
                assert!(
                    g == e || (g.is_nan() && e.is_nan()),
                    "{h}×{w} out[{i}]: {g} vs {e}"
                );
            }
            assert_eq!(gx, want_gx, "{op:?} {h}×{w} gradient");
        }
    }
}
