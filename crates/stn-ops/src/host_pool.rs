//! Recycled host buffers: the CPU copies of op inputs, kernels' scratch, and outputs zeroed in
//! parallel.

use crate::simd::Real;

/// Recycled host buffers: the pool of one element type.
pub trait HostPool: Sized + 'static {
    /// The pool of recycled buffers of this type.
    fn pool() -> &'static std::sync::Mutex<Vec<Vec<Self>>>;
}
static POOL_F32: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());
static POOL_F64: std::sync::Mutex<Vec<Vec<f64>>> = std::sync::Mutex::new(Vec::new());
impl HostPool for f32 {
    fn pool() -> &'static std::sync::Mutex<Vec<Vec<f32>>> {
        &POOL_F32
    }
}
impl HostPool for f64 {
    fn pool() -> &'static std::sync::Mutex<Vec<Vec<f64>>> {
        &POOL_F64
    }
}

/// A host copy of an op input (dfdx keeps a tensor's buffer private, so the CPU kernels read a
/// copy), in a recycled buffer: a fresh `Vec` per copy was zeroed and then page-faulted in from
/// the kernel, ~7% of a training step. Dropping it returns the buffer to its pool.
pub struct HostCopy<E: Real> {
    pub(crate) v: Vec<E>,
}

/// Buffers kept for reuse, at most (a training step holds about a dozen inputs at once).
const POOL_MAX: usize = 64;

impl<E: Real> HostCopy<E> {
    /// `n` elements of unspecified (finite, stale or zero) values, for the caller to overwrite.
    pub(crate) fn take(n: usize) -> HostCopy<E> {
        let reused = {
            let mut pool = E::pool().lock().unwrap_or_else(|e| e.into_inner());
            // The smallest buffer that holds n without wasting more than half of itself.
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= n && v.capacity() <= 2 * n + 1024)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i);
            best.map(|i| pool.swap_remove(i))
        };
        let v = match reused {
            Some(mut v) => {
                if v.len() >= n {
                    v.truncate(n);
                } else {
                    v.resize(n, E::zero());
                }
                v
            }
            None => vec![E::zero(); n],
        };
        HostCopy { v }
    }
}

impl<E: Real> std::ops::Deref for HostCopy<E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        &self.v
    }
}

impl<E: Real> std::ops::DerefMut for HostCopy<E> {
    fn deref_mut(&mut self) -> &mut [E] {
        &mut self.v
    }
}

impl<E: Real> Drop for HostCopy<E> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.v);
        let mut pool = E::pool().lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(v);
        }
    }
}

/// `vec![0; n]`, zeroed in parallel when large: a 2 MB output zeroed by one thread and written
/// by the kernels' threads cost more than the kernels themselves at two threads (measured with
/// ten-channel grid_sample: the zeroing thread's cache lines then moved to the other core).
pub(crate) fn zeroed<E: Real>(n: usize) -> Vec<E> {
    use rayon::prelude::*;
    const PARALLEL_FROM: usize = 1 << 16;
    if n < PARALLEL_FROM {
        return vec![E::zero(); n];
    }
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(1 << 13)
        .for_each(|c| {
            c.iter_mut().for_each(|x| {
                x.write(E::zero());
            })
        });
    // SAFETY: every one of the n elements was initialised above.
    unsafe { v.set_len(n) };
    v
}
