//! `affine_sample_with` against the two ops it fuses (`affine_grid`, then `grid_sample_with` with
//! zero padding): the same output and the same gradient for theta, bit for bit, in f64 and f32,
//! with transforms that send samples outside the image, one and several channels, both
//! alignments, each sampling mode.

use dfdx::prelude::*;
use stn_ops::{
    affine_grid, affine_sample_with, grid_sample_with, Dyn4, GridSample, Mode, OpDevice, Padding,
    Real,
};

fn values<E: Real>(n: usize, seed: f64, scale: f64) -> Vec<E> {
    (0..n)
        .map(|i| E::of((i as f64 * 0.7137 + seed).sin() * scale))
        .collect()
}

fn run<E: Real>(
    fused: bool,
    [n, c, h, w, ho, wo]: [usize; 6],
    align: bool,
    mode: Mode,
) -> [Vec<E>; 2]
where
    Cpu: OpDevice<E>,
{
    let dev = Cpu::default();
    let x: Tensor<Dyn4, E, Cpu> =
        dev.tensor_from_vec(values(n * c * h * w, 0.3, 1.0), (n, c, h, w));
    // Scales up to 1.6 and shifts up to 0.8: many samples fall outside.
    let theta: Tensor<(usize, usize, usize), E, Cpu> =
        dev.tensor_from_vec(values(n * 6, 1.1, 1.6), (n, 2, 3));
    let y = if fused {
        affine_sample_with(x, theta.leaky_trace(), (ho, wo), align, mode).unwrap()
    } else {
        let g = affine_grid(theta.leaky_trace(), [n, c, ho, wo], align).unwrap();
        let s = GridSample {
            mode,
            padding: Padding::Zeros,
            align_corners: align,
        };
        grid_sample_with(x, g, s).unwrap()
    };
    let shape = *y.shape();
    let r: Tensor<Dyn4, E, Cpu> =
        dev.tensor_from_vec(values(shape.num_elements(), 2.2, 1.0), shape);
    let out = y.retaped::<NoneTape>().as_vec();
    let g = (y * r).sum::<Rank0, _>().backward();
    [out, g.get(&theta).as_vec()]
}

fn same<E: Real>(dims: [usize; 6], align: bool, mode: Mode)
where
    Cpu: OpDevice<E>,
{
    let (a, b) = (
        run::<E>(true, dims, align, mode),
        run::<E>(false, dims, align, mode),
    );
    for (what, (u, v)) in ["output", "grad theta"].iter().zip(a.iter().zip(&b)) {
        assert_eq!(u.len(), v.len());
        for (i, (p, q)) in u.iter().zip(v).enumerate() {
            assert!(
                p == q,
                "{dims:?} align {align} {mode:?} {what}[{i}]: fused {p:?}, two ops {q:?}"
            );
        }
    }
    assert!(a[0].iter().any(|&v| v != E::zero()));
    // Nearest sampling has no gradient for theta; the others do.
    assert_eq!(
        a[1].iter().any(|&g| g != E::zero()),
        mode != Mode::Nearest,
        "{mode:?}"
    );
}

#[test]
fn fused_sampler_equals_affine_grid_then_grid_sample_bit_for_bit() {
    for dims in [
        [4, 1, 28, 28, 28, 28],
        [3, 1, 42, 42, 28, 28],
        [2, 3, 9, 7, 5, 11],
    ] {
        for align in [false, true] {
            for mode in [Mode::Bilinear, Mode::Nearest, Mode::Bicubic] {
                same::<f64>(dims, align, mode);
                same::<f32>(dims, align, mode);
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let dev = Cpu::default();
    let x: Tensor<Dyn4, f32, Cpu> = dev.zeros_like(&(2, 1, 8, 8));
    let theta: Tensor<(usize, usize, usize), f32, Cpu> = dev.zeros_like(&(3, 2, 3));
    let e = affine_sample_with(x, theta.leaky_trace(), (4, 4), false, Mode::Bicubic)
        .err()
        .unwrap();
    assert!(e.to_string().contains("theta must be 2×2×3"), "{e}");
}
