//! Networks of other model specs than the seed's — RGB 32×32, a non-square 24×40, a bigger
//! backbone, strided and padded convs with average pools — trained a little, exported at opset 16 and 20, pass the reference ONNX checker
//! (full_check) and give the same outputs on tract, ONNX Runtime, dfdx, fused and dfdx in f64,
//! within numpy's allclose(1e-5, 1e-5); rebuilt in PyTorch from the same spec
//! (`scripts/spec_torch.py`), they give ONNX Runtime's outputs too.

use std::path::Path;

use stn_model::{
    Batch, ModelSpec, Network, Optimizer, OptimizerKind, Params, Pixels, TrainOptions, Trainer,
};
use stn_onnx::{export, to_bytes, ExportOptions, Output};
use stn_runtime::{Device, DfdxRunner, FusedRunner, OrtRunner, Runner, TractRunner};

/// `(name, spec)`: each with a transformer, so theta and warped are compared too.
fn specs() -> Vec<(&'static str, String)> {
    let conv = |out, k| format!(r#"{{"op": "conv2d", "out": {out}, "kernel": {k}}}"#);
    let pool = r#"{"op": "max_pool2d", "kernel": 2}"#;
    let relu = r#"{"op": "relu"}"#;
    let flat = r#"{"op": "flatten"}"#;
    let lin = |out| format!(r#"{{"op": "linear", "out": {out}}}"#);
    vec![
        (
            "rgb32",
            format!(
                r#"{{"input": {{"channels": 3, "height": 32, "width": 32,
                                "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}},
                    "localization": [{}, {pool}, {relu}, {}, {pool}, {relu}, {flat}, {}, {relu}],
                    "transform": {{"kind": "affine", "output": [28, 28], "padding": "border"}},
                    "classifier": [{}, {pool}, {relu}, {}, {{"op": "dropout2d"}}, {pool}, {relu}, {flat},
                                   {}, {relu}, {{"op": "dropout"}}, {}],
                    "classes": 5}}"#,
                conv(8, 5),
                conv(10, 5),
                lin(32),
                conv(12, 5),
                conv(24, 5),
                lin(64),
                lin(5)
            ),
        ),
        (
            "wide24x40",
            format!(
                r#"{{"input": {{"channels": 1, "height": 24, "width": 40, "mean": [0.2], "std": [0.3]}},
                    "localization": [{}, {pool}, {relu}, {flat}, {}, {relu}],
                    "transform": {{"kind": "affine", "output": [20, 32], "align_corners": true}},
                    "classifier": [{}, {relu}, {pool}, {}, {relu}, {flat}, {}],
                    "classes": 4}}"#,
                conv(6, 5),
                lin(16),
                conv(8, 3),
                conv(12, 3),
                lin(4)
            ),
        ),
        (
            "big28",
            format!(
                r#"{{"input": {{"channels": 1, "height": 28, "width": 28, "mean": [0.1307], "std": [0.3081]}},
                    "localization": [{}, {pool}, {relu}, {}, {pool}, {relu}, {flat}, {}, {relu}],
                    "transform": {{"kind": "affine", "output": [28, 28], "padding": "reflection"}},
                    "classifier": [{}, {relu}, {}, {pool}, {relu}, {}, {pool}, {relu}, {flat},
                                   {}, {relu}, {}, {relu}, {}],
                    "classes": 10}}"#,
                conv(16, 7),
                conv(20, 5),
                lin(48),
                conv(32, 3),
                conv(32, 3),
                conv(64, 3),
                lin(128),
                lin(64),
                lin(10)
            ),
        ),
        (
            "strided",
            format!(
                r#"{{"input": {{"channels": 3, "height": 30, "width": 26, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}},
                    "localization": [{{"op": "conv2d", "out": 8, "kernel": 5, "stride": 2, "padding": 2}}, {relu},
                                     {{"op": "avg_pool2d", "kernel": 3, "stride": 2}}, {flat}, {}, {relu}],
                    "transform": {{"kind": "affine", "output": [24, 24]}},
                    "classifier": [{{"op": "conv2d", "out": 12, "kernel": 3, "padding": 1}}, {relu},
                                   {{"op": "avg_pool2d", "kernel": 2}}, {{"op": "conv2d", "out": 16, "kernel": 3, "stride": 2}},
                                   {relu}, {pool}, {flat}, {}],
                    "classes": 6}}"#,
                lin(16),
                lin(6)
            ),
        ),
    ]
}

fn lcg(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Normalised images with a bright square placed by the class, and their labels.
fn images(n: usize, dims: [usize; 3], classes: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let [c, h, w] = dims;
    let mut rnd = lcg(seed);
    let mut x = Vec::with_capacity(n * c * h * w);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let k = i % classes;
        labels.push(k as u8);
        let (y0, x0) = (k * h / (classes + 1), (k * 7 + i) % (w / 2));
        for _ in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let on = (y0..y0 + h / 3).contains(&y) && (x0..x0 + w / 3).contains(&xx);
                    x.push(if on { 2.0 } else { -0.5 } + 0.4 * rnd());
                }
            }
        }
    }
    (x, labels)
}

fn trained(net: &Network) -> Params {
    let plan = net.plan();
    let (x, y) = images(96, net.input_dims(), plan.classes, 5);
    let data = Batch {
        images: Pixels::Normalized(&x),
        labels: &y,
        dims: net.input_dims(),
    };
    let params = Params::init(net.clone(), 2);
    let opt = Optimizer::new(OptimizerKind::Adam, 0.003, 1.0, &params);
    let mut t = Trainer::new(
        params,
        opt,
        TrainOptions {
            batch: 32,
            seed: 2,
            clip: None,
        },
    );
    for epoch in 1..=2 {
        t.train_epoch(&data, epoch, |_, _, _| {}).unwrap();
    }
    assert!(t.params.non_finite().is_empty());
    t.params
}

fn checker(path: &Path) {
    let python = std::env::var("STN_PYTHON")
        .expect("STN_PYTHON: a Python with onnx (scripts/test.sh sets it)");
    let o = std::process::Command::new(python)
        .args([
            "-c",
            "import onnx, sys; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True)",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `scripts/spec_torch.py`: the spec rebuilt as PyTorch `nn.Sequential`s, the file's
/// initializers loaded by name (strict), gives ONNX Runtime's log-probs and warped images.
fn pytorch_agrees(path: &Path) {
    let python = std::env::var("STN_PYTHON").expect("STN_PYTHON");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/spec_torch.py");
    let o = std::process::Command::new(python)
        .arg(&script)
        .arg(path)
        .arg("12")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("log_probs") && out.contains("warped"),
        "{}: {out}{}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn allclose(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 + 1e-5 * y.abs(),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

#[test]
fn other_specs_export_and_agree_on_every_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let lib = stn_runtime::find_ort_library(None, Device::Cpu).unwrap();
    for (name, text) in specs() {
        let net = Network::new(ModelSpec::parse(&text).unwrap()).unwrap();
        assert!(net.seed_arch().is_none(), "{name}");
        let params = trained(&net);
        let (x, _) = images(40, net.input_dims(), net.plan().classes, 9);
        for opset in [16, 20] {
            let model = export(
                &params,
                &ExportOptions {
                    opset,
                    outputs: vec![Output::LogProbs, Output::Warped],
                    metadata: vec![],
                },
            )
            .unwrap();
            let bytes = to_bytes(&model);
            let path = dir.path().join(format!("{name}-{opset}.onnx"));
            std::fs::write(&path, &bytes).unwrap();
            checker(&path);
            pytorch_agrees(&path);
            let p = path.display().to_string();
            let mut runners: Vec<Box<dyn Runner>> = vec![
                Box::new(DfdxRunner::load(&bytes, &p, true).unwrap()),
                Box::new(DfdxRunner::load(&bytes, &p, false).unwrap()),
                Box::new(FusedRunner::load(&bytes, &p).unwrap()),
                Box::new(OrtRunner::load(&bytes, &p, &lib, Device::Cpu, 1).unwrap()),
                Box::new(TractRunner::load(&bytes, &p).unwrap()),
            ];
            let outs: Vec<_> = runners
                .iter_mut()
                .map(|r| {
                    assert_eq!(r.input_dims(), net.input_dims(), "{name}: {}", r.name());
                    (r.name(), r.run(&x, 40).unwrap())
                })
                .collect();
            let (_, reference) = &outs[0];
            assert_eq!(reference.log_probs.len(), 40 * net.plan().classes);
            // Trained: the transform has moved off the identity, so the warped images differ
            // from a plain resampling of the input.
            for (rt, o) in &outs[1..] {
                let what = format!("{name} opset {opset}: {rt} vs dfdx-f64");
                allclose(
                    &format!("{what} log_probs"),
                    &o.log_probs,
                    &reference.log_probs,
                );
                allclose(
                    &format!("{what} warped"),
                    o.warped.as_ref().unwrap(),
                    reference.warped.as_ref().unwrap(),
                );
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
