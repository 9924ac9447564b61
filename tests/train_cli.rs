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
