//! `conv2d(x [N,C,H,W], weight [O,C,KH,KW], bias [O]) -> [N,O,H-KH+1,W-KW+1]` (stride 1, no
//! padding), as im2col + GEMM per image, parallel over the batch.

use dfdx::prelude::*;
use dfdx::tensor::Merge;
use rayon::prelude::*;

use crate::op::{apply, Buf, CustomOp, Input, OpDevice, OpError, Real};
use crate::Dyn4;

/// `torch.nn.functional.conv2d(x, weight, bias)` with stride 1 and no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conv2d;

/// The sizes of one convolution.
#[derive(Clone, Copy)]
struct Geom {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(x: &[usize], wt: &[usize]) -> Geom {
        let (kh, kw) = (wt[2], wt[3]);
        Geom {
            c: x[1],
            h: x[2],
            w: x[3],
            o: wt[0],
            kh,
            kw,
            ho: x[2] - kh + 1,
            wo: x[3] - kw + 1,
        }
    }
    /// Rows of the im2col matrix (C·KH·KW).
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output pixels per channel.
    fn p(&self) -> usize {
        self.ho * self.wo
    }

    /// cols[(c,ki,kj), (oy,ox)] = x[c, oy+ki, ox+kj]: row-contiguous copies.
    fn im2col<E: Real>(&self, x: &[E], cols: &mut [E]) {
        let (p, wo) = (self.p(), self.wo);
        for c in 0..self.c {
            let plane = &x[c * self.h * self.w..];
            for ki in 0..self.kh {
                for kj in 0..self.kw {
                    let row = &mut cols[((c * self.kh + ki) * self.kw + kj) * p..][..p];
                    for oy in 0..self.ho {
                        row[oy * wo..(oy + 1) * wo]
                            .copy_from_slice(&plane[(oy + ki) * self.w + kj..][..wo]);
                    }
                }
            }
        }
    }

    /// The adjoint of im2col: gx[c, oy+ki, ox+kj] += dcols[(c,ki,kj), (oy,ox)].
    fn col2im_add<E: Real>(&self, dcols: &[E], gx: &mut [E]) {
        let (p, wo) = (self.p(), self.wo);
        for c in 0..self.c {
            let plane = &mut gx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ki in 0..self.kh {
                for kj in 0..self.kw {
                    let row = &dcols[((c * self.kh + ki) * self.kw + kj) * p..][..p];
                    for oy in 0..self.ho {
                        let dst = &mut plane[(oy + ki) * self.w + kj..][..wo];
                        for (d, &s) in dst.iter_mut().zip(&row[oy * wo..(oy + 1) * wo]) {
                            *d += s;
                        }
                    }
                }
            }
        }
    }
}

impl<E: Real> CustomOp<E> for Conv2d {
    const NAME: &'static str = "conv2d";

    fn out_dims(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, OpError> {
        let [x, w, b] = inputs else {
            return Err(OpError::shape("conv2d", "expects input, weight and bias"));
        };
        if x.len() != 4 || w.len() != 4 || b.len() != 1 {
            return Err(OpError::shape(
                "conv2d",
                format!(
                    "input must be N×C×H×W, weight O×C×KH×KW and bias O; got {x:?}, {w:?}, {b:?}"
                ),
            ));
        }
        if w[1] != x[1] {
            return Err(OpError::shape(
                "conv2d",
                format!("weight has {} input channels, input has {}", w[1], x[1]),
            ));
        }
        if b[0] != w[0] {
            return Err(OpError::shape(
                "conv2d",
                format!("bias has {} entries for {} output channels", b[0], w[0]),
            ));
        }
        if w[2] == 0 || w[3] == 0 || w[2] > x[2] || w[3] > x[3] {
            return Err(OpError::shape(
                "conv2d",
                format!(
                    "kernel {}×{} does not fit input {}×{}",
                    w[2], w[3], x[2], x[3]
                ),
            ));
        }
        Ok(vec![x[0], w[0], x[2] - w[2] + 1, x[3] - w[3] + 1])
    }

    fn cpu_fwd(&self, inputs: &[Buf<E>], out: &mut [E]) {
        let g = Geom::new(inputs[0].dims, inputs[1].dims);
        let (x, wt, bias) = (inputs[0].data, inputs[1].data, inputs[2].data);
        let (k, p) = (g.k(), g.p());
        out.par_chunks_mut(g.o * p)
            .zip(x.par_chunks(g.c * g.h * g.w))
            .for_each_init(
                || vec![E::zero(); k * p],
                |cols, (o, x)| {
                    g.im2col(x, cols);
                    for (row, &b) in o.chunks_exact_mut(p).zip(bias) {
                        row.fill(b);
                    }
                    // out[O, P] = W[O, K] · cols[K, P] + out
                    E::gemm(
                        g.o,
                        k,
                        p,
                        E::one(),
                        wt,
                        (k as isize, 1),
                        cols,
                        (p as isize, 1),
                        E::one(),
                        o,
                        (p as isize, 1),
                    );
                },
            );
    }

    fn cpu_bwd(&self, inputs: &[Buf<E>], grad_out: &[E], grads: &mut [Option<&mut [E]>]) {
        let g = Geom::new(inputs[0].dims, inputs[1].dims);
        let n = inputs[0].dims[0];
        let (x, wt) = (inputs[0].data, inputs[1].data);
        let (k, p) = (g.k(), g.p());
        let [gx, gw, gb] = grads else {
            unreachable!("three inputs")
        };
        let want_w = gw.is_some();
        let gx_chunks = crate::grid_sample::per_image(gx.as_deref_mut(), n, g.c * g.h * g.w);
        // One pass over the batch: each image adds to its own slice of the input gradient, and to a
        // per-thread partial of the weight gradient (summed at the end).
        let gw_sum = gx_chunks
            .into_par_iter()
            .enumerate()
            .fold(
                || {
                    (
                        vec![E::zero(); if want_w { g.o * k } else { 0 }],
                        vec![E::zero(); k * p],
                    )
                },
                |(mut gw_acc, mut buf), (b, gx)| {
                    let go = &grad_out[b * g.o * p..(b + 1) * g.o * p];
                    if want_w {
                        g.im2col(&x[b * g.c * g.h * g.w..(b + 1) * g.c * g.h * g.w], &mut buf);
                        // gW[O, K] += gout[O, P] · cols[K, P]ᵀ
                        E::gemm(
                            g.o,
                            p,
                            k,
                            E::one(),
                            go,
                            (p as isize, 1),
                            &buf,
                            (1, p as isize),
                            E::one(),
                            &mut gw_acc,
                            (k as isize, 1),
                        );
                    }
                    if let Some(gx) = gx {
                        // dcols[K, P] = W[O, K]ᵀ · gout[O, P]
                        E::gemm(
                            k,
                            g.o,
                            p,
                            E::one(),
                            wt,
                            (1, k as isize),
                            go,
                            (p as isize, 1),
                            E::zero(),
                            &mut buf,
                            (p as isize, 1),
                        );
                        g.col2im_add(&buf, gx);
                    }
                    (gw_acc, buf)
                },
            )
            .map(|(gw_acc, _)| gw_acc)
            .reduce_with(|mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, &b)| *a += b);
                a
            });
        if let (Some(gw), Some(sum)) = (gw.as_deref_mut(), gw_sum) {
            gw.iter_mut().zip(&sum).for_each(|(a, &b)| *a += b);
        }
        if let Some(gb) = gb.as_deref_mut() {
            for go in grad_out.chunks_exact(g.o * p) {
                for (gb, row) in gb.iter_mut().zip(go.chunks_exact(p)) {
                    *gb += row.iter().fold(E::zero(), |a, &v| a + v);
                }
            }
        }
    }
}

/// `conv2d(x, weight, bias)`, stride 1, no padding. The output carries the parameters' tape merged
/// with the input's; the input's gradient is computed only when it has a tape of its own.
pub fn conv2d<Sx, Sw, Sb, E, D, Tx, T>(
    x: Tensor<Sx, E, D, Tx>,
    weight: Tensor<Sw, E, D, T>,
    bias: Tensor<Sb, E, D, T>,
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
    let dev = weight.device().clone();
    let (x, tx) = Input::new("conv2d", x)?;
    let (w, tw) = Input::new("conv2d", weight)?;
    let (b, tb) = Input::new("conv2d", bias)?;
    apply(Conv2d, &dev, vec![x, w, b], tw.merge(tb).merge(tx))
}
