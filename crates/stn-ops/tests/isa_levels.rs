//! Every ISA level of the CPU kernels gives the same results (`crates/stn-ops/src/isa.rs`): each
//! op's forward and backward, run at every level this CPU has, against the portable level's.
//!
//! One test in its own binary: the level is process-wide (`isa::force`), so nothing else may run
//! kernels while it switches. The portable level rounds a multiply-add twice where the others
//! fuse it, and AVX-512 splits some sums over 16 lanes instead of 8: the results agree to float32's
//! noise, relative to each output's scale (the AVX2 level is the x86-64-v3 build of before, whose
//! training the seed's checkpoints reproduce bit for bit).

mod common;

use common::randn;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use stn_ops::isa::{self, Level};
use stn_ops::op::Buf;
use stn_ops::{
    AffineGrid, AffineSampler, AvgPool2d, Conv2d, CustomOp, GridSample, MaxPool2d, Mode, Padding,
    ProjectiveGrid, StridedConv2d, TpsGrid,
};

/// An op's name and a run of it: its outputs (forward and gradients) at the current level.
struct Case {
    name: String,
    run: Box<dyn Fn() -> Vec<Vec<f32>>>,
}

fn f32s(rng: &mut ChaCha8Rng, n: usize, scale: f64) -> Vec<f32> {
    randn(rng, n, scale).into_iter().map(|v| v as f32).collect()
}

/// The forward, then the backward of `op` for a fixed output gradient: the output and every
/// input's gradient.
fn fwd_bwd<Op: CustomOp<f32>>(op: &Op, inputs: &[(Vec<f32>, Vec<usize>)]) -> Vec<Vec<f32>> {
    let bufs: Vec<Buf<f32>> = inputs
        .iter()
        .map(|(d, s)| Buf { data: d, dims: s })
        .collect();
    let (out, _) = stn_ops::forward_cpu(op, &bufs).expect("valid shapes");
    let go: Vec<f32> = (0..out.len()).map(|i| ((i as f32) * 0.37).sin()).collect();
    let mut grads: Vec<Vec<f32>> = inputs.iter().map(|(d, _)| vec![0.0; d.len()]).collect();
    {
        let mut g: Vec<Option<&mut [f32]>> = grads.iter_mut().map(|g| Some(&mut g[..])).collect();
        op.cpu_bwd(&bufs, &go, &mut g);
    }
    let mut all = vec![out];
    all.extend(grads);
    all
}

fn cases() -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut cases = Vec::new();
    let mut add =
        |name: String, run: Box<dyn Fn() -> Vec<Vec<f32>>>| cases.push(Case { name, run });
    // Convolutions: the row kernel (one channel, 8 or 10 filters), the implicit im2col (one
    // channel, other counts), the explicit one (several), odd widths
    // (partial register blocks and masked tails), and the strided direct loops.
    for (n, c, h, w, o, k) in [
        (5, 1, 28, 28, 8, 7),
        (3, 1, 28, 28, 10, 5),
        (2, 1, 11, 13, 5, 3),
        (4, 10, 12, 12, 20, 5),
        (3, 3, 9, 13, 5, 3),
    ] {
        let x = f32s(&mut rng, n * c * h * w, 1.0);
        let wt = f32s(&mut rng, o * c * k * k, 0.3);
        let b = f32s(&mut rng, o, 0.1);
        let inputs = vec![(x, vec![n, c, h, w]), (wt, vec![o, c, k, k]), (b, vec![o])];
        let i2 = inputs.clone();
        add(
            format!("conv2d {n}×{c}×{h}×{w} * {o}×{k}×{k}"),
            Box::new(move || fwd_bwd(&Conv2d, &inputs)),
        );
        add(
            format!("strided_conv2d {n}×{c}×{h}×{w} * {o}×{k}×{k} s2 p1"),
            Box::new(move || {
                fwd_bwd(
                    &StridedConv2d {
                        stride: 2,
                        padding: 1,
                    },
                    &i2,
                )
            }),
        );
    }
    // Pools.
    let x = f32s(&mut rng, 6 * 24 * 24, 1.0);
    for relu in [false, true] {
        let inputs = vec![(x.clone(), vec![2, 3, 24, 24])];
        add(
            format!("max_pool2d 2×2 relu={relu}"),
            Box::new(move || {
                fwd_bwd(
                    &MaxPool2d {
                        kernel: 2,
                        stride: 2,
                        relu,
                    },
                    &inputs,
                )
            }),
        );
    }
    let inputs = vec![(x, vec![2, 3, 24, 24])];
    add(
        "avg_pool2d 3/2".into(),
        Box::new(move || {
            fwd_bwd(
                &AvgPool2d {
                    kernel: 3,
                    stride: 2,
                },
                &inputs,
            )
        }),
    );
    // The sampler: every mode and padding, one and ten channels, a grid reaching outside.
    for c in [1usize, 10] {
        let x = f32s(&mut rng, 3 * c * 28 * 28, 1.0);
        let grid = f32s(&mut rng, 3 * 20 * 21 * 2, 1.3);
        for mode in [Mode::Bilinear, Mode::Nearest, Mode::Bicubic] {
            for padding in [Padding::Zeros, Padding::Border, Padding::Reflection] {
                let op = GridSample {
                    mode,
                    padding,
                    align_corners: c == 1,
                };
                let inputs = vec![
                    (x.clone(), vec![3, c, 28, 28]),
                    (grid.clone(), vec![3, 20, 21, 2]),
                ];
                add(
                    format!("grid_sample {mode:?} {padding:?} c={c}"),
                    Box::new(move || fwd_bwd(&op, &inputs)),
                );
                // The STN's case: no input gradient (the zero-padding fast paths).
                let inputs = [
                    (x.clone(), vec![3, c, 28, 28]),
                    (grid.clone(), vec![3, 20, 21, 2]),
                ];
                add(
                    format!("grid_sample {mode:?} {padding:?} c={c}, grid gradient only"),
                    Box::new(move || {
                        let bufs: Vec<Buf<f32>> = inputs
                            .iter()
                            .map(|(d, s)| Buf { data: d, dims: s })
                            .collect();
                        let (out, _) = stn_ops::forward_cpu(&op, &bufs).expect("valid");
                        let mut gg = vec![0.0; inputs[1].0.len()];
                        op.cpu_bwd(&bufs, &out, &mut [None, Some(&mut gg[..])]);
                        vec![out, gg]
                    }),
                );
            }
        }
        let theta = f32s(&mut rng, 3 * 6, 0.8);
        let inputs = vec![
            (x.clone(), vec![3, c, 28, 28]),
            (theta.clone(), vec![3, 2, 3]),
        ];
        for mode in [Mode::Bilinear, Mode::Nearest, Mode::Bicubic] {
            let inputs = inputs.clone();
            add(
                format!("affine_sample {mode:?} c={c}"),
                Box::new(move || {
                    fwd_bwd(
                        &AffineSampler {
                            out_hw: (28, 28),
                            align_corners: false,
                            mode,
                        },
                        &inputs,
                    )
                }),
            );
        }
    }
    // The heads' grids.
    let theta = f32s(&mut rng, 4 * 6, 0.8);
    let inputs = vec![(theta, vec![4, 2, 3])];
    add(
        "affine_grid".into(),
        Box::new(move || {
            fwd_bwd(
                &AffineGrid {
                    size: [4, 1, 17, 19],
                    align_corners: false,
                },
                &inputs,
            )
        }),
    );
    let h = f32s(&mut rng, 4 * 8, 0.3);
    let inputs = vec![(h, vec![4, 8])];
    add(
        "projective_grid".into(),
        Box::new(move || {
            fwd_bwd(
                &ProjectiveGrid {
                    size: [4, 17, 19],
                    align_corners: true,
                },
                &inputs,
            )
        }),
    );
    let tps = TpsGrid { size: [17, 19] };
    let m: Vec<f32> = TpsGrid::matrix(4, [17, 19], false)
        .expect("a 4×4 grid")
        .iter()
        .map(|&v| v as f32)
        .collect();
    let pts = f32s(&mut rng, 2 * 16 * 2, 1.0);
    let inputs = vec![(pts, vec![2, 16, 2]), (m, vec![17 * 19, 16])];
    add("tps_grid".into(), Box::new(move || fwd_bwd(&tps, &inputs)));
    cases
}

#[test]
fn every_level_the_cpu_runs_agrees_with_the_portable_one() {
    let levels: Vec<Level> = Level::ALL
        .into_iter()
        .filter(|&l| l <= isa::detected())
        .collect();
    assert!(levels.contains(&Level::Scalar));
    let cases = cases();
    isa::force(Level::Scalar).unwrap();
    let want: Vec<Vec<Vec<f32>>> = cases.iter().map(|c| (c.run)()).collect();
    for &level in &levels[1..] {
        isa::force(level).unwrap();
        assert_eq!(isa::level(), level);
        for (case, want) in cases.iter().zip(&want) {
            let got = (case.run)();
            for (k, (g, w)) in got.iter().zip(want).enumerate() {
                let scale = w.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for (i, (a, b)) in g.iter().zip(w).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * scale || (a.is_nan() && b.is_nan()),
                        "{} at {level}, output {k}[{i}]: {a} vs portable {b} (scale {scale})",
                        case.name
                    );
                }
            }
        }
    }
    // More than the CPU has is refused, never run.
    if isa::detected() < Level::Avx512 {
        assert!(isa::force(Level::Avx512).is_err());
    }
    eprintln!("levels compared: {levels:?}, {} cases each", cases.len());
}
