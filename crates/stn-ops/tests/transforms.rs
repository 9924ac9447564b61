//! The paper's transforms and every sampling mode against PyTorch's values
//! (`tests/golden/transforms_torch.json`, made by `scripts/golden_transforms.py`), finite-difference
//! gradients in f64, the degenerate cases, and the CUDA kernels' host build against the CPU ops.

mod common;

use common::{assert_close, assert_close_scaled, assert_grad, numeric_grad, randn, T};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use stn_ops::kernels_host as k;
use stn_ops::{
    grid_sample_with, projective_grid, tps_grid, GridSample, Mode, Padding, ProjectiveGrid, TpsGrid,
};

#[derive(Deserialize)]
struct SampleCase {
    mode: String,
    padding_mode: String,
    align_corners: bool,
    input: T,
    grid: T,
    grad_output: T,
    output: T,
    grad_input: T,
    grad_grid: T,
}

#[derive(Deserialize)]
struct ProjectiveCase {
    align_corners: bool,
    size: [usize; 3],
    h: T,
    grad_grid: T,
    grid: T,
    grad_h: T,
}

#[derive(Deserialize)]
struct TpsCase {
    g: usize,
    size: [usize; 2],
    align_corners: bool,
    points: T,
    grad_grid: T,
    matrix: T,
    grid: T,
    grad_points: T,
}

#[derive(Deserialize)]
struct Golden {
    sample: Vec<SampleCase>,
    projective: Vec<ProjectiveCase>,
    tps: Vec<TpsCase>,
}

fn golden() -> Golden {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/transforms_torch.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn op_of(c: &SampleCase) -> GridSample {
    GridSample {
        mode: c.mode.parse().unwrap(),
        padding: c.padding_mode.parse().unwrap(),
        align_corners: c.align_corners,
    }
}

fn dims4(s: &[usize]) -> (usize, usize, usize, usize) {
    (s[0], s[1], s[2], s[3])
}

#[test]
fn nearest_and_bicubic_sampling_are_pytorchs_in_f64_and_f32() {
    let dev = Cpu::default();
    let cases = golden().sample;
    assert_eq!(
        cases.len(),
        24,
        "2 shapes × 2 modes × 3 paddings × 2 align_corners"
    );
    for (i, c) in cases.iter().enumerate() {
        let op = op_of(c);
        let tag = format!("case {i} {op:?}");
        // f64: PyTorch's values to rounding.
        let x = dev.tensor_from_vec(c.input.data.clone(), dims4(&c.input.shape));
        let g = dev.tensor_from_vec(c.grid.data.clone(), dims4(&c.grid.shape));
        let go = dev.tensor_from_vec(c.grad_output.data.clone(), dims4(&c.grad_output.shape));
        let out = grid_sample_with(x.leaky_trace(), g.leaky_trace(), op).unwrap();
        assert_close(
            &format!("{tag} output"),
            &out.as_vec(),
            &c.output.data,
            1e-12,
            1e-10,
        );
        let grads = (out * go).sum::<Rank0, _>().backward();
        assert_close(
            &format!("{tag} grad_input"),
            &grads.get(&x).as_vec(),
            &c.grad_input.data,
            1e-12,
            1e-10,
        );
        assert_close(
            &format!("{tag} grad_grid"),
            &grads.get(&g).as_vec(),
            &c.grad_grid.data,
            1e-10,
            1e-9,
        );
        // f32: within float32 noise (nearest is exact where no point sits on a rounding tie).
        let x = dev.tensor_from_vec(c.input.f32(), dims4(&c.input.shape));
        let g = dev.tensor_from_vec(c.grid.f32(), dims4(&c.grid.shape));
        let go = dev.tensor_from_vec(c.grad_output.f32(), dims4(&c.grad_output.shape));
        let out = grid_sample_with(x.leaky_trace(), g.leaky_trace(), op).unwrap();
        assert_close(
            &format!("{tag} f32 output"),
            &out.as_vec(),
            &c.output.data,
            -1e-5,
            1e-5,
        );
        let grads = (out * go).sum::<Rank0, _>().backward();
        assert_close(
            &format!("{tag} f32 grad_input"),
            &grads.get(&x).as_vec(),
            &c.grad_input.data,
            -1e-5,
            1e-5,
        );
        assert_close(
            &format!("{tag} f32 grad_grid"),
            &grads.get(&g).as_vec(),
            &c.grad_grid.data,
            -2e-5,
            2e-5,
        );
    }
}

#[test]
fn projective_grid_and_its_gradient_are_the_pytorch_implementations() {
    let dev = Cpu::default();
    for (i, c) in golden().projective.iter().enumerate() {
        let n = c.size[0];
        let h = dev.tensor_from_vec(c.h.data.clone(), (n, 8usize));
        let grid = projective_grid(h.leaky_trace(), c.size, c.align_corners).unwrap();
        assert_close(
            &format!("case {i} grid"),
            &grid.as_vec(),
            &c.grid.data,
            1e-12,
            1e-10,
        );
        let gg = dev.tensor_from_vec(c.grad_grid.data.clone(), dims4(&c.grad_grid.shape));
        let grads = (grid * gg).sum::<Rank0, _>().backward();
        assert_close(
            &format!("case {i} grad_h"),
            &grads.get(&h).as_vec(),
            &c.grad_h.data,
            1e-10,
            1e-10,
        );
    }
}

#[test]
fn tps_matrix_grid_and_gradient_are_the_pytorch_implementations() {
    let dev = Cpu::default();
    for (i, c) in golden().tps.iter().enumerate() {
        let m = TpsGrid::matrix(c.g, c.size, c.align_corners).unwrap();
        assert_close(&format!("case {i} matrix"), &m, &c.matrix.data, 1e-11, 1e-9);
        let kk = c.g * c.g;
        let n = c.points.shape[0];
        let pts = dev.tensor_from_vec(c.points.data.clone(), (n, kk, 2usize));
        let mt = dev.tensor_from_vec(m, (c.size[0] * c.size[1], kk));
        let grid = tps_grid(pts.leaky_trace(), mt, c.size).unwrap();
        assert_close(
            &format!("case {i} grid"),
            &grid.as_vec(),
            &c.grid.data,
            1e-11,
            1e-9,
        );
        let gg = dev.tensor_from_vec(c.grad_grid.data.clone(), dims4(&c.grad_grid.shape));
        let grads = (grid * gg).sum::<Rank0, _>().backward();
        assert_close(
            &format!("case {i} grad_points"),
            &grads.get(&pts).as_vec(),
            &c.grad_points.data,
            1e-10,
            1e-9,
        );
    }
}

#[test]
fn tps_identity_is_the_base_grid_and_small_control_grids_are_refused() {
    for (g, ac) in [(2, false), (4, false), (4, true), (8, true)] {
        let (h, w) = (9, 13);
        let m = TpsGrid::matrix(g, [h, w], ac).unwrap();
        let c = TpsGrid::control_points(g);
        let base = (
            stn_ops::AffineGrid::base::<f64>(w, ac),
            stn_ops::AffineGrid::base::<f64>(h, ac),
        );
        for i in 0..h {
            for j in 0..w {
                let row = &m[(i * w + j) * g * g..][..g * g];
                let x: f64 = row.iter().enumerate().map(|(k, v)| v * c[2 * k]).sum();
                let y: f64 = row.iter().enumerate().map(|(k, v)| v * c[2 * k + 1]).sum();
                assert!((x - base.0[j]).abs() < 1e-12 && (y - base.1[i]).abs() < 1e-12);
            }
        }
    }
    for g in [0, 1, 9] {
        let e = TpsGrid::matrix(g, [4, 4], false).unwrap_err().to_string();
        assert!(e.contains("control grid"), "{e}");
    }
}

#[test]
fn projective_grid_stays_finite_where_w_crosses_zero() {
    // w = 2x + 1 is 0 on the column x = −1/2; the grid there is large but finite, and so is the
    // gradient (no gradient through the clamp).
    let dev = Cpu::default();
    let (hh, ww) = (5, 9);
    let h = dev.tensor_from_vec(
        vec![1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 2.0, 0.0],
        (1usize, 8usize),
    );
    let grid = projective_grid(h.leaky_trace(), [1, hh, ww], true).unwrap();
    let v = grid.as_vec();
    assert!(v.iter().all(|g| g.is_finite()), "{v:?}");
    // x = −0.5 is column 2 of 9 with align_corners: w = 0 → ±MIN_W, |u| / MIN_W = 500.
    let at = |i: usize, j: usize| v[(i * ww + j) * 2];
    assert_eq!(at(0, 2), -0.5 / ProjectiveGrid::MIN_W as f32);
    let grads = grid.sum::<Rank0, _>().backward();
    assert!(grads.get(&h).as_vec().iter().all(|g| g.is_finite()));
    // A sampler fed that grid reads padding there, finite.
    let x = dev.tensor_from_vec(vec![1.0f32; hh * ww], (1usize, 1usize, hh, ww));
    let h2 = dev.tensor_from_vec(
        vec![1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 2.0, 0.0],
        (1usize, 8usize),
    );
    let g2 = projective_grid(h2.leaky_trace(), [1, hh, ww], true).unwrap();
    let out = grid_sample_with(
        x,
        g2,
        GridSample {
            mode: Mode::Bicubic,
            padding: Padding::Zeros,
            align_corners: true,
        },
    )
    .unwrap();
    let ov = out.as_vec();
    assert!(ov.iter().all(|v| v.is_finite()));
    assert_eq!(ov[2], 0.0, "the point sent to infinity reads zero padding");
    let grads = out.sum::<Rank0, _>().backward();
    assert!(grads.get(&h2).as_vec().iter().all(|g| g.is_finite()));
}

#[test]
fn sampling_mode_gradients_match_finite_differences() {
    // Bicubic is C¹ in the grid (the cubic kernel is, and padding extends the image), so its
    // grid gradient is checked everywhere; nearest's grid gradient is zero, its input's linear.
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (xs, gs) = (
        (2usize, 2usize, 5usize, 6usize),
        (2usize, 3usize, 4usize, 2usize),
    );
    for mode in [Mode::Bicubic, Mode::Nearest] {
        for padding in [Padding::Zeros, Padding::Border, Padding::Reflection] {
            for align_corners in [false, true] {
                let op = GridSample {
                    mode,
                    padding,
                    align_corners,
                };
                let x = randn(&mut rng, 2 * 2 * 5 * 6, 1.0);
                let g = randn(&mut rng, 2 * 3 * 4 * 2, 1.4);
                let r = dev.tensor_from_vec(randn(&mut rng, 2 * 2 * 3 * 4, 1.0), (2, 2, 3, 4));
                let loss = |x: &[f64], g: &[f64]| {
                    let x = dev.tensor_from_vec(x.to_vec(), xs);
                    let g = dev.tensor_from_vec(g.to_vec(), gs);
                    (grid_sample_with(x, g, op).unwrap() * r.clone())
                        .sum::<Rank0, _>()
                        .array()
                };
                let (xt, gt) = (
                    dev.tensor_from_vec(x.clone(), xs),
                    dev.tensor_from_vec(g.clone(), gs),
                );
                let grads = (grid_sample_with(xt.leaky_trace(), gt.leaky_trace(), op).unwrap()
                    * r.clone())
                .sum::<Rank0, _>()
                .backward();
                let tag = format!("{op:?}");
                let nx = numeric_grad(&x, 1e-6, |p| loss(p, &g));
                assert_grad(
                    &format!("d/dinput {tag}"),
                    &grads.get(&xt).as_vec(),
                    &nx,
                    1e-6,
                );
                let gg = grads.get(&gt).as_vec();
                if mode == Mode::Nearest {
                    assert!(gg.iter().all(|&v| v == 0.0), "{tag}: {gg:?}");
                } else {
                    let ng = numeric_grad(&g, 1e-7, |p| loss(&x, p));
                    assert_grad(&format!("d/dgrid {tag}"), &gg, &ng, 1e-5);
                }
            }
        }
    }
}

#[test]
fn projective_and_tps_gradients_match_finite_differences() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (n, hh, ww) = (2usize, 5usize, 7usize);
    for ac in [false, true] {
        let eye = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        let hm: Vec<f64> = (0..n)
            .flat_map(|_| {
                let d = randn(&mut rng, 8, 0.3);
                (0..8).map(move |i| eye[i] + d[i])
            })
            .collect();
        let r = dev.tensor_from_vec(randn(&mut rng, n * hh * ww * 2, 1.0), (n, hh, ww, 2usize));
        let loss = |p: &[f64]| {
            let h = dev.tensor_from_vec(p.to_vec(), (n, 8usize));
            (projective_grid(h, [n, hh, ww], ac).unwrap() * r.clone())
                .sum::<Rank0, _>()
                .array()
        };
        let ht = dev.tensor_from_vec(hm.clone(), (n, 8usize));
        let grads = (projective_grid(ht.leaky_trace(), [n, hh, ww], ac).unwrap() * r.clone())
            .sum::<Rank0, _>()
            .backward();
        let nh = numeric_grad(&hm, 1e-7, loss);
        assert_grad(
            &format!("d/dh ac={ac}"),
            &grads.get(&ht).as_vec(),
            &nh,
            1e-6,
        );

        let g = 3;
        let m = TpsGrid::matrix(g, [hh, ww], ac).unwrap();
        let c = TpsGrid::control_points(g);
        let pts: Vec<f64> = (0..n)
            .flat_map(|_| {
                let d = randn(&mut rng, 2 * g * g, 0.2);
                c.iter().zip(d).map(|(a, b)| a + b).collect::<Vec<_>>()
            })
            .collect();
        let mt = dev.tensor_from_vec(m, (hh * ww, g * g));
        let pt = dev.tensor_from_vec(pts.clone(), (n, g * g, 2usize));
        let grads = (tps_grid(pt.leaky_trace(), mt.clone(), [hh, ww]).unwrap() * r.clone())
            .sum::<Rank0, _>()
            .backward();
        let np = numeric_grad(&pts, 1e-7, |p| {
            let pt = dev.tensor_from_vec(p.to_vec(), (n, g * g, 2usize));
            (tps_grid(pt, mt.clone(), [hh, ww]).unwrap() * r.clone())
                .sum::<Rank0, _>()
                .array()
        });
        assert_grad(
            &format!("d/dpoints ac={ac}"),
            &grads.get(&pt).as_vec(),
            &np,
            1e-6,
        );
    }
}

#[test]
fn projective_and_tps_kernels_match_the_cpu_ops() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for (n, hh, ww, ac) in [
        (3usize, 28usize, 28usize, false),
        (2, 5, 9, true),
        (1, 1, 1, false),
    ] {
        let p = hh * ww;
        let hm: Vec<f32> = (0..n * 8)
            .map(|i| [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0][i % 8] + rng.gen_range(-0.4..0.4))
            .collect();
        let gg: Vec<f32> = (0..n * p * 2).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let ht = dev.tensor_from_vec(hm.clone(), (n, 8usize));
        let grid = projective_grid(ht.leaky_trace(), [n, hh, ww], ac).unwrap();
        let grid_v = grid.as_vec();
        let grads = (grid * dev.tensor_from_vec(gg.clone(), (n, hh, ww, 2usize)))
            .sum::<Rank0, _>()
            .backward();
        let (mut kg, mut kh) = (vec![0f32; n * p * 2], vec![0f32; n * 8]);
        // SAFETY: the buffers have the lengths the kernels index (n, hh, ww as given).
        unsafe {
            k::projective_grid_fwd(
                hm.as_ptr(),
                kg.as_mut_ptr(),
                n as _,
                hh as _,
                ww as _,
                ac as _,
            );
            k::projective_grid_bwd(
                hm.as_ptr(),
                gg.as_ptr(),
                kh.as_mut_ptr(),
                n as _,
                hh as _,
                ww as _,
                ac as _,
            );
        }
        assert_close_scaled("projective grid", &kg, &grid_v);
        assert_close_scaled("projective grad_h", &kh, &grads.get(&ht).as_vec());

        let g = 4;
        let kk = g * g;
        let m: Vec<f32> = TpsGrid::matrix(g, [hh, ww], ac)
            .unwrap()
            .iter()
            .map(|&v| v as f32)
            .collect();
        let pts: Vec<f32> = (0..n * kk * 2).map(|_| rng.gen_range(-1.2..1.2)).collect();
        let pt = dev.tensor_from_vec(pts.clone(), (n, kk, 2usize));
        let grid = tps_grid(
            pt.leaky_trace(),
            dev.tensor_from_vec(m.clone(), (p, kk)),
            [hh, ww],
        )
        .unwrap();
        let grid_v = grid.as_vec();
        let grads = (grid * dev.tensor_from_vec(gg.clone(), (n, hh, ww, 2usize)))
            .sum::<Rank0, _>()
            .backward();
        let (mut kg, mut kp) = (vec![0f32; n * p * 2], vec![0f32; n * kk * 2]);
        // SAFETY: as above; the matrix is [p, kk], the points [n, kk, 2].
        unsafe {
            k::tps_grid_fwd(
                pts.as_ptr(),
                m.as_ptr(),
                kg.as_mut_ptr(),
                n as _,
                kk as _,
                p as _,
            );
            k::tps_grid_bwd(
                m.as_ptr(),
                gg.as_ptr(),
                kp.as_mut_ptr(),
                n as _,
                kk as _,
                p as _,
            );
        }
        assert_close_scaled("tps grid", &kg, &grid_v);
        assert_close_scaled("tps grad_points", &kp, &grads.get(&pt).as_vec());
    }
}

#[test]
fn bad_shapes_for_the_new_ops_are_errors() {
    let dev = Cpu::default();
    let h = dev.tensor_from_vec(vec![0f32; 6], (1usize, 6usize));
    let e = projective_grid(h, [1, 4, 4], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("N×8"), "{e}");
    let pts = dev.tensor_from_vec(vec![0f32; 8], (1usize, 4usize, 2usize));
    let m = dev.tensor_from_vec(vec![0f32; 15 * 4], (15usize, 4usize));
    let e = tps_grid(pts, m, [4, 4]).unwrap_err().to_string();
    assert!(e.contains("16×4"), "{e}");
    assert!("lanczos"
        .parse::<Mode>()
        .unwrap_err()
        .contains("bilinear, nearest or bicubic"));
}

/// `grid_sample(x, g, mode, "zeros", align_corners)` for nearest or bicubic, straight from
/// PyTorch's definition: each tap read (zero outside the image) and weighted, in f64; a point that
/// is not finite samples zero (our convention; PyTorch's result there is undefined).
fn naive_zeros_sample(
    x: &[f64],
    [n, c, h, w]: [usize; 4],
    g: &[f64],
    [ho, wo]: [usize; 2],
    mode: Mode,
    align_corners: bool,
) -> Vec<f64> {
    let unnormalise = |v: f64, size: usize| {
        let s = size as f64;
        if align_corners {
            (v + 1.0) / 2.0 * (s - 1.0)
        } else {
            ((v + 1.0) * s - 1.0) / 2.0
        }
    };
    let a = -0.75;
    let cc1 = |t: f64| ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0;
    let cc2 = |t: f64| ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a;
    let cubic = |t: f64| [cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t)];
    let mut out = vec![0.0; n * c * ho * wo];
    for b in 0..n {
        for q in 0..ho * wo {
            let (gx, gy) = (g[(b * ho * wo + q) * 2], g[(b * ho * wo + q) * 2 + 1]);
            let (sx, sy) = (unnormalise(gx, w), unnormalise(gy, h));
            if !(sx.is_finite() && sy.is_finite()) {
                continue;
            }
            for ch in 0..c {
                let plane = &x[(b * c + ch) * h * w..][..h * w];
                let at = |yy: f64, xx: f64| {
                    if yy >= 0.0 && yy < h as f64 && xx >= 0.0 && xx < w as f64 {
                        plane[yy as usize * w + xx as usize]
                    } else {
                        0.0
                    }
                };
                out[(b * c + ch) * ho * wo + q] = match mode {
                    Mode::Nearest => at(sy.round_ties_even(), sx.round_ties_even()),
                    _ => {
                        let (x0, y0) = (sx.floor(), sy.floor());
                        let (wx, wy) = (cubic(sx - x0), cubic(sy - y0));
                        let mut v = 0.0;
                        for (i, wyi) in wy.iter().enumerate() {
                            for (j, wxj) in wx.iter().enumerate() {
                                v += wyi * wxj * at(y0 - 1.0 + i as f64, x0 - 1.0 + j as f64);
                            }
                        }
                        v
                    }
                };
            }
        }
    }
    out
}

#[test]
fn zero_padding_fast_paths_are_the_general_samplers_for_every_point_kind() {
    // The STN's case (the images carry no tape) takes the framed fast paths; the general path is
    // the one PyTorch's goldens check above. Points inside, at the edges, far outside, and not
    // finite.
    let dev = Cpu::default();
    let (n, c, h, w, ho, wo) = (2usize, 3usize, 5usize, 7usize, 4usize, 9usize);
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let x = randn(&mut rng, n * c * h * w, 1.0);
    let special = [
        f64::NAN,
        f64::INFINITY,
        -1e30,
        1e30,
        -1.0,
        1.0,
        0.0,
        1.3,
        -1.25,
    ];
    let g: Vec<f64> = (0..n * ho * wo * 2)
        .map(|i| {
            if i % 4 == 0 {
                special[(i / 4) % special.len()]
            } else {
                rng.gen_range(-1.6..1.6)
            }
        })
        .collect();
    let r = dev.tensor_from_vec(randn(&mut rng, n * c * ho * wo, 1.0), (n, c, ho, wo));
    for mode in [Mode::Nearest, Mode::Bicubic] {
        for align_corners in [false, true] {
            let op = GridSample {
                mode,
                padding: Padding::Zeros,
                align_corners,
            };
            let run = |trace_x: bool| {
                let xt = dev.tensor_from_vec(x.clone(), (n, c, h, w));
                let gt = dev.tensor_from_vec(g.clone(), (n, ho, wo, 2usize));
                let out = if trace_x {
                    grid_sample_with(xt.leaky_trace(), gt.leaky_trace(), op).unwrap()
                } else {
                    grid_sample_with(xt.clone(), gt.leaky_trace(), op).unwrap()
                };
                let v = out.as_vec();
                let grads = (out * r.clone()).sum::<Rank0, _>().backward();
                (v, grads.get(&gt).as_vec())
            };
            let ((fast_out, fast_gg), (gen_out, gen_gg)) = (run(false), run(true));
            let tag = format!("{op:?}");
            // The forward takes the fast path with or without the input's tape: it is checked
            // against a direct, tap by tap reading of PyTorch's definition instead.
            let want = naive_zeros_sample(&x, [n, c, h, w], &g, [ho, wo], mode, align_corners);
            for (i, ((a, b), v)) in fast_out.iter().zip(&gen_out).zip(&want).enumerate() {
                assert!(a == b, "{tag} out[{i}]: {a} vs {b}");
                assert!(
                    (a - v).abs() <= 1e-12 * (1.0 + v.abs()),
                    "{tag} out[{i}]: {a}, by definition {v}"
                );
            }
            for (i, (a, b)) in fast_gg.iter().zip(&gen_gg).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                    "{tag} grad_grid[{i}]: {a} vs {b}"
                );
            }
            assert!(fast_out.iter().any(|v| *v != 0.0));
        }
    }
}

/// `GridSample::fwd_one` (the fused forward's one-image sampler, on the calling thread with the
/// caller's scratch) is `cpu_fwd`'s per-image forward bit for bit, in every mode, padding and
/// corner rule, with one scratch reused across images (the zero frames must stay zero).
#[test]
fn one_image_sampler_equals_the_batched_forward_bit_for_bit() {
    use stn_ops::op::Buf;
    use stn_ops::CustomOp;
    let (n, c, h, w, ho, wo) = (3, 3, 7, 9, 5, 6);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let x: Vec<f32> = (0..n * c * h * w)
        .map(|_| rng.gen_range(-2.0..2.0))
        .collect();
    // Points inside and outside the image.
    let grid: Vec<f32> = (0..n * ho * wo * 2)
        .map(|_| rng.gen_range(-1.3..1.3))
        .collect();
    for mode in [Mode::Bilinear, Mode::Nearest, Mode::Bicubic] {
        for padding in [Padding::Zeros, Padding::Border, Padding::Reflection] {
            for align_corners in [false, true] {
                let op = GridSample {
                    mode,
                    padding,
                    align_corners,
                };
                let mut want = vec![0f32; n * c * ho * wo];
                op.cpu_fwd(
                    &[
                        Buf {
                            data: &x,
                            dims: &[n, c, h, w],
                        },
                        Buf {
                            data: &grid,
                            dims: &[n, ho, wo, 2],
                        },
                    ],
                    &mut want,
                );
                let mut scratch = Vec::new();
                for i in 0..n {
                    let mut got = vec![f32::NAN; c * ho * wo];
                    op.fwd_one(
                        &x[i * c * h * w..(i + 1) * c * h * w],
                        [h, w],
                        &grid[i * ho * wo * 2..(i + 1) * ho * wo * 2],
                        &mut scratch,
                        &mut got,
                    );
                    let want = &want[i * c * ho * wo..(i + 1) * c * ho * wo];
                    assert!(
                        got.iter()
                            .zip(want)
                            .all(|(g, w)| g.to_bits() == w.to_bits()),
                        "{mode:?} {padding:?} align {align_corners} image {i}: {got:?} vs {want:?}"
                    );
                }
            }
        }
    }
}
