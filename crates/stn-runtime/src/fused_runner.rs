use stn_model::FusedNet;

use crate::{check_batch, RunOutput, Runner, RuntimeError};

/// Our model with the ONNX file's parameters, through [`FusedNet`]: the inference forward fused
/// per image on our CPU kernels, with no tensors and no tape (f32, CPU).
pub struct FusedRunner {
    net: FusedNet<f32>,
    warped: bool,
    transform: bool,
}

impl FusedRunner {
    /// The model (`bytes`, from `path`) as the fused CPU forward, once its graph is checked to be
    /// the seed network.
    pub fn load(bytes: &[u8], path: &str) -> Result<Self, RuntimeError> {
        let m = stn_onnx::read_model(bytes, path)?;
        let net = FusedNet::new(&m.params).map_err(|e| RuntimeError::Load {
            runtime: "fused",
            path: path.into(),
            what: e.to_string(),
        })?;
        Ok(FusedRunner {
            net,
            warped: m.outputs.iter().any(|o| o == "warped"),
            transform: crate::transform_output(&m.outputs).is_some(),
        })
    }
}

impl FusedRunner {
    /// [`Runner::run`] through a shared reference: the fused forward keeps no state between
    /// runs, so one runner may serve several threads at once (stn-serve runs a lone request on
    /// its own HTTP thread this way).
    pub fn run_shared(&self, images: &[f32], n: usize) -> Result<RunOutput, RuntimeError> {
        check_batch("fused", images, n, Runner::input_dims(self))?;
        let out = self.net.forward_with(images, n, self.warped);
        Ok(RunOutput {
            log_probs: out.log_probs,
            transform: (self.transform && !out.theta.is_empty()).then_some(out.theta),
            warped: (self.warped && !out.warped.is_empty()).then_some(out.warped),
        })
    }
}

impl Runner for FusedRunner {
    fn name(&self) -> String {
        "fused".into()
    }
    fn input_dims(&self) -> [usize; 3] {
        self.net.network().input_dims()
    }
    fn run(&mut self, images: &[f32], n: usize) -> Result<RunOutput, RuntimeError> {
        self.run_shared(images, n)
    }
}

/// One fused runner shared between threads ([`FusedRunner::run_shared`]).
impl Runner for std::sync::Arc<FusedRunner> {
    fn name(&self) -> String {
        FusedRunner::name(self)
    }
    fn input_dims(&self) -> [usize; 3] {
        FusedRunner::input_dims(self)
    }
    fn run(&mut self, images: &[f32], n: usize) -> Result<RunOutput, RuntimeError> {
        self.run_shared(images, n)
    }
}
