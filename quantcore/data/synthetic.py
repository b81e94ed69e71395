"""A synthetic daily market with known structure and hidden, randomly drawn planted alphas, deterministic from a seed.

`synth_market(300, 2520, seed)` builds ten years of business days for 300 instruments:

* Returns: beta x market factor + industry factor (10 industries; the `industry` field holds the
  integer code as a float) + fat-tailed idiosyncratic noise (Student-t, 4 dof) + rare jumps. Volatility
  is stochastic: a market-wide regime and a per-instrument AR(1) log-vol.
* Price limits: every close-to-close move is capped at +/-9.5% (a limit-up/limit-down market); high-vol
  instruments and jump days hit the cap. Opens gap from the previous close and stay inside the band.
* OHLC are consistent: high >= max(open, close), low <= min(open, close); vwap lies in [low, high];
  volume is an AR(1) log-volume that also rises with the size of the day's idiosyncratic shock;
  factor = 1.
* Listings (late starts), delistings (early ends) and suspensions (whole rows NaN inside a listing
  span; the price is frozen while suspended). Every span begins and ends on a trading day.

PLANTED ALPHAS. `n_alphas` expressions (default 4; 0 gives a null market with no signal) are drawn at
random from `quantcore.data.alpha_grammar` by an RNG stream of their own, so they depend only on
(seed, n_alphas): a random operator over a random series, random windows in [3, 60], a random sign
and a target rank IC drawn uniformly in [0.03, 0.05] in magnitude. Draws that are degenerate (mostly
NaN, fewer than 5 distinct values a day) or too correlated with an alpha already drawn (mean daily
rank correlation above 0.5 in magnitude) are redrawn; the checks and the calibration run on a small
fixed reference market, so `planted_alphas(seed, n_alphas)` reveals them in ~0.3 s without building
the market. The panel carries no trace of them: its meta holds only generator, seed, size, n_alphas.

Each alpha's signal s_t is computed on day t from the *observed* panel by the project's expression
engine (qlib semantics: NaN on suspended days, rolling windows count calendar rows and skip NaN),
turned into a cross-sectional rank z-score u_t (average-tie ranks scaled to mean 0, variance 1; NaN
-> 0), and added to the return from close t+1 to close t+2 as `coefficient * u_t * sigma_i`, with
sigma_i the instrument's idiosyncratic volatility that day. That return is exactly qlib's default
label at t, `Ref($close, -2)/Ref($close, -1) - 1`. The signals read prices that the planted terms
move, so the market is a fixed point, found by iteration: prices without alphas, signals on them,
prices with those signals planted, signals on the new prices, ... (`_PASSES` = 4 rounds). The signals
evaluated on the final panel correlate >= 0.99 (mostly > 0.999) with the ones planted; the slowest
are statistics of correlations with the price level over long windows.

Coefficients are calibrated so the realised mean daily rank IC (Spearman vs the default label) of
each expression is near its target: coefficients = C^-1 targets / `_IC_PER_COEFFICIENT`, with C the
alphas' mean daily rank correlations measured on the reference market with the alphas planted (so
correlated alphas, and the correlation the planted returns themselves create, do not inflate each
other's IC) and the constant measured once by planting single alphas. Measured over seeds 0-19 at the
default size (80 alphas): realised minus target rank IC has sd 0.0021, 94% within +/-0.004, all
within +/-0.006, always with the drawn sign (at 200 x 1000, seeds 0-14: sd 0.003, all within
+/-0.007). Only the default label's horizon is planted: against the 1-day return
`Ref($close, -1)/$close - 1` the ICs are 0.77 of the target on average (-0.35 to 1.12 of it), carried
only by the signals' day-to-day persistence. With n_alphas=0 the same expressions have rank ICs
within +/-0.0045 of 0 at the default size (sd 0.0014, the sampling error).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantcore.data.alpha_grammar import MAX_WINDOW, DrawnAlpha, draw_alpha
from quantcore.data.panel import Panel
from quantcore.errors import DataError

__all__ = ["PlantedAlpha", "SynthConfig", "planted_alphas", "synth_market"]


@dataclass(frozen=True)
class PlantedAlpha:
    """A signal planted in `synth_market`: its qlib expression, target mean daily rank IC vs the default
    label, the coefficient that plants it, and what it means."""

    name: str  # identifier-safe, unique within one market
    expression: str  # qlib syntax
    target_rank_ic: float  # mean daily Spearman IC vs Ref($close, -2)/Ref($close, -1) - 1 it is calibrated for
    coefficient: float  # return added per unit of rank z-score, in units of idiosyncratic vol
    description: str


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator; the defaults give a liquid equity market with A-share-style limits."""

    n_industries: int = 10  # industry factors; ~30 instruments each at the default size
    market_vol: float = 0.010  # daily market vol in a calm regime (~16%/yr)
    market_drift: float = 0.0003  # daily market drift (~7.5%/yr)
    regime_persistence: float = 0.985  # AR(1) of the market log-vol regime (half-life ~46 days)
    regime_shock: float = 0.05  # innovation of the regime; stationary sd ~0.29 in log-vol
    industry_vol: float = 0.007  # daily industry-factor vol
    idio_vol_median: float = 0.017  # median idiosyncratic daily vol across instruments
    idio_vol_dispersion: float = 0.35  # lognormal sd of idiosyncratic vol across instruments
    idio_vol_persistence: float = 0.97  # AR(1) of each instrument's log-vol
    idio_vol_shock: float = 0.06  # its innovation (stationary sd ~0.25)
    jump_rate: float = 0.003  # daily probability of a news jump
    jump_size: float = 0.07  # sd of a jump: most jumps hit the price limit
    price_limit: float = 0.095  # close-to-close moves are capped at +/- this
    gap_vol: float = 0.3  # overnight gap sd, as a multiple of idiosyncratic vol
    range_vol: float = 0.4  # high/low excursion beyond open/close, as a multiple of idio vol
    volume_persistence: float = 0.8  # AR(1) of log volume
    volume_shock: float = 0.3  # innovation sd of log volume
    volume_news: float = 0.25  # log-volume response per unit |idiosyncratic shock|
    late_listing_share: float = 0.15  # instruments listed after the first day
    delisting_share: float = 0.08  # instruments delisted before the last day
    suspension_rate: float = 1 / 400  # suspension episodes per instrument-day
    suspension_mean_days: float = 3.0  # mean episode length (geometric, capped at 60)


# ---- planted-alpha calibration (constants measured once; see the module docstring) ---------------
_TARGET_RANGE = (0.03, 0.05)  # |target rank IC|, drawn uniformly
_IC_PER_COEFFICIENT = 1.02  # realised rank IC per unit coefficient of a lone planted alpha (16 seeds: sd 0.04)
_MAX_CORRELATION = 0.5  # planted alphas of one market: |mean daily rank correlation| at most this
_MIN_EIGENVALUE = 0.4  # and their correlation matrix well-conditioned, so coefficients stay near targets
_MIN_DISTINCT = 5  # a signal with fewer distinct values on the median day is degenerate
_MIN_FINITE = 0.95  # ... and so is one that is NaN/inf on more than 5% of trading days after warm-up
_PASSES = 4  # fixed-point rounds: signals on the final panel correlate >= 0.99 with the planted ones
_REFERENCE = (150, 500, 20240607)  # instruments, days, seed of the alpha-free market draws are checked on
_WARMUP = 2 * MAX_WINDOW + 10  # days before every drawn window (two nested at most) is full
_FIELDS = ("open", "high", "low", "close", "volume", "vwap", "factor", "industry")  # of the panel, in order


def planted_alphas(seed: int = 0, n_alphas: int = 4) -> tuple[PlantedAlpha, ...]:
    """The alphas `synth_market(..., seed=seed, n_alphas=n_alphas)` plants, without building that market.

    Depends only on (seed, n_alphas): the draws and their checks run on a fixed reference market (default
    `SynthConfig`). The first k of n alphas are the alphas of n_alphas=k; their coefficients differ,
    being solved jointly."""
    if n_alphas < 0:
        raise DataError(f"n_alphas must be >= 0, got {n_alphas}")
    if n_alphas == 0:
        return ()
    reference = _draw_market(*_REFERENCE, SynthConfig())
    rng = np.random.default_rng([seed, 1])  # its own stream: the market's draws do not move the alphas
    drawn, targets, scores = _draw_alphas(rng, n_alphas, _build_panel(reference, None))
    # IC_i = K * sum_j C_ij c_j, C the alphas' mean daily rank correlations: solve for the coefficients c.
    # Planted returns feed back into price-based signals (a 1-day return carries the planted terms of
    # two days before, which persistent signals still resemble), and that moves C; so plant once on the
    # reference market and solve again on the correlations measured there.
    coefficients = np.linalg.solve(_mean_daily_corr(scores, _WARMUP), targets) / _IC_PER_COEFFICIENT
    _, scores = _plant(reference, {a.name: a.expression for a in drawn}, coefficients)
    coefficients = np.linalg.solve(_mean_daily_corr(scores, _WARMUP), targets) / _IC_PER_COEFFICIENT
    return tuple(
        PlantedAlpha(
            a.name,
            a.expression,
            float(t),
            float(c),
            f"{a.description}; higher values predict {'higher' if t > 0 else 'lower'} returns",
        )
        for a, t, c in zip(drawn, targets, coefficients)
    )


def _draw_alphas(rng: np.random.Generator, n_alphas: int, reference: Panel) -> tuple[list, np.ndarray, list]:
    """Draw expressions and targets until `n_alphas` pass the checks on `reference` (not degenerate, not
    too correlated with those kept); returns them with their (N, T) rank z-scores there."""
    from quantcore.expr.evaluate import Evaluator  # quantcore.expr imports quantcore.data

    evaluator = Evaluator(reference, threads=1)  # a small panel: a second thread costs more than it saves
    trading = ~np.isnan(reference.fields["close"])
    trading[:, :_WARMUP] = False
    drawn: list[DrawnAlpha] = []
    targets: list[float] = []
    scores: list[np.ndarray] = []
    for _ in range(50 * n_alphas):
        alpha = draw_alpha(rng)
        target = float(rng.choice((-1.0, 1.0)) * rng.uniform(*_TARGET_RANGE))
        if alpha.name in {a.name for a in drawn}:
            continue
        values = evaluator.evaluate({"a": alpha.expression}, dtype=np.float64)["a"]
        if _degenerate(values, trading):
            continue
        z = _rank_zscore(values, reference.starts, reference.ends)
        corr = _mean_daily_corr([*scores, z], _WARMUP)
        if np.abs(corr[-1, :-1]).max(initial=0.0) > _MAX_CORRELATION or np.linalg.eigvalsh(corr)[0] < _MIN_EIGENVALUE:
            continue
        drawn.append(alpha)
        targets.append(target)
        scores.append(z)
        if len(drawn) == n_alphas:
            return drawn, np.array(targets), scores
    raise RuntimeError(
        f"found only {len(drawn)} of {n_alphas} usable alphas in {50 * n_alphas} draws; "
        "the grammar or the checks are broken"
    )


def synth_market(
    n_instruments: int = 300, n_days: int = 2520, seed: int = 0, config: SynthConfig | None = None, n_alphas: int = 4
) -> Panel:
    """Generate the synthetic market (see module docstring); identical output for identical arguments."""
    cfg = config or SynthConfig()
    if n_instruments < 2 or n_days < 30:
        raise DataError(f"synth_market needs at least 2 instruments and 30 days, got {n_instruments} x {n_days}")
    market = _draw_market(int(n_instruments), int(n_days), seed, cfg)
    alphas = planted_alphas(seed, n_alphas)
    exprs = {a.name: a.expression for a in alphas}
    panel, _ = _plant(market, exprs, np.array([a.coefficient for a in alphas]))
    meta = {
        "generator": "quantcore.data.synthetic/2",
        "seed": str(seed),
        "size": f"{market.n}x{market.t}",
        "n_alphas": str(n_alphas),
    }
    return Panel(panel.calendar, panel.instruments, panel.fields, panel.starts, panel.ends, "synthetic", meta)


# ---- the market without alphas ------------------------------------------------------------------
@dataclass(frozen=True)
class _Market:
    """Every random draw of one market; arrays are day-major (T, N). Prices follow from these plus the
    planted terms, so rebuilding the panel with other planted terms reuses the same noise."""

    n: int
    t: int
    limit: float  # +/- cap on close-to-close moves
    industry: np.ndarray  # (N,) int codes
    starts: np.ndarray  # (N,) listing span [start, end)
    ends: np.ndarray
    trading: np.ndarray  # (T, N) listed and not suspended
    base: np.ndarray  # (T, N) return before planting and capping
    sigma: np.ndarray  # (T, N) idiosyncratic vol
    gap: np.ndarray  # (T, N) open / previous close
    up_wick: np.ndarray  # (T, N) high excursion above max(open, close), relative
    down_wick: np.ndarray
    vwap_pos: np.ndarray  # (T, N) vwap's position in [low, high]
    volume: np.ndarray  # (T, N) observed volume, NaN when not trading
    price0: np.ndarray  # (N,) close before the first day


def _draw_market(n: int, t: int, seed: int, cfg: SynthConfig) -> _Market:
    """All draws, in a fixed order from `default_rng(seed)` (the order is part of the output's identity)."""
    rng = np.random.default_rng(seed)
    # ---- universe: industries, betas, vol levels, listing spans, suspensions ----------------------
    industry = rng.integers(0, cfg.n_industries, n)
    beta = np.clip(1.0 + 0.3 * rng.standard_normal(n), 0.2, 2.0)
    idio_level = np.clip(cfg.idio_vol_median * np.exp(cfg.idio_vol_dispersion * rng.standard_normal(n)), 0.006, 0.06)
    starts, ends = _listing_spans(rng, n, t, cfg)
    trading = _trading_mask(rng, starts, ends, t, cfg)  # (T, N): listed and not suspended

    # ---- exogenous shocks -------------------------------------------------------------------------
    regime = _ar1(rng.standard_normal(t) * cfg.regime_shock, cfg.regime_persistence)  # (T,)
    regime_vol = np.exp(regime)
    market = cfg.market_drift + cfg.market_vol * regime_vol * rng.standard_normal(t)  # (T,)
    industry_ret = cfg.industry_vol * regime_vol[:, None] * rng.standard_normal((t, cfg.n_industries))  # (T, K)
    log_vol_dev = _ar1(cfg.idio_vol_shock * rng.standard_normal((t, n)), cfg.idio_vol_persistence)
    sigma = idio_level[None, :] * np.exp(0.5 * regime[:, None] + log_vol_dev)  # (T, N) idiosyncratic vol
    eps = rng.standard_t(4, (t, n)) / np.sqrt(2.0)  # unit-variance fat tails
    jumps = (rng.random((t, n)) < cfg.jump_rate) * rng.normal(0.0, cfg.jump_size, (t, n))
    base = market[:, None] * beta[None, :] + industry_ret[:, industry] + sigma * eps + jumps  # (T, N)
    lim = cfg.price_limit
    gap = np.clip(np.exp(cfg.gap_vol * sigma * rng.standard_normal((t, n))), 1.0 - lim, 1.0 + lim)
    up_wick = np.abs(cfg.range_vol * sigma * rng.standard_normal((t, n)))
    down_wick = np.abs(cfg.range_vol * sigma * rng.standard_normal((t, n)))
    vwap_pos = np.clip(0.5 + 0.15 * rng.standard_normal((t, n)), 0.05, 0.95)
    log_volume = (
        np.log(1e6)
        + rng.standard_normal(n)[None, :]
        + _ar1(cfg.volume_shock * rng.standard_normal((t, n)), cfg.volume_persistence)
        # capped: Student-t tails would otherwise give absurd one-day volumes (e^25 x normal)
        + cfg.volume_news * (np.minimum(np.abs(eps), 6.0) - 0.8)
    )
    price0 = np.exp(np.log(30.0) + 0.8 * rng.standard_normal(n))
    volume = np.where(trading, np.maximum(np.round(np.exp(log_volume)), 100.0), np.nan)
    return _Market(
        n, t, lim, industry, starts, ends, trading, base, sigma, gap, up_wick, down_wick, vwap_pos, volume, price0
    )


def _build_panel(m: _Market, planted: np.ndarray | None, fields: tuple[str, ...] = _FIELDS) -> Panel:
    """Prices and bars of market `m` with `planted` (T, N) (sum of coefficient x rank z-score on day d,
    moving the return of day d + 2, in units of idiosyncratic vol) or no alphas (None). Only `fields`
    are stored: the fixed-point passes need just the fields their expressions read."""
    r = m.base.copy()
    if planted is not None:
        r[2:] += m.sigma[2:] * planted[:-2]
    r = np.where(m.trading, np.clip(r, -m.limit, m.limit), 0.0)  # frozen price while not trading
    # closes[d + 1] = close of day d; price0 leads the product so each close is closes[d] * (1 + r[d])
    closes = np.cumprod(np.vstack([m.price0[None, :], 1.0 + r]), axis=0)
    close, prev_close = closes[1:], closes[:-1]
    lim = m.limit
    opn = prev_close * m.gap
    top, bottom = np.maximum(opn, close), np.minimum(opn, close)
    high = np.maximum(np.minimum(top * (1.0 + m.up_wick), prev_close * (1.0 + lim)), top)
    low = np.minimum(np.maximum(bottom * (1.0 - m.down_wick), prev_close * (1.0 - lim)), bottom)
    vwap = low + m.vwap_pos * (high - low)
    off = ~m.trading
    bars = {"open": opn, "high": high, "low": low, "close": close, "volume": m.volume, "vwap": vwap}
    out = {}
    for key in fields:
        if key == "factor":
            arr = np.where(m.trading, 1.0, np.nan)
        elif key == "industry":
            arr = np.where(m.trading, m.industry[None, :].astype(np.float64), np.nan)
        else:
            arr = np.where(off, np.nan, bars[key])
        out[key] = arr.T  # (N, T); from_arrays makes it contiguous
    calendar = pd.bdate_range("2010-01-04", periods=m.t)
    width = max(4, len(str(m.n - 1)))
    instruments = [f"SYN{i:0{width}d}" for i in range(m.n)]
    return Panel.from_arrays(calendar, instruments, out, starts=m.starts, ends=m.ends, name="synthetic")


def _plant(market: _Market, expressions: dict[str, str], coefficients: np.ndarray) -> tuple[Panel, list[np.ndarray]]:
    """The market with `expressions` planted at `coefficients`, found as a fixed point: evaluate the
    signals on the current panel, rebuild prices with them, repeat `_PASSES` times from the panel
    without alphas. Returns the final panel (every field) and the (N, T) rank z-scores planted in it."""
    if not expressions:
        return _build_panel(market, None), []
    from quantcore.expr.evaluate import Evaluator  # quantcore.expr imports quantcore.data

    read = {f for text in expressions.values() for f in re.findall(r"\$(\w+)", text)}
    needed = tuple(f for f in _FIELDS if f in read or f == "close")
    panel = _build_panel(market, None, needed)
    scores: list[np.ndarray] = []
    for i in range(_PASSES):
        values = Evaluator(panel).evaluate(expressions, dtype=np.float64)
        scores = [_rank_zscore(values[name], panel.starts, panel.ends) for name in expressions]
        planted = sum(c * z for c, z in zip(coefficients, scores))  # (N, T)
        panel = _build_panel(market, planted.T, _FIELDS if i == _PASSES - 1 else needed)
    return panel, scores


# ---- signals ------------------------------------------------------------------------------------
def _rank_zscore(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """(N, T) per-day average-tie ranks of the finite values, scaled to mean 0 / variance 1; missing -> 0.
    Average ties matter: ties broken by position would plant an instrument-order effect."""
    from quantcore import kernels

    x = np.where(np.isfinite(values), values, np.nan)
    ranks = kernels.cross_section("CSRank", np.ascontiguousarray(x), starts, ends, threads=1)
    valid = ~np.isnan(ranks)
    cnt = valid.sum(axis=0)
    filled = np.where(valid, ranks, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        centred = np.where(valid, filled - filled.sum(axis=0) / cnt, 0.0)
        z = centred / np.sqrt((centred * centred).sum(axis=0) / cnt)
    return np.where(valid & np.isfinite(z), z, 0.0)


def _mean_daily_corr(scores: list[np.ndarray], first_day: int) -> np.ndarray:
    """(K, K) mean over days (from `first_day`) of the cross-sectional correlation of rank z-scores."""
    k = len(scores)
    s = np.stack([z[:, first_day:] for z in scores])  # (K, N, T')
    norms = np.sqrt(np.einsum("knt,knt->kt", s, s))  # (K, T')
    out = np.eye(k)
    for a in range(k):
        for b in range(a):
            with np.errstate(invalid="ignore", divide="ignore"):
                daily = np.einsum("nt,nt->t", s[a], s[b]) / (norms[a] * norms[b])
            out[a, b] = out[b, a] = float(np.nanmean(daily))
    return out


def _degenerate(values: np.ndarray, trading: np.ndarray) -> bool:
    """Mostly NaN/inf where the market trades, or (nearly) constant across instruments on the median day."""
    finite = np.isfinite(values) & trading
    if finite.sum() < _MIN_FINITE * trading.sum():
        return True
    days = np.flatnonzero(trading.any(axis=0))
    x = np.sort(np.where(finite[:, days], values[:, days], np.nan), axis=0)  # NaN sorts last
    with np.errstate(invalid="ignore"):
        steps = np.diff(x, axis=0) > 1e-9 * np.abs(x[1:])  # rounding noise is no distinct value
    distinct = steps.sum(axis=0) + 1
    return float(np.median(distinct)) < _MIN_DISTINCT


# ---- helpers --------------------------------------------------------------------------------------
def _ar1(shocks: np.ndarray, phi: float) -> np.ndarray:
    """AR(1) along axis 0 (time), started at its stationary distribution."""
    out = np.empty_like(shocks)
    out[0] = shocks[0] / np.sqrt(1.0 - phi * phi)
    for d in range(1, shocks.shape[0]):
        out[d] = phi * out[d - 1] + shocks[d]
    return out


def _listing_spans(rng: np.random.Generator, n: int, t: int, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) per instrument: some list late, some delist early; every span is >= t/5 days."""
    min_span = max(20, t // 5)
    late = rng.random(n) < cfg.late_listing_share
    starts = np.where(late, rng.integers(1, max(2, t - 2 * min_span), n), 0)
    early = rng.random(n) < cfg.delisting_share
    cut = starts + min_span + (rng.random(n) * np.maximum(t - 1 - starts - min_span, 0)).astype(np.int64)
    ends = np.where(early, np.minimum(cut, t - 1), t)
    return starts.astype(np.int64), ends.astype(np.int64)


def _trading_mask(
    rng: np.random.Generator, starts: np.ndarray, ends: np.ndarray, t: int, cfg: SynthConfig
) -> np.ndarray:
    """(T, N) listed days minus suspension episodes; the first and last day of every span trade."""
    days = np.arange(t)[:, None]
    trading = (days >= starts[None, :]) & (days < ends[None, :])
    counts = rng.poisson(cfg.suspension_rate * (ends - starts))
    p = 1.0 / cfg.suspension_mean_days
    for i in np.flatnonzero(counts):
        first = rng.integers(starts[i] + 1, ends[i] - 1, counts[i])
        length = np.minimum(rng.geometric(p, counts[i]), 60)
        for f, m in zip(first, length):
            trading[f : min(f + m, ends[i] - 1), i] = False
    return trading
