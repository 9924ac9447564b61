//! The kernels of `max_pool2d` with kernel and stride 2 (the seed's every pool), whole rows at a
//! time: a portable form for every element type and level, and AVX2 forms for f32 (at the AVX2
//! and AVX-512 levels).

use crate::isa::{Isa, Level};
use crate::simd::Simd;

/// `max_pool2d(2, 2)`'s row and plane kernels, forward and backward, at level `I`.
pub trait PoolKernels: Simd {
    /// One output row of `relu(max_pool2d(conv + b))` with kernel and stride 2: `out[j]` from
    /// `r0[2j..2j+2]` and `r1[2j..2j+2]` (two rows of the conv's products without its bias).
    /// `max_pool2d`'s value: the window's maximum, or NaN if it holds one (which its rule, "the
    /// first maximum in row-major order wins, a NaN wins", gives), then ReLU as dfdx's (`max(x, 0)`,
    /// so NaN becomes 0). The bias is added after the maximum: `max(a + b, c + b) = max(a, c) + b`
    /// exactly, as rounding is monotonic.
    #[inline(always)]
    fn pool2_relu_row<I: Isa>(r0: &[Self], r1: &[Self], b: Self, out: &mut [Self]) {
        portable::pool2_relu_row::<Self>(r0, r1, b, out)
    }

    /// One output row of `max_pool2d` with kernel and stride 2: `out[j]` is the maximum of
    /// `r0[2j..2j+2]` and `r1[2j..2j+2]`, or NaN if one is NaN — the value `max_pool2d`'s rule
    /// gives.
    #[inline(always)]
    fn pool2_row<I: Isa>(r0: &[Self], r1: &[Self], out: &mut [Self]) {
        portable::pool2_row::<Self>(r0, r1, out)
    }

    /// The backward of [`PoolKernels::pool2_row`]: each `go[j]` is added to the gradient of its window's
    /// first maximum in row-major order, or of its first NaN — `max_pool2d`'s rule. `g` holds the
    /// gradient rows of `r0` (from 0) and `r1` (from `w`). With `relu` the pool's output went
    /// through a ReLU: only windows whose value is > 0 pass their gradient (dfdx's ReLU rule).
    #[inline(always)]
    fn pool2_row_bwd<I: Isa>(
        r0: &[Self],
        r1: &[Self],
        go: &[Self],
        g: &mut [Self],
        w: usize,
        relu: bool,
    ) {
        portable::pool2_row_bwd::<Self>(r0, r1, go, g, w, relu)
    }

    /// `max_pool2d` with kernel and stride 2 over one plane `w` wide into `out` (rows `wo` wide),
    /// then ReLU with `relu`: [`PoolKernels::pool2_row`] or [`PoolKernels::pool2_relu_row`] row by row.
    #[inline(always)]
    fn pool2_plane<I: Isa>(plane: &[Self], w: usize, out: &mut [Self], wo: usize, relu: bool) {
        portable::pool2_plane::<Self, I>(plane, w, out, wo, relu)
    }

    /// The backward of [`PoolKernels::pool2_plane`]: [`PoolKernels::pool2_row_bwd`] row by row, into the
    /// plane's gradient `g` (added to).
    #[inline(always)]
    fn pool2_plane_bwd<I: Isa>(
        plane: &[Self],
        w: usize,
        go: &[Self],
        g: &mut [Self],
        wo: usize,
        relu: bool,
    ) {
        portable::pool2_plane_bwd::<Self, I>(plane, w, go, g, wo, relu)
    }
}

/// The portable forms (every element type, every level).
mod portable {
    use super::*;

    /// [`PoolKernels::pool2_relu_row`] in portable code.
    #[inline(always)]
    pub(super) fn pool2_relu_row<E: PoolKernels>(r0: &[E], r1: &[E], b: E, out: &mut [E]) {
        for ((o, a), c) in out
            .iter_mut()
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
        {
            *o = (pool2_value([a[0], a[1], c[0], c[1]]) + b).max(E::zero());
        }
    }

    /// [`PoolKernels::pool2_row`] in portable code.
    #[inline(always)]
    pub(super) fn pool2_row<E: PoolKernels>(r0: &[E], r1: &[E], out: &mut [E]) {
        for ((o, a), c) in out
            .iter_mut()
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
        {
            *o = pool2_value([a[0], a[1], c[0], c[1]]);
        }
    }

    /// [`PoolKernels::pool2_row_bwd`] in portable code.
    #[inline(always)]
    pub(super) fn pool2_row_bwd<E: PoolKernels>(
        r0: &[E],
        r1: &[E],
        go: &[E],
        g: &mut [E],
        w: usize,
        relu: bool,
    ) {
        pool2_bwd_scalar(r0, r1, go, g, w, 0, relu);
    }

    /// [`PoolKernels::pool2_plane`] in portable code.
    #[inline(always)]
    pub(super) fn pool2_plane<E: PoolKernels, I: Isa>(
        plane: &[E],
        w: usize,
        out: &mut [E],
        wo: usize,
        relu: bool,
    ) {
        for (oy, o) in out.chunks_exact_mut(wo).enumerate() {
            let r0 = &plane[2 * oy * w..][..2 * wo];
            let r1 = &plane[(2 * oy + 1) * w..][..2 * wo];
            if relu {
                E::pool2_relu_row::<I>(r0, r1, E::zero(), o);
            } else {
                E::pool2_row::<I>(r0, r1, o);
            }
        }
    }

    /// [`PoolKernels::pool2_plane_bwd`] in portable code.
    #[inline(always)]
    pub(super) fn pool2_plane_bwd<E: PoolKernels, I: Isa>(
        plane: &[E],
        w: usize,
        go: &[E],
        g: &mut [E],
        wo: usize,
        relu: bool,
    ) {
        for (oy, go) in go.chunks_exact(wo).enumerate() {
            E::pool2_row_bwd::<I>(
                &plane[2 * oy * w..][..2 * wo],
                &plane[(2 * oy + 1) * w..][..2 * wo],
                go,
                &mut g[2 * oy * w..][..w + 2 * wo],
                w,
                relu,
            );
        }
    }
}

/// `avx2::f(args)` at the levels with AVX2, else the portable `f`.
macro_rules! avx2_or_portable {
    ($I:ident, $f:ident::<$($g:ty),+>($($a:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        if $I::LEVEL >= Level::Avx2 {
            // SAFETY: the level has AVX2.
            return unsafe { avx2::$f($($a),*) };
        }
        portable::$f::<$($g),+>($($a),*)
    }};
}

impl PoolKernels for f32 {
    #[inline(always)]
    fn pool2_relu_row<I: Isa>(r0: &[f32], r1: &[f32], b: f32, out: &mut [f32]) {
        avx2_or_portable!(I, pool2_relu_row::<f32>(r0, r1, b, out))
    }

    #[inline(always)]
    fn pool2_row<I: Isa>(r0: &[f32], r1: &[f32], out: &mut [f32]) {
        avx2_or_portable!(I, pool2_row::<f32>(r0, r1, out))
    }

    #[inline(always)]
    fn pool2_row_bwd<I: Isa>(
        r0: &[f32],
        r1: &[f32],
        go: &[f32],
        g: &mut [f32],
        w: usize,
        relu: bool,
    ) {
        avx2_or_portable!(I, pool2_row_bwd::<f32>(r0, r1, go, g, w, relu))
    }

    #[inline(always)]
    fn pool2_plane<I: Isa>(plane: &[f32], w: usize, out: &mut [f32], wo: usize, relu: bool) {
        avx2_or_portable!(I, pool2_plane::<f32, I>(plane, w, out, wo, relu))
    }

    #[inline(always)]
    fn pool2_plane_bwd<I: Isa>(
        plane: &[f32],
        w: usize,
        go: &[f32],
        g: &mut [f32],
        wo: usize,
        relu: bool,
    ) {
        avx2_or_portable!(I, pool2_plane_bwd::<f32, I>(plane, w, go, g, wo, relu))
    }
}

impl PoolKernels for f64 {}

/// The AVX2 forms of the f32 kernels. # Safety: each needs a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    /// Eight outputs at a time with AVX2 where the build has it ([`pool2_windows8`]); a window
    /// with a NaN gives 0 (ReLU of NaN).
    #[inline(always)]
    pub(super) unsafe fn pool2_relu_row(r0: &[f32], r1: &[f32], b: f32, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let full = out.len() / 8 * 8;
        assert!(r0.len() >= 2 * out.len() && r1.len() >= 2 * out.len());
        for j in (0..full).step_by(8) {
            // SAFETY: AVX2 is available (the caller's contract); the windows read r0/r1[2j..2j+16] and the
            // store writes out[j..j+8], inside the slices (asserted above, j + 8 ≤ full).
            unsafe {
                let (m, nan) = pool2_windows8(r0, r1, j);
                let y = _mm256_max_ps(_mm256_add_ps(m, _mm256_set1_ps(b)), _mm256_setzero_ps());
                _mm256_storeu_ps(out.as_mut_ptr().add(j), _mm256_andnot_ps(nan, y));
            }
        }
        for ((o, a), c) in out[full..]
            .iter_mut()
            .zip(r0[2 * full..].chunks_exact(2))
            .zip(r1[2 * full..].chunks_exact(2))
        {
            *o = (pool2_value([a[0], a[1], c[0], c[1]]) + b).max(0.0);
        }
    }

    /// As `pool2_relu_row`'s AVX2 path, without the bias and ReLU: NaN where a window holds one.
    #[inline(always)]
    pub(super) unsafe fn pool2_row(r0: &[f32], r1: &[f32], out: &mut [f32]) {
        use std::arch::x86_64::*;
        let full = out.len() / 8 * 8;
        assert!(r0.len() >= 2 * out.len() && r1.len() >= 2 * out.len());
        for j in (0..full).step_by(8) {
            // SAFETY: as in `pool2_relu_row`: AVX2 is available; r0/r1[2j..2j+16] and out[j..j+8]
            // are inside the slices.
            unsafe {
                let (m, nan) = pool2_windows8(r0, r1, j);
                // All-ones lanes are NaN.
                _mm256_storeu_ps(out.as_mut_ptr().add(j), _mm256_or_ps(m, nan));
            }
        }
        for ((o, a), c) in out[full..]
            .iter_mut()
            .zip(r0[2 * full..].chunks_exact(2))
            .zip(r1[2 * full..].chunks_exact(2))
        {
            *o = pool2_value([a[0], a[1], c[0], c[1]]);
        }
    }

    /// Eight outputs at a time with AVX2 where the build has it, without branches (which of four
    /// is the maximum is a coin toss a branch predictor loses): the windows deinterleaved, the
    /// first candidate of each chosen by masks, the gradients interleaved back.
    #[inline(always)]
    pub(super) unsafe fn pool2_row_bwd(
        r0: &[f32],
        r1: &[f32],
        go: &[f32],
        g: &mut [f32],
        w: usize,
        relu: bool,
    ) {
        use std::arch::x86_64::*;
        let n = go.len();
        assert!(r0.len() >= 2 * n && r1.len() >= 2 * n && w >= 2 * n && g.len() >= w + 2 * n);
        let (g0, g1) = g.split_at_mut(w);
        let full = n / 8 * 8;
        for j in (0..full).step_by(8) {
            // SAFETY: AVX2 is available; every access is to [2j, 2j+16) of r0, r1, g0, g1 or
            // [j, j+8) of go, inside the slices (asserted above, j + 8 ≤ full ≤ n); g0 and g1
            // are distinct.
            unsafe {
                let (r0, r1) = (r0.as_ptr().add(2 * j), r1.as_ptr().add(2 * j));
                let (g0, g1) = (g0.as_mut_ptr().add(2 * j), g1.as_mut_ptr().add(2 * j));
                pool2_bwd_ab(
                    [r0, r0.add(8), r1, r1.add(8)],
                    _mm256_loadu_ps(go.as_ptr().add(j)),
                    [g0, g0.add(8), g1, g1.add(8)],
                    relu,
                );
            }
        }
        pool2_bwd_scalar(r0, r1, go, g, w, full, relu);
    }

    /// Rows of 8-output groups as [`PoolKernels::pool2_row`]; where a row has 4 to 7 outputs past its
    /// last group (the seed's 12- and 4-wide pooled rows), those first 4 of two rows go through
    /// one 8-lane pass (instead of the scalar tail); the rest is scalar.
    #[inline(always)]
    pub(super) unsafe fn pool2_plane(
        plane: &[f32],
        w: usize,
        out: &mut [f32],
        wo: usize,
        relu: bool,
    ) {
        use std::arch::x86_64::*;
        let ho = out.len() / wo;
        let full = wo / 8 * 8;
        assert!(out.len() == ho * wo && 2 * wo <= w && plane.len() >= 2 * ho * w);
        let row = |oy: usize, k: usize| &plane[(2 * oy + k) * w..][..2 * wo];
        for (oy, o) in out.chunks_exact_mut(wo).enumerate() {
            if relu {
                pool2_relu_row(row(oy, 0), row(oy, 1), 0.0, &mut o[..full]);
            } else {
                pool2_row(row(oy, 0), row(oy, 1), &mut o[..full]);
            }
        }
        let (quad, paired) = paired_tail(ho, w, wo, full, plane.len());
        for oy in (0..paired).step_by(2) {
            // SAFETY: AVX2 is available; the windows read columns [2·full, 2·full + 8) of rows
            // 2oy..2oy+4, inside `plane` (`paired_tail`: past 2·wo only into the next row); the
            // stores write out[oy·wo + full..+4] and out[(oy+1)·wo + full..+4], inside `out`
            // (full + 4 ≤ wo) when the pass is a whole quad; else through `lanes`, `quad` each.
            unsafe {
                let at = |oy: usize, k: usize| plane.as_ptr().add((2 * oy + k) * w + 2 * full);
                let (m, nan) =
                    pool2_windows_ab([at(oy, 0), at(oy + 1, 0), at(oy, 1), at(oy + 1, 1)]);
                let y = if relu {
                    _mm256_andnot_ps(nan, _mm256_max_ps(m, _mm256_setzero_ps()))
                } else {
                    _mm256_or_ps(m, nan)
                };
                if quad == 4 {
                    let o = out.as_mut_ptr().add(oy * wo + full);
                    _mm_storeu_ps(o, _mm256_castps256_ps128(y));
                    _mm_storeu_ps(o.add(wo), _mm256_extractf128_ps::<1>(y));
                } else {
                    let lanes = std::mem::transmute::<__m256, [f32; 8]>(y);
                    out[oy * wo + full..][..quad].copy_from_slice(&lanes[..quad]);
                    out[(oy + 1) * wo + full..][..quad].copy_from_slice(&lanes[4..4 + quad]);
                }
            }
        }
        for (oy, o) in out.chunks_exact_mut(wo).enumerate() {
            let from = if oy < paired { full + quad } else { full };
            let (r0, r1) = (row(oy, 0), row(oy, 1));
            for (j, o) in o.iter_mut().enumerate().skip(from) {
                let v = pool2_value([r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]]);
                *o = if relu { v.max(0.0) } else { v };
            }
        }
    }

    /// As [`PoolKernels::pool2_plane`]'s f32 path: 8-output groups per row, the first 4 outputs past
    /// them of two rows in one pass, the rest scalar.
    #[inline(always)]
    pub(super) unsafe fn pool2_plane_bwd(
        plane: &[f32],
        w: usize,
        go: &[f32],
        g: &mut [f32],
        wo: usize,
        relu: bool,
    ) {
        use std::arch::x86_64::*;
        let ho = go.len() / wo;
        let full = wo / 8 * 8;
        assert!(go.len() == ho * wo && 2 * wo <= w);
        assert!(plane.len() >= 2 * ho * w && g.len() >= 2 * ho * w);
        for (oy, go) in go.chunks_exact(wo).enumerate() {
            pool2_row_bwd(
                &plane[2 * oy * w..][..2 * full],
                &plane[(2 * oy + 1) * w..][..2 * full],
                &go[..full],
                &mut g[2 * oy * w..][..w + 2 * full],
                w,
                relu,
            );
        }
        let (quad, mut paired) = paired_tail(ho, w, wo, full, plane.len().min(g.len()));
        // Each pass reads 4 output gradients of its second row.
        while paired > 0 && (paired - 1) * wo + full + 4 > go.len() {
            paired -= 2;
        }
        // The outputs past `quad` in a pass get a zero gradient: they add 0 to what they cover.
        // SAFETY: SSE2 is part of every x86_64 build.
        let keep = unsafe {
            _mm_castsi128_ps(_mm_cmplt_epi32(
                _mm_setr_epi32(0, 1, 2, 3),
                _mm_set1_epi32(quad as i32),
            ))
        };
        for oy in (0..paired).step_by(2) {
            // SAFETY: AVX2 is available; reads and writes cover columns [2·full, 2·full + 8) of
            // rows 2oy..2oy+4 of `plane` and `g` (`paired_tail`: inside both, past 2·wo only into
            // the next row, which this call alone writes; where pieces overlap, `pool2_bwd_ab`
            // adds them in turn and the lanes past `quad` add zero);
            // go[oy·wo + full..+4] and go[(oy+1)·wo + full..+4] lie inside `go` (checked above).
            unsafe {
                let at = |oy: usize, k: usize| (2 * oy + k) * w + 2 * full;
                let rows = [at(oy, 0), at(oy + 1, 0), at(oy, 1), at(oy + 1, 1)];
                let gp = go.as_ptr().add(oy * wo + full);
                let q = |p: *const f32| {
                    let v = _mm_loadu_ps(p);
                    if quad == 4 {
                        v
                    } else {
                        _mm_and_ps(keep, v)
                    }
                };
                let gv = _mm256_set_m128(q(gp.add(wo)), q(gp));
                let gptr = g.as_mut_ptr();
                pool2_bwd_ab(
                    rows.map(|i| plane.as_ptr().add(i)),
                    gv,
                    rows.map(|i| gptr.add(i)),
                    relu,
                );
            }
        }
        for (oy, go) in go.chunks_exact(wo).enumerate() {
            let from = if oy < paired { full + quad } else { full };
            pool2_bwd_scalar(
                &plane[2 * oy * w..][..2 * wo],
                &plane[(2 * oy + 1) * w..][..2 * wo],
                go,
                &mut g[2 * oy * w..][..w + 2 * wo],
                w,
                from,
                relu,
            );
        }
    }
}

/// `PoolKernels::pool2_row_bwd` from output `from` on, one output at a time without branches: the
/// candidates (the window's NaNs if it holds one, else its maxima), the first of them, and its
/// position in `g` by arithmetic.
#[inline(always)]
fn pool2_bwd_scalar<E: Simd>(
    r0: &[E],
    r1: &[E],
    go: &[E],
    g: &mut [E],
    w: usize,
    from: usize,
    relu: bool,
) {
    assert!(r0.len() >= 2 * go.len() && r1.len() >= 2 * go.len());
    assert!(w >= 2 * go.len() && g.len() >= w + 2 * go.len());
    for (j, &go) in go.iter().enumerate().skip(from) {
        let v = [r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]];
        let nan = v.map(|x| x.is_nan());
        let any = nan[0] | nan[1] | nan[2] | nan[3];
        let m = v[0].max(v[1]).max(v[2].max(v[3]));
        let c = |i: usize| (nan[i] | (!any & (v[i] == m))) as u32;
        // The first candidate: the lowest set bit (bit 3 stands for "else the last").
        let best = (c(0) | c(1) << 1 | c(2) << 2 | 8).trailing_zeros() as usize;
        let pass = !relu || (!any & (m > E::zero()));
        g[2 * j + (best & 1) + (best >> 1) * w] += if pass { go } else { E::zero() };
    }
}

/// The pooled rows' outputs past their 8-output groups that go through one 8-lane pass for two
/// rows: `(quad, paired)` — up to 4 outputs (`quad`) of the rows `..paired`. A pass reads 8 columns
/// of 4 conv rows from column `2·full`: with fewer than 4 outputs left (`quad` < 4: the seed's
/// 11-wide localization.0 and 3-wide localization.3 rows) it runs past the row into the next,
/// so only while that stays inside the `len` elements of the plane (its rows below the pass's).
#[cfg(target_arch = "x86_64")]
fn paired_tail(ho: usize, w: usize, wo: usize, full: usize, len: usize) -> (usize, usize) {
    let quad = (wo - full).min(4);
    if quad == 0 {
        return (0, 0);
    }
    // Rows 2oy..2oy+4 of a pass, columns [2·full, 2·full + 8).
    let fits = |oy: usize| (2 * oy + 3) * w + 2 * full + 8 <= len;
    let mut paired = ho / 2 * 2;
    while paired > 0 && !fits(paired - 2) {
        paired -= 2;
    }
    (quad, paired)
}
/// A 2×2 window's `max_pool2d` value without branches: its maximum, or NaN if it holds one.
#[inline(always)]
fn pool2_value<E: Simd>(v: [E; 4]) -> E {
    let any_nan = v[0].is_nan() | v[1].is_nan() | v[2].is_nan() | v[3].is_nan();
    let m = v[0].max(v[1]).max(v[2].max(v[3]));
    if any_nan {
        E::nan()
    } else {
        m
    }
}

/// The 2×2 windows of outputs `j..j+8` (rows `r0`, `r1` from `2j`): their maxima and a mask of the
/// windows that hold a NaN, in output order ([`pool2_windows_ab`] on the two halves).
///
/// # Safety
/// AVX2 must be available and `r0`, `r1` must hold `2j + 16` elements.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pool2_windows8(
    r0: &[f32],
    r1: &[f32],
    j: usize,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    debug_assert!(r0.len() >= 2 * j + 16 && r1.len() >= 2 * j + 16);
    let (r0, r1) = (r0.as_ptr().add(2 * j), r1.as_ptr().add(2 * j));
    pool2_windows_ab([r0, r0.add(8), r1, r1.add(8)])
}

/// Four 2×2 windows at each of two places: `rows = [top a, top b, bottom a, bottom b]`, 8 floats
/// from each (a and b may lie in different rows of the plane). Their maxima and a mask of the
/// windows that hold a NaN, lanes 0–3 a's windows, 4–7 b's. Vertical maxima first, then the
/// horizontal pairs deinterleaved by two shuffles: even = [v0₀ v0₂ v1₀ v1₂ v0₄ v0₆ v1₄ v1₆], odd
/// likewise, whose maximum is the outputs in the order 0 1 4 5 2 3 6 7, which the 64-bit permute
/// puts right.
///
/// # Safety
/// AVX2 must be available and each pointer must be valid for reading 8 floats.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pool2_windows_ab(
    rows: [*const f32; 4],
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    let [a0, a1, c0, c1] = rows.map(|r| _mm256_loadu_ps(r));
    let (v0, v1) = (_mm256_max_ps(a0, c0), _mm256_max_ps(a1, c1));
    let (n0, n1) = (
        _mm256_cmp_ps::<_CMP_UNORD_Q>(a0, c0),
        _mm256_cmp_ps::<_CMP_UNORD_Q>(a1, c1),
    );
    let pairs = |x: __m256, y: __m256| {
        (
            _mm256_shuffle_ps::<0b10_00_10_00>(x, y),
            _mm256_shuffle_ps::<0b11_01_11_01>(x, y),
        )
    };
    let ((e, o), (ne, no)) = (pairs(v0, v1), pairs(n0, n1));
    let order =
        |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)));
    (order(_mm256_max_ps(e, o)), order(_mm256_or_ps(ne, no)))
}

/// The backward of four 2×2 windows at each of two places (as [`pool2_windows_ab`]: `rows` =
/// [top a, top b, bottom a, bottom b]), `go` their output gradients (lanes 0–3 a's): each is added
/// to the gradient of its window's first maximum in row-major order, or of its first NaN, at
/// `g` = [top a, top b, bottom a, bottom b] (8 floats each, as `rows`). With `relu` only windows
/// whose value is > 0 pass their gradient. Branch-free: the windows deinterleaved, the first
/// candidate of each chosen by masks, the gradients interleaved back.
///
/// # Safety
/// AVX2 must be available; each `rows` pointer valid for reading 8 floats, each `g` pointer for
/// reading and writing 8 floats. The `g` pieces are added to in the order top a, top b, bottom a,
/// bottom b, each read after the ones before it are written, so they may overlap: a pooled row's
/// tail pass (`paired_tail`) runs into the next conv row, where its masked lanes add zero.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pool2_bwd_ab(
    rows: [*const f32; 4],
    go: std::arch::x86_64::__m256,
    g: [*mut f32; 4],
    relu: bool,
) {
    use std::arch::x86_64::*;
    // Even and odd elements of two 8-float pieces, in output order.
    let order =
        |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)));
    let split = |x: __m256, y: __m256| {
        (
            order(_mm256_shuffle_ps::<0b10_00_10_00>(x, y)),
            order(_mm256_shuffle_ps::<0b11_01_11_01>(x, y)),
        )
    };
    let [t0, t1, b0, b1] = rows.map(|r| _mm256_loadu_ps(r));
    let (v0, v1) = split(t0, t1);
    let (v2, v3) = split(b0, b1);
    let m = _mm256_max_ps(_mm256_max_ps(v0, v1), _mm256_max_ps(v2, v3));
    let nan = |v| _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
    let (n0, n1, n2, n3) = (nan(v0), nan(v1), nan(v2), nan(v3));
    let any = _mm256_or_ps(_mm256_or_ps(n0, n1), _mm256_or_ps(n2, n3));
    // Candidates: the NaNs if the window has one, else its maxima.
    let cand = |v, nv| _mm256_or_ps(nv, _mm256_andnot_ps(any, _mm256_cmp_ps::<_CMP_EQ_OQ>(v, m)));
    let s0 = cand(v0, n0);
    let s1 = _mm256_andnot_ps(s0, cand(v1, n1));
    let taken = _mm256_or_ps(s0, s1);
    let s2 = _mm256_andnot_ps(taken, cand(v2, n2));
    let taken = _mm256_or_ps(taken, s2);
    // After a ReLU only windows whose value is > 0 (so not NaN) pass their gradient.
    let gv = if relu {
        let pass = _mm256_andnot_ps(any, _mm256_cmp_ps::<_CMP_GT_OQ>(m, _mm256_setzero_ps()));
        _mm256_and_ps(pass, go)
    } else {
        go
    };
    let (d0, d1, d2) = (
        _mm256_and_ps(s0, gv),
        _mm256_and_ps(s1, gv),
        _mm256_and_ps(s2, gv),
    );
    let d3 = _mm256_andnot_ps(taken, gv);
    // Interleave (even, odd) back into the two 8-float pieces, and add (a function, not a
    // closure: closures are not always inlined, and one left out of line calls each intrinsic).
    #[inline(always)]
    unsafe fn add(pa: *mut f32, pb: *mut f32, e: __m256, o: __m256) {
        let (lo, hi) = (_mm256_unpacklo_ps(e, o), _mm256_unpackhi_ps(e, o));
        let a = _mm256_permute2f128_ps::<0x20>(lo, hi);
        let b = _mm256_permute2f128_ps::<0x31>(lo, hi);
        _mm256_storeu_ps(pa, _mm256_add_ps(_mm256_loadu_ps(pa), a));
        _mm256_storeu_ps(pb, _mm256_add_ps(_mm256_loadu_ps(pb), b));
    }
    add(g[0], g[1], d0, d1);
    add(g[2], g[3], d2, d3);
}
