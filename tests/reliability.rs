//! Nothing a user types loses their work: each case of the reliability issue, as the user met it
//! — outputs over inputs, unchecked options, --resume disagreeing with its checkpoint, graphs the
//! runners do not implement, unbounded threads and inputs, images with alpha, wrapped sizes, temp
//! files after kill -9 — each asserting the clear error and that nothing was written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stn_model::Checkpoint;
use stn_onnx::proto::{attribute_proto::AttributeType, AttributeProto, ModelProto};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn exe(bin: &str) -> &'static str {
    match bin {
        "stn-train" => env!("CARGO_BIN_EXE_stn-train"),
        "stn-export" => env!("CARGO_BIN_EXE_stn-export"),
        _ => env!("CARGO_BIN_EXE_stn-infer"),
    }
}

/// A copy of the default checkpoint in `dir`.
fn checkpoint_copy(dir: &Path) -> PathBuf {
    let p = dir.join("ck.safetensors");
    std::fs::copy(repo().join("models/stn.safetensors"), &p).unwrap();
    p
}

fn data() -> String {
    common::mnist_dir().display().to_string()
}

/// Fails with a message holding every one of `want`, no panic.
fn fails_with(o: &std::process::Output, want: &[&str]) -> String {
    let err = common::stderr(o);
    assert!(!o.status.success(), "succeeded; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for w in want {
        assert!(err.contains(w), "missing {w:?} in: {err}");
    }
    err
}

fn train_args<'a>(out: &'a str, data: &'a str) -> Vec<&'a str> {
    vec![
        "--data",
        data,
        "--offline",
        "--limit",
        "64",
        "--threads",
        "2",
        "--out",
        out,
    ]
}

#[test]
fn stn_export_never_writes_over_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ck = checkpoint_copy(dir.path());
    let before = std::fs::read(&ck).unwrap();
    let spelled = dir.path().join(".").join("ck.safetensors");
    for out in [&ck, &spelled] {
        let o = common::run(
            "stn-export",
            &[out.to_str().unwrap(), "--checkpoint", ck.to_str().unwrap()],
        );
        fails_with(&o, &["same file as --checkpoint", "refusing"]);
    }
    assert_eq!(std::fs::read(&ck).unwrap(), before);
}

#[test]
fn stn_train_refuses_an_existing_out_without_resume_or_force() {
    let dir = tempfile::tempdir().unwrap();
    let ck = checkpoint_copy(dir.path());
    let before = std::fs::read(&ck).unwrap();
    let (out, d) = (ck.to_str().unwrap().to_string(), data());
    let mut args = train_args(&out, &d);
    args.extend(["--epochs", "1"]);
    let o = common::run("stn-train", &args);
    fails_with(&o, &["already exists", "--resume", "--force"]);
    assert_eq!(
        std::fs::read(&ck).unwrap(),
        before,
        "the checkpoint was replaced"
    );
    args.push("--force");
    let o = common::run("stn-train", &args);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_ne!(std::fs::read(&ck).unwrap(), before);
}

#[test]
fn numeric_options_are_checked_with_their_range() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let (out_s, d) = (out.to_str().unwrap().to_string(), data());
    let cases: &[(&[&str], &str)] = &[
        (&["--loc-lr-scale", "nan"], "--loc-lr-scale"),
        (&["--loc-lr-scale", "inf"], "--loc-lr-scale"),
        (&["--loc-lr-scale", "-1"], "[0, 100]"),
        (&["--clip", "nan"], "--clip"),
        (&["--clip", "-1"], "--clip"),
        (&["--lr", "0"], "(0, 10000]"),
        (&["--lr", "NaN"], "--lr"),
        (&["--batch", "0"], "1 to 60000"),
        (&["--clutter", "1000"], "--clutter"),
        (&["--epochs", "18446744073709551615"], "--epochs"),
    ];
    for (extra, want) in cases {
        let mut args = train_args(&out_s, &d);
        args.extend(["--epochs", "1"]);
        args.extend_from_slice(extra);
        let o = common::run("stn-train", &args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{extra:?}: {}",
            common::stderr(&o)
        );
        fails_with(&o, &[want]);
    }
    let o = common::run("stn-infer", &["--batch", "0"]);
    fails_with(&o, &["1 to 100000"]);
    let o = common::run("stn-infer", &["--warmup", "1001"]);
    fails_with(&o, &["--warmup", "0 to 1000"]);
    let o = common::run("stn-export", &["x.onnx", "--opset", "17"]);
    assert_eq!(o.status.code(), Some(2));
    fails_with(&o, &["expected 16 or 20"]);
    assert!(!out.exists());
}

#[test]
fn resume_takes_the_recipe_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let d = data();
    let (a_s, b_s) = (
        a.to_str().unwrap().to_string(),
        b.to_str().unwrap().to_string(),
    );
    let run = |out: &str, extra: &[&str]| {
        let mut args = train_args(out, &d);
        args.extend_from_slice(extra);
        common::run("stn-train", &args)
    };
    let recipe = [
        "--batch",
        "32",
        "--seed",
        "5",
        "--optimizer",
        "adam",
        "--lr",
        "0.002",
    ];
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", common::stderr(&o));
        common::stderr(&o)
    };
    ok(run(&a_s, &[&recipe[..], &["--epochs", "2"]].concat()));
    ok(run(&b_s, &[&recipe[..], &["--epochs", "1"]].concat()));
    // Resumed with no recipe options: the checkpoint's batch, seed, optimiser and lr.
    ok(run(&b_s, &["--epochs", "2", "--resume"]));
    let (ca, cb) = (Checkpoint::load(&a).unwrap(), Checkpoint::load(&b).unwrap());
    assert_eq!(
        ca.params, cb.params,
        "resume without options is not bit-identical"
    );
    // A contradicting option is an error naming it; --override-recipe allows it with a warning.
    let before = std::fs::read(&b).unwrap();
    for (opt, val) in [("--lr", "0.5"), ("--batch", "64"), ("--optimizer", "sgd")] {
        let o = run(&b_s, &["--epochs", "3", "--resume", opt, val]);
        fails_with(&o, &[opt, "--override-recipe"]);
    }
    assert_eq!(std::fs::read(&b).unwrap(), before);
    let o = run(
        &b_s,
        &[
            "--epochs",
            "3",
            "--resume",
            "--lr",
            "0.001",
            "--override-recipe",
        ],
    );
    let err = ok(o);
    assert!(err.contains("no longer bit-identical"), "{err}");
    let o = run(
        &b_s,
        &[
            "--epochs",
            "4",
            "--resume",
            "--distort",
            "rts",
            "--override-recipe",
        ],
    );
    fails_with(&o, &["another network"]);
    // Nothing left to train: no "wrote".
    let err = ok(run(&b_s, &["--epochs", "3", "--resume"]));
    assert!(!err.contains("wrote"), "{err}");
}

#[test]
fn outputs_are_never_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::copy(repo().join("models/stn.onnx"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let m = model.to_str().unwrap();
    let d = data();
    let o = common::run(
        "stn-infer",
        &["--model", m, "--data", &d, "--save-logprobs", m],
    );
    fails_with(&o, &["--save-logprobs", "same file as --model"]);
    let o = common::run("stn-infer", &["--model", m, "--data", &d, "--visualize", m]);
    fails_with(&o, &["--visualize", "same file as --model"]);
    assert_eq!(std::fs::read(&model).unwrap(), before);

    let ck = checkpoint_copy(dir.path());
    let ckb = std::fs::read(&ck).unwrap();
    let c = ck.to_str().unwrap().to_string();
    let mut args = train_args(&c, &d);
    args.extend(["--epochs", "30", "--resume", "--metrics", &c]);
    fails_with(
        &common::run("stn-train", &args),
        &["--metrics", "same file as --out"],
    );
    let args = [
        "--data",
        &d,
        "--offline",
        "--epochs",
        "1",
        "--force",
        "--init-from",
        m,
        "--out",
        m,
    ];
    fails_with(
        &common::run("stn-train", &args),
        &["same file as --init-from"],
    );
    let png = dir.path().join("a.png");
    let p = png.to_str().unwrap();
    let mut args = train_args(&c, &d);
    args.extend([
        "--epochs",
        "30",
        "--resume",
        "--visualize",
        p,
        "--contact-sheet",
        p,
    ]);
    fails_with(&common::run("stn-train", &args), &["is also --visualize"]);
    assert_eq!(std::fs::read(&ck).unwrap(), ckb);
    assert_eq!(std::fs::read(&model).unwrap(), before);
}

/// The default model's graph, changed by `edit`.
fn edited(edit: impl FnOnce(&mut ModelProto)) -> Vec<u8> {
    use prost::Message;
    let mut m =
        ModelProto::decode(&std::fs::read(repo().join("models/stn.onnx")).unwrap()[..]).unwrap();
    edit(&mut m);
    m.encode_to_vec()
}

/// The first node of `op` in the model's graph.
fn first<'a>(m: &'a mut ModelProto, op: &str) -> &'a mut stn_onnx::proto::NodeProto {
    m.graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.op_type.as_deref() == Some(op))
        .unwrap()
}

/// Links the real MNIST files `files` into `dir`, as they are (gzipped or raw).
fn link_mnist(dir: &Path, files: &[stn_data::MnistFile]) {
    let src = common::mnist_dir();
    for f in files {
        let from = [format!("{}.gz", f.stem), f.stem.to_string()]
            .into_iter()
            .map(|n| src.join(n))
            .find(|p| p.exists())
            .unwrap();
        std::os::unix::fs::symlink(&from, dir.join(from.file_name().unwrap())).unwrap();
    }
}

#[test]
fn every_runtime_refuses_a_graph_that_is_not_the_seed_network() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a removed Relu",
            edited(|m| {
                let g = m.graph.as_mut().unwrap();
                let i = g
                    .node
                    .iter()
                    .position(|n| n.op_type.as_deref() == Some("Relu"))
                    .unwrap();
                let (inp, out) = (g.node[i].input[0].clone(), g.node[i].output[0].clone());
                g.node.remove(i);
                for n in &mut g.node {
                    for x in &mut n.input {
                        if *x == out {
                            *x = inp.clone();
                        }
                    }
                }
            }),
            "not computed as the seed network",
        ),
        (
            "another stride",
            edited(|m| {
                let pool = first(m, "MaxPool");
                for a in &mut pool.attribute {
                    if a.name.as_deref() == Some("strides") {
                        a.ints = vec![1, 1];
                    }
                }
            }),
            "strides",
        ),
        (
            "an unknown op",
            edited(|m| {
                let n = first(m, "Relu");
                n.op_type = Some("Elu".into());
            }),
            "\"Elu\"",
        ),
        (
            "a cycle",
            edited(|m| {
                let g = m.graph.as_mut().unwrap();
                let last = g.node.last().unwrap().output[0].clone();
                g.node[0].input[0] = last;
            }),
            "never computed",
        ),
        (
            "bicubic sampling",
            edited(|m| {
                let n = first(m, "GridSample");
                n.attribute.retain(|a| a.name.as_deref() != Some("mode"));
                n.attribute.push(AttributeProto {
                    name: Some("mode".into()),
                    r#type: Some(AttributeType::String as i32),
                    s: Some(b"bicubic".to_vec()),
                    ..Default::default()
                });
            }),
            "mode",
        ),
        (
            "the classifier without its STN but with the STN's weights",
            edited(|m| {
                let g = m.graph.as_mut().unwrap();
                let warped = g
                    .node
                    .iter()
                    .find(|n| n.op_type.as_deref() == Some("GridSample"))
                    .unwrap()
                    .output[0]
                    .clone();
                for n in &mut g.node {
                    for x in &mut n.input {
                        if *x == warped {
                            *x = "input".into();
                        }
                    }
                }
            }),
            "seed network",
        ),
    ];
    let lib = stn_runtime::find_ort_library(None, stn_runtime::Device::Cpu).unwrap();
    for (what, bytes, want) in cases {
        let errors: Vec<String> = vec![
            stn_runtime::TractRunner::load(&bytes, "x.onnx")
                .err()
                .map(|e| e.to_string()),
            stn_runtime::OrtRunner::load(&bytes, "x.onnx", &lib, stn_runtime::Device::Cpu, 1)
                .err()
                .map(|e| e.to_string()),
            stn_runtime::DfdxRunner::load(&bytes, "x.onnx", false)
                .err()
                .map(|e| e.to_string()),
            stn_runtime::FusedRunner::load(&bytes, "x.onnx")
                .err()
                .map(|e| e.to_string()),
        ]
        .into_iter()
        .map(|e| e.unwrap_or_else(|| panic!("{what}: a runtime accepted it")))
        .collect();
        for e in &errors {
            assert!(e.contains(want) && e.contains("x.onnx"), "{what}: {e}");
        }
    }
}

#[test]
fn threads_are_clamped_to_the_cpus() {
    let t0 = Instant::now();
    let d = data();
    let o = common::run(
        "stn-infer",
        &[
            "--runtime",
            "fused",
            "--threads",
            "1000000",
            "--data",
            &d,
            "--offline",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("--threads 1000000: this machine has"));
    assert!(t0.elapsed() < Duration::from_secs(60));
}

/// The first MNIST test digit (a 7), as RGBA: black ink whose opacity is the digit's brightness on
/// a transparent background, and as an opaque grey picture of the same ink on white.
fn digit_pictures(dir: &Path) -> (PathBuf, PathBuf) {
    let test = stn_data::Mnist::load_test(
        &stn_data::DataDir::resolve(Some(&common::mnist_dir())),
        true,
    )
    .unwrap();
    assert_eq!(test.labels[0], 7);
    let px = test.image(0);
    let rgba = image::RgbaImage::from_fn(28, 28, |x, y| {
        image::Rgba([0, 0, 0, px[(y * 28 + x) as usize]])
    });
    let grey = image::GrayImage::from_fn(28, 28, |x, y| {
        image::Luma([255 - px[(y * 28 + x) as usize]])
    });
    let (a, b) = (dir.join("alpha.png"), dir.join("paper.png"));
    rgba.save(&a).unwrap();
    grey.save(&b).unwrap();
    (a, b)
}

#[test]
fn images_alpha_blank_format_by_content_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (alpha, paper) = digit_pictures(dir.path());
    let o = common::run(
        "stn-infer",
        &[
            "--images",
            alpha.to_str().unwrap(),
            paper.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let preds = j["predictions"].as_array().unwrap();
    assert_eq!(preds[0]["digit"], 7, "{out}");
    assert_eq!(preds[1]["digit"], 7, "{out}");
    // A PNG named .jpg is read as the PNG it is.
    let named = dir.path().join("digit.jpg");
    std::fs::copy(&paper, &named).unwrap();
    let o = common::run("stn-infer", &["--images", named.to_str().unwrap()]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(": 7 "));
    // A blank image is classified with a warning.
    let blank = dir.path().join("blank.png");
    image::GrayImage::from_pixel(40, 40, image::Luma([255]))
        .save(&blank)
        .unwrap();
    let o = common::run("stn-infer", &["--images", blank.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(
        common::stderr(&o).contains("no digit found"),
        "{}",
        common::stderr(&o)
    );
    // A truncated JPEG is an error naming it.
    let jpeg = dir.path().join("d.jpeg");
    let img = image::GrayImage::from_fn(64, 64, |x, y| image::Luma([((x * y) % 255) as u8]));
    img.save(&jpeg).unwrap();
    let bytes = std::fs::read(&jpeg).unwrap();
    std::fs::write(&jpeg, &bytes[..bytes.len() / 2]).unwrap();
    let o = common::run("stn-infer", &["--images", jpeg.to_str().unwrap()]);
    fails_with(&o, &["d.jpeg", "truncated JPEG"]);
    // A 1×9,000,000 strip is refused by its size, not wrapped.
    let strip = dir.path().join("strip.png");
    image::GrayImage::from_pixel(1, 9_000_000, image::Luma([0]))
        .save(&strip)
        .unwrap();
    let o = common::run("stn-infer", &["--images", strip.to_str().unwrap()]);
    fails_with(&o, &["strip.png"]);
}

#[test]
fn inputs_are_bounded_and_regular() {
    let t0 = Instant::now();
    let o = common::run("stn-infer", &["--model", "/dev/zero"]);
    fails_with(&o, &["/dev/zero", "not a regular file"]);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.onnx");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let o = common::run("stn-infer", &["--model", fifo.to_str().unwrap()]);
    fails_with(&o, &["fifo.onnx", "not a regular file"]);
    let out = dir.path().join("o.safetensors");
    let d = data();
    let o = common::run(
        "stn-train",
        &[
            "--data",
            &d,
            "--offline",
            "--init-from",
            fifo.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    fails_with(&o, &["--init-from", "fifo.onnx", "not a regular file"]);
    assert!(t0.elapsed() < Duration::from_secs(20));

    // A gzip that inflates far past its header: stopped at the published size.
    use std::io::Write;
    let bomb = dir.path().join("mnist");
    std::fs::create_dir(&bomb).unwrap();
    link_mnist(&bomb, &stn_data::MNIST_FILES);
    let target = bomb.join("t10k-images-idx3-ubyte.gz");
    std::fs::remove_file(&target).ok();
    std::fs::remove_file(bomb.join("t10k-images-idx3-ubyte")).ok();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&[0, 0, 8, 3, 0, 0, 0x27, 0x10, 0, 0, 0, 28, 0, 0, 0, 28])
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..200 {
        gz.write_all(&zeros).unwrap();
    }
    std::fs::write(&target, gz.finish().unwrap()).unwrap();
    let o = common::run(
        "stn-infer",
        &[
            "--data",
            bomb.to_str().unwrap(),
            "--offline",
            "--runtime",
            "fused",
        ],
    );
    fails_with(
        &o,
        &["t10k-images-idx3-ubyte.gz", "more than the 7840016 bytes"],
    );
    // A header claiming 255 dimensions: a short error.
    let mut bad = vec![0u8, 0, 8, 255];
    bad.extend(vec![1u8; 4 * 255]);
    std::fs::write(&target, &bad).unwrap();
    let o = common::run(
        "stn-infer",
        &[
            "--data",
            bomb.to_str().unwrap(),
            "--offline",
            "--runtime",
            "fused",
        ],
    );
    let err = fails_with(&o, &["255 dimensions"]);
    assert!(err.len() < 600, "{} bytes: {err}", err.len());
}

#[test]
fn stn_infer_needs_only_the_test_files() {
    let dir = tempfile::tempdir().unwrap();
    link_mnist(dir.path(), &stn_data::MNIST_FILES[2..]);
    let o = common::run(
        "stn-infer",
        &[
            "--data",
            dir.path().to_str().unwrap(),
            "--offline",
            "--runtime",
            "fused",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
}

/// Safetensors bytes with their JSON header edited.
fn with_header(bytes: &[u8], edit: impl FnOnce(&str) -> String) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = edit(std::str::from_utf8(&bytes[8..8 + n]).unwrap());
    assert_ne!(
        header.as_bytes(),
        &bytes[8..8 + n],
        "the edit changed nothing"
    );
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn checkpoints_with_wrapping_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ck = Checkpoint::load(&repo().join("models/stn.safetensors")).unwrap();
    let p = dir.path().join("small.safetensors");
    // A spec with a 5×5 input (the localisation net's 7×7 kernel does not fit), and a checkpoint
    // from before specs whose arch claims a 5×5 canvas.
    let bytes = ck.to_bytes().unwrap();
    std::fs::write(
        &p,
        with_header(&bytes, |h| {
            h.replace(
                r#"\"height\":28,\"width\":28"#,
                r#"\"height\":5,\"width\":5"#,
            )
        }),
    )
    .unwrap();
    let e = Checkpoint::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("small.safetensors") && e.contains("kernel 7×7") && e.contains("1×5×5 input"),
        "{e}"
    );
    std::fs::write(
        &p,
        with_header(&bytes, |h| {
            let h = h.replace(r#"\"canvas\":28"#, r#"\"canvas\":5"#);
            // Drop the "spec" entry: its string value ends at the first unescaped quote.
            let at = h.find(r#""spec":""#).expect("a spec");
            let body = at + r#""spec":""#.len();
            let mut end = body;
            while h.as_bytes()[end] != b'"' {
                end += if h.as_bytes()[end] == b'\\' { 2 } else { 1 };
            }
            let (before, after) = (&h[..at], &h[end + 1..]);
            match after.strip_prefix(',') {
                Some(rest) => format!("{before}{rest}"),
                None => format!("{}{after}", before.trim_end_matches(',')),
            }
        }),
    )
    .unwrap();
    let e = Checkpoint::load(&p).unwrap_err().to_string();
    assert!(e.contains("canvas 5×5"), "{e}");
    let o = common::run(
        "stn-export",
        &[
            dir.path().join("s.onnx").to_str().unwrap(),
            "--checkpoint",
            p.to_str().unwrap(),
        ],
    );
    fails_with(&o, &["small.safetensors", "canvas"]);
    assert!(!dir.path().join("s.onnx").exists());
    let mut late = ck.clone();
    late.epoch = u64::MAX;
    std::fs::write(&p, late.to_bytes().unwrap()).unwrap();
    let e = Checkpoint::load(&p).unwrap_err().to_string();
    assert!(e.contains("epoch 18446744073709551615"), "{e}");
    // NaN weights export with a warning.
    let mut nan = ck;
    nan.params.data[0][0] = f32::NAN;
    std::fs::write(&p, nan.to_bytes().unwrap()).unwrap();
    let o = common::run(
        "stn-export",
        &[
            dir.path().join("n.onnx").to_str().unwrap(),
            "--checkpoint",
            p.to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    assert!(common::stderr(&o).contains("conv1.weight") && common::stderr(&o).contains("NaN"));
}

#[test]
fn kill_during_checkpointing_leaves_a_whole_file_and_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.safetensors");
    // A temp file of a process that is gone (pid above Linux's maximum).
    let stale = dir.path().join(".k.safetensors.4194399.XXXXXX.tmp");
    std::fs::write(&stale, b"half").unwrap();
    let (o, d) = (out.to_str().unwrap().to_string(), data());
    for round in 0..4u64 {
        let mut args = train_args(&o, &d);
        args.extend(["--epochs", "1000"]);
        if round == 0 {
            args.push("--force");
        } else {
            args.push("--resume");
        }
        let mut child = Command::new(exe("stn-train"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if round == 0 {
            // The first checkpoint, however busy the machine (the tests run side by side): the
            // later rounds resume from it and are killed at staggered points of their epochs.
            let t0 = Instant::now();
            while !out.exists() && t0.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        std::thread::sleep(Duration::from_millis(300 + 370 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if out.exists() {
            Checkpoint::load(&out).expect("a whole checkpoint after kill -9");
        }
    }
    assert!(out.exists(), "no epoch finished in the time given");
    // The next run that writes removes what the killed ones left.
    let mut args = train_args(&o, &d);
    let ck = Checkpoint::load(&out).unwrap();
    let next = (ck.epoch + 1).to_string();
    args.extend(["--epochs", &next, "--resume"]);
    let r = common::run("stn-train", &args);
    assert!(r.status.success(), "{}", common::stderr(&r));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n != "k.safetensors")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn outputs_get_the_umask_mode_and_help_and_errors_read_well() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 027 && exec '{}' '{}'",
            exe("stn-export"),
            out.display()
        ))
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // -h: each binary's own description.
    let heads: Vec<String> = ["stn-train", "stn-export", "stn-infer"]
        .iter()
        .map(|b| {
            let o = Command::new(exe(b)).arg("-h").output().unwrap();
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(heads[0] != heads[1] && heads[1] != heads[2], "{heads:?}");
    // A cause once, not twice.
    let o = common::run(
        "stn-export",
        &[
            out.to_str().unwrap(),
            "--checkpoint",
            "/nonexistent/ck.safetensors",
        ],
    );
    let err = fails_with(&o, &["/nonexistent/ck.safetensors"]);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    // --compare needs two runtimes, and loads all before running any.
    fails_with(
        &common::run("stn-infer", &["--compare", "fused"]),
        &["two or more"],
    );
    let d = data();
    let o = common::run(
        "stn-infer",
        &[
            "--compare",
            "tract,ort",
            "--ort-lib",
            "/nonexistent/libonnxruntime.so",
            "--data",
            &d,
        ],
    );
    fails_with(&o, &["ort"]);
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn the_isa_level_is_reported_and_a_bad_stn_isa_is_refused() {
    // --version names the kernels' level: the best this CPU runs, or STN_ISA's.
    for bin in ["stn-train", "stn-infer", "stn-export"] {
        let o = Command::new(exe(bin)).arg("--version").output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success() && out.contains("cpu kernels: "),
            "{bin}: {out}"
        );
        let o = Command::new(exe(bin))
            .arg("--version")
            .env("STN_ISA", "scalar")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            out.contains("cpu kernels: scalar, 8 f32 lanes"),
            "{bin}: {out}"
        );
    }
    // An unknown level, or one above the CPU's, stops every binary before it runs a kernel.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let (out_s, data) = (out.to_str().unwrap().to_string(), data());
    let o = Command::new(exe("stn-train"))
        .args(train_args(&out_s, &data))
        .env("STN_ISA", "sse9")
        .output()
        .unwrap();
    fails_with(&o, &["STN_ISA", "sse9", "scalar, avx2 or avx512"]);
    assert!(!out.exists());
    let o = Command::new(exe("stn-infer"))
        .args(["--runtime", "fused", "--data", &data, "--offline"])
        .env("STN_ISA", "avx3")
        .output()
        .unwrap();
    fails_with(&o, &["STN_ISA", "avx3"]);
    if stn_ops::isa::detected() < stn_ops::isa::Level::Avx512 {
        let o = Command::new(exe("stn-train"))
            .args(train_args(&out_s, &data))
            .env("STN_ISA", "avx512")
            .output()
            .unwrap();
        fails_with(&o, &["STN_ISA=avx512", "this CPU runs at most"]);
    }
    // A forced level runs and says so in the --json summary.
    let o = Command::new(exe("stn-train"))
        .args(train_args(&out_s, &data))
        .args(["--epochs", "1", "--json"])
        .env("STN_ISA", "avx2")
        .output()
        .unwrap();
    let last = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    let j: serde_json::Value = serde_json::from_str(&last).expect("a JSON summary");
    if stn_ops::isa::detected() >= stn_ops::isa::Level::Avx2 {
        assert_eq!(j["isa"], "avx2", "{last}");
    }
}
