/* The per-call reductions of neurodiag/stats/reductions.py in one pass over each tensor, folded
 * into a site's states (neurodiag/stats/native_fold.py binds them). CPU, float32, contiguous.
 *
 * A tensor is seen as (A, F, B): F neurons, each with A x B positions. nd_reduce accumulates one
 * range of the A rows into one "part" of ACC_ROWS x F doubles; nd_commit adds the parts together,
 * checks that every summed entry was finite and only then folds them into the states.
 *
 * Finite check: Σ|x| of a neuron is non-finite whenever a summed entry was (NaN propagates
 * through sums, +Inf survives them). It can also overflow on finite entries (the float32 block
 * sums below, near 1e37): then a clean call is measured on the exact path too, never the
 * reverse. A call with a non-finite entry folds nothing: the caller measures it again on the
 * exact path, which counts and excludes those entries.
 */
#include <math.h>
#include <stdint.h>

/* Rows summed in float before their sum is added in double (float32 rounding, as PyTorch's own
 * sums; a block sum that overflows only sends the call to the exact path), neurons per chunk. */
#define BLOCK 32
#define CHUNK 256
/* What one pass over x accumulates (compile-time constants after inlining). */
enum { SUM = 1, COUNT_POSITIVE = 2, COUNT_ABOVE = 4, MAX = 8, MIN = 16, RELU = 32, CHECK = 64 };
/* RELU: x is a ReLU's input z; the pass reads a = max(z, 0) from it (a ReLU computes exactly
 * that) and CHECK sums |z| for the finite check: one pass over z instead of one over a and one
 * over z. */
/* The rows of a part: activation (Σ|a|, Σ[a > 0], max |a|), pre-activation (Σ|z|),
 * derivative (Σ|σ'|, Σ[|σ'| > ε], max |σ'|, min |σ'|). */
enum { A_SUM, A_COUNT, A_MAX, Z_SUM, D_SUM, D_COUNT, D_MAX, D_MIN, ACC_ROWS };
/* nd_reduce's modes: what it reads of x. */
enum { MODE_STEP = 0, MODE_GENERAL = 1, MODE_GRAD = 2, MODE_STEP_FROM_Z = 3 };

int32_t nd_acc_rows(void) { return ACC_ROWS; }

static inline void reduce(const float *restrict x, int64_t A, int64_t F, int64_t B, const int what,
                          float threshold, double *restrict sum, double *restrict count,
                          double *restrict high, double *restrict low, double *restrict check) {
    if (B == 1) { /* (positions, neurons): vectorised across the neurons of a row, in floats
                   * over blocks of BLOCK rows (8 lanes a vector), each block added in double */
        for (int64_t f0 = 0; f0 < F; f0 += CHUNK) {
            const int64_t n = F - f0 < CHUNK ? F - f0 : CHUNK;
            for (int64_t a0 = 0; a0 < A; a0 += BLOCK) {
                const int64_t a1 = A - a0 < BLOCK ? A : a0 + BLOCK;
                float s[CHUNK], c[CHUNK], h[CHUNK], l[CHUNK], k[CHUNK];
                for (int64_t f = 0; f < n; f++) s[f] = c[f] = h[f] = k[f] = 0.0f, l[f] = INFINITY;
                for (int64_t a = a0; a < a1; a++) {
                    const float *restrict row = x + a * F + f0;
                    for (int64_t f = 0; f < n; f++) {
                        const float x_f = row[f];
                        /* with RELU, x is z and v = a = max(z, 0) */
                        const float v = (what & RELU) ? (x_f > 0.0f ? x_f : 0.0f) : x_f;
                        float av = fabsf(v);
                        if (what & CHECK) k[f] += fabsf(x_f);
                        if (what & SUM) s[f] += av;
                        if (what & COUNT_POSITIVE) c[f] += (float)(v > threshold);
                        if (what & COUNT_ABOVE) c[f] += (float)(av > threshold);
                        if (what & MAX) h[f] = av > h[f] ? av : h[f];
                        if (what & MIN) l[f] = av < l[f] ? av : l[f];
                    }
                }
                for (int64_t f = 0; f < n; f++) {
                    if (what & SUM) sum[f0 + f] += s[f];
                    if (what & CHECK) check[f0 + f] += k[f];
                    if (what & (COUNT_POSITIVE | COUNT_ABOVE)) count[f0 + f] += c[f];
                    if ((what & MAX) && h[f] > high[f0 + f]) high[f0 + f] = h[f];
                    if ((what & MIN) && l[f] < low[f0 + f]) low[f0 + f] = l[f];
                }
            }
        }
        return;
    }
    for (int64_t a = 0; a < A; a++) { /* (.., neurons, positions): each neuron's run at once */
        for (int64_t f = 0; f < F; f++) {
            const float *restrict run = x + (a * F + f) * B;
            double s = 0.0, c = 0.0, h = -INFINITY, l = INFINITY, k = 0.0;
#pragma omp simd reduction(+ : s, c, k) reduction(max : h) reduction(min : l)
            for (int64_t b = 0; b < B; b++) {
                const float x_b = run[b];
                const float v = (what & RELU) ? (x_b > 0.0f ? x_b : 0.0f) : x_b; /* max(z, 0) */
                if (what & CHECK) k += fabs((double)x_b);
                double av = fabs((double)v);
                if (what & SUM) s += av;
                if (what & COUNT_POSITIVE) c += (double)(v > threshold);
                if (what & COUNT_ABOVE) c += (double)(fabsf(v) > threshold);
                if (what & MAX) h = av > h ? av : h;
                if (what & MIN) l = av < l ? av : l;
            }
            if (what & SUM) sum[f] += s;
            if (what & CHECK) check[f] += k;
            if (what & (COUNT_POSITIVE | COUNT_ABOVE)) count[f] += c;
            if ((what & MAX) && h > high[f]) high[f] = h;
            if ((what & MIN) && l < low[f]) low[f] = l;
        }
    }
}

/* Accumulates rows [0, A) of x (and z, d when not NULL) into one part: x by ``mode``, z for the
 * finite check only, d (σ' of the call) for the derivative rows with threshold eps. With
 * MODE_STEP_FROM_Z, x is a ReLU's z (and z is NULL): a = max(z, 0) and Σ|z| in one pass. */
void nd_reduce(const float *x, const float *z, const float *d, int64_t A, int64_t F, int64_t B,
               int32_t mode, float eps, double *acc) {
    for (int64_t f = 0; f < F; f++) {
        for (int r = 0; r < ACC_ROWS; r++) acc[r * F + f] = 0.0;
        acc[A_MAX * F + f] = 0.0; /* |a| >= 0: a neuron's max starts at 0 */
        acc[D_MAX * F + f] = -INFINITY;
        acc[D_MIN * F + f] = INFINITY;
    }
    double *row[ACC_ROWS];
    for (int r = 0; r < ACC_ROWS; r++) row[r] = acc + r * F;
    if (mode == MODE_STEP_FROM_Z) /* x is z: a = max(z, 0) and Σ|z| in the same pass */
        reduce(x, A, F, B, SUM | COUNT_POSITIVE | MAX | RELU | CHECK, 0.0f, row[A_SUM],
               row[A_COUNT], row[A_MAX], 0, row[Z_SUM]);
    else if (mode == MODE_STEP)
        reduce(x, A, F, B, SUM | COUNT_POSITIVE | MAX, 0.0f, row[A_SUM], row[A_COUNT], row[A_MAX],
               0, 0);
    else if (mode == MODE_GENERAL)
        reduce(x, A, F, B, SUM | MAX, 0.0f, row[A_SUM], 0, row[A_MAX], 0, 0);
    else
        reduce(x, A, F, B, SUM, 0.0f, row[A_SUM], 0, 0, 0, 0);
    if (z) reduce(z, A, F, B, SUM, 0.0f, row[Z_SUM], 0, 0, 0, 0);
    if (d)
        reduce(d, A, F, B, SUM | COUNT_ABOVE | MAX | MIN, eps, row[D_SUM], row[D_COUNT], row[D_MAX],
               row[D_MIN], 0);
}

/* Adds ``parts`` parts into the first, then, if every summed entry was finite, folds it into the
 * states (NULL: a state the site does not keep): sum += Σ|x|, active += the count (of d when
 * ``has_d``, else of a > 0), high = max(high, max |x|), d_high / d_low = max / min of |σ'|.
 * Returns 1 (nothing folded) when a summed entry was non-finite, else 0. */
int32_t nd_commit(double *acc, int64_t parts, int64_t F, int32_t has_z, int32_t has_d, float *sum,
                  double *active, float *high, float *d_high, float *d_low) {
    for (int64_t k = 1; k < parts; k++) {
        const double *p = acc + k * ACC_ROWS * F;
        for (int64_t f = 0; f < F; f++) {
            for (int r = 0; r < ACC_ROWS; r++) {
                double *q = acc + r * F + f, v = p[r * F + f];
                if (r == A_MAX || r == D_MAX) *q = v > *q ? v : *q;
                else if (r == D_MIN) *q = v < *q ? v : *q;
                else *q += v;
            }
        }
    }
    for (int64_t f = 0; f < F; f++) {
        if (!isfinite(acc[A_SUM * F + f]) || (has_z && !isfinite(acc[Z_SUM * F + f])) ||
            (has_d && !isfinite(acc[D_SUM * F + f])))
            return 1;
    }
    const double *count = acc + (has_d ? D_COUNT : A_COUNT) * F;
    for (int64_t f = 0; f < F; f++) {
        if (sum) sum[f] += (float)acc[A_SUM * F + f];
        if (active) active[f] += count[f];
        if (high) {
            float h = (float)acc[A_MAX * F + f];
            high[f] = h > high[f] ? h : high[f];
        }
        if (d_high) {
            float h = (float)acc[D_MAX * F + f];
            d_high[f] = h > d_high[f] ? h : d_high[f];
        }
        if (d_low) {
            float l = (float)acc[D_MIN * F + f];
            d_low[f] = l < d_low[f] ? l : d_low[f];
        }
    }
    return 0;
}

/* nd_reduce then nd_commit for a call taken whole on this thread, without σ' (a step site's
 * forward, from a or from z, or a gradient): one ctypes call instead of two on the hot path.
 * Returns nd_commit's 1 when a summed entry was non-finite (nothing folded). */
int32_t nd_fold(const float *x, int64_t A, int64_t F, int64_t B, int32_t mode, double *acc,
                float *sum, double *active, float *high) {
    nd_reduce(x, 0, 0, A, F, B, mode, 0.0f, acc);
    return nd_commit(acc, 1, F, mode == MODE_STEP_FROM_Z, 0, sum, active, high, 0, 0);
}
