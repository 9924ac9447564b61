//! stn-export: writes a trained checkpoint as an ONNX model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use stn_model::Checkpoint;
use stn_onnx::{export, to_bytes, ExportOptions, Output};

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
    /// The ONNX file to write (atomically: no partial file on failure)
    #[arg(value_name = "OUT.onnx")]
    out: PathBuf,
    /// The stn-train checkpoint to export
    #[arg(long, value_name = "PATH", default_value = "models/stn.safetensors")]
    checkpoint: PathBuf,
    /// ONNX opset: 16 or 20 [default: the --target's, 16 without one]
    #[arg(long, value_parser = opset, conflicts_with = "target")]
    opset: Option<i64>,
    /// Where the model will run: ort-cuda, tensorrt, tract, ort (CPU) or any; picks the opset
    #[arg(long, value_name = "RUNTIME", value_parser = target)]
    target: Option<i64>,
    /// Graph outputs, comma-separated: log_probs (always), theta (the head's parameters: theta
    /// [N,2,3] for affine, transform [N,P] for the other heads), warped [N,C,Ho,Wo]
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "log_probs",
        value_name = "NAMES"
    )]
    outputs: Vec<Output>,
}

/// The opset a serving target needs (see the command's help).
fn target(s: &str) -> Result<i64, String> {
    match s {
        "ort-cuda" | "tensorrt" | "tract" | "any" => Ok(16),
        "ort" => Ok(20),
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
        stn::check_outputs(
            &[("--checkpoint", &args.checkpoint)],
            &[("the output", &args.out)],
        )?;
        let opset = args.opset.or(args.target).unwrap_or(16);
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
        stn_data::write_atomic(&args.out, &bytes)
            .with_context(|| format!("{}", args.out.display()))?;
        eprintln!(
            "wrote {} ({} bytes, opset {}, outputs {:?}, {})",
            args.out.display(),
            bytes.len(),
            opset,
            args.outputs,
            ck.params.net
        );
        Ok(())
    })
}
