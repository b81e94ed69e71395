"""Slow twin of `quantcore.kernels`: same API and semantics, one instrument at a time with pandas.

Each row's span is turned into a pandas Series and put through the same calls qlib 0.9.7 makes in
`qlib/data/ops.py` (`rolling(N, min_periods=1)`, `expanding`, raw `apply` with qlib's lambdas,
`ewm`); where qlib uses its own Cython (Slope/Rsquare/Resi) the window is solved directly by
two-pass least squares. This module is the test oracle: it favours being obviously right over being
fast, and assumes valid arguments (`quantcore.kernels` checks them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["rolling", "pair_rolling", "ema", "shift", "cross_section", "rank_within", "pearson_moments"]

QLIB_STD_ABS_TOL = 2e-5  # qlib ops.py: np.isclose(std, 0, atol=2e-05)
FLAT_STD_REL_TOL = 1e-10  # compat=False: flat when std <= 1e-10 * |mean|


def _per_row(x, starts, ends, fn, out=None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if out is None:
        out = np.full(x.shape, np.nan)
    else:
        out[...] = np.nan
    for i, (s, e) in enumerate(zip(np.asarray(starts), np.asarray(ends))):
        if e > s:
            out[i, s:e] = np.asarray(fn(pd.Series(x[i, s:e]), i, s, e), dtype=np.float64)
    return out


def _win(series: pd.Series, window: int):
    return series.expanding(min_periods=1) if window == 0 else series.rolling(window, min_periods=1)


def _windows(values: np.ndarray, window: int):
    """(start, raw window) for each row: the partial window qlib's rolling/expanding apply sees."""
    for t in range(len(values)):
        ws = 0 if window == 0 else max(0, t - window + 1)
        yield ws, values[ws : t + 1]


def _is_flat_std(std: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return std <= FLAT_STD_REL_TOL * np.abs(mean)


# ---- rolling --------------------------------------------------------------------------------------


def _qlib_mad(a: np.ndarray) -> float:
    a1 = a[~np.isnan(a)]
    return np.mean(np.abs(a1 - a1.mean()))


def _wma(compat: bool):
    def weighted_mean(a: np.ndarray) -> float:
        w = np.arange(len(a)) + 1.0
        if compat:  # qlib ops.WMA verbatim in meaning: normalised weights, then nanmean
            w = w / w.sum()
            return np.nanmean(w * a)
        ok = ~np.isnan(a)
        return np.sum(w[ok] * a[ok]) / np.sum(w[ok])

    return weighted_mean


def _regression(values: np.ndarray, window: int, op: str, compat: bool) -> np.ndarray:
    """Least squares of value on row position per window, NaN rows dropped (qlib Slope/Rsquare/Resi).

    +-inf counts as missing, as in every pandas window function (qlib's own Cython would carry it
    into its running sums and return NaN for the rest of the series)."""
    values = np.where(np.isinf(values), np.nan, values)
    out = np.full(len(values), np.nan)
    for t, (ws, a) in enumerate(_windows(values, window)):
        pos = np.arange(ws, t + 1, dtype=np.float64)
        ok = ~np.isnan(a)
        if ok.sum() < 2 or (op == "Resi" and np.isnan(values[t])):
            continue
        px, y = pos[ok], a[ok]
        if np.all(y == y[0]):  # flat window: slope 0, no R^2
            out[t] = {"Slope": 0.0, "Resi": 0.0, "Rsquare": np.nan}[op]
            continue
        dx, dy = px - px.mean(), y - y.mean()
        slope = np.sum(dx * dy) / np.sum(dx * dx)
        if op == "Slope":
            out[t] = slope
        elif op == "Resi":
            out[t] = values[t] - (y.mean() + slope * (t - px.mean()))
        else:
            r2 = np.sum(dx * dy) ** 2 / (np.sum(dx * dx) * np.sum(dy * dy))
            out[t] = min(r2, 1.0)
    if op == "Rsquare":
        std = _win(pd.Series(values), window).std().to_numpy()
        if compat:
            if window != 0:  # qlib masks only the rolling form
                out[np.isclose(std, 0, atol=QLIB_STD_ABS_TOL)] = np.nan
        else:
            mean = _win(pd.Series(values), window).mean().to_numpy()
            out[_is_flat_std(std, mean)] = np.nan
    return out


def _rolling_series(op: str, s: pd.Series, window: int, param, compat: bool):
    r = _win(s, window)
    if op in ("Sum", "Mean", "Std", "Var", "Skew", "Kurt", "Max", "Min", "Count"):
        return getattr(r, op.lower())()
    if op == "Med":
        return r.median()
    if op == "Quantile":
        return r.quantile(param)
    if op == "Rank":
        return r.rank(pct=True)
    if op in ("IdxMax", "IdxMin"):
        if compat:  # qlib: np.argmax over the raw window, NaN-unaware
            f = (lambda a: a.argmax() + 1) if op == "IdxMax" else (lambda a: a.argmin() + 1)
        else:
            f = (lambda a: np.nanargmax(a) + 1) if op == "IdxMax" else (lambda a: np.nanargmin(a) + 1)
        return r.apply(f, raw=True)
    if op == "Mad":
        return r.apply(_qlib_mad, raw=True)
    if op == "WMA":
        return r.apply(_wma(compat), raw=True)
    if op == "Delta":
        return s - s.iloc[0] if window == 0 else s - s.shift(window)
    if op == "First":
        return pd.Series(s.iloc[0], index=s.index)
    if op in ("Slope", "Rsquare", "Resi"):
        return _regression(s.to_numpy(), window, op, compat)
    raise ValueError(f"unknown rolling op {op!r}")


def rolling(op, x, window, starts, ends, *, param=None, compat=True, threads=None, out=None) -> np.ndarray:
    return _per_row(x, starts, ends, lambda s, i, a, b: _rolling_series(op, s, window, param, compat), out)


# ---- pairs ----------------------------------------------------------------------------------------


def _pair_series(op: str, sx: pd.Series, sy: pd.Series, window: int, compat: bool) -> np.ndarray:
    n = len(sx)
    xv, yv = (np.where(np.isinf(v), np.nan, v) for v in (sx.to_numpy(), sy.to_numpy()))  # as pandas
    out = np.full(n, np.nan)
    for t in range(n):
        ws = 0 if window == 0 else max(0, t - window + 1)
        a, b = xv[ws : t + 1], yv[ws : t + 1]
        ok = ~np.isnan(a) & ~np.isnan(b)
        if ok.sum() < 2:
            continue
        a, b = a[ok], b[ok]
        flat_a, flat_b = np.all(a == a[0]), np.all(b == b[0])
        if op == "Cov":
            out[t] = 0.0 if (flat_a or flat_b) else np.sum((a - a.mean()) * (b - b.mean())) / (len(a) - 1)
            continue
        if flat_a or flat_b:
            continue
        if _is_flat_std(a.std(ddof=1), a.mean()) or _is_flat_std(b.std(ddof=1), b.mean()):
            continue
        da, db = a - a.mean(), b - b.mean()
        out[t] = np.clip(np.sum(da * db) / np.sqrt(np.sum(da * da) * np.sum(db * db)), -1.0, 1.0)
    if op == "Corr" and compat:
        # qlib ops.Corr: mask by each side's own rolling std (its own valid rows)
        mask = np.isclose(_win(sx, window).std(), 0, atol=QLIB_STD_ABS_TOL) | np.isclose(
            _win(sy, window).std(), 0, atol=QLIB_STD_ABS_TOL
        )
        out[mask] = np.nan
    return out


def pair_rolling(op, x, y, window, starts, ends, *, compat=True, threads=None, out=None) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    return _per_row(x, starts, ends, lambda s, i, a, b: _pair_series(op, s, pd.Series(y[i, a:b]), window, compat), out)


def pandas_pair_rolling(op, x, y, window, starts, ends) -> np.ndarray:
    """qlib's literal PairRolling path (pandas rolling corr/cov), for cross-checking `pair_rolling`."""
    y = np.asarray(y, dtype=np.float64)

    def fn(s, i, a, b):
        return getattr(_win(s, window), op.lower())(pd.Series(y[i, a:b]))

    return _per_row(x, starts, ends, fn)


# ---- EMA, shift -----------------------------------------------------------------------------------


def _qlib_exp_weighted_mean(a: np.ndarray) -> float:
    k = 1 - 2 / (1 + len(a))
    w = k ** np.arange(len(a))[::-1]
    w /= w.sum()
    return np.nansum(w * a)


def ema(x, spec, starts, ends, *, threads=None, out=None) -> np.ndarray:
    def fn(s, i, a, b):
        if spec == 0:
            return s.expanding(min_periods=1).apply(_qlib_exp_weighted_mean, raw=True)
        if 0 < spec < 1:
            return s.ewm(alpha=spec, min_periods=1).mean()
        return s.ewm(span=spec, min_periods=1).mean()

    return _per_row(x, starts, ends, fn, out)


def shift(x, periods, starts, ends, *, threads=None, out=None) -> np.ndarray:
    def fn(s, i, a, b):
        return pd.Series(s.iloc[0], index=s.index) if periods == 0 else s.shift(periods)

    return _per_row(x, starts, ends, fn, out)


# ---- cross-section --------------------------------------------------------------------------------


def cross_section(op, x, starts, ends, *, groups=None, param=None, threads=None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    days = np.arange(x.shape[1])[None, :]
    inside = (days >= np.asarray(starts)[:, None]) & (days < np.asarray(ends)[:, None])
    for t in range(x.shape[1]):
        rows = np.flatnonzero(inside[:, t])
        s = pd.Series(x[rows, t], index=rows).dropna()
        g = None
        if op == "CSNeutralize":
            g = pd.Series(np.asarray(groups, dtype=np.float64)[rows, t], index=rows).reindex(s.index)
            s, g = s[g.notna()], g[g.notna()]
        if s.empty:
            continue
        with np.errstate(invalid="ignore"):  # inf - inf in a day's mean/std/quantile is NaN, as in pandas
            res = _one_day(op, s, g, param)
        if res is not None:
            out[res.index.to_numpy(), t] = res.to_numpy()
    return out


def rank_within(keys, order, keep, *, threads=None) -> np.ndarray:
    """pandas' pct rank of each day's kept, non-NaN cells, on the panel the sorted days spell out."""
    keys = np.asarray(keys, dtype=np.float64)
    t, n = keys.shape
    x = np.full((n, t), np.nan)
    x[np.asarray(order), np.arange(t)[:, None]] = keys  # x[order[d, j], d] = keys[d, j]
    return cross_section("CSRank", np.where(keep, x, np.nan), np.zeros(n, np.int64), np.full(n, t, np.int64))


def pearson_moments(x, y, both, *, threads=None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    count = both.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = np.where(both, x, 0.0).sum(axis=0) / count
        my = np.where(both, y, 0.0).sum(axis=0) / count
        dx = np.where(both, x - mx, 0.0)
        dy = np.where(both, y - my, 0.0)
    return np.stack(
        [count.astype(np.float64), mx, my, (dx * dx).sum(axis=0), (dy * dy).sum(axis=0), (dx * dy).sum(axis=0)]
    )


def _one_day(op: str, s: pd.Series, g: pd.Series | None, param) -> pd.Series | None:
    """One day's values (indexed by row) -> the operator's values, or None for an all-NaN day."""
    if op == "CSRank":
        return s.rank(pct=True)
    if op == "CSDemean":
        return s - s.mean()
    if op == "CSZScore":
        if len(s) < 2 or s.nunique() == 1:
            return None
        return (s - s.mean()) / s.std(ddof=1)
    if op == "CSWinsorize":
        q = 0.05 if param is None else param
        lo, hi = np.quantile(s.to_numpy(), [q, 1 - q])
        return s.clip(lo, hi)
    if op == "CSNeutralize":
        return s - s.groupby(g).transform("mean")
    raise ValueError(f"unknown cross_section op {op!r}")
