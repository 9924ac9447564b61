//! `conv2d(x [N,C,H,W], weight [O,C,K,K], bias [O], stride, padding)`: PyTorch's `F.conv2d` with a
//! stride and zero padding, for the convolutions [`conv2d`](crate::conv2d) (stride 1, no padding:
//! the seed's, register-blocked) does not cover. Direct loops, batch-parallel, the weight
//! gradient reduced per output channel in image order (reproducible); CPU only for now.

use dfdx::prelude::*;
use dfdx::tensor::Merge;
use rayon::prelude::*;

use crate::op::{apply, Buf, CustomOp, Input, OpDevice, OpError, Real};
use crate::simd::{Vector, V};
use crate::Dyn4;

/// `torch.nn.functional.conv2d(x, weight, bias, stride, padding)`, square kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StridedConv2d {
    /// Step between output pixels' windows.
    pub stride: usize,
    /// Zeros added on every side.
    pub padding: usize,
}

/// The sizes of one convolution.
struct Dims {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    ho: usize,
    wo: usize,
}

impl StridedConv2d {
    fn dims(&self, x: &[usize], wt: &[usize]) -> Dims {
        let (c, h, w, o, k) = (x[1], x[2], x[3], wt[0], wt[2]);
        let out = |side: usize| (side + 2 * self.padding - k) / self.stride + 1;
        Dims {
            c,
            h,
            w,
            o,
            k,
            ho: out(h),
            wo: out(w),
        }
    }

    /// The input row (or column) tap `ky` of output row `oy` reads, if inside the image.
    #[inline(always)]
    fn tap(&self, out: usize, kk: usize, side: usize) -> Option<usize> {
        (out * self.stride + kk)
            .checked_sub(self.padding)
            .filter(|&i| i < side)
    }
}

impl<E: Real> CustomOp<E> for StridedConv2d {
    const NAME: &'static str = "conv2d";

    fn out_dims(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, OpError> {
        let [x, w, b] = inputs else {
            return Err(OpError::shape("conv2d", "expects input, weight and bias"));
        };
        if x.len() != 4 || w.len() != 4 || b.len() != 1 {
            return Err(OpError::shape(
                "conv2d",
                format!(
                    "input must be N×C×H×W, weight O×C×K×K and bias O; got {x:?}, {w:?}, {b:?}"
                ),
            ));
        }
        if w[1] != x[1] || b[0] != w[0] || w[2] != w[3] {
            return Err(OpError::shape(
                "conv2d",
                format!("weight {w:?} and bias {b:?} do not fit input {x:?} (square kernels only)"),
            ));
        }
        let (k, p) = (w[2], self.padding);
        if self.stride == 0 || k == 0 || x[2] + 2 * p < k || x[3] + 2 * p < k {
            return Err(OpError::shape(
                "conv2d",
                format!(
                    "kernel {k}×{k} (stride {}, padding {p}) does not fit input {}×{}",
                    self.stride, x[2], x[3]
                ),
            ));
        }
        let d = self.dims(x, w);
        Ok(vec![x[0], d.o, d.ho, d.wo])
    }

    fn cpu_fwd(&self, inputs: &[Buf<E>], out: &mut [E]) {
        let d = self.dims(inputs[0].dims, inputs[1].dims);
        let (x, wt, bias) = (inputs[0].data, inputs[1].data, inputs[2].data);
        let (img, k2) = (d.c * d.h * d.w, d.k * d.k);
        out.par_chunks_mut(d.o * d.ho * d.wo)
            .zip(x.par_chunks(img))
            .for_each(|(out, x)| crate::dispatch!(I => {
                for o in 0..d.o {
                    for oy in 0..d.ho {
                        for ox in 0..d.wo {
                            let mut acc = bias[o];
                            for c in 0..d.c {
                                let wc = &wt[(o * d.c + c) * k2..][..k2];
                                let xc = &x[c * d.h * d.w..][..d.h * d.w];
                                for ky in 0..d.k {
                                    let Some(iy) = self.tap(oy, ky, d.h) else {
                                        continue;
                                    };
                                    for kx in 0..d.k {
                                        if let Some(ix) = self.tap(ox, kx, d.w) {
                                            acc = xc[iy * d.w + ix].mul_add(wc[ky * d.k + kx], acc);
                                        }
                                    }
                                }
                            }
                            out[(o * d.ho + oy) * d.wo + ox] = acc;
                        }
                    }
                }
            }));
    }

    fn cpu_bwd(&self, inputs: &[Buf<E>], grad_out: &[E], grads: &mut [Option<&mut [E]>]) {
        let d = self.dims(inputs[0].dims, inputs[1].dims);
        let n = inputs[0].dims[0];
        let (x, wt) = (inputs[0].data, inputs[1].data);
        let (img, k2, plane_out) = (d.c * d.h * d.w, d.k * d.k, d.ho * d.wo);
        let [gx, gw, gb] = grads else {
            unreachable!("three inputs")
        };
        if let Some(gx) = gx.as_deref_mut() {
            gx.par_chunks_mut(img)
                .zip(grad_out.par_chunks(d.o * plane_out))
                .for_each(|(gx, go)| {
                    crate::dispatch!(I => {
                        for o in 0..d.o {
                            for oy in 0..d.ho {
                                for ox in 0..d.wo {
                                    let g = go[o * plane_out + oy * d.wo + ox];
                                    for c in 0..d.c {
                                        let wc = &wt[(o * d.c + c) * k2..][..k2];
                                        for ky in 0..d.k {
                                            let Some(iy) = self.tap(oy, ky, d.h) else {
                                                continue;
                                            };
                                            for kx in 0..d.k {
                                                if let Some(ix) = self.tap(ox, kx, d.w) {
                                                    let at = (c * d.h + iy) * d.w + ix;
                                                    gx[at] = g.mul_add(wc[ky * d.k + kx], gx[at]);
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    })
                });
        }
        if let Some(gw) = gw.as_deref_mut() {
            gw.par_chunks_mut(d.c * k2).enumerate().for_each(|(o, gw)| crate::dispatch!(I => {
                for j in 0..n {
                    let (x, go) = (&x[j * img..][..img], &grad_out[(j * d.o + o) * plane_out..]);
                    for oy in 0..d.ho {
                        for ox in 0..d.wo {
                            let g = go[oy * d.wo + ox];
                            for c in 0..d.c {
                                for ky in 0..d.k {
                                    let Some(iy) = self.tap(oy, ky, d.h) else {
                                        continue;
                                    };
                                    for kx in 0..d.k {
                                        if let Some(ix) = self.tap(ox, kx, d.w) {
                                            let at = c * k2 + ky * d.k + kx;
                                            gw[at] =
                                                g.mul_add(x[(c * d.h + iy) * d.w + ix], gw[at]);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }));
        }
        if let Some(gb) = gb.as_deref_mut() {
            crate::dispatch!(I => {
                for go in grad_out.chunks_exact(d.o * plane_out) {
                    for (gb, row) in gb.iter_mut().zip(go.chunks_exact(plane_out)) {
                        *gb += V::<E, I>::sum(row);
                    }
                }
            })
        }
    }
}

/// `conv2d(x, weight, bias, stride, padding)`; stride 1 without padding is [`crate::conv2d`]'s.
/// The output carries the parameters' tape merged with the input's; the input's gradient is
/// computed only when it has a tape of its own.
pub fn strided_conv2d<Sx, Sw, Sb, E, D, Tx, T>(
    x: Tensor<Sx, E, D, Tx>,
    weight: Tensor<Sw, E, D, T>,
    bias: Tensor<Sb, E, D, T>,
    stride: usize,
    padding: usize,
) -> Result<Tensor<Dyn4, E, D, T>, OpError>
where
    Sx: Shape,
    Sw: Shape,
    Sb: Shape,
    E: Real,
    D: OpDevice<E>,
    Tx: Tape<E, D>,
    T: Tape<E, D> + Merge<Tx>,
{
    if (stride, padding) == (1, 0) {
        return crate::conv2d(x, weight, bias);
    }
    let dev = weight.device().clone();
    let (x, tx) = Input::new("conv2d", x)?;
    let (w, tw) = Input::new("conv2d", weight)?;
    let (b, tb) = Input::new("conv2d", bias)?;
    apply(
        StridedConv2d { stride, padding },
        &dev,
        vec![x, w, b],
        tw.merge(tb).merge(tx),
    )
}
