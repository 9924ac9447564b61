//! stn-infer: runs an ONNX model of an stn network on tract, ONNX Runtime, our dfdx model or its
//! fused CPU forward.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use stn::{DeviceArg, RuntimeArg};
use stn_data::{DataDir, Mnist, MNIST_MEAN, MNIST_STD};
use stn_runtime::{open_runner, Runner, RunnerOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run an ONNX model of an stn network (stn-export's of any model spec, or PyTorch's export of the
/// seed) on tract, ONNX Runtime or our own model (dfdx, fused): accuracy and speed on a test set
/// (--data: MNIST, another IDX set, or an image folder's test/), the class of image files
/// (--images), or the agreement between runtimes (--compare).
#[derive(Parser, Debug)]
#[command(version = stn::version())]
struct Args {
    /// The runtime: tract, ort (ONNX Runtime), dfdx (our model, from the file's initializers) or
    /// fused (the same model's forward fused per image on our CPU kernels: the fastest on a CPU)
    #[arg(long, default_value = "tract", value_name = "NAME")]
    runtime: RuntimeArg,
    /// cpu, or cuda (ONNX Runtime's CUDA execution provider, TF32 off)
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: DeviceArg,
    /// With --device cuda: warn and run on the CPU when CUDA is not available, instead of failing
    #[arg(long)]
    allow_cpu_fallback: bool,
    /// The ONNX model
    #[arg(long, default_value = "models/stn.onnx", value_name = "PATH")]
    model: PathBuf,
    /// Threads of ONNX Runtime and of our kernels (dfdx, fused, tract's Conv, MaxPool and GridSample);
    /// 0: all cores; more than the cores is lowered to them
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// Images per run [1 to 100000]
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = stn::usize_in(1, 100_000))]
    batch: usize,
    /// Evaluate on the test set in DIR: MNIST's t10k files, another IDX set's (--dataset idx), or an
    /// image folder's DIR/test/<class>/* [default: $STN_DATA, else data/mnist]
    #[arg(long, value_name = "DIR", conflicts_with = "images")]
    data: Option<PathBuf>,
    /// What --data holds: mnist, idx, image-folder, or auto (image-folder when DIR/test is a
    /// folder, else mnist)
    #[arg(long, default_value = "auto", value_name = "KIND")]
    dataset: stn::DatasetKind,
    /// Never download MNIST
    #[arg(long)]
    offline: bool,
    /// Classify these image files (PNG, PGM/PPM, JPEG; any size): for a model of 28×28 grey digits
    /// prepared like MNIST (unless --raw), for any other model converted to its channels and
    /// resized to its input as an image folder's images are
    #[arg(long, num_args = 1.., value_name = "FILE")]
    images: Vec<PathBuf>,
    /// The images are already 28×28 MNIST-like digits (light on black): only normalise them
    #[arg(long)]
    raw: bool,
    /// Run each of these runtimes on the same inputs and report their agreement, e.g.
    /// tract,ort,dfdx,fused (dfdx-f64: our model in float64, the reference)
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    compare: Vec<RuntimeArg>,
    /// Write the first 32 inputs beside their STN-warped images as a PNG (the model needs a `warped`
    /// output: stn-export --outputs log_probs,warped)
    #[arg(long, value_name = "FILE.png")]
    visualize: Option<PathBuf>,
    /// Write every input's log-probs as a float32 array [N, classes] (NumPy .npy)
    #[arg(long, value_name = "FILE.npy")]
    save_logprobs: Option<PathBuf>,
    /// ONNX Runtime's shared library [default: $ORT_DYLIB_PATH, else what scripts/fetch-onnxruntime.sh fetched]
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// Run the first N batches once, untimed, before the timed pass: a runtime's first runs
    /// allocate its buffers and arenas (onnxruntime-Python's benchmark here warms up 5) [0 to 1000]
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = stn::usize_in(0, 1000))]
    warmup: usize,
    /// Print one JSON object with the figures as the last line of stdout
    #[arg(long)]
    json: bool,
}

/// The runner `which` of the model `bytes`, as `--device`, `--threads`, `--ort-lib` and
/// `--allow-cpu-fallback` ask (a fallback to the CPU is said on stderr).
fn load(args: &Args, which: RuntimeArg, bytes: &[u8]) -> anyhow::Result<Box<dyn Runner>> {
    let opts = RunnerOptions {
        runtime: which.into(),
        device: args.device.into(),
        threads: args.threads,
        ort_lib: args.ort_lib.clone(),
        allow_cpu_fallback: args.allow_cpu_fallback,
    };
    let opened = open_runner(&opts, bytes, &args.model.display().to_string())?;
    if let Some(why) = opened.fallback {
        eprintln!("warning: {why}");
    }
    Ok(opened.runner)
}

/// Every image's log-probs, `batch` at a time; returns them with the seconds spent in the runner
/// and the number of runs. The first `warmup` batches run once untimed before.
fn run_all(
    r: &mut dyn Runner,
    images: &[f32],
    n: usize,
    batch: usize,
    warmup: usize,
) -> anyhow::Result<(Vec<f32>, f64, usize)> {
    let px: usize = r.input_dims().iter().product();
    for start in (0..n).step_by(batch.max(1)).take(warmup) {
        let k = batch.max(1).min(n - start);
        r.run(&images[start * px..(start + k) * px], k)?;
    }
    let mut out = Vec::new();
    let mut secs = 0.0;
    let mut runs = 0;
    for start in (0..n).step_by(batch.max(1)) {
        let k = batch.max(1).min(n - start);
        let t0 = Instant::now();
        let o = r.run(&images[start * px..(start + k) * px], k)?;
        secs += t0.elapsed().as_secs_f64();
        runs += 1;
        out.extend(o.log_probs);
    }
    Ok((out, secs, runs))
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |a, (i, &v)| if v > row[a] { i } else { a })
}

/// numpy's allclose(rtol=1e-5, atol=1e-5) and friends, for one pair of runtimes' `[N, classes]`.
fn compare(a: &[f32], b: &[f32], classes: usize) -> serde_json::Value {
    let (mut max_abs, mut max_rel, mut sum, mut close) = (0f64, 0f64, 0f64, true);
    for (&x, &y) in a.iter().zip(b) {
        let d = (x as f64 - y as f64).abs();
        max_abs = max_abs.max(d);
        max_rel = max_rel.max(d / (y.abs() as f64).max(1.0));
        sum += d;
        close &= d <= 1e-5 + 1e-5 * (y as f64).abs();
    }
    let rows = a.len() / classes;
    let agree = a
        .chunks(classes)
        .zip(b.chunks(classes))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    serde_json::json!({
        "max_abs_diff": max_abs, "max_rel_diff": max_rel, "mean_abs_diff": sum / a.len().max(1) as f64,
        "argmax_agree": agree as f64 / rows.max(1) as f64, "allclose": close,
    })
}

fn main() -> ExitCode {
    stn::run_main(|| {
        let mut args = Args::parse();
        if args.compare.len() == 1 {
            bail!("--compare {}: name two or more runtimes to compare, e.g. --compare tract,ort,fused (or run one with --runtime)", format!("{:?}", args.compare[0]).to_lowercase());
        }
        // Outputs never over an input: the model, the images, the data, the ORT library.
        let data_dir = DataDir::resolve(args.data.as_deref());
        let dataset = args.dataset.resolve(&data_dir.dir, "test");
        let mut inputs: Vec<(&str, PathBuf)> = vec![("--model", args.model.clone())];
        inputs.extend(args.images.iter().map(|p| ("--images", p.clone())));
        if args.images.is_empty() {
            inputs.extend(
                stn_data::mnist_paths(&data_dir.dir)
                    .into_iter()
                    .map(|p| ("the MNIST file", p)),
            );
        }
        if let Some(p) = &args.ort_lib {
            inputs.push(("--ort-lib", p.clone()));
        }
        let outputs: Vec<(&str, PathBuf)> = [
            ("--save-logprobs", &args.save_logprobs),
            ("--visualize", &args.visualize),
        ]
        .into_iter()
        .filter_map(|(w, p)| p.clone().map(|p| (w, p)))
        .collect();
        stn::check_outputs(&inputs, &outputs)?;
        if args.images.is_empty() && dataset == stn::DatasetKind::ImageFolder {
            for (what, p) in &outputs {
                let root = data_dir.dir.join("test");
                if stn::is_inside(p, &root) {
                    bail!(
                        "{what} {}: inside the image folder's test/ ({}); write it elsewhere",
                        p.display(),
                        root.display()
                    );
                }
            }
        }
        for (what, p) in &outputs {
            if p.parent()
                .is_some_and(|d| !d.as_os_str().is_empty() && !d.is_dir())
            {
                bail!("{what} {}: its directory does not exist", p.display());
            }
        }
        args.threads = stn::clamp_threads(args.threads);
        let threads = args.threads;
        stn::in_pool(threads, move || {
            let bytes = stn_data::read_regular(&args.model, stn_onnx::MAX_MODEL_BYTES)
                .context("--model")?;
            let meta = stn_onnx::read_model(&bytes, &args.model.display().to_string())?;
            let bad = meta.params.non_finite();
            if !bad.is_empty() {
                eprintln!(
                    "warning: {}: parameters {} hold NaN or infinite values; its outputs are garbage",
                    args.model.display(),
                    bad.join(", ")
                );
            }
            let main = if args.compare.is_empty() {
                args.runtime
            } else {
                args.compare[0]
            };
            let mut first = load(&args, main, &bytes)?;
            // Every runtime of --compare is loaded before any runs: one that cannot load fails
            // the command at once, not after the others' work.
            let mut others = Vec::new();
            for &which in args.compare.iter().skip(1) {
                others.push(load(&args, which, &bytes)?);
            }
            let dims = first.input_dims();
            let [channels, h, w] = dims;
            let plane = h * w;
            let classes = meta.params.net.plan().classes;
            // The normalisation: the spec's (per channel); a file without one, MNIST's.
            let (mean, std): (Vec<f32>, Vec<f32>) = match meta.params.net.spec().normalization() {
                Some((m, s)) => (m.to_vec(), s.to_vec()),
                None => (vec![MNIST_MEAN; channels], vec![MNIST_STD; channels]),
            };
            let mnist_digits = dims == [1, 28, 28];
            // The class names an image-folder model carries (stn.classes).
            let class_names: Option<Vec<String>> = meta
                .meta("stn.classes")
                .and_then(|v| serde_json::from_str(v).ok())
                .filter(|v: &Vec<String>| v.len() <= classes);

            // Inputs: image files, or a test set.
            let (images, labels, names): (Vec<f32>, Option<Vec<u8>>, Vec<String>) = if !args
                .images
                .is_empty()
            {
                if args.raw && !mnist_digits {
                    bail!("--raw: the model takes {channels}×{h}×{w} images, --raw is for 28×28 grey digits");
                }
                let mut px = Vec::new();
                for f in &args.images {
                    let bytes: Vec<u8> = if mnist_digits {
                        // The error names the file.
                        let img = stn::preprocess::read_grey(f, args.raw).context("--images")?;
                        let d = if args.raw {
                            if img.dimensions() != (28, 28) {
                                bail!(
                                    "--images {} --raw: {}×{} pixels, --raw needs 28×28",
                                    f.display(),
                                    img.width(),
                                    img.height()
                                );
                            }
                            img
                        } else {
                            stn::preprocess::mnist_like(&img)
                        };
                        if d.pixels().all(|p| p[0] == 0) {
                            eprintln!("warning: --images {}: no digit found (the image is blank); it is classified as an empty image", f.display());
                        }
                        d.into_raw()
                    } else {
                        stn_data::prepare_image(f, dims).context("--images")?
                    };
                    px.extend(stn_data::normalize_planes(&bytes, plane, &mean, &std));
                }
                (
                    px,
                    None,
                    args.images
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect(),
                )
            } else if dataset == stn::DatasetKind::ImageFolder {
                let (test, found) = stn_data::ImageFolder::split(
                    &data_dir.dir,
                    "test",
                    dims,
                    class_names.as_deref(),
                )?;
                if found.len() > classes {
                    bail!(
                        "{}: {} class folders, the model has {classes} classes",
                        data_dir.dir.join("test").display(),
                        found.len()
                    );
                }
                (
                    stn_data::normalize_planes(&test.images, plane, &mean, &std),
                    Some(test.labels),
                    vec![],
                )
            } else {
                let test = if dataset == stn::DatasetKind::Idx {
                    Mnist::load_idx(&data_dir.dir)?.test
                } else {
                    Mnist::load_test(&data_dir, args.offline)?
                };
                if [1, test.rows, test.cols] != dims {
                    bail!(
                        "the model takes {channels}×{h}×{w} inputs, the test set is 1×{}×{}",
                        test.rows,
                        test.cols
                    );
                }
                if let Some(&l) = test.labels.iter().max().filter(|&&l| l as usize >= classes) {
                    bail!("the test set has label {l}, the model {classes} classes");
                }
                let x = stn_data::normalize_planes(&test.images, plane, &mean, &std);
                (x, Some(test.labels), vec![])
            };
            let n = images.len() / (channels * plane);
            if args.visualize.is_some() && !meta.outputs.iter().any(|o| o == "warped") {
                bail!("--visualize: {} has no `warped` output (export it with --outputs log_probs,warped)", args.model.display());
            }

            if !args.compare.is_empty() {
                let mut results: Vec<(String, Vec<f32>, f64)> = Vec::new();
                let (lp, secs, _) = run_all(first.as_mut(), &images, n, args.batch, args.warmup)?;
                results.push((first.name(), lp, secs));
                for mut r in others {
                    let (lp, secs, _) = run_all(r.as_mut(), &images, n, args.batch, args.warmup)?;
                    results.push((r.name(), lp, secs));
                }
                let mut pairs = Vec::new();
                for i in 0..results.len() {
                    for j in i + 1..results.len() {
                        let mut c = compare(&results[i].1, &results[j].1, classes);
                        c["a"] = results[i].0.clone().into();
                        c["b"] = results[j].0.clone().into();
                        println!(
                        "{:>9} vs {:<9} max |Δ| {:.2e}  mean |Δ| {:.2e}  argmax agree {:.4}  allclose(1e-5) {}",
                        results[i].0, results[j].0, c["max_abs_diff"].as_f64().unwrap_or(f64::NAN),
                        c["mean_abs_diff"].as_f64().unwrap_or(f64::NAN), c["argmax_agree"].as_f64().unwrap_or(0.0), c["allclose"]
                    );
                        pairs.push(c);
                    }
                }
                if args.json {
                    let speeds: serde_json::Map<String, serde_json::Value> = results
                        .iter()
                        .map(|(name, _, s)| (name.clone(), (n as f64 / s).into()))
                        .collect();
                    println!(
                        "{}",
                        serde_json::json!({"images": n, "model": args.model, "batch": args.batch, "img_per_s": speeds, "pairs": pairs})
                    );
                }
                return Ok(());
            }

            let (lp, secs, runs) = run_all(first.as_mut(), &images, n, args.batch, args.warmup)?;
            if let Some(path) = &args.visualize {
                let Some([ho, wo]) = meta.params.net.spec().transform.output() else {
                    bail!(
                        "--visualize: {} has no spatial transformer",
                        args.model.display()
                    );
                };
                let k = n.min(32);
                let len = channels * plane;
                let out = first.run(&images[..k * len], k)?;
                let Some(warped) = out.warped else {
                    bail!("--visualize: {} has no `warped` output (export it with --outputs log_probs,warped)", args.model.display());
                };
                let before = stn::denormalize_planes(&images[..k * len], plane, &mean, &std);
                let after = stn::denormalize_planes(&warped, ho * wo, &mean, &std);
                let l: Vec<&[u8]> = before.chunks(len).collect();
                let r: Vec<&[u8]> = after.chunks(channels * ho * wo).collect();
                // The sampling grid over each input, in red: where the transformer looked.
                let lines = stn::sampling_lines(&meta.params, &images[..k * len], k);
                stn_data::side_by_side_with_lines_png(
                    &l,
                    dims,
                    &lines,
                    &r,
                    [channels, ho, wo],
                    8,
                    path,
                )
                .with_context(|| format!("--visualize {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            if let Some(p) = &args.save_logprobs {
                stn::write_npy(p, &lp, n, classes)
                    .with_context(|| format!("--save-logprobs {}", p.display()))?;
            }
            let mut summary = serde_json::json!({
                "runtime": first.name(), "model": args.model, "images": n, "batch": args.batch,
                "threads": if main == RuntimeArg::Tract { 1 } else if args.threads == 0 { rayon::current_num_threads() } else { args.threads },
                "img_per_s": n as f64 / secs, "batch_latency_ms": 1e3 * secs / runs as f64,
                "isa": stn_ops::isa::level().name(),
            });
            match &labels {
                Some(labels) => {
                    let correct = lp
                        .chunks(classes)
                        .zip(labels)
                        .filter(|(row, &y)| argmax(row) == y as usize)
                        .count();
                    println!(
                    "{}: {correct}/{n} correct ({:.2}%), {:.0} images/s, {:.3} ms per batch of {}",
                    first.name(),
                    100.0 * correct as f64 / n as f64,
                    n as f64 / secs,
                    1e3 * secs / runs as f64,
                    args.batch
                );
                    summary["correct"] = correct.into();
                    summary["accuracy"] = (correct as f64 / n as f64).into();
                }
                None => {
                    let mut files = Vec::new();
                    for (name, row) in names.iter().zip(lp.chunks(classes)) {
                        let d = argmax(row);
                        let label = class_names.as_ref().and_then(|c| c.get(d));
                        match label {
                            Some(l) => println!("{name}: {l} (class {d}, p = {:.3})", row[d].exp()),
                            None => println!("{name}: {d} (p = {:.3})", row[d].exp()),
                        }
                        let mut p = serde_json::json!({
                            "file": name, "class": d, "digit": d, "probability": row[d].exp()
                        });
                        if let Some(l) = label {
                            p["label"] = l.clone().into();
                        }
                        files.push(p);
                    }
                    summary["predictions"] = files.into();
                }
            }
            if args.json {
                println!("{summary}");
            }
            Ok(())
        })
    })
}
