//! The seed's training recipe: shuffled mini-batches, NLL loss on log-probabilities, one optimiser
//! step per batch; evaluation on the test set. Every random choice (order, dropout) is derived from
//! `(seed, epoch, batch)`, so an epoch is reproducible on its own and a resumed run is bit-for-bit
//! the uninterrupted one.

use dfdx::prelude::*;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stn_ops::{OpDevice, OpError};

use crate::net::DropoutMasks;
use crate::{forward, Optimizer, Params};

/// Why training stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite.
    #[error("the loss became {loss} at epoch {epoch}, batch {batch}: training diverged (try a smaller --lr, --clip, or another --optimizer); the last good checkpoint is kept")]
    NonFinite {
        /// The epoch (1-based).
        epoch: u64,
        /// The batch within it.
        batch: usize,
        /// The loss.
        loss: f32,
    },
    /// An op failed (a device error).
    #[error(transparent)]
    Op(#[from] OpError),
}

/// A split's pixels, `[N, C, H, W]`, as the trainer reads them.
#[derive(Clone, Copy)]
pub enum Pixels<'a> {
    /// Values already normalised.
    Normalized(&'a [f32]),
    /// Raw bytes, normalised per channel as each batch is gathered, with the arithmetic of
    /// `stn_data::normalize_planes` (so the values are bit for bit the same): a quarter of the
    /// memory, and no float copy of the whole set to fault in before the first step — 220 MB for
    /// MNIST, most of a second of a cold start on the project's VMs.
    Bytes {
        /// The pixels, 0–255.
        pixels: &'a [u8],
        /// Per-channel mean of `x / 255`.
        mean: &'a [f32],
        /// Per-channel standard deviation of `x / 255`.
        std: &'a [f32],
    },
}

/// A split as the trainer reads it: images `[N, C, H, W]` and labels.
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    /// `[N, C, H, W]` images.
    pub images: Pixels<'a>,
    /// N labels, each below the network's class count.
    pub labels: &'a [u8],
    /// One image's `[C, H, W]`.
    pub dims: [usize; 3],
}

impl<'a> Batch<'a> {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.dims.iter().product()
    }
    /// Appends image `i`'s normalised values to `out`.
    fn push_image(&self, i: usize, out: &mut Vec<f32>) {
        let n = self.image_len();
        match self.images {
            Pixels::Normalized(v) => out.extend_from_slice(&v[i * n..(i + 1) * n]),
            Pixels::Bytes { pixels, mean, std } => {
                let plane = self.dims[1] * self.dims[2];
                let c = mean.len().max(1);
                for (ch, p) in pixels[i * n..(i + 1) * n].chunks(plane.max(1)).enumerate() {
                    let (m, s) = (mean[ch % c], std[ch % c]);
                    out.extend(p.iter().map(|&p| (p as f32 / 255.0 - m) / s));
                }
            }
        }
    }
}

/// How the trainer batches and shuffles.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// Images per optimiser step.
    pub batch: usize,
    /// Seed of the shuffling and dropout.
    pub seed: u64,
    /// Clip the gradient's global L2 norm to this (None: no clipping, the seed's recipe).
    pub clip: Option<f32>,
}

/// What an epoch of training did.
#[derive(Debug, Clone, Copy)]
pub struct EpochStats {
    /// Images trained on.
    pub images: usize,
    /// Mean training loss.
    pub mean_loss: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// An evaluation's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalStats {
    /// Images evaluated.
    pub images: usize,
    /// Mean NLL over the images (the seed's "Average loss").
    pub loss: f64,
    /// Images classified correctly.
    pub correct: usize,
}

impl EvalStats {
    /// The fraction classified correctly.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.images.max(1) as f64
    }
}

/// A 32-byte ChaCha key from a purpose tag and two counters.
fn rng(seed: u64, a: u64, b: u64, tag: &[u8; 8]) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&a.to_le_bytes());
    key[16..24].copy_from_slice(&b.to_le_bytes());
    key[24..].copy_from_slice(tag);
    ChaCha8Rng::from_seed(key)
}

/// The dropout masks of a batch of `n` for `dropouts` ([`crate::Plan::dropouts`]), in order: a value
/// is kept (scaled by 1/(1−p)) when its 32-bit draw is at least p·2³², so that p = 0.5 keeps it on
/// the draw's top bit, as `rand`'s `bool` does (the seed's masks, drawn that way before specs).
fn dropout_masks(
    seed: u64,
    epoch: u64,
    batch: usize,
    n: usize,
    dropouts: &[(f32, usize)],
) -> DropoutMasks<f32> {
    let mut r = rng(seed, epoch, batch as u64, b"dropout!");
    let masks = dropouts
        .iter()
        .map(|&(p, units)| {
            let threshold = p as f64 * 4_294_967_296.0;
            let keep = (1.0 / (1.0 - p as f64)) as f32;
            (0..n * units)
                .map(|_| {
                    if r.next_u32() as f64 >= threshold {
                        keep
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    DropoutMasks {
        masks,
        units: dropouts.iter().map(|&(_, u)| u).collect(),
    }
}

/// The parameters as dfdx tensors (flat, without tape).
fn tensors<D: OpDevice<f32>>(dev: &D, params: &Params) -> Vec<Tensor<(usize,), f32, D>> {
    params
        .data
        .iter()
        .map(|d| dev.tensor_from_vec(d.clone(), (d.len(),)))
        .collect()
}

/// Where the training step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainDevice {
    /// The CPU (our kernels).
    Cpu,
    /// The CUDA GPU of this ordinal (feature `cuda`).
    Cuda(usize),
}

/// The device a trainer holds.
enum Dev {
    Cpu(Cpu),
    #[cfg(feature = "cuda")]
    Cuda(dfdx::tensor::Cuda),
}

/// Batches of fewer than twice this many images run whole (see `Trainer::step`).
const MIN_HALF: usize = 8;

/// Trains the parameters it owns with its optimiser. The parameters' master copy and the
/// optimiser live on the host (27,360 floats); each step uploads them, runs the forward and
/// backward pass on the device, and downloads the gradients.
pub struct Trainer {
    /// The parameters being trained (the host master copy).
    pub params: Params,
    /// Their optimiser.
    pub optimizer: Optimizer,
    /// Batching and shuffling.
    pub opts: TrainOptions,
    dev: Dev,
}

impl Trainer {
    /// A trainer on the CPU.
    pub fn new(params: Params, optimizer: Optimizer, opts: TrainOptions) -> Self {
        Trainer {
            params,
            optimizer,
            opts,
            dev: Dev::Cpu(Cpu::default()),
        }
    }

    /// A trainer on `device`; CUDA is an error without the `cuda` feature or without a GPU.
    pub fn with_device(
        params: Params,
        optimizer: Optimizer,
        opts: TrainOptions,
        device: TrainDevice,
    ) -> Result<Self, TrainError> {
        let dev = match device {
            TrainDevice::Cpu => Dev::Cpu(Cpu::default()),
            #[cfg(feature = "cuda")]
            TrainDevice::Cuda(i) => {
                Dev::Cuda(dfdx::tensor::Cuda::try_build(i, opts.seed).map_err(|e| {
                    TrainError::Op(OpError::Device {
                        op: "cuda",
                        what: format!("no usable CUDA GPU {i}: {e:?}"),
                    })
                })?)
            }
            #[cfg(not(feature = "cuda"))]
            TrainDevice::Cuda(_) => {
                return Err(TrainError::Op(OpError::NoCuda {
                    op: "stn-train --device cuda",
                }))
            }
        };
        Ok(Trainer {
            params,
            optimizer,
            opts,
            dev,
        })
    }

    /// One optimiser step on images `idx` of `data`; returns the batch's mean loss.
    pub fn step(
        &mut self,
        data: &Batch,
        idx: &[usize],
        epoch: u64,
        batch: usize,
    ) -> Result<f32, TrainError> {
        let n = idx.len();
        let dropouts = self.params.net.plan().dropouts();
        let masks = dropout_masks(self.opts.seed, epoch, batch, n, &dropouts);
        let (params, opts) = (&self.params, &self.opts);
        let (value, mut g) = match &self.dev {
            // On the CPU the batch runs as two halves side by side (rayon::join), their gradients
            // summed in a fixed order: the cores stay busy between the ops' own parallel loops,
            // and the result does not depend on the number of threads.
            Dev::Cpu(d) if n >= 2 * MIN_HALF => {
                let h = n / 2;
                let (ma, mb) = masks.split(h);
                // One upload of the parameters; each half traces it on its own tape.
                let base = tensors(d, params);
                let (a, b) = rayon::join(
                    || step_on(d, params, &base, data, &idx[..h], n, &ma),
                    || step_on(d, params, &base, data, &idx[h..], n, &mb),
                );
                let ((la, mut ga), (lb, gb)) = (a?, b?);
                for (x, y) in ga.iter_mut().zip(&gb) {
                    x.iter_mut().zip(y).for_each(|(x, &y)| *x += y);
                }
                (la + lb, ga)
            }
            Dev::Cpu(d) => step_on(d, params, &tensors(d, params), data, idx, n, &masks)?,
            #[cfg(feature = "cuda")]
            Dev::Cuda(d) => step_on(d, params, &tensors(d, params), data, idx, n, &masks)?,
        };
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                epoch,
                batch,
                loss: value,
            });
        }
        if let Some(max) = opts.clip {
            let norm = g
                .iter()
                .flatten()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt() as f32;
            if norm > max {
                let s = max / norm;
                g.iter_mut().flatten().for_each(|v| *v *= s);
            }
        }
        self.optimizer.update(&mut self.params, &g);
        Ok(value)
    }

    /// One pass over `data` in the order of `stn_data::epoch_order(seed, epoch)`. `on_batch` sees
    /// each batch's index, the images done so far and the batch's loss.
    pub fn train_epoch(
        &mut self,
        data: &Batch,
        epoch: u64,
        mut on_batch: impl FnMut(usize, usize, f32),
    ) -> Result<EpochStats, TrainError> {
        let t0 = std::time::Instant::now();
        let order = stn_data::epoch_order(data.len(), self.opts.seed, epoch);
        let mut sum = 0.0f64;
        let mut done = 0;
        for (b, idx) in order.chunks(self.opts.batch.max(1)).enumerate() {
            let loss = self.step(data, idx, epoch, b)?;
            sum += loss as f64 * idx.len() as f64;
            on_batch(b, done, loss);
            done += idx.len();
        }
        Ok(EpochStats {
            images: done,
            mean_loss: sum / done.max(1) as f64,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

/// The forward and backward pass of images `idx` (part of a batch of `total`) on `dev`, with the
/// parameters uploaded as `base`: their share of the batch's mean loss, and of its gradients.
fn step_on<D: OpDevice<f32>>(
    dev: &D,
    params: &Params,
    base: &[Tensor<(usize,), f32, D>],
    data: &Batch,
    idx: &[usize],
    total: usize,
    masks: &DropoutMasks<f32>,
) -> Result<(f32, Vec<Vec<f32>>), TrainError> {
    let n = idx.len();
    let [c, h, w] = data.dims;
    let classes = params.net.plan().classes;
    let mut x = Vec::with_capacity(n * data.image_len());
    let mut onehot = vec![0f32; n * classes];
    for (k, &i) in idx.iter().enumerate() {
        data.push_image(i, &mut x);
        onehot[k * classes + data.labels[i] as usize] = 1.0;
    }
    let x = dev.tensor_from_vec(x, (n, c, h, w));
    let onehot = dev.tensor_from_vec(onehot, (n, classes));
    let traced = base.iter().map(|t| t.leaky_trace()).collect();
    let out = forward(params.net.plan(), traced, x, Some(masks))?;
    let loss = (out.log_probs * onehot).sum::<Rank0, _>() * (-1.0 / total as f32);
    let value = loss.as_vec()[0];
    let grads = loss.backward();
    Ok((value, base.iter().map(|t| grads.get(t).as_vec()).collect()))
}

/// Log-probs, theta and warped images as host buffers (see [`predict`]).
pub type HostOutputs = (Vec<f32>, Vec<f32>, Vec<f32>);

/// The network's outputs for images `start..start+n` of `data` (eval mode), as host buffers:
/// log-probs `[n, classes]`, and with an STN the transform's parameters `[n, P]` (theta `[n, 2, 3]`)
/// and the warped images `[n, C, Ho, Wo]`.
pub fn predict(
    params: &Params,
    data: &Batch,
    start: usize,
    n: usize,
) -> Result<HostOutputs, TrainError> {
    let dev = Cpu::default();
    let [c, h, w] = data.dims;
    let mut x = Vec::with_capacity(n * data.image_len());
    (start..start + n).for_each(|i| data.push_image(i, &mut x));
    let x = dev.tensor_from_vec(x, (n, c, h, w));
    let out = forward(params.net.plan(), tensors(&dev, params), x, None)?;
    Ok((
        out.log_probs.as_vec(),
        out.theta.map(|t| t.as_vec()).unwrap_or_default(),
        out.warped.map(|w| w.as_vec()).unwrap_or_default(),
    ))
}

/// Mean NLL and correct count over `data`, in eval mode (no dropout), `batch` images at a time.
pub fn evaluate(params: &Params, data: &Batch, batch: usize) -> Result<EvalStats, TrainError> {
    let mut loss = 0.0f64;
    let mut correct = 0;
    let mut start = 0;
    while start < data.len() {
        let n = batch.max(1).min(data.len() - start);
        let (lp, _, _) = predict(params, data, start, n)?;
        for (k, row) in lp.chunks_exact(params.net.plan().classes).enumerate() {
            let y = data.labels[start + k] as usize;
            loss -= row[y] as f64;
            // First maximum wins, as torch.argmax.
            let arg = row
                .iter()
                .enumerate()
                .fold(0, |a, (i, &v)| if v > row[a] { i } else { a });
            correct += (arg == y) as usize;
        }
        start += n;
    }
    Ok(EvalStats {
        images: data.len(),
        loss: loss / data.len().max(1) as f64,
        correct,
    })
}
