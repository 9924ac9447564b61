use dfdx::prelude::*;
use stn_model::{forward, Params};

use crate::{check_batch, RunOutput, Runner, RuntimeError};

/// Our dfdx model with the ONNX file's parameters, in f32 or (the reference) f64.
pub struct DfdxRunner {
    params: Params,
    f64: bool,
    warped: bool,
    dev: Cpu,
}

impl DfdxRunner {
    pub fn load(bytes: &[u8], path: &str, f64: bool) -> Result<Self, RuntimeError> {
        let m = stn_onnx::read_model(bytes, path)?;
        let warped = m.outputs.iter().any(|o| o == "warped");
        Ok(DfdxRunner {
            params: m.params,
            f64,
            warped,
            dev: Cpu::default(),
        })
    }

    fn run_as<E: stn_ops::Real>(&self, images: &[f32], n: usize) -> Result<RunOutput, RuntimeError>
    where
        Cpu: stn_ops::OpDevice<E>,
    {
        let s = self.params.arch.canvas;
        let cast = |v: &[f32]| -> Vec<E> { v.iter().map(|&x| E::of(x as f64)).collect() };
        let params: Vec<Tensor<(usize,), E, Cpu>> = self
            .params
            .data
            .iter()
            .map(|d| self.dev.tensor_from_vec(cast(d), (d.len(),)))
            .collect();
        let x = self.dev.tensor_from_vec(cast(images), (n, 1, s, s));
        let out = forward(&self.params.arch, params, x, None).map_err(|e| RuntimeError::Run {
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
        if self.f64 {
            "dfdx-f64".into()
        } else {
            "dfdx".into()
        }
    }
    fn input_side(&self) -> usize {
        self.params.arch.canvas
    }
    fn run(&mut self, images: &[f32], n: usize) -> Result<RunOutput, RuntimeError> {
        check_batch("dfdx", images, n, self.input_side())?;
        if self.f64 {
            self.run_as::<f64>(images, n)
        } else {
            self.run_as::<f32>(images, n)
        }
    }
}
