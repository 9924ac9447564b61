//! Forward + backward time of each op at the seed network's shapes, one JSON line per op with the
//! median over repeated runs. `scripts/bench-ops.sh` runs this beside the same ops in PyTorch.
//!
//!     cargo bench -p stn-ops --bench ops            # RAYON_NUM_THREADS sets the threads

use std::time::Instant;

// Like the binaries: glibc returns freed pages to the kernel and page-faults them back on every
// step; mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use dfdx::prelude::*;
use stn_ops::{affine_grid, conv2d, grid_sample, max_pool2d, Padding};

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
    let dev = Cpu::seed_from_u64(0);
    for c in [1usize, 10] {
        let n = 64;
        let x: Tensor<(usize, usize, usize, usize), f32, _> =
            dev.sample_normal_like(&(n, c, 28, 28));
        let theta: Tensor<(usize, usize, usize), f32, _> = dev.sample_normal_like(&(n, 2, 3));
        let us = median_us(|| {
            // As in the STN: theta is traced, the images are not.
            let g = affine_grid(theta.leaky_trace(), [n, c, 28, 28], false).unwrap();
            let y = grid_sample(x.clone(), g, Padding::Zeros, false).unwrap();
            let _ = y.sum::<Rank0, _>().backward();
        });
        println!(r#"{{"op":"grid_sample_fwd_bwd","shape":[{n},{c},28,28],"ours_us":{us:.1}}}"#);
    }
    // The seed's four conv → max-pool layers: (name, input, weight, input traced).
    let layers = [
        ("localization.0", [64, 1, 28, 28], [8, 1, 7, 7], false),
        ("localization.3", [64, 8, 11, 11], [10, 8, 5, 5], true),
        ("conv1", [64, 1, 28, 28], [10, 1, 5, 5], true),
        ("conv2", [64, 10, 12, 12], [20, 10, 5, 5], true),
    ];
    for (name, [n, c, h, w], [o, _, k, _], traced) in layers {
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
            let _ = max_pool2d(y, 2, 2).unwrap().sum::<Rank0, _>().backward();
        });
        println!(
            r#"{{"op":"conv_pool_fwd_bwd","layer":"{name}","shape":[{n},{c},{h},{w}],"ours_us":{us:.1}}}"#
        );
    }
}
