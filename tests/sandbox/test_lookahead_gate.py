"""The factor experiment's look-ahead gate (`lookahead_check`), through the worker's own path
(`run_spec` with a `WorkerContext`) on a real synthetic market: generated code that reads tomorrow's
price only from some day of the scoring segment on must fail as `look_ahead` wherever that day lies,
honest factors must pass, and the failure must say which factor, where and how much changed."""

from __future__ import annotations

import re

import numpy as np
import pytest

from quantcore.data.sources import load_market
from sandbox.experiments import WorkerContext, run_spec
from sandbox.spec import SpecError, default_segments, parse_spec

MARKET = "synthetic:60:400:0"
REV = "-($close/Ref($close, 5) - 1)"
HONEST = (
    "import numpy as np\n\ndef factor(fields):\n    c = fields['close']\n"
    "    out = np.full_like(c, np.nan)\n    out[:, 5:] = -(c[:, 5:] / c[:, :-5] - 1)\n    return out\n"
)
MESSAGE = re.compile(
    r"factor 'leak' changed on (\d+) cells up to (\d{4}-\d\d-\d\d) \(look-ahead cut (\d+) of (\d+), "
    r"seed (-?\d+)\) when only later data changed \(first on (\d{4}-\d\d-\d\d)\)"
)


def leaky(after: int) -> str:
    """The honest 5-day reversal, except that from column `after` on it is the label itself: the
    return from tomorrow's close to the day after's (`DEFAULT_LABEL`)."""
    leak = f"    out[:, {after}:-2] = c[:, {after} + 2:] / c[:, {after} + 1:-1] - 1\n"
    return HONEST.replace("    return out\n", leak + "    return out\n")


@pytest.fixture(scope="module")
def panel():
    return load_market(MARKET)


@pytest.fixture(scope="module")
def run(panel, tmp_path_factory):
    ctx = WorkerContext(attach=lambda m: panel)
    root = tmp_path_factory.mktemp("lookahead")

    def go(**spec):
        raw = {"kind": "factor", "market": MARKET, "lookahead_check": True, **spec}
        return run_spec(raw, ctx, root / str(len(list(root.iterdir()))))

    return go


@pytest.fixture(scope="module")
def valid(panel):
    return panel.date_index(*default_segments(panel.calendar)["valid"])


def _day(panel, i: int) -> str:
    return str(panel.calendar[i])[:10]


def _caught(result, panel, after: int, days: slice) -> re.Match:
    """Assert `result` is the gate's look-ahead failure for code leaking from column `after` on."""
    assert not result.ok and result.failure.category.value == "look_ahead", result.failure
    m = MESSAGE.search(result.failure.message)
    assert m, result.failure.message
    cells, cut, first = int(m[1]), m[2], m[6]
    assert 0 < cells <= 60 * (days.stop - after)  # 60 names, the leaking days only
    # the first changed day is a leaking one, no later than the cut (ISO dates compare as strings)
    assert _day(panel, after) <= first <= cut <= _day(panel, days.stop - 1)
    assert _day(panel, days.start) <= cut
    return m


def test_the_leaky_code_really_leaks(run, valid):
    """Without the gate the leaking code scores a far higher RankIC than its honest twin: the cases
    below test a real leak, not a harmless one."""
    honest = run(code=HONEST, lookahead_check=False)
    leak = run(code=leaky(valid.start), lookahead_check=False)
    assert honest.ok and leak.ok, (honest.failure, leak.failure)
    assert leak.metrics["code_factor.rank_ic"] > honest.metrics["code_factor.rank_ic"] + 0.1


@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_code_leaking_from_anywhere_in_the_segment_is_caught(run, panel, valid, where, seed):
    n = valid.stop - valid.start
    after = valid.start + {"start": n // 20, "middle": n // 2, "end": n - n // 20}[where]  # 5%, 50%, 95% in
    result = run(code=leaky(after), code_name="leak", seed=seed)
    m = _caught(result, panel, after, valid)
    assert int(m[5]) == seed


def test_a_leak_at_the_end_of_the_market_is_caught(run, panel):
    """A segment that ends the market has no day after it to scramble: its last cut is the day before."""
    days = panel.date_index(*default_segments(panel.calendar)["test"])
    assert days.stop == panel.n_days
    after = days.stop - 4  # leaks on the market's last days only
    result = run(code=leaky(after), code_name="leak", segment=[_day(panel, days.start), _day(panel, days.stop - 1)])
    _caught(result, panel, after, days)


def test_the_gate_is_deterministic_per_seed(run, panel, valid):
    after = valid.start + (valid.stop - valid.start) // 2
    a, b = (run(code=leaky(after), code_name="leak", seed=3) for _ in range(2))
    assert a.failure.message == b.failure.message
    cuts = {_caught(run(code=leaky(after), code_name="leak", seed=s), panel, after, valid)[2] for s in range(6)}
    assert len(cuts) > 1  # the seed moves the cut points


def test_honest_code_and_expressions_pass(run, valid):
    # many cuts: one cut's scrambling reaching the next would change an honest factor's values
    result = run(
        code=HONEST, code_name="rev_code", expressions={"rev": REV, "rng": "($high-$low)/$close"}, lookahead_cuts=16
    )
    assert result.ok, result.failure
    assert result.metrics["rev_code.rank_ic"] == pytest.approx(result.metrics["rev.rank_ic"], abs=1e-9)


def test_a_segment_shorter_than_the_cuts_is_checked_on_every_day(run, panel, valid):
    segment = [_day(panel, valid.start), _day(panel, valid.start + 2)]  # 3 days, 5 cuts asked for
    assert run(expressions={"rev": REV}, code=HONEST, segment=segment).ok
    result = run(code=leaky(valid.start + 1), code_name="leak", segment=segment)
    _caught(result, panel, valid.start + 1, slice(valid.start, valid.start + 3))


def test_a_future_read_in_an_expression_is_refused_before_the_gate(run):
    """The expression language marks a negative Ref as a future read and refuses it at compile time."""
    result = run(expressions={"peek": "Rank(Ref($close, -1)/$close, 10)"})
    assert not result.ok and result.failure.category.value == "look_ahead"
    assert "Ref($close, -1)" in result.failure.message and "into the future" in result.failure.message


def test_lookahead_cuts_is_validated():
    assert parse_spec({"kind": "factor", "expressions": {"a": "$close"}}).lookahead_cuts == 5
    with pytest.raises(SpecError, match="lookahead_cuts"):
        parse_spec({"kind": "factor", "expressions": {"a": "$close"}, "lookahead_cuts": 0})


def test_the_gate_leaves_the_market_untouched(run, panel, valid):
    before = {k: v.copy() for k, v in panel.fields.items()}
    run(code=leaky(valid.start), code_name="leak")
    for k, v in panel.fields.items():
        np.testing.assert_array_equal(v, before[k])
