#![warn(missing_docs)]
//! ONNX for stn: the seed network written as an ONNX graph with prost (schema: `proto/onnx.proto`,
//! wire-compatible with the official one), and ONNX models read back into the dfdx model.
//!
//! * [`export`]: opset 16 (the affine grid decomposed into a constant base grid, Transpose, MatMul,
//!   Reshape; `GridSample` mode "bilinear") or opset 20 (`AffineGrid` + `GridSample` mode
//!   "linear"); initializers under PyTorch's `state_dict` names; normalisation and training summary
//!   in `metadata_props`.
//! * [`read_model`]: the parameters of such a graph (or of PyTorch's own export of the seed
//!   network) by name, checked against the architecture its input size implies.

mod export;
mod read;
mod verify;

/// The generated ONNX types.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use export::{export, to_bytes, ExportOptions, Output};
pub use read::{read_model, LoadedModel};

/// The largest ONNX file the binaries read (protobuf's own limit is 2 GiB; the seed network is
/// 0.1 MB).
pub const MAX_MODEL_BYTES: u64 = 1 << 30;

/// Errors of export and import; each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The bytes are not an ONNX protobuf.
    #[error("{path}: not an ONNX model ({what})")]
    Decode {
        /// The file.
        path: String,
        /// The decoder's error.
        what: String,
    },
    /// An ONNX model, but not one of the seed network (the node or input that differs named).
    #[error("{path}: {what}")]
    Model {
        /// The file.
        path: String,
        /// What differs.
        what: String,
    },
    /// Export options that do not fit the model.
    #[error("{0}")]
    Options(String),
    /// The initializers are not the network's parameters (a missing name, a wrong shape).
    #[error("{path}: {source}")]
    Params {
        /// The file.
        path: String,
        /// What is wrong with them.
        source: stn_model::ParamError,
    },
}
