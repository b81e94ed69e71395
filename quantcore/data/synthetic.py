"""A synthetic daily market with known structure and planted alphas, deterministic from a seed.

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

PLANTED ALPHAS. For each alpha the signal s_t is computed on day t from the *observed* panel (NaN on
suspended days, qlib semantics: rolling windows count calendar rows and skip NaN), turned into a
cross-sectional rank z-score u_t (ranks scaled to mean 0, variance 1; NaN -> 0), and added to the
return from close t+1 to close t+2 as `coefficient * u_t * sigma_i`, with sigma_i the instrument's
current idiosyncratic volatility. That return is exactly qlib's default label at t,
`Ref($close, -2)/Ref($close, -1) - 1`, so `expected_rank_ic` is the mean over days of the
cross-sectional Spearman correlation between the expression and that label (signs included; measured
over seeds 0-4 at the default size, spread between seeds about +/-0.005):

    reversal_5        Ref($close, 5)/$close - 1          +0.045   5-day losers rebound
    volume_shock_20   $volume/Mean($volume, 20)          +0.030   abnormal volume earns a premium
    intraday_move     ($close-$open)/$open               -0.030   intraday moves revert
    close_volume_corr Corr($close, $volume, 10)          -0.040   price-volume correlation is sold

The signals are correlated with each other (the 5-day return contains today's intraday move), so
the coefficients are calibrated for these marginal ICs, not equal to them. A non-planted expression
such as `Ref($close, 20)/Ref($close, 60) - 1` has a rank IC of about 0, and so does every planted
expression when `SynthConfig(alpha_coefficients=(0, 0, 0, 0))` switches the planting off. Only the
default label's horizon is planted; against the 1-day return `Ref($close, -1)/$close - 1` the ICs
are smaller (about +0.034, +0.020, 0.00, -0.033), carried by the signals' day-to-day persistence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantcore.data.panel import Panel
from quantcore.errors import DataError

__all__ = ["PlantedAlpha", "PLANTED_ALPHAS", "SynthConfig", "synth_market"]


@dataclass(frozen=True)
class PlantedAlpha:
    """A signal planted in `synth_market`: its qlib expression and its mean daily rank IC vs the default label."""

    name: str
    expression: str  # qlib syntax
    expected_rank_ic: float  # mean daily Spearman IC vs Ref($close, -2)/Ref($close, -1) - 1
    description: str
    coefficient: float  # return added per unit of rank z-score, in units of idiosyncratic vol


PLANTED_ALPHAS: tuple[PlantedAlpha, ...] = (
    PlantedAlpha("reversal_5", "Ref($close, 5)/$close - 1", 0.045,
                 "short-term reversal: instruments that fell over 5 days rebound", 0.0337),
    PlantedAlpha("volume_shock_20", "$volume/Mean($volume, 20)", 0.030,
                 "volume shock: volume above its 20-day mean earns a premium", 0.0307),
    PlantedAlpha("intraday_move", "($close-$open)/$open", -0.030,
                 "intraday reversal: the open-to-close move reverts", -0.0155),
    PlantedAlpha("close_volume_corr", "Corr($close, $volume, 10)", -0.040,
                 "price-volume correlation over 10 days predicts lower returns", -0.0360),
)


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
    # Planted coefficients in the order of PLANTED_ALPHAS; None uses theirs (calibrated for expected_rank_ic).
    alpha_coefficients: tuple[float, ...] | None = None


_CORR_WINDOW = 10
_VOLUME_WINDOW = 20
_REVERSAL_LAG = 5


def synth_market(n_instruments: int = 300, n_days: int = 2520, seed: int = 0, config: SynthConfig | None = None) -> Panel:
    """Generate the synthetic market (see module docstring); identical output for identical arguments."""
    cfg = config or SynthConfig()
    if n_instruments < 2 or n_days < 30:
        raise DataError(f"synth_market needs at least 2 instruments and 30 days, got {n_instruments} x {n_days}")
    coefs = cfg.alpha_coefficients if cfg.alpha_coefficients is not None else [a.coefficient for a in PLANTED_ALPHAS]
    coef = np.asarray(coefs, dtype=np.float64)
    if coef.shape != (len(PLANTED_ALPHAS),):
        raise DataError(f"alpha_coefficients needs {len(PLANTED_ALPHAS)} values, got {coef.size}")
    n, t = int(n_instruments), int(n_days)
    rng = np.random.default_rng(seed)
    # Generation runs day-major, arrays (T, N), so the day loop reads and writes contiguous rows.

    # ---- universe: industries, betas, vol levels, listing spans, suspensions ----------------------
    industry = rng.integers(0, cfg.n_industries, n)
    beta = np.clip(1.0 + 0.3 * rng.standard_normal(n), 0.2, 2.0)
    idio_level = np.clip(cfg.idio_vol_median * np.exp(cfg.idio_vol_dispersion * rng.standard_normal(n)), 0.006, 0.06)
    starts, ends = _listing_spans(rng, n, t, cfg)
    trading = _trading_mask(rng, starts, ends, t, cfg)  # (T, N): listed and not suspended

    # ---- exogenous shocks, drawn in a fixed order -------------------------------------------------
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
        np.log(1e6) + rng.standard_normal(n)[None, :]
        + _ar1(cfg.volume_shock * rng.standard_normal((t, n)), cfg.volume_persistence)
        # capped: Student-t tails would otherwise give absurd one-day volumes (e^25 x normal)
        + cfg.volume_news * (np.minimum(np.abs(eps), 6.0) - 0.8)
    )
    price0 = np.exp(np.log(30.0) + 0.8 * rng.standard_normal(n))

    volume = np.where(trading, np.maximum(np.round(np.exp(log_volume)), 100.0), np.nan)  # observed
    # Signals that depend only on exogenous data are scored up front: $volume/Mean($volume, 20).
    volume_shock = volume / _rolling_sum(np.nan_to_num(volume), _VOLUME_WINDOW) * _rolling_sum(trading, _VOLUME_WINDOW)
    # Corr($close, $volume, 10): close and volume are both present exactly on trading days, so the
    # pair count and the volume sums are known up front; only the close sums are built in the loop.
    vol0 = np.nan_to_num(volume)
    pairs = _rolling_sum(trading, _CORR_WINDOW)
    sum_v = _rolling_sum(vol0, _CORR_WINDOW)
    var_v = _rolling_sum(vol0 * vol0, _CORR_WINDOW) - sum_v * sum_v / np.maximum(pairs, 1)

    # ---- prices: planted signals feed back into later returns -------------------------------------
    # A signal on day d first moves the return of day d+2, so the loop prices two days from scores
    # it already has, then computes both days' signals in one vectorised step.
    k = len(PLANTED_ALPHAS)
    scores = np.zeros((t, k, n))  # rank z-scores of each signal, by day
    scores[:, 1] = _rank_zscore(volume_shock)
    closes = np.empty((t + 1, n))  # closes[d + 1] = latent close of day d (frozen while not trading)
    closes[0] = price0
    observed = np.full((_REVERSAL_LAG + t, n), np.nan)  # observed[LAG + d] = close of day d or NaN
    w = _CORR_WINDOW  # running sums of x = observed close (0 when missing): x, x^2, x * volume
    cum_x, cum_xx, cum_xv = (np.zeros((w + t, n)) for _ in range(3))
    for d0 in range(0, t, 2):
        d1 = min(d0 + 2, t)
        for d in range(d0, d1):
            r = base[d] + sigma[d] * (coef @ scores[d - 2]) if d >= 2 else base[d]
            r = np.where(trading[d], np.minimum(np.maximum(r, -lim), lim), 0.0)
            closes[d + 1] = closes[d] * (1.0 + r)
        c, tr = closes[d0 + 1 : d1 + 1], trading[d0:d1]  # (B, N), B = 1 or 2 days
        co = observed[_REVERSAL_LAG + d0 : _REVERSAL_LAG + d1] = np.where(tr, c, np.nan)
        x = c * tr
        cum_x[w + d0 : w + d1] = cum_x[w + d0 - 1] + np.cumsum(x, axis=0)
        cum_xx[w + d0 : w + d1] = cum_xx[w + d0 - 1] + np.cumsum(x * x, axis=0)
        cum_xv[w + d0 : w + d1] = cum_xv[w + d0 - 1] + np.cumsum(x * vol0[d0:d1], axis=0)
        m = np.maximum(pairs[d0:d1], 1)
        sx = cum_x[w + d0 : w + d1] - cum_x[d0:d1]
        cov = cum_xv[w + d0 : w + d1] - cum_xv[d0:d1] - sx * sum_v[d0:d1] / m
        var_x = cum_xx[w + d0 : w + d1] - cum_xx[d0:d1] - sx * sx / m
        vv = var_v[d0:d1]
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where((pairs[d0:d1] >= 2) & (var_x > 0) & (vv > 0), cov / np.sqrt(var_x * vv), np.nan)
        signals = np.stack(
            [
                observed[d0:d1] / co - 1.0,  # Ref($close, 5)/$close - 1
                co / (closes[d0:d1] * gap[d0:d1]) - 1.0,  # ($close-$open)/$open
                corr,  # Corr($close, $volume, 10)
            ],
            axis=1,
        )  # (B, 3, N)
        scores[d0:d1, [0, 2, 3]] = _rank_zscore(signals.reshape(-1, n)).reshape(signals.shape)
    close = closes[1:]

    # ---- bars -------------------------------------------------------------------------------------
    prev_close = closes[:-1]
    opn = prev_close * gap
    top, bottom = np.maximum(opn, close), np.minimum(opn, close)
    high = np.maximum(np.minimum(top * (1.0 + up_wick), prev_close * (1.0 + lim)), top)
    low = np.minimum(np.maximum(bottom * (1.0 - down_wick), prev_close * (1.0 - lim)), bottom)
    vwap = low + vwap_pos * (high - low)
    off = ~trading
    fields = {}
    for key, arr in (("open", opn), ("high", high), ("low", low), ("close", close), ("volume", volume), ("vwap", vwap)):
        arr[off] = np.nan
        fields[key] = arr.T
    fields["factor"] = np.where(trading, 1.0, np.nan).T
    fields["industry"] = np.where(trading, industry[None, :].astype(np.float64), np.nan).T

    calendar = pd.bdate_range("2010-01-04", periods=t)
    width = max(4, len(str(n - 1)))
    instruments = [f"SYN{i:0{width}d}" for i in range(n)]
    meta = {
        "generator": "quantcore.data.synthetic/1",
        "seed": str(seed),
        "size": f"{n}x{t}",
        "planted_alphas": "; ".join(f"{a.name}: {a.expression} (rank IC {a.expected_rank_ic:+.3f})" for a in PLANTED_ALPHAS),
    }
    return Panel.from_arrays(calendar, instruments, fields, starts=starts, ends=ends, name="synthetic", meta=meta)


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


def _trading_mask(rng: np.random.Generator, starts: np.ndarray, ends: np.ndarray, t: int, cfg: SynthConfig) -> np.ndarray:
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


def _rolling_sum(x: np.ndarray, window: int) -> np.ndarray:
    """Sum over the last `window` rows (fewer at the start), along axis 0."""
    c = np.cumsum(x, axis=0, dtype=np.float64)
    c[window:] -= c[:-window].copy()
    return c


def _rank_zscore(signals: np.ndarray) -> np.ndarray:
    """Cross-sectional ranks per row scaled to mean 0 / variance 1; NaN signals score 0."""
    k, n = signals.shape
    valid = ~np.isnan(signals)
    order = np.argsort(np.where(valid, signals, np.inf), axis=1)  # NaN last; +inf sorts ~3x faster than NaN
    ranks = np.empty((k, n))
    ranks[np.arange(k)[:, None], order] = np.arange(1.0, n + 1.0)
    cnt = valid.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (ranks - (cnt + 1.0) / 2.0) / np.sqrt((cnt * cnt - 1.0) / 12.0)
    return np.where(valid & (cnt > 1), z, 0.0)
