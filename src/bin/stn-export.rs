//! stn-export: writes a trained checkpoint as an ONNX model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use stn_model::Checkpoint;
use stn_onnx::{export, to_bytes, ExportOptions, Output};

/// Write a trained seed network (a stn-train checkpoint) as an ONNX model that any ONNX runtime
/// runs: GridSample for the spatial transformer, initializers under PyTorch's parameter names, the
/// input normalisation and the training summary in the model's metadata.
///
/// At opset 16 the affine grid is decomposed (constant base grid, Transpose, MatMul, Reshape) and
/// GridSample uses mode "bilinear"; at opset 20 it is AffineGrid with GridSample mode "linear"
/// (tract has no AffineGrid).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The ONNX file to write (atomically: no partial file on failure)
    #[arg(value_name = "OUT.onnx")]
    out: PathBuf,
    /// The stn-train checkpoint to export
    #[arg(long, value_name = "PATH", default_value = "models/stn.safetensors")]
    checkpoint: PathBuf,
    /// ONNX opset: 16 or 20
    #[arg(long, default_value_t = 16, value_parser = opset)]
    opset: i64,
    /// Graph outputs, comma-separated: log_probs (always), theta [N,2,3], warped [N,1,28,28]
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "log_probs",
        value_name = "NAMES"
    )]
    outputs: Vec<Output>,
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
        stn::check_outputs(
            &[("--checkpoint", &args.checkpoint)],
            &[("the output", &args.out)],
        )?;
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
                opset: args.opset,
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
            args.opset,
            args.outputs,
            ck.params.net
        );
        Ok(())
    })
}
