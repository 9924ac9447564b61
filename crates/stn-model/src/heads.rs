//! The transform heads' grids on the CPU, one image at a time: how a head's parameters become the
//! sampling grid (affine_grid of θ — attention's and similarity's expanded by their basis —, the
//! projective grid, the thin-plate spline's matrix product) and the sampler, shared by the fused
//! forward and the pictures ([`sampling_grid`]).

use stn_ops::op::Buf;
use stn_ops::{AffineGrid, CustomOp, GridSample, ProjectiveGrid, Real, TpsGrid};

use crate::spec::{Plan, Shape, Transform};
use crate::Network;

/// How the head's parameters become a grid.
enum GridGen<E> {
    /// θ (the parameters, or attention's and similarity's expanded by their basis) to affine_grid.
    Affine {
        /// `AffineGrid::base` of the output's width and height, made once.
        xs: Vec<E>,
        ys: Vec<E>,
        basis: Option<Vec<[E; 6]>>,
    },
    Projective(ProjectiveGrid),
    /// The thin-plate spline: the constant matrix `[Ho·Wo, K]` times the points.
    Tps {
        op: TpsGrid,
        matrix: Vec<E>,
        k: usize,
    },
}

/// The transformer: the grid generator and the sampler of a `[1, C, H, W]` input.
pub(crate) struct Warp<E> {
    grid: GridGen<E>,
    pub(crate) sampler: GridSample,
    pub(crate) input: [usize; 4],
    pub(crate) out_hw: [usize; 2],
    pub(crate) n_params: usize,
}

impl<E: Real> Warp<E> {
    /// The transformer of `plan` on `[1, C, H, W]` inputs (None without one).
    pub(crate) fn new(plan: &Plan) -> Option<Warp<E>> {
        let Shape::Map { c, h, w } = plan.input else {
            unreachable!("a plan's input is an image")
        };
        plan.transform.sampler().map(|smp| {
            let [ho, wo] = smp.output;
            let t = plan.transform;
            let grid = match t {
                Transform::Projective(_) => GridGen::Projective(ProjectiveGrid {
                    size: [1, ho, wo],
                    align_corners: smp.align_corners,
                }),
                Transform::Tps(h) => GridGen::Tps {
                    op: TpsGrid { size: [ho, wo] },
                    matrix: plan
                        .tps_matrix()
                        .expect("a tps plan has its matrix")
                        .iter()
                        .map(|&v| E::of(v))
                        .collect(),
                    k: h.grid * h.grid,
                },
                _ => GridGen::Affine {
                    xs: AffineGrid::base(wo, smp.align_corners),
                    ys: AffineGrid::base(ho, smp.align_corners),
                    basis: t
                        .theta_basis()
                        .map(|rows| rows.iter().map(|r| r.map(|v| E::of(v as f64))).collect()),
                },
            };
            Warp {
                grid,
                sampler: smp.op(),
                input: [1, c, h, w],
                out_hw: [ho, wo],
                n_params: t.n_params(),
            }
        })
    }

    /// One image's grid `[Ho·Wo, 2]` from its head parameters `p`.
    pub(crate) fn grid(&self, p: &[E], grid: &mut [E]) {
        match &self.grid {
            GridGen::Affine { xs, ys, basis } => {
                let theta: [E; 6] = match basis {
                    Some(b) => std::array::from_fn(|j| {
                        p.iter()
                            .zip(b)
                            .fold(E::zero(), |acc, (&pi, row)| acc + pi * row[j])
                    }),
                    None => p.try_into().expect("6 parameters"),
                };
                // affine_grid's forward of one image, without its per-call bases and thread pool.
                AffineGrid::image_grid(&theta, xs, ys, grid)
            }
            GridGen::Projective(op) => op.cpu_fwd(
                &[Buf {
                    data: p,
                    dims: &[1, 8],
                }],
                grid,
            ),
            GridGen::Tps { op, matrix, k } => op.cpu_fwd(
                &[
                    Buf {
                        data: p,
                        dims: &[1, *k, 2],
                    },
                    Buf {
                        data: matrix,
                        dims: &[self.out_hw[0] * self.out_hw[1], *k],
                    },
                ],
                grid,
            ),
        }
    }
}

/// One image's sampling grid `[Ho, Wo, 2]` (x, y in the input's normalised coordinates) from its
/// head parameters `p` (what the regressor outputs); None without a transformer.
pub fn sampling_grid(net: &Network, p: &[f32]) -> Option<Vec<f32>> {
    let warp = Warp::<f32>::new(net.plan())?;
    if p.len() != warp.n_params {
        return None;
    }
    let [ho, wo] = warp.out_hw;
    let mut grid = vec![0f32; ho * wo * 2];
    warp.grid(p, &mut grid);
    Some(grid)
}
