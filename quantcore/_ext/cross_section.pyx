# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Per-day cross-sectional kernels: each day's listed, non-NaN values across instruments.

x and out are (instruments, days) C-contiguous float64; a day is a strided column. Days are
independent, so they are spread over OpenMP threads in contiguous blocks (neighbouring days share
cache lines). Rows outside their listing span [start, end) count as missing; missing stays NaN.
Arguments are validated once, in `quantcore.kernels`.
"""

from cython.parallel cimport prange
from libc.math cimport NAN, sqrt
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

ctypedef Py_ssize_t idx_t

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int qc_cs_default_threads(void) { return omp_get_max_threads(); }
    #else
    static int qc_cs_default_threads(void) { return 1; }
    #endif
    """
    int qc_cs_default_threads() nogil

#: Operator names; an operator's code is its position here.
CROSS_SECTION_OPS = ("CSRank", "CSZScore", "CSDemean", "CSWinsorize", "CSNeutralize")

cdef enum:
    CSRANK, CSZSCORE, CSDEMEAN, CSWINSORIZE, CSNEUTRALIZE


cdef void sort_by_key(double* key, idx_t* idx, double* tkey, idx_t* tidx, idx_t n) noexcept nogil:
    """Stable bottom-up merge sort of (key, idx) pairs by key.

    Merges pick their source by index arithmetic rather than a branch: on random keys a branch
    mispredicts about every other comparison, which costs more than the comparisons themselves.
    """
    cdef idx_t lo, hi, mid, i, j, k, src, width = 1
    cdef int take
    cdef double* sk = key
    cdef idx_t* si = idx
    cdef double* dk = tkey
    cdef idx_t* di = tidx
    cdef double* swk
    cdef idx_t* swi
    while width < n:
        lo = 0
        while lo < n:
            mid = lo + width if lo + width < n else n
            hi = lo + 2 * width if lo + 2 * width < n else n
            i = lo
            j = mid
            k = lo
            while i < mid and j < hi:
                take = sk[j] < sk[i]
                src = i + (j - i) * take
                dk[k] = sk[src]
                di[k] = si[src]
                j += take
                i += 1 - take
                k += 1
            if i < mid:
                memcpy(dk + k, sk + i, (mid - i) * sizeof(double))
                memcpy(di + k, si + i, (mid - i) * sizeof(idx_t))
            elif j < hi:
                memcpy(dk + k, sk + j, (hi - j) * sizeof(double))
                memcpy(di + k, si + j, (hi - j) * sizeof(idx_t))
            lo += 2 * width
        swk = sk; sk = dk; dk = swk
        swi = si; si = di; di = swi
        width *= 2
    if sk != key:
        memcpy(key, sk, n * sizeof(double))
        memcpy(idx, si, n * sizeof(idx_t))


cdef inline double lerp_quantile(const double* a, idx_t cnt, double q) noexcept nogil:
    # numpy.quantile(method="linear"), including numpy's two-sided lerp for exact endpoints
    cdef double pos = q * (cnt - 1), g, lo_v, hi_v, diff
    cdef idx_t lo = <idx_t>pos
    cdef idx_t hi = lo + 1 if lo + 1 < cnt else cnt - 1
    g = pos - lo
    lo_v = a[lo]
    hi_v = a[hi]
    diff = hi_v - lo_v
    if g >= 0.5:
        return hi_v - diff * (1.0 - g)
    return lo_v + diff * g


cdef int day_kernel(int op, const double* x, double* out, const double* groups,
                    const int64_t* starts, const int64_t* ends, idx_t N, idx_t T, idx_t t,
                    double param, double* key, idx_t* idx, double* tkey,
                    idx_t* tidx) noexcept nogil:
    cdef idx_t i, cnt = 0, a, b, j
    cdef double v, s, mean, ss, sd, lo, hi, vmin, vmax, g
    # gather the day's valid values (and, for CSNeutralize, valid group codes)
    for i in range(N):
        if starts[i] <= t < ends[i]:
            v = x[i * T + t]
            if v == v:
                if op == CSNEUTRALIZE:
                    g = groups[i * T + t]
                    if g != g:
                        continue
                    key[cnt] = g
                else:
                    key[cnt] = v
                idx[cnt] = i
                cnt += 1
    if cnt == 0:
        return 0
    if op == CSRANK:
        # pandas rank(pct=True, method="average") over the day's valid values
        sort_by_key(key, idx, tkey, tidx, cnt)
        a = 0
        while a < cnt:
            b = a + 1
            while b < cnt and key[b] == key[a]:
                b += 1
            v = (a + b + 1) / (2.0 * cnt)
            for j in range(a, b):
                out[idx[j] * T + t] = v
            a = b
    elif op == CSZSCORE or op == CSDEMEAN:
        s = 0.0
        vmin = key[0]
        vmax = key[0]
        for j in range(cnt):
            s += key[j]
            if key[j] < vmin:
                vmin = key[j]
            if key[j] > vmax:
                vmax = key[j]
        mean = s / cnt
        if op == CSDEMEAN:
            for j in range(cnt):
                out[idx[j] * T + t] = key[j] - mean
            return 0
        if cnt < 2 or vmin == vmax:
            return 0  # std (ddof=1) undefined or 0: leave NaN
        ss = 0.0
        for j in range(cnt):
            ss += (key[j] - mean) * (key[j] - mean)
        sd = sqrt(ss / (cnt - 1))
        for j in range(cnt):
            out[idx[j] * T + t] = (key[j] - mean) / sd
    elif op == CSWINSORIZE:
        # clip to the day's [q, 1 - q] quantiles
        sort_by_key(key, idx, tkey, tidx, cnt)
        lo = lerp_quantile(key, cnt, param)
        hi = lerp_quantile(key, cnt, 1.0 - param)
        for j in range(cnt):
            out[idx[j] * T + t] = lo if key[j] < lo else (hi if key[j] > hi else key[j])
    else:  # CSNEUTRALIZE: value minus the mean of its group that day (key = group code)
        sort_by_key(key, idx, tkey, tidx, cnt)
        a = 0
        while a < cnt:
            b = a + 1
            while b < cnt and key[b] == key[a]:
                b += 1
            s = 0.0
            for j in range(a, b):
                s += x[idx[j] * T + t]
            mean = s / (b - a)
            for j in range(a, b):
                out[idx[j] * T + t] = x[idx[j] * T + t] - mean
            a = b
    return 0


def cross_section(int op, const double[:, ::1] x, double[:, ::1] out, const int64_t[::1] starts,
                  const int64_t[::1] ends, const double[:, ::1] groups, double param, int threads):
    """Fill out[:, t] for every day t with operator `op` (index into CROSS_SECTION_OPS)."""
    cdef idx_t N = x.shape[0], T = x.shape[1], t
    cdef int nth = threads if threads > 0 else qc_cs_default_threads()
    cdef int failed = 0
    cdef double* key
    cdef double* tkey
    cdef idx_t* idx
    cdef idx_t* tidx
    if N == 0 or T == 0:
        return
    cdef const double* xp = &x[0, 0]
    cdef const double* gp = &groups[0, 0]
    cdef double* op_ = &out[0, 0]
    with nogil:
        for t in prange(T, num_threads=nth, schedule="static"):
            key = <double*>malloc(N * sizeof(double))
            tkey = <double*>malloc(N * sizeof(double))
            idx = <idx_t*>malloc(N * sizeof(idx_t))
            tidx = <idx_t*>malloc(N * sizeof(idx_t))
            if key == NULL or tkey == NULL or idx == NULL or tidx == NULL:
                failed += 1
            else:
                day_kernel(op, xp, op_, gp, &starts[0], &ends[0], N, T, t, param,
                           key, idx, tkey, tidx)
            free(key)
            free(tkey)
            free(idx)
            free(tidx)
    if failed:
        raise MemoryError("cross-section kernel could not allocate its day buffers")


def gather_rows(const double[:, ::1] x, float[::1] out, const int64_t[::1] starts, const int64_t[::1] ends,
                const int64_t[::1] offsets, idx_t day0, int nth):
    """Copy the in-span cells of x (instruments, days), days day0 .. day0 + len(offsets) - 2, into
    `out` in (day, instrument) order, as float32: the rows of a long (datetime, instrument) frame.

    offsets[d] is the output position of day day0 + d's first row (a running count of listed
    instruments), so days are independent and split across threads. This replaces an index-array
    gather, which reads an int64 index per cell on top of the value."""
    cdef idx_t N = x.shape[0], n_days = offsets.shape[0] - 1
    cdef idx_t d, t, i, k
    with nogil:
        for d in prange(n_days, num_threads=nth, schedule="static"):
            t = day0 + d
            k = offsets[d]
            for i in range(N):
                if starts[i] <= t < ends[i]:
                    out[k] = <float>x[i, t]
                    k = k + 1
