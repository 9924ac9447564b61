//! stn-serve's library end to end: a real HTTP client against a server on an ephemeral port —
//! health, metadata, JSON and binary infer (answers equal to the fused runner's), the protocol's
//! errors, dynamic batching merging concurrent requests, model repositories, shutdown.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use stn_model::{Arch, Params};
use stn_onnx::{export, to_bytes, ExportOptions, Output};
use stn_runtime::{FusedRunner, Runner};
use stn_serve::{
    scan_repository, write_repository, BatchOptions, Limits, Metrics, ModelInfo, ModelSet,
    ModelSource, RunnerOptions, TritonOptions,
};
use tokio::sync::oneshot;

const LEN: usize = 28 * 28;

/// The seed network with random weights (seed `seed`), its three outputs, as ONNX bytes.
fn model_bytes(seed: u64) -> Vec<u8> {
    let params = Params::init(Arch::SEED, seed);
    let model = export(
        &params,
        &ExportOptions {
            opset: 16,
            outputs: vec![Output::LogProbs, Output::Theta, Output::Warped],
            metadata: vec![],
        },
    )
    .expect("the seed exports");
    to_bytes(&model)
}

/// Deterministic images with the MNIST normalisation's range.
fn images(n: usize, salt: u32) -> Vec<f32> {
    (0..n * LEN)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(salt * 97)
                >> 8;
            (x % 1000) as f32 / 1000.0 * 3.2 - 0.42
        })
        .collect()
}

struct Server {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
    client: reqwest::Client,
}

impl Server {
    async fn start(sources: Vec<ModelSource>, batch: BatchOptions, limits: Limits) -> Server {
        let metrics = Metrics::new();
        let m = metrics.clone();
        let models = tokio::task::spawn_blocking(move || {
            ModelSet::load(&sources, &RunnerOptions::default(), batch, &m)
        })
        .await
        .unwrap()
        .expect("the models load");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(stn_serve::serve(listener, models, metrics, limits, async {
            let _ = stopped.await;
        }));
        Server {
            base,
            stop: Some(stop),
            done,
            client: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        header_len: Option<usize>,
    ) -> reqwest::Response {
        let mut r = self.client.post(format!("{}{path}", self.base)).body(body);
        if let Some(h) = header_len {
            r = r.header("Inference-Header-Content-Length", h);
        }
        r.send().await.unwrap()
    }

    async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .post(path, serde_json::to_vec(body).unwrap(), None)
            .await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), self.done)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}

fn single(dir: &Path, seed: u64) -> Vec<ModelSource> {
    let path = dir.join("stn.onnx");
    std::fs::write(&path, model_bytes(seed)).unwrap();
    vec![ModelSource {
        name: "stn".into(),
        version: 1,
        path,
    }]
}

fn infer_body(x: &[f32], n: usize) -> Value {
    json!({
        "id": "req-7",
        "inputs": [{"name": "input", "shape": [n, 1, 28, 28], "datatype": "FP32", "data": x}],
    })
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn output<'a>(resp: &'a Value, name: &str) -> &'a Value {
    resp["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {resp}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metadata_and_json_infer_match_the_fused_runner() {
    let dir = tempfile::tempdir().unwrap();
    let sources = single(dir.path(), 3);
    let bytes = std::fs::read(&sources[0].path).unwrap();
    let s = Server::start(sources, BatchOptions::default(), Limits::default()).await;

    assert_eq!(s.get("/v2/health/live").await, (200, json!({"live": true})));
    assert_eq!(
        s.get("/v2/health/ready").await,
        (200, json!({"ready": true}))
    );
    let (code, meta) = s.get("/v2").await;
    assert_eq!(code, 200);
    assert_eq!(meta["extensions"], json!(["binary_tensor_data"]));
    let (code, meta) = s.get("/v2/models/stn").await;
    assert_eq!(code, 200);
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(
        meta["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}])
    );
    assert_eq!(
        meta["outputs"],
        json!([
            {"name": "log_probs", "datatype": "FP32", "shape": [-1, 10]},
            {"name": "theta", "datatype": "FP32", "shape": [-1, 2, 3]},
            {"name": "warped", "datatype": "FP32", "shape": [-1, 1, 28, 28]},
        ])
    );
    assert_eq!(s.get("/v2/models/stn/versions/1").await.0, 200);
    assert_eq!(s.get("/v2/models/stn/ready").await.0, 200);
    assert_eq!(s.get("/v2/models/stn/versions/1/ready").await.0, 200);

    let x = images(3, 1);
    let want = FusedRunner::load(&bytes, "stn.onnx")
        .unwrap()
        .run(&x, 3)
        .unwrap();
    let (code, resp) = s
        .post_json("/v2/models/stn/infer", &infer_body(&x, 3))
        .await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["id"], "req-7");
    assert_eq!(resp["model_name"], "stn");
    assert_eq!(resp["model_version"], "1");
    let lp = output(&resp, "log_probs");
    assert_eq!(lp["shape"], json!([3, 10]));
    // f32 written as its shortest decimal reads back to the same float: equal, not close.
    assert_eq!(floats(&lp["data"]), want.log_probs);
    assert_eq!(
        floats(&output(&resp, "theta")["data"]),
        want.transform.unwrap()
    );
    assert_eq!(
        floats(&output(&resp, "warped")["data"]),
        want.warped.unwrap()
    );

    // Nested data and a chosen output.
    let nested: Vec<Vec<f32>> = x[..LEN].chunks(28).map(|r| r.to_vec()).collect();
    let body = json!({
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [[nested]]}],
        "outputs": [{"name": "log_probs"}],
    });
    let (code, resp) = s.post_json("/v2/models/stn/versions/1/infer", &body).await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["outputs"].as_array().unwrap().len(), 1);
    assert!(resp.get("id").is_none());
    assert_eq!(
        floats(&output(&resp, "log_probs")["data"]),
        want.log_probs[..10]
    );

    let (code, text) = s.get("/metrics").await;
    assert_eq!(code, 200);
    let text = text.as_str().unwrap().to_string();
    assert!(
        text.contains(
            r#"stn_inference_requests_total{model="stn",outcome="success",version="1"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"stn_inference_images_total{model="stn",version="1"} 4"#),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_tensors_in_and_out() {
    let dir = tempfile::tempdir().unwrap();
    let sources = single(dir.path(), 5);
    let bytes = std::fs::read(&sources[0].path).unwrap();
    let s = Server::start(sources, BatchOptions::default(), Limits::default()).await;
    let x = images(2, 9);
    let want = FusedRunner::load(&bytes, "stn.onnx")
        .unwrap()
        .run(&x, 2)
        .unwrap();
    let head = serde_json::to_vec(&json!({
        "inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32",
                    "parameters": {"binary_data_size": x.len() * 4}}],
        "outputs": [{"name": "log_probs", "parameters": {"binary_data": true}},
                    {"name": "theta", "parameters": {"binary_data": false}}],
    }))
    .unwrap();
    let mut body = head.clone();
    for v in &x {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let r = s.post("/v2/models/stn/infer", body, Some(head.len())).await;
    assert_eq!(r.status().as_u16(), 200);
    let h: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let all = r.bytes().await.unwrap();
    let meta: Value = serde_json::from_slice(&all[..h]).unwrap();
    let lp = output(&meta, "log_probs");
    assert_eq!(lp["parameters"]["binary_data_size"], 2 * 10 * 4);
    assert!(lp.get("data").is_none());
    let got: Vec<f32> = all[h..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(got, want.log_probs);
    assert_eq!(
        floats(&output(&meta, "theta")["data"]),
        want.transform.unwrap()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_4xx_with_a_message_and_do_not_fail_others() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_body_bytes: 64 << 10,
        ..Limits::default()
    };
    let s = Server::start(single(dir.path(), 2), BatchOptions::default(), limits).await;
    let x = images(1, 4);
    let good = infer_body(&x, 1);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "bad JSON",
            b"{\"inputs\": [".to_vec(),
            400,
            "not a valid infer request",
        ),
        (
            "not an object",
            b"[1, 2]".to_vec(),
            400,
            "not a valid infer request",
        ),
        (
            "wrong shape",
            serde_json::to_vec(&with(&|b| b["inputs"][0]["shape"] = json!([1, 1, 28, 27])))
                .unwrap(),
            400,
            "shape",
        ),
        (
            "zero images",
            serde_json::to_vec(&with(&|b| b["inputs"][0]["shape"] = json!([0, 1, 28, 28])))
                .unwrap(),
            400,
            "N ≥ 1",
        ),
        (
            "wrong dtype",
            serde_json::to_vec(&with(&|b| b["inputs"][0]["datatype"] = json!("INT64"))).unwrap(),
            400,
            "FP32",
        ),
        (
            "unknown input",
            serde_json::to_vec(&with(&|b| b["inputs"][0]["name"] = json!("x"))).unwrap(),
            400,
            "unknown input 'x'",
        ),
        (
            "too few values",
            serde_json::to_vec(&with(&|b| b["inputs"][0]["data"] = json!([0.5, 1.0]))).unwrap(),
            400,
            "2 values",
        ),
        (
            "a string value",
            serde_json::to_vec(&with(&|b| b["inputs"][0]["data"][3] = json!("a"))).unwrap(),
            400,
            "number",
        ),
        (
            "unknown output",
            serde_json::to_vec(&with(&|b| b["outputs"] = json!([{"name": "probs"}]))).unwrap(),
            400,
            "unknown output 'probs'",
        ),
        (
            "oversized body",
            vec![b' '; 100 << 10],
            413,
            "--max-body-bytes",
        ),
    ];
    for (what, body, code, msg) in cases {
        let r = s.post("/v2/models/stn/infer", body, None).await;
        assert_eq!(r.status().as_u16(), code, "{what}");
        let v: Value = r.json().await.unwrap();
        let e = v["error"].as_str().unwrap_or_else(|| panic!("{what}: {v}"));
        assert!(e.contains(msg), "{what}: {e}");
    }
    // A binary size that does not match, and a header length past the body.
    let head = serde_json::to_vec(
        &json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28],
        "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}),
    )
    .unwrap();
    let n = head.len();
    let r = s.post("/v2/models/stn/infer", head, Some(n)).await;
    assert_eq!(r.status().as_u16(), 400);
    let r = s
        .post("/v2/models/stn/infer", b"{}".to_vec(), Some(99))
        .await;
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(s.post_json("/v2/models/nope/infer", &good).await.0, 404);
    assert_eq!(
        s.post_json("/v2/models/stn/versions/2/infer", &good)
            .await
            .0,
        404
    );
    assert_eq!(s.get("/v2/models/nope").await.0, 404);
    assert_eq!(s.get("/v3").await.0, 404);
    assert_eq!(s.get("/v2/models/stn/infer").await.0, 405);
    // The server still answers the good request after all of that.
    let (code, resp) = s.post_json("/v2/models/stn/infer", &good).await;
    assert_eq!(code, 200, "{resp}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_are_batched_and_answered_each_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let sources = single(dir.path(), 8);
    let bytes = std::fs::read(&sources[0].path).unwrap();
    // A long delay: the 16 requests sent at once meet in a few batches.
    let batch = BatchOptions {
        max_batch: 64,
        max_delay: Duration::from_millis(300),
        max_queue: 64,
    };
    let s = std::sync::Arc::new(Server::start(sources, batch, Limits::default()).await);
    let mut fused = FusedRunner::load(&bytes, "stn.onnx").unwrap();
    let mut tasks = Vec::new();
    for k in 0..16u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let x = images(1, 100 + k);
            let (code, resp) = s
                .post_json("/v2/models/stn/infer", &infer_body(&x, 1))
                .await;
            assert_eq!(code, 200, "{resp}");
            (x, floats(&output(&resp, "log_probs")["data"]))
        }));
    }
    for t in tasks {
        let (x, got) = t.await.unwrap();
        assert_eq!(got, fused.run(&x, 1).unwrap().log_probs);
    }
    let (_, text) = s.get("/metrics").await;
    let text = text.as_str().unwrap().to_string();
    let batches: usize = text
        .lines()
        .find(|l| l.starts_with("stn_batch_size_count"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        batches < 16,
        "16 requests ran in {batches} batches: none merged"
    );
    std::sync::Arc::into_inner(s).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_serves_every_version_and_its_config_names_the_tensors() {
    let dir = tempfile::tempdir().unwrap();
    for (version, seed) in [(1, 11), (2, 12)] {
        let bytes = model_bytes(seed);
        let loaded = stn_onnx::read_model(&bytes, "m").unwrap();
        let info = ModelInfo::of("digits", version, Path::new("m"), &loaded);
        write_repository(dir.path(), &info, &bytes, &TritonOptions::default(), false).unwrap();
        // The same version again is refused unless overwritten.
        assert!(
            write_repository(dir.path(), &info, &bytes, &TritonOptions::default(), false)
                .unwrap_err()
                .to_string()
                .contains("--overwrite")
        );
    }
    let config = std::fs::read_to_string(dir.path().join("digits/config.pbtxt")).unwrap();
    assert!(config.contains("name: \"digits\"\nbackend: \"onnxruntime\"\nmax_batch_size: 64"));
    assert!(config.contains("name: \"warped\"\n    data_type: TYPE_FP32\n    dims: [ 1, 28, 28 ]"));
    let sources = scan_repository(dir.path()).unwrap();
    assert_eq!(
        sources.iter().map(|s| s.version).collect::<Vec<_>>(),
        [1, 2]
    );
    let s = Server::start(sources, BatchOptions::default(), Limits::default()).await;
    let (_, meta) = s.get("/v2/models/digits").await;
    assert_eq!(meta["versions"], json!(["1", "2"]));
    let x = images(1, 3);
    let (_, latest) = s
        .post_json("/v2/models/digits/infer", &infer_body(&x, 1))
        .await;
    assert_eq!(latest["model_version"], "2");
    let (_, v1) = s
        .post_json("/v2/models/digits/versions/1/infer", &infer_body(&x, 1))
        .await;
    assert_eq!(v1["model_version"], "1");
    assert_ne!(
        output(&v1, "log_probs")["data"],
        output(&latest, "log_probs")["data"]
    );
    s.stop().await;

    // Not repositories.
    let empty = tempfile::tempdir().unwrap();
    assert!(scan_repository(empty.path())
        .unwrap_err()
        .to_string()
        .contains("no model directories"));
    std::fs::create_dir_all(empty.path().join("m/1")).unwrap();
    assert!(scan_repository(empty.path())
        .unwrap_err()
        .to_string()
        .contains("no model.onnx"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_requests_in_flight_then_stops_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let batch = BatchOptions {
        max_batch: 64,
        max_delay: Duration::from_millis(200),
        max_queue: 64,
    };
    let s = Server::start(single(dir.path(), 1), batch, Limits::default()).await;
    let base = s.base.clone();
    let mut tasks = Vec::new();
    for k in 0..4u32 {
        let client = s.client.clone();
        let url = format!("{base}/v2/models/stn/infer");
        tasks.push(tokio::spawn(async move {
            let body = serde_json::to_vec(&infer_body(&images(1, k), 1)).unwrap();
            client
                .post(url)
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.stop().await;
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("answered before the stop"), 200);
    }
    assert!(reqwest::get(format!("{base}/v2/health/live"))
        .await
        .is_err());
}
