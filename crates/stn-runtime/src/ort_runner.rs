use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::value::Tensor;

use crate::{check_batch, RunOutput, Runner, RuntimeError};

/// Where ONNX Runtime runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    Cpu,
    /// The CUDA execution provider, TF32 off (results stay at the float32 noise floor).
    Cuda,
}

/// The library `scripts/fetch-onnxruntime.sh` writes, for a given `--gpu` flag.
const FETCHED: [&str; 2] = [
    "onnxruntime/libonnxruntime.so.1.32.0",
    "onnxruntime-gpu/libonnxruntime.so.1.31.1",
];

/// The ONNX Runtime library to load: `explicit` (`--ort-lib`), else `ORT_DYLIB_PATH`, else the
/// one `scripts/fetch-onnxruntime.sh` fetched into `target/` (found from the executable's place in
/// `target/<profile>/`, or the current directory's `target/`).
pub fn find_ort_library(explicit: Option<&Path>, device: Device) -> Result<PathBuf, RuntimeError> {
    let how = "fetch it with scripts/fetch-onnxruntime.sh (add --gpu for CUDA), or name it with --ort-lib or ORT_DYLIB_PATH";
    let missing = |p: &Path, from: &str| RuntimeError::Load {
        runtime: "ort",
        path: p.display().to_string(),
        what: format!("ONNX Runtime library not found ({from}); {how}"),
    };
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(missing(p, "--ort-lib"))
        };
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(missing(&p, "ORT_DYLIB_PATH"))
        };
    }
    let rel = FETCHED[(device == Device::Cuda) as usize];
    let mut candidates = vec![PathBuf::from("target").join(rel)];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.parent().and_then(|p| p.parent()) {
            candidates.insert(0, target.join(rel));
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| missing(&candidates[0], "not given, and not fetched"))
}

static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads the library once per process.
fn init(lib: &Path) -> Result<&'static ort::environment::Environment, RuntimeError> {
    let r = ENV.get_or_init(|| {
        ort::init_from(lib)
            .map_err(|e| format!("{e}"))?
            .with_name("stn")
            .build()
            .map_err(|e| format!("{e}"))
    });
    r.as_ref().map_err(|e| RuntimeError::Load {
        runtime: "ort",
        path: lib.display().to_string(),
        what: format!("cannot load ONNX Runtime ({e}); this project needs version 1.31 or later, as scripts/fetch-onnxruntime.sh fetches"),
    })
}

/// The model on ONNX Runtime.
pub struct OrtRunner {
    session: Session,
    dims: [usize; 3],
    warped: bool,
    transform: Option<String>,
    device: Device,
}

impl OrtRunner {
    /// The model (`bytes`, from `path`) on ONNX Runtime loaded from `lib`, on `device`, with
    /// `threads` intra-op threads (0: ONNX Runtime's default); the graph is checked to be the seed
    /// network first ([`stn_onnx::read_model`]).
    pub fn load(
        bytes: &[u8],
        path: &str,
        lib: &Path,
        device: Device,
        threads: usize,
    ) -> Result<Self, RuntimeError> {
        let m = stn_onnx::read_model(bytes, path)?;
        let env = init(lib)?;
        let err = |e: ort::Error| RuntimeError::Load {
            runtime: "ort",
            path: path.into(),
            what: e.to_string(),
        };
        // All graph optimisations, as onnxruntime-Python's default.
        let mut b = Session::builder(env)
            .map_err(err)?
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
            .map_err(|e| err(e.into()))?;
        if threads > 0 {
            b = b.with_intra_threads(threads).map_err(|e| err(e.into()))?;
        }
        if device == Device::Cuda {
            // ort falls back to the CPU silently when the CUDA provider cannot register: make that
            // an error, so a figure labelled ort-cuda is one.
            let cuda = ort::ep::CUDA::default()
                .with_tf32(false)
                .build()
                .error_on_failure();
            b = b.with_execution_providers([cuda]).map_err(|e| RuntimeError::Load {
                runtime: "ort",
                path: path.into(),
                what: format!(
                    "--device cuda: the CUDA execution provider did not register ({e}); it needs an NVIDIA GPU and the \
                     onnxruntime-gpu library (scripts/fetch-onnxruntime.sh --gpu)"
                ),
            })?;
        }
        let session = b.commit_from_memory(bytes).map_err(err)?;
        Ok(OrtRunner {
            session,
            dims: m.params.net.input_dims(),
            warped: m.outputs.iter().any(|o| o == "warped"),
            transform: crate::transform_output(&m.outputs).map(str::to_string),
            device,
        })
    }
}

impl Runner for OrtRunner {
    fn name(&self) -> String {
        match self.device {
            Device::Cpu => "ort".into(),
            Device::Cuda => "ort-cuda".into(),
        }
    }
    fn input_dims(&self) -> [usize; 3] {
        self.dims
    }
    fn run(&mut self, images: &[f32], n: usize) -> Result<RunOutput, RuntimeError> {
        check_batch("ort", images, n, self.dims)?;
        let [c, h, w] = self.dims;
        let err = |e: ort::Error| RuntimeError::Run {
            runtime: "ort",
            what: e.to_string(),
        };
        let input = Tensor::from_array(([n, c, h, w], images.to_vec())).map_err(err)?;
        let out = self
            .session
            .run(ort::inputs!["input" => input])
            .map_err(err)?;
        let get = |name: &str| -> Result<Vec<f32>, RuntimeError> {
            let v = out.get(name).ok_or_else(|| RuntimeError::Run {
                runtime: "ort",
                what: format!("no output '{name}'"),
            })?;
            Ok(v.try_extract_tensor::<f32>().map_err(err)?.1.to_vec())
        };
        Ok(RunOutput {
            log_probs: get("log_probs")?,
            transform: self.transform.as_deref().map(get).transpose()?,
            warped: if self.warped {
                Some(get("warped")?)
            } else {
                None
            },
        })
    }
}
