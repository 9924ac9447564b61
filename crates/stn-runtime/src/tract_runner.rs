use std::collections::HashMap;

use tract_onnx::prelude::*;

use crate::{check_batch, RunOutput, Runner, RuntimeError};

type Plan = std::sync::Arc<TypedRunnableModel>;

/// The model on tract, optimised once per batch size (tract plans for concrete shapes). tract plans
/// and runs the graph; its plain Conv, MaxPool and GridSample nodes run our kernels
/// ([`TractRunner::onnx`]).
pub struct TractRunner {
    model: InferenceModel,
    dims: [usize; 3],
    outputs: Vec<String>,
    plans: HashMap<usize, Plan>,
}

fn load_err(path: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Load {
        runtime: "tract",
        path: path.into(),
        what: format!("{e:#}"),
    }
}

/// Registers stn's ONNX operators into a tract ONNX parser, for any model (not only stn's):
///
/// * `AffineGrid` (opset 20), which tract 0.23 lacks: PyTorch's `affine_grid`, 2-D and 3-D, its
///   `size` a constant (expanded into tract's ops) or a run-time input (computed when it runs);
///   the ONNX standard's node tests pass (`tests/onnx_node.rs`);
/// * `GridSample` (opset 16 to 20): bilinear (`bilinear`/`linear`) on 4-D f32 tensors, every
///   padding mode and `align_corners`, by our kernel (tract's is scalar and unthreaded); the other
///   modes by tract's;
/// * plain `Conv` (stride 1, no padding, one group) by our kernels, other convolutions by tract's;
/// * plain `MaxPool` (square window, equal strides, no padding, no `Indices` output) by our
///   kernel, other pools by tract's;
/// * a `LogSoftmax` that stays finite where tract's underflows to −∞ (below about −104).
///
/// ```no_run
/// let mut onnx = tract_onnx::onnx();
/// stn_runtime::register_tract_ops(&mut onnx);
/// // onnx.model_for_path("model.onnx")?.into_optimized()?.into_runnable()?
/// ```
pub fn register_tract_ops(onnx: &mut tract_onnx::model::Onnx) {
    onnx.op_register
        .insert("AffineGrid", crate::tract_affine_grid::affine_grid);
    onnx.op_register
        .insert("GridSample", crate::tract_grid_sample::grid_sample);
    onnx.op_register
        .insert("LogSoftmax", crate::tract_log_softmax::log_softmax);
    crate::tract_conv::register(onnx);
    crate::tract_max_pool::register(onnx);
}

impl TractRunner {
    /// The model (`bytes`, from `path`) on tract with our ops registered, once its graph is
    /// checked to be the seed network.
    pub fn load(bytes: &[u8], path: &str) -> Result<Self, RuntimeError> {
        // Our reader checks the input shape and the parameters first, with clear messages.
        let m = stn_onnx::read_model(bytes, path)?;
        let onnx = Self::onnx();
        let model = onnx
            .model_for_read(&mut &bytes[..])
            .map_err(|e| load_err(path, e))?;
        Ok(TractRunner {
            model,
            dims: m.params.net.input_dims(),
            outputs: m.outputs,
            plans: HashMap::new(),
        })
    }

    /// tract's ONNX reader with our ops registered ([`register_tract_ops`]).
    pub fn onnx() -> tract_onnx::model::Onnx {
        let mut onnx = tract_onnx::onnx();
        register_tract_ops(&mut onnx);
        onnx
    }

    fn plan(&mut self, n: usize) -> Result<&Plan, RuntimeError> {
        if !self.plans.contains_key(&n) {
            let [c, h, w] = self.dims;
            let plan = self
                .model
                .clone()
                .with_input_fact(0, f32::fact([n, c, h, w]).into())
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
                .map_err(|e| RuntimeError::Run {
                    runtime: "tract",
                    what: format!("planning batch {n}: {e:#}"),
                })?;
            self.plans.insert(n, plan);
        }
        Ok(&self.plans[&n])
    }
}

impl Runner for TractRunner {
    fn name(&self) -> String {
        "tract".into()
    }
    fn input_dims(&self) -> [usize; 3] {
        self.dims
    }
    fn run(&mut self, images: &[f32], n: usize) -> Result<RunOutput, RuntimeError> {
        check_batch("tract", images, n, self.dims)?;
        let [c, h, w] = self.dims;
        let warped_at = self.outputs.iter().position(|o| o == "warped");
        let transform_at = self
            .outputs
            .iter()
            .position(|o| o == "theta" || o == "transform");
        let plan = self.plan(n)?;
        let run_err = |e: TractError| RuntimeError::Run {
            runtime: "tract",
            what: format!("{e:#}"),
        };
        let input = Tensor::from_shape(&[n, c, h, w], images).map_err(run_err)?;
        let out = plan.run(tvec!(input.into())).map_err(run_err)?;
        let vec = |i: usize| -> Result<Vec<f32>, RuntimeError> {
            Ok(out[i]
                .to_plain_array_view::<f32>()
                .map_err(run_err)?
                .iter()
                .copied()
                .collect())
        };
        Ok(RunOutput {
            log_probs: vec(0)?,
            transform: transform_at.map(vec).transpose()?,
            warped: warped_at.map(vec).transpose()?,
        })
    }
}
