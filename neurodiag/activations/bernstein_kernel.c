/* Fused CPU kernels of neurodiag's Bernstein activation (the maths: bernstein.py).
 *
 * Built on first use by neurodiag/activations/native.py with the system C compiler, loaded with
 * ctypes. Standard C plus GCC/Clang vector extensions; no state, no allocation, no I/O. Each
 * call makes one pass over the input where eager PyTorch makes one pass per op (~70 for a
 * degree-9 forward+backward).
 *
 * Layout: x is a contiguous (A, F, B) float32 array, F the feature dim. The coefficient table
 * is (2n+3, ld) float32: ft = F columns (per-feature, ld = F rounded up to a multiple of W, the
 * padding zero) or ft = 1 column (shared, ld = 1); rows a_0..a_n (σ in u),
 * d_0..d_{n-1} (dσ/du), the boundary slopes at u = -1 and +1. z = x*scale + shift,
 * u = clamp(z, -1, 1), e = z - u; σ = P(u) + min(e,0)*slope_lo + max(e,0)*slope_hi, as the
 * PyTorch kernels compute it (one term is an exact 0), and a NaN input gives NaN everywhere,
 * as torch.clamp does.
 */
#include <math.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* vectors only pass between inlined functions */
#endif

/* Lanes per vector: 8 floats where AVX is enabled (the build passes -mavx2 -mfma where PyTorch
 * detects AVX2), else 4 (SSE2, NEON). */
#ifdef __AVX__
#define W 8
#else
#define W 4
#endif
typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef double vd __attribute__((vector_size(W * sizeof(double))));
typedef int vi __attribute__((vector_size(W * sizeof(int))));

int bern_lanes(void) { return W; }

static inline vf splat(float v) { return (vf){0} + v; }
/* lane-wise a where m (all ones), else b; comparisons of vectors give such masks. */
static inline vf sel(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
/* clamp to [-1, 1] keeping NaN (comparisons with NaN are false). */
static inline vf clamp1(vf z) {
    return sel(z < -1.0f, splat(-1.0f), sel(z > 1.0f, splat(1.0f), z));
}
static inline vf nan_or(vf e, vf v) { return sel(e != e, e, v); }

/* W lanes starting at p; a shorter tail is padded with zeros. */
static inline vf load(const float *p, long m) {
    vf v = splat(0.0f);
    if (m == W)
        memcpy(&v, p, sizeof v); /* one unaligned vector load */
    else
        for (long k = 0; k < m; k++) v[k] = p[k];
    return v;
}
static inline void store(float *p, vf v, long m) {
    if (m == W)
        memcpy(p, &v, sizeof v);
    else
        for (long k = 0; k < m; k++) p[k] = v[k];
}
/* Coefficient row j for the lanes at element i: per element (cs = 1; rows padded to a multiple
 * of W, so always a full vector) or one value for all (cs = 0). */
static inline vf coef(const float *tab, long ld, int j, long i, long cs) {
    const float *row = tab + (long)j * ld;
    vf v;
    if (cs)
        memcpy(&v, row + i, sizeof v);
    else
        v = splat(row[0]);
    return v;
}

/* σ for `len` consecutive elements whose coefficient columns advance by cs (0 or 1). */
static inline __attribute__((always_inline)) void value_run(const float *x, float *out, long len, const float *tab, long ld, long cs,
                      int n, float scale, float shift) {
    for (long i = 0; i < len; i += W) {
        long m = len - i < W ? len - i : W;
        vf z = load(x + i, m) * scale + shift;
        vf u = clamp1(z);
        vf acc = coef(tab, ld, n, i, cs);
        for (int j = n - 1; j >= 0; j--) acc = acc * u + coef(tab, ld, j, i, cs);
        vf e = z - u;
        vf lo = nan_or(e, sel(e < 0.0f, e, splat(0.0f)));
        vf hi = nan_or(e, sel(e > 0.0f, e, splat(0.0f)));
        acc = acc + lo * coef(tab, ld, 2 * n + 1, i, cs);
        store(out + i, acc + hi * coef(tab, ld, 2 * n + 2, i, cs), m);
    }
}

/* ld: the table's row stride; 1 means one shared coefficient set. */
void bern_value(const float *x, float *out, long A, long F, long B, const float *tab, long ld,
                int n, float scale, float shift) {
    for (long a = 0; a < A; a++) {
        if (B == 1) {
            long off = a * F;
            if (ld == 1) /* cs as a constant: each call site is specialised */
                value_run(x + off, out + off, F, tab, ld, 0, n, scale, shift);
            else
                value_run(x + off, out + off, F, tab, ld, 1, n, scale, shift);
            continue;
        }
        for (long f = 0; f < F; f++) {
            long off = (a * F + f) * B;
            value_run(x + off, out + off, B, tab + (ld == 1 ? 0 : f), ld, 0, n, scale, shift);
        }
    }
}

static inline vd widen(vf v) { return __builtin_convertvector(v, vd); }
static inline double hsum(vd v) {
    double s = 0.0;
    for (int k = 0; k < W; k++) s += v[k];
    return s;
}

static inline void add_into(double *col, vf v) {
    vd c;
    memcpy(&c, col, sizeof c);
    c += widen(v);
    memcpy(col, &c, sizeof c);
}

#define MAX_ROWS 24 /* n + 3 for degrees up to 21 */

/* ∂L/∂x into gx (if not NULL) and the n+3 moment rows Σg·u^j (j = 0..n), Σg·min(e,0),
 * Σg·max(e,0) added into mom (if not NULL; row stride ms, double) for `len` elements. With
 * cs = 1 each element adds into its own column; with cs = 0 all add into column 0. */
static inline __attribute__((always_inline)) void backward_run(const float *x, const float *g, float *gx, double *mom, long ms,
                         long len, const float *tab, long ld, long cs, int n, float scale,
                         float shift) {
    const int rows = n + 3;
    vd part[MAX_ROWS];
    for (int j = 0; j < rows; j++) part[j] = (vd){0};
    for (long i = 0; i < len; i += W) {
        long m = len - i < W ? len - i : W;
        vf z = load(x + i, m) * scale + shift;
        vf u = clamp1(z);
        vf gg = load(g + i, m); /* zero in padded lanes: they add nothing */
        if (gx) {
            const float *d = tab + (long)(n + 1) * ld;
            vf acc = coef(d, ld, n - 1, i, cs);
            if (n == 1) acc = acc + 0.0f * u; /* NaN where u is NaN, as the PyTorch kernels */
            for (int j = n - 2; j >= 0; j--) acc = acc * u + coef(d, ld, j, i, cs);
            store(gx + i, (gg * acc) * scale, m);
        }
        if (!mom) continue;
        vf e = z - u;
        vf lo = nan_or(e, sel(e < 0.0f, e, splat(0.0f))) * gg;
        vf hi = nan_or(e, sel(e > 0.0f, e, splat(0.0f))) * gg;
        vf p = gg;
        if (cs) {
            /* padded lanes add exact zeros into padded columns */
            for (int j = 0; j <= n; j++, p = p * u) add_into(mom + (long)j * ms + i, p);
            add_into(mom + (long)(n + 1) * ms + i, lo);
            add_into(mom + (long)(n + 2) * ms + i, hi);
        } else {
            for (int j = 0; j <= n; j++, p = p * u) part[j] += widen(p);
            part[n + 1] += widen(lo);
            part[n + 2] += widen(hi);
        }
    }
    if (mom && !cs)
        for (int j = 0; j < rows; j++) mom[(long)j * ms] += hsum(part[j]);
}

/* mom: (n+3, ld) doubles laid out as the table, zeroed by the caller; n + 3 <= MAX_ROWS. */
void bern_backward(const float *x, const float *g, float *gx, double *mom, long A, long F,
                   long B, const float *tab, long ld, int n, float scale, float shift) {
    for (long a = 0; a < A; a++) {
        if (B == 1) {
            long off = a * F;
            float *gxo = gx ? gx + off : 0;
            if (ld == 1)
                backward_run(x + off, g + off, gxo, mom, ld, F, tab, ld, 0, n, scale, shift);
            else
                backward_run(x + off, g + off, gxo, mom, ld, F, tab, ld, 1, n, scale, shift);
            continue;
        }
        for (long f = 0; f < F; f++) {
            long off = (a * F + f) * B, c = ld == 1 ? 0 : f;
            backward_run(x + off, g + off, gx ? gx + off : 0, mom ? mom + c : 0, ld, B, tab + c,
                         ld, 0, n, scale, shift);
        }
    }
}

/* softplus as torch.nn.functional.softplus computes it in float32 (threshold 20). */
static inline float softplus(float t) { return t > 20.0f ? t : log1pf(expf(t)); }

/* The (2n+3, ld) table from the parameters: increments inc_i = δ + softplus(θ_i) (float32, as
 * Bernstein.increments), then row j = 2^-n Σ_i inc_i·conv[i][j] (+ c0 in row 0) in double,
 * conv the exact integer (n, 2n+3) matrix of _conversion_matrix. rows: 1 (shared) or F; the
 * padding columns are zeroed. */
void bern_table(const float *c0, const float *theta, long rows, long ld, int n, float delta,
                const double *conv, float *tab) {
    const int cols = 2 * n + 3;
    const double scale = ldexp(1.0, -n);
    float inc[64];
    for (long f = 0; f < ld; f++) {
        if (f >= rows) {
            for (int j = 0; j < cols; j++) tab[(long)j * ld + f] = 0.0f;
            continue;
        }
        for (int i = 0; i < n; i++) inc[i] = softplus(theta[f * n + i]) + delta;
        for (int j = 0; j < cols; j++) {
            double s = 0.0;
            for (int i = 0; i < n; i++) s += (double)inc[i] * conv[(long)i * cols + j];
            s *= scale;
            if (j == 0) s += (double)c0[f];
            tab[(long)j * ld + f] = (float)s;
        }
    }
}

/* ∂L/∂c0 and ∂L/∂θ from the moment rows (n+3, ld): ∂L/∂a_j = Σg·u^j maps back through conv;
 * the boundary slopes n/2·inc_0 and n/2·inc_{n-1} are added apart, so an infinite overshoot
 * sum never meets a zero of conv (0·∞). Then the softplus backward as torch computes it. */
void bern_grads(const double *mom, const float *theta, long rows, long ld, int n,
                const double *conv, float *grad_c0, float *grad_theta) {
    const int cols = 2 * n + 3;
    const double scale = ldexp(1.0, -n);
    for (long f = 0; f < rows; f++) {
        if (grad_c0) grad_c0[f] = (float)mom[f];
        if (!grad_theta) continue;
        for (int i = 0; i < n; i++) {
            double s = 0.0;
            for (int j = 0; j <= n; j++) s += conv[(long)i * cols + j] * mom[(long)j * ld + f];
            s *= scale;
            if (i == 0) s += 0.5 * n * mom[(long)(n + 1) * ld + f];
            if (i == n - 1) s += 0.5 * n * mom[(long)(n + 2) * ld + f];
            float gi = (float)s, t = theta[f * n + i], z = expf(t);
            grad_theta[f * n + i] = t > 20.0f ? gi : gi * z / (z + 1.0f);
        }
    }
}
