//! ONNX `MaxPool` for tract, computed by our own kernel (`stn_ops::MaxPool2d`'s CPU forward) when
//! it is the plain case: 2-d, a square window, equal strides, no padding, no dilation, floor
//! mode, no `Indices` output, f32 — every MaxPool of the seed network. Other types go to tract's
//! pool with the same window, and any other pool to tract's own MaxPool builder, kept from its op
//! table.
//!
//! Why: tract's MaxPool walks each window through its generic patch visitor, one element at a
//! time; ours takes whole output rows of a 2×2 / stride-2 pool in SIMD lanes, picked for the CPU
//! at run time.

use std::sync::OnceLock;

use tract_onnx::model::{Onnx, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::cnn::{HirMaxPool, PaddingSpec, PoolSpec};
use tract_onnx::tract_hir::ops::nn::DataFormat;

use stn_ops::MaxPool2d;

use crate::tract_eval::{register_over, OpBuilder};

/// tract's own MaxPool builder, for the pools ours does not cover.
static TRACT_MAX_POOL: OnceLock<OpBuilder> = OnceLock::new();

/// Puts our `MaxPool` in `onnx`'s op table, keeping tract's for the other cases.
pub fn register(onnx: &mut Onnx) {
    register_over(onnx, "MaxPool", &TRACT_MAX_POOL, max_pool);
}

/// Our kernel's `MaxPool2d` for `node`, if the node is the plain case it computes.
fn plain_pool(node: &NodeProto) -> TractResult<Option<MaxPool2d>> {
    let all = |name: &str, v: i64| -> TractResult<bool> {
        Ok(node
            .get_attr_opt_tvec::<i64>(name)?
            .is_none_or(|xs| xs.iter().all(|&x| x == v)))
    };
    let Some(kernel) = node.get_attr_opt_tvec::<i64>("kernel_shape")? else {
        return Ok(None);
    };
    // ONNX's default stride is 1 on every axis.
    let strides = node
        .get_attr_opt_tvec::<i64>("strides")?
        .unwrap_or_else(|| tvec![1, 1]);
    let plain = kernel.len() == 2
        && kernel[0] == kernel[1]
        && kernel[0] > 0
        && strides.len() == 2
        && strides[0] == strides[1]
        && strides[0] > 0
        && all("dilations", 1)?
        && all("pads", 0)?
        && node.get_attr_opt::<i64>("ceil_mode")?.unwrap_or(0) == 0
        && matches!(
            node.get_attr_opt::<&str>("auto_pad")?.unwrap_or("NOTSET"),
            "NOTSET" | "VALID"
        )
        && node.input.len() == 1
        && node.output.len() == 1;
    Ok(plain.then(|| MaxPool2d {
        kernel: kernel[0] as usize,
        stride: strides[0] as usize,
        relu: false,
    }))
}

fn max_pool(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    if let Some(pool) = plain_pool(node)? {
        return Ok((expand(PoolExpansion(StnMaxPool(pool))), vec![]));
    }
    match TRACT_MAX_POOL.get() {
        Some(tract_max_pool) => tract_max_pool(ctx, node),
        None => bail!(
            "MaxPool: only the plain 2-d case (square window, equal strides, no padding) is supported"
        ),
    }
}

#[derive(Clone, Debug)]
struct PoolExpansion(StnMaxPool);

impl Expansion for PoolExpansion {
    fn name(&self) -> StaticName {
        "MaxPool".into()
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
        s.equals(&inputs[0].rank, 4)?;
        s.equals(&outputs[0].rank, 4)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], &inputs[0].shape[1])?;
        let MaxPool2d { kernel, stride, .. } = self.0 .0;
        for d in 2..4 {
            s.given(&inputs[0].shape[d], move |s, side| {
                s.equals(&outputs[0].shape[d], pooled_side(side, kernel, stride))
            })?;
        }
        Ok(())
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let dt = model.outlet_fact(inputs[0])?.datum_type;
        if dt == f32::datum_type() {
            return model.wire_node(name, self.0.clone(), inputs);
        }
        // Other types (ONNX allows integers and other floats) by tract's own pool, the same one.
        let MaxPool2d { kernel, stride, .. } = self.0 .0;
        let pool = HirMaxPool {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![kernel, kernel],
                padding: PaddingSpec::Valid,
                dilations: None,
                strides: Some(tvec![stride, stride]),
                input_channels: 0,
                output_channels: 0,
            },
            with_index_outputs: None,
        };
        pool.wire(name, model, inputs)
    }
}

/// A pooled side in floor mode: `(side − kernel) / stride + 1`, as a symbolic dimension.
fn pooled_side(side: TDim, kernel: usize, stride: usize) -> TDim {
    (side - kernel as i64) / stride as u64 + 1
}

/// tract's typed op around our kernel: `x [N, C, H, W]` f32 → `[N, C, Ho, Wo]`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StnMaxPool(MaxPool2d);

impl Op for StnMaxPool {
    fn name(&self) -> StaticName {
        "StnMaxPool".into()
    }
    op_as_typed_op!();
}

impl EvalOp for StnMaxPool {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        crate::tract_eval::eval_stn_op(&self.0, &inputs)
    }
}

impl TypedOp for StnMaxPool {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = &inputs[0].shape;
        let MaxPool2d { kernel, stride, .. } = self.0;
        Ok(tvec!(f32::fact([
            x[0].clone(),
            x[1].clone(),
            pooled_side(x[2].clone(), kernel, stride),
            pooled_side(x[3].clone(), kernel, stride),
        ])))
    }
}
