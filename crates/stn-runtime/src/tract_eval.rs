//! What our tract ops share: our op's CPU forward run as a tract op's `eval` (the inputs read in
//! place from tract's tensors, the output written straight into a new tract tensor), and the
//! registration of an op over tract's own, kept for the cases ours does not cover.
//!
//! Why the direct write: building the output as a `Vec` and handing it over
//! (`ArrayD::into_tensor`) copies it into tract's aligned storage — at batch 1000 that copy was 14%
//! of the tract runner's time.

use std::sync::OnceLock;

use tract_onnx::model::{Onnx, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// An ONNX op builder of tract's table.
pub(crate) type OpBuilder =
    fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// Puts `ours` in `onnx`'s op table as `name`, keeping tract's own builder in `theirs` for the
/// nodes `ours` hands back.
pub(crate) fn register_over(
    onnx: &mut Onnx,
    name: &'static str,
    theirs: &'static OnceLock<OpBuilder>,
    ours: OpBuilder,
) {
    if let Some(&builder) = onnx.op_register.0.get(name) {
        theirs.get_or_init(|| builder);
    }
    onnx.op_register.insert(name, ours);
}

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
