// CUDA kernels of the stn ops (f32), one source for two compilers:
//  * nvcc / NVRTC for the GPU (feature `cuda`), loaded into dfdx's CUDA device;
//  * a host C++ compiler for the tests (no GPU needed): each kernel's body is a grid-stride loop
//    over its work items, which on the host runs as one sequential loop; the tests compare the
//    results with the CPU ops, so the index arithmetic, bounds handling and accumulation are
//    checked in CI.
// Semantics are PyTorch's, as in the Rust CPU kernels (see grid_sample.rs for the formulas).

#ifdef __CUDACC__
#define KERNEL extern "C" __global__
#define FIRST (long)(blockIdx.x * blockDim.x + threadIdx.x)
#define STEP (long)(blockDim.x * gridDim.x)
#define ATOMIC_ADD(p, v) atomicAdd((p), (v))
#define FLOORF floorf
#else
#include <math.h>
#define KERNEL extern "C"
#define FIRST 0L
#define STEP 1L
#define ATOMIC_ADD(p, v) (*(p) += (v))
#define FLOORF floorf
#endif

// PyTorch's `_linspace_from_neg_one`, as affine_grid.rs computes it.
#ifdef __CUDACC__
__device__
#endif
static inline float base_coord(long i, long n, int align_corners) {
    if (n <= 1) return 0.0f;
    float step = 2.0f / (float)(n - 1);
    float v = (i < n / 2) ? -1.0f + step * (float)i : 1.0f - step * (float)(n - i - 1);
    return align_corners ? v : v * (float)(n - 1) / (float)n;
}

// grid[b, i, j, :] = theta[b] · (x_j, y_i, 1); one item per grid point.
KERNEL void affine_grid_fwd(const float* theta, float* grid, long n, long h, long w, int align_corners) {
    for (long t = FIRST; t < n * h * w; t += STEP) {
        long b = t / (h * w), i = (t / w) % h, j = t % w;
        float x = base_coord(j, w, align_corners), y = base_coord(i, h, align_corners);
        const float* th = theta + 6 * b;
        grid[2 * t] = x * th[0] + y * th[1] + th[2];
        grid[2 * t + 1] = x * th[3] + y * th[4] + th[5];
    }
}

// grad_theta[b] += Σ_ij grad_grid[b, i, j, :] ⊗ (x_j, y_i, 1); one item per grid point.
KERNEL void affine_grid_bwd(const float* grad_grid, float* grad_theta, long n, long h, long w, int align_corners) {
    for (long t = FIRST; t < n * h * w; t += STEP) {
        long b = t / (h * w), i = (t / w) % h, j = t % w;
        float x = base_coord(j, w, align_corners), y = base_coord(i, h, align_corners);
        float gx = grad_grid[2 * t], gy = grad_grid[2 * t + 1];
        float* g = grad_theta + 6 * b;
        ATOMIC_ADD(g + 0, gx * x); ATOMIC_ADD(g + 1, gx * y); ATOMIC_ADD(g + 2, gx);
        ATOMIC_ADD(g + 3, gy * x); ATOMIC_ADD(g + 4, gy * y); ATOMIC_ADD(g + 5, gy);
    }
}

// The projective grid's clamp of w away from 0 (ProjectiveGrid::MIN_W in projective_grid.rs):
// returns the w divided by, and sets *clamped.
#ifdef __CUDACC__
__device__
#endif
static inline float clamp_w(float w, int* clamped) {
    const float MIN_W = 1e-3f;
    *clamped = !(fabsf(w) >= MIN_W) && w == w;
    if (!*clamped) return w;
    return w < 0.0f ? -MIN_W : MIN_W;
}

// grid[b, i, j, :] = (u / w, v / w) of the homography h[b] (8 values, h[8] = 1); one item per point.
KERNEL void projective_grid_fwd(const float* h, float* grid, long n, long hh, long w, int align_corners) {
    for (long t = FIRST; t < n * hh * w; t += STEP) {
        long b = t / (hh * w), i = (t / w) % hh, j = t % w;
        float x = base_coord(j, w, align_corners), y = base_coord(i, hh, align_corners);
        const float* m = h + 8 * b;
        int clamped;
        float d = clamp_w(x * m[6] + y * m[7] + 1.0f, &clamped);
        grid[2 * t] = (x * m[0] + y * m[1] + m[2]) / d;
        grid[2 * t + 1] = (x * m[3] + y * m[4] + m[5]) / d;
    }
}

// grad_h[b] += the homography's gradient from grad_grid; one item per grid point (atomics).
KERNEL void projective_grid_bwd(const float* h, const float* grad_grid, float* grad_h, long n, long hh, long w,
                                int align_corners) {
    for (long t = FIRST; t < n * hh * w; t += STEP) {
        long b = t / (hh * w), i = (t / w) % hh, j = t % w;
        float x = base_coord(j, w, align_corners), y = base_coord(i, hh, align_corners);
        const float* m = h + 8 * b;
        float u = x * m[0] + y * m[1] + m[2], v = x * m[3] + y * m[4] + m[5];
        int clamped;
        float d = clamp_w(x * m[6] + y * m[7] + 1.0f, &clamped);
        float gx = grad_grid[2 * t], gy = grad_grid[2 * t + 1];
        float gu = gx / d, gv = gy / d, gw = clamped ? 0.0f : -(gx * u + gy * v) / (d * d);
        float* g = grad_h + 8 * b;
        ATOMIC_ADD(g + 0, gu * x); ATOMIC_ADD(g + 1, gu * y); ATOMIC_ADD(g + 2, gu);
        ATOMIC_ADD(g + 3, gv * x); ATOMIC_ADD(g + 4, gv * y); ATOMIC_ADD(g + 5, gv);
        ATOMIC_ADD(g + 6, gw * x); ATOMIC_ADD(g + 7, gw * y);
    }
}

// grid[b, q, :] = Σ_k matrix[q, k] · points[b, k, :] (the thin-plate spline); one item per (b, q).
KERNEL void tps_grid_fwd(const float* points, const float* matrix, float* grid, long n, long k, long p) {
    for (long t = FIRST; t < n * p; t += STEP) {
        long b = t / p, q = t % p;
        float gx = 0.0f, gy = 0.0f;
        for (long kk = 0; kk < k; kk++) {
            float m = matrix[q * k + kk];
            gx += m * points[(b * k + kk) * 2];
            gy += m * points[(b * k + kk) * 2 + 1];
        }
        grid[2 * t] = gx;
        grid[2 * t + 1] = gy;
    }
}

// grad_points[b, k, d] += Σ_q matrix[q, k] · grad_grid[b, q, d]; one item per (b, k, d).
KERNEL void tps_grid_bwd(const float* matrix, const float* grad_grid, float* grad_points, long n, long k, long p) {
    for (long t = FIRST; t < n * k * 2; t += STEP) {
        long b = t / (2 * k), kk = (t / 2) % k, d = t % 2;
        float acc = 0.0f;
        for (long q = 0; q < p; q++) acc += matrix[q * k + kk] * grad_grid[(b * p + q) * 2 + d];
        grad_points[t] += acc;
    }
}

// Source coordinate and its derivative; padding 0 zeros, 1 border, 2 reflection.
#ifdef __CUDACC__
__device__
#endif
static inline float source(float coord, long size, int padding, int align_corners, float* d) {
    float sz = (float)size;
    float scale = align_corners ? (sz - 1.0f) / 2.0f : sz / 2.0f;
    float x = coord * scale + (sz - 1.0f) / 2.0f;
    float g = 1.0f;
    if (padding == 2) {
        float lo = align_corners ? 0.0f : -1.0f, hi = align_corners ? 2.0f * (sz - 1.0f) : 2.0f * sz - 1.0f;
        if (lo == hi) { x = 0.0f; g = 0.0f; }
        else {
            float mn = lo / 2.0f, span = (hi - lo) / 2.0f, v = x - mn;
            if (v < 0.0f) { g = -1.0f; v = -v; }
            float extra = fmodf(v, span), flips = FLOORF(v / span);
            if (fmodf(flips, 2.0f) == 0.0f) x = extra + mn; else { x = span - extra + mn; g = -g; }
        }
    }
    if (padding >= 1) {
        if (x <= 0.0f) { x = 0.0f; g = 0.0f; }
        else if (x >= sz - 1.0f) { x = sz - 1.0f; g = 0.0f; }
    }
    *d = scale * g;
    return x;
}

// The four corners of a sample: flat indices (-1 outside) and weights.
struct Corners { long idx[4]; float wt[4]; float fx, fy, dx, dy; };

#ifdef __CUDACC__
__device__
#endif
static inline struct Corners corners(float gx, float gy, long h, long w, int padding, int align_corners) {
    struct Corners c;
    float x = source(gx, w, padding, align_corners, &c.dx), y = source(gy, h, padding, align_corners, &c.dy);
    float x0 = FLOORF(x), y0 = FLOORF(y);
    c.fx = x - x0; c.fy = y - y0;
    float wts[4] = {(1.0f - c.fy) * (1.0f - c.fx), (1.0f - c.fy) * c.fx, c.fy * (1.0f - c.fx), c.fy * c.fx};
    for (int k = 0; k < 4; k++) {
        float cx = x0 + (float)(k & 1), cy = y0 + (float)(k >> 1);
        int in = cx >= 0.0f && cx < (float)w && cy >= 0.0f && cy < (float)h;  // false for NaN
        c.idx[k] = in ? (long)cy * w + (long)cx : -1;
        c.wt[k] = in ? wts[k] : 0.0f;
    }
    return c;
}

// PyTorch's clip, and reflection into [lo/2, hi/2], on a coordinate (no gradient).
#ifdef __CUDACC__
__device__
#endif
static inline float pad_coord(float x, long size, int padding, int align_corners) {
    float sz = (float)size;
    if (padding == 2) {
        float lo = align_corners ? 0.0f : -1.0f, hi = align_corners ? 2.0f * (sz - 1.0f) : 2.0f * sz - 1.0f;
        if (lo == hi) return 0.0f;
        float mn = lo / 2.0f, span = (hi - lo) / 2.0f, v = fabsf(x - mn);
        float extra = fmodf(v, span), flips = FLOORF(v / span);
        x = fmodf(flips, 2.0f) == 0.0f ? extra + mn : span - extra + mn;
    }
    if (padding >= 1) {  // as `clip` in grid_sample.rs: NaN stays NaN (and reads nothing)
        if (x <= 0.0f) x = 0.0f;
        else if (x >= sz - 1.0f) x = sz - 1.0f;
    }
    return x;
}

// nearbyint: half to even (PyTorch's nearest mode).
#ifdef __CUDACC__
__device__
#endif
static inline float round_even(float x) {
    float f = FLOORF(x), d = x - f;
    if (d > 0.5f) return f + 1.0f;
    if (d < 0.5f) return f;
    return FLOORF(f / 2.0f) * 2.0f == f ? f : f + 1.0f;
}

// The flat index a nearest-mode point reads, -1 outside.
#ifdef __CUDACC__
__device__
#endif
static inline long nearest_index(float gx, float gy, long h, long w, int padding, int align_corners) {
    float d;
    float x = round_even(source(gx, w, padding, align_corners, &d));
    float y = round_even(source(gy, h, padding, align_corners, &d));
    int in = x >= 0.0f && x < (float)w && y >= 0.0f && y < (float)h;  // false for NaN
    return in ? (long)y * w + (long)x : -1;
}

// Cubic convolution weights (A = -0.75) of taps -1..2 at fraction t, and their derivatives.
#ifdef __CUDACC__
__device__
#endif
static inline void cubic_weights(float t, float* c, float* d) {
    const float A = -0.75f;
    float s = 1.0f - t, u = t + 1.0f, v = s + 1.0f;
    c[0] = ((A * u - 5.0f * A) * u + 8.0f * A) * u - 4.0f * A;
    c[1] = ((A + 2.0f) * t - (A + 3.0f)) * t * t + 1.0f;
    c[2] = ((A + 2.0f) * s - (A + 3.0f)) * s * s + 1.0f;
    c[3] = ((A * v - 5.0f * A) * v + 8.0f * A) * v - 4.0f * A;
    d[0] = (3.0f * A * u - 10.0f * A) * u + 8.0f * A;
    d[1] = (3.0f * (A + 2.0f) * t - 2.0f * (A + 3.0f)) * t;
    d[2] = -(3.0f * (A + 2.0f) * s - 2.0f * (A + 3.0f)) * s;
    d[3] = -((3.0f * A * v - 10.0f * A) * v + 8.0f * A);
}

// A bicubic point: the 16 taps' flat indices (-1 outside; padding applied to each tap), the
// weights by axis and their derivatives, and the unnormalisation's scales.
struct Cubic { long idx[16]; float wx[4], wy[4], dwx[4], dwy[4], sx, sy; };

#ifdef __CUDACC__
__device__
#endif
static inline struct Cubic cubic(float gx, float gy, long h, long w, int padding, int align_corners) {
    struct Cubic c;
    float fw = (float)w, fh = (float)h;
    c.sx = align_corners ? (fw - 1.0f) / 2.0f : fw / 2.0f;
    c.sy = align_corners ? (fh - 1.0f) / 2.0f : fh / 2.0f;
    float x = gx * c.sx + (fw - 1.0f) / 2.0f, y = gy * c.sy + (fh - 1.0f) / 2.0f;
    float x0 = FLOORF(x), y0 = FLOORF(y);
    cubic_weights(x - x0, c.wx, c.dwx);
    cubic_weights(y - y0, c.wy, c.dwy);
    for (int i = 0; i < 4; i++) {
        float yy = pad_coord(y0 + (float)(i - 1), h, padding, align_corners);
        for (int j = 0; j < 4; j++) {
            float xx = pad_coord(x0 + (float)(j - 1), w, padding, align_corners);
            int in = xx >= 0.0f && xx < fw && yy >= 0.0f && yy < fh;  // false for NaN
            c.idx[4 * i + j] = in ? (long)yy * w + (long)xx : -1;
        }
    }
    return c;
}

// out[b, ch, q]; one item per (b, q), all channels. `mode`: 0 bilinear, 1 nearest, 2 bicubic.
KERNEL void grid_sample_fwd(const float* input, const float* grid, float* out, long n, long c, long h, long w, long p,
                            int padding, int align_corners, int mode) {
    for (long t = FIRST; t < n * p; t += STEP) {
        long b = t / p, q = t % p;
        float gx = grid[2 * t], gy = grid[2 * t + 1];
        if (mode == 1) {
            long i = nearest_index(gx, gy, h, w, padding, align_corners);
            for (long ch = 0; ch < c; ch++)
                out[(b * c + ch) * p + q] = i >= 0 ? input[(b * c + ch) * h * w + i] : 0.0f;
        } else if (mode == 2) {
            struct Cubic s = cubic(gx, gy, h, w, padding, align_corners);
            for (long ch = 0; ch < c; ch++) {
                const float* plane = input + (b * c + ch) * h * w;
                float v = 0.0f;
                for (int i = 0; i < 4; i++) {
                    float row = 0.0f;
                    for (int j = 0; j < 4; j++) if (s.idx[4 * i + j] >= 0) row += plane[s.idx[4 * i + j]] * s.wx[j];
                    v += row * s.wy[i];
                }
                out[(b * c + ch) * p + q] = v;
            }
        } else {
            struct Corners s = corners(gx, gy, h, w, padding, align_corners);
            for (long ch = 0; ch < c; ch++) {
                const float* plane = input + (b * c + ch) * h * w;
                float v = 0.0f;
                for (int k = 0; k < 4; k++) if (s.idx[k] >= 0) v += plane[s.idx[k]] * s.wt[k];
                out[(b * c + ch) * p + q] = v;
            }
        }
    }
}

// grad_input (atomically: samples share pixels) and grad_grid. `flags`: padding (bits 0-1),
// align_corners (bit 2), want grad_input (bit 3), want grad_grid (bit 4), mode (bits 5-6) --
// packed because a launch takes at most 12 parameters.
KERNEL void grid_sample_bwd(const float* input, const float* grid, const float* grad_out, float* grad_input,
                            float* grad_grid, long n, long c, long h, long w, long p, int flags) {
    int padding = flags & 3, align_corners = (flags >> 2) & 1, want_input = (flags >> 3) & 1, want_grid = (flags >> 4) & 1;
    int mode = (flags >> 5) & 3;
    for (long t = FIRST; t < n * p; t += STEP) {
        long b = t / p, q = t % p;
        float gx = grid[2 * t], gy = grid[2 * t + 1];
        if (mode == 1) {
            // The grid's gradient is zero.
            long i = nearest_index(gx, gy, h, w, padding, align_corners);
            if (want_input && i >= 0)
                for (long ch = 0; ch < c; ch++)
                    ATOMIC_ADD(grad_input + (b * c + ch) * h * w + i, grad_out[(b * c + ch) * p + q]);
            continue;
        }
        if (mode == 2) {
            struct Cubic s = cubic(gx, gy, h, w, padding, align_corners);
            float dgx = 0.0f, dgy = 0.0f;
            for (long ch = 0; ch < c; ch++) {
                float go = grad_out[(b * c + ch) * p + q];
                const float* plane = input + (b * c + ch) * h * w;
                float* g = grad_input + (b * c + ch) * h * w;
                for (int i = 0; i < 4; i++)
                    for (int j = 0; j < 4; j++) {
                        long k = s.idx[4 * i + j];
                        if (k < 0) continue;
                        if (want_input) ATOMIC_ADD(g + k, go * s.wx[j] * s.wy[i]);
                        if (want_grid) {
                            float v = plane[k] * go;
                            dgx += v * s.dwx[j] * s.wy[i];
                            dgy += v * s.dwy[i] * s.wx[j];
                        }
                    }
            }
            if (want_grid) { grad_grid[2 * t] += dgx * s.sx; grad_grid[2 * t + 1] += dgy * s.sy; }
            continue;
        }
        struct Corners s = corners(gx, gy, h, w, padding, align_corners);
        float dgx = 0.0f, dgy = 0.0f;
        for (long ch = 0; ch < c; ch++) {
            float go = grad_out[(b * c + ch) * p + q];
            if (want_input) {
                float* g = grad_input + (b * c + ch) * h * w;
                for (int k = 0; k < 4; k++) if (s.idx[k] >= 0) ATOMIC_ADD(g + s.idx[k], s.wt[k] * go);
            }
            if (want_grid) {
                const float* plane = input + (b * c + ch) * h * w;
                float v[4];
                for (int k = 0; k < 4; k++) v[k] = s.idx[k] >= 0 ? plane[s.idx[k]] : 0.0f;
                dgx += ((v[1] - v[0]) * (1.0f - s.fy) + (v[3] - v[2]) * s.fy) * go;
                dgy += ((v[2] - v[0]) * (1.0f - s.fx) + (v[3] - v[1]) * s.fx) * go;
            }
        }
        if (want_grid) { grad_grid[2 * t] += dgx * s.dx; grad_grid[2 * t + 1] += dgy * s.dy; }
    }
}

// Direct convolution, stride 1, no padding; one item per output element.
KERNEL void conv2d_fwd(const float* x, const float* wt, const float* bias, float* out, long n, long c, long h, long w,
                       long o, long kh, long kw) {
    long ho = h - kh + 1, wo = w - kw + 1;
    for (long t = FIRST; t < n * o * ho * wo; t += STEP) {
        long b = t / (o * ho * wo), oc = (t / (ho * wo)) % o, oy = (t / wo) % ho, ox = t % wo;
        float acc = bias[oc];
        for (long ic = 0; ic < c; ic++)
            for (long ki = 0; ki < kh; ki++)
                for (long kj = 0; kj < kw; kj++)
                    acc += wt[((oc * c + ic) * kh + ki) * kw + kj] * x[((b * c + ic) * h + oy + ki) * w + ox + kj];
        out[t] = acc;
    }
}

// grad_x[b, ic, y, x] += Σ grad_out · w over the outputs that read it; one item per input element.
KERNEL void conv2d_bwd_input(const float* wt, const float* grad_out, float* grad_x, long n, long c, long h, long w,
                             long o, long kh, long kw) {
    long ho = h - kh + 1, wo = w - kw + 1;
    for (long t = FIRST; t < n * c * h * w; t += STEP) {
        long b = t / (c * h * w), ic = (t / (h * w)) % c, y = (t / w) % h, xx = t % w;
        float acc = 0.0f;
        for (long oc = 0; oc < o; oc++)
            for (long ki = 0; ki < kh; ki++) {
                long oy = y - ki;
                if (oy < 0 || oy >= ho) continue;
                for (long kj = 0; kj < kw; kj++) {
                    long ox = xx - kj;
                    if (ox < 0 || ox >= wo) continue;
                    acc += wt[((oc * c + ic) * kh + ki) * kw + kj] * grad_out[((b * o + oc) * ho + oy) * wo + ox];
                }
            }
        grad_x[t] += acc;
    }
}

// grad_w[oc, ic, ki, kj] += Σ_{b, oy, ox} grad_out · x, and grad_b[oc] += Σ grad_out (item ic = 0,
// ki = kj = 0 does the bias); one item per weight (a sum over the batch in each thread).
// `want`: bit 0 the weight gradient, bit 1 the bias gradient.
KERNEL void conv2d_bwd_weight(const float* x, const float* grad_out, float* grad_w, float* grad_b, long n, long c,
                              long h, long w, long o, long kh, long kw, int want) {
    int want_w = want & 1, want_b = (want >> 1) & 1;
    long ho = h - kh + 1, wo = w - kw + 1;
    for (long t = FIRST; t < o * c * kh * kw; t += STEP) {
        long oc = t / (c * kh * kw), ic = (t / (kh * kw)) % c, ki = (t / kw) % kh, kj = t % kw;
        float acc = 0.0f, accb = 0.0f;
        for (long b = 0; b < n; b++)
            for (long oy = 0; oy < ho; oy++)
                for (long ox = 0; ox < wo; ox++) {
                    float go = grad_out[((b * o + oc) * ho + oy) * wo + ox];
                    acc += go * x[((b * c + ic) * h + oy + ki) * w + ox + kj];
                    accb += go;
                }
        if (want_w) grad_w[t] += acc;
        if (want_b && ic == 0 && ki == 0 && kj == 0) grad_b[oc] += accb;
    }
}

// Max pooling (floor mode); the first maximum in row-major order wins, a NaN wins over numbers.
#ifdef __CUDACC__
__device__
#endif
static inline long pool_argmax(const float* plane, long w, long oy, long ox, long k, long s) {
    long best = oy * s * w + ox * s;
    float m = plane[best];
    for (long ky = 0; ky < k; ky++)
        for (long kx = 0; kx < k; kx++) {
            long i = (oy * s + ky) * w + ox * s + kx;
            float v = plane[i];
            if (v > m || v != v) { m = v; best = i; if (v != v) return best; }
        }
    return best;
}

KERNEL void max_pool2d_fwd(const float* x, float* out, long planes, long h, long w, long k, long s) {
    long ho = (h - k) / s + 1, wo = (w - k) / s + 1;
    for (long t = FIRST; t < planes * ho * wo; t += STEP) {
        long pl = t / (ho * wo), oy = (t / wo) % ho, ox = t % wo;
        const float* plane = x + pl * h * w;
        out[t] = plane[pool_argmax(plane, w, oy, ox, k, s)];
    }
}

KERNEL void max_pool2d_bwd(const float* x, const float* grad_out, float* grad_x, long planes, long h, long w, long k,
                           long s) {
    long ho = (h - k) / s + 1, wo = (w - k) / s + 1;
    for (long t = FIRST; t < planes * ho * wo; t += STEP) {
        long pl = t / (ho * wo), oy = (t / wo) % ho, ox = t % wo;
        const float* plane = x + pl * h * w;
        ATOMIC_ADD(grad_x + pl * h * w + pool_argmax(plane, w, oy, ox, k, s), grad_out[t]);
    }
}
