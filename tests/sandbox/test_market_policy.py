"""What a spec may name as its market (issue 18, item 4): the parent loads it on the spec's behalf,
so a host file outside the allowed folders, or a synthetic market past the size bounds, is refused
before anything reads or generates it."""

from __future__ import annotations

import pytest

from sandbox import LocalExecutor
from sandbox.market import MAX_SYNTHETIC_CELLS, MarketRefused, check_market, market_roots
from sandbox.result import FailureCategory

HEADER = "datetime,instrument,close,secret-token-93b1"


@pytest.fixture()
def bars(tmp_path):
    path = tmp_path / "data" / "bars.csv"
    path.parent.mkdir()
    path.write_text(HEADER + "\n2020-01-02,AAA,1.0,x\n")
    return path


def test_builtin_and_bounded_synthetic_markets_are_allowed():
    for market in ("sp500", "synthetic", "synthetic:60:400:0", "synthetic:300:2520:7:0"):
        check_market(market, ())


@pytest.mark.parametrize(
    "market",
    ["synthetic:3000:20000", "synthetic:20001:40", "synthetic:50:20001", "synthetic:60:400:0:1000", "synthetic:a:b"],
)
def test_oversized_or_malformed_synthetic_markets_are_refused(market):
    with pytest.raises(MarketRefused, match="synthetic"):
        check_market(market, ())


def test_the_bound_is_on_cells():
    side = int(MAX_SYNTHETIC_CELLS**0.5) + 1
    assert side <= 5000
    with pytest.raises(MarketRefused, match="instrument-days"):
        check_market(f"synthetic:{side}:{side}", ())


def test_a_path_is_allowed_only_under_a_market_root(bars, tmp_path):
    with pytest.raises(MarketRefused, match="not the embedded market") as err:
        check_market(str(bars), ())
    assert "secret-token" not in str(err.value)
    with pytest.raises(MarketRefused):
        check_market(str(bars), (tmp_path / "elsewhere",))
    with pytest.raises(MarketRefused):  # a way out of the root through ".."
        check_market(str(bars.parent / ".." / ".." / "x.csv"), (bars.parent,))
    check_market(str(bars), market_roots(str(bars)))
    assert market_roots(str(bars)) == (bars.parent,) and market_roots("sp500") == ()


def test_a_link_inside_a_root_to_a_file_outside_is_refused(bars, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "bars.csv").symlink_to(bars)
    with pytest.raises(MarketRefused):
        check_market(str(root / "bars.csv"), (root,))


def test_the_executor_refuses_a_host_file_without_reading_it(bars, tmp_path):
    spec = {"kind": "factor", "market": str(bars), "expressions": {"c": "$close"}}
    big = {"kind": "factor", "market": "synthetic:3000:20000:0", "expressions": {"c": "$close"}}
    with LocalExecutor(workers=1, root=tmp_path / "sbx", use_cache=False) as ex:
        refused, too_big = ex.run_many([spec, big])
    for result in (refused, too_big):
        assert result.failure.category is FailureCategory.INVALID_SPEC
    assert "secret-token" not in refused.failure.message and str(bars) in refused.failure.message
    assert not list((tmp_path / "sbx" / "markets").iterdir())  # nothing was exported


def test_a_market_is_generated_under_the_experiment_limits_not_in_the_executor(tmp_path):
    """A synthetic market inside the size bounds but past the experiment's limits fails that experiment
    (its export runs in a limited child: here the wall clock stops it, on another machine the memory
    limit may come first); the executor, and a smaller market after it, are fine."""
    from sandbox import Limits

    big = {"kind": "factor", "market": "synthetic:2000:8000:0", "expressions": {"c": "$close"}, "report": "screen"}
    small = {**big, "market": "synthetic:60:400:0"}
    with LocalExecutor(
        workers=1, root=tmp_path / "sbx", use_cache=False, limits=Limits(wall_seconds=4, memory_mb=128)
    ) as ex:
        refused, fine = ex.run_many([big, small])
    assert refused.failure.category is FailureCategory.INVALID_SPEC
    assert "limit" in refused.failure.message, refused.failure.message
    assert fine.ok, fine.failure
    assert [p.name for p in (tmp_path / "sbx" / "markets").iterdir() if not p.name.startswith(".")] == [
        "synthetic_60_400_0"
    ]
