//! A served model: what its tensors are (from the ONNX file). Its runner is opened by
//! [`stn_runtime::open_runner`], as stn-infer opens one.

use std::path::{Path, PathBuf};

use stn_onnx::LoadedModel;

/// One tensor of a model, without its batch dimension (always the first, `-1` in metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The graph's name (`input`, `log_probs`, `theta`, `transform`, `warped`).
    pub name: String,
    /// One image's dimensions.
    pub dims: Vec<usize>,
}

impl TensorInfo {
    /// Values per image.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }
    /// Whether one image has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the server says of a model and checks requests against.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The name requests use.
    pub name: String,
    /// Its version (a Triton repository's directory name; 1 for a single file).
    pub version: u64,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The one input, `[C, H, W]` float32.
    pub input: TensorInfo,
    /// The graph's outputs in order, `log_probs` first.
    pub outputs: Vec<TensorInfo>,
}

impl ModelInfo {
    /// The tensors of `model`, read from `path`.
    pub fn of(name: &str, version: u64, path: &Path, model: &LoadedModel) -> ModelInfo {
        let net = &model.params.net;
        let plan = net.plan();
        let [c, h, w] = net.input_dims();
        let outputs = model
            .outputs
            .iter()
            .map(|o| {
                let dims = match o.as_str() {
                    "log_probs" => vec![plan.classes],
                    "theta" => vec![2, 3],
                    "transform" => vec![plan.transform.n_params()],
                    "warped" => {
                        let [ho, wo] = plan
                            .transform
                            .sampler()
                            .map_or([h, w], |s: stn_model::Sampler| s.output);
                        vec![c, ho, wo]
                    }
                    // read_model names no other output.
                    _ => vec![],
                };
                TensorInfo {
                    name: o.clone(),
                    dims,
                }
            })
            .collect();
        ModelInfo {
            name: name.into(),
            version,
            path: path.into(),
            input: TensorInfo {
                name: model.input.clone(),
                dims: vec![c, h, w],
            },
            outputs,
        }
    }

    /// The output named `name`, by its index.
    pub fn output(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|o| o.name == name)
    }
}
