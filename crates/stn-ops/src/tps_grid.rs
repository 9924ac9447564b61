//! `tps_grid(points [N, K, 2], matrix [H·W, K]) -> grid [N, H, W, 2]`: the sampling grid of a
//! thin-plate spline.
//!
//! The spline maps K = g×g fixed control points `c_k` (a regular grid over the normalised output
//! square, −1 … 1 both ways, row by row) to the predicted points `p_k` (where each control point
//! lands in the input), with the radial basis `U(r) = r² log r²` (`U(0) = 0`) and an affine part:
//! `f(q) = Σ_k w_k U(|q − c_k|) + a_0 + a_1 x + a_2 y`, `[w; a] = L⁻¹ [p; 0]` with
//! `L = [[U(|c_i − c_j|), P], [Pᵀ, 0]]`, `P = [1, x_k, y_k]`. The control points are fixed, so
//! `f` at every grid point is linear in `p`: `grid = M · p` with a constant `M [H·W, K]`
//! ([`TpsGrid::matrix`], computed once in f64 by solving `L`). The op is that product; `M` is an
//! input like any tensor (a constant of the network), so the same product runs on the CPU, on CUDA
//! and in ONNX (a MatMul). Predicting `p = c` (the identity) gives affine_grid's base grid.

use dfdx::prelude::*;
use rayon::prelude::*;

use crate::affine_grid::AffineGrid;
use crate::op::{apply, Buf, CustomOp, Input, OpDevice, OpError, Real};
use crate::Dyn4;

#[cfg(feature = "cuda")]
use crate::cuda::{launch, CudaBuf, CudaKernels};
#[cfg(feature = "cuda")]
use cudarc::driver::CudaSlice;

/// The thin-plate-spline transformer's grid generator: `grid = matrix · points`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TpsGrid {
    /// The grid's height and width (the matrix has `H·W` rows).
    pub size: [usize; 2],
}

/// The TPS radial basis `r² log r²` of a squared distance (0 at 0).
fn u(r2: f64) -> f64 {
    if r2 <= 0.0 {
        0.0
    } else {
        r2 * r2.ln()
    }
}

impl TpsGrid {
    /// The smallest and largest control grid side.
    pub const SIDES: std::ops::RangeInclusive<usize> = 2..=8;

    /// The `g×g` control points, row by row, as `(x, y)` pairs: `linspace(−1, 1, g)` both ways.
    /// They are the identity's predicted points.
    pub fn control_points(g: usize) -> Vec<f64> {
        let at = |i: usize| -1.0 + 2.0 * i as f64 / (g - 1) as f64;
        (0..g)
            .flat_map(|i| (0..g).flat_map(move |j| [at(j), at(i)]))
            .collect()
    }

    /// `M [H·W, K]` (row-major, f64) for a `g×g` control grid and an `h×w` output grid whose points
    /// are affine_grid's base coordinates (`align_corners` as there).
    pub fn matrix(g: usize, [h, w]: [usize; 2], align_corners: bool) -> Result<Vec<f64>, OpError> {
        if !Self::SIDES.contains(&g) {
            return Err(OpError::shape(
                "tps_grid",
                format!(
                    "a {g}×{g} control grid: the side must be {} to {}",
                    Self::SIDES.start(),
                    Self::SIDES.end()
                ),
            ));
        }
        let k = g * g;
        let c = Self::control_points(g);
        let n = k + 3;
        // L, row-major n×n.
        let mut l = vec![0f64; n * n];
        for i in 0..k {
            for j in 0..k {
                let (dx, dy) = (c[2 * i] - c[2 * j], c[2 * i + 1] - c[2 * j + 1]);
                l[i * n + j] = u(dx * dx + dy * dy);
            }
            let p = [1.0, c[2 * i], c[2 * i + 1]];
            for (a, &v) in p.iter().enumerate() {
                l[i * n + k + a] = v;
                l[(k + a) * n + i] = v;
            }
        }
        // Z = L⁻¹ [I_K; 0] (n×K), by Gauss-Jordan elimination with partial pivoting.
        let mut z = vec![0f64; n * k];
        for i in 0..k {
            z[i * k + i] = 1.0;
        }
        for col in 0..n {
            let piv = (col..n)
                .max_by(|&a, &b| l[a * n + col].abs().total_cmp(&l[b * n + col].abs()))
                .expect("rows left");
            if l[piv * n + col].abs() < 1e-12 {
                return Err(OpError::shape(
                    "tps_grid",
                    "the control points' system is singular",
                ));
            }
            if piv != col {
                for j in 0..n {
                    l.swap(col * n + j, piv * n + j);
                }
                for j in 0..k {
                    z.swap(col * k + j, piv * k + j);
                }
            }
            let d = l[col * n + col];
            for j in 0..n {
                l[col * n + j] /= d;
            }
            for j in 0..k {
                z[col * k + j] /= d;
            }
            for r in 0..n {
                if r == col {
                    continue;
                }
                let f = l[r * n + col];
                if f != 0.0 {
                    for j in 0..n {
                        l[r * n + j] -= f * l[col * n + j];
                    }
                    for j in 0..k {
                        z[r * k + j] -= f * z[col * k + j];
                    }
                }
            }
        }
        let (xs, ys) = (
            AffineGrid::base::<f64>(w, align_corners),
            AffineGrid::base::<f64>(h, align_corners),
        );
        let mut m = vec![0f64; h * w * k];
        let mut a = vec![0f64; n];
        for (i, &y) in ys.iter().enumerate() {
            for (j, &x) in xs.iter().enumerate() {
                for kk in 0..k {
                    let (dx, dy) = (x - c[2 * kk], y - c[2 * kk + 1]);
                    a[kk] = u(dx * dx + dy * dy);
                }
                a[k..].copy_from_slice(&[1.0, x, y]);
                let row = &mut m[(i * w + j) * k..][..k];
                for (r, &av) in a.iter().enumerate() {
                    for (mv, &zv) in row.iter_mut().zip(&z[r * k..(r + 1) * k]) {
                        *mv += av * zv;
                    }
                }
            }
        }
        Ok(m)
    }
}

impl<E: Real> CustomOp<E> for TpsGrid {
    const NAME: &'static str = "tps_grid";

    fn out_dims(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, OpError> {
        let [pts, m] = inputs else {
            return Err(OpError::shape(
                "tps_grid",
                "expects the points and the matrix",
            ));
        };
        let [h, w] = self.size;
        if pts.len() != 3 || pts[2] != 2 {
            return Err(OpError::shape(
                "tps_grid",
                format!("points must be N×K×2, got {pts:?}"),
            ));
        }
        if m.len() != 2 || m[0] != h * w || m[1] != pts[1] {
            return Err(OpError::shape(
                "tps_grid",
                format!(
                    "the matrix must be {}×{} (grid points × control points), got {m:?}",
                    h * w,
                    pts[1]
                ),
            ));
        }
        Ok(vec![pts[0], h, w, 2])
    }

    fn cpu_fwd(&self, inputs: &[Buf<E>], out: &mut [E]) {
        let k = inputs[0].dims[1];
        let m = inputs[1].data;
        let p = self.size[0] * self.size[1];
        // M transposed, [K, P]: each control point's column of the spline, so that the sums run
        // along the grid points in SIMD lanes (along K, 16 terms, they were one scalar chain per
        // point — a tenth of a TPS training step). The same products added in the same order.
        let mut mt = vec![E::zero(); k * p];
        for (q, row) in m.chunks_exact(k).enumerate() {
            for (kk, &v) in row.iter().enumerate() {
                mt[kk * p + q] = v;
            }
        }
        inputs[0]
            .data
            .par_chunks_exact(2 * k)
            .zip(out.par_chunks_exact_mut(2 * p))
            .for_each_init(
                || (vec![E::zero(); p], vec![E::zero(); p]),
                |(gx, gy), (v, g)| {
                    crate::dispatch!(I => {
                        gx.fill(E::zero());
                        gy.fill(E::zero());
                        for (kk, col) in mt.chunks_exact(p).enumerate() {
                            let (vx, vy) = (v[2 * kk], v[2 * kk + 1]);
                            for ((x, y), &mk) in gx.iter_mut().zip(gy.iter_mut()).zip(col) {
                                *x += mk * vx;
                                *y += mk * vy;
                            }
                        }
                        for ((g, &x), &y) in g.chunks_exact_mut(2).zip(gx.iter()).zip(gy.iter()) {
                            g[0] = x;
                            g[1] = y;
                        }
                    })
                },
            );
    }

    fn cpu_bwd(&self, inputs: &[Buf<E>], grad_out: &[E], grads: &mut [Option<&mut [E]>]) {
        let k = inputs[0].dims[1];
        let (v, m) = (inputs[0].data, inputs[1].data);
        let p = self.size[0] * self.size[1];
        let f = |x: E| x.to_f64().unwrap_or(f64::NAN);
        let [gv, gm] = grads else {
            unreachable!("two inputs")
        };
        if let Some(gv) = gv.as_deref_mut() {
            // Σ over the grid points in f64 (784 terms), as affine_grid's theta gradient.
            gv.par_chunks_exact_mut(2 * k)
                .zip(grad_out.par_chunks_exact(2 * p))
                .for_each(|(gv, gg)| {
                    crate::dispatch!(I => {
                        let mut acc = vec![0f64; 2 * k];
                        for (row, gg) in m.chunks_exact(k).zip(gg.chunks_exact(2)) {
                            let (gx, gy) = (f(gg[0]), f(gg[1]));
                            for (kk, &mk) in row.iter().enumerate() {
                                let mk = f(mk);
                                acc[2 * kk] += mk * gx;
                                acc[2 * kk + 1] += mk * gy;
                            }
                        }
                        for (g, a) in gv.iter_mut().zip(acc) {
                            *g += E::of(a);
                        }
                    })
                });
        }
        if let Some(gm) = gm.as_deref_mut() {
            let n = v.len() / (2 * k);
            gm.par_chunks_exact_mut(k).enumerate().for_each(|(q, row)| {
                crate::dispatch!(I => {
                    for (kk, g) in row.iter_mut().enumerate() {
                        let mut acc = 0f64;
                        for b in 0..n {
                            let gg = &grad_out[(b * p + q) * 2..];
                            let vv = &v[(b * k + kk) * 2..];
                            acc += f(gg[0]) * f(vv[0]) + f(gg[1]) * f(vv[1]);
                        }
                        *g += E::of(acc);
                    }
                })
            });
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        k: &CudaKernels,
        inputs: &[CudaBuf],
        out: &mut CudaSlice<f32>,
    ) -> Result<(), OpError> {
        let (n, kk) = (inputs[0].dims[0] as i64, inputs[0].dims[1] as i64);
        let p = (self.size[0] * self.size[1]) as i64;
        let f = k.func("tps_grid_fwd")?;
        // SAFETY: points [n, kk, 2] and matrix [p, kk] (checked by out_dims), out [n, p, 2].
        unsafe {
            launch(
                f,
                (n * p) as usize,
                (inputs[0].data, inputs[1].data, out, n, kk, p),
            )
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_bwd(
        &self,
        k: &CudaKernels,
        inputs: &[CudaBuf],
        grad_out: &CudaSlice<f32>,
        grads: &mut [Option<&mut CudaSlice<f32>>],
    ) -> Result<(), OpError> {
        let [gv, gm] = grads else {
            return Err(OpError::shape("tps_grid", "two gradients expected"));
        };
        if gm.is_some() {
            return Err(OpError::cpu_only(
                "tps_grid",
                "the matrix's gradient (the matrix is a constant of the network)",
            ));
        }
        let Some(gv) = gv.as_deref_mut() else {
            return Ok(());
        };
        let (n, kk) = (inputs[0].dims[0] as i64, inputs[0].dims[1] as i64);
        let p = (self.size[0] * self.size[1]) as i64;
        let f = k.func("tps_grid_bwd")?;
        // SAFETY: as in cuda_fwd; gv is [n, kk, 2].
        unsafe {
            launch(
                f,
                (n * kk * 2) as usize,
                (inputs[1].data, grad_out, gv, n, kk, p),
            )
        }
    }
}

/// `tps_grid(points, matrix, [H, W])`: the grid `[N, H, W, 2]` of the thin-plate splines taking the
/// control points to `points [N, K, 2]`, `matrix` being [`TpsGrid::matrix`] (a constant: give it
/// without a tape).
pub fn tps_grid<S1, S2, E, D, T1, T2>(
    points: Tensor<S1, E, D, T1>,
    matrix: Tensor<S2, E, D, T2>,
    size: [usize; 2],
) -> Result<Tensor<Dyn4, E, D, T1>, OpError>
where
    S1: Shape,
    S2: Shape,
    E: Real,
    D: OpDevice<E>,
    T1: Tape<E, D> + dfdx::tensor::Merge<T2>,
    T2: Tape<E, D>,
{
    let dev = points.device().clone();
    let (points, t1) = Input::new("tps_grid", points)?;
    let (matrix, t2) = Input::new("tps_grid", matrix)?;
    apply(TpsGrid { size }, &dev, vec![points, matrix], t1.merge(t2))
}
