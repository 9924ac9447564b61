//! The network's inference forward, fused per image on the ops' CPU kernels: no tensors, no tape.
//!
//! Why beside [`forward`](crate::forward): inference needs no tape, and dfdx's tensors cost per op
//! an allocated and zeroed output, a copy of each input (dfdx keeps a tensor's buffer private)
//! and a separate pass for each ReLU. Here each image goes through the whole network in scratch
//! that stays in the L1/L2 cache: conv → max-pool 2 → ReLU as one [`ConvPoolRelu`], other convs
//! and pools through the ops' own CPU forwards, the affine grid and the sampler likewise, and the
//! fully-connected layers as dot products. The plan's layers become [`Step`]s, chosen by shape
//! (never by a preset's name). The conv blocks, the grid and the sampler are bit-identical to
//! `forward`'s; the fully-connected layers and log-softmax differ from dfdx's in summation order
//! only (the cross-runtime tests hold it to the same bound as every runtime).

use rayon::prelude::*;
use stn_ops::isa::Isa;
use stn_ops::op::Buf;
use stn_ops::simd::{Vector, V8};
use stn_ops::{
    AvgPool2d, Conv2d, ConvPoolRelu, CustomOp, MaxPool2d, PackedWeights, Real, StridedConv2d,
};

use crate::heads::Warp;
use crate::spec::{Layer, PlannedLayer, Shape};
use crate::{Network, ParamError, Params};

/// A dense layer's weights `[out, in]` and bias.
struct Dense<E> {
    w: Vec<E>,
    b: Vec<E>,
}

/// One step of the fused forward of one image: from the previous step's output to its own.
enum Step<E> {
    /// conv (stride 1, no padding) → max_pool2d 2 → ReLU in one pass.
    ConvPoolRelu {
        op: ConvPoolRelu,
        w: PackedWeights<E>,
        b: Vec<E>,
    },
    /// Any other conv, on `[1, C, H, W]`: stride 1 unpadded by [`Conv2d`], others by
    /// [`StridedConv2d`].
    Conv {
        op: StridedConv2d,
        dims: [usize; 4],
        wdims: [usize; 4],
        w: Vec<E>,
        b: Vec<E>,
    },
    /// An average pool on `[1, C, H, W]`.
    AvgPool {
        op: AvgPool2d,
        dims: [usize; 4],
    },
    /// A max-pool (with the ReLU after it when there is one) on `[1, C, H, W]`.
    MaxPool {
        op: MaxPool2d,
        dims: [usize; 4],
    },
    Relu,
    /// A linear layer, with the ReLU after it when there is one.
    Dense {
        d: Dense<E>,
        relu: bool,
    },
}

/// The network, ready for inference on the CPU in `E`.
pub struct FusedNet<E> {
    net: Network,
    localization: Vec<(Step<E>, usize)>,
    sampler: Option<Warp<E>>,
    classifier: Vec<(Step<E>, usize)>,
    /// Scratch kept between one-image forwards (a served request each): allocating and zeroing
    /// it per image was about a twentieth of a one-image forward.
    spare: std::sync::Mutex<Vec<Scratch<E>>>,
}

/// One-image scratch kept for reuse, at most (one per thread that runs them at once).
const SPARE_MAX: usize = 16;

/// What [`FusedNet::forward`] returns: `log_probs [N, classes]`, and with an STN the head's
/// parameters `theta [N, P]` (the affine maps' 2×3 row by row) and `warped [N, C, Ho, Wo]` (empty
/// without).
pub struct FusedOutputs<E> {
    /// `[N, classes]`.
    pub log_probs: Vec<E>,
    /// `[N, P]`, the head's parameters (empty without an STN).
    pub theta: Vec<E>,
    /// `[N, C, Ho, Wo]` (empty without an STN).
    pub warped: Vec<E>,
}

/// Per-thread scratch: the input, each step's output, the grid, the conv blocks' work space.
struct Scratch<E> {
    x: Vec<E>,
    work: Vec<E>,
    loc: Vec<Vec<E>>,
    grid: Vec<E>,
    /// The sampled image when the caller does not keep it.
    warped: Vec<E>,
    /// The sampler's own (its framed planes).
    sample: Vec<E>,
    cls: Vec<Vec<E>>,
}

fn unsupported(what: &PlannedLayer) -> ParamError {
    ParamError::Arch(format!(
        "the fused forward: {:?} is not implemented by the ops yet",
        what.layer
    ))
}

impl<E: Real> FusedNet<E> {
    /// The fused forward of `params`' network (weights converted to `E` and laid out once).
    pub fn new(params: &Params) -> Result<FusedNet<E>, ParamError> {
        let net = params.net.clone();
        let plan = net.plan();
        let get = |name: &str| -> Result<Vec<E>, ParamError> {
            let v = params.get(name).ok_or_else(|| ParamError::Missing {
                name: name.into(),
                arch: net.to_string(),
            })?;
            Ok(v.iter().map(|&x| E::of(x as f64)).collect())
        };
        let steps = |layers: &[PlannedLayer]| -> Result<Vec<(Step<E>, usize)>, ParamError> {
            // Dropout is the identity in eval mode, flatten a no-op on the flat buffers.
            let live: Vec<&PlannedLayer> = layers
                .iter()
                .filter(|l| {
                    !matches!(
                        l.layer,
                        Layer::Dropout { .. } | Layer::Dropout2d { .. } | Layer::Flatten
                    )
                })
                .collect();
            let mut out = Vec::new();
            let mut i = 0;
            while i < live.len() {
                let l = live[i];
                let next = |k: usize| live.get(i + k).map(|l| l.layer);
                let relu_at = |k: usize| matches!(next(k), Some(Layer::Relu));
                let (step, used) = match (l.layer, l.input) {
                    (
                        Layer::Conv2d {
                            out: o,
                            kernel,
                            stride,
                            padding,
                        },
                        Shape::Map { c, h, w },
                    ) => {
                        let (wn, bn) = l.params.as_ref().expect("a conv has parameters");
                        let plain = (stride, padding) == (1, 0);
                        let pool2 = plain
                            && matches!(
                                next(1),
                                Some(Layer::MaxPool2d {
                                    kernel: 2,
                                    stride: None | Some(2)
                                })
                            );
                        if pool2 && relu_at(2) {
                            let op = ConvPoolRelu::new(c, h, w, o, kernel);
                            let step = Step::ConvPoolRelu {
                                w: op.pack(&get(wn)?),
                                b: get(bn)?,
                                op,
                            };
                            (step, 3)
                        } else {
                            let step = Step::Conv {
                                op: StridedConv2d { stride, padding },
                                dims: [1, c, h, w],
                                wdims: [o, c, kernel, kernel],
                                w: get(wn)?,
                                b: get(bn)?,
                            };
                            (step, 1)
                        }
                    }
                    (Layer::MaxPool2d { kernel, stride }, Shape::Map { c, h, w }) => {
                        let op = MaxPool2d {
                            kernel,
                            stride: stride.unwrap_or(kernel),
                            relu: relu_at(1),
                        };
                        (
                            Step::MaxPool {
                                op,
                                dims: [1, c, h, w],
                            },
                            1 + op.relu as usize,
                        )
                    }
                    (Layer::AvgPool2d { kernel, stride }, Shape::Map { c, h, w }) => {
                        let op = AvgPool2d {
                            kernel,
                            stride: stride.unwrap_or(kernel),
                        };
                        (
                            Step::AvgPool {
                                op,
                                dims: [1, c, h, w],
                            },
                            1,
                        )
                    }
                    (Layer::Relu, _) => (Step::Relu, 1),
                    (Layer::Linear { .. }, _) => {
                        let (wn, bn) = l.params.as_ref().expect("a linear layer has parameters");
                        let d = Dense {
                            w: get(wn)?,
                            b: get(bn)?,
                        };
                        (
                            Step::Dense {
                                d,
                                relu: relu_at(1),
                            },
                            1 + relu_at(1) as usize,
                        )
                    }
                    _ => return Err(unsupported(l)),
                };
                // The values the step writes: the last layer it covers gives them.
                out.push((step, live[i + used - 1].output.len()));
                i += used;
            }
            Ok(out)
        };
        let sampler = Warp::new(plan);
        Ok(FusedNet {
            localization: steps(&plan.localization)?,
            classifier: steps(&plan.classifier)?,
            sampler,
            net,
            spare: Default::default(),
        })
    }

    /// The network it computes.
    pub fn network(&self) -> &Network {
        &self.net
    }

    fn scratch(&self) -> Scratch<E> {
        let z = |len: usize| vec![E::zero(); len];
        let work = self
            .localization
            .iter()
            .chain(&self.classifier)
            .map(|(s, _)| match s {
                Step::ConvPoolRelu { op, .. } => op.scratch_len(),
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        let bufs = |steps: &[(Step<E>, usize)]| steps.iter().map(|(_, len)| z(*len)).collect();
        let (grid, warped) = match &self.sampler {
            Some(s) => {
                let [ho, wo] = s.out_hw;
                (z(ho * wo * 2), z(s.input[1] * ho * wo))
            }
            None => (vec![], vec![]),
        };
        Scratch {
            x: z(self.image_len()),
            work: z(work),
            loc: bufs(&self.localization),
            grid,
            warped,
            sample: Vec::new(),
            cls: bufs(&self.classifier),
        }
    }

    fn image_len(&self) -> usize {
        self.net.input_dims().iter().product()
    }

    fn warped_len(&self) -> usize {
        self.sampler
            .as_ref()
            .map_or(0, |s| s.input[1] * s.out_hw[0] * s.out_hw[1])
    }

    /// The network in eval mode on `n` images `[N, C, H, W]` (the network's input).
    pub fn forward(&self, images: &[f32], n: usize) -> FusedOutputs<E> {
        self.forward_with(images, n, true)
    }

    /// As [`FusedNet::forward`]; without `keep_warped` the sampled images stay in per-thread
    /// scratch and `warped` comes back empty (no `[N, C·Ho·Wo]` buffer to allocate and fill).
    pub fn forward_with(&self, images: &[f32], n: usize, keep_warped: bool) -> FusedOutputs<E> {
        let len = self.image_len();
        assert_eq!(images.len(), n * len, "{n} images of {len} values");
        let sampled = self.warped_len();
        let classes = self.net.plan().classes;
        let keep_warped = keep_warped && self.sampler.is_some();
        let n_theta = self.sampler.as_ref().map_or(0, |s| s.n_params);
        let mut out = FusedOutputs {
            log_probs: vec![E::zero(); n * classes],
            theta: vec![E::zero(); n * n_theta],
            warped: vec![E::zero(); if keep_warped { n * sampled } else { 0 }],
        };
        let (lp, theta) = (&mut out.log_probs, &mut out.theta);
        if n == 1 {
            // One image is not split: it runs on the calling thread, not through rayon's pool,
            // whose two thread hops would cost more than its forward (a served request's latency).
            let warped = keep_warped.then_some(&mut out.warped[..]);
            // Reused as `run`'s pieces reuse theirs from one image to the next.
            let reused = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut sc = reused.unwrap_or_else(|| self.scratch());
            self.image(images, &mut sc, lp, theta, warped);
            let mut pool = self.spare.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < SPARE_MAX {
                pool.push(sc);
            }
            return out;
        }
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
        out
    }

    fn run<'a>(
        &self,
        images: &[f32],
        log_probs: &mut [E],
        theta: &mut [E],
        warped: impl IndexedParallelIterator<Item = Option<&'a mut [E]>>,
    ) {
        let classes = self.net.plan().classes;
        let n = log_probs.len() / classes;
        // Without a transformer theta is empty: one empty piece per image.
        let thetas: Vec<&mut [E]> = if theta.is_empty() {
            (0..n).map(|_| <&mut [E]>::default()).collect()
        } else {
            theta.chunks_mut(theta.len() / n).collect()
        };
        log_probs
            .par_chunks_mut(classes)
            .zip(thetas)
            .zip(warped)
            .zip(images.par_chunks(self.image_len()))
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
        let warped = match warped {
            Some(w) => w,
            None => &mut sc.warped[..],
        };
        let cls_in: &[E] = if let Some(s) = &self.sampler {
            let t = run_steps(&self.localization, &sc.x, &mut sc.loc, &mut sc.work);
            theta.copy_from_slice(t);
            s.grid(theta, &mut sc.grid);
            s.sampler.fwd_one(
                &sc.x,
                [s.input[2], s.input[3]],
                &sc.grid,
                &mut sc.sample,
                warped,
            );
            warped
        } else {
            &sc.x
        };
        let logits = run_steps(&self.classifier, cls_in, &mut sc.cls, &mut sc.work);
        lp.copy_from_slice(logits);
        log_softmax(lp);
    }
}

/// Runs `steps` from `x`, each into its buffer of `bufs`; returns the last one's output.
fn run_steps<'a, E: Real>(
    steps: &[(Step<E>, usize)],
    x: &'a [E],
    bufs: &'a mut [Vec<E>],
    work: &mut [E],
) -> &'a [E] {
    let mut input: &[E] = x;
    for ((step, _), out) in steps.iter().zip(bufs.iter_mut()) {
        match step {
            Step::ConvPoolRelu { op, w, b } => op.run(input, w, b, work, out),
            Step::Conv {
                op,
                dims,
                wdims,
                w,
                b,
            } => {
                let bufs = [
                    Buf { data: input, dims },
                    Buf {
                        data: w,
                        dims: wdims,
                    },
                    Buf {
                        data: b,
                        dims: &[wdims[0]],
                    },
                ];
                if (op.stride, op.padding) == (1, 0) {
                    Conv2d.cpu_fwd(&bufs, out)
                } else {
                    op.cpu_fwd(&bufs, out)
                }
            }
            Step::AvgPool { op, dims } => op.cpu_fwd(&[Buf { data: input, dims }], out),
            Step::MaxPool { op, dims } => op.cpu_fwd(&[Buf { data: input, dims }], out),
            Step::Relu => {
                for (o, &v) in out.iter_mut().zip(input) {
                    *o = v.max(E::zero());
                }
            }
            Step::Dense { d, relu } => d.run(input, out, *relu),
        }
        input = out;
    }
    input
}

impl<E: Real> Dense<E> {
    /// `out = x · Wᵀ + b`, with ReLU if asked; 8 partial sums per dot product (eight lanes at
    /// every ISA level, so every level gives the same sums).
    fn run(&self, x: &[E], out: &mut [E], relu: bool) {
        stn_ops::dispatch!(I => self.run_at::<I>(x, out, relu))
    }

    #[inline(always)]
    fn run_at<I: Isa>(&self, x: &[E], out: &mut [E], relu: bool) {
        let inp = x.len();
        let full = inp / 8 * 8;
        let xs = &x[..full];
        // Four rows at a time share each load of `x` (5 loads per 4 multiply-adds, not 8); each
        // row's sum is the same as alone.
        for (i0, outs) in (0..out.len()).step_by(4).zip(out.chunks_mut(4)) {
            let q_n = outs.len();
            let ws: [&[E]; 4] = std::array::from_fn(|q| {
                let r = i0 + q.min(q_n - 1);
                &self.w[r * inp..r * inp + full]
            });
            let mut acc = [V8::<E, I>::splat(E::zero()); 4];
            for (j, xv) in xs.chunks_exact(8).enumerate() {
                let xv = V8::<E, I>::load(xv);
                for q in 0..4 {
                    // SAFETY: j·8 + 8 ≤ full = ws[q].len().
                    let wv = V8::<E, I>::load(unsafe { ws[q].get_unchecked(j * 8..j * 8 + 8) });
                    acc[q] = V8::<E, I>::fma(xv, wv, acc[q]);
                }
            }
            for (q, o) in outs.iter_mut().enumerate() {
                let r = i0 + q;
                let w = &self.w[r * inp + full..(r + 1) * inp];
                let tail = x[full..]
                    .iter()
                    .zip(w)
                    .fold(E::zero(), |s, (&x, &w)| x.mul_add(w, s));
                let v = V8::<E, I>::lanes(acc[q]).iter().fold(tail, |s, &v| s + v) + self.b[r];
                *o = if relu { v.max(E::zero()) } else { v };
            }
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
