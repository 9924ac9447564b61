//! Model specs: presets equal to the seed family, shape inference and its errors, names, file
//! formats, and the forward of any spec checked against finite differences and trained.

use dfdx::prelude::*;
use stn_model::{
    evaluate, forward, Arch, Batch, Checkpoint, DropoutMasks, ModelSpec, Network, Optimizer,
    OptimizerKind, Params, Pixels, TrainOptions, Trainer, PRESETS,
};

fn net(json: &str) -> Network {
    Network::new(ModelSpec::parse(json).expect("a valid spec")).expect("plans")
}

fn spec_error(json: &str) -> String {
    match ModelSpec::parse(json) {
        Ok(s) => panic!("accepted {s:?}"),
        Err(e) => e.to_string(),
    }
}

/// A spec in JSON with the given localisation, transform and classifier.
fn json(input: &str, loc: &str, transform: &str, classifier: &str, classes: usize) -> String {
    format!(
        r#"{{"input": {input}, "localization": [{loc}], "transform": {transform},
            "classifier": [{classifier}], "classes": {classes}}}"#
    )
}

/// A small non-square RGB network with every layer kind the ops run: a fused conv → pool → ReLU
/// in the localisation net, border padding with align_corners, a fused conv → dropout2d → pool →
/// ReLU, a plain conv and ReLU, a stride-1 pool, dropout.
fn rgb_spec() -> String {
    json(
        r#"{"channels": 3, "height": 12, "width": 10, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}"#,
        r#"{"op": "conv2d", "out": 4, "kernel": 3}, {"op": "max_pool2d", "kernel": 2},
           {"op": "relu"}, {"op": "flatten"}, {"op": "linear", "out": 8}, {"op": "relu"}"#,
        r#"{"kind": "affine", "output": [10, 8], "padding": "border", "align_corners": true}"#,
        r#"{"op": "conv2d", "out": 5, "kernel": 3}, {"op": "dropout2d"},
           {"op": "max_pool2d", "kernel": 2}, {"op": "relu"},
           {"op": "conv2d", "out": 6, "kernel": 2}, {"op": "relu"},
           {"op": "max_pool2d", "kernel": 2, "stride": 1}, {"op": "flatten"},
           {"op": "linear", "out": 7}, {"op": "relu"}, {"op": "dropout", "p": 0.25},
           {"op": "linear", "out": 4}"#,
        4,
    )
}

/// The tutorial's `Net` on an `arch`'s canvas, written out by hand as its `state_dict` (the oracle
/// the spec's shape inference is checked against): conv 7 → pool 2 → conv 5 → pool 2 in the
/// localisation net, conv 5 → pool 2 twice in the classifier.
fn tutorial_params(arch: Arch) -> Vec<(String, Vec<usize>)> {
    let loc_side = ((arch.canvas - 6) / 2 - 4) / 2;
    let cls_in = if arch.stn { 28 } else { arch.canvas };
    let cls_side = ((cls_in - 4) / 2 - 4) / 2;
    let mut v = vec![
        ("conv1.weight", vec![10, 1, 5, 5]),
        ("conv1.bias", vec![10]),
        ("conv2.weight", vec![20, 10, 5, 5]),
        ("conv2.bias", vec![20]),
        ("fc1.weight", vec![50, 20 * cls_side * cls_side]),
        ("fc1.bias", vec![50]),
        ("fc2.weight", vec![10, 50]),
        ("fc2.bias", vec![10]),
    ];
    if arch.stn {
        v.extend([
            ("localization.0.weight", vec![8, 1, 7, 7]),
            ("localization.0.bias", vec![8]),
            ("localization.3.weight", vec![10, 8, 5, 5]),
            ("localization.3.bias", vec![10]),
            ("fc_loc.0.weight", vec![32, 10 * loc_side * loc_side]),
            ("fc_loc.0.bias", vec![32]),
            ("fc_loc.2.weight", vec![6, 32]),
            ("fc_loc.2.bias", vec![6]),
        ]);
    }
    v.into_iter().map(|(n, s)| (n.to_string(), s)).collect()
}

#[test]
fn presets_are_the_seed_family() {
    for (name, _) in PRESETS
        .iter()
        .filter(|(n, _)| !n.starts_with("paper-") && *n != "speedrun")
    {
        let spec = ModelSpec::preset(name).unwrap();
        let arch = spec.seed_arch().expect("a preset is of the seed family");
        let plan = spec.plan().unwrap();
        assert_eq!(plan.params, tutorial_params(arch), "{name}");
        assert_eq!(plan.regressor.is_some(), arch.stn, "{name}");
        // The seed's dropouts: Dropout2d on conv2's 20 channels, then dropout on fc1's 50.
        assert_eq!(plan.dropouts(), vec![(0.5, 20), (0.5, 50)], "{name}");
        // Through both file formats and back.
        assert_eq!(ModelSpec::parse(&spec.to_toml()).unwrap(), spec, "{name}");
        assert_eq!(ModelSpec::parse(&spec.to_json()).unwrap(), spec, "{name}");
    }
    assert_eq!(ModelSpec::preset("seed").unwrap(), Arch::SEED.spec());
    assert!(ModelSpec::preset("lenet").is_none());
}

#[test]
fn the_speedrun_preset_is_the_seed_with_lighter_dropout() {
    let spec = ModelSpec::preset("speedrun").unwrap();
    let seed = ModelSpec::preset("seed").unwrap();
    // Not the seed (its dropouts differ), so the general path trains and exports it.
    assert_eq!(spec.seed_arch(), None);
    let (plan, seed_plan) = (spec.plan().unwrap(), seed.plan().unwrap());
    assert_eq!(plan.params, seed_plan.params);
    assert_eq!(plan.dropouts(), vec![(0.1, 20), (0.25, 50)]);
    // Everything else is the seed's.
    assert_eq!(spec.input, seed.input);
    assert_eq!(spec.transform, seed.transform);
    assert_eq!(spec.localization, seed.localization);
    assert_eq!(spec.classifier.len(), seed.classifier.len());
    assert_eq!(ModelSpec::parse(&spec.to_toml()).unwrap(), spec);
}

#[test]
fn the_papers_presets_have_its_layers_and_every_head() {
    let count = |spec: &ModelSpec| -> usize {
        spec.plan()
            .unwrap()
            .params
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    };
    // The CNN: conv 9×9 32 → pool → conv 7×7 32 → pool → linear 10 (paper.rs).
    let cnn = ModelSpec::preset("paper-cnn").unwrap();
    assert_eq!(count(&cnn), 2624 + 50208 + 128 * 10 + 10);
    let cnn42 = ModelSpec::preset("paper-cnn-42").unwrap();
    assert_eq!(count(&cnn42), 2624 + 50208 + 800 * 10 + 10);
    // The localisation net: conv 5×5 20 → pool → conv 5×5 20 → pool → linear 50, then the head's
    // regressor; the classifier is the CNN's.
    for (head, p) in [
        ("affine", 6),
        ("projective", 8),
        ("tps", 32),
        ("attention", 3),
        ("similarity", 4),
    ] {
        for (suffix, cnn, loc_in) in [("", &cnn, 320), ("-42", &cnn42, 80)] {
            let name = format!("paper-st-{head}{suffix}");
            let spec = ModelSpec::preset(&name).unwrap();
            assert!(
                PRESETS
                    .iter()
                    .any(|(n, _)| *n == format!("paper-st-{head}")),
                "{name}"
            );
            assert_eq!(spec.transform.kind(), head, "{name}");
            assert_eq!(spec.transform.n_params(), p, "{name}");
            assert_eq!(spec.classifier, cnn.classifier, "{name}");
            let loc = 520 + 10020 + loc_in * 50 + 50 + 50 * p + p;
            assert_eq!(count(&spec), count(cnn) + loc, "{name}");
            assert_eq!(ModelSpec::parse(&spec.to_toml()).unwrap(), spec, "{name}");
            assert_eq!(ModelSpec::parse(&spec.to_json()).unwrap(), spec, "{name}");
            // The regressor starts at the head's identity.
            let plan = spec.plan().unwrap();
            assert!(plan.regressor.is_some());
        }
    }
    assert!(ModelSpec::preset("paper-st-swirl").is_none());
    assert!(ModelSpec::preset("paper-cnn-60").is_none());
}

#[test]
fn a_pool_with_its_default_stride_written_out_is_the_same_network() {
    let seed = ModelSpec::preset("seed").unwrap();
    let written = seed.to_json().replace(
        r#""kernel": 2
    }"#,
        r#""kernel": 2, "stride": 2
    }"#,
    );
    assert_ne!(written, seed.to_json());
    assert_eq!(ModelSpec::parse(&written).unwrap(), seed);
}

#[test]
fn sequential_names_and_shapes() {
    let n = net(&rgb_spec());
    let names: Vec<&str> = n.plan().params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "classifier.0.weight",
            "classifier.0.bias",
            "classifier.4.weight",
            "classifier.4.bias",
            "classifier.8.weight",
            "classifier.8.bias",
            "classifier.11.weight",
            "classifier.11.bias",
            "localization.0.weight",
            "localization.0.bias",
            "localization.4.weight",
            "localization.4.bias",
            // The regressor: the next index, as if appended to the Sequential.
            "localization.6.weight",
            "localization.6.bias",
        ]
    );
    let shape = |name: &str| {
        n.plan()
            .params
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .clone()
    };
    // 12×10 → conv 3 → 10×8 → pool 2 → 5×4: 4·5·4 = 80 features.
    assert_eq!(shape("localization.4.weight"), vec![8, 80]);
    assert_eq!(shape("localization.6.weight"), vec![6, 8]);
    assert_eq!(shape("classifier.0.weight"), vec![5, 3, 3, 3]);
    // Sampled 10×8 → conv 3 → 8×6 → pool 2 → 4×3 → conv 2 → 3×2 → pool 2/1 → 2×1: 12 features.
    assert_eq!(shape("classifier.8.weight"), vec![7, 12]);
    assert_eq!(n.plan().dropouts(), vec![(0.5, 5), (0.25, 7)]);
    assert_eq!(n.input_dims(), [3, 12, 10]);
    assert!(n.seed_arch().is_none());
    assert_eq!(
        n.to_string(),
        "the network on 3×12×10 inputs (affine STN sampling 10×8), 4 classes"
    );
}

#[test]
fn specs_that_do_not_fit_name_the_layer() {
    let grey = r#"{"channels": 1, "height": 28, "width": 28}"#;
    let affine = r#"{"kind": "affine", "output": [28, 28]}"#;
    let loc = r#"{"op": "flatten"}, {"op": "linear", "out": 8}"#;
    let cls = r#"{"op": "flatten"}, {"op": "linear", "out": 10}"#;
    let cases: Vec<(String, &[&str])> = vec![
        (
            json(
                grey,
                r#"{"op": "conv2d", "out": 4, "kernel": 29}, {"op": "flatten"}"#,
                affine,
                cls,
                10,
            ),
            &[
                "localization layer 0 (conv2d",
                "kernel 29×29",
                "1×28×28 input",
            ],
        ),
        (
            json(
                grey,
                loc,
                affine,
                r#"{"op": "max_pool2d", "kernel": 2}, {"op": "linear", "out": 10}"#,
                10,
            ),
            &[
                "classifier layer 1 (linear out 10)",
                "put a flatten before it",
            ],
        ),
        (
            json(grey, loc, affine, cls, 12),
            &["classifier: ends with 10 features", "12 classes"],
        ),
        (
            json(
                grey,
                r#"{"op": "conv2d", "out": 4, "kernel": 3}"#,
                affine,
                cls,
                10,
            ),
            &[
                "localization regressor (linear out 6)",
                "4×26×26 feature map",
                "put a flatten before it",
            ],
        ),
        (
            json(grey, loc, r#"{"kind": "none"}"#, cls, 10),
            &["localization: layers given, but transform is none"],
        ),
        (json(grey, "", affine, cls, 10), &["localization: empty"]),
        (
            json(
                grey,
                loc,
                affine,
                r#"{"op": "flatten"}, {"op": "dropout2d"}, {"op": "linear", "out": 10}"#,
                10,
            ),
            &["classifier layer 1 (dropout2d", "needs a feature map"],
        ),
        (
            json(
                grey,
                loc,
                affine,
                r#"{"op": "dropout", "p": 1.0}, {"op": "flatten"}, {"op": "linear", "out": 10}"#,
                10,
            ),
            &["classifier layer 0 (dropout p 1)", "0 ≤ p < 1"],
        ),
        (
            json(
                r#"{"channels": 3, "height": 28, "width": 28, "mean": [0.5]}"#,
                loc,
                affine,
                cls,
                10,
            ),
            &["input: mean has 1 values for 3 channels"],
        ),
        (
            json(
                r#"{"channels": 1, "height": 28, "width": 28, "mean": [0.5], "std": [0]}"#,
                loc,
                affine,
                cls,
                10,
            ),
            &["input: std [0.0]", "positive"],
        ),
        (
            json(
                r#"{"channels": 1, "height": 0, "width": 28}"#,
                loc,
                affine,
                cls,
                10,
            ),
            &["input: height 0"],
        ),
        (
            json(
                r#"{"channels": 4096, "height": 16384, "width": 16384}"#,
                loc,
                affine,
                cls,
                10,
            ),
            &["input: 4096×16384×16384", "values per image"],
        ),
        (
            json(
                grey,
                loc,
                r#"{"kind": "affine", "output": [0, 28]}"#,
                cls,
                10,
            ),
            &["transform: output 0×28"],
        ),
        (
            json(
                grey,
                loc,
                affine,
                r#"{"op": "flatten"}, {"op": "linear", "out": 100000}, {"op": "linear", "out": 100000}, {"op": "linear", "out": 10}"#,
                10,
            ),
            &["classifier.2.weight [100000, 100000]", "parameters in all"],
        ),
        (
            json(
                grey,
                loc,
                affine,
                r#"{"op": "softmax"}, {"op": "linear", "out": 10}"#,
                10,
            ),
            &["JSON", "softmax"],
        ),
        (
            json(
                grey,
                loc,
                affine,
                r#"{"op": "conv2d", "out": 4, "kernel": 3, "dilation": 2}"#,
                10,
            ),
            &["JSON", "dilation"],
        ),
        (
            "[input]\nchannels = 1\n".to_string(),
            &["TOML", "missing field"],
        ),
    ];
    for (spec, want) in cases {
        let e = spec_error(&spec);
        for w in want {
            assert!(e.contains(w), "{e}\n  does not say {w:?}\n  for {spec}");
        }
    }
}

#[test]
fn tutorial_naming_needs_the_tutorial_shape() {
    // The seed with tutorial names but a localisation net without flatten before its linears is
    // still named (its linears then count under localization.<i>); the names stay unique.
    let mut s = ModelSpec::preset("seed").unwrap();
    s.localization.insert(0, stn_model::Layer::Relu);
    let plan = s.plan().unwrap();
    assert!(plan
        .params
        .iter()
        .any(|(n, _)| n == "localization.1.weight"));
    assert!(plan.params.iter().any(|(n, _)| n == "fc_loc.2.weight"));
    assert!(s.seed_arch().is_none());
}

/// `Σ log_probs · r` and its gradient for every parameter, in f64 on the CPU, with fixed dropout
/// masks (train mode) when given.
fn loss_and_grads(
    n: &Network,
    data: &[Vec<f64>],
    x: &[f64],
    batch: usize,
    masks: Option<&DropoutMasks<f64>>,
) -> (f64, Vec<Vec<f64>>) {
    let dev = Cpu::default();
    let [c, h, w] = n.input_dims();
    let base: Vec<Tensor<(usize,), f64, Cpu>> = data
        .iter()
        .map(|d| dev.tensor_from_vec(d.clone(), (d.len(),)))
        .collect();
    let traced = base.iter().map(|t| t.leaky_trace()).collect();
    let x = dev.tensor_from_vec(x.to_vec(), (batch, c, h, w));
    let out = forward(n.plan(), traced, x, masks).unwrap();
    let classes = n.plan().classes;
    let r: Vec<f64> = (0..batch * classes)
        .map(|i| ((i * 7 % 11) as f64 - 5.0) / 5.0)
        .collect();
    let r = dev.tensor_from_vec(r, (batch, classes));
    let loss = (out.log_probs * r).sum::<Rank0, _>();
    let value = loss.as_vec()[0];
    let grads = loss.backward();
    (value, base.iter().map(|t| grads.get(t).as_vec()).collect())
}

fn lcg(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

fn gradcheck(n: &Network, masks: Option<&DropoutMasks<f64>>) {
    let batch = 3;
    let mut rnd = lcg(7);
    let params = Params::init(n.clone(), 11);
    let mut data: Vec<Vec<f64>> = params
        .data
        .iter()
        .map(|d| d.iter().map(|&v| v as f64 + 0.05 * rnd()).collect())
        .collect();
    let len: usize = n.input_dims().iter().product();
    let x: Vec<f64> = (0..batch * len).map(|_| rnd()).collect();
    let (_, grads) = loss_and_grads(n, &data, &x, batch, masks);
    let eps = 1e-6;
    let mut checked = 0;
    for p in 0..data.len() {
        for k in [0, data[p].len() / 2, data[p].len() - 1] {
            let v = data[p][k];
            data[p][k] = v + eps;
            let (up, _) = loss_and_grads(n, &data, &x, batch, masks);
            data[p][k] = v - eps;
            let (down, _) = loss_and_grads(n, &data, &x, batch, masks);
            data[p][k] = v;
            let fd = (up - down) / (2.0 * eps);
            let g = grads[p][k];
            assert!(
                (g - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{}[{k}]: backward {g}, finite differences {fd}",
                n.plan().params[p].0
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * data.len());
}

#[test]
fn the_forward_of_any_spec_has_the_gradient_of_finite_differences() {
    let rgb = net(&rgb_spec());
    // Train mode with fixed masks: dropout2d's per (image, channel), dropout's per value.
    let masks = DropoutMasks {
        masks: vec![
            (0..3 * 5)
                .map(|i| if i % 3 == 0 { 0.0 } else { 2.0 })
                .collect(),
            (0..3 * 7)
                .map(|i| if i % 4 == 1 { 0.0 } else { 4.0 / 3.0 })
                .collect(),
        ],
        units: vec![5, 7],
    };
    gradcheck(&rgb, Some(&masks));
    gradcheck(&rgb, None);
    // Strided and padded convs and average pools, in the localisation net and the classifier.
    let strided = net(&json(
        r#"{"channels": 2, "height": 11, "width": 9}"#,
        r#"{"op": "conv2d", "out": 3, "kernel": 3, "stride": 2, "padding": 1}, {"op": "relu"},
           {"op": "avg_pool2d", "kernel": 2, "stride": 1}, {"op": "flatten"}, {"op": "linear", "out": 5}"#,
        r#"{"kind": "affine", "output": [8, 7]}"#,
        r#"{"op": "conv2d", "out": 4, "kernel": 3, "padding": 1}, {"op": "avg_pool2d", "kernel": 2},
           {"op": "relu"}, {"op": "conv2d", "out": 3, "kernel": 2, "stride": 2}, {"op": "flatten"},
           {"op": "linear", "out": 3}"#,
        3,
    ));
    gradcheck(&strided, None);
    // No transformer, and a linear layer first (it reads the untraced input).
    let mlp = net(&json(
        r#"{"channels": 2, "height": 4, "width": 5}"#,
        "",
        r#"{"kind": "none"}"#,
        r#"{"op": "flatten"}, {"op": "linear", "out": 6}, {"op": "relu"}, {"op": "linear", "out": 3}"#,
        3,
    ));
    gradcheck(&mlp, None);
}

/// Images of `classes` classes a network can tell apart: class k lights up band k.
fn banded(n: usize, dims: [usize; 3], classes: usize) -> (Vec<f32>, Vec<u8>) {
    let [c, h, w] = dims;
    let mut images = vec![-1.0f32; n * c * h * w];
    let mut labels = Vec::with_capacity(n);
    let mut rnd = lcg(3);
    for i in 0..n {
        let k = i % classes;
        labels.push(k as u8);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let band = y * classes / h == k;
                    let v = if band { 1.5 } else { -1.0 } + 0.3 * rnd() as f32;
                    images[((i * c + ch) * h + y) * w + x] = v;
                }
            }
        }
    }
    (images, labels)
}

#[test]
fn a_non_seed_spec_trains_and_checkpoints_with_its_spec() {
    let n = net(&rgb_spec());
    let (images, labels) = banded(240, n.input_dims(), 4);
    let data = Batch {
        images: Pixels::Normalized(&images),
        labels: &labels,
        dims: n.input_dims(),
    };
    let params = Params::init(n.clone(), 1);
    let before = evaluate(&params, &data, 64).unwrap();
    let opt = Optimizer::new(OptimizerKind::Adam, 0.01, 1.0, &params);
    let opts = TrainOptions {
        batch: 16,
        seed: 1,
        clip: None,
    };
    let mut t = Trainer::new(params, opt, opts);
    for epoch in 1..=4 {
        t.train_epoch(&data, epoch, |_, _, _| {}).unwrap();
    }
    let after = evaluate(&t.params, &data, 64).unwrap();
    assert!(
        after.accuracy() > 0.9 && after.loss < before.loss,
        "{before:?} -> {after:?}"
    );
    let ck = Checkpoint {
        params: t.params.clone(),
        optimizer: t.optimizer.clone(),
        epoch: 4,
        run: serde_json::json!({}),
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rgb.safetensors");
    ck.save(&p).unwrap();
    let back = Checkpoint::load(&p).unwrap();
    assert_eq!(back, ck);
    assert_eq!(back.params.net.spec(), n.spec());
}

#[test]
fn byte_pixels_train_and_evaluate_as_their_normalised_floats() {
    // The trainer normalises byte images per batch (no float copy of the set); every value must be
    // the one `normalize_planes` gives, so training and evaluation are bit for bit the same —
    // three channels with their own mean and std, so a wrong channel's statistics would show.
    let n = net(&rgb_spec());
    let dims = n.input_dims();
    let (_, labels) = banded(48, dims, 4);
    let mut rnd = lcg(11);
    let bytes: Vec<u8> = (0..labels.len() * dims.iter().product::<usize>())
        .map(|_| ((rnd() + 1.0) * 127.9) as u8)
        .collect();
    let (mean, std) = ([0.5f32, 0.4, 0.3], [0.2f32, 0.25, 0.3]);
    let floats = stn_data::normalize_planes(&bytes, dims[1] * dims[2], &mean, &std);
    let run = |images: Pixels| {
        let data = Batch {
            images,
            labels: &labels,
            dims,
        };
        let params = Params::init(n.clone(), 2);
        let opt = Optimizer::new(OptimizerKind::Adam, 0.01, 1.0, &params);
        let opts = TrainOptions {
            batch: 16,
            seed: 2,
            clip: None,
        };
        let mut t = Trainer::new(params, opt, opts);
        t.train_epoch(&data, 1, |_, _, _| {}).unwrap();
        let ev = evaluate(&t.params, &data, 20).unwrap();
        (t.params, ev)
    };
    let (from_bytes, ev_bytes) = run(Pixels::Bytes {
        pixels: &bytes,
        mean: &mean,
        std: &std,
    });
    let (from_floats, ev_floats) = run(Pixels::Normalized(&floats));
    assert_eq!(from_bytes, from_floats);
    assert_eq!(ev_bytes, ev_floats);
    // And the statistics matter: other ones train to other parameters.
    let (shifted, _) = run(Pixels::Bytes {
        pixels: &bytes,
        mean: &[0.5, 0.4, 0.31],
        std: &std,
    });
    assert_ne!(shifted, from_floats);
}

#[test]
fn seed_training_is_pinned() {
    // Two steps of the seed with dropout on toy images: the sums of the parameters after them, bit
    // for bit. Pinned when the spec-built forward replaced the hand-written one, after checking
    // that `stn-train --epochs 1 --seed 1` (and the rts and no-STN Adam variants) gave the old
    // build's tensors bit for bit; a change here changes every seed run.
    let side = 28;
    let (images, labels) = banded(64, [1, side, side], 10);
    let data = Batch {
        images: Pixels::Normalized(&images),
        labels: &labels,
        dims: [1, side, side],
    };
    let params = Params::init(Arch::SEED, 1);
    let opt = Optimizer::new(OptimizerKind::Sgd, 0.01, 1.0, &params);
    let opts = TrainOptions {
        batch: 32,
        seed: 1,
        clip: None,
    };
    let mut t = Trainer::new(params, opt, opts);
    t.train_epoch(&data, 1, |_, _, _| {}).unwrap();
    let sums: Vec<u32> = t
        .params
        .data
        .iter()
        .map(|d| d.iter().map(|&v| v as f64).sum::<f64>() as f32)
        .map(f32::to_bits)
        .collect();
    // The portable ISA level rounds each multiply-add twice (no FMA to assume): one sum moves by
    // an ulp. The AVX2 and AVX-512 levels give the pinned sums (AVX-512's 16-lane weight-gradient
    // sums round a few weights differently, below these sums' float32 rounding).
    let pinned = if stn_ops::isa::level() == stn_ops::isa::Level::Scalar {
        PINNED_SUMS_PORTABLE
    } else {
        PINNED_SUMS
    };
    assert_eq!(sums, pinned, "{sums:?} at {}", stn_ops::isa::level());
}

const PINNED_SUMS_PORTABLE: [u32; 16] = [
    1051181173, 3202449738, 3215625002, 3188653571, 1082003962, 3196954135, 1079287514, 1046703901,
    1044309347, 1040433658, 1071234472, 1047308051, 1027450120, 1041581815, 1015068439, 1073764068,
];

const PINNED_SUMS: [u32; 16] = [
    1051181173, 3202449738, 3215625002, 3188653571, 1082003962, 3196954135, 1079287514, 1046703901,
    1044309347, 1040433658, 1071234472, 1047308051, 1027450120, 1041581815, 1015068440, 1073764068,
];

#[test]
fn the_readme_spec_is_a_valid_spec() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let start = readme.find("```toml\n").expect("a TOML spec in README.md") + 8;
    let end = start + readme[start..].find("```").unwrap();
    let spec = ModelSpec::parse(&readme[start..end]).unwrap();
    assert_eq!(spec.transform.output(), Some([24, 24]));
    let plan = spec.plan().unwrap();
    // The names README.md gives as examples.
    assert!(plan
        .params
        .iter()
        .any(|(n, _)| n == "localization.4.weight"));
    assert_eq!(plan.regressor.unwrap().0, "localization.6.weight");
    assert!(plan.params.iter().any(|(n, _)| n == "classifier.4.bias"));
}
