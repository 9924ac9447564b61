//! stn-train on the user's own data: an RGB image folder (torchvision's ImageFolder layout, mixed
//! sizes resized to the spec's input) and an MNIST-format IDX set; bad folders are clear errors
//! that write nothing.

mod common;

use std::path::Path;

use image::{Rgb, RgbImage};
use stn_model::Checkpoint;

fn lcg(seed: u64) -> impl FnMut() -> u32 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u32
    }
}

const CLASSES: [&str; 3] = ["bar", "column", "square"];

/// One picture of `class`: a coloured shape at a random place on a random dark background, in
/// one of three sizes (the folder's images differ in size, as photos do).
fn picture(class: usize, rnd: &mut impl FnMut() -> u32) -> RgbImage {
    let (w, h) = [(40, 40), (48, 36), (32, 32)][(rnd() % 3) as usize];
    let bg = Rgb([(rnd() % 60) as u8, (rnd() % 60) as u8, (rnd() % 60) as u8]);
    let fg = Rgb([
        150 + (rnd() % 100) as u8,
        150 + (rnd() % 100) as u8,
        150 + (rnd() % 100) as u8,
    ]);
    let (sw, sh) = match class {
        0 => (w * 3 / 4, h / 6),
        1 => (w / 6, h * 3 / 4),
        _ => (w / 2, h / 2),
    };
    let (x0, y0) = (rnd() % (w - sw), rnd() % (h - sh));
    RgbImage::from_fn(w, h, |x, y| {
        if (x0..x0 + sw).contains(&x) && (y0..y0 + sh).contains(&y) {
            fg
        } else {
            bg
        }
    })
}

/// `dir/{train,test}/<class>/*.png`.
fn make_folder(dir: &Path, train: usize, test: usize) {
    let mut rnd = lcg(1);
    for (split, n) in [("train", train), ("test", test)] {
        for (k, class) in CLASSES.iter().enumerate() {
            let d = dir.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                picture(k, &mut rnd)
                    .save(d.join(format!("{i:03}.png")))
                    .unwrap();
            }
        }
    }
}

const RGB_SPEC: &str = r#"{
  "input": {"channels": 3, "height": 32, "width": 32},
  "localization": [
    {"op": "conv2d", "out": 8, "kernel": 5}, {"op": "max_pool2d", "kernel": 2}, {"op": "relu"},
    {"op": "flatten"}, {"op": "linear", "out": 16}, {"op": "relu"}
  ],
  "transform": {"kind": "affine", "output": [28, 28], "padding": "border"},
  "classifier": [
    {"op": "conv2d", "out": 12, "kernel": 5}, {"op": "max_pool2d", "kernel": 2}, {"op": "relu"},
    {"op": "conv2d", "out": 16, "kernel": 5}, {"op": "max_pool2d", "kernel": 2}, {"op": "relu"},
    {"op": "flatten"}, {"op": "linear", "out": 32}, {"op": "relu"}, {"op": "linear", "out": 3}
  ],
  "classes": 3
}"#;

fn train(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--data",
        data.to_str().unwrap(),
        "--threads",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    common::run("stn-train", &args)
}

#[test]
fn an_rgb_image_folder_trains_well_above_chance() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    make_folder(&data, 80, 20);
    let spec = dir.path().join("rgb.json");
    std::fs::write(&spec, RGB_SPEC).unwrap();
    let out = dir.path().join("shapes.safetensors");
    let (sheet, warped) = (dir.path().join("sheet.png"), dir.path().join("warped.png"));
    // Detected from the layout (DIR/train is a folder); normalisation from the training images.
    let o = train(
        &data,
        &out,
        &[
            "--spec",
            spec.to_str().unwrap(),
            "--epochs",
            "6",
            "--batch",
            "16",
            "--optimizer",
            "adam",
            "--lr",
            "0.003",
            "--contact-sheet",
            sheet.to_str().unwrap(),
            "--visualize",
            warped.to_str().unwrap(),
        ],
    );
    let err = common::stderr(&o);
    assert!(o.status.success(), "{err}");
    // The pictures are RGB where the input is: 64 training images 8 to a row (32 px and a 2 px
    // gutter), and 32 test images beside their 28×28 samples, both 3× (so that the sampling
    // grid drawn over each input is thinner than a pixel).
    let img = image::open(&sheet).unwrap();
    assert_eq!(img.color(), image::ColorType::Rgb8);
    assert_eq!((img.width(), img.height()), (8 * 34 + 2, 8 * 34 + 2));
    let img = image::open(&warped).unwrap();
    assert_eq!(img.color(), image::ColorType::Rgb8);
    assert_eq!(
        (img.width(), img.height()),
        (8 * 98 + 2 + 12 + 8 * 86 + 2, 4 * 98 + 2)
    );
    // The sampling grids, in red, over the inputs.
    let red = img
        .to_rgb8()
        .pixels()
        .filter(|p| p.0 == [230, 40, 40])
        .count();
    assert!(red > 32 * 100, "{red} red pixels");
    assert!(
        err.contains(
            "240 training and 60 test images of 3 classes (bar, column, square), as 3×32×32"
        ),
        "{err}"
    );
    assert!(
        err.contains("normalisation from the training images"),
        "{err}"
    );
    let ck = Checkpoint::load(&out).unwrap();
    let acc = ck.run["history"][5]["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.8, "test accuracy {acc} (chance is 1/3)");
    let (mean, _) = ck.params.net.spec().normalization().unwrap();
    assert_eq!(mean.len(), 3);

    // Exported, it runs the folder's test split on every runtime alike, and classifies files.
    let onnx = dir.path().join("shapes.onnx");
    let o = common::run(
        "stn-export",
        &[
            onnx.to_str().unwrap(),
            "--checkpoint",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let m = onnx.to_str().unwrap();
    let d = data.to_str().unwrap();
    let o = common::run(
        "stn-infer",
        &[
            "--model",
            m,
            "--data",
            d,
            "--compare",
            "tract,ort,dfdx,fused",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["images"], 60);
    for p in report["pairs"].as_array().unwrap() {
        assert_eq!(p["allclose"], true, "{p}");
    }
    let o = common::run(
        "stn-infer",
        &["--model", m, "--data", d, "--runtime", "fused", "--json"],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let infer_acc = summary["accuracy"].as_f64().unwrap();
    assert!(
        (infer_acc - acc).abs() < 1e-9,
        "stn-infer {infer_acc} vs stn-train {acc}"
    );
    let column = data.join("test/column/000.png");
    let o = common::run(
        "stn-infer",
        &[
            "--model",
            m,
            "--images",
            column.to_str().unwrap(),
            "--runtime",
            "fused",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["predictions"][0]["class"], 1, "{summary}");
    // The class names travel from the folder through the checkpoint into the ONNX file.
    assert_eq!(summary["predictions"][0]["label"], "column", "{summary}");
    // A test folder with other classes than the model's is refused, not misread.
    let other = dir.path().join("other");
    std::fs::create_dir_all(other.join("test")).unwrap();
    for (from, to) in [("bar", "bar"), ("column", "columns"), ("square", "square")] {
        std::fs::create_dir_all(other.join("test").join(to)).unwrap();
        std::fs::copy(
            data.join("test").join(from).join("000.png"),
            other.join("test").join(to).join("0.png"),
        )
        .unwrap();
    }
    let o = common::run(
        "stn-infer",
        &[
            "--model",
            m,
            "--data",
            other.to_str().unwrap(),
            "--runtime",
            "fused",
        ],
    );
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(e.contains("differ from") && e.contains("columns"), "{e}");

    // Without --spec: the seed network, grey 28×28, with the folder's 3 classes.
    let out2 = dir.path().join("seed.safetensors");
    let o = train(
        &data,
        &out2,
        &["--epochs", "1", "--dataset", "image-folder"],
    );
    let err = common::stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("the seed network with 3 classes"), "{err}");
    assert!(err.contains("as 1×28×28"), "{err}");
    assert_eq!(
        Checkpoint::load(&out2).unwrap().params.net.plan().classes,
        3
    );
}

#[test]
fn bad_image_folders_are_clear_errors_that_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    make_folder(&data, 2, 1);
    let out = dir.path().join("x.safetensors");
    let spec = dir.path().join("rgb.json");
    std::fs::write(&spec, RGB_SPEC).unwrap();
    let s = spec.to_str().unwrap();
    let fails = |data: &Path, extra: &[&str], want: &[&str]| {
        let mut args = vec!["--epochs", "1", "--spec", s];
        args.extend_from_slice(extra);
        let o = train(data, &out, &args);
        let err = common::stderr(&o);
        assert!(!o.status.success(), "{args:?} succeeded");
        for w in want {
            assert!(err.contains(w), "{err}\n does not say {w:?}");
        }
        assert!(!out.exists());
    };
    // An image that is not one.
    let bad = data.join("train/bar/001.png");
    std::fs::write(&bad, b"not a png").unwrap();
    fails(&data, &[], &["train/bar/001.png", "not an image"]);
    picture(0, &mut lcg(3)).save(&bad).unwrap();
    // A class folder without images.
    std::fs::create_dir_all(data.join("train/circle")).unwrap();
    std::fs::write(data.join("train/circle/notes.txt"), b"todo").unwrap();
    fails(&data, &[], &["train/circle", "no images"]);
    // The test split lacks it: the classes differ.
    picture(0, &mut lcg(4))
        .save(data.join("train/circle/0.png"))
        .unwrap();
    fails(&data, &[], &["test", "differ from the training split"]);
    std::fs::remove_dir_all(data.join("train/circle")).unwrap();
    // The spec's classes do not match the folder's.
    let four = dir.path().join("four.json");
    std::fs::write(
        &four,
        RGB_SPEC
            .replace(r#""out": 3}"#, r#""out": 4}"#)
            .replace(r#""classes": 3"#, r#""classes": 4"#),
    )
    .unwrap();
    let o = train(
        &data,
        &out,
        &["--epochs", "1", "--spec", four.to_str().unwrap()],
    );
    assert!(
        o.status.success(),
        "4 classes for 3 folders trains (one class unused)"
    );
    std::fs::remove_file(&out).unwrap();
    // An output inside the folder is refused before any work.
    let inside = data.join("train/bar/sheet.png");
    fails(
        &data,
        &["--contact-sheet", inside.to_str().unwrap()],
        &["--contact-sheet", "inside the image folder's train/"],
    );
    assert!(!inside.exists());
    // No train/ folder, explicitly an image folder.
    fails(
        dir.path(),
        &["--dataset", "image-folder"],
        &["train", "no such folder", "ImageFolder layout"],
    );
    // Distortions are MNIST's.
    fails(&data, &["--distort", "rts"], &["--distort", "image folder"]);
}

/// An IDX file: magic, dimensions, bytes (gzipped when `gz`).
fn write_idx(path: &Path, dims: &[u32], data: &[u8]) {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    std::fs::write(path, v).unwrap();
}

#[test]
fn an_idx_set_of_another_kind_trains() {
    // Five classes of 28×28 "garments": class k lights up band k. Not MNIST: no checksums apply.
    let dir = tempfile::tempdir().unwrap();
    let mut rnd = lcg(7);
    for (prefix, n) in [("train", 300u32), ("t10k", 100)] {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let k = (i % 5) as usize;
            labels.push(k as u8);
            for y in 0..28 {
                for _ in 0..28 {
                    let band = y * 5 / 28 == k;
                    images.push(if band {
                        200 + (rnd() % 55) as u8
                    } else {
                        (rnd() % 40) as u8
                    });
                }
            }
        }
        write_idx(
            &dir.path().join(format!("{prefix}-images-idx3-ubyte")),
            &[n, 28, 28],
            &images,
        );
        write_idx(
            &dir.path().join(format!("{prefix}-labels-idx1-ubyte")),
            &[n],
            &labels,
        );
    }
    let out = dir.path().join("idx.safetensors");
    // As MNIST the files fail their checksums, which says what to do.
    let o = train(dir.path(), &out, &["--epochs", "1", "--offline"]);
    assert!(!o.status.success());
    let o = train(
        dir.path(),
        &out,
        &[
            "--epochs",
            "3",
            "--dataset",
            "idx",
            "--optimizer",
            "adam",
            "--lr",
            "0.002",
        ],
    );
    let err = common::stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("IDX set from"), "{err}");
    let ck = Checkpoint::load(&out).unwrap();
    let acc = ck.run["history"][2]["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.8, "test accuracy {acc} (chance is 1/5)");
}
