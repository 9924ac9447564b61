//! Forward + backward time of each op at the seed network's shapes, one JSON line per op with the
//! median over repeated runs. `scripts/bench-ops.sh` runs this beside the same ops in PyTorch.
//!
//!     cargo bench -p stn-ops --bench ops            # RAYON_NUM_THREADS sets the threads
//!     cargo bench -p stn-ops --bench ops -- conv1    # only the lines whose op or layer matches

use std::time::Instant;

// Like the binaries: glibc returns freed pages to the kernel and page-faults them back on every
// step; mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use dfdx::prelude::*;
use rayon::prelude::*;
use stn_ops::op::{apply, Buf, Input};
use stn_ops::simd::Vector;
use stn_ops::{
    affine_grid, affine_sample, affine_sample_with, conv2d, grid_sample, grid_sample_with,
    max_pool2d, CustomOp, GridSample, Mode, OpError, Padding,
};

/// The harness's loss, `Σ y`, as a parallel op of ours: dfdx's generic `sum` (one thread,
/// index arithmetic per element) and its broadcast backward took longer than the sampler itself,
/// where torch's `sum` is a few microseconds; both sides then time the op, not the reduction.
#[derive(Clone, Copy)]
struct SumAll;

impl CustomOp<f32> for SumAll {
    const NAME: &'static str = "sum_all";
    fn out_dims(&self, _inputs: &[&[usize]]) -> Result<Vec<usize>, OpError> {
        Ok(vec![])
    }
    fn cpu_fwd(&self, inputs: &[Buf<f32>], out: &mut [f32]) {
        out[0] = inputs[0]
            .data
            .par_chunks(4096)
            // A vector of partial sums per chunk, so the loop vectorises (a plain fold is a serial
            // chain).
            .map(|c| stn_ops::dispatch!(I => stn_ops::simd::V::<f32, I>::sum(c)))
            .sum();
    }
    fn cpu_bwd(&self, _inputs: &[Buf<f32>], grad_out: &[f32], grads: &mut [Option<&mut [f32]>]) {
        if let Some(g) = grads[0].as_deref_mut() {
            g.par_chunks_mut(4096)
                .for_each(|c| c.iter_mut().for_each(|v| *v += grad_out[0]));
        }
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _k: &stn_ops::cuda::CudaKernels,
        _inputs: &[stn_ops::cuda::CudaBuf],
        _out: &mut cudarc::driver::CudaSlice<f32>,
    ) -> Result<(), OpError> {
        Err(OpError::NoCuda { op: "sum_all" })
    }
    #[cfg(feature = "cuda")]
    fn cuda_bwd(
        &self,
        _k: &stn_ops::cuda::CudaKernels,
        _inputs: &[stn_ops::cuda::CudaBuf],
        _grad_out: &cudarc::driver::CudaSlice<f32>,
        _grads: &mut [Option<&mut cudarc::driver::CudaSlice<f32>>],
    ) -> Result<(), OpError> {
        Err(OpError::NoCuda { op: "sum_all" })
    }
}

/// `Σ y` with its backward on `y`'s tape.
fn sum_all<S: Shape>(
    y: Tensor<S, f32, Cpu, OwnedTape<f32, Cpu>>,
) -> Tensor<(), f32, Cpu, OwnedTape<f32, Cpu>> {
    let dev = y.device().clone();
    let (y, tape) = Input::new("sum_all", y).unwrap();
    apply(SumAll, &dev, vec![y], tape).unwrap()
}

/// Median wall time of `f` in microseconds, after warm-up.
fn median_us(mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let mut t: Vec<f64> = (0..200)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

fn main() {
    // mimalloc keeps freed memory, as in the binaries (`stn::in_pool`): see there for why.
    extern "C" {
        fn mi_option_get(option: i32) -> std::ffi::c_long;
        fn mi_option_set(option: i32, value: std::ffi::c_long);
    }
    // SAFETY: plain calls into the linked mimalloc; entry 15 is mimalloc 3's purge delay (checked
    // by its default, 1000 ms).
    unsafe {
        if mi_option_get(15) == 1000 {
            mi_option_set(15, -1);
        }
    }
    // On a worker of rayon's pool, as the binaries run (`stn::in_pool`): a parallel loop started
    // from outside the pool hands its work over and sleeps until it is done, two context switches
    // per loop, where torch's OpenMP runs the loop on the calling thread too. The other workers
    // kept awake between the loops, also as the binaries run.
    rayon::scope(|_| stn_ops::with_awake_workers(bench));
}

fn bench() {
    // A filter (cargo passes `--bench` too): run only the ops or layers whose names contain it.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    // The kernels' ISA level first (STN_ISA's, else the best this CPU runs).
    println!(r#"{{"isa":"{}"}}"#, stn_ops::isa::level());
    let dev = Cpu::seed_from_u64(0);
    // The sampler's kernels alone, outside dfdx (asked for by name only: `-- kernel`).
    if filter.iter().any(|f| f == "kernel") {
        sampler_kernels();
        return;
    }
    // The inference forward's fused conv blocks, one image at a time (asked for by name only:
    // `-- fused`): where `FusedNet`'s time per image goes.
    if filter.iter().any(|f| f == "fused") {
        fused_blocks();
        return;
    }
    // The training step's conv blocks alone, outside dfdx (asked for by name only: `-- block`).
    if filter.iter().any(|f| f == "block") {
        // With a layer's name too (`-- block conv1`), that layer only.
        let layer = |name: &str| {
            filter
                .iter()
                .all(|f| f == "block" || name.contains(f.as_str()))
        };
        block_kernels(layer);
        return;
    }
    for c in [1usize, 10] {
        let samplers = [
            "grid_sample_fwd_bwd",
            "affine_sample_fwd_bwd",
            "grid_sample_nearest_fwd_bwd",
            "grid_sample_bicubic_fwd_bwd",
            "affine_sample_nearest_fwd_bwd",
            "affine_sample_bicubic_fwd_bwd",
        ];
        if !samplers.iter().any(|s| wanted(s)) {
            continue;
        }
        let n = 64;
        let x: Tensor<(usize, usize, usize, usize), f32, _> =
            dev.sample_normal_like(&(n, c, 28, 28));
        let theta: Tensor<(usize, usize, usize), f32, _> = dev.sample_normal_like(&(n, 2, 3));
        let bilinear = wanted("grid_sample_fwd_bwd") || wanted("affine_sample_fwd_bwd");
        let us = median_us(|| {
            if !bilinear {
                return;
            }
            // As in the STN: theta is traced, the images are not.
            let g = affine_grid(theta.leaky_trace(), [n, c, 28, 28], false).unwrap();
            let y = grid_sample(x.clone(), g, Padding::Zeros, false).unwrap();
            let _ = sum_all(y).backward();
        });
        if bilinear {
            println!(r#"{{"op":"grid_sample_fwd_bwd","shape":[{n},{c},28,28],"ours_us":{us:.1}}}"#);
        }
        // The same computation as the network runs it on the CPU: one op, no grid tensor.
        if bilinear {
            let us = median_us(|| {
                let y = affine_sample(x.clone(), theta.leaky_trace(), (28, 28), false).unwrap();
                let _ = sum_all(y).backward();
            });
            println!(
                r#"{{"op":"affine_sample_fwd_bwd","shape":[{n},{c},28,28],"ours_us":{us:.1}}}"#
            );
        }
        // The other sampling modes, zero padding, as PyTorch's grid_sample(mode=…).
        for (mode, name) in [(Mode::Nearest, "nearest"), (Mode::Bicubic, "bicubic")] {
            let op = format!("grid_sample_{name}_fwd_bwd");
            if wanted(&op) {
                let us = median_us(|| {
                    let g = affine_grid(theta.leaky_trace(), [n, c, 28, 28], false).unwrap();
                    let s = GridSample {
                        mode,
                        padding: Padding::Zeros,
                        align_corners: false,
                    };
                    let y = grid_sample_with(x.clone(), g, s).unwrap();
                    let _ = sum_all(y).backward();
                });
                println!(r#"{{"op":"{op}","shape":[{n},{c},28,28],"ours_us":{us:.1}}}"#);
            }
            // And as the network runs them on the CPU: one op, no grid tensor.
            let op = format!("affine_sample_{name}_fwd_bwd");
            if !wanted(&op) {
                continue;
            }
            let us = median_us(|| {
                let y = affine_sample_with(x.clone(), theta.leaky_trace(), (28, 28), false, mode)
                    .unwrap();
                let _ = sum_all(y).backward();
            });
            println!(r#"{{"op":"{op}","shape":[{n},{c},28,28],"ours_us":{us:.1}}}"#);
        }
    }
    // The seed's four conv → max-pool layers: (name, input, weight, input traced).
    let layers = [
        ("localization.0", [64, 1, 28, 28], [8, 1, 7, 7], false),
        ("localization.3", [64, 8, 11, 11], [10, 8, 5, 5], true),
        ("conv1", [64, 1, 28, 28], [10, 1, 5, 5], true),
        ("conv2", [64, 10, 12, 12], [20, 10, 5, 5], true),
    ];
    for (name, [n, c, h, w], [o, _, k, _], traced) in layers {
        if !wanted(name) && !wanted("conv_pool_fwd_bwd") {
            continue;
        }
        let x: Tensor<(usize, usize, usize, usize), f32, _> = dev.sample_normal_like(&(n, c, h, w));
        let wt: Tensor<(usize, usize, usize, usize), f32, _> =
            dev.sample_normal_like(&(o, c, k, k));
        let b: Tensor<(usize,), f32, _> = dev.sample_normal_like(&(o,));
        let us = median_us(|| {
            let y = if traced {
                conv2d(x.leaky_trace(), wt.leaky_trace(), b.leaky_trace()).unwrap()
            } else {
                conv2d(x.clone(), wt.leaky_trace(), b.leaky_trace()).unwrap()
            };
            let _ = sum_all(max_pool2d(y, 2, 2).unwrap()).backward();
        });
        println!(
            r#"{{"op":"conv_pool_fwd_bwd","layer":"{name}","shape":[{n},{c},{h},{w}],"ours_us":{us:.1}}}"#
        );
    }
}

/// `len` deterministic test values, `sin(i·k)`.
fn fill(len: usize, k: f32) -> Vec<f32> {
    (0..len).map(|i| ((i as f32) * k).sin()).collect()
}

/// The seed's four conv blocks as training runs them (`ConvPoolReluOp`, one half-batch of 32
/// images, conv2 with its dropout scale): forward, and backward with the gradients training asks
/// for (the input's except for localization.0, whose input is the data).
fn block_kernels(wanted: impl Fn(&str) -> bool) {
    let n = 32;
    let layers = [
        ("localization.0", [n, 1, 28, 28], [8, 1, 7, 7], false, false),
        ("localization.3", [n, 8, 11, 11], [10, 8, 5, 5], true, false),
        ("conv1", [n, 1, 28, 28], [10, 1, 5, 5], true, false),
        ("conv2", [n, 10, 12, 12], [20, 10, 5, 5], true, true),
    ];
    for (name, xd, wd, want_x, scaled) in layers {
        if !wanted(name) {
            continue;
        }
        let o = wd[0];
        let (x, wt, b) = (
            fill(xd.iter().product(), 0.31),
            fill(wd.iter().product(), 0.17),
            fill(o, 0.5),
        );
        let scale: Vec<f32> = (0..n * o).map(|i| (i % 2) as f32 * 2.0).collect();
        let (bd, sd) = ([o], [n, o]);
        let mut inputs = vec![
            Buf {
                data: &x,
                dims: &xd,
            },
            Buf {
                data: &wt,
                dims: &wd,
            },
            Buf {
                data: &b,
                dims: &bd,
            },
        ];
        if scaled {
            inputs.push(Buf {
                data: &scale,
                dims: &sd,
            });
        }
        let dims: Vec<&[usize]> = inputs.iter().map(|b| b.dims).collect();
        let op = stn_ops::ConvPoolReluOp::<f32>::default();
        let od = op.out_dims(&dims).unwrap();
        let mut out = vec![0f32; od.iter().product()];
        let fwd = median_us(|| op.cpu_fwd(&inputs, &mut out));
        let go = fill(out.len(), 0.23);
        let (mut gx, mut gw, mut gb) = (vec![0f32; x.len()], vec![0f32; wt.len()], vec![0f32; o]);
        let bwd = median_us(|| {
            // The backward takes the conv output its forward kept.
            op.cpu_fwd(&inputs, &mut out);
            let gx = want_x.then_some(&mut gx[..]);
            let mut grads = [gx, Some(&mut gw[..]), Some(&mut gb[..]), None];
            op.cpu_bwd(&inputs, &go, &mut grads[..inputs.len()]);
        }) - fwd;
        println!(
            r#"{{"op":"conv_block_kernels","layer":"{name}","shape":{xd:?},"fwd_us":{fwd:.1},"bwd_us":{bwd:.1}}}"#
        );
    }
}

/// The seed's four conv blocks as the fused inference forward runs them ([`stn_ops::ConvPoolRelu`]
/// on one image, weights packed once), on the calling thread: µs per image.
fn fused_blocks() {
    let layers = [
        ("localization.0", [1, 28, 28], [8, 1, 7, 7]),
        ("localization.3", [8, 11, 11], [10, 8, 5, 5]),
        ("conv1", [1, 28, 28], [10, 1, 5, 5]),
        ("conv2", [10, 12, 12], [20, 10, 5, 5]),
    ];
    for (name, [c, h, w], [o, _, k, _]) in layers {
        let block = stn_ops::ConvPoolRelu::new(c, h, w, o, k);
        let (x, wt, b) = (
            fill(c * h * w, 0.31),
            fill(o * c * k * k, 0.17),
            fill(o, 0.5),
        );
        let packed = block.pack(&wt);
        let mut scratch = vec![0f32; block.scratch_len()];
        let mut out = vec![0f32; block.out_len()];
        // 100 images per timing: one image's block takes a few microseconds.
        let us = median_us(|| {
            for _ in 0..100 {
                block.run(&x, &packed, &b, &mut scratch, &mut out);
                std::hint::black_box(&out);
            }
        }) / 100.0;
        println!(
            r#"{{"op":"fused_block","layer":"{name}","shape":[{c}, {h}, {w}],"us_per_image":{us:.2}}}"#
        );
    }
}

/// The grid_sample kernels alone on 64 images, one and ten channels: forward, and the backward
/// with the grid's gradient only (as in the STN), on the grid of a random theta.
fn sampler_kernels() {
    let op = stn_ops::GridSample {
        mode: stn_ops::Mode::Bilinear,
        padding: Padding::Zeros,
        align_corners: false,
    };
    let (n, h, w) = (64usize, 28usize, 28usize);
    let theta: Vec<f32> = (0..n * 6)
        .map(|i| ((i as f32) * 0.77).sin() * 1.2)
        .collect();
    let mut grid = vec![0f32; n * h * w * 2];
    let ag = stn_ops::AffineGrid {
        size: [n, 1, h, w],
        align_corners: false,
    };
    ag.cpu_fwd(
        &[Buf {
            data: &theta,
            dims: &[n, 2, 3],
        }],
        &mut grid,
    );
    for c in [1usize, 10] {
        let x: Vec<f32> = (0..n * c * h * w)
            .map(|i| ((i as f32) * 0.31).sin())
            .collect();
        let (xd, gd) = ([n, c, h, w], [n, h, w, 2]);
        let inputs = [
            Buf {
                data: &x,
                dims: &xd,
            },
            Buf {
                data: &grid,
                dims: &gd,
            },
        ];
        let mut out = vec![0f32; n * c * h * w];
        let fwd = median_us(|| op.cpu_fwd(&inputs, &mut out));
        let mut gg = vec![0f32; grid.len()];
        let bwd = median_us(|| op.cpu_bwd(&inputs, &out, &mut [None, Some(&mut gg[..])]));
        println!(
            r#"{{"op":"grid_sample_kernels","shape":[{n},{c},{h},{w}],"fwd_us":{fwd:.1},"bwd_grid_us":{bwd:.1}}}"#
        );
    }
}
