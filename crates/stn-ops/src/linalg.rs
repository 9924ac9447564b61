//! The matrix products of the convolution, for its shapes: few rows (output channels, 8–20) times
//! long rows (output pixels), where the rows of one operand are *offsets into an image* rather than
//! a packed matrix. That is the implicit im2col of `conv2d`: row `(c, ki, kj)` of the im2col matrix
//! is the image plane from offset `ki·W + kj` on, so no im2col copy is made at all.
//!
//! A general GEMM spends more time packing such skinny operands than multiplying them (measured:
//! `matrixmultiply` with an explicit im2col took 2.5× longer); these kernels keep a register block
//! of the result and stream the long rows once per block.

use crate::isa::Isa;
use crate::simd::{Vector, V};
use crate::Real;

/// Most rows of a register block: 6 rows of two vectors are 12 accumulators (of AVX2's 16
/// registers; AVX-512's 32 would hold more, but a block's rows are fixed by the packing, made
/// before the level is known, and its columns are twice as many already).
const MB: usize = 6;

/// The row blocks of an `m`-row left operand: `(first row, rows)`, up to MB rows each, split
/// evenly (10 = 5 + 5, not 6 + 4).
fn row_blocks(m: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut i = 0;
    std::iter::from_fn(move || {
        let left = m - i;
        if left == 0 {
            return None;
        }
        let rows = if left <= MB {
            left
        } else {
            left.div_ceil(left.div_ceil(MB))
        };
        i += rows;
        Some((i - rows, rows))
    })
}

/// The left operand `a [m, k]` of the products, packed for the kernel: row blocks of up to MB
/// rows, each p-major (`a[i + r, p]` at `i·k + p·rows + r`). Packed once and shared by every
/// product that uses it — a conv's weights serve every image of a batch (packing them per image
/// was a seventh of the products' time).
pub(crate) struct PackedA<E> {
    m: usize,
    k: usize,
    data: Vec<E>,
}

impl<E: Real> PackedA<E> {
    /// Packs `a[i, p] = a[i·rsa + p·csa]` (so `a` may be a transpose).
    pub(crate) fn new(m: usize, k: usize, a: &[E], (rsa, csa): (usize, usize)) -> Self {
        assert!(m == 0 || k == 0 || (m - 1) * rsa + (k - 1) * csa < a.len());
        let mut data = Vec::with_capacity(m * k);
        for (i, rows) in row_blocks(m) {
            for p in 0..k {
                data.extend((0..rows).map(|r| a[(i + r) * rsa + p * csa]));
            }
        }
        PackedA { m, k, data }
    }

    /// `(m, k)`.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.m, self.k)
    }
}

/// `c[coff[i] + j] += Σ_p a[i·rsa + p·csa] · b[boff[p] + j]` for `i < m`, `j < n`, `p < k`.
///
/// `a` may be a transpose (through its strides). Rows of `c` may overlap (the transpose of an
/// implicit im2col scatters into overlapping windows): each row is added in turn.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_acc_rows<E: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: &[E],
    sa: (usize, usize),
    b: &[E],
    boff: &[usize],
    c: &mut [E],
    coff: &[usize],
) {
    crate::dispatch!(I => gemm::<E, I, true>(&PackedA::new(m, k, a, sa), n, b, boff, c, coff))
}

/// [`gemm`] at the process's ISA level, out of line: one compiled function per level. Why not
/// inlined into an op's per-image body (dispatched as a whole): in one function that large, LLVM
/// stopped inlining the small iterator helpers around the kernels (a `Zip::new` call per row: 4%
/// of a training step).
#[inline(never)]
pub(crate) fn gemm_any<E: Real, const ACC: bool>(
    a: &PackedA<E>,
    n: usize,
    b: &[E],
    boff: &[usize],
    c: &mut [E],
    coff: &[usize],
) {
    crate::dispatch!(I => gemm::<E, I, ACC>(a, n, b, boff, c, coff))
}

/// `c[coff[i] + j] (+)= Σ_p a[i, p] · b[boff[p] + j]` for `i < m`, `j < n`, `p < k`: added to
/// `c` when `ACC`, else stored (then `c` is neither read nor needs zeroing, and its rows must not
/// overlap). With `ACC`, rows of `c` may overlap (the transpose of an implicit im2col scatters
/// into overlapping windows): each row is added in turn.
///
/// Register blocks of up to MB rows by two of level `I`'s vectors (16 columns with AVX2), or by
/// four with AVX-512 (64 columns: its 32 registers hold 6 × 4 accumulators, and each broadcast of
/// `a` then serves four loads of `b`, not two). The products and their order are the same for
/// every block width.
#[inline(always)]
pub(crate) fn gemm<E: Real, I: Isa, const ACC: bool>(
    a: &PackedA<E>,
    n: usize,
    b: &[E],
    boff: &[usize],
    c: &mut [E],
    coff: &[usize],
) {
    if I::LEVEL == crate::isa::Level::Avx512 {
        gemm_blocks::<E, I, ACC, 4>(a, n, b, boff, c, coff)
    } else {
        gemm_blocks::<E, I, ACC, 2>(a, n, b, boff, c, coff)
    }
}

/// [`gemm`] in blocks of up to MB rows by `NV` vectors.
#[inline(always)]
fn gemm_blocks<E: Real, I: Isa, const ACC: bool, const NV: usize>(
    a: &PackedA<E>,
    n: usize,
    b: &[E],
    boff: &[usize],
    c: &mut [E],
    coff: &[usize],
) {
    let nb = NV * V::<E, I>::N;
    let (m, k) = (a.m, a.k);
    assert!(boff.len() == k && coff.len() == m);
    assert!(boff.iter().all(|&o| o + n <= b.len()) && coff.iter().all(|&o| o + n <= c.len()));
    let full = n / nb * nb;
    let rem = n - full;
    // The last, partial column block: read in place when every row of `b` has a whole block
    // there (what lies past a row's end only reaches result columns that are not stored), else
    // zero-padded to a whole block once for every row block. In place saves a `k·2N` copy and
    // its allocation per call (a tenth of localization.3's fused forward).
    let in_place = rem == 0 || boff.iter().all(|&o| o + full + nb <= b.len());
    let mut tail = Vec::new();
    let mut tail_off = Vec::new();
    if !in_place {
        tail.reserve(k * nb);
        for &o in boff {
            tail_off.push(tail.len());
            tail.extend_from_slice(&b[o + full..o + n]);
            tail.extend(std::iter::repeat_n(E::zero(), nb - rem));
        }
    }
    for (i, rows) in row_blocks(m) {
        let ap = &a.data[i * k..(i + rows) * k];
        let cr = &coff[i..i + rows];
        let mut j0 = 0;
        while j0 < n {
            let (bb, bo, j, width) = if j0 < full {
                (b, boff, j0, nb)
            } else if in_place {
                (b, boff, j0, rem)
            } else {
                (&tail[..], &tail_off[..], 0, rem)
            };
            match rows {
                6 => block::<E, V<E, I>, 6, NV, ACC>(k, ap, bb, bo, j, c, cr, j0, width),
                5 => block::<E, V<E, I>, 5, NV, ACC>(k, ap, bb, bo, j, c, cr, j0, width),
                4 => block::<E, V<E, I>, 4, NV, ACC>(k, ap, bb, bo, j, c, cr, j0, width),
                3 => block::<E, V<E, I>, 3, NV, ACC>(k, ap, bb, bo, j, c, cr, j0, width),
                2 => block::<E, V<E, I>, 2, NV, ACC>(k, ap, bb, bo, j, c, cr, j0, width),
                _ => block::<E, V<E, I>, 1, NV, ACC>(k, ap, bb, bo, j, c, cr, j0, width),
            }
            j0 += nb;
        }
    }
}

/// One R×(NV·N) block of `gemm` (N: the vector's lanes), accumulated in registers: `a` packed as
/// `a[p·R + r]`; `b` rows read at `boff[p] + jb`, NV·N entries each; result rows at `coff[r] + j0`,
/// `width` of them.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block<E: Real, L: Vector<E>, const R: usize, const NV: usize, const ACC: bool>(
    k: usize,
    a: &[E],
    b: &[E],
    boff: &[usize],
    jb: usize,
    c: &mut [E],
    coff: &[usize],
    j0: usize,
    width: usize,
) {
    // `gemm` checked every row range against the slices (and pads the tail block);
    // checking each element again costs a third of the kernel's time.
    let nv = L::N;
    assert!(a.len() >= k * R && boff.len() >= k && width <= NV * nv);
    debug_assert!(boff[..k].iter().all(|&o| o + jb + NV * nv <= b.len()));
    let zero = L::splat(E::zero());
    let mut acc = [[zero; NV]; R];
    for p in 0..k {
        // SAFETY: p < k ≤ boff.len(), and boff[p] + jb + NV·N ≤ b.len() (asserted above).
        let bp = unsafe { b.get_unchecked(*boff.get_unchecked(p) + jb..) };
        let bv: [L; NV] = std::array::from_fn(|v| L::load(&bp[v * nv..(v + 1) * nv]));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: p·R + r < k·R ≤ a.len().
            let av = L::splat(unsafe { *a.get_unchecked(p * R + r) });
            for v in 0..NV {
                acc_r[v] = L::fma(av, bv[v], acc_r[v]);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let row = &mut c[coff[r] + j0..coff[r] + j0 + width];
        if width == NV * nv {
            for (v, &a) in acc_r.iter().enumerate() {
                let dst = &mut row[v * nv..(v + 1) * nv];
                if ACC {
                    L::add_into(dst, a);
                } else {
                    L::store(dst, a);
                }
            }
        } else {
            for (v, chunk) in row.chunks_mut(nv).enumerate() {
                let vals = L::lanes(acc_r[v]);
                for (cv, &x) in chunk.iter_mut().zip(vals.as_ref()) {
                    *cv = if ACC { *cv + x } else { x };
                }
            }
        }
    }
}

/// Lane-wise dot products of each of the R rows `a` (equal lengths, a multiple of N) with each
/// of the Q rows `bs` (as long): R·Q accumulators, R + Q loads per R·Q FMAs. Each sum runs over
/// the columns in order whatever R and Q are, so the sums are the same bits for every block shape.
#[inline(always)]
fn dots<E: Real, L: Vector<E>, const R: usize, const Q: usize>(
    a: [&[E]; R],
    bs: [&[E]; Q],
) -> [[L; Q]; R] {
    let (len, nv) = (a[0].len(), L::N);
    assert!(a.iter().all(|a| a.len() == len) && bs.iter().all(|b| b.len() == len));
    assert!(len.is_multiple_of(nv));
    let z = L::splat(E::zero());
    let mut s = [[z; Q]; R];
    for j in (0..len).step_by(nv) {
        // SAFETY: j + N ≤ len, every row's length (asserted above).
        let x: [L; R] = std::array::from_fn(|r| L::load(unsafe { a[r].get_unchecked(j..j + nv) }));
        for t in 0..Q {
            // SAFETY: as above.
            let y = L::load(unsafe { bs[t].get_unchecked(j..j + nv) });
            for r in 0..R {
                s[r][t] = L::fma(x[r], y, s[r][t]);
            }
        }
    }
    s
}

/// `dots`' sums in the first Q of 4 places (the others repeat the last; they are not used).
#[inline(always)]
fn pad<L: Copy, const R: usize, const Q: usize>(s: [[L; Q]; R]) -> [[L; 4]; R] {
    s.map(|s| std::array::from_fn(|t| s[t.min(Q - 1)]))
}

/// Dot products of long rows, `Σ_j a[i·n + j] · b[boff[p] + j]` for `i < m`, `p < k`, added to
/// an accumulator that keeps N partial sums per result (a vector's lanes at the level of
/// [`DotAcc::add_products`]; [`DotAcc::take_sums`] reduces them once per group of images, instead
/// of after every image). Four rows of `b` share each load of `a`.
pub(crate) struct DotAcc<E: Real> {
    /// `m·k` vectors of `width` lanes each, as scalars.
    lanes: Vec<E>,
    width: usize,
    m: usize,
    k: usize,
    /// Nothing added since the last `take_sums`: the next products are stored, not added (no
    /// zeroing between uses).
    fresh: bool,
}

impl<E: Real> DotAcc<E> {
    pub(crate) fn new(m: usize, k: usize) -> Self {
        DotAcc {
            lanes: Vec::new(),
            width: 0,
            m,
            k,
            fresh: true,
        }
    }

    /// [`DotAcc::add_products`] at the process's ISA level, out of line (as [`gemm_any`]).
    #[inline(never)]
    pub(crate) fn add_products_any(&mut self, n: usize, a: &[E], b: &[E], boff: &[usize]) {
        crate::dispatch!(I => self.add_products::<I>(n, a, b, boff))
    }

    /// Adds the products at level `I` (every call between two `take_sums` at the same level).
    #[inline(always)]
    pub(crate) fn add_products<I: Isa>(&mut self, n: usize, a: &[E], b: &[E], boff: &[usize]) {
        let (m, k, nv) = (self.m, self.k, V::<E, I>::N);
        let store = std::mem::replace(&mut self.fresh, false);
        if store {
            // Stored over, so any contents will do.
            self.width = nv;
            self.lanes.resize(m * k * nv, E::zero());
        }
        assert_eq!(self.width, nv, "one level between take_sums");
        assert!(a.len() >= m * n && boff.len() == k);
        assert!(boff.iter().all(|&o| o + n <= b.len()));
        let full = n / nv * nv;
        // R rows of a against four rows of b: 4·R accumulators, R + 4 loads per 4·R FMAs, every
        // slice cut to its exact length first so the loop has no bounds checks. R = 4 with
        // AVX-512's 32 registers (16 accumulators: 8 loads per 16 FMAs, where two rows took 6 per
        // 8), 2 with AVX2's 16.
        let mut i = 0;
        while i < m {
            let left = m - i;
            i += if I::LEVEL == crate::isa::Level::Avx512 && left >= 4 {
                self.row_block::<I, 4>(i, n, full, a, b, boff, store);
                4
            } else if left >= 2 {
                self.row_block::<I, 2>(i, n, full, a, b, boff, store);
                2
            } else {
                self.row_block::<I, 1>(i, n, full, a, b, boff, store);
                1
            };
        }
    }

    /// Rows `i..i + R` of [`DotAcc::add_products`]'s products.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn row_block<I: Isa, const R: usize>(
        &mut self,
        i: usize,
        n: usize,
        full: usize,
        a: &[E],
        b: &[E],
        boff: &[usize],
        store: bool,
    ) {
        let (k, nv) = (self.k, V::<E, I>::N);
        let lanes = &mut self.lanes;
        let ar: [&[E]; R] = std::array::from_fn(|r| &a[(i + r) * n..(i + r) * n + full]);
        let mut p = 0;
        while p < k {
            // Groups of 4 rows of b; the last group as long as what is left (k = 25 in conv1: a
            // group of 4 repeating its last row wasted a ninth of the products).
            let q = (k - p).min(4);
            let row = |t: usize| &b[boff[p + t]..boff[p + t] + full];
            let sums: [[V<E, I>; 4]; R] = match q {
                4 => dots::<E, V<E, I>, R, 4>(ar, std::array::from_fn(row)),
                3 => pad(dots::<E, V<E, I>, R, 3>(ar, std::array::from_fn(row))),
                2 => pad(dots::<E, V<E, I>, R, 2>(ar, std::array::from_fn(row))),
                _ => pad(dots::<E, V<E, I>, R, 1>(ar, std::array::from_fn(row))),
            };
            for (r, sr) in sums.iter().enumerate() {
                for (t, &sum) in sr.iter().take(q).enumerate() {
                    let idx = (i + r) * k + p + t;
                    let l = &mut lanes[idx * nv..(idx + 1) * nv];
                    let v = if store {
                        sum
                    } else {
                        V::<E, I>::vadd(V::<E, I>::load(l), sum)
                    };
                    V::<E, I>::store(l, v);
                }
            }
            p += q;
        }
        // The last n % N columns, in masked lanes: a scalar loop per (row, offset) was a tenth of
        // localization.3's backward (196 columns per group of images).
        if full < n {
            for r in i..i + R {
                let ar = V::<E, I>::load_head(&a[r * n + full..], n - full);
                for (p, &o) in boff.iter().enumerate() {
                    let bt = V::<E, I>::load_head(&b[o + full..], n - full);
                    let l = &mut lanes[(r * k + p) * nv..(r * k + p + 1) * nv];
                    V::<E, I>::store(l, V::<E, I>::fma(ar, bt, V::<E, I>::load(l)));
                }
            }
        }
    }

    /// The finished sums `[m·k]` of the products since the last call (zero if none), and a
    /// fresh start. Why per call and not lanes merged across calls: a group of images' partial
    /// sums as lanes were 8× the weight gradient (160 KB per group for conv2), zeroed per group
    /// and read again by a serial merge.
    pub(crate) fn take_sums(&mut self) -> Vec<E> {
        let fresh = std::mem::replace(&mut self.fresh, true);
        if fresh {
            return vec![E::zero(); self.m * self.k];
        }
        crate::dispatch!(I => self.sums_at::<I>())
    }

    /// Each result's lanes summed in lane order from zero — a scalar fold's bits — N results at
    /// a time with [`fold_lanes`]. Why: as a scalar fold per result (16 dependent adds each with
    /// AVX-512) the sums were 4.5% of a training epoch on Zen 5.
    #[inline(always)]
    fn sums_at<I: Isa>(&self) -> Vec<E> {
        let (count, w) = (self.m * self.k, self.width);
        let mut out = vec![E::zero(); count];
        let fold = |l: &[E]| l.iter().fold(E::zero(), |s, &v| s + v);
        let mut done = 0;
        if w == V::<E, I>::N && w.is_power_of_two() && w <= MAX_LANES {
            done = count / w * w;
            for (src, dst) in self.lanes[..done * w]
                .chunks_exact(w * w)
                .zip(out[..done].chunks_exact_mut(w))
            {
                fold_lanes::<E, V<E, I>>(src, dst);
            }
        }
        for (o, l) in out[done..]
            .iter_mut()
            .zip(self.lanes[done * w..count * w].chunks_exact(w))
        {
            *o = fold(l);
        }
        out
    }
}

/// The widest vector [`fold_lanes`] takes (AVX-512's 16 f32).
const MAX_LANES: usize = 16;

/// `out[e] = ((0 + x[e][0]) + x[e][1]) + … + x[e][N−1]` for the N vectors `x[e]` of `src`
/// (`N·N` values, one vector after another): each vector's lanes summed in order, as a scalar
/// fold sums them, so the bits are the fold's. The vectors are transposed first — log₂N rounds of
/// interleaving the first half of them with the second, after which vector `l` holds lane `l` of
/// every `x[e]` — and then N vector adds make all N sums at once.
#[inline(always)]
fn fold_lanes<E: Real, L: Vector<E>>(src: &[E], out: &mut [E]) {
    let nv = L::N;
    assert!(nv.is_power_of_two() && nv <= MAX_LANES && src.len() >= nv * nv && out.len() >= nv);
    let z = L::splat(E::zero());
    let mut v = [z; MAX_LANES];
    for (e, x) in v.iter_mut().take(nv).enumerate() {
        *x = L::load(&src[e * nv..]);
    }
    let mut round = 1;
    while round < nv {
        let mut t = [z; MAX_LANES];
        for i in 0..nv / 2 {
            [t[2 * i], t[2 * i + 1]] = L::interleave(v[i], v[i + nv / 2]);
        }
        v = t;
        round *= 2;
    }
    let sum = v[..nv].iter().fold(z, |s, &x| L::vadd(s, x));
    L::store(out, sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, f: f64) -> Vec<f64> {
        (0..len).map(|v| (v as f64 * f).sin()).collect()
    }

    #[test]
    fn lane_sums_are_the_scalar_folds_bits() {
        // Values of every magnitude and sign, -0.0 among them: a sum in another order or from
        // another start would differ in some last bit.
        let vals: Vec<f32> = (0..40 * 16)
            .map(|i| match i % 7 {
                0 => -0.0,
                1 => ((i as f32) * 0.37).sin() * 1e6,
                2 => 1e-7 * (i as f32),
                _ => ((i as f32) * 1.31).cos(),
            })
            .collect();
        let fold = |l: &[f32]| l.iter().fold(0.0f32, |s, &v| s + v);
        crate::dispatch!(I => {
            let nv = V::<f32, I>::N;
            // 40 results: whole blocks of N and a remainder.
            let acc = DotAcc::<f32> {
                lanes: vals[..40 * nv].to_vec(),
                width: nv,
                m: 8,
                k: 5,
                fresh: false,
            };
            let got = acc.sums_at::<I>();
            let want: Vec<f32> = vals[..40 * nv].chunks_exact(nv).map(fold).collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "at {}", I::LEVEL);
        });
    }

    #[test]
    fn products_match_the_naive_ones_for_every_block_shape() {
        for (m, k, n) in [
            (1, 1, 1),
            (4, 3, 16),
            (5, 7, 17),
            (10, 25, 100),
            (3, 2, 49),
            (8, 30, 15),
        ] {
            let a = data(m * k, 0.37);
            // b rows at scattered, overlapping offsets of one buffer, as in the implicit im2col.
            let b = data(n + 3 * k + 5, 0.11);
            let boff: Vec<usize> = (0..k).map(|p| (p * 3) % (3 * k + 5)).collect();
            let coff: Vec<usize> = (0..m).map(|i| i * n).collect();
            let mut c = data(m * n, 0.5);
            let want: Vec<f64> = (0..m * n)
                .map(|ij| {
                    c[ij]
                        + (0..k)
                            .map(|p| a[(ij / n) * k + p] * b[boff[p] + ij % n])
                            .sum::<f64>()
                })
                .collect();
            let c0 = c.clone();
            gemm_acc_rows(m, k, n, &a, (k, 1), &b, &boff, &mut c, &coff);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-12, "{m}×{k}×{n}");
            }
            // Stored instead of added: the products alone, whatever `c` held.
            let mut c3 = vec![f64::NAN; m * n];
            crate::dispatch!(I => gemm::<f64, I, false>(
                &PackedA::new(m, k, &a, (k, 1)),
                n,
                &b,
                &boff,
                &mut c3,
                &coff,
            ));
            for ((x, y), z) in c3.iter().zip(&want).zip(&c0) {
                assert!((x - (y - z)).abs() < 1e-12, "stored {m}×{k}×{n}");
            }
            // a given transposed.
            let at: Vec<f64> = (0..k * m).map(|pi| a[(pi % m) * k + pi / m]).collect();
            let mut c2 = data(m * n, 0.5);
            gemm_acc_rows(m, k, n, &at, (1, m), &b, &boff, &mut c2, &coff);
            for (x, y) in c2.iter().zip(&want) {
                assert!((x - y).abs() < 1e-12, "transposed {m}×{k}×{n}");
            }
            // Dot products: c2[i][p] = Σ_j a2[i][j]·b[boff[p]+j].
            let a2 = data(m * n, 0.23);
            let mut d = data(m * k, 0.9);
            let want: Vec<f64> = (0..m * k)
                .map(|ip| {
                    d[ip]
                        + (0..n)
                            .map(|j| a2[(ip / k) * n + j] * b[boff[ip % k] + j])
                            .sum::<f64>()
                })
                .collect();
            let mut acc = DotAcc::new(m, k);
            crate::dispatch!(I => acc.add_products::<I>(n, &a2, &b, &boff));
            for (d, s) in d.iter_mut().zip(acc.take_sums()) {
                *d += s;
            }
            // Taken: a fresh start, the next products stored over the old ones.
            assert!(acc.take_sums().iter().all(|&s| s == 0.0));
            crate::dispatch!(I => acc.add_products::<I>(n, &a2, &b, &boff));
            crate::dispatch!(I => acc.add_products::<I>(n, &a2, &b, &boff));
            for ((x, y), z) in acc.take_sums().iter().zip(&want).zip(&data(m * k, 0.9)) {
                assert!((x - 2.0 * (y - z)).abs() < 1e-12, "twice {m}×{k}×{n}");
            }
            for (x, y) in d.iter().zip(&want) {
                assert!((x - y).abs() < 1e-12, "nt {m}×{k}×{n}");
            }
        }
    }
}
