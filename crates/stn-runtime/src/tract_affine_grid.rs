//! ONNX `AffineGrid` (opset 20) for tract, which lacks it: registered in our tract runner as an
//! expansion into ops tract has — a constant base grid `[H·W, 3]` (PyTorch's coordinates, as our
//! own op computes them) contracted with theta `[N, 2, 3]` (EinSum), reshaped to `[N, H, W, 2]`.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_hir::internal::*;

/// The `OpBuilder` of `AffineGrid`.
pub fn affine_grid(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let align_corners = node.get_attr_opt::<i64>("align_corners")?.unwrap_or(0) != 0;
    Ok((expand(AffineGridExpansion { align_corners }), vec![]))
}

#[derive(Clone, Debug)]
struct AffineGridExpansion {
    align_corners: bool,
}

impl Expansion for AffineGridExpansion {
    fn name(&self) -> StaticName {
        "AffineGrid".into()
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
        s.equals(&inputs[0].rank, 3)?;
        s.equals(&outputs[0].rank, 4)?;
        s.equals(&inputs[0].shape[0], &outputs[0].shape[0])?;
        s.equals(&outputs[0].shape[3], 2.to_dim())?;
        s.given(&inputs[1].value, move |s, size| {
            let size: Vec<i64> = size
                .cast_to::<i64>()?
                .to_plain_array_view::<i64>()?
                .iter()
                .copied()
                .collect();
            if size.len() != 4 {
                bail!("AffineGrid: 2-d only (size has {} entries)", size.len());
            }
            s.equals(&outputs[0].shape[1], size[2].to_dim())?;
            s.equals(&outputs[0].shape[2], size[3].to_dim())?;
            Ok(())
        })
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let size = model.outlet_fact(inputs[1])?.konst.clone().ok_or_else(|| {
            format_err!("AffineGrid {name}: the size input must be known when the model is planned")
        })?;
        let size: Vec<i64> = size
            .cast_to::<i64>()?
            .to_plain_array_view::<i64>()?
            .iter()
            .copied()
            .collect();
        let (h, w) = (size[2] as usize, size[3] as usize);
        let (ys, xs) = (
            stn_ops::AffineGrid::base::<f32>(h, self.align_corners),
            stn_ops::AffineGrid::base::<f32>(w, self.align_corners),
        );
        let mut base = Vec::with_capacity(h * w * 3);
        for &y in &ys {
            for &x in &xs {
                base.extend([x, y, 1.0]);
            }
        }
        let base = model.add_const(
            format!("{name}.base"),
            tensor1(&base).into_shape(&[h * w, 3])?,
        )?;
        // grid[n, p, c] = Σ_k base[p, k] · theta[n, c, k]
        let flat = model.wire_node(
            format!("{name}.einsum"),
            EinSum::new("pk,nck->npc".parse()?, f32::datum_type()),
            &[base, inputs[0]],
        )?;
        model.wire_node(
            format!("{name}.reshape"),
            AxisOp::Reshape(1, tvec![(h * w).to_dim()], tvec![h.to_dim(), w.to_dim()]),
            &flat,
        )
    }
}
