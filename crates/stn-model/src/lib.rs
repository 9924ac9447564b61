#![warn(missing_docs)]
//! The seed spatial-transformer network (`Net` of PyTorch's tutorial,
//! `../shared/reference/pytorch_stn.py`) on dfdx with the ops of `stn-ops`:
//!
//! * [`ModelSpec`]: the network described once (input, localisation net, transform head,
//!   classifier) in JSON, TOML or a preset; [`Network`] is a spec whose shapes are resolved into a
//!   [`Plan`], from which everything below is built;
//! * [`Params`]: every parameter under its PyTorch `state_dict` name and layout (conv OIHW, linear
//!   `[out, in]`), PyTorch's default initialisation, safetensors checkpoints;
//! * [`forward`]: any plan on dfdx — the localisation net, the transform head's regressor, grid and
//!   sampler, and the classifier, in train (dropout) or eval mode, generic over the element type
//!   and tape; the seed's conv → pool → ReLU blocks run as fused ops, chosen by shape;
//! * [`Arch`]: the tutorial's family (seed, no-STN, the 42×42 and 60×60 canvases) by canvas;
//! * [`FusedNet`]: the same forward for inference on the CPU, fused per image (no tensors, no tape);
//! * [`Optimizer`]: SGD, SGD with momentum and Adam, with state that checkpoints;
//! * [`Trainer`]: one epoch of the seed's recipe, evaluation, guards against NaN and collapse.

mod checkpoint;
mod fused;
mod heads;
mod net;
mod optim;
mod paper;
mod params;
mod spec;
mod train;

pub use checkpoint::{Checkpoint, CheckpointError, MAX_EPOCHS};
pub use fused::{FusedNet, FusedOutputs};
pub use heads::sampling_grid;
pub use net::{forward, Arch, DropoutMasks, Outputs, SAMPLED};
pub use optim::{Optimizer, OptimizerKind};
pub use paper::{paper_spec, PAPER_HEADS};
pub use params::{ParamError, Params};
pub use spec::{
    InputSpec, Layer, ModelSpec, Naming, Network, Padding, Part, Plan, PlannedLayer, SampleMode,
    Sampler, Shape, SpecError, TpsHead, TpsMatrix, Transform, PRESETS,
};
pub use train::{
    evaluate, predict, Batch, EpochStats, EvalStats, Pixels, TrainDevice, TrainError, TrainOptions,
    Trainer,
};
