#![warn(missing_docs)]
//! One [`Runner`] trait over the runtimes of the same ONNX model: [`TractRunner`] (tract, with our
//! Conv, MaxPool and GridSample kernels in its op table), [`OrtRunner`] (ONNX Runtime through
//! `ort`, loaded at run time), [`DfdxRunner`] (our dfdx model, read from the ONNX file's
//! initializers; in f32, or f64 as the reference) and [`FusedRunner`] (the same model's inference
//! forward fused per image on our CPU kernels, without dfdx's tensors).

mod dfdx_runner;
mod fused_runner;
mod open;
mod ort_runner;
mod tract_affine_grid;
mod tract_conv;
mod tract_eval;
mod tract_grid_sample;
mod tract_log_softmax;
mod tract_max_pool;
mod tract_runner;

pub use dfdx_runner::DfdxRunner;
pub use fused_runner::FusedRunner;
pub use open::{open_runner, Opened, RunnerOptions, RuntimeKind};
pub use ort_runner::{find_ort_library, Device, OrtRunner};
pub use tract_runner::{register_tract_ops, TractRunner};

/// What a runner computes for a batch `[N, C, H, W]`.
#[derive(Debug, Clone, Default)]
pub struct RunOutput {
    /// `[N, classes]`
    pub log_probs: Vec<f32>,
    /// `[N, P]` when the model has a `theta` or `transform` output: the transform head's
    /// parameters (for the affine heads the 2×3 maps row by row, `theta [N, 2, 3]`).
    pub transform: Option<Vec<f32>>,
    /// `[N, C, Ho, Wo]` when the model has a `warped` output (the STN's images).
    pub warped: Option<Vec<f32>>,
}

/// The graph's name of the transform head's parameters, if it is one of `outputs`.
pub(crate) fn transform_output(outputs: &[String]) -> Option<&str> {
    outputs
        .iter()
        .map(String::as_str)
        .find(|o| *o == "theta" || *o == "transform")
}

/// What can go wrong loading or running a model; each names the runtime and the file.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime could not load the model (or its library).
    #[error("{runtime}: {path}: {what}")]
    Load {
        /// `tract`, `ort`, `dfdx` or `fused`.
        runtime: &'static str,
        /// The model file (or library) concerned.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// A run failed (a batch of the wrong size, the runtime's own error).
    #[error("{runtime}: {what}")]
    Run {
        /// The runtime.
        runtime: &'static str,
        /// What is wrong.
        what: String,
    },
    /// The file is not an ONNX model of the seed network.
    #[error(transparent)]
    Onnx(#[from] stn_onnx::OnnxError),
}

/// A loaded model on one runtime.
pub trait Runner {
    /// `tract`, `ort`, `ort-cuda`, `dfdx`, `dfdx-f64`, `dfdx-cuda` or `fused`.
    fn name(&self) -> String;
    /// One input image's `[C, H, W]` (`[1, 28, 28]` for MNIST).
    fn input_dims(&self) -> [usize; 3];
    /// Runs `n` normalised images (`n · C · H · W` values).
    fn run(&mut self, images: &[f32], n: usize) -> Result<RunOutput, RuntimeError>;
}

/// Checks a batch's length against the model's input.
pub(crate) fn check_batch(
    runtime: &'static str,
    images: &[f32],
    n: usize,
    [c, h, w]: [usize; 3],
) -> Result<(), RuntimeError> {
    if n == 0 || Some(images.len()) != n.checked_mul(c * h * w) {
        return Err(RuntimeError::Run {
            runtime,
            what: format!(
                "{} values for {n} images of {c}×{h}×{w} (the model's input is [N, {c}, {h}, {w}])",
                images.len()
            ),
        });
    }
    Ok(())
}
