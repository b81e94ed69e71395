"""Originality and pairing in factor experiments, through the worker's own path (`run_spec` with a
`WorkerContext`): base-feature correlations, library maxima, day-subsampled correlations and the
paired daily RankIC series. Expected values come from the evaluator plus a per-day pandas twin."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from quantcore.data.sources import load_market
from quantcore.evaluate import evaluate_arrays
from quantcore.expr.evaluate import Evaluator
from quantcore.features import DEFAULT_LABEL, alpha158
from sandbox.experiments import WorkerContext, run_spec
from sandbox.spec import SpecError, default_segments, parse_spec, spec_hash

MARKET = "synthetic:60:400:0"
MA5 = "Mean($close, 5)/$close"
# seeded noise: related to no base feature
NOISE_CODE = (
    "import numpy as np\n\ndef factor(fields):\n    c = fields['close']\n"
    "    return np.random.default_rng(3).standard_normal(c.shape)\n"
)


@pytest.fixture(scope="module")
def panel():
    return load_market(MARKET)


@pytest.fixture(scope="module")
def ctx(panel):
    return WorkerContext(attach=lambda m: panel)


@pytest.fixture(scope="module")
def run(ctx, tmp_path_factory):
    root = tmp_path_factory.mktemp("screening")

    def go(**spec):
        result = run_spec({"kind": "factor", "market": MARKET, **spec}, ctx, root / str(len(list(root.iterdir()))))
        assert result.ok, result.failure
        return result

    return go


@pytest.fixture(scope="module")
def valid(panel):
    return panel.date_index(*default_segments(panel.calendar)["valid"])


def _values(panel, expressions: dict[str, str], days, *, future=False) -> dict[str, np.ndarray]:
    out = Evaluator(panel).evaluate(expressions, allow_future=future, dtype=np.float64)
    return {k: np.where(np.isinf(v), np.nan, v)[:, days] for k, v in out.items()}


def _pandas_corr(x: np.ndarray, y: np.ndarray, method: str = "pearson") -> np.ndarray:
    """Per-day pairwise-complete correlation over instruments (NaN under 10 common names)."""
    out = np.full(x.shape[1], np.nan)
    for t in range(x.shape[1]):
        day = pd.DataFrame({"x": x[:, t], "y": y[:, t]}).dropna()
        if len(day) >= 10 and day["x"].nunique() > 1 and day["y"].nunique() > 1:
            out[t] = day["x"].corr(day["y"], method=method)
    return out


def _numpy_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The same per-day correlation, vectorised over days with plain two-pass NumPy (for wide sets)."""
    both = np.isfinite(x) & np.isfinite(y)
    n = both.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = np.where(both, x - np.where(both, x, 0).sum(axis=0) / n, 0)
        dy = np.where(both, y - np.where(both, y, 0).sum(axis=0) / n, 0)
        r = (dx * dy).sum(axis=0) / np.sqrt((dx * dx).sum(axis=0) * (dy * dy).sum(axis=0))
    r[(n < 10) | ~np.isfinite(r)] = np.nan
    return r


def test_an_affine_copy_of_a_base_column_is_named_with_its_sign(run, panel, valid):
    r = run(expressions={"up": f"2*({MA5}) - 3", "down": f"3 - 2*({MA5})"}, base_features="alpha158", report="screen")
    assert r.details["up"]["base_correlation"]["feature"] == "MA5"
    assert r.details["up"]["base_correlation"]["corr"] == pytest.approx(1.0, abs=1e-6)
    assert r.details["down"]["base_correlation"] == {"feature": "MA5", "corr": pytest.approx(-1.0, abs=1e-6)}
    assert r.metrics["up.base_corr"] == pytest.approx(1.0, abs=1e-6)


def test_base_correlation_is_the_largest_over_every_column(run, panel, valid):
    expr = "($close - Min($low, 9)) / (Max($high, 9) - Min($low, 9) + 1e-12)"
    r = run(expressions={"f": expr}, base_features="alpha158")
    x = _values(panel, {"f": expr}, valid)["f"]
    base = _values(panel, alpha158(), valid)
    corr = {k: np.nanmean(_numpy_corr(x, y)) for k, y in base.items()}
    best = max(corr, key=lambda k: abs(corr[k]) if math.isfinite(corr[k]) else -1)
    assert r.details["f"]["base_correlation"]["feature"] == best
    assert r.details["f"]["base_correlation"]["corr"] == pytest.approx(corr[best], abs=1e-5)  # float32 store


def test_an_unrelated_factor_has_a_small_base_correlation(run):
    r = run(code=NOISE_CODE, code_name="noise", base_features="alpha158", report="screen")
    assert 0 <= r.metrics["noise.base_corr"] < 0.1


def test_a_day_subsample_is_close_to_every_day_and_exact_on_its_days(run, panel, valid):
    expr = "Corr($close, Log($volume+1), 10)"
    lib = {"vol": "Std($close/Ref($close,1)-1, 20)", "vwap": "$vwap/$close"}
    every = run(expressions={"f": expr}, library=lib, base_features="alpha158")
    some = run(expressions={"f": expr}, library=lib, base_features="alpha158", corr_days=20)
    assert some.metrics["f.base_corr"] == pytest.approx(every.metrics["f.base_corr"], abs=0.05)
    for k in lib:
        assert some.details["f"]["correlations"][k] == pytest.approx(every.details["f"]["correlations"][k], abs=0.05)
    n = valid.stop - valid.start
    days = valid.start + np.round(np.arange(20) * (n - 1) / 19).astype(int)  # 20 evenly spaced, first to last
    x = _values(panel, {"f": expr}, days)["f"]
    for k, y in _values(panel, lib, days).items():
        assert some.details["f"]["correlations"][k] == pytest.approx(np.nanmean(_pandas_corr(x, y)), abs=1e-9)
    # ... and the scores themselves still use every day
    assert some.metrics["f.rank_ic"] == every.metrics["f.rank_ic"]


def test_library_maximum_in_screen_and_full_reports(run, panel, valid):
    lib = {"ma": MA5, "vol": "Std($close/Ref($close,1)-1, 20)"}
    full = run(expressions={"f": f"-({MA5})"}, library=lib)
    x = _values(panel, {"f": f"-({MA5})"}, valid)["f"]
    want = {k: np.nanmean(_pandas_corr(x, y)) for k, y in _values(panel, lib, valid).items()}
    assert full.details["f"]["correlations"] == {k: pytest.approx(v, abs=1e-9) for k, v in want.items()}
    assert full.details["f"]["library_max"] == {"factor": "ma", "corr": pytest.approx(-1.0, abs=1e-9)}
    assert full.metrics["f.library_corr"] == pytest.approx(1.0, abs=1e-9)
    screen = run(expressions={"f": f"-({MA5})"}, library=lib, report="screen")
    assert "correlations" not in screen.details["f"]
    assert screen.details["f"]["library_max"] == full.details["f"]["library_max"]
    alone = run(expressions={"f": f"-({MA5})"}, report="screen")
    assert alone.metrics["f.library_corr"] == 0.0 and "library_max" not in alone.details["f"]
    assert "f.base_corr" not in alone.metrics


def test_pair_threshold_reports_both_daily_rank_ic_series(run, panel, valid):
    lib = {"ma": MA5, "vol": "Std($close/Ref($close,1)-1, 20)"}
    r = run(
        expressions={"f": f"2*({MA5}) + Mean($close, 20)/$close", "g": "$volume/Mean($volume, 10)"},
        library=lib,
        pair_threshold=0.7,
        lookahead_check=True,
    )
    assert abs(r.details["f"]["correlations"]["ma"]) >= 0.7
    assert set(r.details["library_daily_rank_ic"]) == {"ma"}  # vol repeats nobody
    theirs = r.details["library_daily_rank_ic"]["ma"]
    for name in ("f", "g"):
        own = r.details[name]["daily_rank_ic"]
        assert len(own) == len(theirs) == valid.stop - valid.start
        mean = np.nanmean(np.array([np.nan if v is None else v for v in own]))
        assert mean == pytest.approx(r.metrics[f"{name}.rank_ic"], abs=1e-12)
    y = _values(panel, {"y": DEFAULT_LABEL}, valid, future=True)["y"]
    want = _pandas_corr(_values(panel, {"ma": MA5}, valid)["ma"], y, method="spearman")
    got = np.array([np.nan if v is None else v for v in theirs])
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_the_worker_keeps_base_stacks_and_bounds_them(panel, tmp_path):
    ctx = WorkerContext(attach=lambda m: panel, base_stack_slots=2)
    spec = {"kind": "factor", "market": MARKET, "expressions": {"f": MA5}, "base_features": "alpha158"}
    first = run_spec(spec, ctx, tmp_path / "a")
    stack = next(iter(ctx._base_stacks.values()))
    again = run_spec({**spec, "expressions": {"g": "$close/$open"}}, ctx, tmp_path / "b")
    assert first.ok and again.ok and list(ctx._base_stacks.values()) == [stack]  # reused, not rebuilt
    run_spec({**spec, "corr_days": 10}, ctx, tmp_path / "c")
    run_spec({**spec, "corr_days": 20}, ctx, tmp_path / "d")
    assert len(ctx._base_stacks) == 2 and stack not in ctx._base_stacks.values()


def test_the_worker_ranks_the_label_once_and_screens_as_the_plain_report(panel, tmp_path):
    """A worker keeps the label ranked per (data version, label, days), at most `label_slots` of them;
    each screen's numbers equal the full report computed on plain arrays (the label ranked again for
    every factor) bit for bit, whether its label was just built or kept from an earlier spec."""
    ctx = WorkerContext(attach=lambda m: panel, label_slots=1)
    exprs = {
        "ma": MA5,
        "ref": "Ref($close, 20)/$close",
        "sign": "Sign($close - Ref($close, 1))",
        "vol": "$volume/Mean($volume, 10)",
        "corr": "Corr($close, $volume, 10)",
    }
    segments = default_segments(panel.calendar)
    kept = None
    for k, seg in enumerate(("train", "train", "valid")):
        r = run_spec(
            {
                "kind": "factor",
                "market": MARKET,
                "expressions": exprs,
                "report": "screen",
                "segment": list(segments[seg]),
            },
            ctx,
            tmp_path / str(k),
        )
        assert r.ok, r.failure
        days = panel.date_index(*segments[seg])
        y = _values(panel, {"y": DEFAULT_LABEL}, days, future=True)["y"]
        for name, x in _values(panel, exprs, days).items():
            want, _ = evaluate_arrays(x, y, expression=exprs[name])
            row = r.details[name]
            got = {
                "ic": row["ic"],
                "icir": row["icir"],
                "ic_t": row["ic_t"],
                "rank_ic": row["rank_ic"],
                "rank_icir": row["rank_icir"],
                "rank_ic_t": row["rank_ic_t"],
                "n_days": row["n_days"],
                "loss": row["loss"],
            }
            assert got == {
                "ic": want.ic.mean,
                "icir": want.ic.icir,
                "ic_t": want.ic.t_stat,
                "rank_ic": want.rank_ic.mean,
                "rank_icir": want.rank_ic.icir,
                "rank_ic_t": want.rank_ic.t_stat,
                "n_days": want.n_days,
                "loss": want.loss,
            }, (seg, name)
        assert len(ctx._labels) == len(ctx._histories) == 1  # and one evaluator on the days up to the segment's end
        ranked = next(iter(ctx._labels.values()))
        assert (ranked is kept) == (k == 1)  # kept for the second train spec, rebuilt for valid
        kept = ranked


def test_originality_fields_are_validated_and_hashed():
    spec = {"kind": "factor", "market": MARKET, "expressions": {"f": MA5}}
    with pytest.raises(SpecError, match="unknown feature set"):
        parse_spec({**spec, "base_features": "alpha999"})
    with pytest.raises(SpecError, match="corr_days"):
        parse_spec({**spec, "corr_days": -1})
    with pytest.raises(SpecError, match="pair_threshold"):
        parse_spec({**spec, "pair_threshold": 1.5})
    with pytest.raises(SpecError, match="reserved"):
        parse_spec({**spec, "expressions": {"library_daily_rank_ic": MA5}})
    plain = spec_hash(spec)
    assert spec_hash({**spec, "base_features": "Alpha158"}) == spec_hash({**spec, "base_features": "alpha158"}) != plain
    assert spec_hash({**spec, "base_features": {"a": "Mean($close,5)"}}) == spec_hash(
        {**spec, "base_features": {"a": " Mean( $close , 5 ) "}}
    )
    assert len({plain, spec_hash({**spec, "corr_days": 60}), spec_hash({**spec, "pair_threshold": 0.7})}) == 3


def test_a_screen_fails_a_degenerate_factor_alone(run, ctx, tmp_path):
    """In bulk screening one constant factor must not sink its chunk: it is reported degenerate on its
    own, the others are scored; a full report still fails the whole experiment on it."""
    exprs = {"ma5": MA5, "flat": "$close / $close"}
    result = run(expressions=exprs, report="screen")
    assert "constant" in result.details["flat"]["degenerate"]
    assert "flat.rank_ic" not in result.metrics and math.isfinite(result.metrics["ma5.rank_ic"])
    full = run_spec({"kind": "factor", "market": MARKET, "expressions": exprs}, ctx, tmp_path / "full")
    assert not full.ok and full.failure.category.value == "degenerate_output"


def test_pair_with_reports_a_named_library_factor_whatever_its_correlation(run):
    result = run(expressions={"ma5": MA5}, library={"far": "Std($close/Ref($close, 1) - 1, 60)"}, pair_with=["far"])
    daily = result.details["library_daily_rank_ic"]["far"]
    assert len(daily) == len(result.details["ma5"]["daily_rank_ic"])
    with pytest.raises(SpecError, match="pair_with"):
        parse_spec({"kind": "factor", "market": MARKET, "expressions": {"ma5": MA5}, "pair_with": ["nope"]})
