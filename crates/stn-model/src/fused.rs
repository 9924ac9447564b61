//! The network's inference forward, fused per image on the ops' CPU kernels: no tensors, no tape.
//!
//! Why beside [`forward`](crate::forward): inference needs no tape, and dfdx's tensors cost per op
//! an allocated and zeroed output, a copy of each input (dfdx keeps a tensor's buffer private)
//! and a separate pass for each ReLU. Here each image goes through the whole network in scratch
//! that stays in the L1/L2 cache: conv → max-pool → ReLU as one [`ConvPoolRelu`], the affine grid
//! and the sampler through the ops' own CPU forwards, and the fully-connected layers as dot
//! products. The conv blocks, the grid and the sampler are bit-identical to `forward`'s; the
//! fully-connected layers and log-softmax differ from dfdx's in summation order only (the
//! cross-runtime tests hold it to the same bound as every runtime).

use rayon::prelude::*;
use stn_ops::op::Buf;
use stn_ops::{AffineGrid, ConvPoolRelu, CustomOp, GridSample, PackedWeights, Padding, Real};

use crate::{Arch, ParamError, Params, SAMPLED};

/// A dense layer's weights `[out, in]` and bias.
struct Dense<E> {
    w: Vec<E>,
    b: Vec<E>,
}

/// A conv block's kernel, weights and bias.
struct Block<E> {
    op: ConvPoolRelu,
    w: PackedWeights<E>,
    b: Vec<E>,
}

/// The localisation net, `fc_loc` and the transformer.
struct Stn<E> {
    loc0: Block<E>,
    loc3: Block<E>,
    fc_loc0: Dense<E>,
    fc_loc2: Dense<E>,
    grid: AffineGrid,
    sampler: GridSample,
}

/// The network, ready for inference on the CPU in `E`.
pub struct FusedNet<E> {
    arch: Arch,
    stn: Option<Stn<E>>,
    conv1: Block<E>,
    conv2: Block<E>,
    fc1: Dense<E>,
    fc2: Dense<E>,
}

/// What [`FusedNet::forward`] returns: `log_probs [N, 10]`, and with an STN `theta [N, 2, 3]` and
/// `warped [N, 1, 28, 28]` (empty without).
pub struct FusedOutputs<E> {
    /// `[N, 10]`.
    pub log_probs: Vec<E>,
    /// `[N, 2, 3]` (empty without an STN).
    pub theta: Vec<E>,
    /// `[N, 1, 28, 28]` (empty without an STN).
    pub warped: Vec<E>,
}

/// Per-thread scratch: each layer's output for one image, and the conv blocks' work space.
struct Scratch<E> {
    x: Vec<E>,
    work: Vec<E>,
    loc0: Vec<E>,
    loc3: Vec<E>,
    hidden: Vec<E>,
    grid: Vec<E>,
    /// The sampled image when the caller does not keep it.
    warped: Vec<E>,
    c1: Vec<E>,
    c2: Vec<E>,
    f1: Vec<E>,
}

impl<E: Real> FusedNet<E> {
    /// The fused forward of `params`' network (weights converted to `E` and laid out once).
    pub fn new(params: &Params) -> Result<FusedNet<E>, ParamError> {
        let arch = params.seed_arch().ok_or_else(|| {
            ParamError::Arch(format!(
                "the fused forward runs the tutorial's family of networks only (for now), not {}",
                params.net
            ))
        })?;
        let get = |name: &str| -> Result<Vec<E>, ParamError> {
            let v = params.get(name).ok_or_else(|| ParamError::Missing {
                name: name.into(),
                arch: arch.to_string(),
            })?;
            Ok(v.iter().map(|&x| E::of(x as f64)).collect())
        };
        let dense = |name: &str| -> Result<Dense<E>, ParamError> {
            Ok(Dense {
                w: get(&format!("{name}.weight"))?,
                b: get(&format!("{name}.bias"))?,
            })
        };
        let block = |name: &str, [c, side, o, k]: [usize; 4]| -> Result<Block<E>, ParamError> {
            let op = ConvPoolRelu::new(c, side, side, o, k);
            Ok(Block {
                w: op.pack(&get(&format!("{name}.weight"))?),
                b: get(&format!("{name}.bias"))?,
                op,
            })
        };
        let s = arch.canvas;
        let stn = if arch.stn {
            let loc0 = block("localization.0", [1, s, 8, 7])?;
            let side = loc0.op.out_dims()[1];
            Some(Stn {
                loc0,
                loc3: block("localization.3", [8, side, 10, 5])?,
                fc_loc0: dense("fc_loc.0")?,
                fc_loc2: dense("fc_loc.2")?,
                grid: AffineGrid {
                    size: [1, 1, SAMPLED, SAMPLED],
                    align_corners: false,
                },
                sampler: GridSample {
                    padding: Padding::Zeros,
                    align_corners: false,
                },
            })
        } else {
            None
        };
        let conv1 = block("conv1", [1, arch.classifier_input(), 10, 5])?;
        let side = conv1.op.out_dims()[1];
        Ok(FusedNet {
            arch,
            stn,
            conv1,
            conv2: block("conv2", [10, side, 20, 5])?,
            fc1: dense("fc1")?,
            fc2: dense("fc2")?,
        })
    }

    /// The architecture it computes.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    fn scratch(&self) -> Scratch<E> {
        let z = |len: usize| vec![E::zero(); len];
        let s = self.arch.canvas;
        let mut work = self.conv1.op.scratch_len().max(self.conv2.op.scratch_len());
        let (mut loc0, mut loc3) = (0, 0);
        if let Some(stn) = &self.stn {
            work = work
                .max(stn.loc0.op.scratch_len())
                .max(stn.loc3.op.scratch_len());
            (loc0, loc3) = (stn.loc0.op.out_len(), stn.loc3.op.out_len());
        }
        Scratch {
            x: z(s * s),
            work: z(work),
            loc0: z(loc0),
            loc3: z(loc3),
            hidden: z(32),
            grid: z(SAMPLED * SAMPLED * 2),
            warped: z(SAMPLED * SAMPLED),
            c1: z(self.conv1.op.out_len()),
            c2: z(self.conv2.op.out_len()),
            f1: z(50),
        }
    }

    /// The network in eval mode on `n` images `[N, 1, S, S]` (S the arch's canvas).
    pub fn forward(&self, images: &[f32], n: usize) -> FusedOutputs<E> {
        self.forward_with(images, n, true)
    }

    /// As [`FusedNet::forward`]; without `keep_warped` the sampled images stay in per-thread
    /// scratch and `warped` comes back empty (no `[N, 784]` buffer to allocate and fill).
    pub fn forward_with(&self, images: &[f32], n: usize, keep_warped: bool) -> FusedOutputs<E> {
        let s = self.arch.canvas;
        assert_eq!(images.len(), n * s * s, "{n} images of {s}×{s}");
        let sampled = SAMPLED * SAMPLED;
        let keep_warped = keep_warped && self.stn.is_some();
        let mut out = FusedOutputs {
            log_probs: vec![E::zero(); n * 10],
            theta: vec![E::zero(); n * 6],
            warped: vec![E::zero(); if keep_warped { n * sampled } else { 0 }],
        };
        let (lp, theta) = (&mut out.log_probs, &mut out.theta);
        if keep_warped {
            self.run(
                images,
                lp,
                theta,
                out.warped.par_chunks_mut(sampled).map(Some),
            );
        } else {
            self.run(images, lp, theta, (0..n).into_par_iter().map(|_| None));
        }
        if self.stn.is_none() {
            out.theta.clear();
        }
        out
    }

    fn run<'a>(
        &self,
        images: &[f32],
        log_probs: &mut [E],
        theta: &mut [E],
        warped: impl IndexedParallelIterator<Item = Option<&'a mut [E]>>,
    ) {
        let s = self.arch.canvas;
        let n = log_probs.len() / 10;
        log_probs
            .par_chunks_mut(10)
            .zip(theta.par_chunks_mut(6))
            .zip(warped)
            .zip(images.par_chunks(s * s))
            // One piece per thread: each piece sets up its own scratch.
            .with_min_len(n.div_ceil(rayon::current_num_threads()).max(1))
            .for_each_init(
                || self.scratch(),
                |sc, (((lp, theta), warped), img)| self.image(img, sc, lp, theta, warped),
            );
    }

    fn image(
        &self,
        img: &[f32],
        sc: &mut Scratch<E>,
        lp: &mut [E],
        theta: &mut [E],
        warped: Option<&mut [E]>,
    ) {
        for (x, &v) in sc.x.iter_mut().zip(img) {
            *x = E::of(v as f64);
        }
        let s = self.arch.canvas;
        let warped = match warped {
            Some(w) => w,
            None => &mut sc.warped[..],
        };
        let cls_in: &[E] = if let Some(stn) = &self.stn {
            stn.loc0.run(&sc.x, &mut sc.work, &mut sc.loc0);
            stn.loc3.run(&sc.loc0, &mut sc.work, &mut sc.loc3);
            stn.fc_loc0.run(&sc.loc3, &mut sc.hidden, true);
            stn.fc_loc2.run(&sc.hidden, theta, false);
            stn.grid.cpu_fwd(
                &[Buf {
                    data: theta,
                    dims: &[1, 2, 3],
                }],
                &mut sc.grid,
            );
            stn.sampler.cpu_fwd(
                &[
                    Buf {
                        data: &sc.x,
                        dims: &[1, 1, s, s],
                    },
                    Buf {
                        data: &sc.grid,
                        dims: &[1, SAMPLED, SAMPLED, 2],
                    },
                ],
                warped,
            );
            warped
        } else {
            &sc.x
        };
        self.conv1.run(cls_in, &mut sc.work, &mut sc.c1);
        self.conv2.run(&sc.c1, &mut sc.work, &mut sc.c2);
        self.fc1.run(&sc.c2, &mut sc.f1, true);
        self.fc2.run(&sc.f1, lp, false);
        log_softmax(lp);
    }
}

impl<E: Real> Block<E> {
    fn run(&self, x: &[E], work: &mut [E], out: &mut [E]) {
        self.op.run(x, &self.w, &self.b, work, out);
    }
}

impl<E: Real> Dense<E> {
    /// `out = x · Wᵀ + b`, with ReLU if asked; 8 partial sums per dot product.
    fn run(&self, x: &[E], out: &mut [E], relu: bool) {
        let inp = x.len();
        for ((o, w), &b) in out.iter_mut().zip(self.w.chunks_exact(inp)).zip(&self.b) {
            let mut acc = E::splat(E::zero());
            let (xc, wc) = (x.chunks_exact(8), w.chunks_exact(8));
            let tail = xc
                .remainder()
                .iter()
                .zip(wc.remainder())
                .fold(E::zero(), |s, (&x, &w)| x.mul_add(w, s));
            for (x, w) in xc.zip(wc) {
                acc = E::fma(E::load(x), E::load(w), acc);
            }
            let v = E::lanes(acc).iter().fold(tail, |s, &v| s + v) + b;
            *o = if relu { v.max(E::zero()) } else { v };
        }
    }
}

/// `x − max − ln Σ exp(x − max)`, in place.
fn log_softmax<E: Real>(x: &mut [E]) {
    let m = x.iter().fold(E::neg_infinity(), |m, &v| m.max(v));
    let s = x.iter().fold(E::zero(), |s, &v| s + (v - m).exp());
    let ls = s.ln();
    for v in x.iter_mut() {
        *v = *v - m - ls;
    }
}
