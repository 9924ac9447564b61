//! Training on the CPU: `relu(max_pool2d(conv2d(x, w, b) · s, 2, 2))` as one op — every conv block
//! of the seed network; `s`, optional, scales each output plane (`conv2`'s Dropout2d mask, already
//! divided by the keep probability).
//!
//! Why: as two ops the conv's output is a tensor — zeroed by one thread, written by the conv's,
//! copied again by one thread as the pool's input, and its gradient zeroed by one thread by dfdx:
//! three serial passes over the largest buffers of a step (1.5 MB for `conv1` at batch 64). Here the
//! conv writes into a recycled buffer the op keeps for its backward (not zeroed: the conv writes
//! every value), the pool reads it in place, and the backward's gradient of the conv output is a
//! recycled buffer whose planes the pool's backward zeroes just before scattering into them; the
//! scale is a multiply per plane instead of dfdx's broadcasting `mul` (generic strided loops, and
//! two more tensors). The kernels are [`Conv2d`]'s and [`MaxPool2d`]'s, run in the same order on
//! the same values, and the scale is the same multiply as `mul`'s (forward `y·s`, backward `g·s`),
//! so outputs and gradients are the separate ops', bit for bit — but for the sign of a zero: `mul`'s
//! backward adds `g·s` to a zeroed buffer, so a `-0` gradient becomes `+0` there and stays `-0`
//! here (equal values; the trained weights of a test epoch match to the bit). CUDA composes the
//! ops ([`OpDevice::HOST`]).

use std::sync::{Arc, Mutex};

use dfdx::prelude::*;
use dfdx::tensor::Merge;
use rayon::prelude::*;

use crate::op::{apply, Buf, CustomOp, HostCopy, Input, OpDevice, OpError, Real};
use crate::{Conv2d, Dyn4, MaxPool2d};

#[cfg(feature = "cuda")]
use crate::cuda::{CudaBuf, CudaKernels};
#[cfg(feature = "cuda")]
use cudarc::driver::CudaSlice;

const POOL: MaxPool2d = MaxPool2d {
    kernel: 2,
    stride: 2,
    relu: true,
};

/// `relu(max_pool2d(conv2d(x, weight, bias) · scale, 2, 2))`; inputs `x [N, C, H, W]`,
/// `weight [O, C, K, K]`, `bias [O]` and optionally `scale [N, O]` (no gradient). One value per
/// call: it holds the conv's output from the forward for the backward.
#[derive(Clone)]
pub struct ConvPoolReluOp<E: Real> {
    conv_out: Arc<Mutex<Option<HostCopy<E>>>>,
}

impl<E: Real> Default for ConvPoolReluOp<E> {
    fn default() -> Self {
        ConvPoolReluOp {
            conv_out: Arc::new(Mutex::new(None)),
        }
    }
}

/// The conv's output dimensions for inputs `[x, weight, bias]` (and a scale `[N, O]`, checked).
fn conv_dims<E: Real>(inputs: &[&[usize]]) -> Result<Vec<usize>, OpError> {
    let cd = <Conv2d as CustomOp<E>>::out_dims(&Conv2d, &inputs[..inputs.len().min(3)])?;
    if let Some(s) = inputs.get(3) {
        if s[..] != cd[..2] {
            return Err(OpError::shape(
                "conv_pool_relu",
                format!(
                    "scale must be {}×{} (images × output channels), got {s:?}",
                    cd[0], cd[1]
                ),
            ));
        }
    }
    Ok(cd)
}

/// Multiplies each plane of `y` by its entry of `scale` (`mul`'s forward and backward alike).
fn scale_planes<E: Real>(y: &mut [E], scale: &[E]) {
    let plane = y.len() / scale.len();
    y.par_chunks_mut(plane)
        .zip(scale.par_iter())
        .for_each(|(p, &s)| crate::dispatch!(I => p.iter_mut().for_each(|v| *v *= s)));
}

impl<E: Real> ConvPoolReluOp<E> {
    /// The (scaled) conv's output for `inputs` and its dimensions.
    fn conv(inputs: &[Buf<E>]) -> (HostCopy<E>, Vec<usize>) {
        let dims: Vec<&[usize]> = inputs.iter().map(|b| b.dims).collect();
        let cd = conv_dims::<E>(&dims).expect("checked by out_dims");
        // Recycled, not zeroed: the conv writes every output (`CPU_FWD_WRITES_ALL`).
        let mut y = HostCopy::take(cd.iter().product());
        Conv2d.cpu_fwd(&inputs[..3], &mut y);
        if let Some(s) = inputs.get(3) {
            scale_planes(&mut y, s.data);
        }
        (y, cd)
    }
}

impl<E: Real> CustomOp<E> for ConvPoolReluOp<E> {
    const NAME: &'static str = "conv_pool_relu";

    fn out_dims(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, OpError> {
        if !(3..=4).contains(&inputs.len()) {
            return Err(OpError::shape(
                "conv_pool_relu",
                "expects input, weight, bias and an optional scale",
            ));
        }
        let cd = conv_dims::<E>(inputs)?;
        <MaxPool2d as CustomOp<E>>::out_dims(&POOL, &[&cd])
    }

    fn cpu_fwd(&self, inputs: &[Buf<E>], out: &mut [E]) {
        let (y, cd) = Self::conv(inputs);
        POOL.cpu_fwd(
            &[Buf {
                data: &y,
                dims: &cd,
            }],
            out,
        );
        *self.conv_out.lock().unwrap_or_else(|e| e.into_inner()) = Some(y);
    }

    fn cpu_bwd(&self, inputs: &[Buf<E>], grad_out: &[E], grads: &mut [Option<&mut [E]>]) {
        let saved = self
            .conv_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // The forward's output (recomputed only if this op's backward runs twice).
        let (y, cd) = match saved {
            Some(y) => {
                let dims: Vec<&[usize]> = inputs.iter().map(|b| b.dims).collect();
                (y, conv_dims::<E>(&dims).expect("checked by out_dims"))
            }
            None => Self::conv(inputs),
        };
        // Recycled, and each plane zeroed by the pool's backward just before its scatter.
        let mut gy = HostCopy::take(y.len());
        POOL.bwd_planes(
            Buf {
                data: &y,
                dims: &cd,
            },
            grad_out,
            &mut gy,
            true,
        );
        drop(y);
        if let Some(s) = inputs.get(3) {
            scale_planes(&mut gy, s.data);
        }
        Conv2d.cpu_bwd(&inputs[..3], &gy, &mut grads[..3]);
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _k: &CudaKernels,
        _inputs: &[CudaBuf],
        _out: &mut CudaSlice<f32>,
    ) -> Result<(), OpError> {
        Err(OpError::cpu_only(
            "conv_pool_relu",
            "compose conv2d, max_pool2d and relu",
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
            "conv_pool_relu",
            "compose conv2d, max_pool2d and relu",
        ))
    }
}

/// `relu(max_pool2d(conv2d(x, weight, bias), 2, 2))` as one op on the CPU. The output carries the
/// parameters' tape merged with the input's; the input's gradient is computed only when it has a
/// tape of its own.
pub fn conv_pool_relu<Sx, Sw, Sb, E, D, Tx, T>(
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
    conv_pool_relu_scaled(x, weight, bias, None::<Tensor<(usize, usize), E, D>>)
}

/// `relu(max_pool2d(conv2d(x, weight, bias) · scale, 2, 2))` as one op on the CPU, `scale [N, O]`
/// (when given) multiplying each output plane: `conv2`'s Dropout2d mask. No gradient for `scale`.
pub fn conv_pool_relu_scaled<Sx, Sw, Sb, Ss, E, D, Tx, T>(
    x: Tensor<Sx, E, D, Tx>,
    weight: Tensor<Sw, E, D, T>,
    bias: Tensor<Sb, E, D, T>,
    scale: Option<Tensor<Ss, E, D>>,
) -> Result<Tensor<Dyn4, E, D, T>, OpError>
where
    Sx: Shape,
    Sw: Shape,
    Sb: Shape,
    Ss: Shape,
    E: Real,
    D: OpDevice<E>,
    Tx: Tape<E, D>,
    T: Tape<E, D> + Merge<Tx>,
{
    let dev = weight.device().clone();
    let (x, tx) = Input::new("conv_pool_relu", x)?;
    let (w, tw) = Input::new("conv_pool_relu", weight)?;
    let (b, tb) = Input::new("conv_pool_relu", bias)?;
    let mut inputs = vec![x, w, b];
    if let Some(s) = scale {
        inputs.push(Input::new("conv_pool_relu", s)?.0);
    }
    apply(
        ConvPoolReluOp::default(),
        &dev,
        inputs,
        tw.merge(tb).merge(tx),
    )
}
