//! The ops the seed spatial-transformer network needs and dfdx 0.13 lacks on stable Rust, with
//! exactly PyTorch's semantics, forward and backward:
//!
//! * [`affine_grid`] — `torch.nn.functional.affine_grid(theta, size, align_corners)`;
//! * [`grid_sample`] — `torch.nn.functional.grid_sample(input, grid, mode="bilinear", padding_mode,
//!   align_corners)`, with gradients for the input and the grid;
//! * [`conv2d`] — stride 1, no padding, with bias;
//! * [`max_pool2d`] — kernel 2, stride 2 (floor), the first maximum of a window wins on ties.
//!
//! Every op has one shape ([`CustomOp`], after candle's `CustomOp1`): a struct holding its options,
//! with output-shape checking, a CPU forward, a CPU backward and a CUDA entry point, in one file per
//! op. [`op::apply`] plugs any of them into dfdx's tape through its public API (`split_tape`,
//! `put_tape`, `Tape::add_backward_op`, `ghost()`, `Gradients::get_or_alloc_mut`); the CPU kernels
//! read tensors in place through `Tensorlike::data` and hand their output to dfdx without a copy.
//!
//! conv2d is a custom op (im2col + a skinny matrix product, batch-parallel with rayon), not a
//! composition of dfdx's stable ops: an im2col through dfdx's `gather` materialises an index tensor
//! and a gathered copy per call, and its backward scatters through dfdx's generic kernels, where
//! ours does col2im in one pass per image.
//!
//! Inputs must be contiguous (every tensor these ops and dfdx's elementwise ops produce is); a
//! strided view is copied once with `as_vec`. f32 is the working type; f64 is supported for
//! gradient checks.

mod affine_grid;
mod conv2d;
#[cfg(feature = "cuda")]
pub mod cuda;
mod grid_sample;
#[doc(hidden)]
pub mod kernels_host;
mod linalg;
mod max_pool2d;
pub mod op;

pub use affine_grid::{affine_grid, AffineGrid};
pub use conv2d::{conv2d, Conv2d};
pub use grid_sample::{grid_sample, GridSample, Padding};
pub use max_pool2d::{max_pool2d, MaxPool2d};
pub use op::{CustomOp, OpDevice, OpError, Real};

/// The dynamic 4-d shape the ops produce (`[N, C, H, W]`, or `[N, H, W, 2]` for grids).
pub type Dyn4 = (usize, usize, usize, usize);
