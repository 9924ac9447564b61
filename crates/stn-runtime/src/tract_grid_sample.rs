//! ONNX `GridSample` for tract, computed by our own kernel (`stn_ops::GridSample`'s CPU forward).
//!
//! Why: tract's own GridSample is a generic n-d sampler that builds index vectors per output
//! element through ndarray's dynamic indexing; on the seed network it was ~40% of tract's time
//! (perf: `sample_nd`, `pixel_at_nd`, `index_checked` and their allocations). Ours samples a 2-d
//! plane with 8-wide SIMD and no allocation per element. The 2-d f32 case of every mode (what our
//! exporter and PyTorch's write) takes this route — except cubic with border or reflection
//! padding, where ONNX's semantics (the coordinate padded before the taps) are not PyTorch's (each
//! tap padded) and tract's own op computes ONNX's; anything else falls back to tract's op too.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::nn::grid_sample::{
    GridSample as TractGridSample, InterpolationMode, PaddingMode,
};
use tract_onnx::tract_hir::internal::*;

use stn_ops::Padding;

/// The `OpBuilder` of `GridSample`: the same attributes and checks as tract's own builder.
pub fn grid_sample(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let mode = match node.get_attr_opt("mode")?.unwrap_or("linear") {
        "bilinear" | "linear" => InterpolationMode::Bilinear,
        "nearest" => InterpolationMode::Nearest,
        "bicubic" | "cubic" => InterpolationMode::Bicubic,
        s => bail!("Unsupported GridSample mode: {s}"),
    };
    let padding_mode = match node.get_attr_opt("padding_mode")?.unwrap_or("zeros") {
        "zeros" => PaddingMode::Zeros,
        "border" => PaddingMode::Border,
        "reflection" => PaddingMode::Reflection,
        s => bail!("Unsupported GridSample padding_mode: {s}"),
    };
    let align_corners = node.get_attr_opt::<i64>("align_corners")?.unwrap_or(0) != 0;
    if ctx.onnx_operator_set_version < 16 {
        bail!(
            "GridSample needs opset 16 or later (the model has {})",
            ctx.onnx_operator_set_version
        );
    }
    Ok((
        expand(GridSampleExpansion(TractGridSample {
            mode,
            padding_mode,
            align_corners,
        })),
        vec![],
    ))
}

#[derive(Clone, Debug)]
struct GridSampleExpansion(TractGridSample);

impl Expansion for GridSampleExpansion {
    fn name(&self) -> StaticName {
        "GridSample".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].rank, &inputs[1].rank)?;
        s.equals(&inputs[0].rank, &outputs[0].rank)?;
        s.equals(&inputs[0].shape[0], &inputs[1].shape[0])?;
        s.equals(&inputs[0].shape[0], &outputs[0].shape[0])?;
        s.equals(&inputs[0].shape[1], &outputs[0].shape[1])?;
        s.given(&inputs[0].rank, move |s, rank| {
            let spatial = rank as usize - 2;
            for d in 0..spatial {
                s.equals(&outputs[0].shape[2 + d], &inputs[1].shape[1 + d])?;
            }
            s.equals(
                &inputs[1].shape[rank as usize - 1],
                (spatial as i64).to_dim(),
            )?;
            Ok(())
        })
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = model.outlet_fact(inputs[0])?;
        let ours = x.rank() == 4
            && x.datum_type == f32::datum_type()
            && model.outlet_fact(inputs[1])?.datum_type == f32::datum_type()
            // ONNX's cubic pads the coordinate before its taps where PyTorch (and our kernel)
            // pads each tap: with border or reflection padding, tract's own op is ONNX's.
            && !(self.0.mode == InterpolationMode::Bicubic
                && self.0.padding_mode != PaddingMode::Zeros);
        if !ours {
            return model.wire_node(name, self.0.clone(), inputs);
        }
        let padding = match self.0.padding_mode {
            PaddingMode::Zeros => Padding::Zeros,
            PaddingMode::Border => Padding::Border,
            PaddingMode::Reflection => Padding::Reflection,
        };
        model.wire_node(
            name,
            StnGridSample(stn_ops::GridSample {
                mode: match self.0.mode {
                    InterpolationMode::Bilinear => stn_ops::Mode::Bilinear,
                    InterpolationMode::Nearest => stn_ops::Mode::Nearest,
                    InterpolationMode::Bicubic => stn_ops::Mode::Bicubic,
                },
                padding,
                align_corners: self.0.align_corners,
            }),
            inputs,
        )
    }
}

/// tract's typed op around our kernel: input `[N, C, H, W]` f32, grid `[N, Ho, Wo, 2]`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StnGridSample(stn_ops::GridSample);

impl Op for StnGridSample {
    fn name(&self) -> StaticName {
        "StnGridSample".into()
    }
    op_as_typed_op!();
}

impl EvalOp for StnGridSample {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        crate::tract_eval::eval_stn_op(&self.0, &inputs)
    }
}

impl TypedOp for StnGridSample {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (x, g) = (&inputs[0].shape, &inputs[1].shape);
        Ok(tvec!(f32::fact([
            x[0].clone(),
            x[1].clone(),
            g[1].clone(),
            g[2].clone()
        ])))
    }
}
