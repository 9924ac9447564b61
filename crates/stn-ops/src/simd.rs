//! The SIMD layer of the kernels: eight values as one vector (`Lanes`) and the primitives the
//! kernels are written in, for f32 (AVX2 registers through `wide`) and f64 (plain arrays, for the
//! gradient checks). The ops' own kernels live beside their ops, as traits on top of this one
//! ([`crate::op::PoolKernels`] in `max_pool2d/kernels.rs`, [`crate::op::SampleKernels`] in
//! `grid_sample/kernels.rs`); [`Real`] is all of them together, the bound every op is generic
//! over.

use crate::grid_sample::kernels::SampleKernels;
use crate::host_pool::HostPool;
use crate::max_pool2d::kernels::PoolKernels;

/// The vector primitives of an element type.
pub trait Simd: dfdx::dtypes::Dtype + num_traits::Float + HostPool + Send + Sync + 'static {
    /// Eight values as one vector.
    type Lanes: Copy + Send + Sync;

    /// The nearest value of this type (named so as not to clash with `num_traits`).
    fn of(v: f64) -> Self;

    /// `self as i32`, saturating, NaN to 0, without `num_traits`' checks.
    fn to_i32_sat(self) -> i32;

    /// `v` in every lane.
    fn splat(v: Self) -> Self::Lanes;

    /// Rounded to the nearest integer, ties to even (`nearbyint`; one instruction with SSE4.1).
    fn round_even(self) -> Self;

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

/// Element types of the kernels: f32 (training and inference) and f64 (gradient checks).
///
/// `Lanes` is 8 elements the kernels treat as one vector: AVX2 registers for f32 (through `wide`,
/// because LLVM does not reliably vectorise the register blocks of `linalg`), a plain array for f64,
/// which only the gradient checks use.
pub trait Real: Simd + PoolKernels + SampleKernels {}

impl<T: Simd + PoolKernels + SampleKernels> Real for T {}

impl Simd for f32 {
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
    fn round_even(self) -> Self {
        self.round_ties_even()
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
}

impl Simd for f64 {
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
    fn round_even(self) -> Self {
        self.round_ties_even()
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
