//! Finite-difference gradient checks in f64 at random points, on pixel centres and borders, and
//! shape errors that must be errors, not panics.

use dfdx::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use stn_ops::{affine_grid, conv2d, grid_sample, max_pool2d, Dyn4, OpError, Padding};

mod common;

use common::{assert_grad, numeric_grad, randn};

type D4 = Tensor<Dyn4, f64, Cpu>;

/// L = Σ grid_sample(x, affine_grid(theta)) · r
#[allow(clippy::too_many_arguments)]
fn stn_loss(
    dev: &Cpu,
    x: &[f64],
    theta: &[f64],
    r: &D4,
    xs: Dyn4,
    out: [usize; 4],
    pad: Padding,
    ac: bool,
) -> f64 {
    let x = dev.tensor_from_vec(x.to_vec(), xs);
    let t = dev.tensor_from_vec(theta.to_vec(), (out[0], 2usize, 3usize));
    let g = affine_grid(t, out, ac).unwrap();
    (grid_sample(x, g, pad, ac).unwrap() * r.clone())
        .sum::<Rank0, _>()
        .array()
}

#[test]
fn stn_gradients_match_finite_differences() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let xs: Dyn4 = (2, 3, 5, 6);
    let out = [2, 3, 4, 5];
    for pad in [Padding::Zeros, Padding::Border, Padding::Reflection] {
        for ac in [false, true] {
            for trial in 0..4 {
                let x = randn(&mut rng, 2 * 3 * 5 * 6, 1.0);
                // Scales up to 2 and shifts up to 1.5 send many samples outside the image.
                let theta: Vec<f64> = (0..2)
                    .flat_map(|_| {
                        let s = if trial % 2 == 0 { 0.8 } else { 2.0 };
                        let a = randn(&mut rng, 6, s);
                        [a[0], a[1], a[2] * 0.75, a[3], a[4], a[5] * 0.75]
                    })
                    .collect();
                let r = dev.tensor_from_vec(randn(&mut rng, 2 * 3 * 4 * 5, 1.0), (2, 3, 4, 5));
                let xt = dev.tensor_from_vec(x.clone(), xs);
                let tt = dev.tensor_from_vec(theta.clone(), (2usize, 2usize, 3usize));
                let g = affine_grid(tt.leaky_trace(), out, ac).unwrap();
                let grads = (grid_sample(xt.leaky_trace(), g, pad, ac).unwrap() * r.clone())
                    .sum()
                    .backward();
                let tag = format!("{pad:?} ac={ac} trial {trial}");
                let nx = numeric_grad(&x, 1e-6, |p| {
                    stn_loss(&dev, p, &theta, &r, xs, out, pad, ac)
                });
                assert_grad(
                    &format!("d/dinput {tag}"),
                    &grads.get(&xt).as_vec(),
                    &nx,
                    1e-6,
                );
                let nt = numeric_grad(&theta, 1e-7, |p| {
                    stn_loss(&dev, &x, p, &r, xs, out, pad, ac)
                });
                assert_grad(
                    &format!("d/dtheta {tag}"),
                    &grads.get(&tt).as_vec(),
                    &nt,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn grid_gradient_on_pixel_centres_and_borders_is_the_right_derivative() {
    // On a pixel centre the bilinear interpolant has a kink; PyTorch (and we) take the slope of the
    // cell to the right/below (floor convention), so compare with a one-sided forward difference.
    // The centres include the image's first and last pixels, whose right neighbours read zeros.
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (h, w) = (4usize, 5usize);
    let x = randn(&mut rng, h * w, 1.0);
    let xt = dev.tensor_from_vec(x, (1, 1, h, w));
    for ac in [true, false] {
        // Normalised coordinate of pixel centre i along an axis of n pixels.
        let centre = |i: usize, n: usize| {
            if ac {
                -1.0 + 2.0 * i as f64 / (n - 1) as f64
            } else {
                (2.0 * i as f64 + 1.0) / n as f64 - 1.0
            }
        };
        let mut grid = Vec::new();
        for i in 0..h {
            for j in 0..w {
                grid.extend([centre(j, w), centre(i, h)]);
            }
        }
        let loss = |g: &[f64]| -> f64 {
            let gt = dev.tensor_from_vec(g.to_vec(), (1, h, w, 2));
            grid_sample(xt.clone(), gt, Padding::Zeros, ac)
                .unwrap()
                .sum::<Rank0, _>()
                .array()
        };
        let gt = dev.tensor_from_vec(grid.clone(), (1, h, w, 2));
        let analytic = grid_sample(xt.clone(), gt.leaky_trace(), Padding::Zeros, ac)
            .unwrap()
            .sum()
            .backward()
            .get(&gt)
            .as_vec();
        let eps = 1e-7;
        let base = loss(&grid);
        for k in 0..grid.len() {
            let mut g = grid.clone();
            g[k] += eps;
            let forward = (loss(&g) - base) / eps;
            assert!(
                (analytic[k] - forward).abs() < 1e-5 * (1.0 + forward.abs()),
                "ac={ac} coord {k}: {} vs {forward}",
                analytic[k]
            );
        }
        // On the centres, sampling returns the image itself.
        let out = grid_sample(
            xt.clone(),
            dev.tensor_from_vec(grid, (1, h, w, 2)),
            Padding::Zeros,
            ac,
        )
        .unwrap();
        for (a, b) in out.as_vec().iter().zip(xt.as_vec()) {
            assert!((a - b).abs() < 1e-12);
        }
    }
}

#[test]
fn conv_pool_gradients_match_finite_differences() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (xs, ws) = (
        (2usize, 3usize, 9usize, 8usize),
        (4usize, 3usize, 3usize, 2usize),
    );
    let x = randn(&mut rng, 2 * 3 * 9 * 8, 1.0);
    let w = randn(&mut rng, 4 * 3 * 3 * 2, 0.5);
    let b = randn(&mut rng, 4, 0.5);
    let r = dev.tensor_from_vec(
        randn(&mut rng, 2 * 4 * 3 * 3, 1.0),
        (2usize, 4usize, 3usize, 3usize),
    );
    let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
        let y = conv2d(
            dev.tensor_from_vec(x.to_vec(), xs),
            dev.tensor_from_vec(w.to_vec(), ws),
            dev.tensor_from_vec(b.to_vec(), (4usize,)),
        )
        .unwrap();
        (max_pool2d(y, 2, 2).unwrap() * r.clone())
            .sum::<Rank0, _>()
            .array()
    };
    let (xt, wt, bt) = (
        dev.tensor_from_vec(x.clone(), xs),
        dev.tensor_from_vec(w.clone(), ws),
        dev.tensor_from_vec(b.clone(), (4usize,)),
    );
    let y = conv2d(xt.leaky_trace(), wt.leaky_trace(), bt.leaky_trace()).unwrap();
    let grads = (max_pool2d(y, 2, 2).unwrap() * r.clone()).sum().backward();
    assert_grad(
        "d/dx",
        &grads.get(&xt).as_vec(),
        &numeric_grad(&x, 1e-6, |p| loss(p, &w, &b)),
        1e-6,
    );
    assert_grad(
        "d/dw",
        &grads.get(&wt).as_vec(),
        &numeric_grad(&w, 1e-6, |p| loss(&x, p, &b)),
        1e-6,
    );
    assert_grad(
        "d/db",
        &grads.get(&bt).as_vec(),
        &numeric_grad(&b, 1e-6, |p| loss(&x, &w, p)),
        1e-6,
    );
}

#[test]
fn grid_gets_its_gradient_when_the_images_carry_no_tape() {
    // The images fed to an STN carry no tape: grid_sample must still give the grid its gradient.
    let dev = Cpu::default();
    let x: D4 = dev.tensor_from_vec((0..16).map(|v| v as f64).collect(), (1, 1, 4, 4));
    let theta = dev.tensor_from_vec(
        vec![0.9, 0.1, 0.05, -0.1, 0.8, 0.0],
        (1usize, 2usize, 3usize),
    );
    let g = affine_grid(theta.leaky_trace(), [1, 1, 4, 4], false).unwrap();
    let grads = grid_sample(x, g, Padding::Zeros, false)
        .unwrap()
        .sum()
        .backward();
    assert!(grads.get(&theta).as_vec().iter().any(|v| v.abs() > 1e-3));
}

fn shape_err<T>(r: Result<T, OpError>) -> String {
    match r {
        Err(e @ OpError::Shape { .. }) => e.to_string(),
        Err(e) => panic!("expected a shape error, got {e}"),
        Ok(_) => panic!("expected a shape error"),
    }
}

#[test]
fn mismatched_shapes_are_errors_not_panics() {
    let dev = Cpu::default();
    let x: D4 = dev.zeros_like(&(2, 1, 5, 5));
    let g: D4 = dev.zeros_like(&(3, 4, 4, 2));
    assert!(shape_err(grid_sample(x.clone(), g, Padding::Zeros, false))
        .contains("grid batch 3 ≠ input batch 2"));
    let g: D4 = dev.zeros_like(&(2, 4, 4, 3));
    assert!(shape_err(grid_sample(x.clone(), g, Padding::Zeros, false))
        .contains("last dimension must be 2"));
    let g3 = dev.zeros_like(&(2usize, 4usize, 2usize));
    assert!(shape_err(grid_sample(x.clone(), g3, Padding::Zeros, false)).contains("4 dimensions"));
    let theta = dev.zeros_like(&(2usize, 3usize, 3usize));
    assert!(shape_err(affine_grid::<_, f64, _, _>(theta, [2, 1, 5, 5], false)).contains("N×2×3"));
    let theta = dev.zeros_like(&(3usize, 2usize, 3usize));
    assert!(shape_err(affine_grid::<_, f64, _, _>(theta, [2, 1, 5, 5], false)).contains("batch"));
    let w: D4 = dev.zeros_like(&(4, 2, 3, 3));
    let b = dev.zeros_like(&(4usize,));
    assert!(shape_err(conv2d(x.clone(), w, b.clone())).contains("input channels"));
    let w: D4 = dev.zeros_like(&(4, 1, 6, 6));
    assert!(shape_err(conv2d(x.clone(), w, b)).contains("does not fit"));
    let small: D4 = dev.zeros_like(&(1, 1, 1, 1));
    assert!(shape_err(max_pool2d(small, 2, 2)).contains("does not fit"));
}
