//! The one shape of every custom op ([`CustomOp`]) and its plumbing into dfdx's tape: inputs
//! read where the kernels see them ([`Input`], [`OpDevice`]), the forward run and the backward
//! recorded ([`apply`]).

use dfdx::prelude::*;
use dfdx::tensor::Gradients;

use crate::error::OpError;
use crate::host_pool::{zeroed, HostCopy};
use crate::simd::Real;

/// An op input as the CPU kernels see it: its data (row-major, contiguous) and its dimensions.
#[derive(Clone, Copy)]
pub struct Buf<'a, E> {
    /// The values, row-major.
    pub data: &'a [E],
    /// The dimensions.
    pub dims: &'a [usize],
}

/// One custom op: a struct with the op's options, after candle's `CustomOp1`.
///
/// `cpu_bwd` *accumulates* into the gradients it is given (`+=`), as dfdx's gradients are sums over
/// every use of a tensor; a `None` gradient is one nobody asked for and is not computed.
pub trait CustomOp<E: Real>: Clone + 'static {
    /// Name in error messages, e.g. `"grid_sample"`.
    const NAME: &'static str;
    /// Checks the inputs' dimensions and returns the output's.
    fn out_dims(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, OpError>;
    /// Writes the output (zero-initialised, `out_dims` elements).
    fn cpu_fwd(&self, inputs: &[Buf<E>], out: &mut [E]);
    /// Whether `cpu_fwd` writes every output element whatever the inputs, so that a caller may
    /// hand it an output that is not zeroed (a runtime's uninitialised tensor: the memset was a
    /// tenth of tract's time with our Conv). False unless an op says otherwise.
    const CPU_FWD_WRITES_ALL: bool = false;
    /// Accumulates the inputs' gradients from the output's.
    fn cpu_bwd(&self, inputs: &[Buf<E>], grad_out: &[E], grads: &mut [Option<&mut [E]>]);
    /// The CUDA forward: writes `out` (zeroed) on the device (feature `cuda`). By default an op
    /// has no CUDA kernel: an error saying so.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _k: &crate::cuda::CudaKernels,
        _inputs: &[crate::cuda::CudaBuf],
        _out: &mut cudarc::driver::CudaSlice<f32>,
    ) -> Result<(), OpError> {
        Err(OpError::cpu_only(
            Self::NAME,
            "there is no CUDA kernel for it yet",
        ))
    }
    /// The CUDA backward: accumulates into the gradients asked for (feature `cuda`); by default
    /// an error, as the forward.
    #[cfg(feature = "cuda")]
    fn cuda_bwd(
        &self,
        _k: &crate::cuda::CudaKernels,
        _inputs: &[crate::cuda::CudaBuf],
        _grad_out: &cudarc::driver::CudaSlice<f32>,
        _grads: &mut [Option<&mut cudarc::driver::CudaSlice<f32>>],
    ) -> Result<(), OpError> {
        Err(OpError::cpu_only(
            Self::NAME,
            "there is no CUDA kernel for it yet",
        ))
    }
}

/// Finds (allocating if needed) the gradient buffer of one input in the tape's gradients.
type GradSlot<E, D> = Box<
    dyn for<'g> Fn(
        &'g mut Gradients<E, D>,
    ) -> Result<&'g mut <D as Storage<E>>::Vec, <D as HasErr>::Err>,
>;

fn grad_slot<E, D: Storage<E>, F>(f: F) -> F
where
    F: for<'g> Fn(&'g mut Gradients<E, D>) -> Result<&'g mut D::Vec, D::Err>,
{
    f
}

/// An op input: its data where the kernels read it, its dimensions, and (when it had a tape) where
/// its gradient goes.
pub struct Input<E: Real, D: OpDevice<E>> {
    data: D::Buffer,
    dims: Vec<usize>,
    grad: Option<GradSlot<E, D>>,
}

impl<E: Real, D: OpDevice<E>> Input<E, D> {
    /// Splits the tape off `t` and reads its data. The input's gradient is wanted when `t` carried a
    /// tape. A strided view (broadcast, permute) is first made contiguous by dfdx (a copy with its
    /// own backward); a contiguous tensor is taken as it is.
    pub fn new<S: Shape, T: Tape<E, D>>(
        op: &'static str,
        t: Tensor<S, E, D, T>,
    ) -> Result<(Self, T), OpError> {
        let t = t.try_contiguous().map_err(|e| OpError::Device {
            op,
            what: e.to_string(),
        })?;
        let (t, tape) = t.split_tape();
        let dims: Vec<usize> = t.shape().concrete().into();
        let data = t.device().read(&t).map_err(|e| OpError::Device {
            op,
            what: e.to_string(),
        })?;
        let grad: Option<GradSlot<E, D>> = if T::OWNS_TAPE {
            let ghost = t.ghost();
            Some(Box::new(grad_slot(move |g: &mut Gradients<E, D>| {
                g.get_or_alloc_mut(&ghost)
            })))
        } else {
            None
        };
        Ok((Input { data, dims, grad }, tape))
    }
}

/// A device the ops run on: the CPU (host kernels) and, with the `cuda` feature, CUDA.
pub trait OpDevice<E: Real>: Device<E> {
    /// An input's data where the kernels read it: a host copy on the CPU.
    type Buffer: 'static;
    /// The host (CPU) device: it has the ops with no CUDA kernel ([`crate::affine_sample`]).
    const HOST: bool;
    /// Reads a contiguous tensor's data.
    fn read<S: Shape>(&self, t: &Tensor<S, E, Self>)
        -> Result<Self::Buffer, <Self as HasErr>::Err>;
    /// Runs `op`'s forward on `inputs` into a new tensor of `out_shape`.
    fn op_forward<Op: CustomOp<E>, S: Shape>(
        &self,
        op: &Op,
        inputs: &[(&Self::Buffer, &[usize])],
        out_shape: S,
    ) -> Result<Tensor<S, E, Self>, OpError>;
    /// Accumulates `op`'s input gradients from `grad_out`.
    fn op_backward<Op: CustomOp<E>>(
        &self,
        op: &Op,
        inputs: &[(&Self::Buffer, &[usize])],
        grad_out: &<Self as Storage<E>>::Vec,
        grads: &mut [Option<&mut <Self as Storage<E>>::Vec>],
    ) -> Result<(), <Self as HasErr>::Err>;
}

fn bufs<'a, E: Real>(inputs: &'a [(&'a HostCopy<E>, &'a [usize])]) -> Vec<Buf<'a, E>> {
    inputs
        .iter()
        .map(|(d, dims)| Buf { data: d, dims })
        .collect()
}

macro_rules! cpu_op_device {
    ($E:ty) => {
        impl OpDevice<$E> for Cpu {
            type Buffer = HostCopy<$E>;
            const HOST: bool = true;

            fn read<S: Shape>(&self, t: &Tensor<S, $E, Self>) -> Result<HostCopy<$E>, Self::Err> {
                // dfdx keeps a tensor's buffer private; `copy_into` is its one public memcpy of it (the
                // tensor is contiguous here, see `Input::new`), and it overwrites every element.
                let mut v = HostCopy::take(t.shape().num_elements());
                t.copy_into(&mut v.v);
                Ok(v)
            }

            fn op_forward<Op: CustomOp<$E>, S: Shape>(
                &self,
                op: &Op,
                inputs: &[(&HostCopy<$E>, &[usize])],
                out_shape: S,
            ) -> Result<Tensor<S, $E, Self>, OpError> {
                let mut out = zeroed::<$E>(out_shape.num_elements());
                op.cpu_fwd(&bufs(inputs), &mut out);
                // Moves the buffer into the tensor: no copy.
                self.try_tensor_from_vec(out, out_shape)
                    .map_err(|e| OpError::Device {
                        op: Op::NAME,
                        what: e.to_string(),
                    })
            }

            fn op_backward<Op: CustomOp<$E>>(
                &self,
                op: &Op,
                inputs: &[(&HostCopy<$E>, &[usize])],
                grad_out: &<Self as Storage<$E>>::Vec,
                grads: &mut [Option<&mut <Self as Storage<$E>>::Vec>],
            ) -> Result<(), Self::Err> {
                let mut slices: Vec<Option<&mut [$E]>> = grads
                    .iter_mut()
                    .map(|g| g.as_mut().map(|g| &mut g[..]))
                    .collect();
                op.cpu_bwd(&bufs(inputs), &grad_out[..], &mut slices);
                Ok(())
            }
        }
    };
}
cpu_op_device!(f32);
cpu_op_device!(f64);

/// Runs `op` on `inputs` and records its backward on `tape`. The output has shape `S` (checked
/// against the op's `out_dims`).
pub fn apply<E: Real, D: OpDevice<E>, Op: CustomOp<E>, S: Shape, T: Tape<E, D>>(
    op: Op,
    dev: &D,
    inputs: Vec<Input<E, D>>,
    mut tape: T,
) -> Result<Tensor<S, E, D, T>, OpError> {
    let dims: Vec<&[usize]> = inputs.iter().map(|i| i.dims.as_slice()).collect();
    let out_dims = op.out_dims(&dims)?;
    let mut concrete = S::Concrete::default();
    if out_dims.len() != S::NUM_DIMS {
        return Err(OpError::shape(
            Op::NAME,
            format!(
                "{} output dims for a rank-{} type",
                out_dims.len(),
                S::NUM_DIMS
            ),
        ));
    }
    for (k, &d) in out_dims.iter().enumerate() {
        concrete[k] = d;
    }
    let out_shape = S::from_concrete(&concrete).ok_or_else(|| {
        OpError::shape(
            Op::NAME,
            format!("output dims {out_dims:?} do not fit the output type"),
        )
    })?;
    let views: Vec<(&D::Buffer, &[usize])> = inputs
        .iter()
        .map(|i| (&i.data, i.dims.as_slice()))
        .collect();
    let out = dev.op_forward(&op, &views, out_shape)?;
    if T::OWNS_TAPE && inputs.iter().any(|i| i.grad.is_some()) {
        let out_ghost = out.ghost();
        let numel = out_shape.num_elements();
        let dev = dev.clone();
        tape.add_backward_op(move |grads| {
            // Take the buffers out of the gradient store so the output's gradient (read) and the
            // inputs' (written) can be borrowed together without copying; they are put back below.
            let grad_out = std::mem::replace(
                grads.get_or_alloc_mut(&out_ghost)?,
                <D as Storage<E>>::try_alloc_len(&dev, 0)?,
            );
            debug_assert_eq!(<D as Storage<E>>::len(&dev, &grad_out), numel);
            let mut taken: Vec<Option<<D as Storage<E>>::Vec>> = Vec::with_capacity(inputs.len());
            for i in &inputs {
                taken.push(match &i.grad {
                    Some(slot) => Some(std::mem::replace(
                        slot(grads)?,
                        <D as Storage<E>>::try_alloc_len(&dev, 0)?,
                    )),
                    None => None,
                });
            }
            let views: Vec<(&D::Buffer, &[usize])> = inputs
                .iter()
                .map(|i| (&i.data, i.dims.as_slice()))
                .collect();
            let mut slots: Vec<Option<&mut <D as Storage<E>>::Vec>> =
                taken.iter_mut().map(|g| g.as_mut()).collect();
            let r = dev.op_backward(&op, &views, &grad_out, &mut slots);
            for (i, g) in inputs.iter().zip(taken) {
                if let (Some(slot), Some(g)) = (&i.grad, g) {
                    *slot(grads)? = g;
                }
            }
            *grads.get_or_alloc_mut(&out_ghost)? = grad_out;
            r
        });
    }
    Ok(out.put_tape(tape))
}

/// Splits an optional gradient into one optional slice per image.
pub(crate) fn per_image<E>(g: Option<&mut [E]>, n: usize, len: usize) -> Vec<Option<&mut [E]>> {
    match g {
        Some(g) => g.chunks_mut(len).map(Some).collect(),
        None => (0..n).map(|_| None).collect(),
    }
}

/// Runs `op`'s CPU forward on plain slices — no tensors, no tape: the inputs' shapes checked by
/// the op, the output allocated (zeroed) and returned with its dimensions. How runtimes other than
/// dfdx (tract's op table) use the kernels.
pub fn forward_cpu<E: Real, Op: CustomOp<E>>(
    op: &Op,
    inputs: &[Buf<E>],
) -> Result<(Vec<E>, Vec<usize>), OpError> {
    let out_dims = checked_out_dims(op, inputs)?;
    let mut out = zeroed(out_dims.iter().product());
    op.cpu_fwd(inputs, &mut out);
    Ok((out, out_dims))
}

/// The output dimensions of `op` on `inputs`, once the op has checked the inputs' shapes and each
/// input's length matches its dimensions: what a caller that allocates the output itself (a
/// runtime's own tensor, written in place by [`CustomOp::cpu_fwd`]) checks first.
pub fn checked_out_dims<E: Real, Op: CustomOp<E>>(
    op: &Op,
    inputs: &[Buf<E>],
) -> Result<Vec<usize>, OpError> {
    let dims: Vec<&[usize]> = inputs.iter().map(|b| b.dims).collect();
    let out_dims = op.out_dims(&dims)?;
    for (k, b) in inputs.iter().enumerate() {
        if b.data.len() != b.dims.iter().product::<usize>() {
            return Err(OpError::shape(
                Op::NAME,
                format!(
                    "input {k}: {} values for dimensions {:?}",
                    b.data.len(),
                    b.dims
                ),
            ));
        }
    }
    Ok(out_dims)
}
