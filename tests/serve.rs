//! stn-serve end to end: the binary serving a Triton repository written by stn-export, over HTTP
//! (ureq), answering each MNIST test image with stn-infer's log-probs; its config.pbtxt parsed by
//! Triton's own schema; SIGTERM; bad options.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};
use stn_data::{DataDir, Mnist};

/// The committed default model's checkpoint.
const CHECKPOINT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/stn.safetensors");

struct Serving {
    child: Child,
    base: String,
    stderr: std::thread::JoinHandle<String>,
}

fn start(args: &[&str]) -> Serving {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stn-serve"))
        .args(args)
        .args(["--addr", "127.0.0.1:0", "--threads", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stn-serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());
    let base = line
        .trim()
        .strip_prefix("stn-serve listening on ")
        .unwrap_or_else(|| panic!("stn-serve printed {line:?}"))
        .to_string();
    Serving {
        child,
        base,
        stderr,
    }
}

impl Serving {
    /// SIGTERM; the exit status and what it logged.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        (status, self.stderr.join().unwrap())
    }
}

/// The float32 rows of a NumPy `.npy` file written by stn-infer --save-logprobs.
fn read_npy(path: &std::path::Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let header = u16::from_le_bytes([b[8], b[9]]) as usize;
    b[10 + header..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn a_triton_repository_served_answers_each_image_with_stn_infers_log_probs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let onnx = dir.path().join("stn.onnx");
    let (r, o) = (repo.to_str().unwrap(), onnx.to_str().unwrap());
    let out = common::run(
        "stn-export",
        &[
            o,
            "--checkpoint",
            CHECKPOINT,
            "--outputs",
            "log_probs,theta",
            "--triton-repo",
            r,
            "--target",
            "ort-cuda",
        ],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    // Triton's own model-config schema reads it (tritonclient's model_config_pb2).
    if let Ok(python) = std::env::var("STN_PYTHON") {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/check_triton_config.py"
        );
        let check = Command::new(python).args([script, r]).output().unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let line: Value = serde_json::from_slice(&check.stdout).unwrap();
        assert_eq!(line["outputs"], json!({"log_probs": [10], "theta": [2, 3]}));
        assert_eq!(line["instance_group"], json!(["KIND_GPU"]));
    } else {
        eprintln!("STN_PYTHON not set: config.pbtxt not parsed by Triton's schema here");
    }
    // The same version again is refused; stn-infer's answers for the test set.
    let again = common::run(
        "stn-export",
        &["--checkpoint", CHECKPOINT, "--triton-repo", r],
    );
    assert!(!again.status.success());
    assert!(
        common::stderr(&again).contains("--overwrite"),
        "{}",
        common::stderr(&again)
    );
    let data = common::mnist_dir();
    let npy = dir.path().join("lp.npy");
    let out = common::run(
        "stn-infer",
        &[
            "--model",
            o,
            "--runtime",
            "fused",
            "--data",
            data.to_str().unwrap(),
            "--offline",
            "--save-logprobs",
            npy.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let want = read_npy(&npy);

    let s = start(&["--model-repo", r, "--max-delay-us", "200"]);
    let meta: Value = ureq::get(&format!("{}/v2/models/stn", s.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(meta["versions"], json!(["1"]));
    let mnist = Mnist::load(&DataDir::resolve(Some(&data)), true).unwrap();
    let url = format!("{}/v2/models/stn/infer", s.base);
    // 200 single images from 4 threads at once: batched, each answered its own.
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (mnist, url, want) = (&mnist, &url, &want);
            scope.spawn(move || {
                for i in (t..200).step_by(4) {
                    let x = stn_data::normalize(mnist.test.image(i));
                    let body = json!({"id": i.to_string(), "inputs": [{"name": "input",
                        "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x}]});
                    let resp: Value = ureq::post(url)
                        .send_json(body)
                        .unwrap()
                        .into_json()
                        .unwrap();
                    assert_eq!(resp["id"], i.to_string());
                    let lp: Vec<f32> = resp["outputs"][0]["data"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap() as f32)
                        .collect();
                    assert_eq!(lp, want[i * 10..(i + 1) * 10], "image {i}");
                }
            });
        }
    });
    let metrics = ureq::get(&format!("{}/metrics", s.base))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains(
            r#"stn_inference_requests_total{model="stn",outcome="success",version="1"} 200"#
        ),
        "{metrics}"
    );
    let (status, log) = s.terminate();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
}

#[test]
fn bad_options_and_models_stop_stn_serve_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.onnx");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_stn-serve"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["--model", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        common::stderr(&o).contains("missing.onnx"),
        "{}",
        common::stderr(&o)
    );
    let o = run(&["--model-repo", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        common::stderr(&o).contains("no model directories"),
        "{}",
        common::stderr(&o)
    );
    let not_onnx = dir.path().join("x.onnx");
    std::fs::write(&not_onnx, b"not a model").unwrap();
    let o = run(&["--model", not_onnx.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        common::stderr(&o).contains("x.onnx"),
        "{}",
        common::stderr(&o)
    );
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/stn.onnx");
    for (args, says) in [
        (vec!["--model", model, "--max-batch", "0"], "--max-batch"),
        (vec!["--model", model, "--name", "a/b"], "not a model name"),
        (vec!["--model", model, "--device", "cuda"], "CPU only"),
        (vec!["--model", model, "--addr", "nowhere"], "--addr"),
        (vec![], "--model"),
    ] {
        let o = run(&args);
        assert_ne!(o.status.code(), Some(0), "{args:?}");
        assert!(
            common::stderr(&o).contains(says),
            "{args:?}: {}",
            common::stderr(&o)
        );
    }
}
