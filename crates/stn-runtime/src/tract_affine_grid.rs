//! ONNX `AffineGrid` (opset 20) for tract, which lacks it. With a 2-D `size` known when the model
//! is planned (stn's models: the size is the sampled shape) it expands into ops tract has — a
//! constant base grid `[H·W, 3]` (PyTorch's coordinates, as our own op computes them) contracted
//! with theta `[N, 2, 3]` (EinSum), reshaped to `[N, H, W, 2]`. Otherwise — `size` a run-time
//! input, or the 3-D form (theta `[N, 3, 4]`, size `[N, C, D, H, W]`, grid `[N, D, H, W, 3]`) — it
//! is [`AffineGridOp`], computed when it runs, its spatial sizes symbols that the run binds.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_hir::internal::*;

/// A 1-D integer tensor's values (AffineGrid's `size`).
fn ints(t: &Tensor) -> TractResult<Vec<i64>> {
    Ok(t.cast_to::<i64>()?
        .to_plain_array_view::<i64>()?
        .iter()
        .copied()
        .collect())
}

/// The `OpBuilder` of `AffineGrid`.
pub fn affine_grid(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let align_corners = node.get_attr_opt::<i64>("align_corners")?.unwrap_or(0) != 0;
    // The spatial sizes when `size` is known only at run time: symbols the run binds (the
    // symbol table is shared by every model made from this parse).
    let spatial = ["affine_grid_d", "affine_grid_h", "affine_grid_w"]
        .map(|p| ctx.template.symbols.new_with_prefix(p));
    Ok((
        expand(AffineGridExpansion {
            align_corners,
            spatial,
        }),
        vec![],
    ))
}

#[derive(Clone, Debug)]
struct AffineGridExpansion {
    align_corners: bool,
    spatial: [Symbol; 3],
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
        s.equals(&inputs[1].rank, 1)?;
        s.equals(&inputs[0].shape[0], &outputs[0].shape[0])?;
        // size [N, C, H, W] (2-D) or [N, C, D, H, W] (3-D): the grid has rank 4 or 5.
        s.given(&inputs[1].shape[0], move |s, len| {
            let len = len.to_i64()?;
            if len != 4 && len != 5 {
                bail!("AffineGrid: size has {len} entries (4 for 2-D, 5 for 3-D)");
            }
            let k = len - 2;
            s.equals(&outputs[0].rank, len)?;
            s.equals(&outputs[0].shape[len as usize - 1], k.to_dim())?;
            s.equals(&inputs[0].shape[1], k.to_dim())?;
            s.equals(&inputs[0].shape[2], (k + 1).to_dim())?;
            Ok(())
        })?;
        s.given(&inputs[1].value, move |s, size| {
            let size = ints(&size)?;
            for (i, &d) in size[2..].iter().enumerate() {
                s.equals(&outputs[0].shape[i + 1], d.to_dim())?;
            }
            Ok(())
        })
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let size = model.outlet_fact(inputs[1])?.konst.clone();
        let size: Option<Vec<i64>> = size.map(|t| ints(&t)).transpose()?;
        let len = model.outlet_fact(inputs[1])?.shape[0].to_usize()?;
        let Some(size) = size.clone().filter(|s| s.len() == 4) else {
            // Run time: the spatial sizes from `size` when known now, else the symbols.
            let spatial: TVec<TDim> = match &size {
                Some(s) => s[2..].iter().map(|&d| d.to_dim()).collect(),
                None => self.spatial[5 - len..].iter().map(|s| s.to_dim()).collect(),
            };
            return model.wire_node(
                name,
                AffineGridOp {
                    align_corners: self.align_corners,
                    spatial,
                },
                inputs,
            );
        };
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

/// `AffineGrid` computed when it runs: theta `[N, k, k+1]` and `size` (`[N, C, H, W]` or
/// `[N, C, D, H, W]`) to the grid `[N, (D,) H, W, k]`, `grid[n, …, i] = Σ_j theta[n, i, j] ·
/// (x, y, (z,) 1)[j]` with PyTorch's coordinates. `spatial` are the output's sizes as the plan
/// knows them (symbols bound by the run when `size` is a run-time value).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct AffineGridOp {
    align_corners: bool,
    spatial: TVec<TDim>,
}

impl Op for AffineGridOp {
    fn name(&self) -> StaticName {
        "AffineGrid".into()
    }

    fn mints_runtime_symbols(&self) -> bool {
        true
    }

    op_as_typed_op!();
}

impl EvalOp for AffineGridOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (theta, size) = args_2!(inputs);
        let size = ints(&size)?;
        let k = size.len() - 2;
        let theta = theta.cast_to::<f32>()?;
        let t = theta.to_plain_array_view::<f32>()?;
        let n = theta.shape()[0];
        if theta.shape() != [n, k, k + 1] || size[0] as usize != n {
            bail!(
                "AffineGrid: theta {:?} does not fit size {size:?} (theta is [N, {k}, {}])",
                theta.shape(),
                k + 1
            );
        }
        if size[2..].iter().any(|&d| d <= 0 || d > 1 << 20) {
            bail!("AffineGrid: size {size:?}: spatial sizes 1 to 2^20");
        }
        let sides: Vec<usize> = size[2..].iter().map(|&d| d as usize).collect();
        // Coordinates per axis, x (the last) first as ONNX and PyTorch order them.
        let axes: Vec<Vec<f32>> = sides
            .iter()
            .rev()
            .map(|&s| stn_ops::AffineGrid::base::<f32>(s, self.align_corners))
            .collect();
        let points: usize = sides.iter().product();
        let mut out = Vec::with_capacity(n * points * k);
        let theta: Vec<f32> = t.iter().copied().collect();
        for b in 0..n {
            let th = &theta[b * k * (k + 1)..][..k * (k + 1)];
            for p in 0..points {
                // The point's coordinate on each axis, x first.
                let mut rest = p;
                let mut coord = [0f32; 4];
                for (a, ax) in axes.iter().enumerate() {
                    let len = ax.len();
                    coord[a] = ax[rest % len];
                    rest /= len;
                }
                coord[k] = 1.0;
                for i in 0..k {
                    let row = &th[i * (k + 1)..][..k + 1];
                    let mut v = 0f32;
                    for j in 0..=k {
                        v += row[j] * coord[j];
                    }
                    out.push(v);
                }
            }
        }
        let mut shape = vec![n];
        shape.extend(&sides);
        shape.push(k);
        Ok(tvec!(tensor1(&out).into_shape(&shape)?.into_tvalue()))
    }
}

impl TypedOp for AffineGridOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let k = self.spatial.len();
        let mut shape: TVec<TDim> = tvec![inputs[0].shape[0].clone()];
        shape.extend(self.spatial.iter().cloned());
        shape.push(k.to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}
