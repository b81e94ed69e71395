# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Rolling and expanding kernels over each instrument's listing span.

Layout: x and out are (instruments, days) C-contiguous float64, so a row's span x[i, s:e] is one
contiguous run of doubles. Every kernel below is a flat, GIL-free loop over one span (`x`, `n` rows)
that writes `out[0:n]`; the Python entry points at the bottom (`rolling`, `rolling_group`,
`pair_rolling`, `ema`, `shift`) fan the rows out over OpenMP threads (`prange`; serial when built
without OpenMP). On x86-64 CPUs with AVX2 (checked at run time) most window operators run four rows
at once instead, one per vector lane, each lane doing exactly the scalar loop's IEEE operations (so
results are the same bit for bit); rows are grouped longest first and each finishes its own tail
with the scalar loop, resumed from its lane's state (the `*_rows4` drivers, the `qc_*_rows4` C).
Windows follow pandas `rolling(w, min_periods=1)` over the span's rows: a window covers w rows
(fewer at the span's start), counts NaN rows and skips NaN values. Expanding windows (qlib's N=0)
are passed as `w = n`.

Arguments are validated once, in `quantcore.kernels`; nothing here checks them again.

Numerics: moment sums are kept about a per-series reference value (moments are shift-invariant) and
are recomputed from scratch, re-centred on the window mean, every max(window, REBUILD_MIN) steps,
which bounds both add/remove drift and cancellation at O(1) amortised cost (expanding windows
recompute at each doubling). Windows whose valid values are all equal are detected exactly (`Run`)
so that their variance is exactly 0, as in pandas.
"""

from cython.parallel cimport prange

import numpy as np
from libc.math cimport INFINITY, NAN, fabs, pow, sqrt
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memmove

ctypedef Py_ssize_t idx_t

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int qc_default_threads(void) { return omp_get_max_threads(); }
    static int qc_has_openmp(void) { return 1; }
    #else
    static int qc_default_threads(void) { return 1; }
    static int qc_has_openmp(void) { return 0; }
    #endif
    """
    int qc_default_threads() nogil
    int qc_has_openmp() nogil

cdef extern from *:
    """
    #include <string.h>
    /* Counting kernels for the short ordered windows. GCC/Clang vector types give 2-wide SIMD on any
       target (SSE2, NEON) without -march flags; a comparison yields -1 per true lane, so the sums are
       negated counts. Other compilers get the plain loops. */
    #if defined(__GNUC__) || defined(__clang__)
    typedef double qc_v2d __attribute__((vector_size(16)));
    typedef long long qc_v2i __attribute__((vector_size(16)));
    #define QC_VECTOR 1
    #endif

    /* *c1 = #{a[j] < x1}, *c2 = #{a[j] < x2} over a[0:n], n a multiple of 4 */
    static inline void qc_count_below2(const double* a, Py_ssize_t n, double x1, double x2,
                                       Py_ssize_t* c1, Py_ssize_t* c2) {
    #ifdef QC_VECTOR
        qc_v2i s1 = {0, 0}, s2 = {0, 0}, s3 = {0, 0}, s4 = {0, 0};
        qc_v2d v1 = {x1, x1}, v2 = {x2, x2}, p, q;
        Py_ssize_t j;
        for (j = 0; j < n; j += 4) {
            memcpy(&p, a + j, sizeof p);
            memcpy(&q, a + j + 2, sizeof q);
            s1 += (qc_v2i)(p < v1); s2 += (qc_v2i)(p < v2);
            s3 += (qc_v2i)(q < v1); s4 += (qc_v2i)(q < v2);
        }
        s1 += s3; s2 += s4;
        *c1 = (Py_ssize_t)-(s1[0] + s1[1]);
        *c2 = (Py_ssize_t)-(s2[0] + s2[1]);
    #else
        Py_ssize_t j, k1 = 0, k2 = 0;
        for (j = 0; j < n; j++) { k1 += a[j] < x1; k2 += a[j] < x2; }
        *c1 = k1; *c2 = k2;
    #endif
    }

    /* *lt = #{a[j] < v}, *eq = #{a[j] == v} over a[0:n], any n */
    static inline void qc_count_below_equal(const double* a, Py_ssize_t n, double v,
                                            Py_ssize_t* lt, Py_ssize_t* eq) {
        Py_ssize_t j = 0, l = 0, e = 0;
    #ifdef QC_VECTOR
        qc_v2i s1 = {0, 0}, s2 = {0, 0}, s3 = {0, 0}, s4 = {0, 0};
        qc_v2d vv = {v, v}, p, q;
        for (; j + 4 <= n; j += 4) {
            memcpy(&p, a + j, sizeof p);
            memcpy(&q, a + j + 2, sizeof q);
            s1 += (qc_v2i)(p < vv); s2 += (qc_v2i)(p == vv);
            s3 += (qc_v2i)(q < vv); s4 += (qc_v2i)(q == vv);
        }
        s1 += s3; s2 += s4;
        l = (Py_ssize_t)-(s1[0] + s1[1]);
        e = (Py_ssize_t)-(s2[0] + s2[1]);
    #endif
        for (; j < n; j++) { l += a[j] < v; e += a[j] == v; }
        *lt = l; *eq = e;
    }

    /* c ? a : b through a bit mask, without a jump. Cython turns `a if c else b` into an if
       statement, which GCC keeps as a jump; on a coin-flip condition a mispredicted jump costs more
       than the rest of a running-sum step. */
    static inline Py_ssize_t qc_pick_index(int c, Py_ssize_t a, Py_ssize_t b) {
        Py_ssize_t m = -(Py_ssize_t)(c != 0);
        return (a & m) | (b & ~m);
    }
    """
    idx_t qc_pick_index(bint c, idx_t a, idx_t b) nogil
    void qc_count_below2(const double* a, idx_t n, double x1, double x2, idx_t* c1,
                         idx_t* c2) nogil
    void qc_count_below_equal(const double* a, idx_t n, double v, idx_t* lt, idx_t* eq) nogil


cdef extern from *:
    """
    /* Whether the sample variance (ddof=1) of v's valid values in [ws, t] is at most atol2: qlib's
       Corr mask, computed exactly (two passes); both the scalar and the four-row kernels call it. */
    static int qc_own_std_small(const double* v, Py_ssize_t ws, Py_ssize_t t, double atol2) {
        Py_ssize_t j, c = 0;
        double m = 0.0, ss = 0.0;
        for (j = ws; j <= t; j++)
            if (v[j] == v[j]) { m += v[j]; c++; }
        if (c < 2)
            return 0;
        m /= c;
        for (j = ws; j <= t; j++)
            if (v[j] == v[j]) ss += (v[j] - m) * (v[j] - m);
        return ss <= atol2 * (c - 1.0);
    }

    /* Sum and Mean over four rows at once, one row per lane of an AVX2 vector (x86-64 with GCC or
       Clang, chosen at run time). The running sums are a chain of dependent adds with NaN and
       window-edge bookkeeping around them: a row's step is ~35 instructions, so a lane per row does
       the same work in about half the time. Each lane performs exactly the scalar sum_row's IEEE
       operations in the same order (selects instead of branches, no FMA), so results are bit for bit
       those of the scalar kernel. Rows run aligned at their span start; the caller finishes rows
       longer than `n` with the scalar loop from the state left in `state`. */
    #define QC_SORTED_CAP 48  /* slots of qc_sorted_rows4's stack buffers (checked at import) */
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    #include <immintrin.h>
    #define QC_AVX2 __attribute__((target("avx2")))
    static int qc_has_avx2(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx2") != 0; }

    static inline QC_AVX2 __m256d qc_sel4(__m256d mask, __m256d a, __m256d b) {  /* mask ? a : b */
        return _mm256_blendv_pd(b, a, mask);
    }

    /* scalar neumaier_add(s, c, v) in the lanes of `take` */
    static inline QC_AVX2 void qc_neumaier4(__m256d* s, __m256d* c, __m256d v, __m256d take) {
        __m256d sign = _mm256_set1_pd(-0.0);
        __m256d t = _mm256_add_pd(*s, v);
        __m256d s_big = _mm256_cmp_pd(_mm256_andnot_pd(sign, *s), _mm256_andnot_pd(sign, v), _CMP_GE_OQ);
        __m256d comp = qc_sel4(s_big, _mm256_add_pd(_mm256_sub_pd(*s, t), v), _mm256_add_pd(_mm256_sub_pd(v, t), *s));
        *c = qc_sel4(take, _mm256_add_pd(*c, comp), *c);
        *s = qc_sel4(take, t, *s);
    }

    static inline QC_AVX2 __m256d qc_load4(const double* const* rows, Py_ssize_t t) {
        return _mm256_set_pd(rows[3][t], rows[2][t], rows[1][t], rows[0][t]);
    }

    static inline QC_AVX2 void qc_store4(double* const* rows, Py_ssize_t t, __m256d v) {
        double lanes[4];
        _mm256_storeu_pd(lanes, v);
        rows[0][t] = lanes[0]; rows[1][t] = lanes[1]; rows[2][t] = lanes[2]; rows[3][t] = lanes[3];
    }

    /* run_push(run, v, t) in the lanes of `take`; a run is the three vectors last, last_at, prev_end */
    static inline QC_AVX2 void qc_run_push4(__m256d* last, __m256d* last_at, __m256d* prev_end, __m256d v,
                                            __m256d take, Py_ssize_t t) {
        *prev_end = qc_sel4(_mm256_and_pd(take, _mm256_cmp_pd(v, *last, _CMP_NEQ_UQ)), *last_at, *prev_end);
        *last = qc_sel4(take, v, *last);
        *last_at = qc_sel4(take, _mm256_set1_pd((double)t), *last_at);
    }

    /* window_mean(x, ws, t, fallback) of each lane */
    static inline QC_AVX2 __m256d qc_window_mean4(const double* const* xs, Py_ssize_t ws, Py_ssize_t t,
                                                  __m256d fallback) {
        const __m256d zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0);
        __m256d s = zero, c = zero;
        Py_ssize_t j;
        for (j = ws; j <= t; j++) {
            __m256d xj = qc_load4(xs, j), ok = _mm256_cmp_pd(xj, xj, _CMP_ORD_Q);
            s = qc_sel4(ok, _mm256_add_pd(s, xj), s);
            c = _mm256_add_pd(c, _mm256_and_pd(ok, one));
        }
        return qc_sel4(_mm256_cmp_pd(c, zero, _CMP_GT_OQ), _mm256_div_pd(s, c), fallback);
    }

    /* state (6 x 4 lanes): s, c, count, run.last, run.last_at, run.prev_end; starts from t = 0 */
    static QC_AVX2 void qc_sum_rows4(const double* const* xs, double* const* outs, Py_ssize_t n,
                                     Py_ssize_t w, int mean, double* state) {
        const __m256d zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0);
        const __m256d sign = _mm256_set1_pd(-0.0), nan = _mm256_set1_pd(NAN);
        __m256d s = zero, c = zero, cnt = zero, last = nan, last_at = _mm256_set1_pd(-1.0), prev_end = last_at;
        Py_ssize_t t;
        for (t = 0; t < n; t++) {
            if (t >= w) {
                __m256d old = qc_load4(xs, t - w);
                __m256d valid = _mm256_cmp_pd(old, old, _CMP_ORD_Q);
                cnt = _mm256_sub_pd(cnt, _mm256_and_pd(valid, one));
                __m256d emptied = _mm256_and_pd(valid, _mm256_cmp_pd(cnt, zero, _CMP_EQ_OQ));
                qc_neumaier4(&s, &c, _mm256_xor_pd(old, sign), _mm256_andnot_pd(emptied, valid));
                s = _mm256_andnot_pd(emptied, s);
                c = _mm256_andnot_pd(emptied, c);
            }
            __m256d v = qc_load4(xs, t);
            __m256d valid = _mm256_cmp_pd(v, v, _CMP_ORD_Q);
            qc_neumaier4(&s, &c, v, valid);
            cnt = _mm256_add_pd(cnt, _mm256_and_pd(valid, one));
            qc_run_push4(&last, &last_at, &prev_end, v, valid, t);
            __m256d r = _mm256_add_pd(s, c);
            if (mean) {
                __m256d flat = _mm256_cmp_pd(prev_end, _mm256_set1_pd((double)(t >= w ? t - w + 1 : 0)), _CMP_LT_OQ);
                r = qc_sel4(flat, last, _mm256_div_pd(r, cnt));
            }
            r = qc_sel4(_mm256_cmp_pd(cnt, zero, _CMP_EQ_OQ), nan, r);
            qc_store4(outs, t, r);
        }
        _mm256_storeu_pd(state, s); _mm256_storeu_pd(state + 4, c); _mm256_storeu_pd(state + 8, cnt);
        _mm256_storeu_pd(state + 12, last); _mm256_storeu_pd(state + 16, last_at);
        _mm256_storeu_pd(state + 20, prev_end);
    }

    /* Var (std = 0) or Std (std = 1) of moment_row, four rows in lanes. state (7 x 4 lanes): ref, s1,
       s2, count, run.last, run.last_at, run.prev_end; ref comes in set (each row's first valid
       value). `since` (steps since the last recomputation) is the same in every lane: the rows are
       aligned at their span start, so they re-centre together; it comes back for the scalar rest. */
    static QC_AVX2 void qc_var_rows4(const double* const* xs, double* const* outs, Py_ssize_t n, Py_ssize_t w,
                                     int std, double* state, Py_ssize_t* since_io, Py_ssize_t rebuild_min) {
        const __m256d zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0), nan = _mm256_set1_pd(NAN);
        __m256d ref = _mm256_loadu_pd(state), s1 = zero, s2 = zero, cnt = zero;
        __m256d last = nan, last_at = _mm256_set1_pd(-1.0), prev_end = last_at;
        Py_ssize_t t, j, ws, since = 0;
        for (t = 0; t < n; t++) {
            ws = t >= w ? t - w + 1 : 0;
            __m256d v = qc_load4(xs, t);
            __m256d valid = _mm256_cmp_pd(v, v, _CMP_ORD_Q);
            qc_run_push4(&last, &last_at, &prev_end, v, valid, t);
            since += 1;
            if (since >= rebuild_min && since >= t - ws + 1) {  /* rebuild_due: re-centre on the window mean */
                since = 0;
                ref = qc_window_mean4(xs, ws, t, ref);
                s1 = s2 = cnt = zero;
                for (j = ws; j <= t; j++) {
                    __m256d xj = qc_load4(xs, j), ok = _mm256_cmp_pd(xj, xj, _CMP_ORD_Q);
                    __m256d d = _mm256_sub_pd(xj, ref);
                    s1 = qc_sel4(ok, _mm256_add_pd(s1, d), s1);
                    s2 = qc_sel4(ok, _mm256_add_pd(s2, _mm256_mul_pd(d, d)), s2);
                    cnt = _mm256_add_pd(cnt, _mm256_and_pd(ok, one));
                }
            } else {
                if (t >= w) {
                    __m256d old = qc_load4(xs, t - w), ok = _mm256_cmp_pd(old, old, _CMP_ORD_Q);
                    __m256d d = _mm256_sub_pd(old, ref);
                    cnt = _mm256_sub_pd(cnt, _mm256_and_pd(ok, one));
                    __m256d emptied = _mm256_and_pd(ok, _mm256_cmp_pd(cnt, zero, _CMP_EQ_OQ));
                    s1 = _mm256_andnot_pd(emptied, qc_sel4(ok, _mm256_sub_pd(s1, d), s1));
                    s2 = _mm256_andnot_pd(emptied, qc_sel4(ok, _mm256_sub_pd(s2, _mm256_mul_pd(d, d)), s2));
                }
                __m256d d = _mm256_sub_pd(v, ref);
                s1 = qc_sel4(valid, _mm256_add_pd(s1, d), s1);
                s2 = qc_sel4(valid, _mm256_add_pd(s2, _mm256_mul_pd(d, d)), s2);
                cnt = _mm256_add_pd(cnt, _mm256_and_pd(valid, one));
            }
            /* moment_stat: (cnt s2 - s1^2) / (cnt (cnt - 1)), negatives to 0, exactly 0 when flat */
            __m256d var = _mm256_mul_pd(_mm256_sub_pd(_mm256_mul_pd(cnt, s2), _mm256_mul_pd(s1, s1)),
                                        _mm256_div_pd(one, _mm256_mul_pd(cnt, _mm256_sub_pd(cnt, one))));
            var = qc_sel4(_mm256_cmp_pd(var, zero, _CMP_LT_OQ), zero, var);
            if (std)
                var = _mm256_sqrt_pd(var);
            var = qc_sel4(_mm256_cmp_pd(prev_end, _mm256_set1_pd((double)ws), _CMP_LT_OQ), zero, var);
            var = qc_sel4(_mm256_cmp_pd(cnt, _mm256_set1_pd(2.0), _CMP_LT_OQ), nan, var);
            qc_store4(outs, t, var);
        }
        _mm256_storeu_pd(state, ref); _mm256_storeu_pd(state + 4, s1); _mm256_storeu_pd(state + 8, s2);
        _mm256_storeu_pd(state + 12, cnt); _mm256_storeu_pd(state + 16, last);
        _mm256_storeu_pd(state + 20, last_at); _mm256_storeu_pd(state + 24, prev_end);
        *since_io = since;
    }

    /* Corr (cov = 0) or Cov (cov = 1) of pair_row, four row pairs in lanes. state (16 x 4 lanes): rx,
       ry, px, py, pxx, pyy, pxy, pn, xn, yn, run_px (last, last_at, prev_end), run_py (the same); rx
       and ry come in set (each row's first paired values). `since` as in qc_var_rows4. Windows
       whose own std may be within qlib's absolute tolerance (rare) are checked lane by lane. */
    static QC_AVX2 void qc_pair_rows4(const double* const* xs, const double* const* ys, double* const* outs,
                                      Py_ssize_t n, Py_ssize_t w, int cov, int compat, double* state,
                                      Py_ssize_t* since_io, Py_ssize_t rebuild_min, double atol2, double flat_rtol) {
        const __m256d zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0), nan = _mm256_set1_pd(NAN);
        const __m256d v_atol2 = _mm256_set1_pd(atol2), rtol2 = _mm256_set1_pd(flat_rtol * flat_rtol);
        __m256d rx = _mm256_loadu_pd(state), ry = _mm256_loadu_pd(state + 4);
        __m256d px = zero, py = zero, pxx = zero, pyy = zero, pxy = zero, pn = zero, xn = zero, yn = zero;
        __m256d xlast = nan, xlast_at = _mm256_set1_pd(-1.0), xprev_end = xlast_at;
        __m256d ylast = nan, ylast_at = xlast_at, yprev_end = xlast_at;
        double lanes[4];
        Py_ssize_t t, j, ws, since = 0;
        int l, check;
        for (t = 0; t < n; t++) {
            ws = t >= w ? t - w + 1 : 0;
            __m256d a = qc_load4(xs, t), b = qc_load4(ys, t);
            __m256d aok = _mm256_cmp_pd(a, a, _CMP_ORD_Q), bok = _mm256_cmp_pd(b, b, _CMP_ORD_Q);
            __m256d both = _mm256_and_pd(aok, bok);
            qc_run_push4(&xlast, &xlast_at, &xprev_end, a, both, t);
            qc_run_push4(&ylast, &ylast_at, &yprev_end, b, both, t);
            xn = _mm256_add_pd(xn, _mm256_and_pd(aok, one));
            yn = _mm256_add_pd(yn, _mm256_and_pd(bok, one));
            __m256d oa = zero, ob = zero;
            if (t >= w) {
                oa = qc_load4(xs, t - w);
                ob = qc_load4(ys, t - w);
                xn = _mm256_sub_pd(xn, _mm256_and_pd(_mm256_cmp_pd(oa, oa, _CMP_ORD_Q), one));
                yn = _mm256_sub_pd(yn, _mm256_and_pd(_mm256_cmp_pd(ob, ob, _CMP_ORD_Q), one));
            }
            since += 1;
            if (since >= rebuild_min && since >= t - ws + 1) {  /* re-centre on the window's paired means */
                since = 0;
                px = py = pn = zero;
                for (j = ws; j <= t; j++) {
                    __m256d xj = qc_load4(xs, j), yj = qc_load4(ys, j);
                    __m256d ok = _mm256_and_pd(_mm256_cmp_pd(xj, xj, _CMP_ORD_Q), _mm256_cmp_pd(yj, yj, _CMP_ORD_Q));
                    px = qc_sel4(ok, _mm256_add_pd(px, xj), px);
                    py = qc_sel4(ok, _mm256_add_pd(py, yj), py);
                    pn = _mm256_add_pd(pn, _mm256_and_pd(ok, one));
                }
                __m256d some = _mm256_cmp_pd(pn, zero, _CMP_GT_OQ);
                rx = qc_sel4(some, _mm256_div_pd(px, pn), rx);
                ry = qc_sel4(some, _mm256_div_pd(py, pn), ry);
                px = py = pxx = pyy = pxy = pn = zero;
                for (j = ws; j <= t; j++) {
                    __m256d dx = _mm256_sub_pd(qc_load4(xs, j), rx), dy = _mm256_sub_pd(qc_load4(ys, j), ry);
                    __m256d ok = _mm256_and_pd(_mm256_cmp_pd(dx, dx, _CMP_ORD_Q), _mm256_cmp_pd(dy, dy, _CMP_ORD_Q));
                    px = qc_sel4(ok, _mm256_add_pd(px, dx), px);
                    py = qc_sel4(ok, _mm256_add_pd(py, dy), py);
                    pxx = qc_sel4(ok, _mm256_add_pd(pxx, _mm256_mul_pd(dx, dx)), pxx);
                    pyy = qc_sel4(ok, _mm256_add_pd(pyy, _mm256_mul_pd(dy, dy)), pyy);
                    pxy = qc_sel4(ok, _mm256_add_pd(pxy, _mm256_mul_pd(dx, dy)), pxy);
                    pn = _mm256_add_pd(pn, _mm256_and_pd(ok, one));
                }
            } else {
                if (t >= w) {
                    __m256d dx = _mm256_sub_pd(oa, rx), dy = _mm256_sub_pd(ob, ry);
                    __m256d ok = _mm256_and_pd(_mm256_cmp_pd(dx, dx, _CMP_ORD_Q), _mm256_cmp_pd(dy, dy, _CMP_ORD_Q));
                    pn = _mm256_sub_pd(pn, _mm256_and_pd(ok, one));
                    __m256d emptied = _mm256_and_pd(ok, _mm256_cmp_pd(pn, zero, _CMP_EQ_OQ));
                    px = _mm256_andnot_pd(emptied, qc_sel4(ok, _mm256_sub_pd(px, dx), px));
                    py = _mm256_andnot_pd(emptied, qc_sel4(ok, _mm256_sub_pd(py, dy), py));
                    pxx = _mm256_andnot_pd(emptied, qc_sel4(ok, _mm256_sub_pd(pxx, _mm256_mul_pd(dx, dx)), pxx));
                    pyy = _mm256_andnot_pd(emptied, qc_sel4(ok, _mm256_sub_pd(pyy, _mm256_mul_pd(dy, dy)), pyy));
                    pxy = _mm256_andnot_pd(emptied, qc_sel4(ok, _mm256_sub_pd(pxy, _mm256_mul_pd(dx, dy)), pxy));
                }
                __m256d dx = _mm256_sub_pd(a, rx), dy = _mm256_sub_pd(b, ry);
                __m256d ok = _mm256_and_pd(_mm256_cmp_pd(dx, dx, _CMP_ORD_Q), _mm256_cmp_pd(dy, dy, _CMP_ORD_Q));
                px = qc_sel4(ok, _mm256_add_pd(px, dx), px);
                py = qc_sel4(ok, _mm256_add_pd(py, dy), py);
                pxx = qc_sel4(ok, _mm256_add_pd(pxx, _mm256_mul_pd(dx, dx)), pxx);
                pyy = qc_sel4(ok, _mm256_add_pd(pyy, _mm256_mul_pd(dy, dy)), pyy);
                pxy = qc_sel4(ok, _mm256_add_pd(pxy, _mm256_mul_pd(dx, dy)), pxy);
                pn = _mm256_add_pd(pn, _mm256_and_pd(ok, one));
            }
            /* the statistic, as pair_row's chain of cases (later selects take precedence) */
            __m256d vws = _mm256_set1_pd((double)ws), r;
            __m256d inv = _mm256_div_pd(one, pn), my = _mm256_mul_pd(py, inv);
            __m256d cxy = _mm256_sub_pd(pxy, _mm256_mul_pd(px, my));
            __m256d flat = _mm256_or_pd(_mm256_cmp_pd(xprev_end, vws, _CMP_LT_OQ), _mm256_cmp_pd(yprev_end, vws, _CMP_LT_OQ));
            if (cov) {
                r = _mm256_mul_pd(cxy, _mm256_div_pd(one, _mm256_sub_pd(pn, one)));
                r = qc_sel4(flat, zero, r);
            } else {
                __m256d mx = _mm256_mul_pd(px, inv);
                __m256d vx = _mm256_sub_pd(pxx, _mm256_mul_pd(px, mx)), vy = _mm256_sub_pd(pyy, _mm256_mul_pd(py, my));
                __m256d tol = _mm256_mul_pd(rtol2, _mm256_sub_pd(pn, one));
                __m256d cx = _mm256_add_pd(rx, mx), cy = _mm256_add_pd(ry, my);
                __m256d none = _mm256_or_pd(
                    _mm256_or_pd(_mm256_cmp_pd(vx, _mm256_mul_pd(_mm256_mul_pd(tol, cx), cx), _CMP_LE_OQ),
                                 _mm256_cmp_pd(vy, _mm256_mul_pd(_mm256_mul_pd(tol, cy), cy), _CMP_LE_OQ)),
                    _mm256_or_pd(_mm256_cmp_pd(vx, zero, _CMP_LE_OQ), _mm256_cmp_pd(vy, zero, _CMP_LE_OQ)));
                r = _mm256_div_pd(cxy, _mm256_sqrt_pd(_mm256_mul_pd(vx, vy)));
                r = qc_sel4(_mm256_cmp_pd(r, one, _CMP_GT_OQ), one, r);
                r = qc_sel4(_mm256_cmp_pd(r, _mm256_sub_pd(zero, one), _CMP_LT_OQ), _mm256_set1_pd(-1.0), r);
                r = qc_sel4(_mm256_or_pd(flat, none), nan, r);
                if (compat) {
                    __m256d sx = _mm256_cmp_pd(vx, _mm256_mul_pd(v_atol2, _mm256_sub_pd(xn, one)), _CMP_LE_OQ);
                    __m256d sy = _mm256_cmp_pd(vy, _mm256_mul_pd(v_atol2, _mm256_sub_pd(yn, one)), _CMP_LE_OQ);
                    __m256d live = _mm256_andnot_pd(_mm256_or_pd(flat, none), _mm256_or_pd(sx, sy));
                    check = _mm256_movemask_pd(_mm256_andnot_pd(_mm256_cmp_pd(pn, _mm256_set1_pd(2.0), _CMP_LT_OQ), live));
                    if (check) {
                        int mx_ = _mm256_movemask_pd(sx), my_ = _mm256_movemask_pd(sy);
                        _mm256_storeu_pd(lanes, r);
                        for (l = 0; l < 4; l++)
                            if ((check >> l & 1) && (((mx_ >> l & 1) && qc_own_std_small(xs[l], ws, t, atol2))
                                                     || ((my_ >> l & 1) && qc_own_std_small(ys[l], ws, t, atol2))))
                                lanes[l] = NAN;
                        r = _mm256_loadu_pd(lanes);
                    }
                }
            }
            r = qc_sel4(_mm256_cmp_pd(pn, _mm256_set1_pd(2.0), _CMP_LT_OQ), nan, r);
            qc_store4(outs, t, r);
        }
        __m256d keep[16] = {rx, ry, px, py, pxx, pyy, pxy, pn, xn, yn, xlast, xlast_at, xprev_end, ylast, ylast_at, yprev_end};
        for (l = 0; l < 16; l++)
            _mm256_storeu_pd(state + 4 * l, keep[l]);
        *since_io = since;
    }


    /* Slope, Rsquare, Resi of regression_row (an output's rows NULL when not wanted), four rows in
       lanes. state (9 x 4 lanes): ref, sx, sxx, sy, syy, sxy, count, run.last, run.last_at,
       run.prev_end (10 x 4; ref comes in set); `since` and `anchor` are the same in every lane and
       come back for the scalar rest. */
    static QC_AVX2 void qc_regression_rows4(const double* const* xs, double* const* slopes, double* const* rsquares,
                                            double* const* resis, Py_ssize_t n, Py_ssize_t w, int compat,
                                            int expanding, double* state, Py_ssize_t* since_io,
                                            Py_ssize_t* anchor_io, Py_ssize_t rebuild_min, double atol2,
                                            double flat_rtol) {
        const __m256d zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0), nan = _mm256_set1_pd(NAN);
        __m256d ref = _mm256_loadu_pd(state), sx = zero, sxx = zero, sy = zero, syy = zero, sxy = zero, cnt = zero;
        __m256d last = nan, last_at = _mm256_set1_pd(-1.0), prev_end = last_at;
        Py_ssize_t t, j, ws, since = 0, anchor = 0;
        int l;
        for (t = 0; t < n; t++) {
            ws = t >= w ? t - w + 1 : 0;
            __m256d v = qc_load4(xs, t), valid = _mm256_cmp_pd(v, v, _CMP_ORD_Q);
            qc_run_push4(&last, &last_at, &prev_end, v, valid, t);
            since += 1;
            if (since >= rebuild_min && since >= t - ws + 1) {
                since = 0;
                anchor = t;
                ref = qc_window_mean4(xs, ws, t, ref);
                sx = sxx = sy = syy = sxy = cnt = zero;
                for (j = ws; j <= t; j++) {
                    __m256d xj = qc_load4(xs, j), ok = _mm256_cmp_pd(xj, xj, _CMP_ORD_Q);
                    __m256d p = _mm256_set1_pd((double)(j - anchor)), d = _mm256_sub_pd(xj, ref);
                    sx = qc_sel4(ok, _mm256_add_pd(sx, p), sx);
                    sxx = qc_sel4(ok, _mm256_add_pd(sxx, _mm256_mul_pd(p, p)), sxx);
                    sy = qc_sel4(ok, _mm256_add_pd(sy, d), sy);
                    syy = qc_sel4(ok, _mm256_add_pd(syy, _mm256_mul_pd(d, d)), syy);
                    sxy = qc_sel4(ok, _mm256_add_pd(sxy, _mm256_mul_pd(p, d)), sxy);
                    cnt = _mm256_add_pd(cnt, _mm256_and_pd(ok, one));
                }
            } else {
                if (t >= w) {
                    __m256d old = qc_load4(xs, t - w), ok = _mm256_cmp_pd(old, old, _CMP_ORD_Q);
                    cnt = _mm256_sub_pd(cnt, _mm256_and_pd(ok, one));
                    __m256d emptied = _mm256_and_pd(ok, _mm256_cmp_pd(cnt, zero, _CMP_EQ_OQ));
                    __m256d p = _mm256_set1_pd((double)(t - w - anchor)), d = _mm256_sub_pd(old, ref);
                    sx = _mm256_andnot_pd(emptied, qc_sel4(ok, _mm256_sub_pd(sx, p), sx));
                    sxx = _mm256_andnot_pd(emptied, qc_sel4(ok, _mm256_sub_pd(sxx, _mm256_mul_pd(p, p)), sxx));
                    sy = _mm256_andnot_pd(emptied, qc_sel4(ok, _mm256_sub_pd(sy, d), sy));
                    syy = _mm256_andnot_pd(emptied, qc_sel4(ok, _mm256_sub_pd(syy, _mm256_mul_pd(d, d)), syy));
                    sxy = _mm256_andnot_pd(emptied, qc_sel4(ok, _mm256_sub_pd(sxy, _mm256_mul_pd(p, d)), sxy));
                }
                __m256d p = _mm256_set1_pd((double)(t - anchor)), d = _mm256_sub_pd(v, ref);
                sx = qc_sel4(valid, _mm256_add_pd(sx, p), sx);
                sxx = qc_sel4(valid, _mm256_add_pd(sxx, _mm256_mul_pd(p, p)), sxx);
                sy = qc_sel4(valid, _mm256_add_pd(sy, d), sy);
                syy = qc_sel4(valid, _mm256_add_pd(syy, _mm256_mul_pd(d, d)), syy);
                sxy = qc_sel4(valid, _mm256_add_pd(sxy, _mm256_mul_pd(p, d)), sxy);
                cnt = _mm256_add_pd(cnt, _mm256_and_pd(valid, one));
            }
            /* the outputs, as regression_row's cases (later selects take precedence) */
            __m256d few = _mm256_cmp_pd(cnt, _mm256_set1_pd(2.0), _CMP_LT_OQ);
            __m256d flat = _mm256_cmp_pd(prev_end, _mm256_set1_pd((double)ws), _CMP_LT_OQ);
            __m256d inv = _mm256_div_pd(one, cnt);
            __m256d mx = _mm256_mul_pd(sx, inv), my = _mm256_mul_pd(sy, inv);
            __m256d cxy = _mm256_sub_pd(sxy, _mm256_mul_pd(sx, my));
            __m256d gapless = _mm256_cmp_pd(cnt, _mm256_set1_pd((double)(t - ws + 1)), _CMP_EQ_OQ);
            __m256d full_vx = _mm256_div_pd(_mm256_set1_pd(12.0),
                                            _mm256_mul_pd(cnt, _mm256_sub_pd(_mm256_mul_pd(cnt, cnt), one)));
            __m256d slope = qc_sel4(gapless, _mm256_mul_pd(cxy, full_vx),
                                    _mm256_div_pd(cxy, _mm256_sub_pd(sxx, _mm256_mul_pd(sx, mx))));
            if (slopes[0] != NULL)
                qc_store4(slopes, t, qc_sel4(few, nan, qc_sel4(flat, zero, slope)));
            if (resis[0] != NULL) {
                __m256d resi = _mm256_sub_pd(_mm256_sub_pd(_mm256_sub_pd(v, ref), my),
                                             _mm256_mul_pd(slope, _mm256_sub_pd(_mm256_set1_pd((double)(t - anchor)), mx)));
                resi = qc_sel4(flat, zero, resi);
                qc_store4(resis, t, qc_sel4(_mm256_or_pd(few, _mm256_cmp_pd(v, v, _CMP_UNORD_Q)), nan, resi));
            }
            if (rsquares[0] != NULL) {
                __m256d vy = _mm256_sub_pd(syy, _mm256_mul_pd(sy, my)), mean = _mm256_add_pd(ref, my);
                __m256d nm1 = _mm256_sub_pd(cnt, one), bad = _mm256_cmp_pd(vy, zero, _CMP_LE_OQ);
                if (compat) {
                    if (!expanding)
                        bad = _mm256_or_pd(bad, _mm256_cmp_pd(vy, _mm256_mul_pd(_mm256_set1_pd(atol2), nm1), _CMP_LE_OQ));
                } else {
                    __m256d fm = _mm256_mul_pd(_mm256_set1_pd(flat_rtol), mean);
                    bad = _mm256_or_pd(bad, _mm256_cmp_pd(vy, _mm256_mul_pd(_mm256_mul_pd(fm, fm), nm1), _CMP_LE_OQ));
                }
                __m256d r2 = _mm256_div_pd(_mm256_mul_pd(slope, cxy), vy);
                r2 = qc_sel4(_mm256_cmp_pd(r2, one, _CMP_LT_OQ), r2, one);
                qc_store4(rsquares, t, qc_sel4(_mm256_or_pd(_mm256_or_pd(few, flat), bad), nan, r2));
            }
        }
        __m256d keep[10] = {ref, sx, sxx, sy, syy, sxy, cnt, last, last_at, prev_end};
        for (l = 0; l < 10; l++)
            _mm256_storeu_pd(state + 4 * l, keep[l]);
        *since_io = since;
        *anchor_io = anchor;
    }

    /* Med (median = 1) or Quantiles qs[0:k] of sorted_window_row, four rows in lanes, each row's
       sorted buffer one lane of buf[0:cap] (a slot per vector, cap <= QC_SORTED_CAP; buf[-1] and
       buf[cap] stay +inf; each step writes the other of two buffers). Every step does exactly the
       scalar kernel's drop-old/insert-new on each lane, by selects instead of a memmove: the counts,
       the shift and the +inf padding are the same, so the buffers and the statistics are bit for
       bit the scalar ones. outs[4 j + l] is row l's output j. Each row's buffer (rows[l][0:cap])
       and count come back for the scalar rest. */
    static QC_AVX2 void qc_sorted_rows4(const double* const* xs, double* const* outs, const double* qs, Py_ssize_t k,
                                        Py_ssize_t n, Py_ssize_t w, Py_ssize_t cap, int median, double* const* rows,
                                        double* counts) {
        __m256d mem[2][QC_SORTED_CAP + 2], *buf = mem[0] + 1, *next = mem[1] + 1, *swap;
        const __m256d zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0), inf = _mm256_set1_pd(INFINITY);
        const __m256d nan = _mm256_set1_pd(NAN), half = _mm256_set1_pd(2.0);
        __m256d cnt = zero;
        double lanes[4], c0;
        Py_ssize_t t, j, q, l, lo;
        for (j = 0; j < cap + 2; j++)
            mem[0][j] = mem[1][j] = inf;
        for (t = 0; t < n; t++) {
            __m256d v = qc_load4(xs, t), old = t >= w ? qc_load4(xs, t - w) : nan;
            __m256d vok = _mm256_cmp_pd(v, v, _CMP_ORD_Q), ook = _mm256_cmp_pd(old, old, _CMP_ORD_Q);
            cnt = _mm256_sub_pd(_mm256_add_pd(cnt, _mm256_and_pd(vok, one)), _mm256_and_pd(ook, one));
            v = qc_sel4(vok, v, inf);
            old = qc_sel4(ook, old, inf);
            __m256d p_out = zero, p_in = zero;
            for (j = 0; j < cap; j++) {
                p_out = _mm256_add_pd(p_out, _mm256_and_pd(_mm256_cmp_pd(buf[j], old, _CMP_LT_OQ), one));
                p_in = _mm256_add_pd(p_in, _mm256_and_pd(_mm256_cmp_pd(buf[j], v, _CMP_LT_OQ), one));
            }
            __m256d up = _mm256_cmp_pd(old, v, _CMP_LT_OQ);
            p_in = _mm256_sub_pd(p_in, _mm256_and_pd(up, one));
            for (j = 0; j < cap; j++) {
                __m256d jj = _mm256_set1_pd((double)j);
                /* up: slots p_out .. p_in - 1 take their upper neighbour; else p_in + 1 .. p_out their lower one */
                __m256d down = _mm256_and_pd(up, _mm256_and_pd(_mm256_cmp_pd(p_out, jj, _CMP_LE_OQ),
                                                               _mm256_cmp_pd(jj, p_in, _CMP_LT_OQ)));
                __m256d rise = _mm256_andnot_pd(up, _mm256_and_pd(_mm256_cmp_pd(p_in, jj, _CMP_LT_OQ),
                                                                  _mm256_cmp_pd(jj, p_out, _CMP_LE_OQ)));
                __m256d slot = qc_sel4(down, buf[j + 1], qc_sel4(rise, buf[j - 1], buf[j]));
                next[j] = qc_sel4(_mm256_cmp_pd(jj, p_in, _CMP_EQ_OQ), v, slot);
            }
            swap = buf;  /* the two buffers take turns (their +inf ends are never written) */
            buf = next;
            next = swap;
            _mm256_storeu_pd(lanes, cnt);
            c0 = lanes[0];
            if (lanes[1] == c0 && lanes[2] == c0 && lanes[3] == c0) {  /* the same count: the same slots */
                if (c0 == 0.0) {
                    for (q = 0; q < k; q++)
                        qc_store4(outs + 4 * q, t, nan);
                } else if (median) {
                    Py_ssize_t c = (Py_ssize_t)c0;
                    qc_store4(outs, t, c % 2 ? buf[c / 2] : _mm256_div_pd(_mm256_add_pd(buf[c / 2 - 1], buf[c / 2]), half));
                } else {
                    for (q = 0; q < k; q++) {
                        double pos = qs[q] * ((Py_ssize_t)c0 - 1), frac;
                        lo = (Py_ssize_t)pos;
                        frac = pos - lo;
                        qc_store4(outs + 4 * q, t, frac == 0.0 ? buf[lo] : _mm256_add_pd(buf[lo],
                                  _mm256_mul_pd(_mm256_sub_pd(buf[lo + 1], buf[lo]), _mm256_set1_pd(frac))));
                    }
                }
            } else {
                for (l = 0; l < 4; l++) {
                    Py_ssize_t c = (Py_ssize_t)lanes[l];
                    const double* col = (const double*)buf + l;  /* slot j of lane l: col[4 j] */
                    for (q = 0; q < k; q++) {
                        double r;
                        if (c == 0) {
                            r = NAN;
                        } else if (median) {
                            r = c % 2 ? col[4 * (c / 2)] : (col[4 * (c / 2 - 1)] + col[4 * (c / 2)]) / 2.0;
                        } else {
                            double pos = qs[q] * (c - 1), frac;
                            lo = (Py_ssize_t)pos;
                            frac = pos - lo;
                            r = frac == 0.0 ? col[4 * lo] : col[4 * lo] + (col[4 * (lo + 1)] - col[4 * lo]) * frac;
                        }
                        outs[4 * q + l][t] = r;
                    }
                }
            }
        }
        _mm256_storeu_pd(counts, cnt);
        for (j = 0; j < cap; j++) {
            _mm256_storeu_pd(lanes, buf[j]);
            for (l = 0; l < 4; l++)
                rows[l][j] = lanes[l];
        }
    }

    /* Max/Min (values into `values`) and IdxMax/IdxMin (positions into `indexes`) of extreme_row,
       four rows in lanes over their first b rows, b a whole number of blocks of w (the rows' blocks
       agree there; each row's last, shorter block is the scalar kernel's). The per-row prefix and
       suffix bests go to `scratch` (g, gk, h, hk: b slots of 4 lanes each), which the scalar rest
       reads back for windows that start in the last of these blocks. next_nans[l] (NULL unless
       qlib's NaN-first IdxMax is wanted) is row l's next-NaN table. */
    static QC_AVX2 void qc_extreme_rows4(const double* const* xs, double* const* values, double* const* indexes,
                                         const Py_ssize_t* const* next_nans, Py_ssize_t b, Py_ssize_t w, int is_max,
                                         double* scratch, double* counts) {
        const __m256d zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0), nan = _mm256_set1_pd(NAN);
        const __m256d ninf = _mm256_set1_pd(-INFINITY), sign = _mm256_set1_pd(is_max ? 1.0 : -1.0);
        __m256d* g = (__m256d*)scratch, *gk = g + b, *h = gk + b, *hk = h + b;
        __m256d bk = ninf, bi = zero, cnt = zero;
        double at[4], lanes[4];
        Py_ssize_t t, bs, c, ws, l;
        for (t = 0, c = 0; t < b; t++) {
            __m256d v = qc_load4(xs, t), tt = _mm256_set1_pd((double)t);
            __m256d k = qc_sel4(_mm256_cmp_pd(v, v, _CMP_ORD_Q), _mm256_mul_pd(sign, v), ninf);
            if (c == 0) {
                bk = k;
                bi = tt;
            } else {
                __m256d take = _mm256_cmp_pd(k, bk, _CMP_GT_OQ);  /* strict: an earlier equal key stays best */
                bi = qc_sel4(take, tt, bi);
                bk = qc_sel4(take, k, bk);
            }
            _mm256_storeu_pd((double*)(g + t), bi);
            _mm256_storeu_pd((double*)(gk + t), bk);
            if (++c == w)
                c = 0;
        }
        for (bs = b - w; bs >= 0; bs -= w) {
            bk = ninf;
            bi = _mm256_set1_pd((double)(bs + w - 1));
            for (t = bs + w - 1; t >= bs; t--) {
                __m256d v = qc_load4(xs, t);
                __m256d k = qc_sel4(_mm256_cmp_pd(v, v, _CMP_ORD_Q), _mm256_mul_pd(sign, v), ninf);
                __m256d take = _mm256_cmp_pd(k, bk, _CMP_GE_OQ);  /* backwards, an equal key further left wins */
                bi = qc_sel4(take, _mm256_set1_pd((double)t), bi);
                bk = qc_sel4(_mm256_cmp_pd(k, bk, _CMP_GT_OQ), k, bk);
                _mm256_storeu_pd((double*)(h + t), bi);
                _mm256_storeu_pd((double*)(hk + t), bk);
            }
        }
        for (t = 0, c = 0; t < b; t++) {
            __m256d v = qc_load4(xs, t);
            cnt = _mm256_add_pd(cnt, _mm256_and_pd(_mm256_cmp_pd(v, v, _CMP_ORD_Q), one));
            if (t >= w) {
                __m256d old = qc_load4(xs, t - w);
                cnt = _mm256_sub_pd(cnt, _mm256_and_pd(_mm256_cmp_pd(old, old, _CMP_ORD_Q), one));
            }
            ws = t >= w ? t - w + 1 : 0;
            __m256d gt = _mm256_loadu_pd((const double*)(g + t)), best = gt;
            if (!(t < w || c == w - 1))  /* a window that does not start a block spans two */
                best = qc_sel4(_mm256_cmp_pd(_mm256_loadu_pd((const double*)(hk + ws)),
                                             _mm256_loadu_pd((const double*)(gk + t)), _CMP_GE_OQ),
                               _mm256_loadu_pd((const double*)(h + ws)), gt);
            __m256d none = _mm256_cmp_pd(cnt, zero, _CMP_EQ_OQ);
            _mm256_storeu_pd(at, best);
            if (values[0] != NULL) {
                for (l = 0; l < 4; l++)
                    lanes[l] = xs[l][(Py_ssize_t)at[l]];
                qc_store4(values, t, qc_sel4(none, nan, _mm256_loadu_pd(lanes)));
            }
            if (indexes[0] != NULL) {
                for (l = 0; l < 4; l++) {
                    Py_ssize_t p = (Py_ssize_t)at[l];
                    if (next_nans[0] != NULL && next_nans[l][ws] <= t)
                        p = next_nans[l][ws];  /* qlib's IdxMax is np.argmax: a NaN in the window wins */
                    lanes[l] = (double)(p - ws + 1);
                }
                qc_store4(indexes, t, qc_sel4(none, nan, _mm256_loadu_pd(lanes)));
            }
            if (++c == w)
                c = 0;
        }
        _mm256_storeu_pd(counts, cnt);
    }
    #else
    static int qc_has_avx2(void) { return 0; }
    static void qc_sum_rows4(const double* const* xs, double* const* outs, Py_ssize_t n, Py_ssize_t w,
                             int mean, double* state) { (void)xs; (void)outs; (void)n; (void)w; (void)mean; (void)state; }
    static void qc_var_rows4(const double* const* xs, double* const* outs, Py_ssize_t n, Py_ssize_t w, int std,
                             double* state, Py_ssize_t* since_io, Py_ssize_t rebuild_min) {
        (void)xs; (void)outs; (void)n; (void)w; (void)std; (void)state; (void)since_io; (void)rebuild_min;
    }
    static void qc_pair_rows4(const double* const* xs, const double* const* ys, double* const* outs, Py_ssize_t n,
                              Py_ssize_t w, int cov, int compat, double* state, Py_ssize_t* since_io,
                              Py_ssize_t rebuild_min, double atol2, double flat_rtol) {
        (void)xs; (void)ys; (void)outs; (void)n; (void)w; (void)cov; (void)compat; (void)state; (void)since_io;
        (void)rebuild_min; (void)atol2; (void)flat_rtol;
    }
    static void qc_regression_rows4(const double* const* xs, double* const* slopes, double* const* rsquares,
                                    double* const* resis, Py_ssize_t n, Py_ssize_t w, int compat, int expanding,
                                    double* state, Py_ssize_t* since_io, Py_ssize_t* anchor_io,
                                    Py_ssize_t rebuild_min, double atol2, double flat_rtol) {
        (void)xs; (void)slopes; (void)rsquares; (void)resis; (void)n; (void)w; (void)compat; (void)expanding;
        (void)state; (void)since_io; (void)anchor_io; (void)rebuild_min; (void)atol2; (void)flat_rtol;
    }
    static void qc_extreme_rows4(const double* const* xs, double* const* values, double* const* indexes,
                                 const Py_ssize_t* const* next_nans, Py_ssize_t b, Py_ssize_t w, int is_max,
                                 double* scratch, double* counts) {
        (void)xs; (void)values; (void)indexes; (void)next_nans; (void)b; (void)w; (void)is_max; (void)scratch;
        (void)counts;
    }
    static void qc_sorted_rows4(const double* const* xs, double* const* outs, const double* qs, Py_ssize_t k,
                                Py_ssize_t n, Py_ssize_t w, Py_ssize_t cap, int median, double* const* rows,
                                double* counts) {
        (void)xs; (void)outs; (void)qs; (void)k; (void)n; (void)w; (void)cap; (void)median; (void)rows; (void)counts;
    }
    #endif
    """
    int qc_has_avx2() nogil
    void qc_sum_rows4(const double* const* xs, double* const* outs, idx_t n, idx_t w, bint mean,
                      double* state) nogil
    void qc_var_rows4(const double* const* xs, double* const* outs, idx_t n, idx_t w, bint std,
                      double* state, idx_t* since_io, idx_t rebuild_min) nogil
    void qc_pair_rows4(const double* const* xs, const double* const* ys, double* const* outs, idx_t n,
                       idx_t w, bint cov, bint compat, double* state, idx_t* since_io, idx_t rebuild_min,
                       double atol2, double flat_rtol) nogil
    bint qc_own_std_small(const double* v, idx_t ws, idx_t t, double atol2) nogil
    void qc_extreme_rows4(const double* const* xs, double* const* values, double* const* indexes,
                          const idx_t* const* next_nans, idx_t b, idx_t w, bint is_max, double* scratch,
                          double* counts) nogil
    enum: QC_SORTED_CAP
    void qc_sorted_rows4(const double* const* xs, double* const* outs, const double* qs, idx_t k, idx_t n, idx_t w,
                         idx_t cap, bint median, double* const* rows, double* counts) nogil
    void qc_regression_rows4(const double* const* xs, double* const* slopes, double* const* rsquares,
                             double* const* resis, idx_t n, idx_t w, bint compat, bint expanding, double* state,
                             idx_t* since_io, idx_t* anchor_io, idx_t rebuild_min, double atol2,
                             double flat_rtol) nogil


#: Operator names; an operator's code is its position here (quantcore.kernels maps names to codes).
ROLLING_OPS = (
    "Sum", "Mean", "Count", "Var", "Std", "Skew", "Kurt", "Max", "Min", "IdxMax", "IdxMin",
    "Med", "Quantile", "Rank", "Mad", "Slope", "Rsquare", "Resi", "WMA", "Delta", "First",
)
PAIR_OPS = ("Corr", "Cov")

cdef enum:
    SUM, MEAN, COUNT, VAR, STD, SKEW, KURT, MAX, MIN, IDXMAX, IDXMIN, MED, QUANTILE, RANK, MAD,
    SLOPE, RSQUARE, RESI, WMA, DELTA, FIRST
cdef enum:
    CORR, COV

cdef enum:
    # fewest steps between two recomputations of running sums. Sums are re-centred about once per
    # window length, so the centre never drifts far from the window mean (higher moments lose
    # (drift / std)**k digits to cancellation otherwise).
    REBUILD_MIN = 4
    # Med/Quantile/Rank/Mad windows up to this many rows work on the raw window or a sorted
    # buffer (O(window) per step, SIMD counts); longer ones on a Fenwick tree of value ranks
    SHORT_WINDOW_MAX = 96
    # operators per rolling_group call: the size of group_row's table of output rows
    GROUP_MAX = 8
    # longest window the four-row Med/Quantile kernel takes: its steps cost O(window) selects, the
    # scalar kernel's a memmove and a store-to-load stall; on 300 x 2520 (Zen 3) 2.7x faster at 5,
    # 1.1x at 40, slower at 60
    SORTED_LANES_MAX = 40

# qlib masks Rsquare/Corr where pandas' rolling std is within this absolute distance of 0
# (ops.py: np.isclose(std, 0, atol=2e-05)); it is scale-dependent, hence compat-only.
cdef double QLIB_STD_ATOL = 2e-5
# compat=False instead treats a window as flat when std <= FLAT_RTOL * |mean| (scale-free)
cdef double FLAT_RTOL = 1e-10

SHORT_ORDERED_WINDOW_MAX = SHORT_WINDOW_MAX
MAX_GROUP = GROUP_MAX
QLIB_STD_ABS_TOL = QLIB_STD_ATOL
FLAT_STD_REL_TOL = FLAT_RTOL


#: Whether this CPU runs the AVX2 four-row kernels (Sum, Mean, Var, Std, Slope, Rsquare, Resi, Max, Min,
#: IdxMax, IdxMin, Med, Quantile, Corr, Cov) (x86-64 with AVX2, GCC or Clang build).
AVX2 = bool(qc_has_avx2())
if (SORTED_LANES_MAX + 3) & ~3 > QC_SORTED_CAP:  # sorted_cap(SORTED_LANES_MAX): the lanes' buffers on the stack
    raise ImportError(f"SORTED_LANES_MAX {SORTED_LANES_MAX} needs more than the {QC_SORTED_CAP} slots of qc_sorted_rows4")


def openmp_threads():
    """Threads a `threads=None` call uses (1 when built without OpenMP)."""
    return qc_default_threads() if qc_has_openmp() else 1


# ---------------------------------------------------------------------------------------------
# small shared pieces
# ---------------------------------------------------------------------------------------------

cdef struct Run:
    # Tracks the current run of equal valid values, ignoring NaNs: a window [ws, t] holds only
    # equal values exactly when the last valid value that differs from the run lies before ws.
    double last
    idx_t last_at
    idx_t prev_end


cdef inline void run_init(Run* r) noexcept nogil:
    r.last = NAN
    r.last_at = -1
    r.prev_end = -1


cdef inline void run_push(Run* r, double v, idx_t t) noexcept nogil:
    """Add a valid value. Whether v continues the run is a coin flip on 0/1 data (Mean($close >
    Ref($close, 1))), so the run's start moves by a select, not a branch; `last` takes v even when
    equal (as pandas' prev_value does), so no step waits on the previous step's select."""
    r.prev_end = qc_pick_index(v != r.last, r.last_at, r.prev_end)
    r.last = v
    r.last_at = t


cdef inline bint run_flat(const Run* r, idx_t ws) noexcept nogil:
    return r.prev_end < ws


cdef inline void put(double* out, idx_t t, double v) noexcept nogil:
    """out[t] = v for an output a shared pass may leave out (NULL)."""
    if out != NULL:
        out[t] = v


cdef inline idx_t win_start(idx_t t, idx_t w) noexcept nogil:
    return t - w + 1 if t >= w else 0


cdef inline idx_t row_window(idx_t window, idx_t n) noexcept nogil:
    """The w a row kernel takes for `window` over n rows: n for expanding (0) or longer windows."""
    return n if (window == 0 or window > n) else window


cdef inline bint rebuild_due(idx_t since, idx_t wlen) noexcept nogil:
    return since >= REBUILD_MIN and since >= wlen


cdef inline double window_mean(const double* x, idx_t ws, idx_t t, double fallback) noexcept nogil:
    """Plain mean of the valid values in x[ws..t]; used only to choose a centre."""
    cdef double s = 0.0
    cdef idx_t j, c = 0
    for j in range(ws, t + 1):
        if x[j] == x[j]:
            s += x[j]
            c += 1
    return s / c if c > 0 else fallback


cdef inline double first_valid(const double* x, idx_t n) noexcept nogil:
    cdef idx_t j
    for j in range(n):
        if x[j] == x[j]:
            return x[j]
    return 0.0


cdef inline void neumaier_add(double* s, double* c, double v) noexcept nogil:
    cdef double t = s[0] + v
    if fabs(s[0]) >= fabs(v):
        c[0] += (s[0] - t) + v
    else:
        c[0] += (v - t) + s[0]
    s[0] = t


cdef inline bint has_inf(const double* x, idx_t n) noexcept nogil:
    """Whether x[0:n] holds +-inf (four float accumulators so the scan vectorises)."""
    cdef double c0 = 0.0, c1 = 0.0, c2 = 0.0, c3 = 0.0
    cdef idx_t j = 0
    while j + 4 <= n:
        c0 += 1.0 if fabs(x[j]) == INFINITY else 0.0
        c1 += 1.0 if fabs(x[j + 1]) == INFINITY else 0.0
        c2 += 1.0 if fabs(x[j + 2]) == INFINITY else 0.0
        c3 += 1.0 if fabs(x[j + 3]) == INFINITY else 0.0
        j += 4
    while j < n:
        c0 += 1.0 if fabs(x[j]) == INFINITY else 0.0
        j += 1
    return (c0 + c1) + (c2 + c3) > 0.0


cdef double* without_inf(const double* x, idx_t n) noexcept nogil:
    """A malloc'ed copy of x[0:n] with +-inf as NaN (NULL if out of memory)."""
    cdef double* c = <double*>malloc((n if n > 0 else 1) * sizeof(double))
    cdef idx_t j
    if c != NULL:
        for j in range(n):
            c[j] = NAN if fabs(x[j]) == INFINITY else x[j]
    return c


cdef inline idx_t lower_bound(const double* a, idx_t n, double v) noexcept nogil:
    """Number of a[j] < v in sorted a[0:n]; branch-free halving (the compare feeds a cmov)."""
    cdef const double* base = a
    cdef idx_t half
    if n == 0:
        return 0
    while n > 1:
        half = n >> 1
        base += half * (base[half - 1] < v)  # arithmetic, not `x if c else y`: gcc keeps a jump for that
        n -= half
    return (base - a) + (base[0] < v)


cdef int cmp_double(const void* a, const void* b) noexcept nogil:
    cdef double x = (<const double*>a)[0]
    cdef double y = (<const double*>b)[0]
    return (x > y) - (x < y)


# ---------------------------------------------------------------------------------------------
# Sum, Mean, Count: compensated running sum
# ---------------------------------------------------------------------------------------------

cdef struct SumState:
    double s
    double c
    idx_t cnt
    Run run


cdef inline void sum_init(SumState* st) noexcept nogil:
    st.s = 0.0
    st.c = 0.0
    st.cnt = 0
    run_init(&st.run)


cdef int sum_row(const double* x, double* out, idx_t n, idx_t w, int op) noexcept nogil:
    cdef SumState st
    sum_init(&st)
    sum_steps(&st, x, out, 0, n, w, op)
    return 0


cdef void sum_steps(SumState* st, const double* x, double* out, idx_t t0, idx_t n, idx_t w,
                    int op) noexcept nogil:
    """Rows t0..n-1 of sum_row from the state after row t0 - 1 (kept in locals meanwhile)."""
    cdef double s = st.s, c = st.c, v
    cdef idx_t t, cnt = st.cnt
    cdef Run run = st.run
    for t in range(t0, n):
        if t >= w:
            v = x[t - w]
            if v == v:
                cnt -= 1
                if cnt == 0:
                    s = 0.0
                    c = 0.0
                else:
                    neumaier_add(&s, &c, -v)
        v = x[t]
        if v == v:
            neumaier_add(&s, &c, v)
            cnt += 1
            run_push(&run, v, t)
        if op == COUNT:
            out[t] = cnt  # pandas: 0 (not NaN) for an all-NaN window
        elif cnt == 0:
            out[t] = NAN
        elif op == SUM:
            out[t] = s + c
        elif run_flat(&run, win_start(t, w)):
            out[t] = run.last  # mean of equal values, exactly (as pandas)
        else:
            out[t] = (s + c) / cnt
    st.s = s
    st.c = c
    st.cnt = cnt
    st.run = run


# ---------------------------------------------------------------------------------------------
# Var, Std, Skew, Kurt: centred power sums, periodically recomputed
# ---------------------------------------------------------------------------------------------

cdef struct CountFactors:
    # per-count constants of the moment formulas, recomputed only when the valid count changes
    idx_t n
    double inv_n
    double inv_nnm1  # 1 / (n (n - 1))
    double skew_f  # sqrt(n (n - 1)) / (n - 2)
    double kurt_a  # (n^2 - 1) / ((n - 2)(n - 3))
    double kurt_b  # 3 (n - 1)^2 / ((n - 2)(n - 3))


cdef inline void count_factors(CountFactors* f, idx_t cnt) noexcept nogil:
    cdef double n = <double>cnt
    if f.n == cnt:
        return
    f.n = cnt
    f.inv_n = 1.0 / n
    f.inv_nnm1 = 1.0 / (n * (n - 1.0))
    f.skew_f = sqrt(n * (n - 1.0)) / (n - 2.0)
    f.kurt_a = (n * n - 1.0) / ((n - 2.0) * (n - 3.0))
    f.kurt_b = 3.0 * (n - 1.0) * (n - 1.0) / ((n - 2.0) * (n - 3.0))


cdef inline double moment_stat(int op, idx_t cnt, double s1, double s2, double s3, double s4,
                               bint flat, CountFactors* f) noexcept nogil:
    cdef double mu, b, c, d, var
    if op == VAR or op == STD:
        if cnt < 2:
            return NAN
        if flat:
            return 0.0
        count_factors(f, cnt)
        var = (cnt * s2 - s1 * s1) * f.inv_nnm1
        if var < 0.0:
            var = 0.0
        return var if op == VAR else sqrt(var)
    if (op == SKEW and cnt < 3) or (op == KURT and cnt < 4) or flat:
        return NAN  # pandas: skew needs 3 values, kurt 4; a flat window has no shape
    count_factors(f, cnt)
    mu = s1 * f.inv_n
    b = s2 * f.inv_n - mu * mu
    if b <= 0.0:
        return NAN
    if op == SKEW:
        c = s3 * f.inv_n - mu * (3.0 * s2 * f.inv_n - 2.0 * mu * mu)
        return f.skew_f * c / (b * sqrt(b))
    d = s4 * f.inv_n - mu * (4.0 * s3 * f.inv_n - mu * (6.0 * s2 * f.inv_n - 3.0 * mu * mu))
    return f.kurt_a * d / (b * b) - f.kurt_b


cdef struct MomentState:
    double ref  # centre of the sums (the first valid value, then each recomputation's window mean)
    double s1
    double s2
    double s3
    double s4
    idx_t cnt
    idx_t since  # steps since the sums were last recomputed
    Run run


cdef int moment_row(const double* x, double* out, idx_t n, idx_t w, int op) noexcept nogil:
    cdef MomentState st
    st.ref = first_valid(x, n)
    st.s1 = st.s2 = st.s3 = st.s4 = 0.0
    st.cnt = 0
    st.since = 0
    run_init(&st.run)
    moment_steps(&st, x, out, 0, n, w, op)
    return 0


cdef void moment_steps(MomentState* st, const double* x, double* out, idx_t t0, idx_t n, idx_t w,
                       int op) noexcept nogil:
    """Rows t0..n-1 of moment_row from the state after row t0 - 1 (kept in locals meanwhile)."""
    cdef double ref = st.ref, v, d, d2
    cdef double s1 = st.s1, s2 = st.s2, s3 = st.s3, s4 = st.s4
    cdef idx_t t, j, ws, cnt = st.cnt, since = st.since
    cdef bint high = op == SKEW or op == KURT
    cdef Run run = st.run
    cdef CountFactors f
    f.n = -1
    for t in range(t0, n):
        ws = win_start(t, w)
        v = x[t]
        if v == v:
            run_push(&run, v, t)
        since += 1
        if rebuild_due(since, t - ws + 1):
            since = 0
            ref = window_mean(x, ws, t, ref)
            s1 = s2 = s3 = s4 = 0.0
            cnt = 0
            for j in range(ws, t + 1):
                v = x[j]
                if v == v:
                    d = v - ref
                    d2 = d * d
                    s1 += d
                    s2 += d2
                    if high:
                        s3 += d2 * d
                        s4 += d2 * d2
                    cnt += 1
        else:
            if t >= w:
                v = x[t - w]
                if v == v:
                    cnt -= 1
                    if cnt == 0:
                        s1 = s2 = s3 = s4 = 0.0
                    else:
                        d = v - ref
                        d2 = d * d
                        s1 -= d
                        s2 -= d2
                        if high:
                            s3 -= d2 * d
                            s4 -= d2 * d2
            v = x[t]
            if v == v:
                d = v - ref
                d2 = d * d
                s1 += d
                s2 += d2
                if high:
                    s3 += d2 * d
                    s4 += d2 * d2
                cnt += 1
        out[t] = moment_stat(op, cnt, s1, s2, s3, s4, run_flat(&run, ws), &f)
    st.ref = ref
    st.s1 = s1
    st.s2 = s2
    st.s3 = s3
    st.s4 = s4
    st.cnt = cnt
    st.since = since
    st.run = run


cdef struct Lanes:
    # four rows of a (N, T) panel run in the lanes of the AVX2 kernels: rows come sorted by span
    # length, so their common length m is most of each
    const double* xs[4]  # each row's span
    idx_t offsets[4]  # where its span starts in the panel (i * T + start)
    idx_t ns[4]  # span lengths
    idx_t m  # the shortest
    bint scalar  # a row holds +-inf (pandas treats it as missing): all four take the scalar way


cdef void lanes_init(Lanes* q, const idx_t* rows, const double* x, const int64_t* starts, const int64_t* ends,
                     idx_t T) noexcept nogil:
    cdef idx_t l, i
    q.m = -1
    q.scalar = False
    for l in range(4):
        i = rows[l]
        q.offsets[l] = i * T + starts[i]
        q.ns[l] = ends[i] - starts[i]
        q.xs[l] = x + q.offsets[l]
        q.m = q.ns[l] if (q.m < 0 or q.ns[l] < q.m) else q.m
        q.scalar = q.scalar or has_inf(q.xs[l], q.ns[l])


cdef int lanes_scalar(const Lanes* q, const int* ops, const double* params, idx_t k, double** bases, idx_t window,
                      bint compat, idx_t short_max) noexcept nogil:
    """The four rows one by one with the scalar kernels (rolling_group's group_row)."""
    cdef idx_t l
    cdef int failed = 0
    for l in range(4):
        failed += group_row(ops, params, bases, k, q.xs[l], q.offsets[l], q.ns[l], window, compat, short_max)
    return failed


cdef inline void lane_run(Run* r, const double* state, idx_t at, idx_t l) noexcept nogil:
    """A Run from lane l of the three state rows last, last_at, prev_end starting at state[at]."""
    r.last = state[at + l]
    r.last_at = <idx_t>state[at + 4 + l]
    r.prev_end = <idx_t>state[at + 8 + l]


cdef bint vector_op(int op) noexcept nogil:
    """Operators with a four-row AVX2 kernel (vector_rows4)."""
    return op == SUM or op == MEAN or op == VAR or op == STD


cdef int vector_rows4(const idx_t* rows, const int* ops, const double* params, idx_t k, const double* x,
                      double** bases, const int64_t* starts, const int64_t* ends, idx_t T, idx_t window,
                      bint compat, idx_t short_max) noexcept nogil:
    """Sum, Mean, Var or Std (ops[0]) of four rows: in AVX2 lanes over their common length, then
    each row's rest with the scalar loop from its lane's state."""
    cdef Lanes q
    cdef double* outs[4]
    cdef double state[28]
    cdef idx_t l, w, since = 0
    cdef int op = ops[0]
    cdef SumState st
    cdef MomentState mt
    lanes_init(&q, rows, x, starts, ends, T)
    if q.scalar or q.m == 0:
        return lanes_scalar(&q, ops, params, k, bases, window, compat, short_max)
    for l in range(4):
        outs[l] = bases[0] + q.offsets[l]
    # a window longer than a row never drops a value from it, like the scalar kernels' w = n
    if op == SUM or op == MEAN:
        qc_sum_rows4(q.xs, outs, q.m, window if window > 0 else q.m, op == MEAN, state)
    else:
        for l in range(4):
            state[l] = first_valid(q.xs[l], q.ns[l])
        qc_var_rows4(q.xs, outs, q.m, window if window > 0 else q.m, op == STD, state, &since, REBUILD_MIN)
    for l in range(4):
        if q.ns[l] == q.m:
            continue
        w = row_window(window, q.ns[l])
        if op == SUM or op == MEAN:
            st.s = state[l]
            st.c = state[4 + l]
            st.cnt = <idx_t>state[8 + l]
            lane_run(&st.run, state, 12, l)
            sum_steps(&st, q.xs[l], outs[l], q.m, q.ns[l], w, op)
        else:
            mt.ref = state[l]
            mt.s1 = state[4 + l]
            mt.s2 = state[8 + l]
            mt.s3 = mt.s4 = 0.0
            mt.cnt = <idx_t>state[12 + l]
            mt.since = since
            lane_run(&mt.run, state, 16, l)
            moment_steps(&mt, q.xs[l], outs[l], q.m, q.ns[l], w, op)
    return 0


cdef int regression_rows4(const idx_t* rows, const int* ops, const double* params, idx_t k, const double* x,
                          double** bases, const int64_t* starts, const int64_t* ends, idx_t T, idx_t window,
                          bint compat, idx_t short_max) noexcept nogil:
    """Slope/Rsquare/Resi (any of them, ops[0:k]) of four rows, as vector_rows4 does for one output."""
    cdef Lanes q
    cdef double* outs[3][4]
    cdef double state[40]
    cdef idx_t l, j, w, since = 0, anchor = 0
    cdef bint expanding = window == 0
    cdef RegressionState st
    lanes_init(&q, rows, x, starts, ends, T)
    if q.scalar or q.m == 0:
        return lanes_scalar(&q, ops, params, k, bases, window, compat, short_max)
    for l in range(4):
        for j in range(3):
            outs[j][l] = NULL
        for j in range(k):
            outs[ops[j] - SLOPE][l] = bases[j] + q.offsets[l]
        state[l] = first_valid(q.xs[l], q.ns[l])
    qc_regression_rows4(q.xs, outs[0], outs[1], outs[2], q.m, window if window > 0 else q.m, compat, expanding,
                        state, &since, &anchor, REBUILD_MIN, QLIB_STD_ATOL * QLIB_STD_ATOL, FLAT_RTOL)
    for l in range(4):
        if q.ns[l] == q.m:
            continue
        st.ref = state[l]
        st.sx = state[4 + l]
        st.sxx = state[8 + l]
        st.sy = state[12 + l]
        st.syy = state[16 + l]
        st.sxy = state[20 + l]
        st.cnt = <idx_t>state[24 + l]
        lane_run(&st.run, state, 28, l)
        st.since = since
        st.anchor = anchor
        w = row_window(window, q.ns[l])
        regression_steps(&st, q.xs[l], outs[0][l], outs[1][l], outs[2][l], q.m, q.ns[l], w, compat, expanding)
    return 0


# ---------------------------------------------------------------------------------------------
# Max, Min, IdxMax, IdxMin: van Herk / Gil-Werman blocks
# ---------------------------------------------------------------------------------------------

cdef struct ExtremeScratch:
    # extreme_row's per-row tables: best key and row of each block's prefix (gk, g) and suffix
    # (hk, h), and the first NaN row at or after each row (qlib's NaN-first IdxMax only)
    double* gk
    double* hk
    idx_t* g
    idx_t* h
    idx_t* next_nan


cdef int extreme_alloc(ExtremeScratch* e, const double* x, idx_t n, bint nan_first) noexcept nogil:
    """0, or 1 (nothing left allocated) when out of memory."""
    cdef idx_t t
    e.gk = <double*>malloc(n * sizeof(double))
    e.hk = <double*>malloc(n * sizeof(double))
    e.g = <idx_t*>malloc(n * sizeof(idx_t))
    e.h = <idx_t*>malloc(n * sizeof(idx_t))
    e.next_nan = <idx_t*>malloc((n + 1) * sizeof(idx_t)) if nan_first else NULL
    if e.gk == NULL or e.hk == NULL or e.g == NULL or e.h == NULL or (nan_first and e.next_nan == NULL):
        extreme_free(e)
        return 1
    if nan_first:
        e.next_nan[n] = n
        for t in range(n - 1, -1, -1):
            e.next_nan[t] = t if x[t] != x[t] else e.next_nan[t + 1]
    return 0


cdef void extreme_free(ExtremeScratch* e) noexcept nogil:
    free(e.gk)
    free(e.hk)
    free(e.g)
    free(e.h)
    free(e.next_nan)
    e.gk = e.hk = NULL
    e.g = e.h = e.next_nan = NULL


cdef int extreme_row(const double* x, double* out_value, double* out_index, idx_t n, idx_t w, bint is_max,
                     bint compat) noexcept nogil:
    # Max (or Min) into out_value and IdxMax (IdxMin) into out_index, either NULL when not wanted:
    # the two share every step but the last.
    # Rows are cut into blocks of w. g[t] = best row of x[block start .. t], h[t] = best row of
    # x[t .. block end]; a window [ws, t] that does not start a block spans two blocks and its best
    # row is the better of h[ws] and g[t]. Three branch-free comparisons per row for any window
    # (a monotonic deque mispredicts about once per row on noisy prices). The best key rides along
    # in gk/hk so no step waits on a load through an index.
    # Keys: +x for Max, -x for Min, NaN -> -inf; ties keep the earliest row, as np.argmax does.
    # qlib's IdxMax is np.argmax over the raw window, so a NaN in the window wins: its position
    # comes from next_nan[ws], the first NaN row at or after ws.
    cdef ExtremeScratch e
    cdef bint nan_first = out_index != NULL and compat
    if extreme_alloc(&e, x, n, nan_first):
        return 1
    extreme_steps(&e, x, out_value, out_index, 0, n, w, is_max, nan_first, 0)
    extreme_free(&e)
    return 0


cdef void extreme_steps(ExtremeScratch* e, const double* x, double* out_value, double* out_index, idx_t t0,
                        idx_t n, idx_t w, bint is_max, bint nan_first, idx_t cnt) noexcept nogil:
    """Rows t0..n-1 of extreme_row (t0 a block start), `cnt` valid rows in the window before t0;
    windows starting before t0 read the tables' entries there, which must be filled."""
    cdef double* gk = e.gk
    cdef double* hk = e.hk
    cdef idx_t* g = e.g
    cdef idx_t* h = e.h
    cdef idx_t* next_nan = e.next_nan
    cdef double sign = 1.0 if is_max else -1.0
    cdef double k, bk
    cdef idx_t t, ws, bi, bs, be, c, take, best
    # (block boundaries come from counters: an integer division per row would cost more than
    # the comparisons themselves)
    c = 0
    bk = -INFINITY
    bi = t0
    for t in range(t0, n):
        k = sign * x[t] if x[t] == x[t] else -INFINITY
        if c == 0:
            bk = k
            bi = t
        else:
            take = k > bk  # strict: an earlier equal key stays best
            bi += (t - bi) * take
            bk = k if k > bk else bk
        g[t] = bi
        gk[t] = bk
        c += 1
        if c == w:
            c = 0
    bs = t0 + ((n - 1 - t0) // w) * w
    while bs >= t0:
        be = bs + w - 1 if bs + w - 1 < n - 1 else n - 1
        bk = -INFINITY
        bi = be
        for t in range(be, bs - 1, -1):
            k = sign * x[t] if x[t] == x[t] else -INFINITY
            take = k >= bk  # going backwards, an equal key further left wins
            bi += (t - bi) * take
            bk = k if k > bk else bk
            h[t] = bi
            hk[t] = bk
        bs -= w
    c = 0
    for t in range(t0, n):
        ws = win_start(t, w)
        cnt += x[t] == x[t]
        if t >= w:
            cnt -= x[t - w] == x[t - w]
        if cnt == 0:
            put(out_value, t, NAN)  # no valid value in the window (pandas min_periods=1)
            put(out_index, t, NAN)
        else:
            if t < w or c == w - 1:
                best = g[t]  # the window starts a block
            else:
                best = g[t] + (h[ws] - g[t]) * (hk[ws] >= gk[t])
            put(out_value, t, x[best])
            if out_index != NULL:
                if nan_first and next_nan[ws] <= t:
                    out_index[t] = next_nan[ws] - ws + 1
                else:
                    out_index[t] = best - ws + 1
        c += 1
        if c == w:
            c = 0


cdef int extreme_rows4(const idx_t* rows, const int* ops, const double* params, idx_t k, const double* x,
                       double** bases, const int64_t* starts, const int64_t* ends, idx_t T, idx_t window,
                       bint compat, idx_t short_max) noexcept nogil:
    """Max/IdxMax or Min/IdxMin (ops[0:k]) of four rows, as vector_rows4 does for one output: the
    lanes take the whole blocks of `window` rows all four rows have, each row its own rest."""
    cdef Lanes q
    cdef double* values[4]
    cdef double* indexes[4]
    cdef const idx_t* next_nans[4]
    cdef ExtremeScratch es[4]
    cdef double counts[4]
    cdef double* scratch
    cdef idx_t l, j, b, t, at
    cdef bint want_index = False, is_max = False, nan_first
    lanes_init(&q, rows, x, starts, ends, T)
    b = (q.m // window) * window if window > 0 else 0
    if q.scalar or b == 0:
        return lanes_scalar(&q, ops, params, k, bases, window, compat, short_max)
    for l in range(4):
        values[l] = indexes[l] = NULL
    for j in range(k):
        want_index = want_index or ops[j] == IDXMAX or ops[j] == IDXMIN
        is_max = is_max or ops[j] == MAX or ops[j] == IDXMAX
        for l in range(4):
            if ops[j] == IDXMAX or ops[j] == IDXMIN:
                indexes[l] = bases[j] + q.offsets[l]
            else:
                values[l] = bases[j] + q.offsets[l]
    nan_first = want_index and compat
    scratch = <double*>malloc(16 * b * sizeof(double))
    for l in range(4):
        if scratch == NULL or extreme_alloc(&es[l], q.xs[l], q.ns[l], nan_first):
            free(scratch)
            for j in range(l):
                extreme_free(&es[j])
            return 1
        next_nans[l] = es[l].next_nan
    qc_extreme_rows4(q.xs, values, indexes, next_nans, b, window, is_max, scratch, counts)
    for l in range(4):
        if q.ns[l] > b:
            for t in range(b - window, b):  # the last whole block's suffix bests, for windows starting there
                at = 4 * t + l
                es[l].h[t] = <idx_t>scratch[8 * b + at]
                es[l].hk[t] = scratch[12 * b + at]
            extreme_steps(&es[l], q.xs[l], values[l], indexes[l], b, q.ns[l], window, is_max, nan_first,
                          <idx_t>counts[l])
        extreme_free(&es[l])
    free(scratch)
    return 0


# ---------------------------------------------------------------------------------------------
# Med, Quantile, Rank, Mad: ordered window (sorted buffer, or Fenwick tree for long windows)
# ---------------------------------------------------------------------------------------------

cdef inline double sorted_quantile(const double* a, idx_t cnt, double q) noexcept nogil:
    # pandas rolling quantile, interpolation='linear'
    cdef double pos = q * (cnt - 1), frac
    cdef idx_t lo = <idx_t>pos
    frac = pos - lo
    if frac == 0.0:
        return a[lo]
    return a[lo] + (a[lo + 1] - a[lo]) * frac


cdef inline double sorted_median(const double* a, idx_t cnt) noexcept nogil:
    if cnt % 2:
        return a[cnt // 2]
    return (a[cnt // 2 - 1] + a[cnt // 2]) / 2.0


cdef int sorted_window_row(const double* x, double** outs, const double* qs, idx_t k, idx_t n, idx_t w,
                           bint median) noexcept nogil:
    # Med (median: outs[0]) or Quantile at each qs[j] into outs[j], j < k (QTLU and QTLD share
    # one window), over a sorted buffer of the window's valid values. Unused slots hold +inf and a
    # missing value enters or leaves as +inf, so every step is the same "drop old, insert new" with
    # no NaN branches. Both slots are counted (qc_count_below2) rather than binary-searched: over a
    # window this short a fixed-length SIMD count beats a chain of dependent loads. The shift between
    # the two slots is one memmove whose direction comes from min/max, not a mispredicted branch.
    cdef idx_t cap = sorted_cap(w), t, cnt = 0
    cdef double* buf = <double*>malloc(cap * sizeof(double))
    if buf == NULL:
        return 1
    for t in range(cap):
        buf[t] = INFINITY
    sorted_window_steps(buf, cap, &cnt, x, outs, qs, k, 0, n, w, median)
    free(buf)
    return 0


cdef inline idx_t sorted_cap(idx_t w) noexcept nogil:
    return (w + 3) & ~(<idx_t>3)  # whole 4-wide count steps; the extra slots stay +inf


cdef void sorted_window_steps(double* buf, idx_t cap, idx_t* count, const double* x, double** outs, const double* qs,
                              idx_t k, idx_t t0, idx_t n, idx_t w, bint median) noexcept nogil:
    """Rows t0..n-1 of sorted_window_row, from the buffer and valid count after row t0 - 1."""
    cdef idx_t t, j, p_out, p_in, lo, hi, up, cnt = count[0]
    cdef double v, old
    for t in range(t0, n):
        v = x[t]
        old = x[t - w] if t >= w else NAN
        cnt += (v == v) - (old == old)
        v = v if v == v else INFINITY
        old = old if old == old else INFINITY
        qc_count_below2(buf, cap, old, v, &p_out, &p_in)  # lower_bound of each
        up = old < v  # v ends above old's slot: the values between move down one
        p_in -= up
        lo = p_out if p_out < p_in else p_in
        hi = p_in + p_out - lo
        memmove(buf + lo + 1 - up, buf + lo + up, (hi - lo) * sizeof(double))
        buf[p_in] = v
        if cnt == 0:
            for j in range(k):
                outs[j][t] = NAN
        elif median:
            outs[0][t] = sorted_median(buf, cnt)
        else:
            for j in range(k):
                outs[j][t] = sorted_quantile(buf, cnt, qs[j])
    count[0] = cnt


cdef int sorted_rows4(const idx_t* rows, const int* ops, const double* params, idx_t k, const double* x,
                      double** bases, const int64_t* starts, const int64_t* ends, idx_t T, idx_t window,
                      bint compat, idx_t short_max) noexcept nogil:
    """Med or Quantiles (ops[0:k]) of four rows, as vector_rows4 does for one output; the window is
    0 < window <= SORTED_LANES_MAX (the caller checks), and the rows must not be shorter."""
    cdef Lanes q
    cdef double* outs[4 * GROUP_MAX]
    cdef double* lane_outs[GROUP_MAX]
    cdef double* bufs[4]
    cdef double counts[4]
    cdef idx_t l, j, cap = sorted_cap(window), cnt
    lanes_init(&q, rows, x, starts, ends, T)
    if q.scalar or window > q.m:  # a row shorter than the window: the scalar kernel's w = n
        return lanes_scalar(&q, ops, params, k, bases, window, compat, short_max)
    for l in range(4):
        for j in range(k):
            outs[4 * j + l] = bases[j] + q.offsets[l]
    bufs[0] = <double*>malloc(4 * cap * sizeof(double))
    if bufs[0] == NULL:
        return 1
    for l in range(1, 4):
        bufs[l] = bufs[0] + l * cap
    qc_sorted_rows4(q.xs, outs, params, k, q.m, window, cap, ops[0] == MED, bufs, counts)
    for l in range(4):
        if q.ns[l] == q.m:
            continue
        for j in range(k):
            lane_outs[j] = outs[4 * j + l]
        cnt = <idx_t>counts[l]
        sorted_window_steps(bufs[l], cap, &cnt, q.xs[l], lane_outs, params, k, q.m, q.ns[l], window, ops[0] == MED)
    free(bufs[0])
    return 0


cdef int rank_window_row(const double* x, double* out, idx_t n, idx_t w) noexcept nogil:
    # Rank needs only how many valid values in the raw window are below and equal to the last one
    # (NaN compares false, so it drops out of both), so no ordered state is kept: one SIMD count
    # over the window's rows is several times faster than maintaining a sorted buffer.
    cdef idx_t t, ws, lt, eq, cnt = 0
    cdef double v
    for t in range(n):
        v = x[t]
        cnt += v == v
        if t >= w:
            cnt -= x[t - w] == x[t - w]
        if v != v:
            out[t] = NAN
            continue
        ws = win_start(t, w)
        qc_count_below_equal(x + ws, t - ws + 1, v, &lt, &eq)
        out[t] = (2 * lt + eq + 1) / (2.0 * cnt)  # pandas pct: average rank / valid count
    return 0


cdef int mad_window_row(const double* x, double* out, idx_t n, idx_t w) noexcept nogil:
    # qlib Mad: mean(|x - mean(x)|) over the window's valid values. The mean comes from a
    # compensated running sum; the deviations need one pass over the raw window, with four
    # partial sums so the adds overlap (the compiler may not reassociate them itself).
    cdef idx_t t, j, ws, cnt = 0
    cdef double v, mean, s = 0.0, c = 0.0, s0, s1, s2, s3
    for t in range(n):
        ws = win_start(t, w)
        if t >= w:
            v = x[t - w]
            if v == v:
                cnt -= 1
                if cnt == 0:
                    s = 0.0
                    c = 0.0
                else:
                    neumaier_add(&s, &c, -v)
        v = x[t]
        if v == v:
            neumaier_add(&s, &c, v)
            cnt += 1
        if cnt == 0:
            out[t] = NAN
            continue
        mean = (s + c) / cnt
        s0 = s1 = s2 = s3 = 0.0
        j = ws
        while j + 4 <= t + 1:
            s0 += fabs(x[j] - mean) if x[j] == x[j] else 0.0
            s1 += fabs(x[j + 1] - mean) if x[j + 1] == x[j + 1] else 0.0
            s2 += fabs(x[j + 2] - mean) if x[j + 2] == x[j + 2] else 0.0
            s3 += fabs(x[j + 3] - mean) if x[j + 3] == x[j + 3] else 0.0
            j += 4
        while j <= t:
            s0 += fabs(x[j] - mean) if x[j] == x[j] else 0.0
            j += 1
        out[t] = ((s0 + s1) + (s2 + s3)) / cnt
    return 0


cdef inline void fen_add(int* tree, idx_t m, idx_t r, int dv) noexcept nogil:
    r += 1
    while r <= m:
        tree[r] += dv
        r += r & (-r)


cdef inline idx_t fen_prefix(const int* tree, idx_t r) noexcept nogil:
    """Count of values with rank < r."""
    cdef idx_t s = 0
    while r > 0:
        s += tree[r]
        r -= r & (-r)
    return s


cdef inline void fen_add_f(double* tree, idx_t m, idx_t r, double dv) noexcept nogil:
    r += 1
    while r <= m:
        tree[r] += dv
        r += r & (-r)


cdef inline double fen_prefix_f(const double* tree, idx_t r) noexcept nogil:
    cdef double s = 0.0
    while r > 0:
        s += tree[r]
        r -= r & (-r)
    return s


cdef inline idx_t fen_kth(const int* tree, idx_t m, idx_t top, idx_t k) noexcept nogil:
    """Rank of the k-th smallest value (k 0-based); `top` is the largest power of two <= m."""
    cdef idx_t pos = 0, step = top
    while step > 0:
        if pos + step <= m and tree[pos + step] <= k:
            pos += step
            k -= tree[pos]
        step >>= 1
    return pos


cdef int ordered_fenwick_row(const double* x, double* out, idx_t n, idx_t w, int op,
                             double q) noexcept nogil:
    # Values are ranked once per span (sort + unique); the window is then a multiset of ranks in
    # a Fenwick tree of counts (and, for Mad, of centred sums): O(log n) per step for any window.
    cdef double* u = <double*>malloc((n + 1) * sizeof(double))
    cdef idx_t* rank = <idx_t*>malloc((n + 1) * sizeof(idx_t))
    cdef int* tree = <int*>calloc_int(n + 1)
    cdef int* eq = <int*>calloc_int(n + 1)
    cdef double* ftree = NULL
    cdef idx_t m = 0, j, t, r, top, cnt = 0, lo, clo
    cdef double v, pos, frac, a, b, ref = 0.0, tot = 0.0, dev, slo
    if u == NULL or rank == NULL or tree == NULL or eq == NULL:
        free(u); free(rank); free(tree); free(eq)
        return 1
    for j in range(n):
        if x[j] == x[j]:
            u[m] = x[j]
            m += 1
    qsort(u, m, sizeof(double), cmp_double)
    if m > 0:
        r = 1
        for j in range(1, m):
            if u[j] != u[r - 1]:
                u[r] = u[j]
                r += 1
        m = r
    for j in range(n):
        rank[j] = lower_bound(u, m, x[j]) if x[j] == x[j] else -1
    top = 1
    while top * 2 <= m:
        top *= 2
    if op == MAD:
        ftree = <double*>malloc((m + 1) * sizeof(double))
        if ftree == NULL:
            free(u); free(rank); free(tree); free(eq)
            return 1
        for j in range(m + 1):
            ftree[j] = 0.0
        ref = u[m // 2] if m > 0 else 0.0
    for t in range(n):
        if t >= w and rank[t - w] >= 0:
            r = rank[t - w]
            fen_add(tree, m, r, -1)
            eq[r] -= 1
            cnt -= 1
            if op == MAD:
                fen_add_f(ftree, m, r, -(u[r] - ref))
                tot = tot - (u[r] - ref) if cnt > 0 else 0.0
        r = rank[t]
        if r >= 0:
            fen_add(tree, m, r, 1)
            eq[r] += 1
            cnt += 1
            if op == MAD:
                fen_add_f(ftree, m, r, u[r] - ref)
                tot += u[r] - ref
        if op == RANK:
            if r < 0:
                out[t] = NAN
            else:
                out[t] = (2.0 * fen_prefix(tree, r) + eq[r] + 1.0) / (2.0 * cnt)
        elif cnt == 0:
            out[t] = NAN
        elif op == MAD:
            if cnt == 1:
                out[t] = 0.0
            else:
                # sum|v - mean| = (S - 2 S_lo) - dev * (cnt - 2 c_lo), S_lo/c_lo over v < mean
                dev = tot / cnt
                lo = lower_bound(u, m, ref + dev)
                clo = fen_prefix(tree, lo)
                slo = fen_prefix_f(ftree, lo)
                out[t] = fabs((tot - 2.0 * slo) - dev * (cnt - 2.0 * clo)) / cnt
        else:
            pos = 0.5 if op == MED else q
            pos = pos * (cnt - 1)
            lo = <idx_t>pos
            frac = pos - lo
            a = u[fen_kth(tree, m, top, lo)]
            if frac == 0.0:
                out[t] = a
            else:
                b = u[fen_kth(tree, m, top, lo + 1)]
                out[t] = (a + b) / 2.0 if op == MED else a + (b - a) * frac
    free(u); free(rank); free(tree); free(eq); free(ftree)
    return 0


cdef inline int* calloc_int(idx_t k) noexcept nogil:
    cdef int* p = <int*>malloc(k * sizeof(int))
    cdef idx_t j
    if p != NULL:
        for j in range(k):
            p[j] = 0
    return p


# ---------------------------------------------------------------------------------------------
# Slope, Rsquare, Resi: least squares of the value on its row position
# ---------------------------------------------------------------------------------------------

cdef struct RegressionState:
    double ref  # centre of the values (first valid one, then each recomputation's window mean)
    double sx
    double sxx
    double sy
    double syy
    double sxy
    idx_t cnt
    idx_t since
    idx_t anchor  # the row positions are counted from (the last recomputation's row)
    Run run


cdef int regression_row(const double* x, double* out_slope, double* out_rsquare, double* out_resi, idx_t n,
                        idx_t w, bint compat, bint expanding) noexcept nogil:
    cdef RegressionState st
    st.ref = first_valid(x, n)
    st.sx = st.sxx = st.sy = st.syy = st.sxy = 0.0
    st.cnt = st.since = st.anchor = 0
    run_init(&st.run)
    regression_steps(&st, x, out_slope, out_rsquare, out_resi, 0, n, w, compat, expanding)
    return 0


cdef void regression_steps(RegressionState* st, const double* x, double* out_slope, double* out_rsquare,
                           double* out_resi, idx_t t0, idx_t n, idx_t w, bint compat, bint expanding) noexcept nogil:
    """Rows t0..n-1 of regression_row from the state after row t0 - 1 (kept in locals meanwhile).

    Slope, Rsquare and Resi (each output NULL when not wanted) share all their running sums.
    Sums over valid rows of p = row - anchor and d = value - ref; the slope and fit are invariant
    to both shifts. qlib uses the slot position within the window as regressor, i.e. the row index
    up to a shift."""
    cdef double ref = st.ref, v, p, d
    cdef double sx = st.sx, sxx = st.sxx, sy = st.sy, syy = st.syy, sxy = st.sxy
    cdef double inv = 0.0, inv_full_vx = 0.0, mx, my, vx, cxy, slope
    cdef idx_t t, j, ws, cnt = st.cnt, since = st.since, anchor = st.anchor, cached_n = -1
    cdef bint flat
    cdef Run run = st.run
    for t in range(t0, n):
        ws = win_start(t, w)
        v = x[t]
        if v == v:
            run_push(&run, v, t)
        since += 1
        if rebuild_due(since, t - ws + 1):
            since = 0
            anchor = t
            ref = window_mean(x, ws, t, ref)
            sx = sxx = sy = syy = sxy = 0.0
            cnt = 0
            for j in range(ws, t + 1):
                if x[j] == x[j]:
                    p = <double>(j - anchor)
                    d = x[j] - ref
                    sx += p
                    sxx += p * p
                    sy += d
                    syy += d * d
                    sxy += p * d
                    cnt += 1
        else:
            if t >= w and x[t - w] == x[t - w]:
                cnt -= 1
                if cnt == 0:
                    sx = sxx = sy = syy = sxy = 0.0
                else:
                    p = <double>(t - w - anchor)
                    d = x[t - w] - ref
                    sx -= p
                    sxx -= p * p
                    sy -= d
                    syy -= d * d
                    sxy -= p * d
            if v == v:
                p = <double>(t - anchor)
                d = v - ref
                sx += p
                sxx += p * p
                sy += d
                syy += d * d
                sxy += p * d
                cnt += 1
        if cnt < 2:
            put(out_slope, t, NAN)  # one point fixes no line (qlib: 0/0)
            put(out_rsquare, t, NAN)
            put(out_resi, t, NAN)
            continue
        flat = run_flat(&run, ws)
        if flat:
            put(out_slope, t, 0.0)  # a flat window: slope 0, every residual 0, no fit to speak of
            put(out_rsquare, t, NAN)
            put(out_resi, t, 0.0 if v == v else NAN)
            continue
        if cnt != cached_n:  # reciprocals change only with the valid count
            cached_n = cnt
            inv = 1.0 / cnt
            inv_full_vx = 12.0 / (cnt * (cnt * cnt - 1.0))
        mx = sx * inv
        my = sy * inv
        cxy = sxy - sx * my
        if cnt == t - ws + 1:
            # no gap: the positions are consecutive, sum((p - mean p)^2) = n (n^2 - 1) / 12
            vx = cnt * (cnt * cnt - 1.0) / 12.0
            slope = cxy * inv_full_vx
        else:
            vx = sxx - sx * mx
            slope = cxy / vx
        put(out_slope, t, slope)
        if out_resi != NULL:
            out_resi[t] = (v - ref) - my - slope * ((t - anchor) - mx) if v == v else NAN
        if out_rsquare != NULL:
            out_rsquare[t] = fit_rsquare(slope, cxy, syy - sy * my, ref + my, cnt, compat, expanding)
    st.ref = ref
    st.sx = sx
    st.sxx = sxx
    st.sy = sy
    st.syy = syy
    st.sxy = sxy
    st.cnt = cnt
    st.since = since
    st.anchor = anchor
    st.run = run


cdef inline double fit_rsquare(double slope, double cxy, double vy, double mean, idx_t cnt, bint compat,
                               bint expanding) noexcept nogil:
    """R^2 of a fit that is not flat; vy is the centred sum of squares of the values, mean their mean."""
    cdef double r2
    if vy <= 0.0:
        return NAN
    if compat:
        # qlib masks only the rolling form (ops.Rsquare): pandas std <= 2e-5
        if not expanding and vy <= QLIB_STD_ATOL * QLIB_STD_ATOL * (cnt - 1):
            return NAN
    elif vy <= (FLAT_RTOL * mean) * (FLAT_RTOL * mean) * (cnt - 1):
        return NAN  # std <= FLAT_RTOL * |mean|
    r2 = slope * cxy / vy
    return r2 if r2 < 1.0 else 1.0


# ---------------------------------------------------------------------------------------------
# WMA: linearly weighted mean, weights 1..L over the window's rows
# ---------------------------------------------------------------------------------------------

cdef int wma_row(const double* x, double* out, idx_t n, idx_t w, bint compat) noexcept nogil:
    # Over valid rows: s0 = sum d, s1 = sum p*d, j1 = sum p, with p = row - anchor and
    # d = value - ref. A row's weight is p - b with b = ws - 1 - anchor, so
    # sum(w*x) = (s1 - b*s0) + ref*(j1 - b*cnt) and sum(w) over valid rows = j1 - b*cnt.
    cdef double ref = first_valid(x, n), v, p, d, b, wsum, num, big_l
    cdef double s0 = 0.0, s1 = 0.0, j1 = 0.0
    cdef idx_t t, j, ws, cnt = 0, since = 0, anchor = 0
    for t in range(n):
        ws = win_start(t, w)
        v = x[t]
        since += 1
        if rebuild_due(since, t - ws + 1):
            since = 0
            anchor = t
            ref = window_mean(x, ws, t, ref)
            s0 = s1 = j1 = 0.0
            cnt = 0
            for j in range(ws, t + 1):
                if x[j] == x[j]:
                    p = <double>(j - anchor)
                    d = x[j] - ref
                    s0 += d
                    s1 += p * d
                    j1 += p
                    cnt += 1
        else:
            if t >= w and x[t - w] == x[t - w]:
                cnt -= 1
                if cnt == 0:
                    s0 = s1 = j1 = 0.0
                else:
                    p = <double>(t - w - anchor)
                    d = x[t - w] - ref
                    s0 -= d
                    s1 -= p * d
                    j1 -= p
            if v == v:
                p = <double>(t - anchor)
                d = v - ref
                s0 += d
                s1 += p * d
                j1 += p
                cnt += 1
        if cnt == 0:
            out[t] = NAN
            continue
        b = <double>(ws - 1 - anchor)
        wsum = j1 - b * cnt
        num = (s1 - b * s0) + ref * wsum
        if compat:
            # qlib: np.nanmean(w * x) with w = (1..L) / sum(1..L) over the raw window: the weighted
            # sum is divided by the valid count as well (ops.WMA); kept for parity.
            big_l = <double>(t - ws + 1)
            out[t] = num / (big_l * (big_l + 1.0) / 2.0) / cnt
        else:
            out[t] = num / wsum
    return 0


# ---------------------------------------------------------------------------------------------
# Delta, First, Shift: plain row lookups
# ---------------------------------------------------------------------------------------------

cdef int delta_row(const double* x, double* out, idx_t n, idx_t w, bint expanding) noexcept nogil:
    cdef idx_t t
    for t in range(n):
        if expanding:
            out[t] = x[t] - x[0]  # qlib Delta(x, 0): x minus the series' first value
        elif t >= w:
            out[t] = x[t] - x[t - w]
        else:
            out[t] = NAN
    return 0


cdef int first_row(const double* x, double* out, idx_t n) noexcept nogil:
    cdef idx_t t
    for t in range(n):
        out[t] = x[0]
    return 0


cdef int shift_row(const double* x, double* out, idx_t n, idx_t periods) noexcept nogil:
    cdef idx_t t, src
    for t in range(n):
        src = t - periods if periods != 0 else 0  # qlib Ref(x, 0) is the first value
        out[t] = x[src] if 0 <= src < n else NAN
    return 0


# ---------------------------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------------------------

cdef int ewm_row(const double* x, double* out, idx_t n, double alpha) noexcept nogil:
    # pandas ewm(adjust=True, ignore_na=False, min_periods=1).mean(): NaN rows still decay the old
    # weight; the result carries through them.
    cdef double old_wt_factor = 1.0 - alpha, old_wt = 1.0, weighted = x[0], cur
    cdef idx_t t
    out[0] = weighted
    for t in range(1, n):
        cur = x[t]
        if weighted == weighted:
            old_wt *= old_wt_factor
            if cur == cur:
                if weighted != cur:  # keeps constant series exact, as pandas
                    weighted = (old_wt * weighted + cur) / (old_wt + 1.0)
                old_wt += 1.0
        elif cur == cur:
            weighted = cur
        out[t] = weighted
    return 0


cdef int ewm_expanding_row(const double* x, double* out, idx_t n) noexcept nogil:
    # qlib EMA(x, 0): over the expanding window of L rows, a = 1 - 2/(1+L) and weights a**k
    # (k = 0 for today) normalised over all L rows, NaN values left out of the sum (nansum).
    # `a` changes with L, so every row is a fresh polynomial evaluation: O(n^2) in all. The
    # numerator runs by Horner for LANES windows at once (independent chains the compiler can
    # vectorise); the weight sum is geometric: (1 - a^L) / (1 - a) = (1 - a^L) (L + 1) / 2.
    cdef double acc[8]
    cdef double base[8]
    cdef idx_t t0, t, k, lane, big_l
    cdef double v, a, nm
    t0 = 0
    while t0 + 8 <= n:
        for lane in range(8):
            base[lane] = 1.0 - 2.0 / (t0 + lane + 2.0)
            acc[lane] = 0.0
        for k in range(t0 + 1):
            v = x[k] if x[k] == x[k] else 0.0
            for lane in range(8):
                acc[lane] = acc[lane] * base[lane] + v
        for lane in range(8):
            t = t0 + lane
            nm = acc[lane]
            a = base[lane]
            for k in range(t0 + 1, t + 1):
                nm = nm * a + (x[k] if x[k] == x[k] else 0.0)
            big_l = t + 1
            out[t] = nm / ((1.0 - pow(a, <double>big_l)) * (big_l + 1.0) / 2.0)
        t0 += 8
    for t in range(t0, n):
        a = 1.0 - 2.0 / (t + 2.0)
        nm = 0.0
        for k in range(t + 1):
            nm = nm * a + (x[k] if x[k] == x[k] else 0.0)
        big_l = t + 1
        out[t] = nm / ((1.0 - pow(a, <double>big_l)) * (big_l + 1.0) / 2.0)
    # rows before the first valid value: pandas apply is not called (min_periods=1) -> NaN
    for t in range(n):
        if x[t] == x[t]:
            break
        out[t] = NAN
    return 0


# ---------------------------------------------------------------------------------------------
# Corr, Cov: pairwise-complete rows
# ---------------------------------------------------------------------------------------------

cdef inline bint own_std_small(const double* v, idx_t ws, idx_t t) noexcept nogil:
    """pandas' rolling std (ddof=1) of v's own valid values in [ws, t] within QLIB_STD_ATOL of 0
    (a NaN std, from fewer than two values, is not). Exact two-pass; called only near flat windows."""
    return qc_own_std_small(v, ws, t, QLIB_STD_ATOL * QLIB_STD_ATOL)


cdef struct PairState:
    double rx  # centres of the sums (first paired values, then each recomputation's paired means)
    double ry
    double px
    double py
    double pxx
    double pyy
    double pxy
    idx_t pn  # paired (both valid) rows in the window
    idx_t xn  # x's own valid rows in the window
    idx_t yn
    idx_t since
    Run run_px
    Run run_py


cdef int pair_row(const double* x, const double* y, double* out, idx_t n, idx_t w, int op,
                  bint compat) noexcept nogil:
    cdef PairState st
    pair_init(&st, x, y, n)
    pair_steps(&st, x, y, out, 0, n, w, op, compat)
    return 0


cdef void pair_init(PairState* st, const double* x, const double* y, idx_t n) noexcept nogil:
    cdef idx_t t
    st.rx = st.ry = 0.0
    for t in range(n):
        if x[t] == x[t] and y[t] == y[t]:
            st.rx = x[t]
            st.ry = y[t]
            break
    st.px = st.py = st.pxx = st.pyy = st.pxy = 0.0
    st.pn = st.xn = st.yn = st.since = 0
    run_init(&st.run_px)
    run_init(&st.run_py)


cdef void pair_steps(PairState* st, const double* x, const double* y, double* out, idx_t t0, idx_t n, idx_t w,
                     int op, bint compat) noexcept nogil:
    """Rows t0..n-1 of pair_row from the state after row t0 - 1 (kept in locals meanwhile).

    Sums over paired rows (both valid) of dx = x - rx, dy = y - ry drive the statistic. qlib masks
    Corr by each side's *own* rolling std (ops.Corr). A side's own sum of squares is at least its
    paired one, so own std > 2e-5 follows from the paired sums unless the side is nearly flat; only
    then is the own std computed, exactly, from the window."""
    cdef double rx = st.rx, ry = st.ry, a, b, dx, dy, inv = 0.0, inv_nm1 = 0.0, mx, my, vx, vy, cxy, r, tol
    cdef double px = st.px, py = st.py, pxx = st.pxx, pyy = st.pyy, pxy = st.pxy
    cdef double atol2 = QLIB_STD_ATOL * QLIB_STD_ATOL
    cdef idx_t t, j, ws, pn = st.pn, xn = st.xn, yn = st.yn, since = st.since, cached_n = -1
    cdef Run run_px = st.run_px, run_py = st.run_py
    for t in range(t0, n):
        ws = win_start(t, w)
        a = x[t]
        b = y[t]
        if a == a and b == b:
            run_push(&run_px, a, t)
            run_push(&run_py, b, t)
        xn += a == a
        yn += b == b
        if t >= w:
            xn -= x[t - w] == x[t - w]
            yn -= y[t - w] == y[t - w]
        since += 1
        if rebuild_due(since, t - ws + 1):
            since = 0
            px = py = 0.0
            pn = 0
            for j in range(ws, t + 1):
                if x[j] == x[j] and y[j] == y[j]:
                    px += x[j]
                    py += y[j]
                    pn += 1
            if pn > 0:
                rx = px / pn
                ry = py / pn
            pn = 0
            px = py = pxx = pyy = pxy = 0.0
            for j in range(ws, t + 1):
                dx = x[j] - rx
                dy = y[j] - ry
                if dx == dx and dy == dy:
                    px += dx
                    py += dy
                    pxx += dx * dx
                    pyy += dy * dy
                    pxy += dx * dy
                    pn += 1
        else:
            if t >= w:
                dx = x[t - w] - rx
                dy = y[t - w] - ry
                if dx == dx and dy == dy:
                    pn -= 1
                    if pn == 0:
                        px = py = pxx = pyy = pxy = 0.0
                    else:
                        px -= dx
                        py -= dy
                        pxx -= dx * dx
                        pyy -= dy * dy
                        pxy -= dx * dy
            dx = a - rx
            dy = b - ry
            if dx == dx and dy == dy:
                px += dx
                py += dy
                pxx += dx * dx
                pyy += dy * dy
                pxy += dx * dy
                pn += 1
        if pn < 2:
            out[t] = NAN  # pandas: one observation has no covariance
            continue
        if run_flat(&run_px, ws) or run_flat(&run_py, ws):
            out[t] = 0.0 if op == COV else NAN  # a flat side: no co-movement, no correlation
            continue
        if pn != cached_n:  # reciprocals change only with the paired count
            cached_n = pn
            inv = 1.0 / pn
            inv_nm1 = 1.0 / (pn - 1.0)
        my = py * inv
        cxy = pxy - px * my
        if op == COV:
            out[t] = cxy * inv_nm1
            continue
        mx = px * inv
        vx = pxx - px * mx
        vy = pyy - py * my
        # numerically flat paired side (std <= FLAT_RTOL * |mean|): no meaningful correlation
        tol = FLAT_RTOL * FLAT_RTOL * (pn - 1.0)
        if (vx <= tol * (rx + mx) * (rx + mx) or vy <= tol * (ry + my) * (ry + my)
                or vx <= 0.0 or vy <= 0.0):
            out[t] = NAN
            continue
        if compat and ((vx <= atol2 * (xn - 1.0) and own_std_small(x, ws, t))
                       or (vy <= atol2 * (yn - 1.0) and own_std_small(y, ws, t))):
            out[t] = NAN
            continue
        r = cxy / sqrt(vx * vy)
        out[t] = 1.0 if r > 1.0 else (-1.0 if r < -1.0 else r)
    st.rx = rx
    st.ry = ry
    st.px = px
    st.py = py
    st.pxx = pxx
    st.pyy = pyy
    st.pxy = pxy
    st.pn = pn
    st.xn = xn
    st.yn = yn
    st.since = since
    st.run_px = run_px
    st.run_py = run_py


cdef int pair_rows4(const idx_t* rows, const double* x, const double* y, double* out, const int64_t* starts,
                    const int64_t* ends, idx_t T, idx_t window, int op, bint compat) noexcept nogil:
    """Corr or Cov of four row pairs, as vector_rows4 does for one input."""
    cdef Lanes q
    cdef const double* ys[4]
    cdef double* outs[4]
    cdef double state[64]
    cdef idx_t l, w, since = 0
    cdef bint scalar
    cdef int failed = 0
    cdef PairState st
    lanes_init(&q, rows, x, starts, ends, T)
    scalar = q.scalar
    for l in range(4):
        ys[l] = y + q.offsets[l]
        outs[l] = out + q.offsets[l]
        scalar = scalar or has_inf(ys[l], q.ns[l])
    if scalar or q.m == 0:
        for l in range(4):
            failed += pair_one(op, q.xs[l], ys[l], outs[l], q.ns[l], window, compat)
        return failed
    for l in range(4):
        pair_init(&st, q.xs[l], ys[l], q.ns[l])
        state[l] = st.rx
        state[4 + l] = st.ry
    qc_pair_rows4(q.xs, ys, outs, q.m, window if window > 0 else q.m, op == COV, compat, state, &since, REBUILD_MIN,
                  QLIB_STD_ATOL * QLIB_STD_ATOL, FLAT_RTOL)
    for l in range(4):
        if q.ns[l] == q.m:
            continue
        st.rx = state[l]
        st.ry = state[4 + l]
        st.px = state[8 + l]
        st.py = state[12 + l]
        st.pxx = state[16 + l]
        st.pyy = state[20 + l]
        st.pxy = state[24 + l]
        st.pn = <idx_t>state[28 + l]
        st.xn = <idx_t>state[32 + l]
        st.yn = <idx_t>state[36 + l]
        lane_run(&st.run_px, state, 40, l)
        lane_run(&st.run_py, state, 52, l)
        st.since = since
        w = row_window(window, q.ns[l])
        pair_steps(&st, q.xs[l], ys[l], outs[l], q.m, q.ns[l], w, op, compat)
    return 0


# ---------------------------------------------------------------------------------------------
# drivers: one call per public entry, rows in parallel
# ---------------------------------------------------------------------------------------------

cdef int rolling_one(const int* ops, const double* params, double** outs, idx_t k, const double* x, idx_t n,
                     idx_t window, bint compat, idx_t short_max) noexcept nogil:
    # pandas window functions (hence qlib) treat +-inf as missing; only count (notna) and plain
    # arithmetic (Delta, Ref, First) keep it. A row holding inf runs on a sanitised copy.
    cdef double* clean
    cdef int rc, op = ops[0]
    if op == COUNT or op == DELTA or op == FIRST or not has_inf(x, n):
        return rolling_span(ops, params, outs, k, x, n, window, compat, short_max)
    clean = without_inf(x, n)
    if clean == NULL:
        return 1
    rc = rolling_span(ops, params, outs, k, clean, n, window, compat, short_max)
    free(clean)
    return rc


cdef int rolling_span(const int* ops, const double* params, double** outs, idx_t k, const double* x, idx_t n,
                      idx_t window, bint compat, idx_t short_max) noexcept nogil:
    # ops[j] (with params[j]) into outs[j], j < k: one operator, or a group sharing one pass
    # (rolling_group checks which may go together).
    cdef bint expanding = window == 0
    cdef idx_t w = row_window(window, n), j
    cdef int op = ops[0], rc = 0
    cdef double* slot[3]
    if n == 0:
        return 0
    slot[0] = slot[1] = slot[2] = NULL
    if op == SUM or op == MEAN or op == COUNT:
        return sum_row(x, outs[0], n, w, op)
    if op == VAR or op == STD or op == SKEW or op == KURT:
        return moment_row(x, outs[0], n, w, op)
    if op == MAX or op == MIN or op == IDXMAX or op == IDXMIN:
        for j in range(k):
            slot[ops[j] == IDXMAX or ops[j] == IDXMIN] = outs[j]
        return extreme_row(x, slot[0], slot[1], n, w, op == MAX or op == IDXMAX, compat)
    if op == SLOPE or op == RSQUARE or op == RESI:
        for j in range(k):
            slot[ops[j] - SLOPE] = outs[j]
        return regression_row(x, slot[0], slot[1], slot[2], n, w, compat, expanding)
    if op == MED or op == QUANTILE or op == RANK or op == MAD:
        if w > short_max:
            for j in range(k):
                rc |= ordered_fenwick_row(x, outs[j], n, w, ops[j], params[j])
            return rc
        if op == MAD:
            return mad_window_row(x, outs[0], n, w)
        if op == RANK:
            return rank_window_row(x, outs[0], n, w)
        return sorted_window_row(x, outs, params, k, n, w, op == MED)
    if op == WMA:
        return wma_row(x, outs[0], n, w, compat)
    if op == DELTA:
        return delta_row(x, outs[0], n, window, expanding)
    return first_row(x, outs[0], n)


cdef int pair_one(int op, const double* x, const double* y, double* out, idx_t n, idx_t window,
                  bint compat) noexcept nogil:
    cdef double* cx = NULL
    cdef double* cy = NULL
    if n == 0:
        return 0
    if has_inf(x, n):  # infinities are missing to pandas' rolling corr/cov, as everywhere else
        cx = without_inf(x, n)
        if cx == NULL:
            return 1
        x = cx
    if has_inf(y, n):
        cy = without_inf(y, n)
        if cy == NULL:
            free(cx)
            return 1
        y = cy
    pair_row(x, y, out, n, row_window(window, n), op, compat)
    free(cx)
    free(cy)
    return 0


cdef int ema_one(const double* x, double* out, idx_t n, double alpha) noexcept nogil:
    cdef double* clean = NULL
    if n == 0:
        return 0
    if has_inf(x, n):  # pandas ewm treats infinities as missing
        clean = without_inf(x, n)
        if clean == NULL:
            return 1
        x = clean
    if alpha == 0.0:
        ewm_expanding_row(x, out, n)
    else:
        ewm_row(x, out, n, alpha)
    free(clean)
    return 0


cdef inline int resolve_threads(int threads) noexcept nogil:
    return threads if threads > 0 else qc_default_threads()


def rolling(int op, const double[:, ::1] x, double[:, ::1] out, const int64_t[::1] starts,
            const int64_t[::1] ends, Py_ssize_t window, double param, bint compat, int threads,
            Py_ssize_t short_window_max=SHORT_WINDOW_MAX):
    """Fill out[i, s:e] with operator `op` (index into ROLLING_OPS) over each row's span.

    Med/Quantile/Rank/Mad windows longer than `short_window_max` rows use the Fenwick-tree path
    (tests lower it to cover that path on small data).
    """
    rolling_group(np.array([op], dtype=np.intc), x, [out], np.array([param]), starts, ends, window, compat,
                  threads, short_window_max)


def rolling_group(const int[::1] ops, const double[:, ::1] x, list outs, const double[::1] params,
                  const int64_t[::1] starts, const int64_t[::1] ends, Py_ssize_t window, bint compat,
                  int threads, Py_ssize_t short_window_max=SHORT_WINDOW_MAX, bint simd=True):
    """Fill outs[j][i, s:e] with operator ops[j] (param params[j]) over each row's span, in one pass
    for operators that share their state: Slope/Rsquare/Resi, Max/IdxMax, Min/IdxMin, Quantiles
    (any q). Anything else: a single operator (the caller checks). `simd` lets Sum, Mean, Var, Std,
    Slope/Rsquare/Resi, Max/IdxMax, Min/IdxMin, and Med and Quantiles over short windows run four
    rows per AVX2 vector where the CPU has it (same results bit for bit; tests compare both paths)."""
    cdef idx_t N = x.shape[0], T = x.shape[1], i, j, k = ops.shape[0]
    cdef int failed = 0, nth = resolve_threads(threads)
    cdef double[:, ::1] o
    cdef double** bases
    cdef const idx_t[::1] order
    cdef bint regression, ordered, extreme
    if not 1 <= k <= GROUP_MAX or len(outs) != k or params.shape[0] != k:  # group_row's table is fixed
        raise ValueError(f"rolling_group needs 1 to {GROUP_MAX} ops with one out and one param each")
    bases = <double**>malloc(k * sizeof(double*))
    if bases == NULL:
        raise MemoryError("rolling kernel could not allocate its output table")
    try:
        for j in range(k):
            o = outs[j]
            if o.shape[0] != N or o.shape[1] != T:
                raise ValueError(f"rolling_group out {j} has shape ({o.shape[0]}, {o.shape[1]}), x ({N}, {T})")
            bases[j] = &o[0, 0] if N > 0 and T > 0 else NULL
        if N == 0 or T == 0:
            return
        regression = all(SLOPE <= ops[j] <= RESI for j in range(k))
        ordered = ((all(ops[j] == QUANTILE for j in range(k)) or (k == 1 and ops[0] == MED))
                   and 0 < window <= min(short_window_max, SORTED_LANES_MAX))
        extreme = window > 0 and (all(ops[j] in (MAX, IDXMAX) for j in range(k))
                                  or all(ops[j] in (MIN, IDXMIN) for j in range(k)))
        if simd and AVX2 and N >= 4 and ((k == 1 and vector_op(ops[0])) or regression or ordered or extreme):
            # rows of similar length share a vector: longest first, four at a time
            order = np.argsort(np.subtract(starts, ends), kind="stable").astype(np.intp)
            with nogil:
                for i in prange(N // 4, num_threads=nth, schedule="dynamic", chunksize=1):
                    if extreme:
                        failed += extreme_rows4(&order[4 * i], &ops[0], &params[0], k, &x[0, 0], bases, &starts[0],
                                                &ends[0], T, window, compat, short_window_max)
                    elif ordered:
                        failed += sorted_rows4(&order[4 * i], &ops[0], &params[0], k, &x[0, 0], bases, &starts[0],
                                               &ends[0], T, window, compat, short_window_max)
                    elif regression:
                        failed += regression_rows4(&order[4 * i], &ops[0], &params[0], k, &x[0, 0], bases,
                                                   &starts[0], &ends[0], T, window, compat, short_window_max)
                    else:
                        failed += vector_rows4(&order[4 * i], &ops[0], &params[0], k, &x[0, 0], bases, &starts[0],
                                               &ends[0], T, window, compat, short_window_max)
                for j in range(N - N % 4, N):
                    i = order[j]
                    failed += group_row(&ops[0], &params[0], bases, k, &x[0, 0] + i * T + starts[i],
                                        i * T + starts[i], ends[i] - starts[i], window, compat, short_window_max)
        else:
            with nogil:
                for i in prange(N, num_threads=nth, schedule="dynamic", chunksize=4):
                    failed += group_row(&ops[0], &params[0], bases, k, &x[0, 0] + i * T + starts[i],
                                        i * T + starts[i], ends[i] - starts[i], window, compat, short_window_max)
    finally:
        free(bases)
    if failed:
        raise MemoryError("rolling kernel could not allocate its window buffers")


cdef int group_row(const int* ops, const double* params, double** bases, idx_t k, const double* x,
                   idx_t offset, idx_t n, idx_t window, bint compat, idx_t short_max) noexcept nogil:
    """One row of rolling_group: its outputs start `offset` cells into each output panel."""
    cdef double* outs[GROUP_MAX]
    cdef idx_t j
    for j in range(k):
        outs[j] = bases[j] + offset
    return rolling_one(ops, params, outs, k, x, n, window, compat, short_max)


def pair_rolling(int op, const double[:, ::1] x, const double[:, ::1] y, double[:, ::1] out,
                 const int64_t[::1] starts, const int64_t[::1] ends, Py_ssize_t window,
                 bint compat, int threads, bint simd=True):
    """Fill out[i, s:e] with Corr/Cov (index into PAIR_OPS) of x and y over each row's span; `simd`
    as in rolling_group."""
    cdef idx_t N = x.shape[0], T = x.shape[1], i, j
    cdef int nth = resolve_threads(threads), failed = 0
    cdef const idx_t[::1] order
    if N == 0 or T == 0:
        return
    cdef const double* xp = &x[0, 0]
    cdef const double* yp = &y[0, 0]
    cdef double* op_ = &out[0, 0]
    if simd and AVX2 and N >= 4:
        order = np.argsort(np.subtract(starts, ends), kind="stable").astype(np.intp)
        with nogil:
            for i in prange(N // 4, num_threads=nth, schedule="dynamic", chunksize=1):
                failed += pair_rows4(&order[4 * i], xp, yp, op_, &starts[0], &ends[0], T, window, op, compat)
            for j in range(N - N % 4, N):
                i = order[j]
                failed += pair_one(op, xp + i * T + starts[i], yp + i * T + starts[i],
                                   op_ + i * T + starts[i], ends[i] - starts[i], window, compat)
    else:
        with nogil:
            for i in prange(N, num_threads=nth, schedule="dynamic", chunksize=4):
                failed += pair_one(op, xp + i * T + starts[i], yp + i * T + starts[i],
                                   op_ + i * T + starts[i], ends[i] - starts[i], window, compat)
    if failed:
        raise MemoryError("pair kernel could not allocate a scratch row")


def ema(const double[:, ::1] x, double[:, ::1] out, const int64_t[::1] starts,
        const int64_t[::1] ends, double alpha, int threads):
    """pandas-style EMA with smoothing `alpha`; alpha == 0 selects qlib's expanding EMA."""
    cdef idx_t N = x.shape[0], T = x.shape[1], i
    cdef int nth = resolve_threads(threads), failed = 0
    if N == 0 or T == 0:
        return
    cdef const double* xp = &x[0, 0]
    cdef double* op_ = &out[0, 0]
    with nogil:
        for i in prange(N, num_threads=nth, schedule="dynamic", chunksize=1):
            failed += ema_one(xp + i * T + starts[i], op_ + i * T + starts[i], ends[i] - starts[i], alpha)
    if failed:
        raise MemoryError("EMA kernel could not allocate a scratch row")


def shift(const double[:, ::1] x, double[:, ::1] out, const int64_t[::1] starts,
          const int64_t[::1] ends, Py_ssize_t periods, int threads):
    """qlib Ref within each span: out[t] = x[t - periods]; periods == 0 gives the first value."""
    cdef idx_t N = x.shape[0], T = x.shape[1], i, s
    cdef int nth = resolve_threads(threads)
    if N == 0 or T == 0:
        return
    cdef const double* xp = &x[0, 0]
    cdef double* op_ = &out[0, 0]
    with nogil:
        for i in prange(N, num_threads=nth, schedule="static"):
            s = starts[i]
            shift_row(xp + i * T + s, op_ + i * T + s, ends[i] - s, periods)


def blank_outside(double[:, ::1] out, const int64_t[::1] starts, const int64_t[::1] ends):
    """Set out[i, :starts[i]] and out[i, ends[i]:] to NaN: the cells no kernel writes. One GIL-free
    pass over the short edges, where NumPy needs two slice assignments per row (~0.7 ms at 300 rows)."""
    cdef idx_t N = out.shape[0], T = out.shape[1], i, t, s, e
    with nogil:
        for i in range(N):
            s = starts[i] if starts[i] < T else T
            e = ends[i] if ends[i] > s else s
            for t in range(s):
                out[i, t] = NAN
            for t in range(e, T):
                out[i, t] = NAN
