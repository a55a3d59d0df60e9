/* The eager CPU fast path of neurodiag's Bernstein activation: the formulas of
 * bernstein_reference.py, one pass each way. Built and loaded by native.py; C plus GCC/Clang
 * vector extensions; int64_t sizes. x: contiguous (A, F, B) float32, F the feature dim; the
 * table (2n+3, ld) float32, per feature (ld = F rounded up to W lanes) or shared (ld = 1). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* vectors only pass between inlined functions */
#endif
#ifdef __AVX__ /* lanes: 8 floats where the build passes -mavx2 -mfma, else 4 (SSE2, NEON) */
#define W 8
#else
#define W 4
#endif
#define INLINE static inline __attribute__((always_inline))
typedef int64_t i64;
typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef double vd __attribute__((vector_size(W * sizeof(double))));
typedef int vi __attribute__((vector_size(W * sizeof(int))));

int bern_lanes(void) { return W; }

static inline vf splat(float v) { return (vf){0} + v; }
/* lane-wise a where m (a comparison's all-ones mask), else b; comparisons with NaN are false */
static inline vf sel(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline vf clamp1(vf z) { return sel(z < -1.0f, splat(-1.0f), sel(z > 1.0f, splat(1.0f), z)); }
static inline vf neg(vf e) { return sel(e != e, e, sel(e < 0.0f, e, splat(0.0f))); } /* min(e,0) */
static inline vf pos(vf e) { return sel(e != e, e, sel(e > 0.0f, e, splat(0.0f))); } /* max(e,0) */
/* W lanes at p; a shorter tail (m < W) is padded with zeros. */
static inline vf load(const float *p, i64 m) {
    vf v = splat(0.0f);
    if (m == W) memcpy(&v, p, sizeof v);
    else for (i64 k = 0; k < m; k++) v[k] = p[k];
    return v;
}
static inline void store(float *p, vf v, i64 m) {
    if (m == W) memcpy(p, &v, sizeof v);
    else for (i64 k = 0; k < m; k++) p[k] = v[k];
}
/* Row j for the lanes at element i: per element (cs = 1, a full padded vector) or shared. */
static inline vf coef(const float *tab, i64 ld, int j, i64 i, i64 cs) {
    vf v = splat(tab[(i64)j * ld]);
    if (cs) memcpy(&v, tab + (i64)j * ld + i, sizeof v);
    return v;
}

/* σ for `len` consecutive elements whose coefficient columns advance by cs (0 or 1). */
INLINE void value_run(const float *x, float *out, i64 len, const float *tab, i64 ld, i64 cs,
                      int n, float scale, float shift) {
    for (i64 i = 0; i < len; i += W) {
        i64 m = len - i < W ? len - i : W;
        vf z = load(x + i, m) * scale + shift, u = clamp1(z), e = z - u;
        vf acc = coef(tab, ld, n, i, cs);
        for (int j = n - 1; j >= 0; j--) acc = acc * u + coef(tab, ld, j, i, cs);
        acc = acc + neg(e) * coef(tab, ld, 2 * n + 1, i, cs);
        store(out + i, acc + pos(e) * coef(tab, ld, 2 * n + 2, i, cs), m);
    }
}

void bern_value(const float *x, float *out, i64 A, i64 F, i64 B, const float *tab, i64 ld, int n,
                float scale, float shift) {
    for (i64 a = 0; a < A; a++) {
        if (B == 1 && ld == 1) /* cs as a constant: each call site is specialised */
            value_run(x + a * F, out + a * F, F, tab, ld, 0, n, scale, shift);
        else if (B == 1)
            value_run(x + a * F, out + a * F, F, tab, ld, 1, n, scale, shift);
        else
            for (i64 f = 0, off = a * F * B; f < F; f++, off += B)
                value_run(x + off, out + off, B, tab + (ld == 1 ? 0 : f), ld, 0, n, scale, shift);
    }
}

static inline vd widen(vf v) { return __builtin_convertvector(v, vd); }
static inline void add_into(double *col, vf v) {
    vd c;
    memcpy(&c, col, sizeof c), c += widen(v), memcpy(col, &c, sizeof c);
}
#define MAX_ROWS 24 /* n + 3 for degrees up to 21 */

/* ∂L/∂x into gx (if not NULL) and the n+3 moments Σg·u^j (j = 0..n), Σg·min(e,0), Σg·max(e,0)
 * added into mom (if not NULL; (n+3, ld) doubles, zeroed by the caller) for `len` elements:
 * with cs = 1 into each element's column, with cs = 0 all into column 0. */
INLINE void backward_run(const float *x, const float *g, float *gx, double *mom, i64 ms, i64 len,
                         const float *tab, i64 ld, i64 cs, int n, float scale, float shift) {
    vd part[MAX_ROWS];
    for (int j = 0; j < n + 3; j++) part[j] = (vd){0};
    for (i64 i = 0; i < len; i += W) {
        i64 m = len - i < W ? len - i : W;
        vf z = load(x + i, m) * scale + shift, u = clamp1(z), e = z - u;
        vf gg = load(g + i, m), p = gg; /* zero in padded lanes: they add nothing */
        if (gx) {
            const float *d = tab + (i64)(n + 1) * ld;
            vf acc = coef(d, ld, n - 1, i, cs) + 0.0f * u; /* NaN where u is NaN */
            for (int j = n - 2; j >= 0; j--) acc = acc * u + coef(d, ld, j, i, cs);
            store(gx + i, (gg * acc) * scale, m);
        }
        if (!mom) continue;
        if (cs) { /* padded lanes add exact zeros into padded columns */
            for (int j = 0; j <= n; j++, p = p * u) add_into(mom + j * ms + i, p);
            add_into(mom + (n + 1) * ms + i, neg(e) * gg);
            add_into(mom + (n + 2) * ms + i, pos(e) * gg);
        } else {
            for (int j = 0; j <= n; j++, p = p * u) part[j] += widen(p);
            part[n + 1] += widen(neg(e) * gg);
            part[n + 2] += widen(pos(e) * gg);
        }
    }
    for (int j = 0; j < n + 3 && mom && !cs; j++) {
        double s = 0.0;
        for (int k = 0; k < W; k++) s += part[j][k];
        mom[j * ms] += s;
    }
}

void bern_backward(const float *x, const float *g, float *gx, double *mom, i64 A, i64 F, i64 B,
                   const float *tab, i64 ld, int n, float scale, float shift) {
    for (i64 a = 0; a < A; a++) {
        i64 off = a * F * B;
        float *gxa = gx ? gx + off : 0;
        if (B == 1 && ld == 1)
            backward_run(x + off, g + off, gxa, mom, ld, F, tab, ld, 0, n, scale, shift);
        else if (B == 1)
            backward_run(x + off, g + off, gxa, mom, ld, F, tab, ld, 1, n, scale, shift);
        else
            for (i64 f = 0; f < F; f++, off += B) {
                i64 c = ld == 1 ? 0 : f;
                backward_run(x + off, g + off, gx ? gx + off : 0, mom ? mom + c : 0, ld, B,
                             tab + c, ld, 0, n, scale, shift);
            }
    }
}

/* coefficient_table and parameter_grads of the reference (conv: its (n, 2n+1) matrix, double). */
void bern_table(const float *c0, const float *inc, i64 rows, i64 ld, int n, const double *conv,
                float *tab) {
    for (i64 f = 0; f < ld; f++) {
        for (int j = 0; j <= 2 * n; j++) {
            double s = 0.0;
            for (int i = 0; i < n && f < rows; i++) s += (double)inc[f * n + i] * conv[i * (2 * n + 1) + j];
            tab[j * ld + f] = (float)(ldexp(s, -n) + (j == 0 && f < rows ? c0[f] : 0.0));
        }
        tab[(2 * n + 1) * ld + f] = f < rows ? (float)(0.5 * n * inc[f * n]) : 0.0f;
        tab[(2 * n + 2) * ld + f] = f < rows ? (float)(0.5 * n * inc[f * n + n - 1]) : 0.0f;
    }
}

void bern_grads(const double *mom, i64 rows, i64 ld, int n, const double *conv, float *grad_c0,
                float *grad_inc) {
    for (i64 f = 0; f < rows; f++) {
        grad_c0[f] = (float)mom[f];
        for (int i = 0; i < n; i++) {
            double s = 0.0;
            for (int j = 0; j <= n; j++) s += conv[i * (2 * n + 1) + j] * mom[j * ld + f];
            s = ldexp(s, -n) + (i == 0 ? 0.5 * n * mom[(n + 1) * ld + f] : 0.0);
            grad_inc[f * n + i] = (float)(s + (i == n - 1 ? 0.5 * n * mom[(n + 2) * ld + f] : 0.0));
        }
    }
}
