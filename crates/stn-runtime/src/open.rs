//! Opening a model on the runtime a user names, with the rules every binary shares: which
//! runtimes have a CUDA path, and what falling back to the CPU means (only when asked, and said).

use std::path::PathBuf;

use crate::{
    find_ort_library, Device, DfdxRunner, FusedRunner, OrtRunner, Runner, RuntimeError, TractRunner,
};

/// A runtime, as `--runtime` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Our fused CPU forward ([`FusedRunner`]).
    Fused,
    /// tract, with our kernels ([`TractRunner`]).
    Tract,
    /// ONNX Runtime ([`OrtRunner`]).
    Ort,
    /// Our dfdx model in f32 ([`DfdxRunner`]).
    Dfdx,
    /// Our dfdx model in f64, the reference.
    DfdxF64,
}

impl RuntimeKind {
    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Fused => "fused",
            RuntimeKind::Tract => "tract",
            RuntimeKind::Ort => "ort",
            RuntimeKind::Dfdx => "dfdx",
            RuntimeKind::DfdxF64 => "dfdx-f64",
        }
    }

    /// Whether it can run on a CUDA device (ONNX Runtime's provider, dfdx's device).
    pub fn has_cuda(self) -> bool {
        matches!(self, RuntimeKind::Ort | RuntimeKind::Dfdx)
    }
}

/// How to open a runner.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// The runtime.
    pub runtime: RuntimeKind,
    /// Where it runs.
    pub device: Device,
    /// ONNX Runtime's intra-op threads (0: its default). Our kernels use rayon's global pool.
    pub threads: usize,
    /// ONNX Runtime's library, if not the one found by default.
    pub ort_lib: Option<PathBuf>,
    /// On `Device::Cuda`, run on the CPU (and say so) when the runtime has no CUDA path or CUDA
    /// does not start, instead of failing.
    pub allow_cpu_fallback: bool,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            runtime: RuntimeKind::Fused,
            device: Device::Cpu,
            threads: 0,
            ort_lib: None,
            allow_cpu_fallback: false,
        }
    }
}

/// An opened runner, and why it is on the CPU when CUDA was asked for and it fell back.
pub struct Opened {
    /// The runner.
    pub runner: Box<dyn Runner>,
    /// The fallback, said: to be shown to the user.
    pub fallback: Option<String>,
}

/// The runner of `bytes` (the ONNX file `path`) that `opts` asks for. On `Device::Cuda` a
/// runtime with no CUDA path, or whose CUDA does not start, is an error unless
/// `opts.allow_cpu_fallback`: a user who asked for the GPU is not put on the CPU unasked.
pub fn open_runner(opts: &RunnerOptions, bytes: &[u8], path: &str) -> Result<Opened, RuntimeError> {
    let cuda = opts.device == Device::Cuda;
    let name = opts.runtime.name();
    let mut fallback = None;
    if cuda && !opts.runtime.has_cuda() {
        if !opts.allow_cpu_fallback {
            return Err(RuntimeError::Load {
                runtime: name,
                path: path.into(),
                what: "--device cuda: this runtime runs on the CPU only (the CUDA runtimes are \
                       ort and dfdx)"
                    .into(),
            });
        }
        fallback = Some(format!(
            "--device cuda: {name} runs on the CPU only; running it on the CPU"
        ));
    }
    let on_cpu = |e: RuntimeError| format!("{e}; --allow-cpu-fallback: running {name} on the CPU");
    let runner: Box<dyn Runner> = match opts.runtime {
        RuntimeKind::Fused => Box::new(FusedRunner::load(bytes, path)?),
        RuntimeKind::Tract => Box::new(TractRunner::load(bytes, path)?),
        RuntimeKind::DfdxF64 => Box::new(DfdxRunner::load(bytes, path, true)?),
        RuntimeKind::Dfdx if cuda => match DfdxRunner::load_cuda(bytes, path, 0) {
            Ok(r) => Box::new(r),
            Err(e) if opts.allow_cpu_fallback => {
                fallback = Some(on_cpu(e));
                Box::new(DfdxRunner::load(bytes, path, false)?)
            }
            Err(e) => return Err(e),
        },
        RuntimeKind::Dfdx => Box::new(DfdxRunner::load(bytes, path, false)?),
        RuntimeKind::Ort => {
            let lib = find_ort_library(opts.ort_lib.as_deref(), opts.device)?;
            match OrtRunner::load(bytes, path, &lib, opts.device, opts.threads) {
                Ok(r) => Box::new(r),
                Err(e) if cuda && opts.allow_cpu_fallback => {
                    fallback = Some(on_cpu(e));
                    // The CPU library if there is one apart from the CUDA one, else the same.
                    let lib = find_ort_library(opts.ort_lib.as_deref(), Device::Cpu).unwrap_or(lib);
                    Box::new(OrtRunner::load(
                        bytes,
                        path,
                        &lib,
                        Device::Cpu,
                        opts.threads,
                    )?)
                }
                Err(e) => return Err(e),
            }
        }
    };
    Ok(Opened { runner, fallback })
}
