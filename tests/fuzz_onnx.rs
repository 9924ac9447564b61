//! The mutation fuzz of ONNX files across runtimes: one-byte mutants (and truncations) of the
//! default model at opset 16 and 20, each given to tract, ONNX Runtime, dfdx and fused. Every
//! runtime must give the same verdict on the same file — all refuse it, or all run it and agree
//! (allclose 1e-4, NaN where one has NaN) — without a panic or a hang.
//!
//! `STN_FUZZ_MUTANTS` (default 48 per opset) and `STN_FUZZ_SEED` set the run; `scripts/fuzz.sh`
//! runs thousands.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use stn_runtime::{
    find_ort_library, Device, DfdxRunner, FusedRunner, OrtRunner, Runner, TractRunner,
};

/// What one runtime made of a file.
#[derive(Debug)]
enum Verdict {
    Refused(String),
    Ran(Vec<f32>),
    Panicked(String),
}

const IMAGES: usize = 16;

fn runtimes() -> [&'static str; 4] {
    ["tract", "ort", "dfdx", "fused"]
}

fn verdict(which: &str, bytes: &[u8], images: &[f32], lib: &std::path::Path) -> Verdict {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut r: Box<dyn Runner> = match which {
            "tract" => Box::new(TractRunner::load(bytes, "mutant.onnx")?),
            "ort" => Box::new(OrtRunner::load(bytes, "mutant.onnx", lib, Device::Cpu, 1)?),
            "dfdx" => Box::new(DfdxRunner::load(bytes, "mutant.onnx", false)?),
            _ => Box::new(FusedRunner::load(bytes, "mutant.onnx")?),
        };
        if r.input_dims() != [1, 28, 28] {
            return Ok::<_, stn_runtime::RuntimeError>(None);
        }
        Ok(Some(r.run(images, IMAGES)?.log_probs))
    }));
    match r {
        Ok(Ok(Some(lp))) => Verdict::Ran(lp),
        Ok(Ok(None)) => Verdict::Refused("not a 28×28 model".into()),
        Ok(Err(e)) => Verdict::Refused(e.to_string()),
        Err(p) => Verdict::Panicked(
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        ),
    }
}

/// Whether two runtimes' log-probs agree: per image, within 1e-4 of the row's scale (a mutated
/// weight of 1e20 makes logits of 1e20, whose float rounding is far above any fixed tolerance),
/// NaN where the other has NaN.
fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.chunks(10).zip(b.chunks(10)).all(|(ra, rb)| {
            let scale = ra
                .iter()
                .chain(rb)
                .filter(|v| v.is_finite())
                .fold(1f32, |m, v| m.max(v.abs()));
            ra.iter().zip(rb).all(|(&x, &y)| {
                (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= 1e-4 * scale
            })
        })
}

/// The first image where two runs part, for the report.
fn worst(a: &[f32], b: &[f32]) -> String {
    let row = (0..a.len().min(b.len()) / 10)
        .find(|&r| !close(&a[r * 10..r * 10 + 10], &b[r * 10..r * 10 + 10]))
        .unwrap_or(0);
    let (ra, rb) = (&a[row * 10..row * 10 + 10], &b[row * 10..row * 10 + 10]);
    format!("image {row}: {ra:?} vs {rb:?}")
}

/// A mutant of `base`: a byte set to a random value, or (one in eight) the file cut short.
fn mutate(base: &[u8], rng: &mut impl Rng) -> (String, Vec<u8>) {
    let mut m = base.to_vec();
    if rng.gen_ratio(1, 8) {
        let cut = rng.gen_range(0..m.len());
        m.truncate(cut);
        (format!("cut at {cut}"), m)
    } else {
        let at = rng.gen_range(0..m.len());
        let v: u8 = rng.gen();
        let old = m[at];
        m[at] = v;
        (format!("byte {at}: {old:#04x} → {v:#04x}"), m)
    }
}

#[test]
fn every_runtime_gives_the_same_verdict_on_every_mutant() {
    let lib = find_ort_library(None, Device::Cpu)
        .expect("ONNX Runtime (scripts/test.sh sets ORT_DYLIB_PATH)");
    let n: usize = std::env::var("STN_FUZZ_MUTANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let seed: u64 = std::env::var("STN_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let test = stn_data::Mnist::load_test(
        &stn_data::DataDir::resolve(Some(&common::mnist_dir())),
        true,
    )
    .unwrap();
    let images = stn_data::normalize(&test.images[..IMAGES * 784]);
    let ck = stn_model::Checkpoint::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/stn.safetensors"),
    )
    .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut refused, mut ran, mut failures, mut garbage) =
        (0usize, 0usize, Vec::new(), Vec::new());
    for opset in [16, 20] {
        let model = stn_onnx::export(
            &ck.params,
            &stn_onnx::ExportOptions {
                opset,
                outputs: vec![stn_onnx::Output::LogProbs],
                metadata: vec![],
            },
        )
        .unwrap();
        let base = stn_onnx::to_bytes(&model);
        for _ in 0..n {
            let (what, bytes) = mutate(&base, &mut rng);
            // Each mutant on a watchdog: a hang is a failure, not a stuck test.
            let (tx, rx) = mpsc::channel();
            let (b, imgs, l) = (bytes.clone(), images.clone(), lib.clone());
            std::thread::spawn(move || {
                let v: Vec<(&str, Verdict)> = runtimes()
                    .iter()
                    .map(|r| (*r, verdict(r, &b, &imgs, &l)))
                    .collect();
                let _ = tx.send(v);
            });
            let Ok(v) = rx.recv_timeout(Duration::from_secs(60)) else {
                failures.push(format!(
                    "opset {opset}, {what}: no verdict within 60 s (a hang)"
                ));
                break;
            };
            let runs: Vec<&Vec<f32>> = v
                .iter()
                .filter_map(|(_, x)| {
                    if let Verdict::Ran(lp) = x {
                        Some(lp)
                    } else {
                        None
                    }
                })
                .collect();
            let panics: Vec<String> = v
                .iter()
                .filter_map(|(r, x)| {
                    if let Verdict::Panicked(m) = x {
                        Some(format!("{r} panicked: {m}"))
                    } else {
                        None
                    }
                })
                .collect();
            let summary = || {
                v.iter()
                    .map(|(r, x)| match x {
                        Verdict::Ran(_) => format!("{r}: ran"),
                        Verdict::Refused(e) => format!("{r}: refused ({e})"),
                        Verdict::Panicked(m) => format!("{r}: PANIC ({m})"),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            if !panics.is_empty() || (!runs.is_empty() && runs.len() != v.len()) {
                failures.push(format!("opset {opset}, {what}: {}", summary()));
            } else if runs.len() == v.len() {
                ran += 1;
                // A weight set to NaN, 1e4 or 1e17 (the trained ones are at most 1.05) makes a
                // model whose float rounding is amplified past any fixed tolerance, or a theta
                // whose sampling points are NaN or ~1e17 pixels away, where ONNX Runtime's
                // GridSample reads other values than ours (and tract's, which runs ours) treat as
                // outside the image. Every runtime still gives the same verdict (it runs); the
                // numbers of such garbage models are reported, not required to agree.
                let absurd = stn_onnx::read_model(&bytes, "mutant.onnx")
                    .map(|m| {
                        m.params
                            .data
                            .iter()
                            .flatten()
                            .any(|w| !w.is_finite() || w.abs() > 1e3)
                    })
                    .unwrap_or(false);
                for (k, lp) in runs.iter().enumerate().skip(1) {
                    if !close(lp, runs[0]) && absurd {
                        garbage.push(format!(
                            "opset {opset}, {what}: {} vs tract: {}",
                            runtimes()[k],
                            worst(lp, runs[0])
                        ));
                    } else if !close(lp, runs[0]) {
                        failures.push(format!(
                            "opset {opset}, {what}: the runtimes ran it and {} disagrees with tract: {}",
                            runtimes()[k],
                            worst(lp, runs[0])
                        ));
                    }
                }
            } else {
                refused += 1;
            }
        }
    }
    eprintln!(
        "{} mutants: {refused} refused by every runtime, {ran} run by every runtime ({} of them with NaN or |w| > 1e3 weights where the runtimes' numbers differ), {} failures",
        2 * n,
        garbage.len(),
        failures.len()
    );
    for g in &garbage {
        eprintln!("  garbage weights: {g}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} mutants:\n{}",
        failures.len(),
        2 * n,
        failures.join("\n")
    );
}

#[test]
fn the_readers_never_panic_on_mutated_or_random_bytes() {
    // The checkpoint and ONNX readers on one-byte mutants and truncations of the real files, and
    // on random bytes: errors, never a panic.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ck = std::fs::read(root.join("models/stn.safetensors")).unwrap();
    let onnx = std::fs::read(root.join("models/stn.onnx")).unwrap();
    let (mut ck_ok, mut onnx_ok) = (0, 0);
    for _ in 0..400 {
        let (_, m) = mutate(&ck, &mut rng);
        ck_ok += stn_model::Checkpoint::from_bytes(&m, "mutant.safetensors").is_ok() as usize;
        let (_, m) = mutate(&onnx, &mut rng);
        onnx_ok += stn_onnx::read_model(&m, "mutant.onnx").is_ok() as usize;
        let len = rng.gen_range(0..4096);
        let random: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        assert!(stn_model::Checkpoint::from_bytes(&random, "random").is_err());
        assert!(stn_onnx::read_model(&random, "random").is_err());
    }
    // Most one-byte mutants land in the weights and still read: the readers are not refusing all.
    assert!(
        ck_ok > 100 && onnx_ok > 100,
        "{ck_ok} checkpoints, {onnx_ok} models read"
    );
}
