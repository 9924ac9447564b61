//! ONNX `LogSoftmax` for our tract runner, computed as `x − max − ln Σ exp(x − max)`.
//!
//! Why: tract 0.23's own LogSoftmax gives −inf for log-probabilities below about −104 (where
//! `exp` underflows in float32) where ONNX Runtime, PyTorch and our runners give the finite value:
//! the ONNX mutation fuzz found logits of −7123 that tract turned into −inf. The seed network's
//! LogSoftmax is over the classes of `[N, K]` logits (axis 1 or −1), the one form this op takes.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// The `OpBuilder` of `LogSoftmax`.
pub fn log_softmax(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let axis = node.get_attr_opt::<i64>("axis")?.unwrap_or(-1);
    Ok((expand(LogSoftmaxExpansion { axis }), vec![]))
}

#[derive(Clone, Debug)]
struct LogSoftmaxExpansion {
    axis: i64,
}

impl Expansion for LogSoftmaxExpansion {
    fn name(&self) -> StaticName {
        "LogSoftmax".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = model.outlet_fact(inputs[0])?;
        if x.rank() != 2
            || x.datum_type != f32::datum_type()
            || !(self.axis == 1 || self.axis == -1)
        {
            bail!(
                "LogSoftmax: this runner computes float32 [N, K] along axis 1 (got rank {}, {:?}, axis {})",
                x.rank(),
                x.datum_type,
                self.axis
            );
        }
        model.wire_node(name, StnLogSoftmax, inputs)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct StnLogSoftmax;

impl Op for StnLogSoftmax {
    fn name(&self) -> StaticName {
        "StnLogSoftmax".into()
    }
    op_as_typed_op!();
}

impl EvalOp for StnLogSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let k = x.shape()[1].max(1);
        // In place when tract hands the only reference over (it does: nothing else reads the
        // logits), else on a copy.
        let mut out = x.into_tensor();
        for row in out
            .try_as_plain_ram_mut()?
            .as_slice_mut::<f32>()?
            .chunks_mut(k)
        {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
            let ln = sum.ln();
            for v in row.iter_mut() {
                *v = *v - max - ln;
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for StnLogSoftmax {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
}
