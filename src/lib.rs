//! The command-line stage of stn: shared plumbing of the `stn-train`, `stn-export` and `stn-infer`
//! binaries (in `src/bin/`). The top-level `tests/` drive those binaries end to end.

pub mod preprocess;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Runs a CLI body and turns its error into a clear message (with its causes) and exit code 1.
/// Binaries never panic on bad input: every failure comes back here as an error.
pub fn run_main(body: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    match body() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: errors that print their source in their
/// own message (`{path}: {source}`) are not followed by that source again.
pub fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Whether two paths name the same file: the same device and inode when both exist, else the
/// same absolute path (`a/../b` and `./b` alike).
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (absolute(a), absolute(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// `path` made absolute through its directory (which must exist; the file need not): the
/// canonical directory joined with the file name.
fn absolute(path: &Path) -> Option<PathBuf> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(path.file_name()?))
}

/// Refuses outputs that are the same file as an input or as another output, before anything
/// runs: a forgotten argument must not turn a model into a log file. Each entry is the option's
/// name and its path.
pub fn check_outputs<P: AsRef<Path>>(
    inputs: &[(&str, P)],
    outputs: &[(&str, P)],
) -> anyhow::Result<()> {
    for (i, (what, out)) in outputs.iter().enumerate() {
        let out = out.as_ref();
        if let Some((iw, ip)) = inputs.iter().find(|(_, p)| same_file(out, p.as_ref())) {
            anyhow::bail!(
                "{what} {} is the same file as {iw} {}: refusing to write over an input (choose another output path)",
                out.display(),
                ip.as_ref().display()
            );
        }
        if let Some((ow, _)) = outputs[..i]
            .iter()
            .find(|(_, p)| same_file(out, p.as_ref()))
        {
            anyhow::bail!(
                "{what} {} is also {ow}: give each output its own file",
                out.display()
            );
        }
        if out.is_dir() {
            anyhow::bail!("{what} {}: is a directory", out.display());
        }
    }
    Ok(())
}

/// `--runtime`, as stn-infer and stn-serve take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeArg {
    /// tract, with our kernels.
    Tract,
    /// ONNX Runtime.
    Ort,
    /// Our dfdx model in f32.
    Dfdx,
    /// Our dfdx model in f64, the reference.
    #[value(name = "dfdx-f64")]
    DfdxF64,
    /// Our fused CPU forward.
    Fused,
}

impl From<RuntimeArg> for stn_runtime::RuntimeKind {
    fn from(r: RuntimeArg) -> Self {
        use stn_runtime::RuntimeKind as K;
        match r {
            RuntimeArg::Tract => K::Tract,
            RuntimeArg::Ort => K::Ort,
            RuntimeArg::Dfdx => K::Dfdx,
            RuntimeArg::DfdxF64 => K::DfdxF64,
            RuntimeArg::Fused => K::Fused,
        }
    }
}

/// `--device`, as stn-infer and stn-serve take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// The CPU.
    Cpu,
    /// CUDA device 0.
    Cuda,
}

impl From<DeviceArg> for stn_runtime::Device {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Cpu => stn_runtime::Device::Cpu,
            DeviceArg::Cuda => stn_runtime::Device::Cuda,
        }
    }
}

/// `--threads N` bounded by this machine's CPUs (0: all of them): more threads than CPUs only
/// make the kernels' loops wait on each other (1000 threads made inference 80× slower), so a
/// larger N is lowered, with a note on stderr.
pub fn clamp_threads(n: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    if n > cpus {
        eprintln!("note: --threads {n}: this machine has {cpus} CPUs; using {cpus}");
        cpus
    } else {
        n
    }
}

/// A clap parser for a whole number in `[lo, hi]`.
pub fn usize_in(lo: usize, hi: usize) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |s: &str| match s.parse::<usize>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("{s}: expected a whole number from {lo} to {hi}")),
    }
}

/// A clap parser for a finite `f32` in `[lo, hi]` (`lo_open`: `lo` itself excluded); NaN and
/// infinities are refused with the range in the message.
pub fn f32_in(lo: f32, lo_open: bool, hi: f32) -> impl Fn(&str) -> Result<f32, String> + Clone {
    move |s: &str| {
        let v: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
        let above = if lo_open { v > lo } else { v >= lo };
        if v.is_finite() && above && v <= hi {
            Ok(v)
        } else {
            Err(format!(
                "{s} is out of range: expected a number in {}{lo}, {hi}]",
                if lo_open { "(" } else { "[" }
            ))
        }
    }
}

/// The CPU kernels' instruction-set level for this process (`STN_ISA`, else the best the CPU
/// runs), or why `STN_ISA` cannot be honoured (an unknown name, or a level this CPU lacks).
pub fn isa_level() -> anyhow::Result<stn_ops::isa::Level> {
    stn_ops::isa::init().map_err(anyhow::Error::msg)
}

/// `--version`'s text: the package version and the CPU kernels' level (`STN_ISA`'s, or the
/// best this CPU runs), e.g. `0.1.0 (cpu kernels: avx512, 16 f32 lanes)`.
pub fn version() -> &'static str {
    let isa = match stn_ops::isa::init() {
        Ok(l) => format!("cpu kernels: {l}, {} f32 lanes", l.f32_lanes()),
        Err(e) => format!("cpu kernels: {e}"),
    };
    Box::leak(format!("{} ({isa})", env!("CARGO_PKG_VERSION")).into_boxed_str())
}

/// Sizes rayon's global pool (the CPU kernels' parallelism; 0 = one thread per core) and runs
/// `body` on one of its workers. Why on a worker: a parallel loop started from outside the pool
/// hands its work to the pool and sleeps until it is done, two context switches per loop; the
/// network's many small loops made that most of a batch-1 inference. From a worker the loops run
/// in place (and with one thread, without any switch).
pub fn in_pool<T: Send>(
    threads: usize,
    body: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    isa_level()?;
    keep_freed_memory();
    let mut pool = rayon::ThreadPoolBuilder::new().stack_size(8 << 20);
    if threads > 0 {
        pool = pool.num_threads(threads);
    }
    pool.build_global()
        .map_err(|e| anyhow::anyhow!("--threads {threads}: {e}"))?;
    rayon::scope(|_| stn_ops::with_awake_workers(body))
}

/// Tells mimalloc (the binaries' allocator) to keep the memory it frees rather than return it to
/// the kernel a second later. Why: a training step frees and re-allocates the same multi-MB buffers
/// (activations, their copies, gradients); returned pages come back as fresh (huge) pages that the
/// kernel zero-fills on first touch — 8–18% of a training step's CPU time (perf: `clear_page_erms`;
/// page faults per epoch-slice 2,000–3,000 → 400). Peak memory is unchanged: the same buffers are
/// reused.
fn keep_freed_memory() {
    // `mi_option_purge_delay` is entry 15 of mimalloc 3's option enum (libmimalloc-sys 0.1 binds no
    // name for it). Set only where that entry holds its documented default (1000 ms), so another
    // mimalloc cannot have a different option changed by mistake.
    const PURGE_DELAY: i32 = 15;
    extern "C" {
        fn mi_option_get(option: i32) -> std::ffi::c_long;
        fn mi_option_set(option: i32, value: std::ffi::c_long);
    }
    // SAFETY: plain calls into the linked mimalloc (the global allocator), valid at any time.
    unsafe {
        if mi_option_get(PURGE_DELAY) == 1000 {
            mi_option_set(PURGE_DELAY, -1);
        }
    }
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `data` `[rows, cols]` as a NumPy `.npy` (float32, C order), written atomically.
pub fn write_npy(
    path: &std::path::Path,
    data: &[f32],
    rows: usize,
    cols: usize,
) -> std::io::Result<()> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    stn_data::write_atomic(path, &bytes)
}

/// The largest model-spec file read.
const MAX_SPEC_BYTES: u64 = 1 << 20;

/// The network of `--spec`: a preset's name ([`stn_model::PRESETS`]) or a JSON or TOML file.
pub fn load_spec(arg: &str) -> anyhow::Result<stn_model::Network> {
    use anyhow::Context;
    if let Some(spec) = stn_model::ModelSpec::preset(arg) {
        return Ok(stn_model::Network::new(spec)?);
    }
    let path = Path::new(arg);
    if !path.exists() {
        let names: Vec<&str> = stn_model::PRESETS.iter().map(|(n, _)| *n).collect();
        anyhow::bail!(
            "--spec {arg}: neither a preset ({}) nor a file",
            names.join(", ")
        );
    }
    let bytes = stn_data::read_regular(path, MAX_SPEC_BYTES).context("--spec")?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("--spec {arg}: not UTF-8 text (a JSON or TOML model spec)"))?;
    let spec = stn_model::ModelSpec::parse(&text).with_context(|| format!("--spec {arg}"))?;
    stn_model::Network::new(spec).with_context(|| format!("--spec {arg}"))
}

/// A preset as a file to start from: TOML with a header that lists the layer vocabulary.
pub fn spec_file_text(name: &str) -> anyhow::Result<String> {
    let Some(spec) = stn_model::ModelSpec::preset(name) else {
        let list: Vec<String> = stn_model::PRESETS
            .iter()
            .map(|(n, what)| format!("  {n}: {what}"))
            .collect();
        anyhow::bail!(
            "--print-spec {name}: no such preset; the presets are\n{}",
            list.join("\n")
        );
    };
    let what = stn_model::PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, w)| w);
    Ok(format!(
        "# stn model spec: preset '{name}', {what}.\n\
         # Train it with `stn-train --spec FILE`. Layers (PyTorch's semantics):\n\
         #   conv2d (out, kernel, stride = 1, padding = 0), max_pool2d / avg_pool2d (kernel, stride = kernel),\n\
         #   relu, dropout (p = 0.5), dropout2d (p = 0.5), flatten, linear (out).\n\
         # transform.kind: affine (output = [H, W], padding = zeros|border|reflection, align_corners)\n\
         # or none (no localization). names = \"tutorial\" names parameters as the tutorial's Net;\n\
         # leave it out for nn.Sequential names (localization.<i>, classifier.<i>).\n\
         # input.mean / input.std: per channel; leave both out to compute them from the training images.\n\n{}",
        spec.to_toml()
    ))
}

/// Whether `path` lies inside the directory `dir` (both made absolute; `path` need not exist).
pub fn is_inside(path: &Path, dir: &Path) -> bool {
    let abs = std::fs::canonicalize(path).ok().or_else(|| absolute(path));
    match (abs, std::fs::canonicalize(dir)) {
        (Some(p), Ok(d)) => p.starts_with(&d),
        _ => false,
    }
}

/// The sampling grid of each of `n` images (`[N, C, H, W]`, normalised) as lines over the input:
/// where the spatial transformer takes its samples from, for `--visualize` (the head's parameters
/// computed by the fused forward; empty without a transformer).
pub fn sampling_lines(
    params: &stn_model::Params,
    images: &[f32],
    n: usize,
) -> Vec<stn_data::Polylines> {
    let net = &params.net;
    let (Some(smp), Ok(fused)) = (
        net.plan().transform.sampler(),
        stn_model::FusedNet::<f32>::new(params),
    ) else {
        return vec![];
    };
    let out = fused.forward_with(images, n, false);
    let p = net.plan().transform.n_params();
    let [_, h, w] = net.input_dims();
    out.theta
        .chunks(p.max(1))
        .filter_map(|t| stn_model::sampling_grid(net, t))
        .map(|g| stn_data::grid_lines(&g, smp.output, [h, w], smp.align_corners))
        .collect()
}

/// Normalised planar images (`plane` values per channel, channels cycling per plane) back to bytes
/// with the per-channel `mean` and `std`: for pictures.
pub fn denormalize_planes(v: &[f32], plane: usize, mean: &[f32], std: &[f32]) -> Vec<u8> {
    let c = mean.len().max(1);
    v.chunks(plane.max(1))
        .enumerate()
        .flat_map(|(i, p)| {
            let (m, s) = (mean[i % c], std[i % c]);
            p.iter()
                .map(move |&x| ((x * s + m) * 255.0).round().clamp(0.0, 255.0) as u8)
        })
        .collect()
}

/// What `--data` holds (stn-train's and stn-infer's `--dataset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetKind {
    /// An image folder when `DIR/<split>` is a folder, else MNIST.
    Auto,
    /// The four MNIST files, verified (downloaded when missing).
    Mnist,
    /// Any MNIST-format set of IDX files, not verified.
    Idx,
    /// torchvision's `ImageFolder` layout.
    ImageFolder,
}

impl DatasetKind {
    /// `Auto` decided for `dir`, by whether it holds the `split` folder (`train` for training,
    /// `test` for inference) of an image folder.
    pub fn resolve(self, dir: &Path, split: &str) -> DatasetKind {
        match self {
            DatasetKind::Auto if dir.join(split).is_dir() => DatasetKind::ImageFolder,
            DatasetKind::Auto => DatasetKind::Mnist,
            d => d,
        }
    }
}
