//! Triton Inference Server model repositories: `DIR/<name>/config.pbtxt` (the model configuration,
//! protobuf text format of Triton's `ModelConfig`) and `DIR/<name>/<version>/model.onnx`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::model::ModelInfo;
use crate::repository::valid_model_name;
use crate::ServeError;

/// Where Triton should run the model (its `instance_group` and execution accelerator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Triton's default: a GPU when it has one, else the CPU (no `instance_group`).
    Any,
    /// `KIND_CPU`.
    Cpu,
    /// `KIND_GPU`, ONNX Runtime's CUDA provider.
    Gpu,
    /// `KIND_GPU` with ONNX Runtime's TensorRT provider as the accelerator.
    TensorRt,
}

/// What goes into a model's `config.pbtxt`.
#[derive(Debug, Clone)]
pub struct TritonOptions {
    /// Most images Triton batches (`max_batch_size`; the graph's batch dimension is symbolic).
    pub max_batch_size: usize,
    /// Triton's `dynamic_batching.max_queue_delay_microseconds`.
    pub max_queue_delay_us: u64,
    /// Where it runs.
    pub placement: Placement,
}

impl Default for TritonOptions {
    fn default() -> Self {
        TritonOptions {
            max_batch_size: 64,
            max_queue_delay_us: 500,
            placement: Placement::Any,
        }
    }
}

/// The `config.pbtxt` of `info` (served as `info.name`) for Triton's ONNX Runtime backend.
pub fn config_pbtxt(info: &ModelInfo, opts: &TritonOptions) -> String {
    let tensor = |t: &crate::model::TensorInfo| {
        let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
        format!(
            "  {{\n    name: \"{}\"\n    data_type: TYPE_FP32\n    dims: [ {} ]\n  }}",
            t.name,
            dims.join(", ")
        )
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by stn-export for Triton Inference Server's ONNX Runtime backend."
    );
    let _ = writeln!(s, "name: \"{}\"", info.name);
    let _ = writeln!(s, "backend: \"onnxruntime\"");
    let _ = writeln!(s, "max_batch_size: {}", opts.max_batch_size);
    let _ = writeln!(s, "input [\n{}\n]", tensor(&info.input));
    let outs: Vec<String> = info.outputs.iter().map(tensor).collect();
    let _ = writeln!(s, "output [\n{}\n]", outs.join(",\n"));
    let _ = writeln!(
        s,
        "dynamic_batching {{\n  max_queue_delay_microseconds: {}\n}}",
        opts.max_queue_delay_us
    );
    match opts.placement {
        Placement::Any => {}
        Placement::Cpu => {
            let _ = writeln!(
                s,
                "instance_group [\n  {{\n    count: 1\n    kind: KIND_CPU\n  }}\n]"
            );
        }
        Placement::Gpu | Placement::TensorRt => {
            let _ = writeln!(
                s,
                "instance_group [\n  {{\n    count: 1\n    kind: KIND_GPU\n  }}\n]"
            );
        }
    }
    if opts.placement == Placement::TensorRt {
        let _ = writeln!(
            s,
            "optimization {{\n  execution_accelerators {{\n    gpu_execution_accelerator [\n      {{\n        name: \"tensorrt\"\n      }}\n    ]\n  }}\n}}"
        );
    }
    s
}

/// Writes `onnx` (the model `info`, named `info.name`) as `version` of a Triton repository in
/// `dir`, with its `config.pbtxt`; both atomically. An existing version is kept unless
/// `overwrite`. Returns the model file's path.
pub fn write_repository(
    dir: &Path,
    info: &ModelInfo,
    onnx: &[u8],
    opts: &TritonOptions,
    overwrite: bool,
) -> Result<PathBuf, ServeError> {
    let err = |what: String| ServeError::Repository {
        path: dir.display().to_string(),
        what,
    };
    if !valid_model_name(&info.name) {
        return Err(err(format!(
            "--name {}: not a model name (letters, digits, '_', '-', '.')",
            info.name
        )));
    }
    if info.version == 0 {
        return Err(err("--model-version 0: Triton's versions start at 1".into()));
    }
    if opts.max_batch_size == 0 {
        return Err(err(
            "max_batch_size 0: stn's graphs have a batch dimension; give ≥ 1".into(),
        ));
    }
    let model_dir = dir.join(&info.name);
    let version_dir = model_dir.join(info.version.to_string());
    let file = version_dir.join("model.onnx");
    if file.exists() && !overwrite {
        return Err(err(format!(
            "{}/{}/model.onnx exists: give another --model-version, or --overwrite to replace it",
            info.name, info.version
        )));
    }
    std::fs::create_dir_all(&version_dir)
        .map_err(|e| err(format!("{}: {e}", version_dir.display())))?;
    stn_data::write_atomic(&file, onnx).map_err(|e| err(format!("{}: {e}", file.display())))?;
    let config = model_dir.join("config.pbtxt");
    stn_data::write_atomic(&config, config_pbtxt(info, opts).as_bytes())
        .map_err(|e| err(format!("{}: {e}", config.display())))?;
    Ok(file)
}
