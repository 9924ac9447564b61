//! The claim of the project: one trained model, the same answers on every runtime. On the 10,000
//! MNIST test images, every pair of dfdx, fused (our CPU forward), tract (with our Conv and
//! GridSample kernels) and ONNX Runtime agrees within numpy's
//! allclose(rtol=1e-5, atol=1e-5) with identical argmax, and each is within that bound of our
//! model evaluated in float64.

mod common;

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn export(dir: &Path, opset: &str) -> PathBuf {
    let out = dir.join(format!("stn{opset}.onnx"));
    let ck = repo().join("models/stn.safetensors");
    let o = common::run(
        "stn-export",
        &[
            out.to_str().unwrap(),
            "--checkpoint",
            ck.to_str().unwrap(),
            "--opset",
            opset,
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    out
}

fn compare(model: &Path, runtimes: &str) -> serde_json::Value {
    let data = common::mnist_dir();
    let o = common::run(
        "stn-infer",
        &[
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--offline",
            "--compare",
            runtimes,
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn assert_bit_close(report: &serde_json::Value, want_pairs: usize) {
    assert_eq!(report["images"], 10_000);
    let pairs = report["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), want_pairs);
    for p in pairs {
        assert_eq!(p["allclose"], true, "{p}");
        assert_eq!(p["argmax_agree"], 1.0, "{p}");
        assert!(p["max_abs_diff"].as_f64().unwrap() < 1e-4, "{p}");
    }
}

#[test]
fn opset16_all_runtimes_are_bit_close_on_the_test_set() {
    let dir = tempfile::tempdir().unwrap();
    let model = export(dir.path(), "16");
    assert_bit_close(&compare(&model, "tract,ort,dfdx,fused,dfdx-f64"), 10);
}

#[test]
fn opset20_all_runtimes_are_bit_close_on_the_test_set() {
    // AffineGrid on tract is our registration (tract has none).
    let dir = tempfile::tempdir().unwrap();
    let model = export(dir.path(), "20");
    assert_bit_close(&compare(&model, "tract,ort,dfdx,fused,dfdx-f64"), 10);
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo().join("models/stn.onnx");
    let not_onnx = dir.path().join("notes.onnx");
    std::fs::write(&not_onnx, b"these are not the weights you are looking for").unwrap();
    let truncated = dir.path().join("cut.onnx");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let bad_png = dir.path().join("digit.png");
    std::fs::write(&bad_png, b"\x89PNG\r\n\x1a\nnope").unwrap();
    let data = common::mnist_dir();
    let m = model.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--model", not_onnx.to_str().unwrap()], "notes.onnx"),
        (vec!["--model", truncated.to_str().unwrap()], "cut.onnx"),
        (
            vec!["--model", m, "--images", bad_png.to_str().unwrap()],
            "digit.png",
        ),
        (vec!["--model", m, "--runtime", "caffe"], "caffe"),
        (
            vec![
                "--model",
                m,
                "--runtime",
                "ort",
                "--ort-lib",
                "/nonexistent/libonnxruntime.so",
            ],
            "fetch-onnxruntime.sh",
        ),
        (
            vec!["--model", m, "--runtime", "ort", "--device", "cuda"],
            "cuda",
        ),
        (
            vec!["--model", m, "--runtime", "dfdx", "--device", "cuda"],
            "cuda",
        ),
    ];
    for (args, want) in cases {
        let mut a = args.clone();
        if !a.contains(&"--images") {
            a.extend(["--data", data.to_str().unwrap(), "--offline"]);
        }
        let o = common::run("stn-infer", &a);
        let err = common::stderr(&o);
        assert!(
            !o.status.success() && err.contains(want) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn classifies_image_files_and_saves_logprobs() {
    // Test digits written as PNGs, dark on light and larger than 28×28, as a scan would be.
    let dir = tempfile::tempdir().unwrap();
    let m = stn_data::Mnist::load(
        &stn_data::DataDir::resolve(Some(&common::mnist_dir())),
        true,
    )
    .unwrap();
    let mut files = Vec::new();
    for i in 0..20 {
        let img = image::GrayImage::from_fn(84, 84, |x, y| {
            image::Luma([255 - m.test.image(i)[(y / 3 * 28 + x / 3) as usize]])
        });
        let p = dir.path().join(format!("d{i}.png"));
        img.save(&p).unwrap();
        files.push(p);
    }
    let npy = dir.path().join("lp.npy");
    let mut args = vec![
        "--model".to_string(),
        repo().join("models/stn.onnx").display().to_string(),
        "--runtime".into(),
        "dfdx".into(),
        "--save-logprobs".into(),
        npy.display().to_string(),
        "--json".into(),
        "--images".into(),
    ];
    args.extend(files.iter().map(|p| p.display().to_string()));
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = common::run("stn-infer", &a);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let preds = r["predictions"].as_array().unwrap();
    let right = preds
        .iter()
        .enumerate()
        .filter(|(i, p)| p["digit"] == m.test.labels[*i] as u64)
        .count();
    assert!(right >= 18, "{right}/20 right: {stdout}");
    let bytes = std::fs::read(&npy).unwrap();
    assert!(
        bytes.starts_with(b"\x93NUMPY") && bytes.len() == 128 + 20 * 10 * 4,
        "{}",
        bytes.len()
    );
}

#[test]
fn pytorch_exported_stn_runs_bit_close_on_tract_ort_dfdx_and_fused() {
    // PyTorch's own export of the seed network (opset 20: AffineGrid + GridSample), made here by
    // the reference program after a short training.
    let python = std::env::var("STN_PYTHON")
        .expect("STN_PYTHON: a Python with torch and onnx (scripts/test.sh sets it)");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("torch20.onnx");
    let data = common::mnist_dir();
    let o = std::process::Command::new(python)
        .arg(repo().join("../shared/reference/pytorch_stn.py"))
        .args([
            "--data",
            data.to_str().unwrap(),
            "--epochs",
            "1",
            "--limit",
            "640",
            "--threads",
            "2",
            "--opset",
            "20",
        ])
        .arg("--export")
        .arg(&model)
        .output()
        .expect("python runs");
    assert!(o.status.success(), "{}", common::stderr(&o));
    let report = compare(&model, "tract,ort,dfdx,fused,dfdx-f64");
    assert_bit_close(&report, 10);
    assert_eq!(
        stn_onnx::read_model(&std::fs::read(&model).unwrap(), "torch20.onnx")
            .unwrap()
            .opset,
        20
    );
}

#[test]
fn visualize_needs_and_draws_the_warped_output() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("w.onnx");
    let ck = repo().join("models/stn.safetensors");
    let o = common::run(
        "stn-export",
        &[
            model.to_str().unwrap(),
            "--checkpoint",
            ck.to_str().unwrap(),
            "--outputs",
            "log_probs,warped",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let data = common::mnist_dir();
    let png = dir.path().join("v.png");
    let o = common::run(
        "stn-infer",
        &[
            "--runtime",
            "dfdx",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--offline",
            "--visualize",
            png.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    let plain = repo().join("models/stn.onnx");
    let o = common::run(
        "stn-infer",
        &[
            "--runtime",
            "dfdx",
            "--model",
            plain.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--offline",
            "--visualize",
            png.to_str().unwrap(),
        ],
    );
    assert!(
        !o.status.success() && common::stderr(&o).contains("warped"),
        "{}",
        common::stderr(&o)
    );
}
