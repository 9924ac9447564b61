#![warn(missing_docs)]
//! The seed spatial-transformer network (`Net` of PyTorch's tutorial,
//! `../shared/reference/pytorch_stn.py`) on dfdx with the ops of `stn-ops`:
//!
//! * [`Params`]: every parameter under its PyTorch `state_dict` name and layout (conv OIHW, linear
//!   `[out, in]`), PyTorch's default initialisation, safetensors checkpoints;
//! * [`Arch`] and [`forward`]: the localisation net, `fc_loc`, the affine grid and sampler, and the
//!   LeNet classifier, in train (dropout) or eval mode, generic over the element type and tape;
//! * [`FusedNet`]: the same forward for inference on the CPU, fused per image (no tensors, no tape);
//! * [`Optimizer`]: SGD, SGD with momentum and Adam, with state that checkpoints;
//! * [`Trainer`]: one epoch of the seed's recipe, evaluation, guards against NaN and collapse.

mod checkpoint;
mod fused;
mod net;
mod optim;
mod params;
mod train;

pub use checkpoint::{Checkpoint, CheckpointError, MAX_EPOCHS};
pub use fused::{FusedNet, FusedOutputs};
pub use net::{forward, Arch, Outputs, SAMPLED};
pub use optim::{Optimizer, OptimizerKind};
pub use params::{ParamError, Params};
pub use train::{
    evaluate, predict, Batch, EpochStats, EvalStats, TrainDevice, TrainError, TrainOptions, Trainer,
};
