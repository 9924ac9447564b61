//! `conv2d(x [N,C,H,W], weight [O,C,KH,KW], bias [O]) -> [N,O,H-KH+1,W-KW+1]` (stride 1, no
//! padding), as an implicit im2col (no copy) and skinny matrix products per image (`linalg`),
//! parallel over the batch.

use dfdx::prelude::*;
use dfdx::tensor::Merge;
use rayon::prelude::*;

use crate::isa::Isa;
use crate::linalg::{gemm_any, DotAcc, PackedA};
use crate::op::{apply, Buf, CustomOp, HostCopy, Input, OpDevice, OpError, Real};
use crate::simd::{Vector, V, V8};
use crate::Dyn4;

#[cfg(feature = "cuda")]
use crate::cuda::{launch, CudaBuf, CudaKernels};
#[cfg(feature = "cuda")]
use cudarc::driver::CudaSlice;

/// `torch.nn.functional.conv2d(x, weight, bias)` with stride 1 and no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conv2d;

/// The sizes of one convolution, and the implicit im2col: row `(c, ki, kj)` of the im2col matrix
/// is the image from offset `c·H·W + ki·W + kj` on, read with the image's row length `W` ("wide"
/// columns `oy·W + ox`; the columns with `ox ≥ Wo` are computed and dropped, or fed zeros).
pub(crate) struct Geom {
    c: usize,
    h: usize,
    kh: usize,
    kw: usize,
    pub(crate) w: usize,
    pub(crate) o: usize,
    pub(crate) ho: usize,
    pub(crate) wo: usize,
    /// Offsets of the im2col rows in an image, `c·KH·KW` of them.
    pub(crate) offs: Vec<usize>,
    /// Offsets of the output channels' rows in a wide buffer.
    pub(crate) out_offs: Vec<usize>,
    /// Multi-channel inputs use an explicit im2col instead (`cols[K, P]`): their planes are small,
    /// so the wide columns would waste 30–50% of the work (92 wide columns for 64 outputs in conv2).
    pub(crate) packed: bool,
    /// Row offsets of the explicit im2col matrix and of a packed `[O, P]` output.
    pub(crate) col_offs: Vec<usize>,
    pub(crate) p_offs: Vec<usize>,
}

impl Geom {
    pub(crate) fn new(x: &[usize], wt: &[usize]) -> Geom {
        let (c, h, w, o, kh, kw) = (x[1], x[2], x[3], wt[0], wt[2], wt[3]);
        let (ho, wo) = (h - kh + 1, w - kw + 1);
        let offs = (0..c)
            .flat_map(|c| {
                (0..kh).flat_map(move |ki| (0..kw).map(move |kj| c * h * w + ki * w + kj))
            })
            .collect();
        let n = (ho - 1) * w + wo;
        let (k, p) = (c * kh * kw, ho * wo);
        Geom {
            c,
            h,
            kh,
            kw,
            w,
            o,
            ho,
            wo,
            offs,
            out_offs: (0..o).map(|i| i * n).collect(),
            packed: c > 1,
            col_offs: (0..k).map(|r| r * p).collect(),
            p_offs: (0..o).map(|i| i * p).collect(),
        }
    }
    /// Images per group: of the weight-gradient reduction, and side by side in the explicit
    /// im2col (`im2col_group`), whose matrix then holds about `GROUP_FLOATS`.
    pub(crate) fn group(&self) -> usize {
        if self.packed {
            (GROUP_FLOATS / (self.k() * self.p())).max(1)
        } else {
            GROUP
        }
    }
    /// Rows of the im2col matrix (C·KH·KW).
    pub(crate) fn k(&self) -> usize {
        self.offs.len()
    }
    /// Output pixels per channel.
    pub(crate) fn p(&self) -> usize {
        self.ho * self.wo
    }
    /// Wide columns: the last one is `(Ho−1)·W + Wo − 1`, so every row stays inside the image.
    pub(crate) fn n(&self) -> usize {
        (self.ho - 1) * self.w + self.wo
    }
    pub(crate) fn image(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Columns of the products: wide, or exactly P when packed.
    pub(crate) fn cols(&self) -> usize {
        if self.packed {
            self.p()
        } else {
            self.n()
        }
    }

    /// The explicit im2col of `t` images side by side: `cols[(c,ki,kj), j·P + oy·Wo + ox] =
    /// x_j[c, oy+ki, ox+kj]` (rows of `t·P` columns). Why: with small planes (P = 49 in
    /// localization.3) one image's rows are too short for the products — a 16-column block hangs
    /// 30% into padding and each weight-gradient block's accumulators are reloaded every 49
    /// columns; four images make the rows 196 long. Rows are filled in order (row, image, output
    /// row), so an 8-wide piece running past its segment lands where a later piece will write
    /// (`cols` has 8 spare entries at its end) — no `memcpy` call per 7-float segment. One image
    /// is `t = 1`.
    /// [`Geom::im2col_group_at`] at the process's ISA level, out of line (as `linalg::gemm_any`).
    #[inline(never)]
    pub(crate) fn im2col_group<E: Real>(&self, xs: &[E], t: usize, cols: &mut [E]) {
        crate::dispatch!(I => self.im2col_group_at::<E, I>(xs, t, cols))
    }

    /// The explicit im2col at level `I` (see [`Geom::im2col_group`]).
    #[inline(always)]
    pub(crate) fn im2col_group_at<E: Real, I: Isa>(&self, xs: &[E], t: usize, cols: &mut [E]) {
        let (p, wo, img) = (self.p(), self.wo, self.image());
        let np = t * p;
        assert!(xs.len() == t * img && cols.len() >= self.k() * np + 8);
        if wo > 8 || img < 8 {
            for (r, &off) in self.offs.iter().enumerate() {
                for j in 0..t {
                    for oy in 0..self.ho {
                        let (src, dst) = (j * img + off + oy * self.w, r * np + j * p + oy * wo);
                        V::<E, I>::copy(&mut cols[dst..dst + wo], &xs[src..src + wo]);
                    }
                }
            }
            return;
        }
        let (xp, cp) = (xs.as_ptr(), cols.as_mut_ptr());
        for (r, &off) in self.offs.iter().enumerate() {
            for j in 0..t {
                // Sources of image j that can be read 8 wide without leaving its plane.
                let last8 = (j + 1) * img - 8;
                for oy in 0..self.ho {
                    let (src, dst) = (j * img + off + oy * self.w, r * np + j * p + oy * wo);
                    if src <= last8 {
                        // SAFETY: src + 8 ≤ (j+1)·img ≤ xs.len(); dst + 8 ≤ (k−1)·np + np + 8 ≤
                        // cols.len() (asserted above); xs and cols are distinct slices.
                        unsafe { std::ptr::copy_nonoverlapping(xp.add(src), cp.add(dst), 8) };
                    } else {
                        cols[dst..dst + wo].copy_from_slice(&xs[src..src + wo]);
                    }
                }
            }
        }
    }

    /// The adjoint of `im2col_group` for image `j` of `t`: `gx[c, oy+ki, ox+kj] +=
    /// dcols[(c,ki,kj), j·P + oy·Wo + ox]`. `dcols` has 8 spare entries at its end.
    ///
    /// Output rows of at most 8 (the seed's multi-channel convs: 7 and 8) go a vector per input
    /// row: for each `(c, kj, y)` the segments of every `ki` that lands on row `y` are summed in
    /// registers (lanes past `Wo` masked to zero) and added to `gx[c, y, kj..]` at once. Why: a
    /// row at a time, each segment's 7 floats were a scalar loop (a fifth of localization.3's
    /// step), and the rows of consecutive `kj` overlap one element apart. Consecutive stores here
    /// are a row apart, and the lanes past `Wo` add zero to their neighbours (8 lanes are written
    /// only where they lie inside `gx`; the last ones of the image go element by element).
    #[inline(never)]
    pub(crate) fn col2im_group_add<E: Real>(&self, dcols: &[E], t: usize, j: usize, gx: &mut [E]) {
        crate::dispatch!(I => self.col2im_group_add_at::<E, I>(dcols, t, j, gx))
    }

    /// [`Geom::col2im_group_add`] at level `I`.
    #[inline(always)]
    fn col2im_group_add_at<E: Real, I: Isa>(&self, dcols: &[E], t: usize, j: usize, gx: &mut [E]) {
        let (p, wo) = (self.p(), self.wo);
        let np = t * p;
        if wo < 8 {
            assert!(dcols.len() >= self.k() * np + 8 && gx.len() == self.image());
            for c in 0..self.c {
                for kj in 0..self.kw {
                    for y in 0..self.h {
                        // The kernel rows ki with 0 ≤ y − ki < Ho.
                        let mut v = V8::<E, I>::splat(E::zero());
                        for ki in y.saturating_sub(self.ho - 1)..=y.min(self.kh - 1) {
                            let r = (c * self.kh + ki) * self.kw + kj;
                            let seg = r * np + j * p + (y - ki) * wo;
                            v = V8::<E, I>::vadd(
                                v,
                                V8::<E, I>::load_head(&dcols[seg..seg + 8], wo),
                            );
                        }
                        let at = c * self.h * self.w + y * self.w + kj;
                        if at + 8 <= gx.len() {
                            V8::<E, I>::add_into(&mut gx[at..at + 8], v);
                        } else {
                            for (d, v) in gx[at..at + wo].iter_mut().zip(V8::<E, I>::lanes(v)) {
                                *d += v;
                            }
                        }
                    }
                }
            }
            return;
        }
        for (r, &off) in self.offs.iter().enumerate() {
            for oy in 0..self.ho {
                let d = &mut gx[off + oy * self.w..][..wo];
                let s = &dcols[r * np + j * p + oy * wo..][..wo];
                if wo == 8 {
                    // conv2's rows: one vector.
                    V8::<E, I>::add_into(d, V8::<E, I>::load(s));
                } else {
                    for (d, &v) in d.iter_mut().zip(s) {
                        *d += v;
                    }
                }
            }
        }
    }
}

impl<E: Real> CustomOp<E> for Conv2d {
    const NAME: &'static str = "conv2d";

    fn out_dims(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, OpError> {
        let [x, w, b] = inputs else {
            return Err(OpError::shape("conv2d", "expects input, weight and bias"));
        };
        if x.len() != 4 || w.len() != 4 || b.len() != 1 {
            return Err(OpError::shape(
                "conv2d",
                format!(
                    "input must be N×C×H×W, weight O×C×KH×KW and bias O; got {x:?}, {w:?}, {b:?}"
                ),
            ));
        }
        if w[1] != x[1] {
            return Err(OpError::shape(
                "conv2d",
                format!("weight has {} input channels, input has {}", w[1], x[1]),
            ));
        }
        if b[0] != w[0] {
            return Err(OpError::shape(
                "conv2d",
                format!("bias has {} entries for {} output channels", b[0], w[0]),
            ));
        }
        if w[2] == 0 || w[3] == 0 || w[2] > x[2] || w[3] > x[3] {
            return Err(OpError::shape(
                "conv2d",
                format!(
                    "kernel {}×{} does not fit input {}×{}",
                    w[2], w[3], x[2], x[3]
                ),
            ));
        }
        Ok(vec![x[0], w[0], x[2] - w[2] + 1, x[3] - w[3] + 1])
    }

    // Both paths below write `bias + product` to every output element.
    const CPU_FWD_WRITES_ALL: bool = true;

    fn cpu_fwd(&self, inputs: &[Buf<E>], out: &mut [E]) {
        let g = Geom::new(inputs[0].dims, inputs[1].dims);
        let (x, wt, bias) = (inputs[0].data, inputs[1].data, inputs[2].data);
        let (k, p, n) = (g.k(), g.p(), g.cols());
        if crate::fused::rows_kernel_serves(&g) {
            return self.fwd_rows(&g, x, wt, bias, out);
        }
        let wp = PackedA::new(g.o, k, wt, (k, 1));
        if g.packed {
            // Groups of images side by side (see `im2col_group`):
            // res[O, t·P] = W[O, K] · cols[K, t·P], then out_j[o, q] = bias[o] + res[o, j·P + q].
            let group = g.group();
            return out
                .par_chunks_mut(group * g.o * p)
                .zip(x.par_chunks(group * g.image()))
                .for_each_init(
                    || {
                        // Recycled, not zeroed: both are written before they are read (a fresh
                        // zeroed buffer per job was a memset as large as the products).
                        let cols = HostCopy::<E>::take(k * group * p + 8);
                        (cols, HostCopy::<E>::take(g.o * group * p))
                    },
                    |(cols, res), (o, xs)| {
                        let t = xs.len() / g.image();
                        let np = t * p;
                        g.im2col_group(xs, t, cols);
                        let col_offs: Vec<usize> = (0..k).map(|r| r * np).collect();
                        let res_offs: Vec<usize> = (0..g.o).map(|i| i * np).collect();
                        gemm_any::<E, false>(&wp, np, cols, &col_offs, res, &res_offs);
                        crate::dispatch!(_I => {
                            for (j, o) in o.chunks_exact_mut(g.o * p).enumerate() {
                                for (oc, (row, &b)) in o.chunks_exact_mut(p).zip(bias).enumerate() {
                                    let src = &res[oc * np + j * p..][..p];
                                    for (d, &v) in row.iter_mut().zip(src) {
                                        *d = v + b;
                                    }
                                }
                            }
                        })
                    },
                );
        }
        out.par_chunks_mut(g.o * p)
            .zip(x.par_chunks(g.image()))
            .for_each_init(
                || HostCopy::<E>::take(g.o * n),
                |buf, (o, x)| {
                    // wide[O, n] = W[O, K] · im2col(x)[K, n], then the valid columns + bias.
                    gemm_any::<E, false>(&wp, n, x, &g.offs, buf, &g.out_offs);
                    crate::dispatch!(_I => add_bias_rows(&g, buf, n, g.w, bias, o))
                },
            );
    }

    fn cpu_bwd(&self, inputs: &[Buf<E>], grad_out: &[E], grads: &mut [Option<&mut [E]>]) {
        let g = Geom::new(inputs[0].dims, inputs[1].dims);
        let nimg = inputs[0].dims[0];
        let (x, wt) = (inputs[0].data, inputs[1].data);
        let (k, p, n) = (g.k(), g.p(), g.cols());
        let [gx, gw, gb] = grads else {
            unreachable!("three inputs")
        };
        let want_w = gw.is_some();
        let want_x = gx.is_some();
        if !want_w && !want_x {
            return self.bias_grad(gb.as_deref_mut(), grad_out, g.o, p);
        }
        // Wᵀ, packed once for every image's input gradient.
        let wt_t = want_x.then(|| PackedA::new(k, g.o, wt, (1, k)));
        let mut gx_images = crate::op::per_image(gx.as_deref_mut(), nimg, g.image());
        // Fixed groups of images, each with its own partial weight gradient, summed in group order:
        // the result does not depend on the thread count or on rayon's scheduling, so training is
        // bit-for-bit reproducible (and resumable).

        // Scratch per rayon job, reused by its groups, from the recycled buffers (not zeroed):
        // every buffer is overwritten before it is read (zeroing fresh ones was 4 MB of memset per
        // conv2 backward).
        let group = g.group();
        let scratch = || {
            let acc = DotAcc::<E>::new(if want_w { g.o } else { 0 }, k);
            if g.packed {
                let np = group * p;
                (HostCopy::take(k * np + 8), HostCopy::take(g.o * np), acc)
            } else {
                (
                    HostCopy::take(if want_x { k * n } else { 0 }),
                    HostCopy::take(g.o * n),
                    acc,
                )
            }
        };
        let partials: Vec<Vec<E>> = gx_images
            .par_chunks_mut(group)
            .enumerate()
            .map_init(scratch, |(cols, go_buf, gw_acc), (grp, gxs)| {
                if g.packed {
                    // The group's images side by side (see `im2col_group`).
                    let t = gxs.len();
                    let np = t * p;
                    let b0 = grp * group;
                    let cols = &mut cols[..k * np + 8];
                    g.im2col_group(&x[b0 * g.image()..(b0 + t) * g.image()], t, cols);
                    let col_offs: Vec<usize> = (0..k).map(|r| r * np).collect();
                    // gout of the group as [O, t·P].
                    let go = &grad_out[b0 * g.o * p..(b0 + t) * g.o * p];
                    let go_cat = &mut go_buf[..g.o * np];
                    for (j, goj) in go.chunks_exact(g.o * p).enumerate() {
                        for (oc, row) in goj.chunks_exact(p).enumerate() {
                            go_cat[oc * np + j * p..][..p].copy_from_slice(row);
                        }
                    }
                    if want_w {
                        // gW[O, K] += gout[O, t·P] · cols[K, t·P]ᵀ
                        gw_acc.add_products_any(np, go_cat, cols, &col_offs);
                    }
                    if let Some(wt_t) = &wt_t {
                        // dcols[K, t·P] = W[O, K]ᵀ · gout[O, t·P], then col2im per image.
                        let go_offs: Vec<usize> = (0..g.o).map(|i| i * np).collect();
                        gemm_any::<E, false>(wt_t, np, go_cat, &go_offs, cols, &col_offs);
                        for (j, gx) in gxs.iter_mut().enumerate() {
                            if let Some(gx) = gx.as_deref_mut() {
                                g.col2im_group_add(cols, t, j, gx);
                            }
                        }
                    }
                    return gw_acc.take_sums();
                }
                let (dcols, go_wide) = (cols, go_buf);
                let dcol_offs: Vec<usize> = (0..k).map(|r| r * n).collect();
                for (t, gx) in gxs.iter_mut().enumerate() {
                    let b = grp * group + t;
                    let go = &grad_out[b * g.o * p..(b + 1) * g.o * p];
                    // The output gradient in wide columns, zero in the dropped ones.
                    crate::dispatch!(I => {
                        for (oc, grow) in go.chunks_exact(p).enumerate() {
                            for oy in 0..g.ho {
                                let dst = &mut go_wide[oc * n + oy * g.w..][..g.w.min(n - oy * g.w)];
                                let src = &grow[oy * g.wo..(oy + 1) * g.wo];
                                V::<E, I>::copy(&mut dst[..g.wo], src);
                                dst[g.wo..].fill(E::zero());
                            }
                        }
                    });
                    let x = &x[b * g.image()..(b + 1) * g.image()];
                    if want_w {
                        // gW[O, K] += gout[O, n] · im2col(x)[K, n]ᵀ
                        gw_acc.add_products_any(n, go_wide, x, &g.offs);
                    }
                    if let (Some(gx), Some(wt_t)) = (gx.as_deref_mut(), &wt_t) {
                        // dcols[K, n] = W[O, K]ᵀ · gout[O, n], then col2im(gx) += dcols a row at a
                        // time. Why not the product added straight into gx's overlapping rows:
                        // each row's load then hit the previous row's store one element off, a
                        // store-forwarding stall per vector (15% of conv1's time).
                        gemm_any::<E, false>(wt_t, n, go_wide, &g.out_offs, dcols, &dcol_offs);
                        crate::dispatch!(I => {
                            for (row, &off) in dcols.chunks_exact(n).zip(&g.offs) {
                                V::<E, I>::add_rows(&mut gx[off..off + n], row);
                            }
                        });
                    }
                }
                gw_acc.take_sums()
            })
            .collect();
        if let Some(gw) = gw.as_deref_mut() {
            // The groups' sums in group order.
            let mut sum = vec![E::zero(); gw.len()];
            for part in &partials {
                sum.iter_mut().zip(part).for_each(|(s, &v)| *s += v);
            }
            gw.iter_mut().zip(&sum).for_each(|(g, &s)| *g += s);
        }
        self.bias_grad(gb.as_deref_mut(), grad_out, g.o, p);
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        k: &CudaKernels,
        inputs: &[CudaBuf],
        out: &mut CudaSlice<f32>,
    ) -> Result<(), OpError> {
        let (x, w) = (inputs[0].dims, inputs[1].dims);
        let [n, c, h, wd] = [x[0], x[1], x[2], x[3]].map(|v| v as i64);
        let [o, _, kh, kw] = [w[0], w[1], w[2], w[3]].map(|v| v as i64);
        let items = (n * o * (h - kh + 1) * (wd - kw + 1)) as usize;
        let f = k.func("conv2d_fwd")?;
        // SAFETY: shapes checked by out_dims.
        unsafe {
            launch(
                f,
                items,
                (
                    inputs[0].data,
                    inputs[1].data,
                    inputs[2].data,
                    out,
                    n,
                    c,
                    h,
                    wd,
                    o,
                    kh,
                    kw,
                ),
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
        let (x, w) = (inputs[0].dims, inputs[1].dims);
        let [n, c, h, wd] = [x[0], x[1], x[2], x[3]].map(|v| v as i64);
        let [o, _, kh, kw] = [w[0], w[1], w[2], w[3]].map(|v| v as i64);
        let [gx, gw, gb] = grads else {
            return Err(OpError::shape("conv2d", "three gradients expected"));
        };
        if let Some(gx) = gx.as_deref_mut() {
            let f = k.func("conv2d_bwd_input")?;
            // SAFETY: shapes checked by out_dims.
            unsafe {
                launch(
                    f,
                    (n * c * h * wd) as usize,
                    (inputs[1].data, grad_out, gx, n, c, h, wd, o, kh, kw),
                )?
            }
        }
        let want = gw.is_some() as i32 | (gb.is_some() as i32) << 1;
        if want != 0 {
            let (mut d1, mut d2) = (k.dummy()?, k.dummy()?);
            let gw = gw.as_deref_mut().unwrap_or(&mut d1);
            let gb = gb.as_deref_mut().unwrap_or(&mut d2);
            let f = k.func("conv2d_bwd_weight")?;
            // SAFETY: shapes checked by out_dims; `want` keeps the kernel off the dummies.
            unsafe {
                launch(
                    f,
                    (o * c * kh * kw) as usize,
                    (
                        inputs[0].data,
                        grad_out,
                        gw,
                        gb,
                        n,
                        c,
                        h,
                        wd,
                        o,
                        kh,
                        kw,
                        want,
                    ),
                )?
            }
        }
        Ok(())
    }
}

/// Images per group of the weight-gradient reduction (see `cpu_bwd`).
const GROUP: usize = 4;
/// At most this many floats in the explicit im2col of a group of images (while a group has more
/// than one): localization.3 (K·P = 9,800 per image) runs 8 images a group, conv2 (16,000) 4.
/// Measured: 8 rather than 4 made localization.3's backward 13% faster; 5 or 6 made conv2's
/// forward 7% slower.
const GROUP_FLOATS: usize = 79_000;

/// `out[o, y, x] = bias[o] + src[o·plane + y·row + x]` for one image: the valid products of a
/// conv whose channel `o`'s row `y` starts at `o·plane + y·row` in `src`.
#[inline(always)]
fn add_bias_rows<E: Real>(
    g: &Geom,
    src: &[E],
    plane: usize,
    row: usize,
    bias: &[E],
    out: &mut [E],
) {
    for (oc, (orow, &b)) in out.chunks_exact_mut(g.p()).zip(bias).enumerate() {
        for (oy, dst) in orow.chunks_exact_mut(g.wo).enumerate() {
            let src = &src[oc * plane + oy * row..][..g.wo];
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = v + b;
            }
        }
    }
}

impl Conv2d {
    /// The forward of a one-channel conv with 8 or 10 filters on the fused forward's row kernel:
    /// each output row in whole vectors with every channel at once, instead of the wide columns
    /// (a 7×7 kernel on 28×28 computes 610 columns for 484 outputs). The same multiply-adds in
    /// the same order from zero, so the same bits.
    fn fwd_rows<E: Real>(&self, g: &Geom, x: &[E], wt: &[E], bias: &[E], out: &mut [E]) {
        let wpm = crate::fused::pack_rows(g, wt);
        let (wo8, img) = (g.wo.next_multiple_of(8), g.image());
        out.par_chunks_mut(g.o * g.p())
            .zip(x.par_chunks(img))
            .for_each_init(
                || {
                    // Recycled: the image is copied in and its 8 spare values zeroed below, and
                    // the kernel writes every product.
                    (
                        HostCopy::<E>::take(img + 8),
                        HostCopy::<E>::take(g.o * g.ho * wo8),
                    )
                },
                |(xp, conv), (o, x)| {
                    xp[..img].copy_from_slice(x);
                    xp[img..].fill(E::zero());
                    crate::dispatch!(I => {
                        crate::fused::conv_rows_at::<E, I>(g, xp, &wpm, conv, wo8);
                        add_bias_rows(g, conv, g.ho * wo8, wo8, bias, o);
                    })
                },
            );
    }

    fn bias_grad<E: Real>(&self, gb: Option<&mut [E]>, grad_out: &[E], o: usize, p: usize) {
        if let Some(gb) = gb {
            crate::dispatch!(I => {
                for go in grad_out.chunks_exact(o * p) {
                    for (gb, row) in gb.iter_mut().zip(go.chunks_exact(p)) {
                        *gb += V::<E, I>::sum(row);
                    }
                }
            })
        }
    }
}

/// `conv2d(x, weight, bias)`, stride 1, no padding. The output carries the parameters' tape merged
/// with the input's; the input's gradient is computed only when it has a tape of its own.
pub fn conv2d<Sx, Sw, Sb, E, D, Tx, T>(
    x: Tensor<Sx, E, D, Tx>,
    weight: Tensor<Sw, E, D, T>,
    bias: Tensor<Sb, E, D, T>,
) -> Result<Tensor<Dyn4, E, D, T>, OpError>
where
    Sx: Shape,
    Sw: Shape,
    Sb: Shape,
    E: Real,
    D: OpDevice<E>,
    Tx: Tape<E, D>,
    T: Tape<E, D> + Merge<Tx>,
{
    let dev = weight.device().clone();
    let (x, tx) = Input::new("conv2d", x)?;
    let (w, tw) = Input::new("conv2d", weight)?;
    let (b, tb) = Input::new("conv2d", bias)?;
    apply(Conv2d, &dev, vec![x, w, b], tw.merge(tb).merge(tx))
}
