//! stn-train end to end on a small slice of the real MNIST: resume is bit-identical, bad options
//! and divergence are clear errors that leave no half-written checkpoint.

mod common;

use std::path::Path;

use stn_model::Checkpoint;

fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    let data = common::mnist_dir();
    let mut args = vec![
        "--data",
        data.to_str().unwrap(),
        "--offline",
        "--limit",
        "320",
        "--threads",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    common::run("stn-train", &args)
}

fn ok(o: &std::process::Output) {
    assert!(
        o.status.success(),
        "stn-train failed:\n{}",
        common::stderr(o)
    );
}

#[test]
fn two_epochs_equal_one_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    for opt in ["sgd", "adam"] {
        ok(&train(
            &a,
            &["--epochs", "2", "--optimizer", opt, "--force"],
        ));
        ok(&train(
            &b,
            &["--epochs", "1", "--optimizer", opt, "--force"],
        ));
        ok(&train(&b, &["--epochs", "2", "--resume"]));
        let (ca, cb) = (Checkpoint::load(&a).unwrap(), Checkpoint::load(&b).unwrap());
        assert_eq!(ca.epoch, 2);
        assert_eq!(
            ca.params, cb.params,
            "{opt}: parameters differ after resume"
        );
        assert_eq!(
            ca.optimizer, cb.optimizer,
            "{opt}: optimizer state differs after resume"
        );
    }
}

#[test]
fn fresh_distortions_change_every_epoch_and_resume_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let rts = ["--distort", "rts", "--optimizer", "adam"];
    fn with<'a>(rts: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [rts, extra].concat()
    }
    ok(&train(
        &p("a"),
        &with(&rts, &["--epochs", "2", "--fresh-distortions"]),
    ));
    ok(&train(
        &p("b"),
        &with(&rts, &["--epochs", "1", "--fresh-distortions"]),
    ));
    ok(&train(
        &p("b"),
        &with(&rts, &["--epochs", "2", "--resume", "--fresh-distortions"]),
    ));
    ok(&train(&p("c"), &with(&rts, &["--epochs", "2"])));
    let load = |name: &str| Checkpoint::load(&p(name)).unwrap();
    let (a, b, c) = (load("a"), load("b"), load("c"));
    assert_eq!(a.params, b.params, "resume differs with fresh distortions");
    // Epoch 1 is the same data either way; epoch 2's fresh distortions are new data.
    assert_ne!(
        a.params, c.params,
        "epoch 2 trained on the same distortions"
    );
    assert_eq!(a.run["fresh_distortions"], true);
    let o = train(&p("d"), &["--epochs", "1", "--fresh-distortions"]);
    assert!(
        !o.status.success() && common::stderr(&o).contains("--fresh-distortions needs --distort"),
        "{}",
        common::stderr(&o)
    );
}

#[test]
fn prints_the_seed_lines_and_json_last() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let metrics = dir.path().join("m.jsonl");
    let o = train(
        &out,
        &[
            "--epochs",
            "1",
            "--json",
            "--metrics",
            metrics.to_str().unwrap(),
        ],
    );
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("Train Epoch: 1 [0/320] Loss: ")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("Test set: Average loss: ") && l.contains("/10000 (")),
        "{stdout}"
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for k in [
        "epochs",
        "train_images",
        "train_img_per_s",
        "test_loss",
        "test_accuracy",
        "peak_rss_mb",
    ] {
        assert!(!last[k].is_null(), "missing {k} in {last}");
    }
    assert!(last["test_accuracy"].as_f64().unwrap() > 0.1);
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(m.lines().count(), 1);
}

#[test]
fn bad_options_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let cases: [(&[&str], &str); 4] = [
        (&["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
        (&["--distort", "swirl"], "unknown distortion 'swirl'"),
        (&["--resume"], "--resume: no checkpoint"),
        (&["--device", "cuda"], "--device cuda"),
    ];
    for (args, want) in cases {
        let o = train(&out, args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = common::stderr(&o);
        assert!(
            err.contains(want) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    assert!(!out.exists(), "a failed run wrote {}", out.display());
    // An --out whose directory is a file.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let o = train(&blocker.join("sub/x.safetensors"), &["--epochs", "1"]);
    assert!(
        !o.status.success() && common::stderr(&o).contains("--out"),
        "{}",
        common::stderr(&o)
    );
    // A checkpoint of another architecture.
    ok(&train(&out, &["--epochs", "1"]));
    let o = train(&out, &["--epochs", "2", "--resume", "--distort", "rts"]);
    assert!(
        !o.status.success() && common::stderr(&o).contains("another network"),
        "{}",
        common::stderr(&o)
    );
}

#[test]
fn divergence_stops_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d.safetensors");
    ok(&train(&out, &["--epochs", "1"]));
    let good = std::fs::read(&out).unwrap();
    let o = train(&out, &["--epochs", "1", "--lr", "10000", "--force"]);
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(
        err.contains("diverged") || err.contains("collapsed"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        good,
        "the last good checkpoint was replaced"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "d.safetensors")
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

/// A model spec of the user's own: a wider localisation net and classifier than the seed's, named
/// as `nn.Sequential`s, and no normalisation (computed from the training images).
const OWN_SPEC: &str = r#"
classes = 10

[input]
channels = 1
height = 28
width = 28

[[localization]]
op = "conv2d"
out = 12
kernel = 5
[[localization]]
op = "max_pool2d"
kernel = 2
[[localization]]
op = "relu"
[[localization]]
op = "flatten"
[[localization]]
op = "linear"
out = 16
[[localization]]
op = "relu"

[transform]
kind = "affine"
output = [24, 24]
padding = "border"

[[classifier]]
op = "conv2d"
out = 16
kernel = 5
[[classifier]]
op = "max_pool2d"
kernel = 2
[[classifier]]
op = "relu"
[[classifier]]
op = "flatten"
[[classifier]]
op = "linear"
out = 10
"#;

#[test]
fn a_spec_file_trains_and_travels_with_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("own.toml");
    std::fs::write(&spec, OWN_SPEC).unwrap();
    let out = dir.path().join("own.safetensors");
    let o = train(
        &out,
        &[
            "--epochs",
            "1",
            "--spec",
            spec.to_str().unwrap(),
            "--optimizer",
            "adam",
            "--lr",
            "0.002",
        ],
    );
    ok(&o);
    let err = common::stderr(&o);
    assert!(
        err.contains("normalisation from the training images"),
        "{err}"
    );
    let ck = Checkpoint::load(&out).unwrap();
    let s = ck.params.net.spec();
    assert_eq!(s.transform.output(), Some([24, 24]));
    let (mean, std) = s.normalization().expect("stored with the spec");
    assert!(
        (mean[0] - 0.13).abs() < 0.01 && (std[0] - 0.31).abs() < 0.01,
        "{mean:?} {std:?}"
    );
    assert!(ck.params.get("localization.4.weight").is_some());
    assert!(ck.params.get("classifier.4.weight").is_some());
    // It learnt something in one epoch of 320 images (chance is 10%).
    let acc = ck.run["history"][0]["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.3, "test accuracy {acc}");
    // Resuming takes the spec from the checkpoint; another spec is refused.
    ok(&train(&out, &["--epochs", "2", "--resume"]));
    assert_eq!(Checkpoint::load(&out).unwrap().epoch, 2);
    // The same spec file again is the same network: its normalisation is the one computed then.
    ok(&train(
        &out,
        &[
            "--epochs",
            "3",
            "--resume",
            "--spec",
            spec.to_str().unwrap(),
        ],
    ));
    assert_eq!(Checkpoint::load(&out).unwrap().epoch, 3);
    let o = train(&out, &["--epochs", "4", "--resume", "--spec", "seed"]);
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(
        e.contains("another network") && e.contains("--spec seed"),
        "{e}"
    );
    // Exported with its spec, it runs on every runtime with the same answers on the MNIST test set.
    let onnx = dir.path().join("own.onnx");
    let o = common::run(
        "stn-export",
        &[
            onnx.to_str().unwrap(),
            "--checkpoint",
            out.to_str().unwrap(),
            "--opset",
            "20",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let data = common::mnist_dir();
    let o = common::run(
        "stn-infer",
        &[
            "--model",
            onnx.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--offline",
            "--compare",
            "tract,ort,dfdx,fused",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let pairs = report["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 6);
    for p in pairs {
        assert_eq!(p["allclose"], true, "{p}");
    }
}

#[test]
fn bad_specs_are_clear_errors_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let spec = dir.path().join("bad.toml");
    // A 29×29 kernel on the classifier's 24×24 sample.
    std::fs::write(
        &spec,
        OWN_SPEC.replace("out = 16\nkernel = 5", "out = 16\nkernel = 29"),
    )
    .unwrap();
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec!["--spec".into(), spec.display().to_string()],
            vec![
                "bad.toml",
                "classifier layer 0 (conv2d out 16 kernel 29",
                "larger than its 1×24×24 input",
            ],
        ),
        (
            vec!["--spec".into(), "lenet".into()],
            vec!["--spec lenet", "neither a preset", "seed-no-stn"],
        ),
        (
            vec!["--spec".into(), "rts".into()],
            vec!["takes 1×42×42 images", "the data is 1×28×28"],
        ),
        (
            vec!["--spec".into(), "seed".into(), "--no-stn".into()],
            vec!["--no-stn", "cannot be used with"],
        ),
    ];
    for (extra, want) in cases {
        let mut args: Vec<&str> = vec!["--epochs", "1"];
        args.extend(extra.iter().map(|s| s.as_str()));
        let o = train(&out, &args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let e = common::stderr(&o);
        for w in want {
            assert!(e.contains(w), "{args:?}: {e}\n does not say {w:?}");
        }
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    // --print-spec gives a file that trains as the preset.
    let o = common::run("stn-train", &["--print-spec", "seed"]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    let printed = stn_model::ModelSpec::parse(&text).unwrap();
    assert_eq!(printed, stn_model::ModelSpec::preset("seed").unwrap());
}
