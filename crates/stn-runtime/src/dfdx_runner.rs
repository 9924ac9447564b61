use dfdx::prelude::*;
use stn_model::{forward, Params};
use stn_ops::{OpDevice, Real};

use crate::{check_batch, RunOutput, Runner, RuntimeError};

/// Where the dfdx runner computes.
enum Dev {
    /// f32, or f64 (the reference).
    Cpu(Cpu, bool),
    #[cfg(feature = "cuda")]
    Cuda(dfdx::tensor::Cuda),
}

/// Our dfdx model with the ONNX file's parameters: on the CPU in f32 or (the reference) f64, or on
/// a CUDA GPU (feature `cuda`).
pub struct DfdxRunner {
    params: Params,
    warped: bool,
    transform: bool,
    dev: Dev,
}

impl DfdxRunner {
    /// The model (`bytes`, from `path`) as our dfdx network on the CPU, in float64 when `f64`
    /// (the reference), once its graph is checked to be the seed network.
    pub fn load(bytes: &[u8], path: &str, f64: bool) -> Result<Self, RuntimeError> {
        let m = stn_onnx::read_model(bytes, path)?;
        let warped = m.outputs.iter().any(|o| o == "warped");
        let transform = crate::transform_output(&m.outputs).is_some();
        Ok(DfdxRunner {
            params: m.params,
            warped,
            transform,
            dev: Dev::Cpu(Cpu::default(), f64),
        })
    }

    /// The model on CUDA GPU `ordinal`; an error without the `cuda` feature or without a GPU.
    pub fn load_cuda(bytes: &[u8], path: &str, ordinal: usize) -> Result<Self, RuntimeError> {
        let m = stn_onnx::read_model(bytes, path)?;
        let warped = m.outputs.iter().any(|o| o == "warped");
        let transform = crate::transform_output(&m.outputs).is_some();
        #[cfg(feature = "cuda")]
        {
            let dev =
                dfdx::tensor::Cuda::try_build(ordinal, 0).map_err(|e| RuntimeError::Load {
                    runtime: "dfdx",
                    path: path.into(),
                    what: format!("--device cuda: no usable CUDA GPU {ordinal}: {e:?}"),
                })?;
            Ok(DfdxRunner {
                params: m.params,
                warped,
                transform,
                dev: Dev::Cuda(dev),
            })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (warped, transform, ordinal);
            Err(RuntimeError::Load {
                runtime: "dfdx",
                path: path.into(),
                what: "--device cuda: this build has no CUDA support (build with --features cuda)"
                    .into(),
            })
        }
    }

    fn run_on<E: Real, D: OpDevice<E>>(
        &self,
        dev: &D,
        images: &[f32],
        n: usize,
    ) -> Result<RunOutput, RuntimeError> {
        let [c, h, w] = self.params.net.input_dims();
        let cast = |v: &[f32]| -> Vec<E> { v.iter().map(|&x| E::of(x as f64)).collect() };
        let params: Vec<Tensor<(usize,), E, D>> = self
            .params
            .data
            .iter()
            .map(|d| dev.tensor_from_vec(cast(d), (d.len(),)))
            .collect();
        let x = dev.tensor_from_vec(cast(images), (n, c, h, w));
        let out =
            forward(self.params.net.plan(), params, x, None).map_err(|e| RuntimeError::Run {
                runtime: "dfdx",
                what: e.to_string(),
            })?;
        let back = |v: Vec<E>| -> Vec<f32> {
            v.into_iter()
                .map(|x| x.to_f32().unwrap_or(f32::NAN))
                .collect()
        };
        Ok(RunOutput {
            log_probs: back(out.log_probs.as_vec()),
            transform: if self.transform {
                out.theta.map(|t| back(t.as_vec()))
            } else {
                None
            },
            warped: if self.warped {
                out.warped.map(|w| back(w.as_vec()))
            } else {
                None
            },
        })
    }
}

impl Runner for DfdxRunner {
    fn name(&self) -> String {
        match self.dev {
            Dev::Cpu(_, false) => "dfdx".into(),
            Dev::Cpu(_, true) => "dfdx-f64".into(),
            #[cfg(feature = "cuda")]
            Dev::Cuda(_) => "dfdx-cuda".into(),
        }
    }
    fn input_dims(&self) -> [usize; 3] {
        self.params.net.input_dims()
    }
    fn run(&mut self, images: &[f32], n: usize) -> Result<RunOutput, RuntimeError> {
        check_batch("dfdx", images, n, self.input_dims())?;
        match &self.dev {
            Dev::Cpu(d, false) => self.run_on::<f32, _>(d, images, n),
            Dev::Cpu(d, true) => self.run_on::<f64, _>(d, images, n),
            #[cfg(feature = "cuda")]
            Dev::Cuda(d) => self.run_on::<f32, _>(d, images, n),
        }
    }
}
