//! On a GPU (feature `cuda`, run by scripts/gpu-check.sh): every op on dfdx's CUDA device against
//! the CPU op, outputs and gradients, random shapes, within 1e-5 (relative to each tensor's scale).
#![cfg(feature = "cuda")]

mod common;

use dfdx::prelude::*;
use dfdx::tensor::Cuda;
use rand::{Rng, SeedableRng};
use stn_ops::{affine_grid, conv2d, grid_sample, max_pool2d, Dyn4, Padding};

use common::assert_close_scaled as close;

/// affine_grid → grid_sample → Σ·r, forward and backward, on one device; returns
/// (output, grad input, grad theta).
fn stn<D: stn_ops::OpDevice<f32>>(
    dev: &D,
    x: &[f32],
    th: &[f32],
    r: &[f32],
    s: Dyn4,
    out: [usize; 4],
    pad: Padding,
    ac: bool,
) -> [Vec<f32>; 3] {
    let xt = dev.tensor_from_vec(x.to_vec(), s);
    let tt = dev.tensor_from_vec(th.to_vec(), (s.0, 2usize, 3usize));
    let rt = dev.tensor_from_vec(r.to_vec(), (out[0], out[1], out[2], out[3]));
    let g = affine_grid(tt.leaky_trace(), out, ac).unwrap();
    let y = grid_sample(xt.leaky_trace(), g, pad, ac).unwrap();
    let yv = y.as_vec();
    let grads = (y * rt).sum::<Rank0, _>().backward();
    [yv, grads.get(&xt).as_vec(), grads.get(&tt).as_vec()]
}

#[test]
fn stn_ops_on_cuda_match_the_cpu() {
    let (cpu, gpu) = (Cpu::default(), Cuda::default());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for trial in 0..20 {
        let s: Dyn4 = (
            rng.gen_range(1..65),
            rng.gen_range(1..11),
            rng.gen_range(4..43),
            rng.gen_range(4..43),
        );
        let out = [s.0, s.1, 28, 28];
        let x: Vec<f32> = (0..s.0 * s.1 * s.2 * s.3)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let th: Vec<f32> = (0..s.0 * 6).map(|_| rng.gen_range(-1.2..1.2)).collect();
        let r: Vec<f32> = (0..s.0 * s.1 * 28 * 28)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let pad = [Padding::Zeros, Padding::Border, Padding::Reflection][trial % 3];
        let a = stn(&gpu, &x, &th, &r, s, out, pad, trial % 2 == 0);
        let b = stn(&cpu, &x, &th, &r, s, out, pad, trial % 2 == 0);
        for (k, name) in ["output", "grad_input", "grad_theta"].iter().enumerate() {
            close(&format!("{name} {s:?} {pad:?}"), &a[k], &b[k]);
        }
    }
}

#[test]
fn conv_and_pool_on_cuda_match_the_cpu() {
    let (cpu, gpu) = (Cpu::default(), Cuda::default());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    for (n, c, h, w, o, k) in [
        (64, 1, 28, 28, 8, 7),
        (64, 8, 11, 11, 10, 5),
        (64, 1, 28, 28, 10, 5),
        (64, 10, 12, 12, 20, 5),
    ] {
        let x: Vec<f32> = (0..n * c * h * w)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let wt: Vec<f32> = (0..o * c * k * k)
            .map(|_| rng.gen_range(-0.5..0.5))
            .collect();
        let b: Vec<f32> = (0..o).map(|_| rng.gen_range(-0.5..0.5)).collect();
        fn run<D: stn_ops::OpDevice<f32>>(
            d: &D,
            x: &[f32],
            wt: &[f32],
            b: &[f32],
            s: [usize; 6],
        ) -> [Vec<f32>; 4] {
            let [n, c, h, w, o, k] = s;
            let (xt, wtt, bt) = (
                d.tensor_from_vec(x.to_vec(), (n, c, h, w)),
                d.tensor_from_vec(wt.to_vec(), (o, c, k, k)),
                d.tensor_from_vec(b.to_vec(), (o,)),
            );
            let y = max_pool2d(
                conv2d(xt.leaky_trace(), wtt.leaky_trace(), bt.leaky_trace()).unwrap(),
                2,
                2,
            )
            .unwrap();
            let yv = y.as_vec();
            let g = y.square().sum::<Rank0, _>().backward();
            [
                yv,
                g.get(&xt).as_vec(),
                g.get(&wtt).as_vec(),
                g.get(&bt).as_vec(),
            ]
        }
        let s = [n, c, h, w, o, k];
        let (a, bb) = (run(&gpu, &x, &wt, &b, s), run(&cpu, &x, &wt, &b, s));
        for (i, name) in ["pooled", "grad_x", "grad_w", "grad_b"].iter().enumerate() {
            close(&format!("{name} {s:?}"), &a[i], &bb[i]);
        }
    }
}
