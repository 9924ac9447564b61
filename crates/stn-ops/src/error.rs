//! The ops' errors.

/// Errors of the ops: shapes that do not fit (never a panic), or the device.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Inputs whose shapes do not fit the op.
    #[error("{op}: {what}")]
    Shape {
        /// The op.
        op: &'static str,
        /// What does not fit.
        what: String,
    },
    /// CUDA asked of a build without it.
    #[error(
        "{op}: not built with CUDA support (build with the `cuda` feature on a machine with CUDA)"
    )]
    NoCuda {
        /// The op.
        op: &'static str,
    },
    /// The device failed, or the op has no kernel on it.
    #[error("{op}: device error: {what}")]
    Device {
        /// The op.
        op: &'static str,
        /// The device's error.
        what: String,
    },
}

/// dfdx's CPU errors (out of memory, a wrong element count) as the ops' device error, so that a
/// layer built from the ops and dfdx's modules propagates both with `?`.
impl From<dfdx::tensor::CpuError> for OpError {
    fn from(e: dfdx::tensor::CpuError) -> Self {
        OpError::Device {
            op: "dfdx",
            what: e.to_string(),
        }
    }
}

impl OpError {
    /// A shape error of `op`.
    pub fn shape(op: &'static str, what: impl Into<String>) -> Self {
        OpError::Shape {
            op,
            what: what.into(),
        }
    }
    /// The error of a CPU-only op's CUDA entry points; `instead` says what to run on CUDA.
    pub fn cpu_only(op: &'static str, instead: &str) -> Self {
        OpError::Device {
            op,
            what: format!("CPU only: on CUDA {instead}"),
        }
    }
}
