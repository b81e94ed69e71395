"""Feature sets and `rdquant features`: names, the output contract, planted alphas found by the engine."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from quantcore.cli import app
from quantcore.data.synthetic import planted_alphas, synth_market
from quantcore.expr import parse
from quantcore.expr.evaluate import Evaluator
from quantcore.features import DEFAULT_LABEL, alpha158, alpha360, feature_set

runner = CliRunner()


def test_alpha158_and_alpha360_shapes_and_names():
    a158 = alpha158()
    assert len(a158) == 158 and len(set(a158)) == 158
    families = [
        "ROC",
        "MA",
        "STD",
        "BETA",
        "RSQR",
        "RESI",
        "MAX",
        "MIN",
        "QTLU",
        "QTLD",
        "RANK",
        "RSV",
        "IMAX",
        "IMIN",
        "IMXD",
        "CORR",
        "CORD",
        "CNTP",
        "CNTN",
        "CNTD",
        "SUMP",
        "SUMN",
        "SUMD",
        "VMA",
        "VSTD",
        "WVMA",
        "VSUMP",
        "VSUMN",
        "VSUMD",
    ]
    expected_names = [
        "KMID",
        "KLEN",
        "KMID2",
        "KUP",
        "KUP2",
        "KLOW",
        "KLOW2",
        "KSFT",
        "KSFT2",
        "OPEN0",
        "HIGH0",
        "LOW0",
        "VWAP0",
    ] + [f"{f}{d}" for f in families for d in (5, 10, 20, 30, 60)]
    assert list(a158) == expected_names
    a360 = alpha360()
    assert len(a360) == 360
    assert list(a360)[:2] == ["CLOSE59", "CLOSE58"] and list(a360)[-1] == "VOLUME0"
    for expr in list(a158.values()) + list(a360.values()):
        parse(expr)
    only_ma5 = alpha158(include=["MA"], rolling_windows=[5])
    assert list(only_ma5)[13:] == ["MA5"] and only_ma5["MA5"] == "Mean($close, 5)/$close"
    assert "RANK5" not in alpha158(exclude=["RANK"])
    with pytest.raises(ValueError, match="unknown Alpha158 rolling families"):
        alpha158(exclude=["NOPE"])
    with pytest.raises(ValueError, match="alpha158, alpha360"):
        feature_set("alpha999")


def _daily_rank_ic(factor: np.ndarray, label: np.ndarray) -> float:
    """Mean over days of the cross-sectional Spearman correlation (pandas ranks, independent of the engine)."""
    f = pd.DataFrame(factor.T)
    y = pd.DataFrame(label.T)
    ok = f.notna() & y.notna()
    fr = f.where(ok).rank(axis=1)
    yr = y.where(ok).rank(axis=1)
    fr = fr.sub(fr.mean(axis=1), axis=0)
    yr = yr.sub(yr.mean(axis=1), axis=0)
    ic = (fr * yr).sum(axis=1) / np.sqrt((fr**2).sum(axis=1) * (yr**2).sum(axis=1))
    return float(ic[ok.sum(axis=1) >= 10].mean())


def test_engine_recovers_planted_alphas_on_the_synthetic_market():
    panel = synth_market(n_instruments=200, n_days=1000, seed=0)
    ev = Evaluator(panel)
    label = ev.evaluate({"y": DEFAULT_LABEL}, allow_future=True, dtype=np.float64)["y"]
    alphas = planted_alphas(0)
    factors = ev.evaluate({a.name: a.expression for a in alphas}, dtype=np.float64)
    for alpha in alphas:
        ic = _daily_rank_ic(factors[alpha.name], label)
        assert np.sign(ic) == np.sign(alpha.target_rank_ic), (alpha.name, ic)
        assert abs(ic - alpha.target_rank_ic) < 0.02, (alpha.name, ic)
    control = ev.evaluate({"c": "Ref($close, 20)/Ref($close, 60) - 1"}, dtype=np.float64)["c"]
    assert abs(_daily_rank_ic(control, label)) < 0.015


def test_features_cli_writes_the_contract(tmp_path):
    out = tmp_path / "f.parquet"
    result = runner.invoke(
        app,
        [
            "features",
            "--data",
            "synthetic:20:120:1",
            "--set",
            "alpha158",
            "--expr",
            "MOM=Ref($close, 5)/$close",
            "--label",
            "--start",
            "2010-03-01",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert list(frame.columns) == list(alpha158()) + ["MOM", "LABEL0"]
    assert frame.index.names == ["datetime", "instrument"]
    assert frame.index.is_monotonic_increasing
    assert (frame.index.get_level_values("datetime") >= "2010-03-01").all()
    assert set(frame.dtypes) == {np.dtype("float32")}
    # the CLI output equals the library's
    panel = synth_market(20, 120, 1)
    lib = Evaluator(panel).frame({"MOM": "Ref($close, 5)/$close"}, start="2010-03-01")
    np.testing.assert_array_equal(frame["MOM"].to_numpy(), lib["MOM"].to_numpy())


def test_features_cli_cache_is_bounded_and_serves_the_same_frame(tmp_path):
    """`--cache DIR --cache-max-gb G`: a second run reads the cache, and the folder stays under G."""
    cache = tmp_path / "cache"
    args = [
        "features",
        "--data",
        "synthetic:20:120:1",
        "--set",
        "alpha158",
        "--cache",
        str(cache),
        "--cache-max-gb",
        str(200_000 / 2**30),
    ]
    frames = []
    for i in range(2):
        result = runner.invoke(app, [*args, "--out", str(tmp_path / f"f{i}.parquet")])
        assert result.exit_code == 0, result.output
        frames.append(pd.read_parquet(tmp_path / f"f{i}.parquet"))
        held = sum(p.stat().st_size for p in cache.rglob("*.npy"))
        assert 0 < held <= 200_000  # 158 columns x 19 KB would be ~3 MB unbounded
    pd.testing.assert_frame_equal(frames[0], frames[1])
    result = runner.invoke(app, [*args[:-1], "0", "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 2 and "--cache-max-gb" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "alpha999"], "unknown feature set"),
        (["--set", "none", "--expr", "NOEQUALS"], "NAME=EXPRESSION"),
        (["--set", "none", "--expr", "X=Mean($close, 5"], "expected ')'"),
        (["--set", "none", "--expr", "X=Ref($close, -1)"], "future"),
        (["--set", "none", "--expr", "X=$nope + 1"], "close"),
        (["--set", "alpha158", "--expr", "KMID=$close"], "clash"),
        (["--set", "none"], "nothing to compute"),
        (["--data", "no/such/market", "--set", "none", "--expr", "X=$close"], "sp500"),
    ],
)
def test_features_cli_bad_input(tmp_path, args, message):
    result = runner.invoke(
        app,
        ["features", "--data", "synthetic:10:60:0", *args, "--out", str(tmp_path / "x.parquet")]
        if "--data" not in args
        else ["features", *args, "--out", str(tmp_path / "x.parquet")],
    )
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.parquet").exists()
