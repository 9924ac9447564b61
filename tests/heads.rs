//! Every transform head and sampling mode of the paper, trained a little on MNIST, exported at
//! opset 16 and 20: the reference checker's full_check passes, PyTorch rebuilt from the spec
//! (`scripts/spec_torch.py`, the heads written in PyTorch in `scripts/golden_transforms.py`) gives
//! ONNX Runtime's outputs, and tract, ONNX Runtime, dfdx, fused and dfdx in f64 agree on the 10,000
//! test images: log-probs within numpy's allclose(1e-5, 1e-5), the warped images within 3e-5 (the
//! grids' float32 rounding, see below) — for nearest sampling, but at the points that sit on a
//! rounding tie of some runtime's grid (see `nearest_agrees`).

use std::path::Path;

use stn_model::{
    Arch, Batch, ModelSpec, Network, Optimizer, OptimizerKind, Params, Pixels, TrainOptions,
    Trainer,
};
use stn_onnx::{export, to_bytes, ExportOptions, Output};
use stn_runtime::{Device, DfdxRunner, FusedRunner, OrtRunner, Runner, TractRunner};

mod common;

/// The seed's layers with another head: `(name, transform as JSON)`.
fn heads() -> Vec<(&'static str, &'static str)> {
    vec![
        ("attention", r#"{"kind": "attention", "output": [28, 28]}"#),
        (
            "similarity-border",
            r#"{"kind": "similarity", "output": [28, 28], "padding": "border"}"#,
        ),
        (
            "projective",
            r#"{"kind": "projective", "output": [28, 28]}"#,
        ),
        (
            "projective-bicubic",
            r#"{"kind": "projective", "output": [28, 28], "mode": "bicubic", "align_corners": true}"#,
        ),
        (
            "tps-reflection",
            r#"{"kind": "tps", "output": [28, 28], "padding": "reflection"}"#,
        ),
        (
            "tps3-nearest",
            r#"{"kind": "tps", "grid": 3, "output": [24, 24], "mode": "nearest"}"#,
        ),
        (
            "affine-bicubic",
            r#"{"kind": "affine", "output": [28, 28], "mode": "bicubic"}"#,
        ),
        (
            "affine-nearest-border",
            r#"{"kind": "affine", "output": [28, 28], "mode": "nearest", "padding": "border"}"#,
        ),
    ]
}

fn network(transform: &str) -> Network {
    let mut v = serde_json::to_value(Arch::SEED.spec()).unwrap();
    v["transform"] = serde_json::from_str(transform).unwrap();
    v["names"] = "sequential".into();
    let spec: ModelSpec = serde_json::from_value(v).unwrap();
    // The classifier's first linear layer follows the sampled size.
    Network::new(spec).unwrap()
}

fn trained(net: &Network, mnist: &stn_data::Mnist) -> Params {
    let n = 3000;
    let x = stn_data::normalize(&mnist.train.images[..n * 784]);
    let data = Batch {
        images: Pixels::Normalized(&x),
        labels: &mnist.train.labels[..n],
        dims: [1, 28, 28],
    };
    let params = Params::init(net.clone(), 3);
    let opt = Optimizer::new(OptimizerKind::Adam, 0.002, 1.0, &params);
    let mut t = Trainer::new(
        params,
        opt,
        TrainOptions {
            batch: 64,
            seed: 3,
            clip: None,
        },
    );
    t.train_epoch(&data, 1, |_, _, _| {}).unwrap();
    assert!(t.params.non_finite().is_empty());
    t.params
}

fn python(args: &[&str]) -> (bool, String) {
    let python = std::env::var("STN_PYTHON")
        .expect("STN_PYTHON: a Python with onnx and torch (scripts/test.sh sets it)");
    let o = std::process::Command::new(python)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// numpy's isclose(y, x, rtol = atol = tol); false for NaN.
fn close(x: f32, y: f32, tol: f32) -> bool {
    (x - y).abs() <= tol + tol * y.abs()
}

/// numpy's allclose(tol, tol); returns the largest |a − b|.
fn allclose(what: &str, a: &[f32], b: &[f32], tol: f32) -> f32 {
    assert_eq!(a.len(), b.len(), "{what}");
    let bad = a.iter().zip(b).position(|(&x, &y)| !close(x, y, tol));
    if let Some(i) = bad {
        panic!("{what}[{i}]: {} vs {}", a[i], b[i]);
    }
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Nearest sampling is exact but discontinuous: a grid point within a rounding error of a
/// pixel edge reads one pixel on one runtime and its neighbour on another. Those points are rare
/// (one in ~10⁵ here); everywhere else the images are equal within allclose, and the log-probs of
/// all but the images holding such a point are too.
fn nearest_agrees(what: &str, a: &[f32], b: &[f32], pixels: usize) -> usize {
    assert_eq!(a.len(), b.len(), "{what}");
    let differ = |x: f32, y: f32| !close(x, y, 1e-5);
    let bad: Vec<usize> = (0..a.len()).filter(|&i| differ(a[i], b[i])).collect();
    assert!(
        bad.len() * 10_000 <= a.len(),
        "{what}: {} of {} values differ",
        bad.len(),
        a.len()
    );
    let mut images: Vec<usize> = bad.iter().map(|i| i / pixels).collect();
    images.dedup();
    images.len()
}

#[test]
fn every_head_and_mode_exports_and_agrees_on_every_runtime_on_the_test_set() {
    let mnist = stn_data::Mnist::load(
        &stn_data::DataDir::resolve(Some(&common::mnist_dir())),
        true,
    )
    .unwrap();
    let n = mnist.test.len();
    assert_eq!(n, 10_000);
    let x = stn_data::normalize(&mnist.test.images);
    let dir = tempfile::tempdir().unwrap();
    let lib = stn_runtime::find_ort_library(None, Device::Cpu).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/spec_torch.py");
    for (name, transform) in heads() {
        let net = network(transform);
        let mut params = trained(&net, &mnist);
        let nearest = name.contains("nearest");
        if nearest {
            // No gradient reaches the localisation net through nearest sampling: the head is
            // still the identity. Moved off it by hand, so the samples fall between pixels.
            let (_, b) = net.plan().regressor.clone().unwrap();
            let i = params.names.iter().position(|n| *n == b).unwrap();
            for (k, v) in params.data[i].iter_mut().enumerate() {
                *v += 0.07 * ((k as f32 * 1.7).sin());
            }
        }
        let [ho, wo] = net.plan().transform.output().unwrap();
        for opset in [16, 20] {
            let model = export(
                &params,
                &ExportOptions {
                    opset,
                    outputs: vec![Output::LogProbs, Output::Theta, Output::Warped],
                    metadata: vec![],
                },
            )
            .unwrap();
            let bytes = to_bytes(&model);
            let path = dir.path().join(format!("{name}-{opset}.onnx"));
            std::fs::write(&path, &bytes).unwrap();
            let p = path.to_str().unwrap();
            let (ok, out) = python(&[
                "-c",
                "import onnx, sys; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True)",
                p,
            ]);
            assert!(ok, "{name} opset {opset}: full_check: {out}");
            if !nearest {
                let (ok, out) = python(&[script.to_str().unwrap(), p, "16"]);
                assert!(ok, "{name} opset {opset}: PyTorch vs ONNX Runtime: {out}");
            }
            let mut runners: Vec<Box<dyn Runner>> = vec![
                Box::new(DfdxRunner::load(&bytes, p, true).unwrap()),
                Box::new(DfdxRunner::load(&bytes, p, false).unwrap()),
                Box::new(FusedRunner::load(&bytes, p).unwrap()),
                Box::new(OrtRunner::load(&bytes, p, &lib, Device::Cpu, 2).unwrap()),
                Box::new(TractRunner::load(&bytes, p).unwrap()),
            ];
            let outs: Vec<_> = runners
                .iter_mut()
                .map(|r| (r.name(), r.run(&x, n).unwrap()))
                .collect();
            let (_, reference) = &outs[0];
            let warped_ref = reference.warped.as_ref().unwrap();
            // Trained off the identity: the warped images are not the inputs resampled.
            if (ho, wo) == (28, 28) {
                let moved = warped_ref
                    .iter()
                    .zip(&x)
                    .filter(|(a, b)| (*a - *b).abs() > 1e-3)
                    .count();
                assert!(moved > x.len() / 20, "{name}: {moved} pixels moved");
            }
            for (rt, o) in &outs[1..] {
                let what = format!("{name} opset {opset}: {rt} vs dfdx-f64");
                let warped = o.warped.as_ref().unwrap();
                if nearest {
                    let images = nearest_agrees(&what, warped, warped_ref, ho * wo);
                    let lp_images = nearest_agrees(
                        &format!("{what} log_probs"),
                        &o.log_probs,
                        &reference.log_probs,
                        10,
                    );
                    assert!(
                        lp_images <= images,
                        "{what}: {lp_images} images' log-probs differ, {images} images' samples"
                    );
                } else {
                    // The log-probs within allclose(1e-5, 1e-5). The warped images within 3e-5:
                    // each runtime computes the grid in float32 in its own order (ONNX Runtime's
                    // AffineGrid builds its base grid unlike PyTorch's linspace; the projective
                    // grid's MatMul and Div and the spline's MatMul round their own way), and a
                    // coordinate a few ulps apart, times the image's slope (up to ~3 a pixel),
                    // moves a sample by up to ~1.2e-5 on a few of the 7.8 million.
                    let dw = allclose(&format!("{what} warped"), warped, warped_ref, 3e-5);
                    let dl = allclose(
                        &format!("{what} log_probs"),
                        &o.log_probs,
                        &reference.log_probs,
                        1e-5,
                    );
                    eprintln!("{what}: max |Δ| warped {dw:.2e}, log_probs {dl:.2e}");
                }
            }
        }
        // The file carries the spec: read back, it is the same network.
        let model = export(
            &params,
            &ExportOptions {
                opset: 20,
                outputs: vec![Output::LogProbs],
                metadata: vec![],
            },
        )
        .unwrap();
        let m = stn_onnx::read_model(&to_bytes(&model), name).unwrap();
        assert_eq!(m.params, params, "{name}");
    }
}

#[test]
fn bicubic_with_padding_is_refused_at_export_and_heads_are_validated() {
    let mnist_free = network(
        r#"{"kind": "affine", "output": [28, 28], "mode": "bicubic", "padding": "border"}"#,
    );
    let params = Params::init(mnist_free, 1);
    let e = export(
        &params,
        &ExportOptions {
            opset: 16,
            outputs: vec![Output::LogProbs],
            metadata: vec![],
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("bicubic sampling with border padding has no ONNX form"),
        "{e}"
    );
    let spec = |t: &str| {
        let mut v = serde_json::to_value(Arch::SEED.spec()).unwrap();
        v["transform"] = serde_json::from_str(t).unwrap();
        serde_json::from_value::<ModelSpec>(v)
            .map_err(|e| e.to_string())
            .and_then(|s| Network::new(s).map_err(|e| e.to_string()))
    };
    let e = spec(r#"{"kind": "tps", "grid": 1, "output": [28, 28]}"#).unwrap_err();
    assert!(e.contains("tps control grid of 1×1"), "{e}");
    let e = spec(r#"{"kind": "swirl", "output": [28, 28]}"#).unwrap_err();
    assert!(e.contains("swirl"), "{e}");
    let e = spec(r#"{"kind": "affine", "output": [28, 28], "mode": "lanczos"}"#).unwrap_err();
    assert!(e.contains("lanczos"), "{e}");
    let e = spec(r#"{"kind": "affine", "output": [28, 28], "paddng": "border"}"#).unwrap_err();
    assert!(e.contains("paddng"), "{e}");
}
