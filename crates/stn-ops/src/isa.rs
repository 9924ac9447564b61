//! The instruction-set level of the CPU kernels, chosen once per process at run time: AVX-512,
//! AVX2 + FMA, or scalar (any x86-64, and every other architecture).
//!
//! One build runs everywhere. The kernels are written once, generic over an ISA token type
//! ([`Isa`]: [`Avx512`], [`Avx2`], [`Scalar`]) that names their vector types
//! ([`crate::simd::Vector`]); [`dispatch!`](crate::dispatch) runs a kernel body inside a
//! `#[target_feature]` function of the level in use, so the body — and everything it inlines —
//! is compiled for that level's instructions (LLVM inlines and vectorises with the caller's
//! features). Hence the kernels' rules:
//!
//! * a kernel called from a `dispatch!` body is `#[inline(always)]` down to its loops, and hands
//!   no closure to a library function that may stay out of line (`map`/`collect`/`fold`): such
//!   code is compiled for the baseline x86-64 (SSE2), and where it holds intrinsics each becomes a
//!   call (`scripts/check-isa.sh` fails the build's check on one);
//! * a `dispatch!` body is one kernel, not an op's whole per-image body: in one very large
//!   function LLVM stops inlining the small helpers (measured: training 15% slower). The matrix
//!   products, im2col and col2im each dispatch by themselves (`linalg::gemm_any`).
//!
//! Code outside any `dispatch!` (the ops' glue, dfdx's own kernels) runs at the baseline.
//!
//! Why by hand rather than `multiversion` or `pulp`: `STN_ISA` must force a level (for tests and
//! benchmarks), which neither crate's dispatcher offers, and the kernels already have a vector
//! layer of their own (`simd.rs`); what is left is forty lines of detection and one macro.
//!
//! The level is the best the CPU has, unless `STN_ISA=scalar|avx2|avx512` asks for another
//! (lower or equal; asking for more than the CPU has is refused, never run: that would be
//! SIGILL). Binaries call [`init`] first to report a bad `STN_ISA` as an error; [`level`] alone
//! ignores a bad value with one warning.

use std::sync::atomic::{AtomicU8, Ordering};

/// A level of the CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Portable Rust (on x86-64: SSE2), 8-lane arrays.
    Scalar,
    /// AVX2 and FMA (x86-64-v3), 8 f32 lanes.
    Avx2,
    /// AVX-512 F/BW/DQ/VL (x86-64-v4), 16 f32 lanes.
    Avx512,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Scalar, Level::Avx2, Level::Avx512];

    /// The name `STN_ISA` takes and the outputs print: `scalar`, `avx2`, `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// f32 lanes of the level's natural vector.
    pub fn f32_lanes(self) -> usize {
        match self {
            Level::Avx512 => 16,
            _ => 8,
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Level, String> {
        Level::ALL
            .into_iter()
            .find(|l| l.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| format!("unknown ISA level {s:?} (expected scalar, avx2 or avx512)"))
    }
}

/// The best level this CPU runs.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        // Exactly the features the `target_feature` lists below enable.
        let v3 = std::arch::is_x86_feature_detected!("avx")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("bmi2")
            && std::arch::is_x86_feature_detected!("f16c")
            && std::arch::is_x86_feature_detected!("lzcnt")
            && std::arch::is_x86_feature_detected!("movbe")
            && std::arch::is_x86_feature_detected!("popcnt");
        let v4 = v3
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512cd")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl");
        if v4 {
            return Level::Avx512;
        }
        if v3 {
            return Level::Avx2;
        }
    }
    Level::Scalar
}

/// `STN_ISA`'s level, checked against the CPU: `None` when unset.
fn requested() -> Result<Option<Level>, String> {
    let Some(v) = std::env::var_os("STN_ISA") else {
        return Ok(None);
    };
    let v = v.to_string_lossy();
    if v.trim().is_empty() {
        return Ok(None);
    }
    let l: Level = v.parse().map_err(|e| format!("STN_ISA: {e}"))?;
    let best = detected();
    if l > best {
        return Err(format!(
            "STN_ISA={l}: this CPU runs at most {best} (it lacks {l}'s instructions)"
        ));
    }
    Ok(Some(l))
}

/// 0: not chosen yet; else `Level as u8 + 1`.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

fn store(l: Level) -> Level {
    CHOSEN.store(l as u8 + 1, Ordering::Relaxed);
    l
}

fn load() -> Option<Level> {
    match CHOSEN.load(Ordering::Relaxed) {
        0 => None,
        v => Some(Level::ALL[v as usize - 1]),
    }
}

/// Chooses the level (`STN_ISA`, else the best the CPU has) and returns it, or says why
/// `STN_ISA` cannot be honoured. Binaries call it before any kernel runs.
pub fn init() -> Result<Level, String> {
    let l = requested()?.unwrap_or_else(detected);
    Ok(store(l))
}

/// The level the kernels run at. The first call chooses it as [`init`] does; a bad `STN_ISA` is
/// then ignored with a warning on stderr (a library cannot fail here), so binaries call [`init`].
#[inline]
pub fn level() -> Level {
    match load() {
        Some(l) => l,
        None => init().unwrap_or_else(|e| {
            eprintln!("warning: {e}; using {}", detected());
            store(detected())
        }),
    }
}

/// Runs the kernels at `l` from now on, process-wide (for tests and benchmarks that compare
/// levels in one process); refused above what the CPU runs.
pub fn force(l: Level) -> Result<(), String> {
    let best = detected();
    if l > best {
        return Err(format!("ISA level {l}: this CPU runs at most {best}"));
    }
    store(l);
    Ok(())
}

/// An instruction-set level as a type: the kernels are generic over it, and its vector types
/// are theirs. A token of a level above [`Scalar`] exists only inside [`dispatch!`]'s
/// `#[target_feature]` functions, entered after [`level`] checked the CPU.
///
/// [`dispatch!`]: crate::dispatch
pub trait Isa: Copy + Send + Sync + 'static {
    /// The level.
    const LEVEL: Level;
    /// The level's natural f32 vector (8 lanes, 16 with AVX-512).
    type F32: crate::simd::Vector<f32>;
    /// Eight f32 lanes (the sampler's and the pool's eight-point kernels).
    type F32x8: crate::simd::Vector<f32, Array = [f32; 8]>;
}

/// Portable code: no instruction beyond the target's baseline.
#[derive(Clone, Copy, Debug)]
pub struct Scalar;

impl Isa for Scalar {
    const LEVEL: Level = Level::Scalar;
    type F32 = crate::simd::Portable8<f32>;
    type F32x8 = crate::simd::Portable8<f32>;
}

/// AVX2 + FMA (with BMI1/2, F16C, LZCNT, MOVBE: x86-64-v3).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Isa for Avx2 {
    const LEVEL: Level = Level::Avx2;
    type F32 = crate::simd::x86::F32x8;
    type F32x8 = crate::simd::x86::F32x8;
}

/// AVX-512 F/BW/CD/DQ/VL on top of [`Avx2`] (x86-64-v4).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Isa for Avx512 {
    const LEVEL: Level = Level::Avx512;
    type F32 = crate::simd::x86::F32x16;
    type F32x8 = crate::simd::x86::F32x8;
}

/// Runs `f` as portable code.
#[doc(hidden)]
#[inline(always)]
pub fn run_scalar<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `f` (inlined) with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must have the features ([`level`] ≥ [`Level::Avx2`]).
#[doc(hidden)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,avx2,fma,bmi1,bmi2,f16c,lzcnt,movbe,popcnt")]
pub unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `f` (inlined) with AVX-512 enabled.
///
/// # Safety
/// The CPU must have the features ([`level`] = [`Level::Avx512`]).
#[doc(hidden)]
#[cfg(target_arch = "x86_64")]
#[target_feature(
    enable = "avx,avx2,fma,bmi1,bmi2,f16c,lzcnt,movbe,popcnt,avx512f,avx512bw,avx512cd,avx512dq,avx512vl"
)]
pub unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `dispatch!(I => body)`: evaluates `body` compiled for the level in use, with the type `I`
/// naming that level's [`Isa`] token inside it (so the body calls `kernel::<E, I>(…)`).
/// `dispatch!(avx2, I => body)` runs at most at the AVX2 level: for kernels that 512-bit vectors
/// make slower (measured per kernel; see BENCHMARKS.md).
///
/// The body is compiled once per level (inside an `#[inline(always)]` closure run by a
/// `#[target_feature]` function); what it calls out of line runs at the baseline. Put it inside
/// a parallel loop's closure, not around the loop: rayon runs the closure out of line.
#[macro_export]
macro_rules! dispatch {
    (avx2, $I:ident => $body:expr) => {{
        match $crate::isa::level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `level()` returns a level the CPU runs (AVX-512 includes AVX2).
            $crate::isa::Level::Avx512 | $crate::isa::Level::Avx2 => unsafe {
                $crate::dispatch!(@run run_avx2, Avx2, $I => $body)
            },
            _ => $crate::dispatch!(@run run_scalar, Scalar, $I => $body),
        }
    }};
    ($I:ident => $body:expr) => {{
        match $crate::isa::level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `level()` returns a level the CPU runs.
            $crate::isa::Level::Avx512 => unsafe {
                $crate::dispatch!(@run run_avx512, Avx512, $I => $body)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            $crate::isa::Level::Avx2 => unsafe {
                $crate::dispatch!(@run run_avx2, Avx2, $I => $body)
            },
            _ => $crate::dispatch!(@run run_scalar, Scalar, $I => $body),
        }
    }};
    (@run $run:ident, $token:ident, $I:ident => $body:expr) => {
        $crate::isa::$run(
            #[inline(always)]
            || {
                #[allow(dead_code)]
                type $I = $crate::isa::$token;
                $body
            },
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        for l in Level::ALL {
            assert_eq!(l.name().parse::<Level>(), Ok(l));
        }
        assert_eq!(" AVX2 ".parse::<Level>(), Ok(Level::Avx2));
        let e = "sse9".parse::<Level>().unwrap_err();
        assert!(e.contains("sse9") && e.contains("avx512"), "{e}");
    }

    #[test]
    fn more_than_the_cpu_has_is_refused() {
        if detected() < Level::Avx512 {
            assert!(force(Level::Avx512).is_err());
        }
    }
}
