//! The CUDA kernels' bodies, compiled for the host, against the CPU ops: PyTorch's fixture cases
//! and random shapes, outputs and every gradient within 1e-5. This checks the GPU code's index
//! arithmetic, bounds handling and accumulation in CI, where there is no GPU.

mod common;

use common::{load, Cases, T};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use stn_ops::kernels_host as k;
use stn_ops::{affine_grid, conv2d, grid_sample_with, max_pool2d, GridSample, Mode, Padding};

use common::assert_close_scaled as close;

fn padding_code(p: Padding) -> i32 {
    match p {
        Padding::Zeros => 0,
        Padding::Border => 1,
        Padding::Reflection => 2,
    }
}

/// affine_grid → grid_sample forward and backward, kernel vs CPU op.
#[allow(clippy::too_many_arguments)]
fn check_stn(
    x: &[f32],
    theta: &[f32],
    go: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    (ho, wo): (usize, usize),
    pad: Padding,
    ac: bool,
    mode: Mode,
) {
    let dev = Cpu::default();
    let xt = dev.tensor_from_vec(x.to_vec(), (n, c, h, w));
    let tt = dev.tensor_from_vec(theta.to_vec(), (n, 2usize, 3usize));
    let got = dev.tensor_from_vec(go.to_vec(), (n, c, ho, wo));
    let grid = affine_grid(tt.leaky_trace(), [n, c, ho, wo], ac).unwrap();
    let grid_v = grid.as_vec();
    let op = GridSample {
        mode,
        padding: pad,
        align_corners: ac,
    };
    let out = grid_sample_with(xt.leaky_trace(), grid, op).unwrap();
    let out_v = out.as_vec();
    let grads = (out * got).sum::<Rank0, _>().backward();
    let (gx_cpu, gt_cpu) = (grads.get(&xt).as_vec(), grads.get(&tt).as_vec());

    let p = ho * wo;
    let (mut g, mut o) = (vec![0f32; n * p * 2], vec![0f32; n * c * p]);
    let (mut gi, mut gg, mut gt) = (
        vec![0f32; x.len()],
        vec![0f32; n * p * 2],
        vec![0f32; n * 6],
    );
    let (pc, a) = (padding_code(pad), ac as i32);
    // SAFETY: every buffer has the length its kernel indexes (n, c, h, w, p as given).
    unsafe {
        k::affine_grid_fwd(theta.as_ptr(), g.as_mut_ptr(), n as _, ho as _, wo as _, a);
        k::grid_sample_fwd(
            x.as_ptr(),
            g.as_ptr(),
            o.as_mut_ptr(),
            n as _,
            c as _,
            h as _,
            w as _,
            p as _,
            pc,
            a,
            mode.code(),
        );
        k::grid_sample_bwd(
            x.as_ptr(),
            g.as_ptr(),
            go.as_ptr(),
            gi.as_mut_ptr(),
            gg.as_mut_ptr(),
            n as _,
            c as _,
            h as _,
            w as _,
            p as _,
            pc | (a << 2) | (1 << 3) | (1 << 4) | (mode.code() << 5),
        );
        k::affine_grid_bwd(gg.as_ptr(), gt.as_mut_ptr(), n as _, ho as _, wo as _, a);
    }
    let tag = format!("{mode:?} {pad:?} ac={ac} {:?}", (n, c, h, w));
    close(&format!("grid {tag}"), &g, &grid_v);
    close(&format!("output {tag}"), &o, &out_v);
    close(&format!("grad_input {tag}"), &gi, &gx_cpu);
    close(&format!("grad_theta {tag}"), &gt, &gt_cpu);
}

#[derive(Deserialize)]
struct GridCase {
    align_corners: bool,
    padding_mode: String,
    input: T,
    theta: T,
    out_size: Vec<usize>,
    grad_output: T,
}

#[test]
fn stn_kernels_match_the_cpu_ops_on_the_fixture_cases() {
    let cases: Cases<GridCase> = load("grid_sample_torch.json");
    for c in &cases.cases {
        let s = &c.input.shape;
        check_stn(
            &c.input.f32(),
            &c.theta.f32(),
            &c.grad_output.f32(),
            (s[0], s[1], s[2], s[3]),
            (c.out_size[2], c.out_size[3]),
            c.padding_mode.parse().unwrap(),
            c.align_corners,
            Mode::Bilinear,
        );
    }
}

#[test]
fn stn_kernels_match_the_cpu_ops_on_random_shapes() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for trial in 0..36 {
        let (n, c, h, w) = (
            rng.gen_range(1..4),
            rng.gen_range(1..4),
            rng.gen_range(2..12),
            rng.gen_range(2..12),
        );
        let (ho, wo) = (rng.gen_range(1..10), rng.gen_range(1..10));
        let x: Vec<f32> = (0..n * c * h * w)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let theta: Vec<f32> = (0..n * 6).map(|_| rng.gen_range(-1.5..1.5)).collect();
        let go: Vec<f32> = (0..n * c * ho * wo)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let pad = [Padding::Zeros, Padding::Border, Padding::Reflection][trial % 3];
        // Every mode with every padding and both align_corners over the 36 trials.
        let mode = [Mode::Bilinear, Mode::Nearest, Mode::Bicubic][(trial / 3) % 3];
        let ac = (trial / 9) % 2 == 0;
        check_stn(&x, &theta, &go, (n, c, h, w), (ho, wo), pad, ac, mode);
    }
}

#[test]
fn conv_and_pool_kernels_match_the_cpu_ops() {
    let dev = Cpu::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    for (n, c, h, w, o, kk) in [
        (2, 1, 28, 28, 8, 7),
        (2, 8, 11, 11, 10, 5),
        (3, 1, 28, 28, 10, 5),
        (2, 10, 12, 12, 20, 5),
        (1, 3, 9, 7, 4, 3),
    ] {
        let x: Vec<f32> = (0..n * c * h * w)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let wt: Vec<f32> = (0..o * c * kk * kk)
            .map(|_| rng.gen_range(-0.5..0.5))
            .collect();
        let b: Vec<f32> = (0..o).map(|_| rng.gen_range(-0.5..0.5)).collect();
        let (ho, wo) = (h - kk + 1, w - kk + 1);
        let (po, pw) = ((ho - 2) / 2 + 1, (wo - 2) / 2 + 1);
        let gp: Vec<f32> = (0..n * o * po * pw)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        // CPU ops.
        let (xt, wtt, bt) = (
            dev.tensor_from_vec(x.clone(), (n, c, h, w)),
            dev.tensor_from_vec(wt.clone(), (o, c, kk, kk)),
            dev.tensor_from_vec(b.clone(), (o,)),
        );
        let y = conv2d(xt.leaky_trace(), wtt.leaky_trace(), bt.leaky_trace()).unwrap();
        let y_v = y.as_vec();
        let pooled = max_pool2d(y, 2, 2).unwrap();
        let pooled_v = pooled.as_vec();
        let grads = (pooled * dev.tensor_from_vec(gp.clone(), (n, o, po, pw)))
            .sum::<Rank0, _>()
            .backward();
        // Kernels.
        let (mut yk, mut pk) = (vec![0f32; n * o * ho * wo], vec![0f32; gp.len()]);
        let (mut gy, mut gx, mut gw, mut gb) = (
            vec![0f32; yk.len()],
            vec![0f32; x.len()],
            vec![0f32; wt.len()],
            vec![0f32; o],
        );
        let (n_, c_, h_, w_, o_, k_) = (n as _, c as _, h as _, w as _, o as _, kk as _);
        // SAFETY: every buffer has the length its kernel indexes.
        unsafe {
            k::conv2d_fwd(
                x.as_ptr(),
                wt.as_ptr(),
                b.as_ptr(),
                yk.as_mut_ptr(),
                n_,
                c_,
                h_,
                w_,
                o_,
                k_,
                k_,
            );
            k::max_pool2d_fwd(
                yk.as_ptr(),
                pk.as_mut_ptr(),
                (n * o) as _,
                ho as _,
                wo as _,
                2,
                2,
            );
            k::max_pool2d_bwd(
                yk.as_ptr(),
                gp.as_ptr(),
                gy.as_mut_ptr(),
                (n * o) as _,
                ho as _,
                wo as _,
                2,
                2,
            );
            k::conv2d_bwd_input(
                wt.as_ptr(),
                gy.as_ptr(),
                gx.as_mut_ptr(),
                n_,
                c_,
                h_,
                w_,
                o_,
                k_,
                k_,
            );
            k::conv2d_bwd_weight(
                x.as_ptr(),
                gy.as_ptr(),
                gw.as_mut_ptr(),
                gb.as_mut_ptr(),
                n_,
                c_,
                h_,
                w_,
                o_,
                k_,
                k_,
                3,
            );
        }
        let tag = format!("{:?}", (n, c, h, w, o, kk));
        close(&format!("conv {tag}"), &yk, &y_v);
        close(&format!("pool {tag}"), &pk, &pooled_v);
        close(&format!("grad_x {tag}"), &gx, &grads.get(&xt).as_vec());
        close(&format!("grad_w {tag}"), &gw, &grads.get(&wtt).as_vec());
        close(&format!("grad_b {tag}"), &gb, &grads.get(&bt).as_vec());
    }
}
