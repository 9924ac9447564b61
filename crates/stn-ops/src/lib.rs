//! The ops the seed spatial-transformer network needs and dfdx 0.13 lacks on stable Rust, with
//! exactly PyTorch's semantics, forward and backward:
//!
//! * [`affine_grid`] — `torch.nn.functional.affine_grid(theta, size, align_corners)`;
//! * [`grid_sample`] — `torch.nn.functional.grid_sample(input, grid, mode="bilinear", padding_mode,
//!   align_corners)`, with gradients for the input and the grid;
//! * [`conv2d`] — stride 1, no padding, with bias;
//! * [`strided_conv2d`] — any stride and zero padding (direct loops, CPU); [`avg_pool2d`];
//! * [`max_pool2d`] — kernel 2, stride 2 (floor), the first maximum of a window wins on ties;
//!   [`max_pool2d_relu`] is it followed by dfdx's ReLU, as one op on the CPU;
//! * [`projective_grid`] — the grid of a homography (8 parameters, `|w|` clamped away from 0);
//! * [`tps_grid`] — the grid of a thin-plate spline through g×g control points (a constant
//!   matrix times the predicted points, the matrix solved once in f64);
//! * [`grid_sample_with`] — every mode: bilinear, nearest and bicubic (A = −0.75);
//! * [`affine_sample`] — `affine_grid` then zero-padding `grid_sample` as one op on the CPU (the
//!   STN's transformer without a grid tensor), bit-identical to the two; [`affine_sample_with`]
//!   for every sampling mode;
//! * [`conv_pool_relu`] — `relu(max_pool2d(conv2d(x, w, b), 2, 2))` as one op on the CPU (no conv
//!   output tensor), bit-identical to the three; [`conv_pool_relu_scaled`] with a per-plane scale
//!   (Dropout2d's mask) between conv and pool.
//!
//! Every op has one shape ([`CustomOp`], after candle's `CustomOp1`): a struct holding its options,
//! with output-shape checking, a CPU forward and backward, and (feature `cuda`) a CUDA forward and
//! backward, in one file per op; the CUDA kernels of all ops are one source,
//! `cuda/stn_kernels.cu`, also compiled for the host so that tests check them without a GPU.
//! One concern per file: `tape.rs` (the [`CustomOp`] trait, [`op::Input`], [`OpDevice`],
//! [`op::apply`], [`forward_cpu`]), `host_pool.rs` (recycled host buffers), [`isa`] (the
//! instruction-set level chosen at run time and [`dispatch!`], which runs a kernel compiled for
//! it), [`simd`] (the vector primitives per level, [`Simd`], and [`Real`], the bound of every
//! op), `error.rs`; each op in its
//! own file, with the pool's and the sampler's SIMD kernels beside theirs
//! (`max_pool2d/kernels.rs`, `grid_sample/kernels.rs`). [`forward_cpu`] runs an op's CPU forward
//! on plain slices (tract's op table uses it); `op` re-exports the plumbing.
//!
//! [`op::apply`] plugs any op into dfdx's tape through its public API (`split_tape`, `put_tape`,
//! `Tape::add_backward_op`, `ghost()`, `Gradients::get_or_alloc_mut`). dfdx keeps a tensor's buffer
//! private, so on the CPU each input is copied once (`copy_into`, a memcpy) and the output is
//! handed to dfdx without a copy (`tensor_from_vec`); gradient buffers are used in place. The CUDA
//! routes are described in `cuda.rs`.
//!
//! conv2d is a custom op, not a composition of dfdx's stable ops (`gather` + `matmul`): that route
//! materialises an index tensor and a gathered copy of the input per call and scatters its
//! backward through dfdx's generic kernels. It was not built and measured here; the custom op (with
//! the pool) is 1.0–4.9× faster than PyTorch per layer (BENCHMARKS.md). Its kernels: an implicit
//! im2col for one-channel inputs (rows of the im2col matrix are offsets into the image), an
//! explicit one for multi-channel inputs over four images at a time, register-blocked products
//! (`linalg.rs`), batch-parallel with a fixed-order reduction so training is bit-for-bit
//! reproducible. [`ConvPoolRelu`] is the inference-only fused conv → pool → ReLU of `FusedNet`.
//!
//! The kernels' parallel loops run on rayon's global pool; [`with_awake_workers`] keeps its other
//! workers taking work between them instead of sleeping (the binaries and the ops bench run under
//! it).
//!
//! Strided inputs (a broadcast or a permute) are made contiguous by dfdx first. f32 is the working
//! type; f64 is supported on the CPU for gradient checks.

#![warn(missing_docs)]
mod affine_grid;
mod affine_sample;
mod avg_pool2d;
mod awake;
mod conv2d;
mod conv_pool_relu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
mod fused;
mod grid_sample;
mod host_pool;
pub mod isa;
#[doc(hidden)]
pub mod kernels_host;
mod linalg;
mod max_pool2d;
pub mod op;
mod projective_grid;
pub mod simd;
mod strided_conv2d;
mod tape;
mod tps_grid;

pub use affine_grid::{affine_grid, AffineGrid};
pub use affine_sample::{affine_sample, affine_sample_with, AffineSampler};
pub use avg_pool2d::{avg_pool2d, AvgPool2d};
pub use awake::with_awake_workers;
pub use conv2d::{conv2d, Conv2d};
pub use conv_pool_relu::{conv_pool_relu, conv_pool_relu_scaled, ConvPoolReluOp};
pub use fused::{ConvPoolRelu, PackedWeights};
pub use grid_sample::{grid_sample, grid_sample_with, GridSample, Mode, Padding};
pub use max_pool2d::{max_pool2d, max_pool2d_relu, MaxPool2d};
pub use op::{checked_out_dims, forward_cpu, CustomOp, OpDevice, OpError, Real, Simd};
pub use projective_grid::{projective_grid, ProjectiveGrid};
pub use strided_conv2d::{strided_conv2d, StridedConv2d};
pub use tps_grid::{tps_grid, TpsGrid};

/// The dynamic 4-d shape the ops produce (`[N, C, H, W]`, or `[N, H, W, 2]` for grids).
pub type Dyn4 = (usize, usize, usize, usize);
