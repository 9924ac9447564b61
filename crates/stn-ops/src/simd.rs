//! The SIMD layer of the kernels: [`Vector`], a vector of `N` lanes and the primitives the
//! kernels are written in, and its types per instruction-set level ([`crate::isa`]):
//! [`Portable8`] (eight-lane arrays: the scalar level, and f64 everywhere), [`x86::F32x8`] (AVX2
//! registers) and [`x86::F32x16`] (AVX-512 registers). The lane width is the vector's `N`, not a
//! constant of the kernels: the matrix products use the level's natural vector
//! ([`Simd::Lanes`], 16 f32 lanes with AVX-512), the sampler's and the pool's eight-point
//! kernels an eight-lane one ([`Simd::Lanes8`]).
//!
//! The ops' own kernels live beside their ops, as traits on top of this one
//! ([`crate::op::PoolKernels`] in `max_pool2d/kernels.rs`, [`crate::op::SampleKernels`] in
//! `grid_sample/kernels.rs`); [`Real`] is all of them together, the bound every op is generic
//! over.
//!
//! Every level computes the same operations in the same order, so results differ between levels
//! only where a wider vector splits a sum differently, and where the portable level rounds a
//! multiply-add twice (no FMA instruction to assume).

use crate::grid_sample::kernels::SampleKernels;
use crate::host_pool::HostPool;
use crate::isa::Isa;
use crate::max_pool2d::kernels::PoolKernels;

/// `N` values of `E` as one vector, and the kernels' primitives on it. Every method is
/// `#[inline(always)]`: the kernels run inside [`crate::dispatch!`]'s `#[target_feature]`
/// functions, and a vector type of a level above the CPU's is only ever made there.
pub trait Vector<E: Copy>: Copy + Send + Sync + 'static {
    /// Lanes.
    const N: usize;
    /// `[E; N]`.
    type Array: Copy + AsRef<[E]> + AsMut<[E]> + Default + Send + Sync;

    /// `v` in every lane.
    fn splat(v: E) -> Self;

    /// `s[..N]`.
    fn load(s: &[E]) -> Self;

    /// The lanes as an array.
    fn lanes(v: Self) -> Self::Array;

    /// An array as lanes.
    #[inline(always)]
    fn from_array(a: Self::Array) -> Self {
        Self::load(a.as_ref())
    }

    /// `dst[..N] = v`.
    fn store(dst: &mut [E], v: Self);

    /// `a·b + c`, lane-wise, rounded once.
    fn fma(a: Self, b: Self, c: Self) -> Self;

    /// `a + b`, lane-wise.
    fn vadd(a: Self, b: Self) -> Self;

    /// `a − b`, lane-wise.
    fn vsub(a: Self, b: Self) -> Self;

    /// `a · b`, lane-wise.
    fn vmul(a: Self, b: Self) -> Self;

    /// `dst[..N] += v`.
    #[inline(always)]
    fn add_into(dst: &mut [E], v: Self) {
        let d = Self::vadd(Self::load(dst), v);
        Self::store(dst, d);
    }

    /// `s[..n]` in the first `n` lanes, zero in the others (`n ≤ N`, `n ≤ s.len()`).
    fn load_head(s: &[E], n: usize) -> Self;

    /// `[a0 b0 a1 b1 …]` and the second half of those pairs: two vectors as (a, b) pairs.
    fn interleave(a: Self, b: Self) -> [Self; 2];

    /// Σ x, with `N` independent partial sums so the loop vectorises (a plain fold is a serial
    /// chain of dependent adds, 4 cycles each).
    #[inline(always)]
    fn sum(x: &[E]) -> E
    where
        E: std::ops::Add<Output = E> + Default,
    {
        let chunks = x.chunks_exact(Self::N);
        let tail = chunks.remainder().iter().fold(E::default(), |s, &v| s + v);
        let mut acc = Self::splat(E::default());
        for c in chunks {
            acc = Self::vadd(acc, Self::load(c));
        }
        Self::lanes(acc).as_ref().iter().fold(tail, |s, &v| s + v)
    }

    /// `dst[i] += src[i]`, `N` lanes at a time.
    #[inline(always)]
    fn add_rows(dst: &mut [E], src: &[E])
    where
        E: std::ops::AddAssign,
    {
        assert_eq!(dst.len(), src.len());
        let mut d = dst.chunks_exact_mut(Self::N);
        let mut s = src.chunks_exact(Self::N);
        for (d, s) in (&mut d).zip(&mut s) {
            Self::add_into(d, Self::load(s));
        }
        for (d, &s) in d.into_remainder().iter_mut().zip(s.remainder()) {
            *d += s;
        }
    }

    /// `dst.copy_from_slice(src)` for short rows, without a `memcpy` call per row.
    #[inline(always)]
    fn copy(dst: &mut [E], src: &[E]) {
        assert_eq!(dst.len(), src.len());
        let mut d = dst.chunks_exact_mut(Self::N);
        let mut s = src.chunks_exact(Self::N);
        for (d, s) in (&mut d).zip(&mut s) {
            Self::store(d, Self::load(s));
        }
        for (d, &s) in d.into_remainder().iter_mut().zip(s.remainder()) {
            *d = s;
        }
    }
}

/// The vector of element `E` at level `I` (the level's natural width).
pub type V<E, I> = <E as Simd>::Lanes<I>;
/// The eight-lane vector of element `E` at level `I`.
pub type V8<E, I> = <E as Simd>::Lanes8<I>;

/// The element types of the kernels and their vectors per level.
pub trait Simd: dfdx::dtypes::Dtype + num_traits::Float + HostPool + Send + Sync + 'static {
    /// The level's natural vector of this type.
    type Lanes<I: Isa>: Vector<Self>;
    /// Eight lanes of this type at the level.
    type Lanes8<I: Isa>: Vector<Self, Array = [Self; 8]>;

    /// The nearest value of this type (named so as not to clash with `num_traits`).
    fn of(v: f64) -> Self;

    /// `self as i32`, saturating, NaN to 0, without `num_traits`' checks.
    fn to_i32_sat(self) -> i32;

    /// Rounded to the nearest integer, ties to even (`nearbyint`; one instruction with SSE4.1).
    fn round_even(self) -> Self;
}

/// Element types of the kernels: f32 (training and inference) and f64 (gradient checks).
pub trait Real: Simd + PoolKernels + SampleKernels {}

impl<T: Simd + PoolKernels + SampleKernels> Real for T {}

impl Simd for f32 {
    type Lanes<I: Isa> = I::F32;
    type Lanes8<I: Isa> = I::F32x8;

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
}

/// f64 is for the gradient checks: eight-lane arrays at every level (LLVM vectorises them where
/// the level allows).
impl Simd for f64 {
    type Lanes<I: Isa> = Portable8<f64>;
    type Lanes8<I: Isa> = Portable8<f64>;

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
}

/// Eight lanes as an array, portable: the scalar level's f32 vector and every level's f64 one.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub struct Portable8<E>(pub [E; 8]);

impl<E> Vector<E> for Portable8<E>
where
    E: num_traits::Float + Default + Send + Sync + 'static,
    [E; 8]: Default,
{
    const N: usize = 8;
    type Array = [E; 8];

    #[inline(always)]
    fn splat(v: E) -> Self {
        Portable8([v; 8])
    }

    #[inline(always)]
    fn load(s: &[E]) -> Self {
        Portable8(s[..8].try_into().expect("8 lanes"))
    }

    #[inline(always)]
    fn lanes(v: Self) -> [E; 8] {
        v.0
    }

    #[inline(always)]
    fn store(dst: &mut [E], v: Self) {
        dst[..8].copy_from_slice(&v.0);
    }

    /// Rounded twice (`a·b`, then `+ c`): the portable level assumes no FMA instruction, and
    /// `mul_add` without one is a call into libm per element (30× slower convolutions).
    #[inline(always)]
    fn fma(a: Self, b: Self, c: Self) -> Self {
        Portable8(std::array::from_fn(|l| a.0[l] * b.0[l] + c.0[l]))
    }

    #[inline(always)]
    fn vadd(a: Self, b: Self) -> Self {
        Portable8(std::array::from_fn(|l| a.0[l] + b.0[l]))
    }

    #[inline(always)]
    fn vsub(a: Self, b: Self) -> Self {
        Portable8(std::array::from_fn(|l| a.0[l] - b.0[l]))
    }

    #[inline(always)]
    fn vmul(a: Self, b: Self) -> Self {
        Portable8(std::array::from_fn(|l| a.0[l] * b.0[l]))
    }

    #[inline(always)]
    fn load_head(s: &[E], n: usize) -> Self {
        let mut a = [E::zero(); 8];
        a[..n].copy_from_slice(&s[..n]);
        Portable8(a)
    }

    #[inline(always)]
    fn interleave(a: Self, b: Self) -> [Self; 2] {
        let pair = |i: usize| {
            if i.is_multiple_of(2) {
                a.0[i / 2]
            } else {
                b.0[i / 2]
            }
        };
        [
            Portable8(std::array::from_fn(pair)),
            Portable8(std::array::from_fn(|i| pair(i + 8))),
        ]
    }
}

/// The x86-64 vector types: AVX2 and AVX-512 registers. Their methods call the levels'
/// intrinsics and must only run where the CPU has them: inside [`crate::dispatch!`] bodies of
/// their level (or above), which is where the kernels make them.
#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::Vector;
    use std::arch::x86_64::*;

    /// Eight f32 lanes in an AVX register (levels AVX2 and AVX-512).
    #[derive(Clone, Copy, Debug)]
    #[repr(transparent)]
    pub struct F32x8(pub __m256);

    // SAFETY (every `unsafe` block of this impl): the type is only used at levels with AVX2 and
    // FMA (see the module's note); loads and stores are bounds-checked by the asserts beside them.
    impl Vector<f32> for F32x8 {
        const N: usize = 8;
        type Array = [f32; 8];

        #[inline(always)]
        fn splat(v: f32) -> Self {
            unsafe { F32x8(_mm256_set1_ps(v)) }
        }

        #[inline(always)]
        fn load(s: &[f32]) -> Self {
            assert!(s.len() >= 8);
            unsafe { F32x8(_mm256_loadu_ps(s.as_ptr())) }
        }

        #[inline(always)]
        fn lanes(v: Self) -> [f32; 8] {
            // SAFETY: `__m256` is 8 f32s.
            unsafe { std::mem::transmute::<__m256, [f32; 8]>(v.0) }
        }

        #[inline(always)]
        fn from_array(a: [f32; 8]) -> Self {
            // SAFETY: as `lanes`.
            F32x8(unsafe { std::mem::transmute::<[f32; 8], __m256>(a) })
        }

        /// One unaligned store (through `lanes` the vector went to the stack and back, a fifth
        /// of the sampler's forward).
        #[inline(always)]
        fn store(dst: &mut [f32], v: Self) {
            assert!(dst.len() >= 8);
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v.0) }
        }

        #[inline(always)]
        fn fma(a: Self, b: Self, c: Self) -> Self {
            unsafe { F32x8(_mm256_fmadd_ps(a.0, b.0, c.0)) }
        }

        #[inline(always)]
        fn vadd(a: Self, b: Self) -> Self {
            unsafe { F32x8(_mm256_add_ps(a.0, b.0)) }
        }

        #[inline(always)]
        fn vsub(a: Self, b: Self) -> Self {
            unsafe { F32x8(_mm256_sub_ps(a.0, b.0)) }
        }

        #[inline(always)]
        fn vmul(a: Self, b: Self) -> Self {
            unsafe { F32x8(_mm256_mul_ps(a.0, b.0)) }
        }

        /// One 8-lane load and a mask where 8 elements are readable (no copy through the stack,
        /// whose 4-byte stores a 32-byte load cannot forward from).
        #[inline(always)]
        fn load_head(s: &[f32], n: usize) -> Self {
            assert!(n <= 8 && n <= s.len());
            if s.len() < 8 {
                let mut a = [0.0; 8];
                a[..n].copy_from_slice(&s[..n]);
                return Self::from_array(a);
            }
            const ONES: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
            unsafe {
                let m = _mm256_loadu_si256(ONES.as_ptr().add(8 - n) as *const __m256i);
                F32x8(_mm256_and_ps(
                    _mm256_loadu_ps(s.as_ptr()),
                    _mm256_castsi256_ps(m),
                ))
            }
        }

        /// Two unpacks and two lane permutes.
        #[inline(always)]
        fn interleave(a: Self, b: Self) -> [Self; 2] {
            unsafe {
                let (lo, hi) = (_mm256_unpacklo_ps(a.0, b.0), _mm256_unpackhi_ps(a.0, b.0));
                [
                    F32x8(_mm256_permute2f128_ps::<0x20>(lo, hi)),
                    F32x8(_mm256_permute2f128_ps::<0x31>(lo, hi)),
                ]
            }
        }
    }

    /// Sixteen f32 lanes in an AVX-512 register (level AVX-512).
    #[derive(Clone, Copy, Debug)]
    #[repr(transparent)]
    pub struct F32x16(pub __m512);

    // SAFETY (every `unsafe` block of this impl): the type is only used at the AVX-512 level (see
    // the module's note); loads and stores are bounds-checked by the asserts beside them.
    impl Vector<f32> for F32x16 {
        const N: usize = 16;
        type Array = [f32; 16];

        #[inline(always)]
        fn splat(v: f32) -> Self {
            unsafe { F32x16(_mm512_set1_ps(v)) }
        }

        #[inline(always)]
        fn load(s: &[f32]) -> Self {
            assert!(s.len() >= 16);
            unsafe { F32x16(_mm512_loadu_ps(s.as_ptr())) }
        }

        #[inline(always)]
        fn lanes(v: Self) -> [f32; 16] {
            // SAFETY: `__m512` is 16 f32s.
            unsafe { std::mem::transmute::<__m512, [f32; 16]>(v.0) }
        }

        #[inline(always)]
        fn from_array(a: [f32; 16]) -> Self {
            // SAFETY: as `lanes`.
            F32x16(unsafe { std::mem::transmute::<[f32; 16], __m512>(a) })
        }

        #[inline(always)]
        fn store(dst: &mut [f32], v: Self) {
            assert!(dst.len() >= 16);
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v.0) }
        }

        #[inline(always)]
        fn fma(a: Self, b: Self, c: Self) -> Self {
            unsafe { F32x16(_mm512_fmadd_ps(a.0, b.0, c.0)) }
        }

        #[inline(always)]
        fn vadd(a: Self, b: Self) -> Self {
            unsafe { F32x16(_mm512_add_ps(a.0, b.0)) }
        }

        #[inline(always)]
        fn vsub(a: Self, b: Self) -> Self {
            unsafe { F32x16(_mm512_sub_ps(a.0, b.0)) }
        }

        #[inline(always)]
        fn vmul(a: Self, b: Self) -> Self {
            unsafe { F32x16(_mm512_mul_ps(a.0, b.0)) }
        }

        /// A masked load: lanes past `n` are neither read nor nonzero.
        #[inline(always)]
        fn load_head(s: &[f32], n: usize) -> Self {
            assert!(n <= 16 && n <= s.len());
            unsafe { F32x16(_mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, s.as_ptr())) }
        }

        /// Two lane-crossing permutes.
        #[inline(always)]
        fn interleave(a: Self, b: Self) -> [Self; 2] {
            unsafe {
                let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
                let hi =
                    _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
                [
                    F32x16(_mm512_permutex2var_ps(a.0, lo, b.0)),
                    F32x16(_mm512_permutex2var_ps(a.0, hi, b.0)),
                ]
            }
        }
    }
}
