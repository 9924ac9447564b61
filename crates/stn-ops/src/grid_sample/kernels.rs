//! The sampler's kernels (`grid_sample`, `affine_sample`): eight grid points at a time mapped
//! into a framed plane, their corner values and bilinear weights; a portable form for every
//! element type and level, and AVX2 forms for f32 (at the AVX2 and AVX-512 levels, whose
//! eight-lane vectors are the same registers).

use super::modes::{cubic_weight_derivatives, cubic_weights};
use crate::isa::{Isa, Level};
use crate::simd::{Simd, Vector, V8};

/// Eight grid points mapped into a plane framed by two zero pixels on every side (zero padding's
/// sampler, see `grid_sample`): the source coordinates' fractional parts, the frame index of each
/// point's top-left corner, and whether both of its coordinates are finite.
#[derive(Clone, Copy)]
pub struct Framed8<E: Simd, I: Isa> {
    /// Fractional parts of the x coordinates.
    pub fx: V8<E, I>,
    /// Fractional parts of the y coordinates.
    pub fy: V8<E, I>,
    /// Frame index of each point's top-left corner.
    pub base: [u32; 8],
    /// Whether both coordinates are finite.
    pub ok: [bool; 8],
}

/// An axis of the sampler as [`SampleKernels::framed8`] reads it: a normalised coordinate `g` maps to
/// `g·scale + offset` on a side of `size` pixels.
#[derive(Clone, Copy)]
pub struct AxisMap<E> {
    /// Pixels per normalised unit.
    pub scale: E,
    /// The pixel of coordinate 0.
    pub offset: E,
    /// The side in pixels.
    pub size: usize,
}

/// Bicubic, up to eight points in a plane framed by `border` zero pixels: each point's frame index
/// of its top-left tap and 16 weights (row by row, `wy_i·wx_j`), and with the grid's gradient the
/// 16 `wy_i·w'x_j` and `w'y_i·wx_j`. Points past the last, and points that are not finite, have
/// zero weights at frame index 0 (the frame's corner, zero).
#[derive(Clone, Copy)]
pub struct CubicGroup<E> {
    /// Frame index of each point's top-left tap.
    pub base: [u32; 8],
    /// The interpolation weights.
    pub w: [[E; 16]; 8],
    /// The weights' derivatives along x (zero without `grads`).
    pub dx: [[E; 16]; 8],
    /// The weights' derivatives along y (zero without `grads`).
    pub dy: [[E; 16]; 8],
}

impl<E: Simd> CubicGroup<E> {
    fn zero() -> Self {
        let z = [[E::zero(); 16]; 8];
        CubicGroup {
            base: [0; 8],
            w: z,
            dx: z,
            dy: z,
        }
    }
}

/// [`SampleKernels::cubic_group8`] point by point.
#[inline(always)]
fn cubic_group8_portable<E: Simd>(
    g: &[E],
    ax: AxisMap<E>,
    ay: AxisMap<E>,
    border: usize,
    grads: bool,
) -> CubicGroup<E> {
    let mut q = CubicGroup::zero();
    let (fw, b) = (ax.size + 2 * border, border as i32);
    // Loops, not `map` closures (see `corners_portable`'s callers).
    for k in 0..(g.len() / 2).min(8) {
        let (x, y) = (
            g[2 * k] * ax.scale + ax.offset,
            g[2 * k + 1] * ay.scale + ay.offset,
        );
        if !(x.is_finite() && y.is_finite()) {
            continue;
        }
        let (x0, y0) = (x.floor(), y.floor());
        let (tx, ty) = (x - x0, y - y0);
        // Clamped so that the taps stay in the frame; a clamped axis has all four taps
        // outside the image, in the zero border.
        let cx = E::to_i32_sat(x0).clamp(1 - b, ax.size as i32 + b - 3);
        let cy = E::to_i32_sat(y0).clamp(1 - b, ay.size as i32 + b - 3);
        q.base[k] = ((cy - 1 + b) as usize * fw + (cx - 1 + b) as usize) as u32;
        let (wx, wy) = (cubic_weights(tx), cubic_weights(ty));
        for m in 0..16 {
            let (i, j) = (m / 4, m % 4);
            q.w[k][m] = wy[i] * wx[j];
        }
        if grads {
            let (dwx, dwy) = (cubic_weight_derivatives(tx), cubic_weight_derivatives(ty));
            for m in 0..16 {
                let (i, j) = (m / 4, m % 4);
                q.dx[k][m] = wy[i] * dwx[j];
                q.dy[k][m] = dwy[i] * wx[j];
            }
        }
    }
    q
}

/// The sampler's eight-point kernels at level `I`.
pub trait SampleKernels: Simd {
    /// `[plane[idx[0]], …, plane[idx[7]]]`; every index must be inside `plane` (it panics if not).
    #[inline(always)]
    fn gather<I: Isa>(plane: &[Self], idx: &[u32; 8]) -> V8<Self, I> {
        V8::<Self, I>::from_array(idx.map(|i| plane[i as usize]))
    }

    /// The four corners `[nw, ne, sw, se]` of 8 points in a row-paired plane (`rows`: element
    /// `2i` and `2i + 1` are pixel `i` and the pixel below it, so the 4 values from `2·idx[l]`
    /// are `[nw, sw, ne, se]` of the point whose top-left corner is pixel `idx[l]`).
    #[inline(always)]
    fn corners<I: Isa>(rows: &[Self], idx: &[u32; 8]) -> [V8<Self, I>; 4] {
        corners_portable::<Self, I>(rows, idx)
    }

    /// Eight points `g[..16]` (x, y pairs) in a framed plane `W + 4` wide: `x = gx·scale +
    /// offset` (a multiply, then an add) and likewise y, the fractional parts `x − ⌊x⌋`, the
    /// floor clamped to [−2, W] × [−2, H] so that both corners of a clamped axis lie in the zero
    /// border (a non-finite point to (−2, −2)), and the frame index `(⌊y⌋ + 2)·(W + 4) + ⌊x⌋ + 2`.
    #[inline(always)]
    fn framed8<I: Isa>(g: &[Self], ax: AxisMap<Self>, ay: AxisMap<Self>) -> Framed8<Self, I> {
        framed8_portable(g, ax, ay)
    }

    /// The bilinear weights `[nw, ne, sw, se]` of framed points (`(1−fy)(1−fx)`, `(1−fy)fx`,
    /// `fy(1−fx)`, `fy·fx`), zero for a point that is not finite.
    #[inline(always)]
    fn weights8<I: Isa>(f: &Framed8<Self, I>) -> [V8<Self, I>; 4] {
        weights8_portable(f)
    }

    /// Bicubic weights of the points `g` (x, y pairs, at most eight) in a plane framed by
    /// `border` zero pixels ([`CubicGroup`]): `x = gx·scale + offset` (a multiply, then an add),
    /// its floor clamped to [1 − border, size + border − 3], PyTorch's cubic coefficients of the
    /// fractional part, and their derivatives with `grads`.
    #[inline(always)]
    fn cubic_group8<I: Isa>(
        g: &[Self],
        ax: AxisMap<Self>,
        ay: AxisMap<Self>,
        border: usize,
        grads: bool,
    ) -> CubicGroup<Self> {
        cubic_group8_portable(g, ax, ay, border, grads)
    }

    /// Bicubic, eight points at a time: for each point `k`, the sums over its 4×4 window of
    /// `plane` (rows `fw` apart from `base[k]`) weighted by each of `weights` — `weights[m][k]`
    /// holds point `k`'s 16 weights, row by row. Summed in a fixed tree: within rows 0 and 2 and
    /// within rows 1 and 3 lane by lane (a multiply, then a multiply-add), then the lanes in pairs.
    /// Every window must lie inside `plane` (it panics if not).
    #[inline(always)]
    fn cubic8<I: Isa, const M: usize>(
        plane: &[Self],
        fw: usize,
        base: &[u32; 8],
        weights: [&[[Self; 16]; 8]; M],
    ) -> [V8<Self, I>; M] {
        cubic8_portable::<Self, I, M>(plane, fw, base, weights)
    }
}

/// [`SampleKernels::cubic8`] in portable code: the AVX2 form's order, without its fused
/// multiply-add.
#[inline(always)]
fn cubic8_portable<E: Simd, I: Isa, const M: usize>(
    plane: &[E],
    fw: usize,
    base: &[u32; 8],
    weights: [&[[E; 16]; 8]; M],
) -> [V8<E, I>; M] {
    // Loops, not closures (see the AVX2 form).
    let mut sums = [V8::<E, I>::splat(E::zero()); M];
    for m in 0..M {
        let mut out = [E::zero(); 8];
        for k in 0..8 {
            let b = base[k] as usize;
            let wk = &weights[m][k];
            // Lane j < 4: rows 0 and 2; lane j ≥ 4: rows 1 and 3.
            let mut s = [E::zero(); 8];
            for j in 0..4 {
                s[j] = plane[b + j] * wk[j] + plane[b + 2 * fw + j] * wk[8 + j];
                s[4 + j] = plane[b + fw + j] * wk[4 + j] + plane[b + 3 * fw + j] * wk[12 + j];
            }
            out[k] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
        }
        sums[m] = V8::<E, I>::load(&out);
    }
    sums
}

/// [`SampleKernels::corners`] in portable code.
#[inline(always)]
fn corners_portable<E: Simd, I: Isa>(rows: &[E], idx: &[u32; 8]) -> [V8<E, I>; 4] {
    let at = |k: usize| V8::<E, I>::from_array(idx.map(|i| rows[2 * i as usize + k]));
    [at(0), at(2), at(1), at(3)]
}

/// [`SampleKernels::framed8`] in portable code.
#[inline(always)]
fn framed8_portable<E: Simd, I: Isa>(g: &[E], ax: AxisMap<E>, ay: AxisMap<E>) -> Framed8<E, I> {
    {
        let fw = (ax.size + 4) as u32;
        let (wmax, hmax) = (E::of(ax.size as f64), E::of(ay.size as f64));
        let two = E::of(2.0);
        let (mut fx, mut fy, mut base, mut ok) =
            ([E::zero(); 8], [E::zero(); 8], [0u32; 8], [false; 8]);
        for l in 0..8 {
            let x = g[2 * l] * ax.scale + ax.offset;
            let y = g[2 * l + 1] * ay.scale + ay.offset;
            let (x0, y0) = (x.floor(), y.floor());
            (fx[l], fy[l]) = (x - x0, y - y0);
            ok[l] = x.is_finite() && y.is_finite();
            let cx = if ok[l] { x0.max(-two).min(wmax) } else { -two };
            let cy = if ok[l] { y0.max(-two).min(hmax) } else { -two };
            base[l] = (E::to_i32_sat(cy) + 2) as u32 * fw + (E::to_i32_sat(cx) + 2) as u32;
        }
        Framed8 {
            fx: V8::<E, I>::from_array(fx),
            fy: V8::<E, I>::from_array(fy),
            base,
            ok,
        }
    }
}

/// [`SampleKernels::weights8`] in portable code.
#[inline(always)]
fn weights8_portable<E: Simd, I: Isa>(f: &Framed8<E, I>) -> [V8<E, I>; 4] {
    let (fx, fy) = (V8::<E, I>::lanes(f.fx), V8::<E, I>::lanes(f.fy));
    let mut w = [[E::zero(); 8]; 4];
    for l in 0..8 {
        if f.ok[l] {
            let (ex, sy) = (E::one() - fx[l], E::one() - fy[l]);
            w[0][l] = sy * ex;
            w[1][l] = sy * fx[l];
            w[2][l] = fy[l] * ex;
            w[3][l] = fy[l] * fx[l];
        }
    }
    w.map(V8::<E, I>::from_array)
}

impl SampleKernels for f32 {
    /// AVX2 at the AVX2 and AVX-512 levels: the portable version's per-lane `if`s compiled to
    /// two lanes at a time with a branch each (half of the grid gradient's time with one
    /// channel). The same operations in the same order (multiply then add, floor, subtract,
    /// clamp; an exact conversion of the clamped floor), so the same values.
    #[inline(always)]
    fn framed8<I: Isa>(g: &[f32], ax: AxisMap<f32>, ay: AxisMap<f32>) -> Framed8<f32, I> {
        #[cfg(target_arch = "x86_64")]
        if I::LEVEL >= Level::Avx2 {
            // SAFETY: the level has AVX2.
            return unsafe { avx2::framed8(g, ax, ay) };
        }
        framed8_portable(g, ax, ay)
    }

    /// As the portable version, in AVX2 lanes, the weights of non-finite points masked to zero.
    #[inline(always)]
    fn weights8<I: Isa>(f: &Framed8<f32, I>) -> [V8<f32, I>; 4] {
        #[cfg(target_arch = "x86_64")]
        if I::LEVEL >= Level::Avx2 {
            // SAFETY: the level has AVX2.
            return unsafe { avx2::weights8(f) };
        }
        weights8_portable(f)
    }

    /// Eight 128-bit loads (each point's four corners lie side by side in a row-paired plane)
    /// and a 4×4 transpose in each half at the AVX2 levels: no gather instruction, whose cost on
    /// Zen 4 is per element (the 64-bit pair gathers this replaces took ~2.4 cycles per pair;
    /// with ten channels the sampler was bound by them).
    #[inline(always)]
    fn corners<I: Isa>(rows: &[f32], idx: &[u32; 8]) -> [V8<f32, I>; 4] {
        #[cfg(target_arch = "x86_64")]
        if I::LEVEL >= Level::Avx2 {
            // SAFETY: the level has AVX2.
            return unsafe { avx2::corners::<I>(rows, idx) };
        }
        corners_portable::<f32, I>(rows, idx)
    }

    /// AVX2's gather at the AVX2 levels.
    #[inline(always)]
    fn gather<I: Isa>(plane: &[f32], idx: &[u32; 8]) -> V8<f32, I> {
        #[cfg(target_arch = "x86_64")]
        if I::LEVEL >= Level::Avx2 {
            // SAFETY: the level has AVX2.
            return unsafe { avx2::gather::<I>(plane, idx) };
        }
        V8::<f32, I>::from_array(idx.map(|i| plane[i as usize]))
    }

    /// AVX2 at the AVX2 levels: the eight points in the lanes of one register instead of one
    /// at a time (with one channel, the weights were most of the bicubic op); the same values.
    #[inline(always)]
    fn cubic_group8<I: Isa>(
        g: &[f32],
        ax: AxisMap<f32>,
        ay: AxisMap<f32>,
        border: usize,
        grads: bool,
    ) -> CubicGroup<f32> {
        #[cfg(target_arch = "x86_64")]
        if I::LEVEL >= Level::Avx2 {
            // SAFETY: the level has AVX2.
            return unsafe { avx2::cubic_group8(g, ax, ay, border, grads) };
        }
        cubic_group8_portable(g, ax, ay, border, grads)
    }

    /// AVX2's form at the AVX2 levels: each window's rows 0–1 and 2–3 in two registers.
    #[inline(always)]
    fn cubic8<I: Isa, const M: usize>(
        plane: &[f32],
        fw: usize,
        base: &[u32; 8],
        weights: [&[[f32; 16]; 8]; M],
    ) -> [V8<f32, I>; M] {
        #[cfg(target_arch = "x86_64")]
        if I::LEVEL >= Level::Avx2 {
            // SAFETY: the level has AVX2 and FMA.
            return unsafe { avx2::cubic8::<I, M>(plane, fw, base, weights) };
        }
        cubic8_portable::<f32, I, M>(plane, fw, base, weights)
    }
}

impl SampleKernels for f64 {}

/// The AVX2 forms of the f32 kernels. Each returns the level's eight-lane vector, which at the
/// levels that call them (AVX2, AVX-512) is an AVX register: the conversions are no-ops.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{AxisMap, CubicGroup, Framed8};
    use crate::grid_sample::modes::CUBIC_A;
    use crate::isa::Isa;
    use crate::simd::{Vector, V8};
    use std::arch::x86_64::*;

    /// `v` as the level's eight-lane vector.
    #[inline(always)]
    fn lanes<I: Isa>(v: __m256) -> V8<f32, I> {
        // SAFETY: `__m256` is 8 f32s.
        V8::<f32, I>::from_array(unsafe { std::mem::transmute::<__m256, [f32; 8]>(v) })
    }

    /// `v` as an AVX register.
    #[inline(always)]
    fn reg<I: Isa>(v: V8<f32, I>) -> __m256 {
        // SAFETY: as `lanes`.
        unsafe { std::mem::transmute::<[f32; 8], __m256>(V8::<f32, I>::lanes(v)) }
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    pub(super) unsafe fn framed8<I: Isa>(
        g: &[f32],
        ax: AxisMap<f32>,
        ay: AxisMap<f32>,
    ) -> Framed8<f32, I> {
        assert!(g.len() >= 16);
        // The loads read g[..16] (asserted).
        let (a, b) = (
            _mm256_loadu_ps(g.as_ptr()),
            _mm256_loadu_ps(g.as_ptr().add(8)),
        );
        // Even and odd elements (x and y) in point order, as `pool2_bwd_ab` splits windows.
        let order = |v: __m256| {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
        };
        let gx = order(_mm256_shuffle_ps::<0b10_00_10_00>(a, b));
        let gy = order(_mm256_shuffle_ps::<0b11_01_11_01>(a, b));
        let map = |g: __m256, m: AxisMap<f32>| {
            _mm256_add_ps(
                _mm256_mul_ps(g, _mm256_set1_ps(m.scale)),
                _mm256_set1_ps(m.offset),
            )
        };
        let (x, y) = (map(gx, ax), map(gy, ay));
        let (x0, y0) = (_mm256_floor_ps(x), _mm256_floor_ps(y));
        // Finite: v − v is 0 (NaN for ±∞ and NaN).
        let finite =
            |v: __m256| _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_sub_ps(v, v), _mm256_setzero_ps());
        let ok = _mm256_and_ps(finite(x), finite(y));
        let m2 = _mm256_set1_ps(-2.0);
        let clamp = |v: __m256, max: usize| {
            let c = _mm256_min_ps(_mm256_max_ps(v, m2), _mm256_set1_ps(max as f32));
            _mm256_blendv_ps(m2, c, ok)
        };
        let (cx, cy) = (
            _mm256_cvttps_epi32(clamp(x0, ax.size)),
            _mm256_cvttps_epi32(clamp(y0, ay.size)),
        );
        let two = _mm256_set1_epi32(2);
        let base = _mm256_add_epi32(
            _mm256_mullo_epi32(
                _mm256_add_epi32(cy, two),
                _mm256_set1_epi32(ax.size as i32 + 4),
            ),
            _mm256_add_epi32(cx, two),
        );
        let bits = _mm256_movemask_ps(ok);
        Framed8 {
            fx: lanes::<I>(_mm256_sub_ps(x, x0)),
            fy: lanes::<I>(_mm256_sub_ps(y, y0)),
            base: std::mem::transmute::<__m256i, [u32; 8]>(base),
            ok: std::array::from_fn(|l| bits >> l & 1 == 1),
        }
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    pub(super) unsafe fn weights8<I: Isa>(f: &Framed8<f32, I>) -> [V8<f32, I>; 4] {
        // `bool` is one byte of 0 or 1.
        let bytes = u64::from_le_bytes(std::mem::transmute::<[bool; 8], [u8; 8]>(f.ok));
        let ok = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes as i64));
        let keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(ok, _mm256_setzero_si256()));
        let one = _mm256_set1_ps(1.0);
        let (fx, fy) = (reg::<I>(f.fx), reg::<I>(f.fy));
        let (ex, sy) = (_mm256_sub_ps(one, fx), _mm256_sub_ps(one, fy));
        [
            _mm256_mul_ps(sy, ex),
            _mm256_mul_ps(sy, fx),
            _mm256_mul_ps(fy, ex),
            _mm256_mul_ps(fy, fx),
        ]
        .map(|w| lanes::<I>(_mm256_and_ps(w, keep)))
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    pub(super) unsafe fn corners<I: Isa>(rows: &[f32], idx: &[u32; 8]) -> [V8<f32, I>; 4] {
        let max = idx.iter().fold(0, |m, &i| m.max(i)) as usize;
        assert!(2 * max + 4 <= rows.len());
        // Every load reads rows[2i..2i+4] with i ≤ max, inside `rows` (checked above).
        let q = |l: usize| _mm_loadu_ps(rows.as_ptr().add(2 * idx[l] as usize));
        // Point l in the low half, l + 4 in the high half: [nw sw ne se | nw sw ne se].
        let r = |l: usize| _mm256_set_m128(q(l + 4), q(l));
        let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
        let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
        let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
        // t0 = [nw0 nw1 sw0 sw1 | nw4 nw5 sw4 sw5], t2 likewise for points 2, 3 (6, 7).
        let lo = |a, b| _mm256_shuffle_ps::<0b01_00_01_00>(a, b);
        let hi = |a, b| _mm256_shuffle_ps::<0b11_10_11_10>(a, b);
        [lo(t0, t2), lo(t1, t3), hi(t0, t2), hi(t1, t3)].map(lanes::<I>)
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    pub(super) unsafe fn gather<I: Isa>(plane: &[f32], idx: &[u32; 8]) -> V8<f32, I> {
        let max = idx.iter().fold(0, |m, &i| m.max(i));
        assert!((max as usize) < plane.len() && plane.len() <= i32::MAX as usize);
        // Every index is inside `plane` (checked above) and fits an i32.
        let vi = _mm256_loadu_si256(idx.as_ptr() as *const __m256i);
        lanes::<I>(_mm256_i32gather_ps::<4>(plane.as_ptr(), vi))
    }

    /// Eight vectors' lane sums: lane `k` of the result is the sum of `a[k]`'s lanes, as
    /// `cubic8_portable` adds them (pairs, then pairs of pairs, then the two halves).
    #[inline(always)]
    unsafe fn lane_sums(a: [__m256; 8]) -> __m256 {
        let h01 = _mm256_hadd_ps(a[0], a[1]);
        let h23 = _mm256_hadd_ps(a[2], a[3]);
        let h45 = _mm256_hadd_ps(a[4], a[5]);
        let h67 = _mm256_hadd_ps(a[6], a[7]);
        // Lane k (< 4) of q0's low half: a[k]'s lanes 0–3; of its high half: a[k]'s lanes 4–7.
        let q0 = _mm256_hadd_ps(h01, h23);
        let q1 = _mm256_hadd_ps(h45, h67);
        let low = _mm256_permute2f128_ps::<0x20>(q0, q1);
        let high = _mm256_permute2f128_ps::<0x31>(q0, q1);
        _mm256_add_ps(low, high)
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA (the AVX2 level).
    #[inline(always)]
    pub(super) unsafe fn cubic8<I: Isa, const M: usize>(
        plane: &[f32],
        fw: usize,
        base: &[u32; 8],
        weights: [&[[f32; 16]; 8]; M],
    ) -> [V8<f32, I>; M] {
        let max = base.iter().fold(0, |m, &i| m.max(i)) as usize;
        assert!(max + 3 * fw + 4 <= plane.len());
        let p = plane.as_ptr();
        // Each window's rows 0 and 1, and 2 and 3, in one register each (row 0 in the low half),
        // read once for every weight set; inside `plane` (checked above). Loops, not `from_fn` or
        // `map` closures, which LLVM may leave out of line, outside the level's target features
        // (where each intrinsic becomes a call: five times slower).
        let mut rows = [[_mm256_setzero_ps(); 2]; 8];
        for k in 0..8 {
            let b = p.add(base[k] as usize);
            rows[k] = [
                _mm256_loadu2_m128(b.add(fw), b),
                _mm256_loadu2_m128(b.add(3 * fw), b.add(2 * fw)),
            ];
        }
        let mut out = [V8::<f32, I>::splat(0.0); M];
        for m in 0..M {
            let mut acc = [_mm256_setzero_ps(); 8];
            for k in 0..8 {
                let wk = weights[m][k].as_ptr();
                let lo = _mm256_mul_ps(rows[k][0], _mm256_loadu_ps(wk));
                acc[k] = _mm256_fmadd_ps(rows[k][1], _mm256_loadu_ps(wk.add(8)), lo);
            }
            out[m] = lanes::<I>(lane_sums(acc));
        }
        out
    }

    /// Bicubic's eight-point weights ([`super::cubic_group8_portable`]'s, bit for bit): the
    /// coordinates, floors, clamps and cubic polynomials of the eight points in the lanes of one
    /// register (multiplies and adds in the portable order, no fused multiply-add), then each
    /// point's 16 products from a 4 × 8 transpose of its axis weights.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    // Compiled with the features, so that its closures are too (inlined or not).
    #[inline]
    #[target_feature(enable = "avx,avx2,fma")]
    pub(super) unsafe fn cubic_group8(
        g: &[f32],
        ax: AxisMap<f32>,
        ay: AxisMap<f32>,
        border: usize,
        grads: bool,
    ) -> CubicGroup<f32> {
        let n = g.len() / 2;
        assert!(n <= 8);
        let mut pts = [0.0f32; 16];
        pts[..2 * n].copy_from_slice(&g[..2 * n]);
        let (a, b) = (
            _mm256_loadu_ps(pts.as_ptr()),
            _mm256_loadu_ps(pts.as_ptr().add(8)),
        );
        // x and y in point order, as `framed8`.
        let order = |v: __m256| {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
        };
        let gx = order(_mm256_shuffle_ps::<0b10_00_10_00>(a, b));
        let gy = order(_mm256_shuffle_ps::<0b11_01_11_01>(a, b));
        let map = |g: __m256, m: AxisMap<f32>| {
            _mm256_add_ps(
                _mm256_mul_ps(g, _mm256_set1_ps(m.scale)),
                _mm256_set1_ps(m.offset),
            )
        };
        let (x, y) = (map(gx, ax), map(gy, ay));
        let (x0, y0) = (_mm256_floor_ps(x), _mm256_floor_ps(y));
        let finite =
            |v: __m256| _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_sub_ps(v, v), _mm256_setzero_ps());
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let present = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane));
        let ok = _mm256_and_ps(_mm256_and_ps(finite(x), finite(y)), present);
        // The portable clamp of the floor to [1 − border, size + border − 3]; a masked point at
        // the low end of both, which is frame index 0.
        let lo = _mm256_set1_ps(1.0 - border as f32);
        let clamp = |v: __m256, size: usize| {
            let hi = _mm256_set1_ps((size + border) as f32 - 3.0);
            _mm256_blendv_ps(lo, _mm256_min_ps(_mm256_max_ps(v, lo), hi), ok)
        };
        let (cx, cy) = (
            _mm256_cvttps_epi32(clamp(x0, ax.size)),
            _mm256_cvttps_epi32(clamp(y0, ay.size)),
        );
        let shift = _mm256_set1_epi32(border as i32 - 1);
        let base = _mm256_add_epi32(
            _mm256_mullo_epi32(
                _mm256_add_epi32(cy, shift),
                _mm256_set1_epi32((ax.size + 2 * border) as i32),
            ),
            _mm256_add_epi32(cx, shift),
        );
        let (tx, ty) = (_mm256_sub_ps(x, x0), _mm256_sub_ps(y, y0));
        let weights = |t: __m256| cubic_lanes(t, ok, false);
        let (wx, wy) = (weights(tx), weights(ty));
        let mut q = CubicGroup::<f32>::zero();
        q.base = std::mem::transmute::<__m256i, [u32; 8]>(base);
        products(&wy, &wx, &mut q.w);
        if grads {
            let (dwx, dwy) = (cubic_lanes(tx, ok, true), cubic_lanes(ty, ok, true));
            products(&wy, &dwx, &mut q.dx);
            products(&dwy, &wx, &mut q.dy);
        }
        q
    }

    /// The four cubic weights of taps −1, 0, 1, 2 (or, with `derivative`, their derivatives) at
    /// fractions `t`, lane by lane, as `cubic_weights` and `cubic_weight_derivatives` compute
    /// them; zero where `ok` is clear.
    // Compiled with the features, so that its closures are too (inlined or not).
    #[inline]
    #[target_feature(enable = "avx,avx2,fma")]
    unsafe fn cubic_lanes(t: __m256, ok: __m256, derivative: bool) -> [__m256; 4] {
        let a = CUBIC_A as f32;
        let one = _mm256_set1_ps(1.0);
        let s = _mm256_sub_ps(one, t);
        let (t1, s1) = (_mm256_add_ps(t, one), _mm256_add_ps(s, one));
        let k = |v: f32| _mm256_set1_ps(v);
        let w = if derivative {
            // d1(x) = (3(A+2)·x − 2(A+3))·x; d2(x) = (3A·x − 10A)·x + 8A; taps 2 and 3 negated.
            let d1 = |x: __m256| {
                _mm256_mul_ps(
                    _mm256_sub_ps(_mm256_mul_ps(k(3.0 * (a + 2.0)), x), k(2.0 * (a + 3.0))),
                    x,
                )
            };
            let d2 = |x: __m256| {
                _mm256_add_ps(
                    _mm256_mul_ps(
                        _mm256_sub_ps(_mm256_mul_ps(k(3.0 * a), x), k(2.0 * 5.0 * a)),
                        x,
                    ),
                    k(8.0 * a),
                )
            };
            let neg = |v: __m256| _mm256_xor_ps(v, k(-0.0));
            [d2(t1), d1(t), neg(d1(s)), neg(d2(s1))]
        } else {
            // c1(x) = ((A+2)·x − (A+3))·x·x + 1; c2(x) = ((A·x − 5A)·x + 8A)·x − 4A.
            let c1 = |x: __m256| {
                _mm256_add_ps(
                    _mm256_mul_ps(
                        _mm256_mul_ps(_mm256_sub_ps(_mm256_mul_ps(k(a + 2.0), x), k(a + 3.0)), x),
                        x,
                    ),
                    one,
                )
            };
            let c2 = |x: __m256| {
                _mm256_sub_ps(
                    _mm256_mul_ps(
                        _mm256_add_ps(
                            _mm256_mul_ps(_mm256_sub_ps(_mm256_mul_ps(k(a), x), k(5.0 * a)), x),
                            k(8.0 * a),
                        ),
                        x,
                    ),
                    k(4.0 * a),
                )
            };
            [c2(t1), c1(t), c1(s), c2(s1)]
        };
        w.map(|v| _mm256_and_ps(v, ok))
    }

    /// Point `k`'s 16 products `row[i]·col[j]` (row by row) into `out[k]`, for the eight points
    /// in the lanes of `row` and `col`: a 4 × 8 transpose of each, then per point the column
    /// weights in both halves times two row weights, one per half.
    // Compiled with the features, so that its closures are too (inlined or not).
    #[inline]
    #[target_feature(enable = "avx,avx2,fma")]
    unsafe fn products(row: &[__m256; 4], col: &[__m256; 4], out: &mut [[f32; 16]; 8]) {
        // Point l in the low half, l + 4 in the high half (as `corners`).
        let transpose = |v: &[__m256; 4]| {
            let (t0, t1) = (
                _mm256_unpacklo_ps(v[0], v[1]),
                _mm256_unpackhi_ps(v[0], v[1]),
            );
            let (t2, t3) = (
                _mm256_unpacklo_ps(v[2], v[3]),
                _mm256_unpackhi_ps(v[2], v[3]),
            );
            let lo = |a, b| _mm256_shuffle_ps::<0b01_00_01_00>(a, b);
            let hi = |a, b| _mm256_shuffle_ps::<0b11_10_11_10>(a, b);
            [lo(t0, t2), hi(t0, t2), lo(t1, t3), hi(t1, t3)]
        };
        let (r, c) = (transpose(row), transpose(col));
        for k in 0..8 {
            let (rk, ck) = (r[k % 4], c[k % 4]);
            let h = if k < 4 { 0 } else { 4 };
            let cols = if k < 4 {
                _mm256_permute2f128_ps::<0x00>(ck, ck)
            } else {
                _mm256_permute2f128_ps::<0x11>(ck, ck)
            };
            let pick = |i: i32| {
                _mm256_permutevar8x32_ps(
                    rk,
                    _mm256_setr_epi32(
                        h + i,
                        h + i,
                        h + i,
                        h + i,
                        h + i + 1,
                        h + i + 1,
                        h + i + 1,
                        h + i + 1,
                    ),
                )
            };
            let o = out[k].as_mut_ptr();
            _mm256_storeu_ps(o, _mm256_mul_ps(pick(0), cols));
            _mm256_storeu_ps(o.add(8), _mm256_mul_ps(pick(2), cols));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 bicubic weights are the portable ones bit for bit: inside, outside, far outside
    /// (clamped), non-finite points and groups of fewer than eight, both corner rules, with and
    /// without the derivatives.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_cubic_weights_are_the_portable_ones_bit_for_bit() {
        if crate::isa::detected() < Level::Avx2 {
            return;
        }
        let special = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -1e30,
            1e30,
            -1.0,
            1.0,
            0.0,
            -0.0,
            1.3,
            -1.25,
            0.999_999,
        ];
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 3.4 - 1.7
        };
        let mut checked = 0;
        for round in 0..400 {
            let n = 1 + round % 8;
            let g: Vec<f32> = (0..2 * n)
                .map(|i| {
                    if (round + i) % 5 == 0 {
                        special[(round + i) % special.len()]
                    } else {
                        next()
                    }
                })
                .collect();
            for (w, h) in [(28usize, 28usize), (7, 5)] {
                for align in [false, true] {
                    let axis = |size: usize| AxisMap {
                        scale: if align {
                            (size as f32 - 1.0) / 2.0
                        } else {
                            size as f32 / 2.0
                        },
                        offset: (size as f32 - 1.0) / 2.0,
                        size,
                    };
                    for grads in [false, true] {
                        let want = cubic_group8_portable(&g, axis(w), axis(h), 4, grads);
                        // SAFETY: the CPU has AVX2 (checked above).
                        let got = unsafe { avx2::cubic_group8(&g, axis(w), axis(h), 4, grads) };
                        let bits = |q: &CubicGroup<f32>| {
                            [q.w, q.dx, q.dy].map(|a| a.map(|r| r.map(f32::to_bits)))
                        };
                        assert_eq!(got.base, want.base, "{g:?}");
                        assert_eq!(bits(&got), bits(&want), "{g:?} align {align} grads {grads}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 400 * 8);
    }
}
