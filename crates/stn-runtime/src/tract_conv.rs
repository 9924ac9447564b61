//! ONNX `Conv` for tract, computed by our own kernel (`stn_ops::Conv2d`'s CPU forward) when it is
//! the plain case: 2-d, stride 1, no padding, no dilation, one group, f32 — every Conv of the
//! seed network. Anything else goes to tract's own Conv builder, kept from its op table, and a
//! plain Conv of another type (f16, f64) to tract's own Conv op.
//!
//! Why: tract's Conv materialises an im2col matrix per image and multiplies it with a packed
//! GEMM; for these small one-channel layers the im2col copy alone was a third of tract's time
//! (perf: `Patcher::valid_2d` 33%, its GEMM 31%). Ours reads the im2col rows straight from the
//! image (an implicit im2col) into register-blocked products. tract still plans and runs the
//! graph: pooling, ReLU, the fully-connected layers and log-softmax are its own.

use std::sync::OnceLock;

use tract_onnx::model::{Onnx, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use crate::tract_eval::{register_over, OpBuilder};

/// tract's own Conv builder, for the convolutions ours does not cover.
static TRACT_CONV: OnceLock<OpBuilder> = OnceLock::new();

/// Puts our `Conv` in `onnx`'s op table, keeping tract's for the other cases.
pub fn register(onnx: &mut Onnx) {
    register_over(onnx, "Conv", &TRACT_CONV, conv);
}

fn conv(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let all = |name: &str, v: i64| -> TractResult<bool> {
        Ok(node
            .get_attr_opt_tvec::<i64>(name)?
            .is_none_or(|xs| xs.iter().all(|&x| x == v)))
    };
    let plain = node
        .get_attr_opt_tvec::<i64>("kernel_shape")?
        .is_some_and(|k| k.len() == 2)
        && all("strides", 1)?
        && all("dilations", 1)?
        && all("pads", 0)?
        && node.get_attr_opt::<i64>("group")?.unwrap_or(1) == 1
        && matches!(
            node.get_attr_opt::<&str>("auto_pad")?.unwrap_or("NOTSET"),
            "NOTSET" | "VALID"
        )
        && matches!(node.input.len(), 2 | 3);
    if plain {
        let kernel = node.get_attr_tvec::<usize>("kernel_shape")?;
        return Ok((
            expand(ConvExpansion {
                bias: node.input.len() == 3,
                kernel,
            }),
            vec![],
        ));
    }
    match TRACT_CONV.get() {
        Some(tract_conv) => tract_conv(ctx, node),
        None => {
            bail!("Conv: only the plain 2-d case (stride 1, no padding, one group) is supported")
        }
    }
}

#[derive(Clone, Debug)]
struct ConvExpansion {
    bias: bool,
    /// `kernel_shape`: for tract's own Conv, which takes the other types.
    kernel: TVec<usize>,
}

impl Expansion for ConvExpansion {
    fn name(&self) -> StaticName {
        "Conv".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2 + self.bias as usize)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].rank, 4)?;
        s.equals(&inputs[1].rank, 4)?;
        s.equals(&outputs[0].rank, 4)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], &inputs[1].shape[0])?;
        s.equals(&inputs[0].shape[1], &inputs[1].shape[1])?;
        if self.bias {
            s.equals(&inputs[2].rank, 1)?;
            s.equals(&inputs[2].shape[0], &inputs[1].shape[0])?;
        }
        for d in 2..4 {
            s.given_2(
                &inputs[0].shape[d],
                &inputs[1].shape[d],
                move |s, image, kernel| s.equals(&outputs[0].shape[d], image - kernel + 1),
            )?;
        }
        Ok(())
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let f32_only = inputs
            .iter()
            .map(|&i| Ok(model.outlet_fact(i)?.datum_type == f32::datum_type()))
            .collect::<TractResult<Vec<bool>>>()?;
        if !f32_only.iter().all(|&f| f) {
            // Other types (ONNX allows f16 and f64) by tract's own Conv of the same plain case:
            // stride 1, no padding, one group.
            let mut conv = tract_onnx::tract_hir::ops::cnn::Conv::default()
                .padding(tract_onnx::tract_hir::ops::cnn::PaddingSpec::Valid)
                .kernel_shape(self.kernel.clone());
            if self.bias {
                conv = conv.bias_input(2);
            }
            return conv.wire(name, model, inputs);
        }
        let mut inputs: TVec<OutletId> = inputs.into();
        if !self.bias {
            let o = model.outlet_fact(inputs[1])?.shape[0]
                .to_usize()
                .map_err(|_| format_err!("Conv {name}: the output channels must be known"))?;
            inputs.push(model.add_const(format!("{name}.bias"), tensor1(&vec![0f32; o]))?);
        }
        model.wire_node(name, StnConv, &inputs)
    }
}

/// tract's typed op around our kernel: `x [N, C, H, W]`, `w [O, C, KH, KW]`, `b [O]`, all f32.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StnConv;

impl Op for StnConv {
    fn name(&self) -> StaticName {
        "StnConv".into()
    }
    op_as_typed_op!();
}

impl EvalOp for StnConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        crate::tract_eval::eval_stn_op(&stn_ops::Conv2d, &inputs)
    }
}

impl TypedOp for StnConv {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (x, w) = (&inputs[0].shape, &inputs[1].shape);
        let side = |d: usize| x[d].clone() - w[d].clone() + 1;
        Ok(tvec!(f32::fact([
            x[0].clone(),
            w[0].clone(),
            side(2),
            side(3)
        ])))
    }
}
