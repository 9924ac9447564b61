//! stn-export: writes a trained checkpoint as an ONNX model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use stn_model::Checkpoint;
use stn_onnx::{export, to_bytes, ExportOptions, Output};
use stn_serve::{write_repository, ModelInfo, Placement, TritonOptions};

/// Write a trained network (a stn-train checkpoint) as an ONNX model that any ONNX runtime runs:
/// GridSample for the spatial transformer, every head's grid from standard operators, initializers
/// under PyTorch's parameter names, the model spec, the input normalisation and the training
/// summary in the model's metadata.
///
/// At opset 16 the affine grid is decomposed (constant base grid, Transpose, MatMul, Reshape) and
/// GridSample's modes are spelled "bilinear"/"bicubic"/"nearest"; at opset 20 the affine heads use
/// AffineGrid and the modes are "linear"/"cubic"/"nearest". The projective head's grid is MatMul,
/// Add, Where and Div; the thin-plate spline's a MatMul by its constant matrix.
///
/// --target picks the opset for where the model will run: ONNX Runtime's CUDA provider has no
/// AffineGrid kernel (opset 16 keeps the whole graph on the GPU), TensorRT's ONNX parser reads
/// opset 20's "linear" as nearest (opset 16), tract has no AffineGrid (opset 16); ONNX Runtime on
/// the CPU runs both (opset 20, the form PyTorch exports); any: opset 16, which all of them run.
#[derive(Parser, Debug)]
#[command(version = stn::version())]
struct Args {
    /// The ONNX file to write (atomically: no partial file on failure); optional with --triton-repo
    #[arg(value_name = "OUT.onnx", required_unless_present = "triton_repo")]
    out: Option<PathBuf>,
    /// The stn-train checkpoint to export
    #[arg(long, value_name = "PATH", default_value = "models/stn.safetensors")]
    checkpoint: PathBuf,
    /// ONNX opset: 16 or 20 [default: the --target's, 16 without one]
    #[arg(long, value_parser = opset, conflicts_with = "target")]
    opset: Option<i64>,
    /// Where the model will run: ort-cuda, tensorrt, tract, ort (CPU) or any; picks the opset
    #[arg(long, value_name = "RUNTIME", value_parser = target)]
    target: Option<Target>,
    /// Graph outputs, comma-separated: log_probs (always), theta (the head's parameters: theta
    /// [N,2,3] for affine, transform [N,P] for the other heads), warped [N,C,Ho,Wo]
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "log_probs",
        value_name = "NAMES"
    )]
    outputs: Vec<Output>,
    /// Also (or only) write the model into this Triton model repository: DIR/NAME/VERSION/model.onnx
    /// and DIR/NAME/config.pbtxt (ONNX Runtime backend, dynamic batching), which stn-serve
    /// --model-repo serves too. --target ort-cuda or tensorrt places it on Triton's GPU
    #[arg(long, value_name = "DIR")]
    triton_repo: Option<PathBuf>,
    /// The model's name in the repository (letters, digits, '_', '-', '.')
    #[arg(
        long,
        default_value = "stn",
        value_name = "NAME",
        requires = "triton_repo"
    )]
    name: String,
    /// The model's version in the repository [1 or more]
    #[arg(long = "model-version", default_value_t = 1, value_name = "N", requires = "triton_repo",
          value_parser = clap::value_parser!(u64).range(1..))]
    version: u64,
    /// Triton's max_batch_size (its dynamic batcher's largest batch) [1 to 65536]
    #[arg(long, default_value_t = 64, value_name = "N", requires = "triton_repo",
          value_parser = stn::usize_in(1, 65_536))]
    max_batch: usize,
    /// Triton's dynamic_batching max_queue_delay_microseconds [0 to 10000000]
    #[arg(long, default_value_t = 500, value_name = "US", requires = "triton_repo",
          value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    max_delay_us: u64,
    /// Replace the repository's model.onnx of --model-version if it exists (otherwise refused)
    #[arg(long, requires = "triton_repo")]
    overwrite: bool,
}

/// A serving target: the opset it needs and where Triton places it.
#[derive(Debug, Clone, Copy)]
struct Target {
    opset: i64,
    placement: Placement,
}

/// The opset a serving target needs (see the command's help).
fn target(s: &str) -> Result<Target, String> {
    let t = |opset, placement| Ok(Target { opset, placement });
    match s {
        "ort-cuda" => t(16, Placement::Gpu),
        "tensorrt" => t(16, Placement::TensorRt),
        "tract" => t(16, Placement::Cpu),
        "any" => t(16, Placement::Any),
        "ort" => t(20, Placement::Cpu),
        _ => Err(format!(
            "{s}: expected ort-cuda, tensorrt, tract, ort or any"
        )),
    }
}

fn opset(s: &str) -> Result<i64, String> {
    match s {
        "16" => Ok(16),
        "20" => Ok(20),
        _ => Err(format!("{s}: expected 16 or 20")),
    }
}

fn main() -> ExitCode {
    stn::run_main(|| {
        let args = Args::parse();
        stn::isa_level()?;
        if let Some(out) = &args.out {
            stn::check_outputs(
                &[("--checkpoint", &args.checkpoint)],
                &[("the output", out)],
            )?;
        }
        let opset = args.opset.or(args.target.map(|t| t.opset)).unwrap_or(16);
        let ck = Checkpoint::load(&args.checkpoint).context("--checkpoint")?;
        let bad = ck.params.non_finite();
        if !bad.is_empty() {
            eprintln!(
                "warning: {}: parameters {} hold NaN or infinite values; the exported model computes garbage",
                args.checkpoint.display(),
                bad.join(", ")
            );
        }
        let last = ck.run["history"]
            .as_array()
            .and_then(|h| h.last())
            .cloned()
            .unwrap_or_default();
        let mut metadata = vec![
            ("stn.train.epochs".to_string(), ck.epoch.to_string()),
            (
                "stn.train.test_accuracy".to_string(),
                last["test_accuracy"].to_string(),
            ),
            (
                "stn.train.optimizer".to_string(),
                format!("{:?}", ck.optimizer.kind).to_lowercase(),
            ),
            ("stn.train.run".to_string(), ck.run.to_string()),
        ];
        // An image folder's class names, for stn-infer to name its predictions.
        if let Some(names) = ck.run.get("class_names").filter(|n| n.is_array()) {
            metadata.push(("stn.classes".to_string(), names.to_string()));
        }
        let model = export(
            &ck.params,
            &ExportOptions {
                opset,
                outputs: args.outputs.clone(),
                metadata,
            },
        )?;
        let bytes = to_bytes(&model);
        if let Some(dir) = &args.triton_repo {
            let shown = dir.join(&args.name).join(args.version.to_string());
            let loaded = stn_onnx::read_model(&bytes, &shown.display().to_string())?;
            let info = ModelInfo::of(&args.name, args.version, &shown, &loaded);
            let opts = TritonOptions {
                max_batch_size: args.max_batch,
                max_queue_delay_us: args.max_delay_us,
                placement: args.target.map_or(Placement::Any, |t| t.placement),
            };
            let file = write_repository(dir, &info, &bytes, &opts, args.overwrite)?;
            eprintln!(
                "wrote {} and its config.pbtxt (Triton model repository {}: model '{}' version {}, max_batch_size {})",
                file.display(),
                dir.display(),
                args.name,
                args.version,
                args.max_batch
            );
        }
        if let Some(out) = &args.out {
            stn_data::write_atomic(out, &bytes).with_context(|| format!("{}", out.display()))?;
            eprintln!(
                "wrote {} ({} bytes, opset {}, outputs {:?}, {})",
                out.display(),
                bytes.len(),
                opset,
                args.outputs,
                ck.params.net
            );
        }
        Ok(())
    })
}
