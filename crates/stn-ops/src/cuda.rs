//! The ops on dfdx's CUDA device (feature `cuda`): the kernels of `cuda/stn_kernels.cu`, compiled
//! at run time with NVRTC (so the PTX always suits the machine's driver) and loaded into dfdx's
//! own `CudaDevice`, on its stream.
//!
//! Data stays on the GPU. dfdx keeps a tensor's device buffer private; the routes used here are
//! its public API:
//! * reading an input: the backward of `Σ (z ⊙ t)` writes `t` into `z`'s gradient buffer, which
//!   `Gradients::get_or_alloc_mut` hands out — two device kernels, no host round trip;
//! * making an output: the kernel writes a buffer from `Storage::try_alloc_len`, which is put in a
//!   `Gradients` under a template tensor of the output's shape; `Gradients::get` turns it into a
//!   tensor (a device-to-device copy);
//! * gradients: `Gradients::get_or_alloc_mut` gives the device buffers themselves.

use std::sync::Arc;

use cudarc::driver::{CudaDevice, CudaFunction, CudaSlice, LaunchAsync, LaunchConfig};
use dfdx::prelude::*;
use dfdx::tensor::{Cuda, CudaError, Gradients};

use crate::op::{CustomOp, OpDevice, OpError};

/// The kernels' source, one file for the GPU and the host tests.
const SOURCE: &str = include_str!("../cuda/stn_kernels.cu");
const MODULE: &str = "stn_kernels";
const KERNELS: [&str; 13] = [
    "affine_grid_fwd",
    "affine_grid_bwd",
    "projective_grid_fwd",
    "projective_grid_bwd",
    "tps_grid_fwd",
    "tps_grid_bwd",
    "grid_sample_fwd",
    "grid_sample_bwd",
    "conv2d_fwd",
    "conv2d_bwd_input",
    "conv2d_bwd_weight",
    "max_pool2d_fwd",
    "max_pool2d_bwd",
];

/// A device input as the CUDA ops see it.
pub struct CudaBuf<'a> {
    /// The values on the device, row-major.
    pub data: &'a CudaSlice<f32>,
    /// The dimensions.
    pub dims: &'a [usize],
}

/// Our kernels on one device.
pub struct CudaKernels {
    dev: Arc<CudaDevice>,
}

fn driver(op: &'static str, e: impl std::fmt::Display) -> OpError {
    OpError::Device {
        op,
        what: e.to_string(),
    }
}

impl CudaKernels {
    /// The kernels on the device `buf` lives on (dfdx's), compiled and loaded on first use.
    pub fn on(buf: &CudaSlice<f32>) -> Result<Self, OpError> {
        let dev = buf.device();
        if !dev.has_func(MODULE, KERNELS[0]) {
            let ptx = cudarc::nvrtc::compile_ptx(SOURCE)
                .map_err(|e| driver("nvrtc", format!("{e:?}")))?;
            dev.load_ptx(ptx, MODULE, &KERNELS)
                .map_err(|e| driver("load_ptx", e))?;
        }
        Ok(CudaKernels { dev })
    }

    /// The kernel `name` of `stn_kernels.cu`.
    pub fn func(&self, name: &'static str) -> Result<CudaFunction, OpError> {
        self.dev
            .get_func(MODULE, name)
            .ok_or_else(|| driver(name, "kernel not loaded"))
    }

    /// A launch over `items` work items (the kernels are grid-stride loops).
    pub fn cfg(items: usize) -> LaunchConfig {
        LaunchConfig::for_num_elems(items.clamp(1, u32::MAX as usize) as u32)
    }

    /// A one-element buffer for a gradient nobody asked for (the kernel does not write it).
    pub fn dummy(&self) -> Result<CudaSlice<f32>, OpError> {
        self.dev
            .alloc_zeros::<f32>(1)
            .map_err(|e| driver("alloc", e))
    }
}

/// Launches `f` (unsafe: the caller passes buffers of the lengths the kernel indexes).
pub(crate) unsafe fn launch<P>(f: CudaFunction, items: usize, params: P) -> Result<(), OpError>
where
    CudaFunction: LaunchAsync<P>,
{
    f.launch(CudaKernels::cfg(items), params)
        .map_err(|e| driver("launch", e))
}

fn cuda_err(e: CudaError) -> OpError {
    driver("cuda", e)
}

impl OpDevice<f32> for Cuda {
    type Buffer = <Cuda as Storage<f32>>::Vec;
    const HOST: bool = false;

    fn read<S: Shape>(&self, t: &Tensor<S, f32, Cuda>) -> Result<Self::Buffer, CudaError> {
        // d/dz Σ (z ⊙ t) = t, written into z's gradient buffer, which we take (see the module doc).
        let z: Tensor<S, f32, Cuda> = self.try_zeros_like(t.shape())?;
        let y = z.leaky_trace().try_mul(t.clone())?.try_sum::<Rank0, _>()?;
        let mut grads = y.try_backward()?;
        let empty = self.try_alloc_len(0)?;
        Ok(std::mem::replace(grads.get_or_alloc_mut(&z)?, empty))
    }

    fn op_forward<Op: CustomOp<f32>, S: Shape>(
        &self,
        op: &Op,
        inputs: &[(&Self::Buffer, &[usize])],
        out_shape: S,
    ) -> Result<Tensor<S, f32, Self>, OpError> {
        let bufs: Vec<CudaBuf> = inputs
            .iter()
            .map(|(d, dims)| CudaBuf { data: d, dims })
            .collect();
        let kernels = CudaKernels::on(bufs[0].data)?;
        let mut out = self
            .try_alloc_len(out_shape.num_elements())
            .map_err(cuda_err)?;
        op.cuda_fwd(&kernels, &bufs, &mut out)?;
        let template: Tensor<S, f32, Cuda> = self.try_zeros_like(&out_shape).map_err(cuda_err)?;
        let mut g = Gradients::leaky();
        *g.get_or_alloc_mut(&template).map_err(cuda_err)? = out;
        Ok(g.get(&template))
    }

    fn op_backward<Op: CustomOp<f32>>(
        &self,
        op: &Op,
        inputs: &[(&Self::Buffer, &[usize])],
        grad_out: &<Self as Storage<f32>>::Vec,
        grads: &mut [Option<&mut <Self as Storage<f32>>::Vec>],
    ) -> Result<(), CudaError> {
        let bufs: Vec<CudaBuf> = inputs
            .iter()
            .map(|(d, dims)| CudaBuf { data: d, dims })
            .collect();
        let mut slots: Vec<Option<&mut CudaSlice<f32>>> = grads
            .iter_mut()
            .map(|g| g.as_mut().map(|g| &mut ***g))
            .collect();
        let mut run = || -> Result<(), OpError> {
            let kernels = CudaKernels::on(bufs[0].data)?;
            op.cuda_bwd(&kernels, &bufs, grad_out, &mut slots)
        };
        // dfdx's backward ops can only return its own error type: a kernel failure is reported as
        // the driver error it is.
        run().map_err(|e| match e {
            OpError::Device { what, .. } => {
                eprintln!("stn-ops: CUDA backward failed: {what}");
                CudaError::Driver(cudarc::driver::DriverError(
                    cudarc::driver::sys::CUresult::CUDA_ERROR_LAUNCH_FAILED,
                ))
            }
            other => {
                eprintln!("stn-ops: {other}");
                CudaError::Driver(cudarc::driver::DriverError(
                    cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_SUPPORTED,
                ))
            }
        })
    }
}
