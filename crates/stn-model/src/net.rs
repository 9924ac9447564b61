//! The seed network's architecture and forward pass.

use std::fmt;

use dfdx::prelude::*;
use dfdx::tensor::Merge;
use serde::{Deserialize, Serialize};
use stn_ops::{
    affine_grid, affine_sample, conv2d, conv_pool_relu, conv_pool_relu_scaled, grid_sample,
    max_pool2d, max_pool2d_relu, Dyn4, OpDevice, OpError, Padding, Real,
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

    /// Checks that the layers fit the canvas (28 ≤ side ≤ [`Arch::MAX_CANVAS`]), so the shape
    /// arithmetic below cannot wrap: a checkpoint or model claiming another canvas is refused.
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

    /// Side of the localisation net's last feature map (3 for 28×28).
    pub fn loc_side(&self) -> usize {
        ((self.canvas - 6) / 2 - 4) / 2
    }
    /// Side of the classifier's input.
    pub fn classifier_input(&self) -> usize {
        if self.stn {
            SAMPLED
        } else {
            self.canvas
        }
    }
    /// Side of the classifier's last feature map (4 for 28×28).
    pub fn cls_side(&self) -> usize {
        ((self.classifier_input() - 4) / 2 - 4) / 2
    }
    /// Inputs of `fc1` (the classifier's flattened feature map).
    pub fn fc1_in(&self) -> usize {
        20 * self.cls_side() * self.cls_side()
    }
    /// Inputs of `fc_loc.0` (the localisation net's flattened feature map).
    pub fn fc_loc_in(&self) -> usize {
        10 * self.loc_side() * self.loc_side()
    }

    /// Parameter names and shapes in PyTorch's `state_dict` order.
    pub fn param_specs(&self) -> Vec<(&'static str, Vec<usize>)> {
        let mut v = vec![
            ("conv1.weight", vec![10, 1, 5, 5]),
            ("conv1.bias", vec![10]),
            ("conv2.weight", vec![20, 10, 5, 5]),
            ("conv2.bias", vec![20]),
            ("fc1.weight", vec![50, self.fc1_in()]),
            ("fc1.bias", vec![50]),
            ("fc2.weight", vec![10, 50]),
            ("fc2.bias", vec![10]),
        ];
        if self.stn {
            v.extend([
                ("localization.0.weight", vec![8, 1, 7, 7]),
                ("localization.0.bias", vec![8]),
                ("localization.3.weight", vec![10, 8, 5, 5]),
                ("localization.3.bias", vec![10]),
                ("fc_loc.0.weight", vec![32, self.fc_loc_in()]),
                ("fc_loc.0.bias", vec![32]),
                ("fc_loc.2.weight", vec![6, 32]),
                ("fc_loc.2.bias", vec![6]),
            ]);
        }
        v
    }
}

/// What the network computes for a batch.
pub struct Outputs<E: Real, D: OpDevice<E>, T> {
    /// `[N, 10]`, with the tape of the forward pass.
    pub log_probs: Tensor<(usize, usize), E, D, T>,
    /// `[N, 2, 3]`, the STN's affine maps (without tape).
    pub theta: Option<Tensor<(usize, usize, usize), E, D>>,
    /// `[N, 1, 28, 28]`, the STN's output images (without tape).
    pub warped: Option<Tensor<Dyn4, E, D>>,
}

/// Dropout masks for one training batch, already scaled by 1/(1−p): `conv2` per (image, channel)
/// for the seed's `Dropout2d`, `fc1` per (image, unit) for its `F.dropout`.
pub struct DropoutMasks<E> {
    pub conv2: Vec<E>,
    pub fc1: Vec<E>,
}

impl<E: Clone> DropoutMasks<E> {
    /// The masks of images `..at` and `at..`.
    pub fn split(&self, at: usize) -> (DropoutMasks<E>, DropoutMasks<E>) {
        let (c, f) = (self.conv2.split_at(at * 20), self.fc1.split_at(at * 50));
        (
            DropoutMasks {
                conv2: c.0.to_vec(),
                fc1: f.0.to_vec(),
            },
            DropoutMasks {
                conv2: c.1.to_vec(),
                fc1: f.1.to_vec(),
            },
        )
    }
}

/// `x · wᵀ + b` with `w` stored `[out, in]` as in PyTorch.
/// `relu(max_pool2d(x, 2, 2))`: one op on the CPU, the pool then dfdx's ReLU elsewhere (CUDA).
fn pool_relu<E: Real, D: OpDevice<E>, T: Tape<E, D>>(
    x: Tensor<Dyn4, E, D, T>,
) -> Result<Tensor<Dyn4, E, D, T>, OpError> {
    if D::HOST {
        return max_pool2d_relu(x, 2, 2);
    }
    max_pool2d(x, 2, 2)?
        .try_relu()
        .map_err(|e| OpError::Device {
            op: "relu",
            what: e.to_string(),
        })
}

/// `relu(max_pool2d(conv2d(x, w, b), 2, 2))`: one op on the CPU (no conv output tensor), three
/// elsewhere (CUDA).
fn conv_block<E, D, Tx, T>(
    x: Tensor<Dyn4, E, D, Tx>,
    w: Tensor<Dyn4, E, D, T>,
    b: Tensor<(usize,), E, D, T>,
) -> Result<Tensor<Dyn4, E, D, T>, OpError>
where
    E: Real,
    D: OpDevice<E>,
    Tx: Tape<E, D>,
    T: Tape<E, D> + Merge<Tx>,
{
    if D::HOST {
        return conv_pool_relu(x, w, b);
    }
    pool_relu(conv2d(x, w, b)?)
}

fn linear<E: Real, D: OpDevice<E>, T: Tape<E, D> + Merge<T>>(
    x: Tensor<(usize, usize), E, D, T>,
    w: Tensor<(usize,), E, D, T>,
    b: Tensor<(usize,), E, D, T>,
    out: usize,
) -> Result<Tensor<(usize, usize), E, D, T>, OpError> {
    let (n, inp) = *x.shape();
    let dev_err = |e: D::Err| OpError::Device {
        op: "linear",
        what: e.to_string(),
    };
    let w = w
        .try_reshape_like(&(out, inp))
        .map_err(dev_err)?
        .try_permute::<_, Axes2<1, 0>>()
        .map_err(dev_err)?;
    let b = b
        .try_reshape_like(&(out,))
        .map_err(dev_err)?
        .try_broadcast_like::<_, Axis<0>>(&(n, out))
        .map_err(dev_err)?;
    x.try_matmul(w)
        .map_err(dev_err)?
        .try_add(b)
        .map_err(dev_err)
}

/// Runs the network. `params` are in `arch.param_specs()` order (flat, any tape: traced for
/// training, plain for inference); `x` is a normalised batch `[N, 1, canvas, canvas]`; `dropout`
/// is `Some` in training mode.
pub fn forward<E, D, T>(
    arch: &Arch,
    params: Vec<Tensor<(usize,), E, D, T>>,
    x: Tensor<Dyn4, E, D>,
    dropout: Option<&DropoutMasks<E>>,
) -> Result<Outputs<E, D, T>, OpError>
where
    E: Real,
    D: OpDevice<E>,
    T: Tape<E, D> + Merge<T> + Merge<NoneTape>,
{
    let specs = arch.param_specs();
    if params.len() != specs.len() {
        return Err(OpError::shape(
            "forward",
            format!(
                "{} parameters for {arch}, expected {}",
                params.len(),
                specs.len()
            ),
        ));
    }
    let (n, c, h, w) = *x.shape();
    if (c, h, w) != (1, arch.canvas, arch.canvas) {
        return Err(OpError::shape(
            "forward",
            format!(
                "input {:?} for {arch}: expected [N, 1, {s}, {s}]",
                [n, c, h, w],
                s = arch.canvas
            ),
        ));
    }
    let dev = x.device().clone();
    let dev_err = |e: D::Err| OpError::Device {
        op: "forward",
        what: e.to_string(),
    };
    let mut params: Vec<Option<_>> = params.into_iter().map(Some).collect();
    let mut take = |name: &str| -> Tensor<(usize,), E, D, T> {
        let i = specs
            .iter()
            .position(|(s, _)| *s == name)
            .expect("known parameter");
        params[i].take().expect("each parameter is used once")
    };
    let shape4 = |name: &str| -> Dyn4 {
        let s = &specs.iter().find(|(n, _)| *n == name).expect("known").1;
        (s[0], s[1], s[2], s[3])
    };

    let w1 = take("conv1.weight")
        .try_reshape_like(&shape4("conv1.weight"))
        .map_err(dev_err)?;
    let b1 = take("conv1.bias");
    let (y, theta, warped) = if arch.stn {
        let w0 = take("localization.0.weight")
            .try_reshape_like(&shape4("localization.0.weight"))
            .map_err(dev_err)?;
        let xs = conv_block(x.clone(), w0, take("localization.0.bias"))?;
        let w3 = take("localization.3.weight")
            .try_reshape_like(&shape4("localization.3.weight"))
            .map_err(dev_err)?;
        let xs = conv_block(xs, w3, take("localization.3.bias"))?;
        let xs = xs
            .try_reshape_like(&(n, arch.fc_loc_in()))
            .map_err(dev_err)?;
        let h = linear(xs, take("fc_loc.0.weight"), take("fc_loc.0.bias"), 32)?
            .try_relu()
            .map_err(dev_err)?;
        let theta = linear(h, take("fc_loc.2.weight"), take("fc_loc.2.bias"), 6)?;
        let theta = theta
            .try_reshape_like(&(n, 2usize, 3usize))
            .map_err(dev_err)?;
        let theta_out = theta.retaped::<NoneTape>();
        // The transformer: one op on the CPU (no grid tensor), affine_grid + grid_sample elsewhere.
        let warped = if D::HOST {
            affine_sample(x, theta, (SAMPLED, SAMPLED), false)?
        } else {
            let grid = affine_grid(theta, [n, 1, SAMPLED, SAMPLED], false)?;
            grid_sample(x, grid, Padding::Zeros, false)?
        };
        let warped_out = warped.retaped::<NoneTape>();
        (
            conv_block(warped, w1, b1)?,
            Some(theta_out),
            Some(warped_out),
        )
    } else {
        // No STN: the classifier reads the input itself (no gradient for the images).
        (conv_block(x, w1, b1)?, None, None)
    };
    let w2 = take("conv2.weight")
        .try_reshape_like(&shape4("conv2.weight"))
        .map_err(dev_err)?;
    let b2 = take("conv2.bias");
    let o2 = w2.shape().0;
    // Dropout2d between conv2 and its pool: a mask per (image, channel).
    let mask = dropout
        .map(|m| dev.try_tensor_from_vec(m.conv2.clone(), (n, o2)))
        .transpose()
        .map_err(dev_err)?;
    let y = if D::HOST {
        // One op: no conv output, masked or mask tensor of its own.
        conv_pool_relu_scaled(y, w2, b2, mask)?
    } else {
        let mut y = conv2d(y, w2, b2)?;
        if let Some(mask) = mask {
            let s = *y.shape();
            y = y
                .try_mul(
                    mask.try_broadcast_like::<_, Axes2<2, 3>>(&s)
                        .map_err(dev_err)?,
                )
                .map_err(dev_err)?;
        }
        pool_relu(y)?
    };
    let y = y.try_reshape_like(&(n, arch.fc1_in())).map_err(dev_err)?;
    let mut f = linear(y, take("fc1.weight"), take("fc1.bias"), 50)?
        .try_relu()
        .map_err(dev_err)?;
    if let Some(m) = dropout {
        let mask = dev
            .try_tensor_from_vec(m.fc1.clone(), (n, 50))
            .map_err(dev_err)?;
        f = f.try_mul(mask).map_err(dev_err)?;
    }
    let logits = linear(f, take("fc2.weight"), take("fc2.bias"), 10)?;
    let log_probs = logits.try_log_softmax::<Axis<1>>().map_err(dev_err)?;
    Ok(Outputs {
        log_probs,
        theta,
        warped,
    })
}
