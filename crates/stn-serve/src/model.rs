//! A served model: what its tensors are (from the ONNX file) and the runner that computes it.

use std::path::{Path, PathBuf};

use stn_onnx::LoadedModel;
use stn_runtime::{
    find_ort_library, Device, DfdxRunner, FusedRunner, OrtRunner, Runner, RuntimeError, TractRunner,
};

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

/// The runtime a server computes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// The network's forward fused per image on our CPU kernels (the fastest on a CPU).
    Fused,
    /// tract, with our Conv and GridSample kernels.
    Tract,
    /// ONNX Runtime (the library found as stn-infer finds it).
    Ort,
    /// Our dfdx model.
    Dfdx,
}

impl RuntimeKind {
    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Fused => "fused",
            RuntimeKind::Tract => "tract",
            RuntimeKind::Ort => "ort",
            RuntimeKind::Dfdx => "dfdx",
        }
    }
}

/// How to open each model's runner.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// The runtime.
    pub runtime: RuntimeKind,
    /// `cuda` for ONNX Runtime's CUDA provider or dfdx's CUDA device.
    pub device: Device,
    /// ONNX Runtime's intra-op threads (0: its default). Our kernels use rayon's global pool.
    pub threads: usize,
    /// ONNX Runtime's library, if not the one found by default.
    pub ort_lib: Option<PathBuf>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            runtime: RuntimeKind::Fused,
            device: Device::Cpu,
            threads: 0,
            ort_lib: None,
        }
    }
}

/// The runner of `bytes` (the ONNX file `path`) that `opts` asks for; runtimes that have no CUDA
/// path refuse `--device cuda` rather than run on the CPU unasked.
pub fn open_runner(
    opts: &RunnerOptions,
    bytes: &[u8],
    path: &str,
) -> Result<Box<dyn Runner>, RuntimeError> {
    let cuda = opts.device == Device::Cuda;
    let cpu_only = |runtime: &'static str| RuntimeError::Load {
        runtime,
        path: path.into(),
        what:
            "--device cuda: this runtime runs on the CPU only (the CUDA runtimes are ort and dfdx)"
                .into(),
    };
    Ok(match opts.runtime {
        RuntimeKind::Fused if cuda => return Err(cpu_only("fused")),
        RuntimeKind::Tract if cuda => return Err(cpu_only("tract")),
        RuntimeKind::Fused => Box::new(FusedRunner::load(bytes, path)?),
        RuntimeKind::Tract => Box::new(TractRunner::load(bytes, path)?),
        RuntimeKind::Dfdx if cuda => Box::new(DfdxRunner::load_cuda(bytes, path, 0)?),
        RuntimeKind::Dfdx => Box::new(DfdxRunner::load(bytes, path, false)?),
        RuntimeKind::Ort => {
            let lib = find_ort_library(opts.ort_lib.as_deref(), opts.device)?;
            Box::new(OrtRunner::load(
                bytes,
                path,
                &lib,
                opts.device,
                opts.threads,
            )?)
        }
    })
}
