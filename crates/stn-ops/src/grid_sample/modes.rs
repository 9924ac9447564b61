//! The sampler's `nearest` and `bicubic` modes, with PyTorch's CPU semantics
//! (`GridSamplerKernel.cpp`), one image at a time:
//!
//! * `nearest`: the source coordinate (padding applied, as bilinear) rounded half to even
//!   (`nearbyint`); outside the image reads zero. The input's gradient goes to that pixel; the
//!   grid's gradient is zero (the output is piecewise constant in the grid).
//! * `bicubic`: cubic convolution with A = −0.75 over the 4×4 pixels around the unnormalised
//!   coordinate; padding applies to each of the 16 taps (border clips the tap, reflection reflects
//!   then clips it, zeros reads zero outside), so the grid's gradient is the unnormalisation's
//!   scale times the derivative of the cubic weights — PyTorch's, which does not differentiate
//!   the taps' padding either.
//!
//! The per-point work (coordinates, weights, tap indices) is done once and reused by every
//! channel. The general paths are scalar code, generic over the element type. Zero padding
//! without the input's gradient (the STN's case) has fast paths: nearest gathers eight points at
//! a time from a copy of each plane followed by one zero; bicubic reads each point's 4×4 window
//! from a zero-framed plane, eight points at a time (`SampleKernels::cubic8`).

use super::kernels::{AxisMap, CubicGroup};
use super::{clip, reflect, Axis, GridSample, Padding};
use crate::isa::Isa;
use crate::op::Real;
use crate::simd::{Simd, Vector, V8};

/// PyTorch's cubic convolution constant.
pub(crate) const CUBIC_A: f64 = -0.75;

/// `nearbyint`: round half to even, as PyTorch's nearest mode.
#[inline(always)]
pub(crate) fn round_half_even<E: Real>(x: E) -> E {
    x.round_even()
}

/// Zero padding's frame for bicubic sampling: 4 pixels of zeros on every side, so that the 4×4
/// taps of any point whose floor is clamped to [−3, W + 1] × [−3, H + 1] lie inside the frame, and a
/// point whose taps all fall outside the image reads only zeros (as PyTorch's, which skips them).
const CUBIC_BORDER: usize = 4;

/// The weights of taps −1, 0, 1, 2 at fraction `t` (PyTorch's `get_cubic_upsample_coefficients`).
#[inline(always)]
pub(crate) fn cubic_weights<E: Simd>(t: E) -> [E; 4] {
    let (a, one) = (E::of(CUBIC_A), E::one());
    let c1 = |x: E| ((a + E::of(2.0)) * x - (a + E::of(3.0))) * x * x + one;
    let c2 = |x: E| ((a * x - E::of(5.0) * a) * x + E::of(8.0) * a) * x - E::of(4.0) * a;
    let s = one - t;
    [c2(t + one), c1(t), c1(s), c2(s + one)]
}

/// d(weights)/dt of [`cubic_weights`].
#[inline(always)]
pub(crate) fn cubic_weight_derivatives<E: Simd>(t: E) -> [E; 4] {
    let a = E::of(CUBIC_A);
    let (two, three, five, eight) = (E::of(2.0), E::of(3.0), E::of(5.0), E::of(8.0));
    // c1'(x) = 3(A+2)x² − 2(A+3)x; c2'(x) = 3A x² − 10A x + 8A.
    let d1 = |x: E| (three * (a + two) * x - two * (a + three)) * x;
    let d2 = |x: E| (three * a * x - two * five * a) * x + eight * a;
    let s = E::one() - t;
    // Taps 2 and 3 are functions of 1 − t: their derivatives change sign.
    [d2(t + E::one()), d1(t), -d1(s), -d2(s + E::one())]
}

/// A tap's integer coordinate after padding (PyTorch's `compute_coordinates`), and whether it
/// reads a pixel: border clips, reflection reflects then clips, zeros reads nothing outside.
#[inline(always)]
fn tap<E: Real>(v: E, ax: &Axis<E>, padding: Padding, align_corners: bool) -> Option<usize> {
    let v = match padding {
        Padding::Zeros => v,
        Padding::Border => clip(v, ax.size_e).0,
        Padding::Reflection => {
            let two = E::of(2.0);
            let r = if align_corners {
                reflect(v, E::zero(), two * (ax.size_e - E::one())).0
            } else {
                reflect(v, -E::one(), two * ax.size_e - E::one()).0
            };
            clip(r, ax.size_e).0
        }
    };
    // Finite and inside: a NaN or an infinity reads nothing.
    if v >= E::zero() && v < ax.size_e {
        Some(E::to_i32_sat(v) as usize)
    } else {
        None
    }
}

/// A bicubic point: the 4 × 4 taps' flat indices (None outside), their weights by axis, the
/// weights' derivatives, and the unnormalisation's scales.
struct Cubic<E> {
    idx: [[Option<usize>; 4]; 4],
    wx: [E; 4],
    wy: [E; 4],
    dwx: [E; 4],
    dwy: [E; 4],
}

impl GridSample {
    /// The flat index a nearest-mode point reads, if inside the image.
    #[inline(always)]
    fn nearest_index<E: Real>(&self, gx: E, gy: E, ax: &Axis<E>, ay: &Axis<E>) -> Option<usize> {
        let x = round_half_even(self.source(gx, ax).0);
        let y = round_half_even(self.source(gy, ay).0);
        let inside = |v: E, a: &Axis<E>| v >= E::zero() && v < a.size_e;
        (inside(x, ax) && inside(y, ay))
            .then(|| E::to_i32_sat(y) as usize * ax.size + E::to_i32_sat(x) as usize)
    }

    #[inline(always)]
    fn cubic<E: Real>(&self, gx: E, gy: E, ax: &Axis<E>, ay: &Axis<E>) -> Cubic<E> {
        let (x, y) = (gx * ax.scale + ax.offset, gy * ay.scale + ay.offset);
        let (x0, y0) = (x.floor(), y.floor());
        let (tx, ty) = (x - x0, y - y0);
        let mut idx = [[None; 4]; 4];
        for (i, row) in idx.iter_mut().enumerate() {
            let yy = tap(
                y0 + E::of(i as f64 - 1.0),
                ay,
                self.padding,
                self.align_corners,
            );
            for (j, slot) in row.iter_mut().enumerate() {
                let xx = tap(
                    x0 + E::of(j as f64 - 1.0),
                    ax,
                    self.padding,
                    self.align_corners,
                );
                *slot = match (yy, xx) {
                    (Some(yy), Some(xx)) => Some(yy * ax.size + xx),
                    _ => None,
                };
            }
        }
        Cubic {
            idx,
            wx: cubic_weights(tx),
            wy: cubic_weights(ty),
            dwx: cubic_weight_derivatives(tx),
            dwy: cubic_weight_derivatives(ty),
        }
    }

    /// Nearest or bicubic forward of one image `x [C, H·W]` at the points of `g` into
    /// `out [C, P]`.
    #[inline(always)]
    pub(crate) fn modes_fwd_image<E: Real>(
        &self,
        x: &[E],
        g: &[E],
        ax: &Axis<E>,
        ay: &Axis<E>,
        out: &mut [E],
    ) {
        let p = g.len() / 2;
        let hw = ax.size * ay.size;
        let c = x.len() / hw;
        match self.mode {
            Mode::Bilinear => unreachable!("bilinear has its own kernels"),
            Mode::Nearest => {
                for q in 0..p {
                    let i = self.nearest_index(g[2 * q], g[2 * q + 1], ax, ay);
                    for ch in 0..c {
                        out[ch * p + q] = i.map_or(E::zero(), |i| x[ch * hw + i]);
                    }
                }
            }
            Mode::Bicubic => {
                for q in 0..p {
                    let s = self.cubic(g[2 * q], g[2 * q + 1], ax, ay);
                    for ch in 0..c {
                        let plane = &x[ch * hw..(ch + 1) * hw];
                        let mut v = E::zero();
                        for i in 0..4 {
                            let mut row = E::zero();
                            for j in 0..4 {
                                if let Some(k) = s.idx[i][j] {
                                    row += plane[k] * s.wx[j];
                                }
                            }
                            v += row * s.wy[i];
                        }
                        out[ch * p + q] = v;
                    }
                }
            }
        }
    }

    /// Nearest or bicubic backward of one image: `gi [C, H·W] +=` the input's gradient and
    /// `gg [P, 2] +=` the grid's, each where asked for.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(crate) fn modes_bwd_image<E: Real>(
        &self,
        x: &[E],
        g: &[E],
        go: &[E],
        ax: &Axis<E>,
        ay: &Axis<E>,
        mut gi: Option<&mut [E]>,
        mut gg: Option<&mut [E]>,
    ) {
        let p = g.len() / 2;
        let hw = ax.size * ay.size;
        let c = x.len() / hw;
        match self.mode {
            Mode::Bilinear => unreachable!("bilinear has its own kernels"),
            Mode::Nearest => {
                // The grid's gradient is zero: nothing to add.
                if let Some(gi) = gi.as_deref_mut() {
                    for q in 0..p {
                        if let Some(i) = self.nearest_index(g[2 * q], g[2 * q + 1], ax, ay) {
                            for ch in 0..c {
                                gi[ch * hw + i] += go[ch * p + q];
                            }
                        }
                    }
                }
            }
            Mode::Bicubic => {
                for q in 0..p {
                    let s = self.cubic(g[2 * q], g[2 * q + 1], ax, ay);
                    let (mut dx, mut dy) = (E::zero(), E::zero());
                    for ch in 0..c {
                        let o = go[ch * p + q];
                        if let Some(gi) = gi.as_deref_mut() {
                            let plane = &mut gi[ch * hw..(ch + 1) * hw];
                            for i in 0..4 {
                                for j in 0..4 {
                                    if let Some(k) = s.idx[i][j] {
                                        plane[k] += o * s.wx[j] * s.wy[i];
                                    }
                                }
                            }
                        }
                        if gg.is_some() {
                            let plane = &x[ch * hw..(ch + 1) * hw];
                            for i in 0..4 {
                                for j in 0..4 {
                                    if let Some(k) = s.idx[i][j] {
                                        let v = plane[k] * o;
                                        dx += v * s.dwx[j] * s.wy[i];
                                        dy += v * s.dwy[i] * s.wx[j];
                                    }
                                }
                            }
                        }
                    }
                    if let Some(gg) = gg.as_deref_mut() {
                        gg[2 * q] += dx * ax.scale;
                        gg[2 * q + 1] += dy * ay.scale;
                    }
                }
            }
        }
    }
}

impl GridSample {
    /// Runs a nearest or bicubic kernel `f` at the process's ISA level, bicubic at most at AVX2:
    /// its loops vectorised 512 bits wide took 20–25% longer (Intel Xeon, BENCHMARKS.md).
    #[inline(always)]
    pub(crate) fn modes_level<R>(&self, f: impl FnOnce() -> R) -> R {
        if self.mode == Mode::Bicubic {
            crate::dispatch!(avx2, _I => f())
        } else {
            crate::dispatch!(_I => f())
        }
    }

    /// Whether the zero-padding fast paths apply: zeros padding, nearest or bicubic, no input
    /// gradient (the STN's case: the images are data).
    pub(crate) fn modes_fast(&self, input_grad: bool) -> bool {
        self.padding == Padding::Zeros && self.mode != Mode::Bilinear && !input_grad
    }

    /// Nearest, zero padding: each point's flat index in its plane, or `H·W` — the zero just past
    /// the plane in `nearest_zeros_fwd_image`'s copy — for a point outside (or not finite).
    /// Branch-free, so that it vectorises at the level's width.
    ///
    /// A loop, as in every kernel: a closure handed to `map` may be left out of line, outside the
    /// ISA level's `target_feature` context (see `isa`).
    #[inline(always)]
    fn nearest_flat_indices<E: Real>(g: &[E], ax: &Axis<E>, ay: &Axis<E>, idx: &mut [u32]) {
        let outside = (ax.size * ay.size) as i32;
        let w = ax.size as i32;
        for (p, i) in g.chunks_exact(2).zip(idx.iter_mut()) {
            let x = round_half_even(p[0] * ax.scale + ax.offset);
            let y = round_half_even(p[1] * ay.scale + ay.offset);
            // False for NaN too.
            let ok = (x >= E::zero()) & (x < ax.size_e) & (y >= E::zero()) & (y < ay.size_e);
            // Inside the plane when ok; wrapping, as it is discarded when not.
            let at = E::to_i32_sat(y)
                .wrapping_mul(w)
                .wrapping_add(E::to_i32_sat(x));
            *i = if ok { at } else { outside } as u32;
        }
    }

    /// The planes of `x` (`[C, H·W]`) in zero frames of [`CUBIC_BORDER`] pixels, into `framed`
    /// (zeroed where the frame is: only the image's pixels are written); returns the framed
    /// width and plane length.
    #[inline(always)]
    fn frame_cubic<E: Real>(x: &[E], h: usize, w: usize, framed: &mut Vec<E>) -> (usize, usize) {
        let fw = w + 2 * CUBIC_BORDER;
        let plane = fw * (h + 2 * CUBIC_BORDER);
        let c = x.len() / (h * w);
        if framed.len() != c * plane {
            framed.clear();
            framed.resize(c * plane, E::zero());
        }
        for (src, dst) in x.chunks_exact(h * w).zip(framed.chunks_exact_mut(plane)) {
            for r in 0..h {
                let o = (r + CUBIC_BORDER) * fw + CUBIC_BORDER;
                dst[o..o + w].copy_from_slice(&src[r * w..(r + 1) * w]);
            }
        }
        (fw, plane)
    }

    /// The fast forward of one image (see [`GridSample::modes_fast`]).
    #[inline(always)]
    pub(crate) fn modes_fast_fwd_image<E: Real>(
        &self,
        x: &[E],
        g: &[E],
        ax: &Axis<E>,
        ay: &Axis<E>,
        framed: &mut Vec<E>,
        out: &mut [E],
    ) {
        match self.mode {
            Mode::Nearest => {
                // The gathers want the level as a type, which this closure-run body lacks.
                crate::dispatch!(I => nearest_zeros_fwd_image::<E, I>(x, g, ax, ay, framed, out))
            }
            _ => {
                // As for nearest; bicubic stays at the AVX2 level (see `modes_level`).
                crate::dispatch!(avx2, I => cubic_zeros_fwd_image::<E, I>(x, g, ax, ay, framed, out))
            }
        }
    }
}

/// Nearest, zero padding, one image `x [C, H, W]` at grid `g [P, 2]` into `out [C, P]`: each
/// plane copied in front of one zero, which the points outside read, then eight points at a time
/// gathered (`SampleKernels::gather`; LLVM does not vectorise the gather by itself).
#[inline(always)]
fn nearest_zeros_fwd_image<E: Real, I: Isa>(
    x: &[E],
    g: &[E],
    ax: &Axis<E>,
    ay: &Axis<E>,
    framed: &mut Vec<E>,
    out: &mut [E],
) {
    let p = g.len() / 2;
    let hw = ax.size * ay.size;
    let mut idx = vec![0u32; p];
    GridSample::nearest_flat_indices(g, ax, ay, &mut idx);
    framed.clear();
    framed.resize(hw + 1, E::zero());
    for (plane, o) in x.chunks_exact(hw).zip(out.chunks_exact_mut(p)) {
        framed[..hw].copy_from_slice(plane);
        let f = &framed[..=hw];
        let mut o8 = o.chunks_exact_mut(8);
        let mut i8 = idx.chunks_exact(8);
        for (o, i) in (&mut o8).zip(&mut i8) {
            let i: &[u32; 8] = i.try_into().expect("eight");
            V8::<E, I>::store(o, E::gather::<I>(f, i));
        }
        for (o, &i) in o8.into_remainder().iter_mut().zip(i8.remainder()) {
            *o = f[(i as usize).min(hw)];
        }
    }
}

impl GridSample {
    /// The fast grid gradient of one image (nearest's is zero: nothing to add).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(crate) fn modes_fast_bwd_grid_image<E: Real>(
        &self,
        x: &[E],
        g: &[E],
        go: &[E],
        ax: &Axis<E>,
        ay: &Axis<E>,
        framed: &mut Vec<E>,
        gg: &mut [E],
    ) {
        if self.mode == Mode::Nearest {
            return;
        }
        crate::dispatch!(avx2, I => cubic_zeros_bwd_grid_image::<E, I>(x, g, go, ax, ay, framed, gg))
    }
}

/// Bicubic, zero padding: the points `s..s + 8` of grid `g` (x, y pairs; fewer at the end) in
/// the frame of [`CUBIC_BORDER`] ([`SampleKernels::cubic_group8`]).
#[inline(always)]
fn cubic_group<E: Real, I: Isa>(
    g: &[E],
    s: usize,
    ax: &Axis<E>,
    ay: &Axis<E>,
    grads: bool,
) -> CubicGroup<E> {
    let p = g.len() / 2;
    let map = |a: &Axis<E>| AxisMap {
        scale: a.scale,
        offset: a.offset,
        size: a.size,
    };
    let end = (s + 8).min(p);
    E::cubic_group8::<I>(&g[2 * s..2 * end], map(ax), map(ay), CUBIC_BORDER, grads)
}

/// Bicubic, zero padding, one image `x [C, H, W]` at grid `g [P, 2]` into `out [C, P]`: eight
/// points at a time ([`SampleKernels::cubic8`]), their weights made once for every channel.
#[inline(always)]
fn cubic_zeros_fwd_image<E: Real, I: Isa>(
    x: &[E],
    g: &[E],
    ax: &Axis<E>,
    ay: &Axis<E>,
    framed: &mut Vec<E>,
    out: &mut [E],
) {
    let p = g.len() / 2;
    let (h, w) = (ay.size, ax.size);
    let (fw, plane) = GridSample::frame_cubic(x, h, w, framed);
    for s in (0..p).step_by(8) {
        let q = cubic_group::<E, I>(g, s, ax, ay, false);
        let n = (p - s).min(8);
        for (f, o) in framed.chunks_exact(plane).zip(out.chunks_exact_mut(p)) {
            let [v] = E::cubic8::<I, 1>(f, fw, &q.base, [&q.w]);
            o[s..s + n].copy_from_slice(&V8::<E, I>::lanes(v).as_ref()[..n]);
        }
    }
}

/// The grid's gradient of [`cubic_zeros_fwd_image`] (`gg += `): each point's sums over the
/// channels of `Σ_ij v_ij·wy_i·w'x_j` and `Σ_ij v_ij·w'y_i·wx_j`, times its output's gradient.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn cubic_zeros_bwd_grid_image<E: Real, I: Isa>(
    x: &[E],
    g: &[E],
    go: &[E],
    ax: &Axis<E>,
    ay: &Axis<E>,
    framed: &mut Vec<E>,
    gg: &mut [E],
) {
    let p = g.len() / 2;
    let (h, w) = (ay.size, ax.size);
    let (fw, plane) = GridSample::frame_cubic(x, h, w, framed);
    for s in (0..p).step_by(8) {
        let q = cubic_group::<E, I>(g, s, ax, ay, true);
        let n = (p - s).min(8);
        let (mut acc_x, mut acc_y) = (V8::<E, I>::splat(E::zero()), V8::<E, I>::splat(E::zero()));
        for (f, go) in framed.chunks_exact(plane).zip(go.chunks_exact(p)) {
            // The padding points' output gradient is zero.
            let mut o = [E::zero(); 8];
            o[..n].copy_from_slice(&go[s..s + n]);
            let o = V8::<E, I>::load(&o);
            let [sx, sy] = E::cubic8::<I, 2>(f, fw, &q.base, [&q.dx, &q.dy]);
            acc_x = V8::<E, I>::fma(sx, o, acc_x);
            acc_y = V8::<E, I>::fma(sy, o, acc_y);
        }
        let (acc_x, acc_y) = (V8::<E, I>::lanes(acc_x), V8::<E, I>::lanes(acc_y));
        for k in 0..n {
            gg[2 * (s + k)] += acc_x.as_ref()[k] * ax.scale;
            gg[2 * (s + k) + 1] += acc_y.as_ref()[k] * ay.scale;
        }
    }
}

/// How the sampler interpolates, as PyTorch's `grid_sample` `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The four nearest pixels, weighted by distance (the default).
    #[default]
    Bilinear = 0,
    /// The nearest pixel (ties to even); no gradient for the grid.
    Nearest = 1,
    /// Cubic convolution over 4 × 4 pixels (A = −0.75).
    Bicubic = 2,
}

impl Mode {
    /// The CUDA kernels' code of the mode (0 bilinear, 1 nearest, 2 bicubic).
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The name PyTorch and ONNX opsets 16–19 use (`bilinear`, `nearest`, `bicubic`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Bilinear => "bilinear",
            Mode::Nearest => "nearest",
            Mode::Bicubic => "bicubic",
        }
    }

    /// ONNX opset 20's spelling (`linear`, `nearest`, `cubic`).
    pub fn onnx20_name(self) -> &'static str {
        match self {
            Mode::Bilinear => "linear",
            Mode::Nearest => "nearest",
            Mode::Bicubic => "cubic",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bilinear" | "linear" => Ok(Mode::Bilinear),
            "nearest" => Ok(Mode::Nearest),
            "bicubic" | "cubic" => Ok(Mode::Bicubic),
            o => Err(format!(
                "unknown sampling mode '{o}': expected bilinear, nearest or bicubic"
            )),
        }
    }
}
