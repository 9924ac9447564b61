//! The forward pass of any [`Plan`] on dfdx, and the seed family's architecture ([`Arch`]).

use std::fmt;

use dfdx::prelude::*;
use dfdx::tensor::Merge;
use serde::{Deserialize, Serialize};
use stn_ops::{
    affine_grid, affine_sample_with, avg_pool2d, conv2d, conv_pool_relu, conv_pool_relu_scaled,
    grid_sample_with, max_pool2d, max_pool2d_relu, projective_grid, strided_conv2d, tps_grid, Dyn4,
    OpDevice, OpError, Real,
};

use crate::spec::{
    InputSpec, Layer, ModelSpec, Naming, Plan, PlannedLayer, Shape as Dims, Transform,
};

/// Which variant of the seed network: the input canvas side (28 for MNIST, 42 for RTS, 60 for T)
/// and whether the spatial transformer is in front of the classifier. With the STN the localisation
/// net sees the whole canvas and the sampler produces 28×28, so the classifier is the seed's; without
/// it (`--no-stn`, the baseline) the classifier sees the canvas and `fc1` grows with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arch {
    /// Side of the square input images.
    pub canvas: usize,
    /// Whether the spatial transformer precedes the classifier.
    pub stn: bool,
}

/// The side the STN samples (the classifier's input with the STN).
pub const SAMPLED: usize = 28;

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} network on {}×{} inputs",
            if self.stn { "STN" } else { "no-STN" },
            self.canvas,
            self.canvas
        )
    }
}

impl Arch {
    /// The tutorial's network: STN on 28×28 MNIST.
    pub const SEED: Arch = Arch {
        canvas: 28,
        stn: true,
    };

    /// The largest input canvas: the distorted sets use 42 and 60; a 1024×1024 canvas already
    /// needs a 2.6 million-input `fc_loc.0`.
    pub const MAX_CANVAS: usize = 1024;

    /// Checks that the tutorial's layers fit the canvas (28 ≤ side ≤ [`Arch::MAX_CANVAS`]): a
    /// checkpoint or model claiming another canvas is refused.
    pub fn check(&self) -> Result<(), String> {
        if !(SAMPLED..=Self::MAX_CANVAS).contains(&self.canvas) {
            return Err(format!(
                "input canvas {0}×{0}: the network takes {SAMPLED}×{SAMPLED} to {1}×{1} images",
                self.canvas,
                Self::MAX_CANVAS
            ));
        }
        Ok(())
    }

    /// The spec of this architecture: the tutorial's layers, named as its `Net` names them.
    pub fn spec(&self) -> ModelSpec {
        let conv = |out, kernel| Layer::Conv2d {
            out,
            kernel,
            stride: 1,
            padding: 0,
        };
        let pool = Layer::MaxPool2d {
            kernel: 2,
            stride: None,
        };
        let classifier = vec![
            conv(10, 5),
            pool,
            Layer::Relu,
            conv(20, 5),
            Layer::Dropout2d { p: 0.5 },
            pool,
            Layer::Relu,
            Layer::Flatten,
            Layer::Linear { out: 50 },
            Layer::Relu,
            Layer::Dropout { p: 0.5 },
            Layer::Linear { out: 10 },
        ];
        let (localization, transform) = if self.stn {
            (
                vec![
                    conv(8, 7),
                    pool,
                    Layer::Relu,
                    conv(10, 5),
                    pool,
                    Layer::Relu,
                    Layer::Flatten,
                    Layer::Linear { out: 32 },
                    Layer::Relu,
                ],
                Transform::affine([SAMPLED, SAMPLED]),
            )
        } else {
            (vec![], Transform::None)
        };
        ModelSpec {
            input: InputSpec {
                channels: 1,
                height: self.canvas,
                width: self.canvas,
                mean: Some(vec![stn_data::MNIST_MEAN]),
                std: Some(vec![stn_data::MNIST_STD]),
            },
            localization,
            transform,
            classifier,
            classes: 10,
            names: Naming::Tutorial,
        }
    }
}

/// What the network computes for a batch.
pub struct Outputs<E: Real, D: OpDevice<E>, T> {
    /// `[N, classes]`, with the tape of the forward pass.
    pub log_probs: Tensor<(usize, usize), E, D, T>,
    /// `[N, P]`, the transform head's parameters (the affine maps' 2×3 row by row), without tape.
    pub theta: Option<Tensor<(usize, usize), E, D>>,
    /// `[N, C, Ho, Wo]`, the transformer's output images (without tape).
    pub warped: Option<Tensor<Dyn4, E, D>>,
}

/// Dropout masks for one training batch, already scaled by 1/(1−p): one per dropout layer of
/// [`Plan::dropouts`], in its order (`Dropout2d` a value per image and channel, `Dropout` per
/// image and value).
pub struct DropoutMasks<E> {
    /// The masks, `[N · units]` each.
    pub masks: Vec<Vec<E>>,
    /// Values per image of each mask.
    pub units: Vec<usize>,
}

impl<E: Clone> DropoutMasks<E> {
    /// The masks of images `..at` and `at..`.
    pub fn split(&self, at: usize) -> (DropoutMasks<E>, DropoutMasks<E>) {
        let (a, b) = self
            .masks
            .iter()
            .zip(&self.units)
            .map(|(m, &u)| {
                let (a, b) = m.split_at(at * u);
                (a.to_vec(), b.to_vec())
            })
            .unzip();
        (
            DropoutMasks {
                masks: a,
                units: self.units.clone(),
            },
            DropoutMasks {
                masks: b,
                units: self.units.clone(),
            },
        )
    }
}

/// An activation between layers: a feature map or a flat batch of vectors.
enum Act<E: Real, D: OpDevice<E>, T> {
    Map(Tensor<Dyn4, E, D, T>),
    Flat(Tensor<(usize, usize), E, D, T>),
}

/// The spatial transformer: the head's parameters `p [N, P]` to a grid, and `x` sampled on it.
/// The affine family goes through θ (attention and similarity expanded by their basis, a
/// matmul); with zero padding and bilinear sampling on the CPU as one op (no grid tensor).
fn transform<E, D, T>(
    x: Tensor<Dyn4, E, D>,
    p: Tensor<(usize, usize), E, D, T>,
    t: &Transform,
    plan: &Plan,
) -> Result<Tensor<Dyn4, E, D, T>, OpError>
where
    E: Real,
    D: OpDevice<E>,
    T: Tape<E, D> + Merge<NoneTape>,
{
    let (n, c, _, _) = *x.shape();
    let s = t.sampler().expect("a transformer samples");
    let [ho, wo] = s.output;
    let dev = x.device().clone();
    let grid = match t {
        Transform::Affine(_) | Transform::Attention(_) | Transform::Similarity(_) => {
            let theta = match t.theta_basis() {
                Some(rows) => {
                    let basis: Vec<E> = rows.iter().flatten().map(|&v| E::of(v as f64)).collect();
                    let basis = dev
                        .try_tensor_from_vec(basis, (rows.len(), 6usize))
                        .map_err(dev_err("forward"))?;
                    p.try_matmul(basis).map_err(dev_err("matmul"))?
                }
                None => p,
            };
            let theta = theta
                .try_reshape_like(&(n, 2usize, 3usize))
                .map_err(dev_err("forward"))?;
            if D::HOST && s.padding == crate::spec::Padding::Zeros {
                return affine_sample_with(x, theta, (ho, wo), s.align_corners, s.op().mode);
            }
            affine_grid(theta, [n, c, ho, wo], s.align_corners)?
        }
        Transform::Projective(_) => projective_grid(p, [n, ho, wo], s.align_corners)?,
        Transform::Tps(h) => {
            let k = h.grid * h.grid;
            let m = plan
                .tps_matrix()
                .expect("a tps plan has its matrix")
                .iter()
                .map(|&v| E::of(v))
                .collect();
            let m = dev
                .try_tensor_from_vec(m, (ho * wo, k))
                .map_err(dev_err("forward"))?;
            let pts = p
                .try_reshape_like(&(n, k, 2usize))
                .map_err(dev_err("forward"))?;
            tps_grid(pts, m, [ho, wo])?
        }
        Transform::None => unreachable!("a transformer"),
    };
    grid_sample_with(x, grid, s.op())
}

/// A parameter as the forward takes it: flat, reshaped where used.
type FlatParam<E, D, T> = Tensor<(usize,), E, D, T>;

/// What the layers of one forward pass share: the parameters (each taken once), the dropout masks
/// (taken in order), the device.
struct Ctx<'a, E: Real, D: OpDevice<E>, T> {
    names: Vec<&'a str>,
    params: Vec<Option<FlatParam<E, D, T>>>,
    shapes: Vec<&'a [usize]>,
    masks: Option<std::slice::Iter<'a, Vec<E>>>,
    dev: D,
}

fn dev_err<Er: std::fmt::Display>(op: &'static str) -> impl Fn(Er) -> OpError {
    move |e| OpError::Device {
        op,
        what: e.to_string(),
    }
}

impl<E: Real, D: OpDevice<E>, T: Tape<E, D>> Ctx<'_, E, D, T> {
    /// The parameter `name` as it was given: flat (no reshape on the tape).
    fn take_flat(&mut self, name: &str) -> Result<FlatParam<E, D, T>, OpError> {
        let i = self
            .names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| OpError::shape("forward", format!("no parameter {name}")))?;
        self.params[i]
            .take()
            .ok_or_else(|| OpError::shape("forward", format!("parameter {name} used twice")))
    }

    /// The parameter `name`, reshaped to its shape.
    fn take<S: Shape>(
        &mut self,
        name: &str,
        like: impl FnOnce(&[usize]) -> S,
    ) -> Result<Tensor<S, E, D, T>, OpError> {
        let i = self
            .names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| OpError::shape("forward", format!("no parameter {name}")))?;
        let shape = like(self.shapes[i]);
        self.take_flat(name)?
            .try_reshape_like(&shape)
            .map_err(dev_err("forward"))
    }

    /// The next dropout mask as a tensor of `shape` (None in eval mode).
    fn mask<S: Shape>(&mut self, shape: S) -> Result<Option<Tensor<S, E, D>>, OpError> {
        let Some(masks) = self.masks.as_mut() else {
            return Ok(None);
        };
        let m = masks
            .next()
            .ok_or_else(|| OpError::shape("forward", "fewer dropout masks than dropout layers"))?;
        if m.len() != shape.num_elements() {
            return Err(OpError::shape(
                "forward",
                format!(
                    "a dropout mask of {} values for {:?}",
                    m.len(),
                    shape.concrete()
                ),
            ));
        }
        self.dev
            .try_tensor_from_vec(m.clone(), shape)
            .map(Some)
            .map_err(dev_err("dropout"))
    }
}

fn is_pool2(l: Option<&PlannedLayer>) -> bool {
    matches!(
        l.map(|l| l.layer),
        Some(Layer::MaxPool2d {
            kernel: 2,
            stride: None | Some(2)
        })
    )
}
fn is_relu(l: Option<&PlannedLayer>) -> bool {
    matches!(l.map(|l| l.layer), Some(Layer::Relu))
}

fn unsupported(what: String) -> OpError {
    OpError::shape("forward", format!("{what}: not implemented by the ops yet"))
}

/// Layers without parameters from `layers[0]`, on any tape; returns the activation and the number
/// of layers used (max_pool2d then relu run as one op on the CPU).
fn run_free<E, D, Tx>(
    x: Act<E, D, Tx>,
    layers: &[PlannedLayer],
    ctx: &mut Ctx<'_, E, D, impl Tape<E, D>>,
) -> Result<(Act<E, D, Tx>, usize), OpError>
where
    E: Real,
    D: OpDevice<E>,
    Tx: Tape<E, D>,
{
    let l = &layers[0];
    Ok(match (l.layer, x) {
        (Layer::MaxPool2d { kernel, stride }, Act::Map(x)) => {
            let s = stride.unwrap_or(kernel);
            if D::HOST && is_relu(layers.get(1)) {
                (Act::Map(max_pool2d_relu(x, kernel, s)?), 2)
            } else {
                (Act::Map(max_pool2d(x, kernel, s)?), 1)
            }
        }
        (Layer::AvgPool2d { kernel, stride }, Act::Map(x)) => (
            Act::Map(avg_pool2d(x, kernel, stride.unwrap_or(kernel))?),
            1,
        ),
        (Layer::Relu, Act::Map(x)) => (Act::Map(x.try_relu().map_err(dev_err("relu"))?), 1),
        (Layer::Relu, Act::Flat(x)) => (Act::Flat(x.try_relu().map_err(dev_err("relu"))?), 1),
        (Layer::Dropout { .. }, Act::Map(x)) => match ctx.mask(*x.shape())? {
            Some(m) => (Act::Map(x.try_mul(m).map_err(dev_err("dropout"))?), 1),
            None => (Act::Map(x), 1),
        },
        (Layer::Dropout { .. }, Act::Flat(x)) => match ctx.mask(*x.shape())? {
            Some(m) => (Act::Flat(x.try_mul(m).map_err(dev_err("dropout"))?), 1),
            None => (Act::Flat(x), 1),
        },
        (Layer::Dropout2d { .. }, Act::Map(x)) => {
            let s = *x.shape();
            match ctx.mask((s.0, s.1))? {
                Some(m) => {
                    let m = m
                        .try_broadcast_like::<_, Axes2<2, 3>>(&s)
                        .map_err(dev_err("dropout2d"))?;
                    (Act::Map(x.try_mul(m).map_err(dev_err("dropout2d"))?), 1)
                }
                None => (Act::Map(x), 1),
            }
        }
        (Layer::Flatten, Act::Map(x)) => {
            let (n, c, h, w) = *x.shape();
            let x = x
                .try_reshape_like(&(n, c * h * w))
                .map_err(dev_err("flatten"))?;
            (Act::Flat(x), 1)
        }
        (Layer::Flatten, x @ Act::Flat(_)) => (x, 1),
        (layer, _) => return Err(unsupported(format!("{layer:?}"))),
    })
}

/// The layer with parameters at `layers[0]` (with the layers fused into it on the CPU: conv →
/// max_pool2d(2) → relu, or conv → dropout2d → max_pool2d(2) → relu, as one op); the output
/// carries the parameters' tape merged with the input's.
fn run_param<E, D, Tx, T>(
    x: Act<E, D, Tx>,
    layers: &[PlannedLayer],
    ctx: &mut Ctx<'_, E, D, T>,
) -> Result<(Act<E, D, T>, usize), OpError>
where
    E: Real,
    D: OpDevice<E>,
    Tx: Tape<E, D>,
    T: Tape<E, D> + Merge<Tx> + Merge<T> + Default,
{
    let l = &layers[0];
    let (wn, bn) = l.params.as_ref().expect("a layer with parameters");
    match (l.layer, x) {
        (
            Layer::Conv2d {
                stride: 1,
                padding: 0,
                ..
            },
            Act::Map(x),
        ) => {
            let w = ctx.take(wn, |s| (s[0], s[1], s[2], s[3]))?;
            let b = ctx.take_flat(bn)?;
            let o = w.shape().0;
            if D::HOST && is_pool2(layers.get(1)) && is_relu(layers.get(2)) {
                return Ok((Act::Map(conv_pool_relu(x, w, b)?), 3));
            }
            let drop2d = matches!(
                layers.get(1).map(|l| l.layer),
                Some(Layer::Dropout2d { .. })
            );
            if D::HOST && drop2d && is_pool2(layers.get(2)) && is_relu(layers.get(3)) {
                // The mask scales each conv plane inside the op (no conv output tensor).
                let n = x.shape().0;
                let mask = ctx.mask((n, o))?;
                return Ok((Act::Map(conv_pool_relu_scaled(x, w, b, mask)?), 4));
            }
            Ok((Act::Map(conv2d(x, w, b)?), 1))
        }
        (
            Layer::Conv2d {
                stride, padding, ..
            },
            Act::Map(x),
        ) => {
            let w = ctx.take(wn, |s| (s[0], s[1], s[2], s[3]))?;
            let b = ctx.take_flat(bn)?;
            Ok((Act::Map(strided_conv2d(x, w, b, stride, padding)?), 1))
        }
        (Layer::Linear { out }, Act::Flat(x)) => {
            let (w, b) = (ctx.take_flat(wn)?, ctx.take_flat(bn)?);
            // The first layer of a part may see the untraced input: it joins the tape here (only a
            // linear layer needs to; the convs take an untraced input as it is).
            let (x, tx) = x.split_tape();
            let x = x.put_tape(T::default().merge(tx));
            Ok((Act::Flat(linear(x, w, b, out)?), 1))
        }
        (layer, _) => Err(unsupported(format!("{layer:?}"))),
    }
}

/// Runs `layers` on `x`: layers without parameters on `x`'s own tape until the first with
/// parameters, which merges the parameters' tape in.
fn run_part<E, D, Tx, T>(
    x: Act<E, D, Tx>,
    layers: &[PlannedLayer],
    ctx: &mut Ctx<'_, E, D, T>,
) -> Result<Act<E, D, T>, OpError>
where
    E: Real,
    D: OpDevice<E>,
    Tx: Tape<E, D>,
    T: Tape<E, D> + Merge<Tx> + Merge<T> + Default,
{
    let mut i = 0;
    let mut x = x;
    while i < layers.len() && layers[i].params.is_none() {
        let (y, used) = run_free(x, &layers[i..], ctx)?;
        x = y;
        i += used;
    }
    if i == layers.len() {
        return Err(OpError::shape("forward", "a part without parameters"));
    }
    let (mut y, used) = run_param(x, &layers[i..], ctx)?;
    i += used;
    while i < layers.len() {
        let (z, used) = if layers[i].params.is_none() {
            run_free(y, &layers[i..], ctx)?
        } else {
            run_param(y, &layers[i..], ctx)?
        };
        y = z;
        i += used;
    }
    Ok(y)
}

/// `x · wᵀ + b` with `w` stored `[out, in]` as in PyTorch.
fn linear<E: Real, D: OpDevice<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<(usize, usize), E, D, T>,
    w: Tensor<(usize,), E, D, T>,
    b: Tensor<(usize,), E, D, T>,
    out: usize,
) -> Result<Tensor<(usize, usize), E, D, T>, OpError> {
    let (n, inp) = *x.shape();
    let dev_err = dev_err::<D::Err>("linear");
    let w = w
        .try_reshape_like(&(out, inp))
        .map_err(&dev_err)?
        .try_permute::<_, Axes2<1, 0>>()
        .map_err(&dev_err)?;
    let b = b
        .try_reshape_like(&(out,))
        .map_err(&dev_err)?
        .try_broadcast_like::<_, Axis<0>>(&(n, out))
        .map_err(&dev_err)?;
    x.try_matmul(w)
        .map_err(&dev_err)?
        .try_add(b)
        .map_err(&dev_err)
}

/// Runs the network of `plan`. `params` are in `plan.params` order (flat, any tape: traced for
/// training, plain for inference); `x` is a normalised batch `[N, C, H, W]` of the plan's input;
/// `dropout` is `Some` in training mode.
pub fn forward<E, D, T>(
    plan: &Plan,
    params: Vec<Tensor<(usize,), E, D, T>>,
    x: Tensor<Dyn4, E, D>,
    dropout: Option<&DropoutMasks<E>>,
) -> Result<Outputs<E, D, T>, OpError>
where
    E: Real,
    D: OpDevice<E>,
    T: Tape<E, D> + Merge<T> + Merge<NoneTape> + Default,
{
    if params.len() != plan.params.len() {
        return Err(OpError::shape(
            "forward",
            format!(
                "{} parameters, the network has {}",
                params.len(),
                plan.params.len()
            ),
        ));
    }
    let (n, c, h, w) = *x.shape();
    let Dims::Map {
        c: ic,
        h: ih,
        w: iw,
    } = plan.input
    else {
        unreachable!("a plan's input is an image")
    };
    if (c, h, w) != (ic, ih, iw) {
        return Err(OpError::shape(
            "forward",
            format!(
                "input {:?}: the network takes [N, {ic}, {ih}, {iw}]",
                [n, c, h, w]
            ),
        ));
    }
    let mut ctx = Ctx {
        names: plan.params.iter().map(|(n, _)| n.as_str()).collect(),
        shapes: plan.params.iter().map(|(_, s)| s.as_slice()).collect(),
        params: params.into_iter().map(Some).collect(),
        masks: dropout.map(|m| m.masks.iter()),
        dev: x.device().clone(),
    };
    let (y, theta, warped) = match plan.transform {
        Transform::None => (
            run_part(Act::Map(x), &plan.classifier, &mut ctx)?,
            None,
            None,
        ),
        t => {
            let Act::Flat(p) = run_part(Act::Map(x.clone()), &plan.localization, &mut ctx)? else {
                return Err(OpError::shape(
                    "forward",
                    "the regressor's output is not flat",
                ));
            };
            let p_out = p.retaped::<NoneTape>();
            let warped = transform(x, p, &t, plan)?;
            let warped_out = warped.retaped::<NoneTape>();
            (
                run_part(Act::Map(warped), &plan.classifier, &mut ctx)?,
                Some(p_out),
                Some(warped_out),
            )
        }
    };
    let Act::Flat(logits) = y else {
        return Err(OpError::shape(
            "forward",
            "the classifier's output is not flat",
        ));
    };
    let log_probs = logits
        .try_log_softmax::<Axis<1>>()
        .map_err(dev_err("log_softmax"))?;
    Ok(Outputs {
        log_probs,
        theta,
        warped,
    })
}
