//! `avg_pool2d(x [N,C,H,W], kernel, stride)`: PyTorch's `F.avg_pool2d` (floor mode, no padding,
//! so every window holds kernel² values). CPU only for now.

use dfdx::prelude::*;
use rayon::prelude::*;

use crate::max_pool2d::{pool_out_dims, pool_out_hw};
use crate::op::{apply, Buf, CustomOp, Input, OpDevice, OpError, Real};
use crate::Dyn4;

/// `torch.nn.functional.avg_pool2d(x, kernel, stride)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
}

impl AvgPool2d {
    fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        pool_out_hw(self.kernel, self.stride, h, w)
    }
}

impl<E: Real> CustomOp<E> for AvgPool2d {
    const NAME: &'static str = "avg_pool2d";

    fn out_dims(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, OpError> {
        pool_out_dims("avg_pool2d", self.kernel, self.stride, inputs)
    }

    fn cpu_fwd(&self, inputs: &[Buf<E>], out: &mut [E]) {
        let (h, w) = (inputs[0].dims[2], inputs[0].dims[3]);
        let (ho, wo) = self.out_hw(h, w);
        let (k, s) = (self.kernel, self.stride);
        let scale = E::of(1.0 / (k * k) as f64);
        inputs[0]
            .data
            .par_chunks(h * w)
            .zip(out.par_chunks_mut(ho * wo))
            .for_each(|(plane, o)| {
                crate::dispatch!(I => {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let mut acc = E::zero();
                            for ky in 0..k {
                                for kx in 0..k {
                                    acc += plane[(oy * s + ky) * w + ox * s + kx];
                                }
                            }
                            o[oy * wo + ox] = acc * scale;
                        }
                    }
                })
            });
    }

    fn cpu_bwd(&self, inputs: &[Buf<E>], grad_out: &[E], grads: &mut [Option<&mut [E]>]) {
        let Some(gx) = grads[0].as_deref_mut() else {
            return;
        };
        let (h, w) = (inputs[0].dims[2], inputs[0].dims[3]);
        let (ho, wo) = self.out_hw(h, w);
        let (k, s) = (self.kernel, self.stride);
        let scale = E::of(1.0 / (k * k) as f64);
        gx.par_chunks_mut(h * w)
            .zip(grad_out.par_chunks(ho * wo))
            .for_each(|(g, go)| {
                crate::dispatch!(I => {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let v = go[oy * wo + ox] * scale;
                            for ky in 0..k {
                                for kx in 0..k {
                                    g[(oy * s + ky) * w + ox * s + kx] += v;
                                }
                            }
                        }
                    }
                })
            });
    }
}

/// `avg_pool2d(x, kernel, stride)` on `[N, C, H, W]`.
pub fn avg_pool2d<S: Shape, E: Real, D: OpDevice<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    kernel: usize,
    stride: usize,
) -> Result<Tensor<Dyn4, E, D, T>, OpError> {
    let dev = x.device().clone();
    let (x, tape) = Input::new("avg_pool2d", x)?;
    apply(AvgPool2d { kernel, stride }, &dev, vec![x], tape)
}
