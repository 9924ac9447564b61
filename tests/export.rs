//! stn-export: every variant passes the reference ONNX checker and gives ONNX Runtime's log-probs
//! within allclose(1e-5) of ours; checkpoint → ONNX → reader is lossless; bad input is an error.

mod common;

use std::path::{Path, PathBuf};

use stn_model::{predict, Batch, Checkpoint, Pixels};
use stn_onnx::{export, read_model, to_bytes, ExportOptions, Output};

fn default_checkpoint() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/stn.safetensors")
}

/// 16 real test images, normalised.
fn test_images(n: usize) -> Vec<f32> {
    let m = stn_data::Mnist::load(
        &stn_data::DataDir::resolve(Some(&common::mnist_dir())),
        true,
    )
    .unwrap();
    stn_data::normalize(&m.test.images[..n * 784])
}

fn variants() -> Vec<(i64, Vec<Output>)> {
    let mut v = Vec::new();
    for opset in [16, 20] {
        v.push((opset, vec![Output::LogProbs]));
        v.push((opset, vec![Output::LogProbs, Output::Theta, Output::Warped]));
    }
    v
}

#[test]
fn round_trip_is_lossless() {
    let ck = Checkpoint::load(&default_checkpoint()).unwrap();
    for (opset, outputs) in variants() {
        let model = export(
            &ck.params,
            &ExportOptions {
                opset,
                outputs: outputs.clone(),
                metadata: vec![],
            },
        )
        .unwrap();
        let back = read_model(&to_bytes(&model), "mem.onnx").unwrap();
        assert_eq!(back.params, ck.params, "opset {opset}");
        assert_eq!(back.opset, opset);
        assert_eq!(back.outputs.len(), outputs.len());
        assert_eq!(back.meta("stn.normalize.mean"), Some("0.1307"));
    }
}

#[test]
fn every_variant_passes_the_checker_and_matches_onnxruntime() {
    let python = std::env::var("STN_PYTHON")
        .expect("STN_PYTHON: a Python with onnx and onnxruntime (scripts/test.sh sets it)");
    let dir = tempfile::tempdir().unwrap();
    let mut models = Vec::new();
    for (opset, outputs) in variants() {
        let out = dir.path().join(format!("m{opset}_{}.onnx", outputs.len()));
        let names: Vec<&str> = outputs
            .iter()
            .map(|o| match o {
                Output::LogProbs => "log_probs",
                Output::Theta => "theta",
                Output::Warped => "warped",
            })
            .collect();
        let o = common::run(
            "stn-export",
            &[
                out.to_str().unwrap(),
                "--checkpoint",
                default_checkpoint().to_str().unwrap(),
                "--opset",
                &opset.to_string(),
                "--outputs",
                &names.join(","),
            ],
        );
        assert!(o.status.success(), "{}", common::stderr(&o));
        models.push(out);
    }
    let n = 16;
    let images = test_images(n);
    let ck = Checkpoint::load(&default_checkpoint()).unwrap();
    let labels = vec![0u8; n];
    let (lp, _, _) = predict(
        &ck.params,
        &Batch {
            images: Pixels::Normalized(&images),
            labels: &labels,
            dims: [1, 28, 28],
        },
        0,
        n,
    )
    .unwrap();
    let case = serde_json::json!({
        "models": models,
        "input": {"shape": [n, 1, 28, 28], "data": images},
        "log_probs": {"data": lp},
    });
    let case_path = dir.path().join("case.json");
    std::fs::write(&case_path, case.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_onnx.py");
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference");
    let o = std::process::Command::new(&python)
        .arg(script)
        .arg(&case_path)
        .arg(&reference)
        .output()
        .expect("python runs");
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{report}\n{}", common::stderr(&o));
    let r: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(r["models"].as_array().unwrap().len(), 4, "{r}");
    for m in r["models"].as_array().unwrap() {
        assert_eq!(
            m["torch_allclose"], true,
            "PyTorch's Net with the exported weights: {m}"
        );
    }
}

#[test]
fn bad_input_is_an_error_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.onnx");
    let ck = default_checkpoint();
    let corrupt = dir.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, b"not a checkpoint at all").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--opset".into(), "17".into()], "expected 16 or 20"),
        (
            vec!["--outputs".into(), "log_probs,attention".into()],
            "unknown output 'attention'",
        ),
        (
            vec!["--checkpoint".into(), corrupt.display().to_string()],
            "corrupt.safetensors",
        ),
        (
            vec![
                "--checkpoint".into(),
                dir.path().join("missing").display().to_string(),
            ],
            "missing",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec![out.display().to_string()];
        if !extra.contains(&"--checkpoint".to_string()) {
            args.extend(["--checkpoint".into(), ck.display().to_string()]);
        }
        args.extend(extra.clone());
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let o = common::run("stn-export", &args);
        let err = common::stderr(&o);
        assert!(
            !o.status.success() && err.contains(want) && !err.contains("panicked"),
            "{extra:?}: {err}"
        );
        assert!(!out.exists());
    }
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, b"x").unwrap();
    let target = blocked.join("m.onnx");
    let o = common::run(
        "stn-export",
        &[
            target.to_str().unwrap(),
            "--checkpoint",
            ck.to_str().unwrap(),
        ],
    );
    assert!(
        !o.status.success() && common::stderr(&o).contains("m.onnx"),
        "{}",
        common::stderr(&o)
    );
}

#[test]
fn corrupt_or_foreign_models_are_errors_not_panics() {
    let ck = Checkpoint::load(&default_checkpoint()).unwrap();
    let bytes = to_bytes(
        &export(
            &ck.params,
            &ExportOptions {
                opset: 16,
                outputs: vec![Output::LogProbs],
                metadata: vec![],
            },
        )
        .unwrap(),
    );
    for cut in [0, 1, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let r = read_model(&bytes[..cut], "cut.onnx");
        assert!(r.is_err(), "truncated at {cut} was accepted");
        assert!(r.unwrap_err().to_string().contains("cut.onnx"));
    }
    let mut state = 12345u64;
    for len in [10usize, 1000, 10000] {
        let noise: Vec<u8> = (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                (state >> 33) as u8
            })
            .collect();
        assert!(read_model(&noise, "noise.onnx").is_err());
    }
}

#[test]
fn init_from_an_exported_model_fine_tunes_it() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("m.onnx");
    let o = common::run(
        "stn-export",
        &[
            onnx.to_str().unwrap(),
            "--checkpoint",
            default_checkpoint().to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let out = dir.path().join("ft.safetensors");
    let data = common::mnist_dir();
    // A vanishing learning rate: the fine-tuned model is the exported one.
    let o = common::run(
        "stn-train",
        &[
            "--data",
            data.to_str().unwrap(),
            "--offline",
            "--init-from",
            onnx.to_str().unwrap(),
            "--epochs",
            "1",
            "--limit",
            "64",
            "--lr",
            "1e-12",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let (a, b) = (
        Checkpoint::load(&out).unwrap(),
        Checkpoint::load(&default_checkpoint()).unwrap(),
    );
    for (x, y) in a
        .params
        .data
        .iter()
        .flatten()
        .zip(b.params.data.iter().flatten())
    {
        assert!((x - y).abs() < 1e-6);
    }
    // A model for other inputs is refused.
    let o = common::run(
        "stn-train",
        &[
            "--data",
            data.to_str().unwrap(),
            "--offline",
            "--init-from",
            onnx.to_str().unwrap(),
            "--distort",
            "rts",
            "--epochs",
            "1",
            "--limit",
            "64",
            "--force",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        !o.status.success() && common::stderr(&o).contains("--init-from"),
        "{}",
        common::stderr(&o)
    );
}
