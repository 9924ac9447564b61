#![warn(missing_docs)]
//! stn's serving stage: `stn-serve`'s library. An Open Inference Protocol (KServe v2, as Triton
//! and KServe implement it) HTTP/REST server over stn's runners — JSON and binary tensors,
//! dynamic batching per model version, Prometheus metrics, graceful shutdown — and the writer of
//! Triton model repositories that `stn-export --triton-repo` uses.
//!
//! The pieces, in the order a request meets them: [`http`] (routes, limits, shutdown),
//! [`protocol`] (the request and response bodies), [`repository`] (which models and versions),
//! [`batcher`] (the queue and the worker thread that owns each model's runner), [`model`] (what a
//! model's tensors are).

pub mod batcher;
pub mod error;
pub mod heap;
pub mod http;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod repository;
pub mod triton;

pub use batcher::BatchOptions;
pub use error::ApiError;
pub use http::{serve, Limits};
pub use metrics::Metrics;
pub use model::{ModelInfo, TensorInfo};
pub use repository::{scan_repository, ModelSet, ModelSource};
pub use stn_runtime::{RunnerOptions, RuntimeKind};
pub use triton::{config_pbtxt, write_repository, Placement, TritonOptions};

/// Why a server could not start, or a repository not be written; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A model repository that is not one, or cannot be written.
    #[error("{path}: {what}")]
    Repository {
        /// The repository directory.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// A model that does not load.
    #[error("{path}: {what}")]
    Model {
        /// The model file.
        path: String,
        /// What is wrong.
        what: String,
    },
}
