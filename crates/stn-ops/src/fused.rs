//! Inference-only: `relu(max_pool2d(conv2d(x, w, b), 2, 2))` on one image, in one pass over
//! caller-owned scratch — the three layers of every conv block of the seed network.
//!
//! Why a fused form: without a tape nothing needs the conv's or the pool's output, so neither is
//! allocated, zeroed, written and read back; the pool reads the products where `conv2d`'s kernel
//! left them (the wide columns of the implicit im2col) and adds the bias to four values instead of
//! every one. The result is bit-identical to the three ops in sequence: the products are the same
//! kernel's, `max(a + b, c + b) = max(a, c) + b` exactly (rounding is monotonic), and the tie and
//! NaN rules are `max_pool2d`'s.

use crate::conv2d::Geom;
use crate::isa::Isa;
use crate::linalg::{gemm, PackedA};
use crate::simd::{Vector, V, V8};
use crate::Real;

/// A [`ConvPoolRelu`]'s kernel, packed for its products: in row blocks for the general path, and
/// p-major with all output channels together (`[K][O]`) for the one-channel row kernel.
pub struct PackedWeights<E>(PackedA<E>, Vec<E>);

/// Spare elements after the explicit im2col: 8 for its 8-wide copies, and at least a column block
/// of the products (4 vectors: 64 f32 with AVX-512) so they read the last, partial one in place.
const COLS_SPARE: usize = 64;

/// One conv (stride 1, no padding) → max-pool 2×2 → ReLU block for a `C×H×W` image and an
/// `O×C×K×K` kernel.
pub struct ConvPoolRelu {
    g: Geom,
}

impl ConvPoolRelu {
    /// The block of an `o×c×k×k` kernel on `c×h×w` images.
    pub fn new(c: usize, h: usize, w: usize, o: usize, k: usize) -> ConvPoolRelu {
        assert!(
            c > 0 && o > 0 && k > 0 && k <= h.min(w),
            "a {k}×{k} kernel on {h}×{w}"
        );
        ConvPoolRelu {
            g: Geom::new(&[1, c, h, w], &[o, c, k, k]),
        }
    }

    /// The pooled output's `[O, Ho/2, Wo/2]`.
    pub fn out_dims(&self) -> [usize; 3] {
        [self.g.o, self.g.ho / 2, self.g.wo / 2]
    }

    /// Values of one image's pooled output.
    pub fn out_len(&self) -> usize {
        self.out_dims().iter().product()
    }

    /// Scratch the block needs (elements).
    pub fn scratch_len(&self) -> usize {
        let g = &self.g;
        if g.packed {
            g.k() * g.p() + COLS_SPARE + g.o * g.p()
        } else if self.rows() {
            g.image() + 8 + g.o * g.ho * g.wo.next_multiple_of(8)
        } else {
            g.o * g.n()
        }
    }

    /// Whether the one-channel row kernel serves this block (the seed's 8 and 10 channels).
    fn rows(&self) -> bool {
        rows_kernel_serves(&self.g)
    }

    /// The kernel `[O, C, K, K]` packed for [`ConvPoolRelu::run`], once for every image.
    pub fn pack<E: Real>(&self, wt: &[E]) -> PackedWeights<E> {
        let k = self.g.k();
        assert_eq!(wt.len(), self.g.o * k, "an {}×{k} kernel", self.g.o);
        PackedWeights(
            PackedA::new(self.g.o, k, wt, (k, 1)),
            pack_rows(&self.g, wt),
        )
    }

    /// `out = relu(max_pool2d(conv2d(x, wt, bias)))` for one image, at the process's ISA level.
    pub fn run<E: Real>(
        &self,
        x: &[E],
        wt: &PackedWeights<E>,
        bias: &[E],
        scratch: &mut [E],
        out: &mut [E],
    ) {
        crate::dispatch!(I => self.run_at::<E, I>(x, wt, bias, scratch, out))
    }

    /// [`ConvPoolRelu::run`] at level `I`, for a caller inside a [`crate::dispatch!`] body of
    /// that level.
    #[doc(hidden)]
    #[inline(always)]
    pub fn run_at<E: Real, I: Isa>(
        &self,
        x: &[E],
        wt: &PackedWeights<E>,
        bias: &[E],
        scratch: &mut [E],
        out: &mut [E],
    ) {
        let g = &self.g;
        let (k, p) = (g.k(), g.p());
        assert!(x.len() == g.image() && wt.0.shape() == (g.o, k) && bias.len() == g.o);
        assert!(scratch.len() >= self.scratch_len() && out.len() == self.out_len());
        let [_, ph, pw] = self.out_dims();
        // The conv's products without the bias: channel `oc`'s row `y` starts at `oc·ch + y·row`.
        let (acc, row, ch): (&[E], usize, usize) = if self.rows() {
            // One channel: each output row in 8-pixel blocks, every output channel at once — no
            // wide columns to drop (a quarter of the work for a 7×7 kernel on 28×28).
            let wo8 = g.wo.next_multiple_of(8);
            let (xp, conv) = scratch.split_at_mut(g.image() + 8);
            // The image with 8 spare elements: the last block of a row may read past its end.
            xp[..g.image()].copy_from_slice(x);
            xp[g.image()..].fill(E::zero());
            let conv = &mut conv[..g.o * g.ho * wo8];
            conv_rows_at::<E, I>(g, xp, &wt.1, conv, wo8);
            (conv, wo8, g.ho * wo8)
        } else if g.packed {
            let (cols, res) = scratch.split_at_mut(k * p + COLS_SPARE);
            g.im2col_group_at::<E, I>(x, 1, cols);
            let res = &mut res[..g.o * p];
            gemm::<E, I, false>(&wt.0, p, cols, &g.col_offs, res, &g.p_offs);
            (res, g.wo, p)
        } else {
            let n = g.n();
            let wide = &mut scratch[..g.o * n];
            gemm::<E, I, false>(&wt.0, n, x, &g.offs, wide, &g.out_offs);
            (wide, g.w, n)
        };
        for (oc, (o, &b)) in out.chunks_exact_mut(ph * pw).zip(bias).enumerate() {
            for (py, o) in o.chunks_exact_mut(pw).enumerate() {
                let r0 = &acc[oc * ch + 2 * py * row..][..2 * pw];
                let r1 = &acc[oc * ch + (2 * py + 1) * row..][..2 * pw];
                E::pool2_relu_row::<I>(r0, r1, b, o);
            }
        }
    }
}

/// Whether [`conv_rows`] serves a conv: one input channel and 8 or 10 filters (the seed's
/// one-channel convs; its register blocks are made for those counts).
pub(crate) fn rows_kernel_serves(g: &Geom) -> bool {
    !g.packed && matches!(g.o, 8 | 10)
}

/// The kernel `[O, K]` p-major (`[K][O]`), as [`conv_rows`] reads it.
pub(crate) fn pack_rows<E: Real>(g: &Geom, wt: &[E]) -> Vec<E> {
    let (k, o) = (g.k(), g.o);
    assert_eq!(wt.len(), o * k, "an {o}×{k} kernel");
    (0..k * o).map(|i| wt[(i % o) * k + i / o]).collect()
}

/// [`conv_rows`] for the conv's filter count (one that [`rows_kernel_serves`]).
#[inline(always)]
pub(crate) fn conv_rows_at<E: Real, I: Isa>(
    g: &Geom,
    xp: &[E],
    wpm: &[E],
    conv: &mut [E],
    wo8: usize,
) {
    match g.o {
        8 => conv_rows::<E, I, 8>(g, xp, wpm, conv, wo8),
        10 => conv_rows::<E, I, 10>(g, xp, wpm, conv, wo8),
        o => unreachable!("the row kernel has no {o}-filter form"),
    }
}

/// One-channel conv products, output rows in blocks of level `I`'s full vectors (16 pixels with
/// AVX-512) and then 8-pixel blocks, with all `R` channels in registers: `conv[o, y, x] = Σ_p
/// w[p, o] · x[offs[p] + y·W + x]` (no bias), rows `wo8` long. The sum runs over p in order from
/// zero with one multiply-add each, as the general kernel's, so the products are bit for bit the
/// same at every lane width. Why the wide blocks: a 24- or 22-pixel row is one 16-lane and one
/// 8-lane block instead of three 8-lane ones, a third fewer multiply-adds issued.
#[inline(always)]
fn conv_rows<E: Real, I: Isa, const R: usize>(
    g: &Geom,
    xp: &[E],
    wpm: &[E],
    conv: &mut [E],
    wo8: usize,
) {
    let k = g.k();
    assert!(wpm.len() == k * R && conv.len() == R * g.ho * wo8);
    assert!(g
        .offs
        .iter()
        .all(|&o| o + (g.ho - 1) * g.w + wo8 <= xp.len()));
    let nv = V::<E, I>::N;
    // With 32 registers (AVX-512), two rows share each weight's broadcast: 2·R accumulators,
    // half the loads per multiply-add. AVX2's 16 registers hold one row's.
    let pair = nv >= 16;
    let mut y = 0;
    while y < g.ho {
        let two = pair && y + 1 < g.ho;
        let mut x0 = 0;
        while x0 + nv <= wo8 {
            if two {
                conv_block::<E, V<E, I>, R, 2>(g, xp, wpm, conv, wo8, y, x0);
            } else {
                conv_block::<E, V<E, I>, R, 1>(g, xp, wpm, conv, wo8, y, x0);
            }
            x0 += nv;
        }
        while x0 < g.wo {
            if two {
                conv_block::<E, V8<E, I>, R, 2>(g, xp, wpm, conv, wo8, y, x0);
            } else {
                conv_block::<E, V8<E, I>, R, 1>(g, xp, wpm, conv, wo8, y, x0);
            }
            x0 += 8;
        }
        y += 1 + two as usize;
    }
}

/// [`conv_rows`]' products of output rows `y..y + B`, pixels `x0..x0 + L::N` (`x0 + L::N ≤ wo8`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn conv_block<E: Real, L: Vector<E>, const R: usize, const B: usize>(
    g: &Geom,
    xp: &[E],
    wpm: &[E],
    conv: &mut [E],
    wo8: usize,
    y: usize,
    x0: usize,
) {
    let nv = L::N;
    debug_assert!(x0 + nv <= wo8 && y + B <= g.ho);
    let plane = g.ho * wo8;
    let mut acc = [[L::splat(E::zero()); R]; B];
    let base = y * g.w + x0;
    for (p, &off) in g.offs.iter().enumerate() {
        // SAFETY: off + base + (B−1)·W + N ≤ off + (ho−1)·W + wo8 ≤ xp.len() (asserted by
        // conv_rows), and p·R + r < k·R = wpm.len().
        let bv: [L; B] = std::array::from_fn(|b| {
            let at = off + base + b * g.w;
            L::load(unsafe { xp.get_unchecked(at..at + nv) })
        });
        // One broadcast per weight, used by every row: r indexes the B accumulator rows.
        #[allow(clippy::needless_range_loop)]
        for r in 0..R {
            let wv = L::splat(unsafe { *wpm.get_unchecked(p * R + r) });
            for b in 0..B {
                acc[b][r] = L::fma(wv, bv[b], acc[b][r]);
            }
        }
    }
    for (b, acc) in acc.iter().enumerate() {
        for (r, a) in acc.iter().enumerate() {
            let at = r * plane + (y + b) * wo8 + x0;
            L::store(&mut conv[at..at + nv], *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::op::PoolKernels;

    /// `relu(max_pool2d(·) + b)` of one output, by `max_pool2d`'s rule and dfdx's ReLU.
    fn reference(w: [f32; 4], b: f32) -> f32 {
        let mut m = w[0];
        for &v in &w[1..] {
            if m.is_nan() {
                break;
            }
            if v > m || v.is_nan() {
                m = v;
            }
        }
        (m + b).max(0.0)
    }

    #[test]
    fn pooled_rows_follow_max_pool2d_and_relu_with_nans_infinities_and_ties() {
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.5];
        for len in 0..=37 {
            let val = |i: usize, s: f32| -> f32 {
                if i % 7 == (s as usize) % 7 {
                    special[(i / 7 + s as usize) % special.len()]
                } else {
                    // Few distinct values: many ties.
                    ((i as f32 * 12.9898 + s).sin() * 4.0).round() / 2.0 - 0.7
                }
            };
            let r0: Vec<f32> = (0..2 * len).map(|i| val(i, 3.0)).collect();
            let r1: Vec<f32> = (0..2 * len).map(|i| val(i, 7.1)).collect();
            for b in [0.25, -1.0, 0.0] {
                let mut out = vec![f32::NAN; len];
                crate::dispatch!(I => f32::pool2_relu_row::<I>(&r0, &r1, b, &mut out));
                for (j, &o) in out.iter().enumerate() {
                    let want = reference([r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]], b);
                    assert!(o == want, "len {len} b {b} out[{j}]: {o} vs {want}");
                }
            }
        }
    }
}
