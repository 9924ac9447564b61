//! Runs one of our ops' CPU forward as a tract op's `eval`: the inputs read in place from tract's
//! tensors, the output written straight into a new tract tensor.
//!
//! Why: building the output as a `Vec` and handing it over (`ArrayD::into_tensor`) copies it into
//! tract's aligned storage — at batch 1000 that copy was 14% of the tract runner's time.

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use stn_ops::op::Buf;
use stn_ops::CustomOp;

/// `op`'s forward on f32 `inputs`, its shapes checked by the op.
pub(crate) fn eval_stn_op<Op: CustomOp<f32>>(
    op: &Op,
    inputs: &[TValue],
) -> TractResult<TVec<TValue>> {
    let views = inputs
        .iter()
        .map(|t| t.try_as_plain_ram())
        .collect::<TractResult<TVec<_>>>()?;
    let data = views
        .iter()
        .map(|v| v.as_slice::<f32>())
        .collect::<TractResult<TVec<_>>>()?;
    let bufs: TVec<Buf<f32>> = data
        .iter()
        .zip(inputs)
        .map(|(&data, t)| Buf {
            data,
            dims: t.shape(),
        })
        .collect();
    let out_dims = stn_ops::checked_out_dims(op, &bufs).map_err(|e| format_err!("{e}"))?;
    let mut out = if Op::CPU_FWD_WRITES_ALL {
        // SAFETY: f32 has no invalid values, and the op writes every element before anything
        // reads it (`CustomOp::CPU_FWD_WRITES_ALL`).
        unsafe { Tensor::uninitialized::<f32>(&out_dims)? }
    } else {
        // Zeroed, as `CustomOp::cpu_fwd` expects its output.
        Tensor::zero::<f32>(&out_dims)?
    };
    op.cpu_fwd(&bufs, out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
    Ok(tvec!(out.into_tvalue()))
}
