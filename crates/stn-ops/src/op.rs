//! The one shape of every custom op, and its plumbing into dfdx's tape.

use dfdx::prelude::*;
use dfdx::tensor::Gradients;

/// Errors of the ops: shapes that do not fit (never a panic), or the device.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Inputs whose shapes do not fit the op.
    #[error("{op}: {what}")]
    Shape {
        /// The op.
        op: &'static str,
        /// What does not fit.
        what: String,
    },
    /// CUDA asked of a build without it.
    #[error(
        "{op}: not built with CUDA support (build with the `cuda` feature on a machine with CUDA)"
    )]
    NoCuda {
        /// The op.
        op: &'static str,
    },
    /// The device failed, or the op has no kernel on it.
    #[error("{op}: device error: {what}")]
    Device {
        /// The op.
        op: &'static str,
        /// The device's error.
        what: String,
    },
}

/// dfdx's CPU errors (out of memory, a wrong element count) as the ops' device error, so that a
/// layer built from the ops and dfdx's modules propagates both with `?`.
impl From<dfdx::tensor::CpuError> for OpError {
    fn from(e: dfdx::tensor::CpuError) -> Self {
        OpError::Device {
            op: "dfdx",
            what: e.to_string(),
        }
    }
}

impl OpError {
    /// A shape error of `op`.
    pub fn shape(op: &'static str, what: impl Into<String>) -> Self {
        OpError::Shape {
            op,
            what: what.into(),
        }
    }
    /// The error of a CPU-only op's CUDA entry points; `instead` says what to run on CUDA.
    pub fn cpu_only(op: &'static str, instead: &str) -> Self {
        OpError::Device {
            op,
            what: format!("CPU only: on CUDA {instead}"),
        }
    }
}

/// Eight grid points mapped into a plane framed by two zero pixels on every side (zero padding's
/// sampler, see `grid_sample`): the source coordinates' fractional parts, the frame index of each
/// point's top-left corner, and whether both of its coordinates are finite.
#[derive(Clone, Copy)]
pub struct Framed8<E: Real> {
    /// Fractional parts of the x coordinates.
    pub fx: E::Lanes,
    /// Fractional parts of the y coordinates.
    pub fy: E::Lanes,
    /// Frame index of each point's top-left corner.
    pub base: [u32; 8],
    /// Whether both coordinates are finite.
    pub ok: [bool; 8],
}

/// An axis of the sampler as [`Real::framed8`] reads it: a normalised coordinate `g` maps to
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

/// Element types of the kernels: f32 (training and inference) and f64 (gradient checks).
///
/// `Lanes` is 8 elements the kernels treat as one vector: AVX2 registers for f32 (through `wide`,
/// because LLVM does not reliably vectorise the register blocks of `linalg`), a plain array for f64,
/// which only the gradient checks use.
pub trait Real: dfdx::dtypes::Dtype + num_traits::Float + HostPool + Send + Sync + 'static {
    /// Eight values as one vector.
    type Lanes: Copy + Send + Sync;
    /// The nearest value of this type (named so as not to clash with `num_traits`).
    fn of(v: f64) -> Self;
    /// `self as i32`, saturating, NaN to 0, without `num_traits`' checks.
    fn to_i32_sat(self) -> i32;
    /// `v` in every lane.
    fn splat(v: Self) -> Self::Lanes;
    /// `s[..8]`.
    fn load(s: &[Self]) -> Self::Lanes;
    /// `a·b + c`, lane-wise.
    fn fma(a: Self::Lanes, b: Self::Lanes, c: Self::Lanes) -> Self::Lanes;
    /// The lanes as an array.
    fn lanes(v: Self::Lanes) -> [Self; 8];
    /// `dst[..8] += v`.
    fn add_into(dst: &mut [Self], v: Self::Lanes);
    /// `a + b`, lane-wise.
    fn vadd(a: Self::Lanes, b: Self::Lanes) -> Self::Lanes;
    /// `a · b`, lane-wise.
    fn vmul(a: Self::Lanes, b: Self::Lanes) -> Self::Lanes;
    /// `a − b`, lane-wise.
    fn vsub(a: Self::Lanes, b: Self::Lanes) -> Self::Lanes;
    /// One output row of `relu(max_pool2d(conv + b))` with kernel and stride 2: `out[j]` from
    /// `r0[2j..2j+2]` and `r1[2j..2j+2]` (two rows of the conv's products without its bias).
    /// `max_pool2d`'s value: the window's maximum, or NaN if it holds one (which its rule, "the
    /// first maximum in row-major order wins, a NaN wins", gives), then ReLU as dfdx's (`max(x, 0)`,
    /// so NaN becomes 0). The bias is added after the maximum: `max(a + b, c + b) = max(a, c) + b`
    /// exactly, as rounding is monotonic.
    #[inline]
    fn pool2_relu_row(r0: &[Self], r1: &[Self], b: Self, out: &mut [Self]) {
        for ((o, a), c) in out
            .iter_mut()
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
        {
            *o = (pool2_value([a[0], a[1], c[0], c[1]]) + b).max(Self::zero());
        }
    }
    /// One output row of `max_pool2d` with kernel and stride 2: `out[j]` is the maximum of
    /// `r0[2j..2j+2]` and `r1[2j..2j+2]`, or NaN if one is NaN — the value `max_pool2d`'s rule
    /// gives.
    #[inline]
    fn pool2_row(r0: &[Self], r1: &[Self], out: &mut [Self]) {
        for ((o, a), c) in out
            .iter_mut()
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
        {
            *o = pool2_value([a[0], a[1], c[0], c[1]]);
        }
    }
    /// The backward of [`Real::pool2_row`]: each `go[j]` is added to the gradient of its window's
    /// first maximum in row-major order, or of its first NaN — `max_pool2d`'s rule. `g` holds the
    /// gradient rows of `r0` (from 0) and `r1` (from `w`). With `relu` the pool's output went
    /// through a ReLU: only windows whose value is > 0 pass their gradient (dfdx's ReLU rule).
    #[inline]
    fn pool2_row_bwd(r0: &[Self], r1: &[Self], go: &[Self], g: &mut [Self], w: usize, relu: bool) {
        pool2_bwd_scalar(r0, r1, go, g, w, 0, relu);
    }
    /// `max_pool2d` with kernel and stride 2 over one plane `w` wide into `out` (rows `wo` wide),
    /// then ReLU with `relu`: [`Real::pool2_row`] or [`Real::pool2_relu_row`] row by row.
    #[inline]
    fn pool2_plane(plane: &[Self], w: usize, out: &mut [Self], wo: usize, relu: bool) {
        for (oy, o) in out.chunks_exact_mut(wo).enumerate() {
            let r0 = &plane[2 * oy * w..][..2 * wo];
            let r1 = &plane[(2 * oy + 1) * w..][..2 * wo];
            if relu {
                Self::pool2_relu_row(r0, r1, Self::zero(), o);
            } else {
                Self::pool2_row(r0, r1, o);
            }
        }
    }
    /// The backward of [`Real::pool2_plane`]: [`Real::pool2_row_bwd`] row by row, into the
    /// plane's gradient `g` (added to).
    #[inline]
    fn pool2_plane_bwd(
        plane: &[Self],
        w: usize,
        go: &[Self],
        g: &mut [Self],
        wo: usize,
        relu: bool,
    ) {
        for (oy, go) in go.chunks_exact(wo).enumerate() {
            Self::pool2_row_bwd(
                &plane[2 * oy * w..][..2 * wo],
                &plane[(2 * oy + 1) * w..][..2 * wo],
                go,
                &mut g[2 * oy * w..][..w + 2 * wo],
                w,
                relu,
            );
        }
    }
    /// `[plane[idx[0]], …, plane[idx[7]]]`; every index must be inside `plane` (it panics if not).
    #[inline(always)]
    fn gather(plane: &[Self], idx: &[u32; 8]) -> Self::Lanes {
        Self::load(&idx.map(|i| plane[i as usize]))
    }
    /// The four corners `[nw, ne, sw, se]` of 8 points in a row-paired plane (`rows`: element
    /// `2i` and `2i + 1` are pixel `i` and the pixel below it, so the 4 values from `2·idx[l]`
    /// are `[nw, sw, ne, se]` of the point whose top-left corner is pixel `idx[l]`).
    #[inline(always)]
    fn corners(rows: &[Self], idx: &[u32; 8]) -> [Self::Lanes; 4] {
        let at = |k: usize| Self::load(&idx.map(|i| rows[2 * i as usize + k]));
        [at(0), at(2), at(1), at(3)]
    }

    /// Eight points `g[..16]` (x, y pairs) in a framed plane `W + 4` wide: `x = gx·scale +
    /// offset` (a multiply, then an add) and likewise y, the fractional parts `x − ⌊x⌋`, the
    /// floor clamped to [−2, W] × [−2, H] so that both corners of a clamped axis lie in the zero
    /// border (a non-finite point to (−2, −2)), and the frame index `(⌊y⌋ + 2)·(W + 4) + ⌊x⌋ + 2`.
    #[inline(always)]
    fn framed8(g: &[Self], ax: AxisMap<Self>, ay: AxisMap<Self>) -> Framed8<Self> {
        let fw = (ax.size + 4) as u32;
        let (wmax, hmax) = (Self::of(ax.size as f64), Self::of(ay.size as f64));
        let two = Self::of(2.0);
        let (mut fx, mut fy, mut base, mut ok) =
            ([Self::zero(); 8], [Self::zero(); 8], [0u32; 8], [false; 8]);
        for l in 0..8 {
            let x = g[2 * l] * ax.scale + ax.offset;
            let y = g[2 * l + 1] * ay.scale + ay.offset;
            let (x0, y0) = (x.floor(), y.floor());
            (fx[l], fy[l]) = (x - x0, y - y0);
            ok[l] = x.is_finite() && y.is_finite();
            let cx = if ok[l] { x0.max(-two).min(wmax) } else { -two };
            let cy = if ok[l] { y0.max(-two).min(hmax) } else { -two };
            base[l] = (Self::to_i32_sat(cy) + 2) as u32 * fw + (Self::to_i32_sat(cx) + 2) as u32;
        }
        Framed8 {
            fx: Self::load(&fx),
            fy: Self::load(&fy),
            base,
            ok,
        }
    }
    /// The bilinear weights `[nw, ne, sw, se]` of framed points (`(1−fy)(1−fx)`, `(1−fy)fx`,
    /// `fy(1−fx)`, `fy·fx`), zero for a point that is not finite.
    #[inline(always)]
    fn weights8(f: &Framed8<Self>) -> [Self::Lanes; 4] {
        let (fx, fy) = (Self::lanes(f.fx), Self::lanes(f.fy));
        let mut w = [[Self::zero(); 8]; 4];
        for l in 0..8 {
            if f.ok[l] {
                let (ex, sy) = (Self::one() - fx[l], Self::one() - fy[l]);
                w[0][l] = sy * ex;
                w[1][l] = sy * fx[l];
                w[2][l] = fy[l] * ex;
                w[3][l] = fy[l] * fx[l];
            }
        }
        w.map(|w| Self::load(&w))
    }

    /// `dst[..8] = v`.
    #[inline(always)]
    fn store(dst: &mut [Self], v: Self::Lanes) {
        dst[..8].copy_from_slice(&Self::lanes(v));
    }
    /// `[a0 b0 a1 b1 a2 b2 a3 b3]` and `[a4 b4 … a7 b7]`: two lane vectors as (a, b) pairs.
    #[inline(always)]
    fn interleave(a: Self::Lanes, b: Self::Lanes) -> [Self::Lanes; 2] {
        let (a, b) = (Self::lanes(a), Self::lanes(b));
        let pairs: [Self; 16] =
            std::array::from_fn(|i| if i % 2 == 0 { a[i / 2] } else { b[i / 2] });
        [Self::load(&pairs[..8]), Self::load(&pairs[8..])]
    }

    /// Σ x, with 8 independent partial sums so the loop vectorises (a plain fold is a serial
    /// chain of dependent adds, 4 cycles each).
    #[inline]
    fn sum(x: &[Self]) -> Self {
        let mut acc = Self::splat(Self::zero());
        let chunks = x.chunks_exact(8);
        let tail = chunks.remainder().iter().fold(Self::zero(), |s, &v| s + v);
        for c in chunks {
            acc = Self::vadd(acc, Self::load(c));
        }
        Self::lanes(acc).iter().fold(tail, |s, &v| s + v)
    }

    /// `s[..n]` in the first `n` lanes, zero in the others (`n ≤ 8`, `n ≤ s.len()`).
    #[inline(always)]
    fn load_head(s: &[Self], n: usize) -> Self::Lanes {
        let mut a = [Self::zero(); 8];
        a[..n].copy_from_slice(&s[..n]);
        Self::load(&a)
    }

    /// `dst[i] += src[i]`, 8 lanes at a time.
    #[inline]
    fn add_rows(dst: &mut [Self], src: &[Self]) {
        assert_eq!(dst.len(), src.len());
        let mut d = dst.chunks_exact_mut(8);
        let mut s = src.chunks_exact(8);
        for (d, s) in (&mut d).zip(&mut s) {
            Self::add_into(d, Self::load(s));
        }
        for (d, &s) in d.into_remainder().iter_mut().zip(s.remainder()) {
            *d += s;
        }
    }

    /// `dst.copy_from_slice(src)` for short rows, without a `memcpy` call per row.
    #[inline]
    fn copy(dst: &mut [Self], src: &[Self]) {
        assert_eq!(dst.len(), src.len());
        let mut d = dst.chunks_exact_mut(8);
        let mut s = src.chunks_exact(8);
        for (d, s) in (&mut d).zip(&mut s) {
            Self::store(d, Self::load(s));
        }
        for (d, &s) in d.into_remainder().iter_mut().zip(s.remainder()) {
            *d = s;
        }
    }
}

impl Real for f32 {
    type Lanes = wide::f32x8;
    /// Clamped in f32 first, then an unchecked conversion: `as` alone costs a scalar fix-up per
    /// lane (a fifth of the sampler's time), this vectorises. Huge values saturate to the largest
    /// f32 inside i32's range instead of `i32::MAX` (callers only ask "inside the image?").
    #[inline(always)]
    fn to_i32_sat(self) -> i32 {
        let v = if self.is_nan() { 0.0 } else { self };
        let v = v.clamp(-2147483648.0, 2147483520.0);
        // SAFETY: `v` is finite and inside i32's range.
        unsafe { v.to_int_unchecked::<i32>() }
    }
    #[inline(always)]
    fn of(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn splat(v: f32) -> wide::f32x8 {
        wide::f32x8::splat(v)
    }
    #[inline(always)]
    fn load(s: &[f32]) -> wide::f32x8 {
        let a: [f32; 8] = s[..8].try_into().expect("8 lanes");
        wide::f32x8::from(a)
    }
    #[inline(always)]
    fn fma(a: wide::f32x8, b: wide::f32x8, c: wide::f32x8) -> wide::f32x8 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn lanes(v: wide::f32x8) -> [f32; 8] {
        v.to_array()
    }
    #[inline(always)]
    fn add_into(dst: &mut [f32], v: wide::f32x8) {
        let d: &mut [f32; 8] = (&mut dst[..8]).try_into().expect("8 lanes");
        *d = (wide::f32x8::from(*d) + v).to_array();
    }
    /// One 8-lane load and a mask where 8 elements are readable (no copy through the stack,
    /// whose 4-byte stores a 32-byte load cannot forward from).
    #[inline(always)]
    fn load_head(s: &[f32], n: usize) -> wide::f32x8 {
        assert!(n <= 8 && n <= s.len());
        if s.len() < 8 {
            let mut a = [0.0; 8];
            a[..n].copy_from_slice(&s[..n]);
            return wide::f32x8::from(a);
        }
        const ONES: [u32; 16] = [!0, !0, !0, !0, !0, !0, !0, !0, 0, 0, 0, 0, 0, 0, 0, 0];
        let m: [u32; 8] = ONES[8 - n..16 - n].try_into().expect("8 lanes");
        Self::load(s) & wide::f32x8::from(m.map(f32::from_bits))
    }
    #[inline(always)]
    fn vadd(a: wide::f32x8, b: wide::f32x8) -> wide::f32x8 {
        a + b
    }
    #[inline(always)]
    fn vmul(a: wide::f32x8, b: wide::f32x8) -> wide::f32x8 {
        a * b
    }
    #[inline(always)]
    fn vsub(a: wide::f32x8, b: wide::f32x8) -> wide::f32x8 {
        a - b
    }
    /// Eight outputs at a time with AVX2 where the build has it ([`pool2_windows8`]); a window
    /// with a NaN gives 0 (ReLU of NaN).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[inline]
    fn pool2_relu_row(r0: &[f32], r1: &[f32], b: f32, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let full = out.len() / 8 * 8;
        assert!(r0.len() >= 2 * out.len() && r1.len() >= 2 * out.len());
        for j in (0..full).step_by(8) {
            // SAFETY: AVX2 is enabled for this build; the windows read r0/r1[2j..2j+16] and the
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
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[inline]
    fn pool2_row(r0: &[f32], r1: &[f32], out: &mut [f32]) {
        use std::arch::x86_64::*;
        let full = out.len() / 8 * 8;
        assert!(r0.len() >= 2 * out.len() && r1.len() >= 2 * out.len());
        for j in (0..full).step_by(8) {
            // SAFETY: as in `pool2_relu_row`: AVX2 is enabled; r0/r1[2j..2j+16] and out[j..j+8]
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
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[inline]
    fn pool2_row_bwd(r0: &[f32], r1: &[f32], go: &[f32], g: &mut [f32], w: usize, relu: bool) {
        use std::arch::x86_64::*;
        let n = go.len();
        assert!(r0.len() >= 2 * n && r1.len() >= 2 * n && w >= 2 * n && g.len() >= w + 2 * n);
        let (g0, g1) = g.split_at_mut(w);
        let full = n / 8 * 8;
        for j in (0..full).step_by(8) {
            // SAFETY: AVX2 is enabled; every access is to [2j, 2j+16) of r0, r1, g0, g1 or
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
    /// Rows of 8-output groups as [`Real::pool2_row`]; where a row has 4 to 7 outputs past its
    /// last group (the seed's 12- and 4-wide pooled rows), those first 4 of two rows go through
    /// one 8-lane pass (instead of the scalar tail); the rest is scalar.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[inline]
    fn pool2_plane(plane: &[f32], w: usize, out: &mut [f32], wo: usize, relu: bool) {
        use std::arch::x86_64::*;
        let ho = out.len() / wo;
        let full = wo / 8 * 8;
        assert!(out.len() == ho * wo && 2 * wo <= w && plane.len() >= 2 * ho * w);
        let row = |oy: usize, k: usize| &plane[(2 * oy + k) * w..][..2 * wo];
        for (oy, o) in out.chunks_exact_mut(wo).enumerate() {
            if relu {
                Self::pool2_relu_row(row(oy, 0), row(oy, 1), 0.0, &mut o[..full]);
            } else {
                Self::pool2_row(row(oy, 0), row(oy, 1), &mut o[..full]);
            }
        }
        let (quad, paired) = paired_tail(ho, w, wo, full, plane.len());
        for oy in (0..paired).step_by(2) {
            // SAFETY: AVX2 is enabled; the windows read columns [2·full, 2·full + 8) of rows
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
    /// As [`Real::pool2_plane`]'s f32 path: 8-output groups per row, the first 4 outputs past
    /// them of two rows in one pass, the rest scalar.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[inline]
    fn pool2_plane_bwd(plane: &[f32], w: usize, go: &[f32], g: &mut [f32], wo: usize, relu: bool) {
        use std::arch::x86_64::*;
        let ho = go.len() / wo;
        let full = wo / 8 * 8;
        assert!(go.len() == ho * wo && 2 * wo <= w);
        assert!(plane.len() >= 2 * ho * w && g.len() >= 2 * ho * w);
        for (oy, go) in go.chunks_exact(wo).enumerate() {
            Self::pool2_row_bwd(
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
            // SAFETY: AVX2 is enabled; reads and writes cover columns [2·full, 2·full + 8) of
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
    /// In AVX2 lanes where the build has it: the scalar version's per-lane `if`s compiled to
    /// two lanes at a time with a branch each (half of the grid gradient's time with one channel).
    /// The same operations in the same order (multiply then add, floor, subtract, clamp; an exact
    /// conversion of the clamped floor), so the same values.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[inline(always)]
    fn framed8(g: &[f32], ax: AxisMap<f32>, ay: AxisMap<f32>) -> Framed8<f32> {
        use std::arch::x86_64::*;
        assert!(g.len() >= 16);
        // SAFETY: AVX2 is enabled; the loads read g[..16] (asserted); `f32x8` has `__m256`'s
        // layout.
        unsafe {
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
                fx: std::mem::transmute::<__m256, wide::f32x8>(_mm256_sub_ps(x, x0)),
                fy: std::mem::transmute::<__m256, wide::f32x8>(_mm256_sub_ps(y, y0)),
                base: std::mem::transmute::<__m256i, [u32; 8]>(base),
                ok: std::array::from_fn(|l| bits >> l & 1 == 1),
            }
        }
    }
    /// One unaligned store where the build has AVX2 (through `lanes` the vector went to the stack
    /// and back, a fifth of the sampler's forward).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[inline(always)]
    fn store(dst: &mut [f32], v: wide::f32x8) {
        assert!(dst.len() >= 8);
        // SAFETY: AVX2 is enabled; dst[..8] is inside the slice (asserted); `f32x8` has
        // `__m256`'s layout.
        unsafe {
            std::arch::x86_64::_mm256_storeu_ps(
                dst.as_mut_ptr(),
                std::mem::transmute::<wide::f32x8, std::arch::x86_64::__m256>(v),
            )
        }
    }
    /// Two unpacks and two lane permutes where the build has AVX2.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[inline(always)]
    fn interleave(a: wide::f32x8, b: wide::f32x8) -> [wide::f32x8; 2] {
        use std::arch::x86_64::*;
        // SAFETY: AVX2 is enabled; `f32x8` has `__m256`'s layout.
        unsafe {
            let (a, b) = (
                std::mem::transmute::<wide::f32x8, __m256>(a),
                std::mem::transmute::<wide::f32x8, __m256>(b),
            );
            let (lo, hi) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
            [
                _mm256_permute2f128_ps::<0x20>(lo, hi),
                _mm256_permute2f128_ps::<0x31>(lo, hi),
            ]
            .map(|v| std::mem::transmute::<__m256, wide::f32x8>(v))
        }
    }
    /// As the scalar version, in AVX2 lanes, the weights of non-finite points masked to zero.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[inline(always)]
    fn weights8(f: &Framed8<f32>) -> [wide::f32x8; 4] {
        use std::arch::x86_64::*;
        // SAFETY: AVX2 is enabled; `bool` is one byte of 0 or 1; `f32x8` has `__m256`'s layout.
        let keep = unsafe {
            let bytes = u64::from_le_bytes(std::mem::transmute::<[bool; 8], [u8; 8]>(f.ok));
            let ok = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes as i64));
            let mask = _mm256_cmpgt_epi32(ok, _mm256_setzero_si256());
            std::mem::transmute::<__m256i, wide::f32x8>(mask)
        };
        let one = wide::f32x8::splat(1.0);
        let (ex, sy) = (one - f.fx, one - f.fy);
        [sy * ex, sy * f.fx, f.fy * ex, f.fy * f.fx].map(|w| w & keep)
    }
    /// Eight 128-bit loads (each point's four corners lie side by side in a row-paired plane)
    /// and a 4×4 transpose in each half, where the build has AVX2: no gather instruction, whose
    /// cost on Zen 4 is per element (the 64-bit pair gathers this replaces took ~2.4 cycles per
    /// pair; with ten channels the sampler was bound by them).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[inline(always)]
    fn corners(rows: &[f32], idx: &[u32; 8]) -> [wide::f32x8; 4] {
        use std::arch::x86_64::*;
        let max = idx.iter().fold(0, |m, &i| m.max(i)) as usize;
        assert!(2 * max + 4 <= rows.len());
        // SAFETY: AVX2 is enabled; every load reads rows[2i..2i+4] with i ≤ max, inside `rows`
        // (checked above); `f32x8` has `__m256`'s layout.
        unsafe {
            let q = |l: usize| _mm_loadu_ps(rows.as_ptr().add(2 * idx[l] as usize));
            // Point l in the low half, l + 4 in the high half: [nw sw ne se | nw sw ne se].
            let r = |l: usize| _mm256_set_m128(q(l + 4), q(l));
            let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
            let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
            let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
            // t0 = [nw0 nw1 sw0 sw1 | nw4 nw5 sw4 sw5], t2 likewise for points 2, 3 (6, 7).
            let lo = |a, b| _mm256_shuffle_ps::<0b01_00_01_00>(a, b);
            let hi = |a, b| _mm256_shuffle_ps::<0b11_10_11_10>(a, b);
            [lo(t0, t2), lo(t1, t3), hi(t0, t2), hi(t1, t3)]
                .map(|v| std::mem::transmute::<__m256, wide::f32x8>(v))
        }
    }
    /// AVX2's gather where the build has it (the workspace builds for x86-64-v3).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[inline(always)]
    fn gather(plane: &[f32], idx: &[u32; 8]) -> wide::f32x8 {
        use std::arch::x86_64::{__m256i, _mm256_i32gather_ps, _mm256_loadu_si256};
        let max = idx.iter().fold(0, |m, &i| m.max(i));
        assert!((max as usize) < plane.len() && plane.len() <= i32::MAX as usize);
        // SAFETY: AVX2 is enabled for this build; every index is inside `plane` (checked above) and
        // fits an i32; `f32x8` is a 32-byte vector with the same layout as `__m256`.
        unsafe {
            let vi = _mm256_loadu_si256(idx.as_ptr() as *const __m256i);
            std::mem::transmute::<std::arch::x86_64::__m256, wide::f32x8>(_mm256_i32gather_ps::<4>(
                plane.as_ptr(),
                vi,
            ))
        }
    }
}

impl Real for f64 {
    type Lanes = [f64; 8];
    #[inline(always)]
    fn to_i32_sat(self) -> i32 {
        self as i32
    }
    #[inline(always)]
    fn of(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn splat(v: f64) -> [f64; 8] {
        [v; 8]
    }
    #[inline(always)]
    fn load(s: &[f64]) -> [f64; 8] {
        s[..8].try_into().expect("8 lanes")
    }
    #[inline(always)]
    fn fma(a: [f64; 8], b: [f64; 8], c: [f64; 8]) -> [f64; 8] {
        std::array::from_fn(|l| a[l].mul_add(b[l], c[l]))
    }
    #[inline(always)]
    fn lanes(v: [f64; 8]) -> [f64; 8] {
        v
    }
    #[inline(always)]
    fn add_into(dst: &mut [f64], v: [f64; 8]) {
        for (d, x) in dst[..8].iter_mut().zip(v) {
            *d += x;
        }
    }
    #[inline(always)]
    fn vadd(a: [f64; 8], b: [f64; 8]) -> [f64; 8] {
        std::array::from_fn(|l| a[l] + b[l])
    }
    #[inline(always)]
    fn vmul(a: [f64; 8], b: [f64; 8]) -> [f64; 8] {
        std::array::from_fn(|l| a[l] * b[l])
    }
    #[inline(always)]
    fn vsub(a: [f64; 8], b: [f64; 8]) -> [f64; 8] {
        std::array::from_fn(|l| a[l] - b[l])
    }
}

/// An op input as the CPU kernels see it: its data (row-major, contiguous) and its dimensions.
#[derive(Clone, Copy)]
pub struct Buf<'a, E> {
    /// The values, row-major.
    pub data: &'a [E],
    /// The dimensions.
    pub dims: &'a [usize],
}

/// One custom op: a struct with the op's options, after candle's `CustomOp1`.
///
/// `cpu_bwd` *accumulates* into the gradients it is given (`+=`), as dfdx's gradients are sums over
/// every use of a tensor; a `None` gradient is one nobody asked for and is not computed.
pub trait CustomOp<E: Real>: Clone + 'static {
    /// Name in error messages, e.g. `"grid_sample"`.
    const NAME: &'static str;
    /// Checks the inputs' dimensions and returns the output's.
    fn out_dims(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, OpError>;
    /// Writes the output (zero-initialised, `out_dims` elements).
    fn cpu_fwd(&self, inputs: &[Buf<E>], out: &mut [E]);
    /// Accumulates the inputs' gradients from the output's.
    fn cpu_bwd(&self, inputs: &[Buf<E>], grad_out: &[E], grads: &mut [Option<&mut [E]>]);
    /// The CUDA forward: writes `out` (zeroed) on the device (feature `cuda`). By default an op
    /// has no CUDA kernel: an error saying so.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _k: &crate::cuda::CudaKernels,
        _inputs: &[crate::cuda::CudaBuf],
        _out: &mut cudarc::driver::CudaSlice<f32>,
    ) -> Result<(), OpError> {
        Err(OpError::cpu_only(
            Self::NAME,
            "there is no CUDA kernel for it yet",
        ))
    }
    /// The CUDA backward: accumulates into the gradients asked for (feature `cuda`); by default
    /// an error, as the forward.
    #[cfg(feature = "cuda")]
    fn cuda_bwd(
        &self,
        _k: &crate::cuda::CudaKernels,
        _inputs: &[crate::cuda::CudaBuf],
        _grad_out: &cudarc::driver::CudaSlice<f32>,
        _grads: &mut [Option<&mut cudarc::driver::CudaSlice<f32>>],
    ) -> Result<(), OpError> {
        Err(OpError::cpu_only(
            Self::NAME,
            "there is no CUDA kernel for it yet",
        ))
    }
}

/// Finds (allocating if needed) the gradient buffer of one input in the tape's gradients.
type GradSlot<E, D> = Box<
    dyn for<'g> Fn(
        &'g mut Gradients<E, D>,
    ) -> Result<&'g mut <D as Storage<E>>::Vec, <D as HasErr>::Err>,
>;

fn grad_slot<E, D: Storage<E>, F>(f: F) -> F
where
    F: for<'g> Fn(&'g mut Gradients<E, D>) -> Result<&'g mut D::Vec, D::Err>,
{
    f
}

/// An op input: its data where the kernels read it, its dimensions, and (when it had a tape) where
/// its gradient goes.
pub struct Input<E: Real, D: OpDevice<E>> {
    data: D::Buffer,
    dims: Vec<usize>,
    grad: Option<GradSlot<E, D>>,
}

impl<E: Real, D: OpDevice<E>> Input<E, D> {
    /// Splits the tape off `t` and reads its data. The input's gradient is wanted when `t` carried a
    /// tape. A strided view (broadcast, permute) is first made contiguous by dfdx (a copy with its
    /// own backward); a contiguous tensor is taken as it is.
    pub fn new<S: Shape, T: Tape<E, D>>(
        op: &'static str,
        t: Tensor<S, E, D, T>,
    ) -> Result<(Self, T), OpError> {
        let t = t.try_contiguous().map_err(|e| OpError::Device {
            op,
            what: e.to_string(),
        })?;
        let (t, tape) = t.split_tape();
        let dims: Vec<usize> = t.shape().concrete().into();
        let data = t.device().read(&t).map_err(|e| OpError::Device {
            op,
            what: e.to_string(),
        })?;
        let grad: Option<GradSlot<E, D>> = if T::OWNS_TAPE {
            let ghost = t.ghost();
            Some(Box::new(grad_slot(move |g: &mut Gradients<E, D>| {
                g.get_or_alloc_mut(&ghost)
            })))
        } else {
            None
        };
        Ok((Input { data, dims, grad }, tape))
    }
}

/// A device the ops run on: the CPU (host kernels) and, with the `cuda` feature, CUDA.
pub trait OpDevice<E: Real>: Device<E> {
    /// An input's data where the kernels read it: a host copy on the CPU.
    type Buffer: 'static;
    /// The host (CPU) device: it has the ops with no CUDA kernel ([`crate::affine_sample`]).
    const HOST: bool;
    /// Reads a contiguous tensor's data.
    fn read<S: Shape>(&self, t: &Tensor<S, E, Self>)
        -> Result<Self::Buffer, <Self as HasErr>::Err>;
    /// Runs `op`'s forward on `inputs` into a new tensor of `out_shape`.
    fn op_forward<Op: CustomOp<E>, S: Shape>(
        &self,
        op: &Op,
        inputs: &[(&Self::Buffer, &[usize])],
        out_shape: S,
    ) -> Result<Tensor<S, E, Self>, OpError>;
    /// Accumulates `op`'s input gradients from `grad_out`.
    fn op_backward<Op: CustomOp<E>>(
        &self,
        op: &Op,
        inputs: &[(&Self::Buffer, &[usize])],
        grad_out: &<Self as Storage<E>>::Vec,
        grads: &mut [Option<&mut <Self as Storage<E>>::Vec>],
    ) -> Result<(), <Self as HasErr>::Err>;
}

fn bufs<'a, E: Real>(inputs: &'a [(&'a HostCopy<E>, &'a [usize])]) -> Vec<Buf<'a, E>> {
    inputs
        .iter()
        .map(|(d, dims)| Buf { data: d, dims })
        .collect()
}

/// Recycled host buffers: the pool of one element type.
pub trait HostPool: Sized + 'static {
    /// The pool of recycled buffers of this type.
    fn pool() -> &'static std::sync::Mutex<Vec<Vec<Self>>>;
}
static POOL_F32: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());
static POOL_F64: std::sync::Mutex<Vec<Vec<f64>>> = std::sync::Mutex::new(Vec::new());
impl HostPool for f32 {
    fn pool() -> &'static std::sync::Mutex<Vec<Vec<f32>>> {
        &POOL_F32
    }
}
impl HostPool for f64 {
    fn pool() -> &'static std::sync::Mutex<Vec<Vec<f64>>> {
        &POOL_F64
    }
}

/// A host copy of an op input (dfdx keeps a tensor's buffer private, so the CPU kernels read a
/// copy), in a recycled buffer: a fresh `Vec` per copy was zeroed and then page-faulted in from
/// the kernel, ~7% of a training step. Dropping it returns the buffer to its pool.
pub struct HostCopy<E: Real> {
    v: Vec<E>,
}

/// Buffers kept for reuse, at most (a training step holds about a dozen inputs at once).
const POOL_MAX: usize = 64;

impl<E: Real> HostCopy<E> {
    /// `n` elements of unspecified (finite, stale or zero) values, for the caller to overwrite.
    fn take(n: usize) -> HostCopy<E> {
        let reused = {
            let mut pool = E::pool().lock().unwrap_or_else(|e| e.into_inner());
            // The smallest buffer that holds n without wasting more than half of itself.
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= n && v.capacity() <= 2 * n + 1024)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i);
            best.map(|i| pool.swap_remove(i))
        };
        let v = match reused {
            Some(mut v) => {
                if v.len() >= n {
                    v.truncate(n);
                } else {
                    v.resize(n, E::zero());
                }
                v
            }
            None => vec![E::zero(); n],
        };
        HostCopy { v }
    }
}

impl<E: Real> std::ops::Deref for HostCopy<E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        &self.v
    }
}

impl<E: Real> Drop for HostCopy<E> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.v);
        let mut pool = E::pool().lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(v);
        }
    }
}

/// `vec![0; n]`, zeroed in parallel when large: a 2 MB output zeroed by one thread and written
/// by the kernels' threads cost more than the kernels themselves at two threads (measured with
/// ten-channel grid_sample: the zeroing thread's cache lines then moved to the other core).
pub(crate) fn zeroed<E: Real>(n: usize) -> Vec<E> {
    use rayon::prelude::*;
    const PARALLEL_FROM: usize = 1 << 16;
    if n < PARALLEL_FROM {
        return vec![E::zero(); n];
    }
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(1 << 13)
        .for_each(|c| {
            c.iter_mut().for_each(|x| {
                x.write(E::zero());
            })
        });
    // SAFETY: every one of the n elements was initialised above.
    unsafe { v.set_len(n) };
    v
}

macro_rules! cpu_op_device {
    ($E:ty) => {
        impl OpDevice<$E> for Cpu {
            type Buffer = HostCopy<$E>;
            const HOST: bool = true;

            fn read<S: Shape>(&self, t: &Tensor<S, $E, Self>) -> Result<HostCopy<$E>, Self::Err> {
                // dfdx keeps a tensor's buffer private; `copy_into` is its one public memcpy of it (the
                // tensor is contiguous here, see `Input::new`), and it overwrites every element.
                let mut v = HostCopy::take(t.shape().num_elements());
                t.copy_into(&mut v.v);
                Ok(v)
            }

            fn op_forward<Op: CustomOp<$E>, S: Shape>(
                &self,
                op: &Op,
                inputs: &[(&HostCopy<$E>, &[usize])],
                out_shape: S,
            ) -> Result<Tensor<S, $E, Self>, OpError> {
                let mut out = zeroed::<$E>(out_shape.num_elements());
                op.cpu_fwd(&bufs(inputs), &mut out);
                // Moves the buffer into the tensor: no copy.
                self.try_tensor_from_vec(out, out_shape)
                    .map_err(|e| OpError::Device {
                        op: Op::NAME,
                        what: e.to_string(),
                    })
            }

            fn op_backward<Op: CustomOp<$E>>(
                &self,
                op: &Op,
                inputs: &[(&HostCopy<$E>, &[usize])],
                grad_out: &<Self as Storage<$E>>::Vec,
                grads: &mut [Option<&mut <Self as Storage<$E>>::Vec>],
            ) -> Result<(), Self::Err> {
                let mut slices: Vec<Option<&mut [$E]>> = grads
                    .iter_mut()
                    .map(|g| g.as_mut().map(|g| &mut g[..]))
                    .collect();
                op.cpu_bwd(&bufs(inputs), &grad_out[..], &mut slices);
                Ok(())
            }
        }
    };
}
cpu_op_device!(f32);
cpu_op_device!(f64);

/// Runs `op` on `inputs` and records its backward on `tape`. The output has shape `S` (checked
/// against the op's `out_dims`).
pub fn apply<E: Real, D: OpDevice<E>, Op: CustomOp<E>, S: Shape, T: Tape<E, D>>(
    op: Op,
    dev: &D,
    inputs: Vec<Input<E, D>>,
    mut tape: T,
) -> Result<Tensor<S, E, D, T>, OpError> {
    let dims: Vec<&[usize]> = inputs.iter().map(|i| i.dims.as_slice()).collect();
    let out_dims = op.out_dims(&dims)?;
    let mut concrete = S::Concrete::default();
    if out_dims.len() != S::NUM_DIMS {
        return Err(OpError::shape(
            Op::NAME,
            format!(
                "{} output dims for a rank-{} type",
                out_dims.len(),
                S::NUM_DIMS
            ),
        ));
    }
    for (k, &d) in out_dims.iter().enumerate() {
        concrete[k] = d;
    }
    let out_shape = S::from_concrete(&concrete).ok_or_else(|| {
        OpError::shape(
            Op::NAME,
            format!("output dims {out_dims:?} do not fit the output type"),
        )
    })?;
    let views: Vec<(&D::Buffer, &[usize])> = inputs
        .iter()
        .map(|i| (&i.data, i.dims.as_slice()))
        .collect();
    let out = dev.op_forward(&op, &views, out_shape)?;
    if T::OWNS_TAPE && inputs.iter().any(|i| i.grad.is_some()) {
        let out_ghost = out.ghost();
        let numel = out_shape.num_elements();
        let dev = dev.clone();
        tape.add_backward_op(move |grads| {
            // Take the buffers out of the gradient store so the output's gradient (read) and the
            // inputs' (written) can be borrowed together without copying; they are put back below.
            let grad_out = std::mem::replace(
                grads.get_or_alloc_mut(&out_ghost)?,
                <D as Storage<E>>::try_alloc_len(&dev, 0)?,
            );
            debug_assert_eq!(<D as Storage<E>>::len(&dev, &grad_out), numel);
            let mut taken: Vec<Option<<D as Storage<E>>::Vec>> = Vec::with_capacity(inputs.len());
            for i in &inputs {
                taken.push(match &i.grad {
                    Some(slot) => Some(std::mem::replace(
                        slot(grads)?,
                        <D as Storage<E>>::try_alloc_len(&dev, 0)?,
                    )),
                    None => None,
                });
            }
            let views: Vec<(&D::Buffer, &[usize])> = inputs
                .iter()
                .map(|i| (&i.data, i.dims.as_slice()))
                .collect();
            let mut slots: Vec<Option<&mut <D as Storage<E>>::Vec>> =
                taken.iter_mut().map(|g| g.as_mut()).collect();
            let r = dev.op_backward(&op, &views, &grad_out, &mut slots);
            for (i, g) in inputs.iter().zip(taken) {
                if let (Some(slot), Some(g)) = (&i.grad, g) {
                    *slot(grads)? = g;
                }
            }
            *grads.get_or_alloc_mut(&out_ghost)? = grad_out;
            r
        });
    }
    Ok(out.put_tape(tape))
}

/// Splits an optional gradient into one optional slice per image.
pub(crate) fn per_image<E>(g: Option<&mut [E]>, n: usize, len: usize) -> Vec<Option<&mut [E]>> {
    match g {
        Some(g) => g.chunks_mut(len).map(Some).collect(),
        None => (0..n).map(|_| None).collect(),
    }
}

/// `Real::pool2_row_bwd` from output `from` on, one output at a time without branches: the
/// candidates (the window's NaNs if it holds one, else its maxima), the first of them, and its
/// position in `g` by arithmetic.
#[inline]
fn pool2_bwd_scalar<E: Real>(
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
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
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
fn pool2_value<E: Real>(v: [E; 4]) -> E {
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
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
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
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
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
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
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
    // Interleave (even, odd) back into the two 8-float pieces, and add.
    let add = |pa: *mut f32, pb: *mut f32, e: __m256, o: __m256| {
        let (lo, hi) = (_mm256_unpacklo_ps(e, o), _mm256_unpackhi_ps(e, o));
        let a = _mm256_permute2f128_ps::<0x20>(lo, hi);
        let b = _mm256_permute2f128_ps::<0x31>(lo, hi);
        _mm256_storeu_ps(pa, _mm256_add_ps(_mm256_loadu_ps(pa), a));
        _mm256_storeu_ps(pb, _mm256_add_ps(_mm256_loadu_ps(pb), b));
    };
    add(g[0], g[1], d0, d1);
    add(g[2], g[3], d2, d3);
}
