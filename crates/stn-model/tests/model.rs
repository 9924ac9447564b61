//! The model against PyTorch's own numbers, checkpoints, optimiser state and determinism.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use stn_model::{
    evaluate, predict, Arch, Batch, Checkpoint, Optimizer, OptimizerKind, Params, Pixels,
    TrainOptions, Trainer,
};

#[derive(Deserialize)]
struct T {
    shape: Vec<usize>,
    data: Vec<f64>,
}

#[derive(Deserialize)]
struct SeedNet {
    params: BTreeMap<String, T>,
    input: T,
    theta: T,
    warped: T,
    log_probs: T,
}

fn fixtures_dir() -> PathBuf {
    match std::env::var_os("STN_FIXTURES") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    }
}

fn seed_net() -> (SeedNet, Params) {
    let path = fixtures_dir().join("seed_net_torch.json");
    let f: SeedNet =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json");
    let named = f
        .params
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.shape.clone(),
                t.data.iter().map(|&v| v as f32).collect(),
            )
        })
        .collect();
    let params =
        Params::from_named(Arch::SEED, named).expect("the fixture's state_dict fits the seed arch");
    (f, params)
}

fn close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs PyTorch {w}"
        );
    }
}

#[test]
fn reproduces_pytorch_theta_warped_and_log_probs() {
    let (f, params) = seed_net();
    let images: Vec<f32> = f.input.data.iter().map(|&v| v as f32).collect();
    let n = f.input.shape[0];
    let labels = vec![0u8; n];
    let data = Batch {
        images: Pixels::Normalized(&images),
        labels: &labels,
        dims: [1, 28, 28],
    };
    let (lp, theta, warped) = predict(&params, &data, 0, n).unwrap();
    close("theta", &theta, &f.theta.data, 1e-5);
    close("warped", &warped, &f.warped.data, 1e-5);
    close("log_probs", &lp, &f.log_probs.data, 1e-5);
}

#[test]
fn state_dict_names_order_and_bad_shapes() {
    let shape = |arch: Arch, name: &str| -> Vec<usize> {
        let plan = stn_model::Network::from(arch).plan().clone();
        plan.params.into_iter().find(|(n, _)| n == name).unwrap().1
    };
    let plan = stn_model::Network::from(Arch::SEED).plan().clone();
    assert_eq!(plan.params[0].0, "conv1.weight");
    assert_eq!(plan.params.last().unwrap().0, "fc_loc.2.bias");
    assert_eq!(shape(Arch::SEED, "fc1.weight"), vec![50, 320]);
    assert_eq!(shape(Arch::SEED, "fc_loc.0.weight"), vec![32, 90]);
    let rts = |stn| Arch { canvas: 42, stn };
    assert_eq!(shape(rts(true), "fc_loc.0.weight"), vec![32, 490]);
    assert_eq!(shape(rts(false), "fc1.weight"), vec![50, 980]);
    let (f, _) = seed_net();
    let mut named: Vec<(String, Vec<usize>, Vec<f32>)> = f
        .params
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.shape.clone(),
                t.data.iter().map(|&v| v as f32).collect(),
            )
        })
        .collect();
    let e = Params::from_named(
        Arch {
            canvas: 42,
            stn: true,
        },
        named.clone(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("fc_loc.0.weight") && e.contains("490"), "{e}");
    named.retain(|(n, _, _)| n != "fc2.bias");
    let e = Params::from_named(Arch::SEED, named)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fc2.bias") && e.contains("missing"), "{e}");
}

#[test]
fn init_is_pytorch_like_and_identity_transform() {
    let p = Params::init(Arch::SEED, 1);
    assert_eq!(
        p.get("fc_loc.2.bias").unwrap(),
        &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    );
    assert!(p.get("fc_loc.2.weight").unwrap().iter().all(|&v| v == 0.0));
    // conv1: fan_in 25, bound 0.2.
    let w = p.get("conv1.weight").unwrap();
    assert!(w.iter().all(|v| v.abs() < 0.2) && w.iter().any(|v| v.abs() > 0.15));
    assert_eq!(p, Params::init(Arch::SEED, 1));
    assert_ne!(p, Params::init(Arch::SEED, 2));
    // The tutorial's Net has 27,360 parameters.
    assert_eq!(p.count(), 27_360);
}

/// Synthetic "MNIST": a bright bar whose position is the label, plus noise; learnable in a few steps.
fn toy(n: usize, side: usize) -> (Vec<f32>, Vec<u8>) {
    let mut images = vec![-0.42f32; n * side * side];
    let labels: Vec<u8> = (0..n).map(|i| (i * 7 % 10) as u8).collect();
    for (i, &l) in labels.iter().enumerate() {
        let row = 4 + 2 * l as usize;
        for x in 6..side - 6 {
            images[i * side * side + row * side + x] = 2.8;
        }
    }
    (images, labels)
}

fn trained(kind: OptimizerKind, lr: f32, epochs: u64) -> Trainer {
    let (images, labels) = toy(256, 28);
    let data = Batch {
        images: Pixels::Normalized(&images),
        labels: &labels,
        dims: [1, 28, 28],
    };
    let params = Params::init(Arch::SEED, 3);
    let opt = Optimizer::new(kind, lr, 1.0, &params);
    let mut t = Trainer::new(
        params,
        opt,
        TrainOptions {
            batch: 64,
            seed: 3,
            clip: None,
        },
    );
    for e in 1..=epochs {
        t.train_epoch(&data, e, |_, _, _| {}).unwrap();
    }
    t
}

#[test]
fn training_learns_and_is_deterministic() {
    let (images, labels) = toy(256, 28);
    let data = Batch {
        images: Pixels::Normalized(&images),
        labels: &labels,
        dims: [1, 28, 28],
    };
    let before = evaluate(&Params::init(Arch::SEED, 3), &data, 100).unwrap();
    let t = trained(OptimizerKind::Adam, 0.003, 4);
    let after = evaluate(&t.params, &data, 100).unwrap();
    assert!(
        after.loss < before.loss * 0.5,
        "loss {} -> {}",
        before.loss,
        after.loss
    );
    assert!(after.accuracy() > 0.9, "accuracy {}", after.accuracy());
    // Same seed, same everything: bit-identical parameters.
    assert_eq!(t.params, trained(OptimizerKind::Adam, 0.003, 4).params);
}

#[test]
fn checkpoint_round_trip_and_resume_is_bit_identical() {
    let (images, labels) = toy(192, 28);
    let data = Batch {
        images: Pixels::Normalized(&images),
        labels: &labels,
        dims: [1, 28, 28],
    };
    let opts = TrainOptions {
        batch: 64,
        seed: 5,
        clip: Some(10.0),
    };
    let params = Params::init(Arch::SEED, 5);
    let mut straight = Trainer::new(
        params.clone(),
        Optimizer::new(OptimizerKind::Momentum, 0.01, 0.5, &params),
        opts,
    );
    straight.train_epoch(&data, 1, |_, _, _| {}).unwrap();
    straight.train_epoch(&data, 2, |_, _, _| {}).unwrap();

    let mut first = Trainer::new(
        params.clone(),
        Optimizer::new(OptimizerKind::Momentum, 0.01, 0.5, &params),
        opts,
    );
    first.train_epoch(&data, 1, |_, _, _| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.safetensors");
    let ck = Checkpoint {
        params: first.params.clone(),
        optimizer: first.optimizer.clone(),
        epoch: 1,
        run: serde_json::json!({"seed": 5}),
    };
    ck.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(back, ck);
    let mut resumed = Trainer::new(back.params, back.optimizer, opts);
    resumed.train_epoch(&data, 2, |_, _, _| {}).unwrap();
    assert_eq!(resumed.params, straight.params);
    assert_eq!(resumed.optimizer, straight.optimizer);
}

#[test]
fn corrupt_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    std::fs::write(&path, b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage").unwrap();
    let e = Checkpoint::load(&path).unwrap_err().to_string();
    assert!(e.contains("bad.safetensors"), "{e}");
    let p = Params::init(Arch::SEED, 1);
    let ck = Checkpoint {
        optimizer: Optimizer::new(OptimizerKind::Adam, 0.1, 1.0, &p),
        params: p,
        epoch: 3,
        run: serde_json::json!({}),
    };
    let bytes = ck.to_bytes().unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(Checkpoint::load(&path)
        .unwrap_err()
        .to_string()
        .contains("bad.safetensors"));
    assert!(Checkpoint::load(&dir.path().join("missing"))
        .unwrap_err()
        .to_string()
        .contains("missing"));
}

#[test]
fn fused_inference_reproduces_pytorch() {
    let (f, params) = seed_net();
    let images: Vec<f32> = f.input.data.iter().map(|&v| v as f32).collect();
    let n = f.input.shape[0];
    let out = stn_model::FusedNet::<f32>::new(&params)
        .unwrap()
        .forward(&images, n);
    close("theta", &out.theta, &f.theta.data, 1e-5);
    close("warped", &out.warped, &f.warped.data, 1e-5);
    close("log_probs", &out.log_probs, &f.log_probs.data, 1e-5);
    // Without the sampled images kept: the same answers, no warped buffer.
    let lean = stn_model::FusedNet::<f32>::new(&params)
        .unwrap()
        .forward_with(&images, n, false);
    assert_eq!(lean.log_probs, out.log_probs);
    assert_eq!(lean.theta, out.theta);
    assert!(lean.warped.is_empty());
    // One image runs on the calling thread, not through rayon: the same bits as its batch row.
    let net = stn_model::FusedNet::<f32>::new(&params).unwrap();
    let (len, classes) = (images.len() / n, out.log_probs.len() / n);
    let (per_theta, per_warped) = (out.theta.len() / n, out.warped.len() / n);
    for i in 0..n {
        for keep in [true, false] {
            let one = net.forward_with(&images[i * len..(i + 1) * len], 1, keep);
            assert_eq!(one.log_probs, out.log_probs[i * classes..(i + 1) * classes]);
            assert_eq!(one.theta, out.theta[i * per_theta..(i + 1) * per_theta]);
            let warped = &out.warped[i * per_warped..(i + 1) * per_warped];
            assert_eq!(one.warped, if keep { warped } else { &[] });
        }
    }
}

/// The dfdx forward (eval mode) in `E` on the CPU: log-probs, theta, warped.
fn dfdx_forward<E: stn_ops::Real>(params: &Params, images: &[f32], n: usize) -> [Vec<f64>; 3]
where
    dfdx::tensor::Cpu: stn_ops::OpDevice<E>,
{
    use dfdx::prelude::*;
    let dev = Cpu::default();
    let cast = |v: &[f32]| -> Vec<E> { v.iter().map(|&x| E::of(x as f64)).collect() };
    let ps: Vec<Tensor<(usize,), E, Cpu>> = params
        .data
        .iter()
        .map(|d| dev.tensor_from_vec(cast(d), (d.len(),)))
        .collect();
    let [c, h, w] = params.net.input_dims();
    let x = dev.tensor_from_vec(cast(images), (n, c, h, w));
    let out = stn_model::forward(params.net.plan(), ps, x, None).unwrap();
    let f = |v: Vec<E>| v.into_iter().map(|x| x.to_f64().unwrap()).collect();
    [
        f(out.log_probs.as_vec()),
        out.theta.map(|t| f(t.as_vec())).unwrap_or_default(),
        out.warped.map(|t| f(t.as_vec())).unwrap_or_default(),
    ]
}

#[test]
fn fused_inference_matches_the_dfdx_forward_on_every_architecture() {
    for arch in [
        Arch::SEED,
        Arch {
            canvas: 28,
            stn: false,
        },
        Arch {
            canvas: 42,
            stn: true,
        },
        Arch {
            canvas: 42,
            stn: false,
        },
    ] {
        let mut params = Params::init(arch, 7);
        // A transform far from the identity, so that samples fall outside the image too.
        if let Some(i) = params.names.iter().position(|n| n == "fc_loc.2.weight") {
            for (j, w) in params.data[i].iter_mut().enumerate() {
                *w = 0.3 * ((j as f32) * 1.7).sin();
            }
        }
        let n = 9;
        let s = arch.canvas;
        let images: Vec<f32> = (0..n * s * s)
            .map(|i| ((i as f32 * 0.37).sin() * 3.0).max(-0.4))
            .collect();
        // f64: the same arithmetic up to summation order.
        let want = dfdx_forward::<f64>(&params, &images, n);
        let got = stn_model::FusedNet::<f64>::new(&params)
            .unwrap()
            .forward(&images, n);
        for (what, g, w) in [
            ("log_probs", &got.log_probs, &want[0]),
            ("theta", &got.theta, &want[1]),
            ("warped", &got.warped, &want[2]),
        ] {
            assert_eq!(g.len(), w.len(), "{arch} {what}");
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
                    "{arch} f64 {what}[{i}]: {g} vs {w}"
                );
            }
        }
        // f32: at the float32 noise floor.
        let want = dfdx_forward::<f32>(&params, &images, n);
        let got = stn_model::FusedNet::<f32>::new(&params)
            .unwrap()
            .forward(&images, n);
        for (i, (&g, w)) in got.log_probs.iter().zip(&want[0]).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{arch} f32 log_probs[{i}]: {g} vs {w}"
            );
        }
        assert!(want[1].len() == got.theta.len() && want[2].len() == got.warped.len());
    }
}
