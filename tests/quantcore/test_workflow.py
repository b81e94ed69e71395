"""`rdquant run`: config validation with key paths, an end-to-end run recorded in a real MLflow store,
and failures recorded as FAILED runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from quantcore.backtest import REPORT_COLUMNS
from quantcore.cli import app
from quantcore.data.sources import load_market
from quantcore.expr.evaluate import Evaluator
from quantcore.recording import Recorder
from quantcore.report import risk_analysis
from quantcore.workflow.config import WorkflowConfigError, load_workflow, parse_workflow
from quantcore.workflow.runner import run_workflow

MARKET = "synthetic:40:420:2"
FEATURES = {
    "REV5": "Ref($close, 5)/$close - 1",
    "VOL20": "$volume/Mean($volume, 20)",
    "KMID": "($close-$open)/$open",
    "CORR10": "Corr($close, $volume, 10)",
}


def _raw(root, **overrides) -> dict:
    raw = {
        "name": "tiny",
        "data": {"market": MARKET},
        "dataset": {
            "features": FEATURES,
            "segments": {
                "train": ["2010-01-04", "2010-09-30"],
                "valid": ["2010-10-01", "2010-12-31"],
                "test": ["2011-01-03", "2011-08-31"],
            },
        },
        "model": {"family": "linear"},
        "backtest": {"topk": 8, "n_drop": 2},
        "record": {"root": str(root), "experiment": "tests", "plots": True},
    }
    raw.update(overrides)
    return raw


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (
            lambda r: r["dataset"]["segments"].update(tran=r["dataset"]["segments"].pop("train")),
            ["dataset.segments.tran: unknown key", "dataset.segments.train: required key is missing"],
        ),
        (lambda r: r["backtest"].update(topk="fifty"), ["backtest.topk:", "'fifty'"]),
        (lambda r: r.update(modle={}), ["modle: unknown key"]),
        (lambda r: r["backtest"].update(n_drop=20), ["backtest: n_drop (20) cannot exceed topk (8)"]),
        (lambda r: r["dataset"]["segments"].update(valid=["2010-06-01", "2010-12-31"]), ["train < valid < test"]),
        (lambda r: r["backtest"].update(strategy="magic"), ["backtest.strategy:"]),
    ],
)
def test_config_errors_name_the_key_path(tmp_path, mutate, expected):
    raw = _raw(tmp_path)
    mutate(raw)
    with pytest.raises(WorkflowConfigError) as err:
        parse_workflow(raw, "wf.yaml")
    for text in expected:
        assert text in str(err.value)


def test_unreadable_workflow_files(tmp_path):
    with pytest.raises(WorkflowConfigError, match="not found"):
        load_workflow(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(WorkflowConfigError, match="not valid YAML"):
        load_workflow(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(WorkflowConfigError, match="mapping"):
        load_workflow(bad)


def test_end_to_end_run_is_recorded_and_consistent(tmp_path):
    cfg = parse_workflow(_raw(tmp_path / "store"))
    recorder = Recorder.open(tmp_path / "store", "tests")
    result = run_workflow(cfg, recorder)

    run = recorder.get_run(result.run_id)
    assert run.status == "FINISHED"
    for key in (
        "IC",
        "Rank IC",
        "ICIR",
        "excess_return_with_cost.annualized_return",
        "ARR.with_cost",
        "MDD.without_cost",
    ):
        assert key in run.metrics, key
    artifacts = set(recorder.list_artifacts(result.run_id))
    assert {"pred.parquet", "report.parquet", "report.html", "cumulative_return.png"} <= artifacts
    assert any(a.startswith("model") for a in artifacts)

    # the recorded report is the backtest's, with qlib's columns, over the test segment
    local = recorder.download_artifact(result.run_id, "report.parquet", tmp_path / "dl")
    report = pd.read_parquet(local)
    assert list(report.columns) == list(REPORT_COLUMNS)
    assert report.index.min() >= pd.Timestamp("2011-01-03") and report.index.max() <= pd.Timestamp("2011-08-31")
    pd.testing.assert_frame_equal(report, result.report, check_freq=False)

    # headline numbers recomputed independently from the recorded artifacts
    excess = report["return"] - report["bench"] - report["cost"]
    assert run.metrics["ARR.with_cost"] == pytest.approx(excess.mean() * 238)
    assert run.metrics["MDD.with_cost"] == pytest.approx((excess.cumsum() - excess.cumsum().cummax()).min())
    assert run.metrics["ARR.with_cost"] == pytest.approx(risk_analysis(excess).annualized_return)

    pred = pd.read_parquet(recorder.download_artifact(result.run_id, "pred.parquet", tmp_path / "dl"))["score"]
    panel = load_market(MARKET)
    label = Evaluator(panel).evaluate(
        {"y": "Ref($close, -2) / Ref($close, -1) - 1"}, allow_future=True, dtype=np.float64
    )["y"]
    frame = pred.to_frame().join(panel.to_frame({"y": label}, dtype=np.float64), how="left")
    per_day = frame.groupby(level="datetime").apply(
        lambda d: d["score"].corr(d["y"]) if d.notna().all(axis=1).sum() >= 10 else np.nan
    )
    assert run.metrics["IC"] == pytest.approx(per_day.mean(), rel=1e-6)


def test_failure_marks_the_run_failed_with_the_reason(tmp_path):
    raw = _raw(tmp_path / "store")
    raw["dataset"]["features"] = {"BAD": "Mean($nope, 5)"}
    cfg = parse_workflow(raw)
    recorder = Recorder.open(tmp_path / "store", "tests")
    with pytest.raises(Exception, match="nope"):
        run_workflow(cfg, recorder)
    runs = recorder.list_runs()
    assert runs[-1].status == "FAILED"
    assert "nope" in runs[-1].tags.get("failure_reason", "")


def test_an_evaluator_with_a_disk_cache_gives_the_same_run_and_must_share_the_panel(tmp_path):
    """A caller's evaluator (the sandbox passes one with a shared disk cache) computes the features and
    the label; a second run served from that cache matches the first; a foreign panel is refused."""
    from quantcore.expr.cache import DiskCache
    from quantcore.recording.capture import CaptureRecorder

    cfg = parse_workflow(_raw(tmp_path / "store"))
    panel = load_market(MARKET)
    cache = DiskCache(tmp_path / "features")
    runs = [
        run_workflow(cfg, CaptureRecorder(tmp_path / f"cap{i}"), evaluator=Evaluator(panel, disk_cache=cache))
        for i in range(2)
    ]
    assert cache.hits >= len(FEATURES) + 1 and runs[0].metrics == runs[1].metrics
    pd.testing.assert_series_equal(runs[0].prediction, runs[1].prediction)
    with pytest.raises(ValueError, match="another panel"):
        run_workflow(cfg, CaptureRecorder(tmp_path / "cap2"), panel=load_market(MARKET), evaluator=Evaluator(panel))


def test_cli_run_and_bad_workflow(tmp_path):
    good = tmp_path / "wf.yaml"
    good.write_text(
        yaml.safe_dump(
            _raw(tmp_path / "store", record={"root": str(tmp_path / "store"), "experiment": "cli", "plots": False})
        )
    )
    runner = CliRunner()
    ok = runner.invoke(app, ["run", str(good), "--json"])
    assert ok.exit_code == 0, ok.output
    assert '"run_id"' in ok.output and '"Rank IC"' in ok.output
    # the run is captured while the store opens, then replayed into MLflow under the printed id
    out = json.loads(ok.output.strip().splitlines()[-1])
    recorded = Recorder.open(tmp_path / "store", "cli").list_runs()[-1]
    assert recorded.run_id == out["run_id"] and recorded.status == "FINISHED"
    assert recorded.metrics["Rank IC"] == pytest.approx(out["Rank IC"])
    # a workflow that fails inside is recorded FAILED with the reason, and the CLI reports the error
    failing = tmp_path / "failing.yaml"
    raw = _raw(tmp_path / "store", record={"root": str(tmp_path / "store"), "experiment": "cli", "plots": False})
    raw["dataset"]["features"] = {"BAD": "Mean($nope, 5)"}
    failing.write_text(yaml.safe_dump(raw))
    res = runner.invoke(app, ["run", str(failing)])
    assert res.exit_code != 0 and "nope" in res.output
    recorded = Recorder.open(tmp_path / "store", "cli").list_runs()[-1]
    assert recorded.status == "FAILED" and "nope" in recorded.tags.get("failure_reason", "")
    bad = tmp_path / "bad.yaml"
    raw = _raw(tmp_path / "store")
    raw["backtest"]["topk"] = -3
    bad.write_text(yaml.safe_dump(raw))
    res = runner.invoke(app, ["run", str(bad)])
    assert res.exit_code == 2
    assert "backtest.topk" in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_purge_is_opt_in_and_cuts_the_label_horizon_plus_embargo(tmp_path):
    """Off by default (segments as written, as in qlib); `dataset.purge` ends train and valid 2 (the
    default label reads two days ahead) + `embargo` trading days before the next segment starts, counted
    on the market's calendar, and the model is fitted on that; the test segment keeps its bounds."""
    for switch, expected in ((True, 5), ({}, 5), ({"embargo": 0}, 0), (False, None)):
        raw = _raw(tmp_path)
        raw["dataset"]["purge"] = switch
        purge = parse_workflow(raw).dataset.purge
        assert (None if purge is None else purge.embargo) == expected, switch
    raw = _raw(tmp_path)
    raw["dataset"]["purge"] = {"embargo": -1}
    with pytest.raises(WorkflowConfigError, match="dataset.purge.embargo"):
        parse_workflow(raw)

    recorder = Recorder.open(tmp_path / "store", "tests")
    raw = _raw(tmp_path / "store")
    off = run_workflow(parse_workflow(raw), recorder)
    raw["dataset"]["purge"] = {"embargo": 3}
    on = run_workflow(parse_workflow(raw), recorder)
    assert not any(k.startswith("dataset.purged_segments") for k in recorder.get_run(off.run_id).params)
    params = recorder.get_run(on.run_id).params
    used = {name: json.loads(params[f"dataset.purged_segments.{name}"]) for name in ("train", "valid", "test")}
    calendar = pd.DatetimeIndex(load_market(MARKET).calendar)
    day = lambda d: calendar.get_loc(pd.Timestamp(d))  # noqa: E731
    written = raw["dataset"]["segments"]
    for name, following in (("train", "valid"), ("valid", "test")):
        assert used[name][0] == written[name][0]
        assert day(written[name][1]) - day(used[name][1]) == 2 + 3  # both written ends are trading days
        assert day(used[following][0]) - day(used[name][1]) - 1 == 2 + 3
    # the test keeps its bounds: its start, and its last trading day (the market ends before the written end)
    assert used["test"] == [written["test"][0], str(calendar[calendar <= written["test"][1]][-1].date())]
    assert not off.prediction.equals(on.prediction)  # fitted on fewer days
    assert off.prediction.index.equals(on.prediction.index)  # scored on the same test days

    # an embargo that empties a segment is one clear line from the CLI
    wf = tmp_path / "wf.yaml"
    raw["dataset"]["purge"] = {"embargo": 100}
    raw["record"]["plots"] = False
    wf.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["run", str(wf)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "dataset.purge: segment 'valid'" in " ".join(res.output.split()), res.output
