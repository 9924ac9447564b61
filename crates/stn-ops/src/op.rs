//! The ops' shared plumbing, one concern per file — the errors (`error.rs`), the SIMD layer
//! (`simd.rs`), the host buffer pool (`host_pool.rs`), the tape plumbing (`tape.rs`) — and the
//! kernels beside their ops (`max_pool2d/kernels.rs`, `grid_sample/kernels.rs`), re-exported here under
//! the paths the ops and their users name (`stn_ops::op::Buf`, `op::apply`).

pub use crate::error::OpError;
pub use crate::grid_sample::kernels::{AxisMap, Framed8, SampleKernels};
pub use crate::host_pool::{HostCopy, HostPool};
pub use crate::max_pool2d::kernels::PoolKernels;
pub use crate::simd::{Real, Simd};
pub(crate) use crate::tape::per_image;
pub use crate::tape::{apply, checked_out_dims, forward_cpu, Buf, CustomOp, Input, OpDevice};
