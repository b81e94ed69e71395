"""Research rigor: is a factor's IC real, new, and free of look-ahead?

Pure building blocks over arrays, each answering one question a factor search must ask before it
believes a number:
- `newey_west_t`: the t-statistic of a daily series' mean with a HAC standard error, because daily ICs
  of a multi-day label overlap and are autocorrelated, so the iid t (`ic_stats`) overstates them;
- `benjamini_hochberg` / `benjamini_yekutieli` / `reject`: false-discovery-rate control across the many
  factors a search tries;
- `residual_ic` (and `principal_components`): the IC a factor keeps after removing what a library of
  known factors already explains;
- `label_horizon`: how many days ahead a label reads, i.e. how much to purge between segments
  (see `quantcore.dataset.purge`);
- `lookahead_cut_points`: seeded, stratified days at which to perturb the future and check that no
  factor value before them moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np

from quantcore.evaluate.ic import MIN_PAIRS, DailyRanks, daily_rank_ic
from quantcore.expr.ast import Node, Ref, children, future_reads
from quantcore.expr.parser import parse

__all__ = [
    "FdrMethod",
    "HacStat",
    "PrincipalComponents",
    "ResidualIC",
    "benjamini_hochberg",
    "benjamini_yekutieli",
    "label_horizon",
    "lookahead_cut_points",
    "newey_west_lags",
    "newey_west_t",
    "one_sided_p",
    "principal_components",
    "reject",
    "residual_ic",
    "residual_ics",
    "two_sided_p",
]


# ---- HAC t-statistic ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HacStat:
    """The mean of a series and its Newey-West (HAC) standard error and t-statistic."""

    mean: float
    se: float  # sqrt(long-run variance / n); NaN with fewer than 2 points
    t: float  # mean / se; NaN when se is 0 or undefined
    n: int  # finite points used
    lags: int  # Bartlett lags actually used (capped at n - 1)


def newey_west_lags(n: int) -> int:
    """Default Bartlett lag count floor(4 (n/100)^(2/9)), the rule of thumb of Newey & West (1994),
    "Automatic lag selection in covariance matrix estimation", Rev. Econ. Stud. 61(4), p. 631-653."""
    return int(math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0))) if n > 0 else 0


def newey_west_t(x: np.ndarray, lags: int | None = None) -> HacStat:
    """t-statistic of the mean of a daily series (NaN days dropped) with a Newey-West standard error.

    Long-run variance = g0 + 2 sum_{j=1..L} (1 - j/(L+1)) g_j (Bartlett weights), with autocovariances
    g_j = sum_t e_t e_{t-j} / n of the demeaned series (the 1/n, not 1/(n-j), form that keeps the
    estimate non-negative). With `lags=0` the se is the iid one, std(x, ddof=0) / sqrt(n).
    NaN days are dropped before lagging, so lags count valid days, not calendar days."""
    s = np.asarray(x, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    n = int(s.size)
    if lags is not None and lags < 0:
        raise ValueError(f"lags must be >= 0 (or None for the Newey-West default), got {lags}")
    lag = newey_west_lags(n) if lags is None else int(lags)
    lag = max(0, min(lag, n - 1))
    if n < 2:
        return HacStat(float(s.mean()) if n else math.nan, math.nan, math.nan, n, lag)
    mean = float(s.mean())
    e = s - mean
    lrv = float(e @ e) / n
    for j in range(1, lag + 1):
        lrv += 2.0 * (1.0 - j / (lag + 1.0)) * float(e[j:] @ e[:-j]) / n
    se = math.sqrt(lrv / n) if lrv > 0 else 0.0
    t = mean / se if se > 0 else math.nan
    return HacStat(mean, se, t, n, lag)


def two_sided_p(t: float) -> float:
    """P(|Z| >= |t|) for a standard normal Z: the two-sided p-value of a large-sample t-statistic."""
    return math.erfc(abs(t) / math.sqrt(2.0)) if not math.isnan(t) else math.nan


def one_sided_p(t: float) -> float:
    """P(Z >= t) for a standard normal Z: the p-value of "the mean is positive" (flip the sign of t to
    test negative)."""
    return 0.5 * math.erfc(t / math.sqrt(2.0)) if not math.isnan(t) else math.nan


# ---- false discovery rate ----------------------------------------------------------------------


class FdrMethod(str, Enum):
    """Which false-discovery-rate procedure `reject` applies."""

    BH = "bh"  # Benjamini-Hochberg (1995): valid for independent or positively dependent tests
    BY = "by"  # Benjamini-Yekutieli (2001): valid under any dependence, at a cost of c(m) = sum 1/i


def _pvalues(pvalues) -> np.ndarray:
    p = np.array(pvalues, dtype=np.float64).ravel()
    bad = ~np.isnan(p) & ((p < 0) | (p > 1))
    if bad.any():
        raise ValueError(f"p-values must lie in [0, 1] (or be NaN); got {p[bad][:5].tolist()}")
    return p


def _step_up(p: np.ndarray, scale: float) -> np.ndarray:
    # q_(i) = min_{k >= i} min(1, scale * m * p_(k) / k) over the m non-NaN p-values sorted ascending
    q = np.full(p.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = finite.size
    if m == 0:
        return q
    order = finite[np.argsort(p[finite], kind="stable")]
    raw = scale * m * p[order] / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(raw[::-1])[::-1], 1.0)
    return q


def benjamini_hochberg(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values): reject where q <= the target FDR. Monotone in p,
    capped at 1; a NaN p-value stays NaN and is not counted among the m hypotheses."""
    return _step_up(_pvalues(pvalues), 1.0)


def benjamini_yekutieli(pvalues) -> np.ndarray:
    """Benjamini-Yekutieli adjusted p-values: BH's times c(m) = 1 + 1/2 + ... + 1/m (capped at 1), which
    controls the FDR under any dependence between tests (factors of one library are dependent)."""
    p = _pvalues(pvalues)
    m = int((~np.isnan(p)).sum())
    return _step_up(p, float(np.sum(1.0 / np.arange(1, m + 1))) if m else 1.0)


def reject(pvalues, q: float, method: FdrMethod | str = FdrMethod.BY) -> np.ndarray:
    """Boolean mask of the hypotheses rejected at false discovery rate `q`; NaN p-values are never
    rejected. BY by default: factors mined from one library are dependent in ways BH does not cover."""
    if not 0 < q < 1:
        raise ValueError(f"the target false discovery rate q must lie in (0, 1), got {q}")
    adjust = {FdrMethod.BH: benjamini_hochberg, FdrMethod.BY: benjamini_yekutieli}[FdrMethod(method)]
    adjusted = adjust(pvalues)
    return ~np.isnan(adjusted) & (adjusted <= q)


# ---- residual IC -------------------------------------------------------------------------------

#: A day's residual whose norm is below this fraction of the demeaned factor's is rounding noise: the
#: factor is a linear mix of the controls that day. Ranking that noise would return a random IC.
SPANNED_TOL = 1e-8


@dataclass(frozen=True, eq=False)
class ResidualIC:
    """Daily rank IC of what a factor adds beyond a set of controls, with its HAC t-statistic."""

    daily: np.ndarray  # float64 (T',): one value per selected day, NaN where skipped
    mean: float  # mean over the defined days
    hac: HacStat  # Newey-West t of the daily series (default lags)
    skipped_days: int  # days with too few instruments where the factor and every control are finite
    spanned_days: int  # days where the factor lies in the controls' span: scored 0, not ranked noise

    @property
    def t(self) -> float:
        return self.hac.t


def _day_selection(t: int, days) -> np.ndarray:
    return np.arange(t) if days is None else np.arange(t)[days]


def residual_ic(factor: np.ndarray, label: np.ndarray, controls: np.ndarray, days=None) -> ResidualIC:
    """Per day, regress `factor` (N, T) cross-sectionally on `controls` (F, N, T) by least squares with an
    intercept, over the instruments where the factor and every control are finite, then take the
    Spearman IC of the residual with `label` (N, T). `days` (a slice or index array) limits the days.

    A day with fewer than max(F + 5, 20) such instruments is skipped (NaN): the fit would eat the
    cross-section. A day where the residual vanishes (the factor is spanned by the controls) scores 0
    where the label is defined, rather than the rank IC of rounding noise."""
    (factor,), label, controls = _residual_inputs([factor], label, controls)
    f_count = controls.shape[0]
    min_obs = max(f_count + 5, 20)
    sel = _day_selection(factor.shape[1], days)
    resid = np.full((factor.shape[0], sel.size), np.nan)
    skipped = np.zeros(sel.size, bool)
    spanned = np.zeros(sel.size, bool)
    for i, d in enumerate(sel):
        y = factor[:, d]
        x = controls[:, :, d].T  # (N, F)
        ok = np.isfinite(y) & np.isfinite(x).all(axis=1)
        if ok.sum() < min_obs:
            skipped[i] = True
            continue
        yc = y[ok] - y[ok].mean()
        scale = math.sqrt(float(yc @ yc))
        if scale == 0.0:  # a constant factor has no cross-section to rank: leave the day NaN
            continue
        design = np.column_stack([np.ones(int(ok.sum())), x[ok]])
        # lstsq (SVD) rather than normal equations: collinear controls still give the projection residual
        beta = np.linalg.lstsq(design, y[ok], rcond=None)[0]
        r = y[ok] - design @ beta
        if math.sqrt(float(r @ r)) <= SPANNED_TOL * scale:
            # scored 0 only where the day could have been scored at all (a label to compare with)
            spanned[i] = np.isfinite(label[ok, d]).sum() >= MIN_PAIRS
            continue
        resid[ok, i] = r
    daily = daily_rank_ic(resid, label[:, sel])
    daily[spanned] = 0.0
    return _residual_result(daily, skipped, spanned)


def residual_ics(
    factors: list[np.ndarray],
    label: np.ndarray | DailyRanks,
    controls: np.ndarray,
    days=None,
    block: int = 32,
    uses: list | None = None,
) -> list[ResidualIC]:
    """`residual_ic` of many factors, fitted for all of them and `block` days at once (the bulk
    screen's residual; admission uses `residual_ic` itself). `uses` gives each factor the indices of
    the controls it is regressed on (default: all of them), so factors whose controls differ (each
    leaves out the library factors it repeats) share one pass. `label` may be a `DailyRanks` (not
    sorted again per factor).

    Each factor is still fitted on its own rows (where it and each of its controls are finite), through
    the normal equations of the day's standardised design: one small system per control set and day,
    shared by the factors finite on all of its rows, and one of their own (the set's Gram matrix less the
    rows they miss) for the others, solved directly, or by a pseudo-inverse where a block holds a
    singular one. Factors' missing rows differ (rolling windows of different
    lengths), so one SVD of the design per factor and day, as `residual_ic` does, would cost a screen
    ten times its own scoring. Agrees with `residual_ic` to ~1e-9 on well-conditioned controls (the
    pseudo-inverse drops directions below 1e-10 of the largest, as lstsq drops collinear ones)."""
    ranks = label if isinstance(label, DailyRanks) else None
    factors, label, controls = _residual_inputs(factors, label.values if ranks else label, controls)
    n_factors, f_count = len(factors), controls.shape[0]
    if n_factors == 0:
        return []
    sets: dict[tuple[int, ...], int] = {}  # each distinct control set, numbered
    group = np.empty(n_factors, np.int64)  # factor -> its control set
    for c, used in enumerate([range(f_count)] * n_factors if uses is None else uses):
        key = tuple(sorted({int(k) for k in used}))
        if any(not 0 <= k < f_count for k in key):
            raise ValueError(f"uses[{c}] names control {key} outside the {f_count} controls given")
        group[c] = sets.setdefault(key, len(sets))
    # columns of the design (0: the intercept) each set fits; a set's system leaves the others out as
    # identity rows with a zero right-hand side, so every factor is solved in one batch with 0 there
    in_set = np.zeros((len(sets), f_count + 1), bool)
    in_set[:, 0] = True
    for key, g in sets.items():
        in_set[g, [k + 1 for k in key]] = True
    min_obs = np.maximum(in_set.sum(axis=1) + 4, 20)[group]  # max(F + 5, 20) with F the set's controls
    days = slice(None) if days is None else days  # a slice stays a view: no copy of the controls
    xs_all = controls[:, :, days]  # (F, N, S)
    ys = [f[:, days] for f in factors]  # views for a slice; an index array is copied once, not per block
    label_days = label[:, days] if ranks is None else ranks.days(days)
    label_ok = np.isfinite(label[:, days])  # (N, S)
    n_days = xs_all.shape[2]
    daily = np.full((n_factors, n_days), np.nan)
    skipped = np.zeros((n_factors, n_days), bool)
    spanned = np.zeros((n_factors, n_days), bool)
    for lo in range(0, n_days, block):
        hi = min(lo + block, n_days)
        y = np.stack([f[:, lo:hi] for f in ys], axis=1).T  # (B, C, N)
        r, thin, gone, labelled = _block_residuals(
            xs_all[:, :, lo:hi].transpose(2, 1, 0), y, in_set, group, min_obs, label_ok[:, lo:hi]
        )
        skipped[:, lo:hi] = thin.T
        spanned[:, lo:hi] = (gone & labelled).T
        # the factors' days side by side, against the label's block repeated: one ranking call per
        # block, and no (C, N, T) residual kept (a day's rank IC needs only the day)
        wide = r.transpose(2, 1, 0).reshape(r.shape[2], -1)  # (N, C * B), factor-major
        daily[:, lo:hi] = daily_rank_ic(
            wide, _repeat_days(label_days.days(slice(lo, hi)) if ranks is not None else label_days[:, lo:hi], n_factors)
        ).reshape(n_factors, -1)
    daily[spanned] = 0.0
    return [_residual_result(daily[c], skipped[c], spanned[c]) for c in range(n_factors)]


def _block_residuals(
    x: np.ndarray, y: np.ndarray, in_set: np.ndarray, group: np.ndarray, min_obs: np.ndarray, label_ok: np.ndarray
) -> tuple[np.ndarray, ...]:
    """One block of `residual_ics`: controls `x` (B, N, F), factors `y` (B, C, N), factor c regressed on
    the design columns `in_set[group[c]]`. Returns the residuals (B, C, N), NaN where not ranked, and
    (B, C) masks: thin, spanned, labelled."""
    col_ok = np.isfinite(x)
    # each control standardised over its own rows (a residual does not depend on the columns' scale or
    # offset), 0 off them; column 0 is the intercept
    rows = np.maximum(col_ok.sum(axis=1), 1)
    xz = np.where(col_ok, x, 0.0)
    dev = np.where(col_ok, xz - (xz.sum(axis=1) / rows)[:, None, :], 0.0)
    sd = np.sqrt((dev * dev).sum(axis=1) / rows)
    design = np.concatenate([np.ones(x.shape[:2] + (1,)), dev / np.where(sd > 0, sd, 1.0)[:, None, :]], axis=2)
    # a set's rows: where each of its controls is finite, (B, G, N)
    set_ok = ((~col_ok).astype(np.float64) @ in_set[:, 1:].T.astype(np.float64) == 0).transpose(0, 2, 1)
    all_ok = col_ok.all(axis=2)  # (B, N)
    d_all = design * all_ok[..., None]
    gram = np.repeat((np.swapaxes(d_all, 1, 2) @ d_all)[:, None], in_set.shape[0], axis=1)  # (B, G, P, P)
    b_i, g_i = np.nonzero((set_ok != all_ok[:, None, :]).any(axis=2))
    if b_i.size:  # a control the set leaves out is missing on some of its rows: its own Gram matrix
        d = design[b_i] * set_ok[b_i, g_i][..., None]
        gram[b_i, g_i] = np.swapaxes(d, 1, 2) @ d
    outside = ~in_set[:, :, None] | ~in_set[:, None, :]  # (G, P, P)
    gram = np.where(outside, 0.0, gram) + (~in_set[:, :, None] & np.eye(in_set.shape[1], dtype=bool))
    x_ok = set_ok[:, group]  # (B, C, N)
    ok = np.isfinite(y) & x_ok
    count = ok.sum(axis=2)  # (B, C)
    yl = np.where(ok, y, 0.0)
    thin = count < min_obs
    rhs = (yl @ design) * in_set[group]  # (B, C, P)
    # a factor finite on every row of its set (most days, outside warm-ups) shares the day's system
    # for its set; the others subtract the rows they miss from it and are solved alone
    shared = _solve(gram, np.repeat(np.swapaxes(rhs, 1, 2)[:, None], gram.shape[1], axis=1))  # (B, G, P, C)
    c_all = np.arange(y.shape[1])
    beta = np.swapaxes(shared[:, group, :, c_all], 0, 1).copy()  # (B, C, P)
    own = (count < set_ok.sum(axis=2)[:, group]) & ~thin  # (B, C): misses some of its set's rows
    if own.any():
        b_i, c_i = np.nonzero(own)
        g = gram[b_i, group[c_i]]  # (K, P, P), a copy
        k_i, n_i = np.nonzero(x_ok[b_i, c_i] & ~ok[b_i, c_i])  # k_i ascending, each k at least once
        rows_out = design[b_i[k_i], n_i] * in_set[group[c_i[k_i]]]
        g -= np.add.reduceat(rows_out[:, :, None] * rows_out[:, None, :], np.flatnonzero(np.diff(k_i, prepend=-1)))
        beta[b_i, c_i] = _solve(g, rhs[b_i, c_i][..., None])[..., 0]
    fitted = beta @ np.ascontiguousarray(np.swapaxes(design, 1, 2))
    r = np.where(ok, yl - fitted, 0.0)  # (B, C, N), 0 off each factor's rows
    mean = yl.sum(axis=2) / np.maximum(count, 1)
    yc = np.where(ok, yl - mean[..., None], 0.0)
    scale = np.sqrt((yc * yc).sum(axis=2))
    norm = np.sqrt((r * r).sum(axis=2))
    flat = ~thin & (scale == 0.0)  # a constant factor has no cross-section to rank: NaN
    gone = ~thin & ~flat & (norm <= SPANNED_TOL * scale)  # spanned by the controls: scored 0
    labelled = (ok & label_ok.T[:, None, :]).sum(axis=2) >= MIN_PAIRS
    keep = (~thin & ~flat & ~gone)[..., None] & ok
    return np.where(keep, r, np.nan), thin, gone, labelled


def _repeat_days(label: np.ndarray | DailyRanks, times: int) -> np.ndarray | DailyRanks:
    """An (N, B) label's days repeated `times` over, side by side (N, times * B); sorts are kept."""
    if times == 1:
        return label
    if isinstance(label, DailyRanks):
        return DailyRanks(
            np.tile(label.values, (1, times)),
            np.tile(label.valid, (1, times)),
            np.tile(label.order, (times, 1)),
            np.tile(label.keys, (times, 1)),
        )
    return np.tile(label, (1, times))


def _solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Batched normal equations; where any system in the batch is singular (a control constant on a day,
    collinear controls), the minimum-norm fit through a pseudo-inverse for all of them."""
    try:
        return np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(gram, rcond=1e-10, hermitian=True) @ rhs


def _residual_inputs(factors: list, label, controls) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    factors = [np.asarray(f, dtype=np.float64) for f in factors]
    label = np.asarray(label, dtype=np.float64)
    controls = np.asarray(controls, dtype=np.float64)
    if controls.ndim == 2:
        controls = controls[None]
    for factor in factors:
        if factor.ndim != 2 or label.shape != factor.shape or controls.shape[1:] != factor.shape:
            raise ValueError(
                f"factor and label must be (N, T) and controls (F, N, T) over the same (N, T); got factor "
                f"{factor.shape}, label {label.shape}, controls {controls.shape}"
            )
    return factors, label, controls


def _residual_result(daily: np.ndarray, skipped: np.ndarray, spanned: np.ndarray) -> ResidualIC:
    hac = newey_west_t(daily)
    return ResidualIC(daily, hac.mean, hac, int(skipped.sum()), int(spanned.sum()))


@dataclass(frozen=True, eq=False)
class PrincipalComponents:
    """Pooled principal components of a stack of factors, as (k, N, T) scores usable as controls."""

    scores: np.ndarray  # float64 (k, N, T): NaN where any input factor is NaN
    loadings: np.ndarray  # float64 (k, F): unit eigenvectors of the standardised factors' covariance
    explained: np.ndarray  # float64 (k,): fraction of the total standardised variance each explains


def principal_components(stack: np.ndarray, k: int) -> PrincipalComponents:
    """Top-`k` pooled principal components of `stack` (F, N, T): each factor is demeaned per day
    (cross-sectional, as the IC sees it) and scaled to unit pooled variance, then the F x F covariance
    over every (instrument, day) where all F are finite is diagonalised. Pooled, so one set of loadings
    spans all days and the scores are comparable over time."""
    stack = np.asarray(stack, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"principal_components needs an (F, N, T) stack, got shape {stack.shape}")
    f_count = stack.shape[0]
    if not 1 <= k <= f_count:
        raise ValueError(f"k must lie in [1, F={f_count}], got {k}")
    complete = np.isfinite(stack).all(axis=0)  # (N, T)
    if not complete.any():
        raise ValueError("no (instrument, day) cell has every factor of the stack finite")
    per_day = np.maximum(complete.sum(axis=0), 1)  # (T,)
    day_mean = np.where(complete, stack, 0.0).sum(axis=1) / per_day  # (F, T)
    z = np.where(complete, stack - day_mean[:, None, :], 0.0)  # (F, N, T), 0 off the complete cells
    sd = np.sqrt((z**2).sum(axis=(1, 2)) / complete.sum())  # (F,)
    z /= np.where(sd > 0, sd, 1.0)[:, None, None]  # a constant factor stays 0 and gets no weight
    cells = z[:, complete]  # (F, cells)
    values, vectors = np.linalg.eigh(cells @ cells.T / cells.shape[1])  # ascending
    top = np.argsort(values)[::-1][:k]
    loadings = vectors[:, top].T  # (k, F)
    scores = np.einsum("kf,fnt->knt", loadings, z)
    scores[:, ~complete] = np.nan
    total = float(values.clip(min=0).sum())
    explained = values[top].clip(min=0) / total if total > 0 else np.zeros(k)
    return PrincipalComponents(scores, loadings, explained)


# ---- look-ahead ---------------------------------------------------------------------------------


def _reach(node: Node) -> int:
    # rows ahead of t the node's value at t depends on: a Ref(x, p) at t is x at t - p; windows,
    # cross-sections and masks only look back or sideways, so they pass their inputs' reach through
    kids = children(node)
    inner = max((_reach(k) for k in kids), default=0)
    if isinstance(node, Ref):
        return inner - node.periods
    return inner


def label_horizon(label_expression: str | Node) -> int:
    """Largest number of days ahead a label reads (2 for qlib's `Ref($close, -2)/Ref($close, -1) - 1`):
    the last `horizon` days of a segment have labels that read the next segment's prices. Nested
    shifts add up: `Ref(Ref($close, 2), -3)` reads 1 day ahead."""
    node = parse(label_expression) if isinstance(label_expression, str) else label_expression
    if not future_reads(node):
        return 0
    return max(0, _reach(node))


def lookahead_cut_points(start: int, stop: int, k: int, seed: int) -> list[int]:
    """`k` sorted day indices in [start, stop), one drawn uniformly in each of k equal bins, so a
    perturbation test cuts near the start, the middle and the end of a segment, reproducibly per seed.
    Bin i is [start + i*L//k, start + (i+1)*L//k) with L = stop - start."""
    length = stop - start
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if length < k:
        raise ValueError(f"[{start}, {stop}) holds {max(length, 0)} days, fewer than the {k} cut points asked for")
    rng = np.random.default_rng(seed)
    edges = [start + (i * length) // k for i in range(k + 1)]
    return [int(rng.integers(edges[i], edges[i + 1])) for i in range(k)]
