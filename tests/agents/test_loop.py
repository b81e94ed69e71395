"""The offline research loop end to end: real sandbox workers, a real SQLite store, the real CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from agents.cli import app
from agents.config import LoopConfig
from agents.loop import open_project, start_run
from agents.replay import compare, replay_run
from agents.store import DecisionRow, ExperimentRow, HypothesisRow, IterationRow, LibraryFactorRow, ReviewRow
from quantcore.data.sources import load_market
from sandbox.spec import default_segments
from sandbox.store import code_version

MARKET = "synthetic:60:700:0"
CLI = [sys.executable, "-c", "from agents.cli import main; main()"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    run_id = start_run(LoopConfig(budget=3, data=MARKET, workers=2, seed=3, screen_per_worker=16), root)
    return root, run_id


def test_offline_loop_commits_every_iteration(finished_run):
    root, run_id = finished_run
    store = open_project(root)
    run = store.run(run_id)
    assert run.status == "finished" and run.iterations_done == 3
    assert [r.number for r in store.rows(IterationRow, run_id)] == [1, 2, 3]
    hyps = store.rows(HypothesisRow, run_id)
    assert len(hyps) == 3 and hyps[0].direction == "factor"
    decisions = store.rows(DecisionRow, run_id)
    assert decisions[0].iteration == 0 and decisions[0].candidate == "baseline"
    assert all(json.loads(d.reasons_json) for d in decisions)  # every verdict carries its reasons
    keys = [(e.iteration, e.candidate) for e in store.rows(ExperimentRow, run_id)]
    assert len(keys) == len(set(keys))
    # the baseline is scored on two walk-forward folds: validation and the block before it
    folds = {
        e.candidate: json.loads(e.spec_json)["segments"] for e in store.rows(ExperimentRow, run_id) if e.iteration == 0
    }
    assert set(folds) == {"baseline", "baseline.fold1"}
    assert folds["baseline.fold1"]["test"][1] < folds["baseline"]["test"][0]
    assert json.loads(decisions[0].metrics_json)["folds"] == 2
    accepted = store.rows(LibraryFactorRow, run_id=run_id)
    for f in accepted:  # admission rules held for everything in the library
        m = json.loads(f.metrics_json)
        assert abs(m["rank_ic"]) >= 0.01 and abs(m["rank_icir"]) >= 0.08


def test_a_second_run_never_reuses_a_library_name(tmp_path):
    """Library names are unique across a project, and the offline proposer's names (`<family>_<iteration>_<i>`)
    repeat from run to run: the same seed in the same project proposes the first run's names again. They
    are renamed (`_2`, ...) before anything is written, so the run finishes and the library keeps both."""
    # lenient gates, so that the first run surely leaves a library to collide with (on 60 names the
    # trial-aware test admits little); the naming rule does not depend on them
    lenient = {"fdr_q": 0.5, "min_abs_rank_ic": 0.0, "residual_components": 0}
    work = tmp_path / "project"
    first = start_run(LoopConfig(budget=1, data=MARKET, workers=2, seed=3, screen_per_worker=16, **lenient), work)
    store = open_project(work)
    first_names = {f.name for f in store.rows(LibraryFactorRow, run_id=first)}
    assert first_names  # the case needs a library to collide with
    second = start_run(LoopConfig(budget=3, data=MARKET, workers=2, seed=3, screen_per_worker=16, **lenient), work)
    store = open_project(work)
    assert store.run(second).status == "finished"
    proposed = [c["name"] for h in store.rows(HypothesisRow, second) for c in json.loads(h.candidates_json)]
    assert proposed and not set(proposed) & first_names
    names = [f.name for f in store.rows(LibraryFactorRow)]
    assert len(names) == len(set(names)) and first_names <= set(names)


def test_a_renamed_candidate_keeps_a_valid_name_at_the_length_bound():
    """A taken name of the longest allowed length is shortened to fit its suffix, and the result is a
    name the contract accepts, unique among the library and the candidates before it."""
    from agents.contracts import NAME_MAX, FactorCandidate
    from agents.nodes import _fresh_names

    long = "f" * NAME_MAX
    cands = [
        FactorCandidate(name=long, expression="$close"),
        FactorCandidate(name=long, expression="$open"),
        FactorCandidate(name="mom", expression="Ref($close, 5)"),
    ]
    taken = {long, long[: NAME_MAX - 2] + "_2"}
    got = [c.name for c in _fresh_names(cands, taken)]
    assert got == [long[: NAME_MAX - 2] + "_3", long[: NAME_MAX - 2] + "_4", "mom"]
    for name in got:
        FactorCandidate(name=name, expression="$close")  # raises if the contract refused the name


def test_model_experiments_never_touch_the_sealed_test_segment(finished_run):
    root, run_id = finished_run
    store = open_project(root)
    test_start, test_end = default_segments(load_market(MARKET).calendar)["test"]
    for e in store.rows(ExperimentRow, run_id):
        spec = json.loads(e.spec_json)
        text = json.dumps(spec)
        assert test_start not in text and test_end not in text, (e.candidate, text[:300])


def test_a_new_run_stores_segments_purged_by_the_label_horizon_and_embargo(finished_run):
    """The loop's label reads two days ahead; with the default embargo (5 trading days) the stored train
    and valid end exactly 2 + 5 trading days of the market's calendar before the next segment starts, the
    test keeps the 60/20/20 split's bounds, and every model experiment scores days its fit and early-stop
    labels cannot read."""
    root, run_id = finished_run
    store = open_project(root)
    raw = json.loads(store.run(run_id).config_json)
    assert raw["loop"]["embargo_days"] == 5
    stored, split = raw["segments"], default_segments(load_market(MARKET).calendar)
    at = pd.DatetimeIndex(load_market(MARKET).calendar).get_loc
    day = lambda d: at(pd.Timestamp(d))  # noqa: E731
    assert day(stored["valid"][0]) - day(stored["train"][1]) - 1 == 2 + 5
    assert day(stored["test"][0]) - day(stored["valid"][1]) - 1 == 2 + 5
    assert [stored[k][0] for k in ("train", "valid", "test")] == [split[k][0] for k in ("train", "valid", "test")]
    assert stored["test"] == list(split["test"])
    models = [json.loads(e.spec_json) for e in store.rows(ExperimentRow, run_id) if e.candidate.startswith("baseline")]
    assert len(models) == 2
    for spec in models:
        seg = spec["segments"]
        assert day(seg["valid"][0]) - day(seg["train"][1]) - 1 == 7
        assert day(seg["test"][0]) - day(seg["valid"][1]) - 1 >= 7
    assert next(s["segments"]["test"] for s in models) == stored["valid"]  # fold 0 scores the purged valid


def test_a_segment_the_purge_would_empty_is_a_clear_cli_error(tmp_path):
    runner = CliRunner()
    # 30 days split 60/20/20: valid holds 6 days, fewer than the 2 + 5 the default purge drops
    short = runner.invoke(app, ["loop", "--budget", "1", "--data", "synthetic:5:30:0", "--root", str(tmp_path)])
    assert short.exit_code == 2 and "Traceback" not in short.output
    assert "segment 'valid' holds 6 trading days" in short.output and "embargo 5" in short.output, short.output
    wide = runner.invoke(
        app, ["loop", "--budget", "1", "--data", "synthetic:5:30:0", "--embargo", "20", "--root", str(tmp_path)]
    )
    assert wide.exit_code == 2 and "segment 'train'" in wide.output and "embargo 20" in wide.output, wide.output
    assert open_project(tmp_path).runs() == []  # nothing half-started is stored


def test_runs_list_and_show_json(finished_run):
    root, run_id = finished_run
    runner = CliRunner()
    listed = runner.invoke(app, ["runs", "list", "--root", str(root), "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["run_id"] for r in json.loads(listed.output)] == [run_id]
    shown = runner.invoke(app, ["runs", "show", run_id[:6], "--root", str(root), "--json"])
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.output)
    library = {f.name: f for f in open_project(root).rows(LibraryFactorRow, run_id=run_id)}
    assert {a["name"] for a in doc["accepted"]} == set(library)
    for a in doc["accepted"]:
        assert a["expression"] == library[a["name"]].expression and "rank_ic" in a["metrics"]
    assert "test" not in doc["segments"]
    missing = runner.invoke(app, ["runs", "show", "nope", "--root", str(root)])
    assert missing.exit_code == 2 and "no run" in missing.output


def test_replay_reproduces_decisions_and_metrics_and_reports_divergence(finished_run, tmp_path):
    root, run_id = finished_run
    report = replay_run(open_project(root), run_id, workers=2)
    assert report.divergences == [] and report.decisions >= 4 and report.metrics > 50
    assert report.tolerance == 0.0 and report.recorded_code == [code_version()]  # this code: bit for bit
    # tamper with one stored metric: the replay must name the iteration, candidate and value; the run
    # also claims other code recorded it, which may round differently: a second metric moved by a
    # relative 1e-12 is then within rounding, the first (moved by 1.0) is not
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    db = sqlite3.connect(tampered / "rdquant.db")
    with sqlite3.connect(Path(root) / "rdquant.db") as src:  # the backup API includes the WAL's content
        src.backup(db)
    row_id, iteration, candidate, metrics = db.execute(
        "select id, iteration, candidate, metrics_json from decisions where iteration > 0 and metrics_json != '{}' "
        "order by id limit 1"
    ).fetchone()
    m = json.loads(metrics)
    key, rounded = [k for k in sorted(m) if isinstance(m[k], float) and m[k]][:2]
    m[key] = m[key] + 1.0
    m[rounded] = m[rounded] * (1 + 1e-12)
    db.execute("update decisions set metrics_json = ? where id = ?", (json.dumps(m), row_id))
    raw = json.loads(db.execute("select config_json from runs where id = ?", (run_id,)).fetchone()[0])
    raw["code_versions"] = ["rdquant-code-older"]
    db.execute("update runs set config_json = ? where id = ?", (json.dumps(raw), run_id))
    db.commit()
    db.close()
    result = CliRunner().invoke(app, ["replay", run_id, "--root", str(tampered)])
    assert result.exit_code == 1
    assert f"iteration {iteration}" in result.output and candidate in result.output and key in result.output
    assert "recorded by other code (rdquant-code-older" in result.output and f" {rounded}:" not in result.output


def test_review_through_the_cli_with_scripted_input(tmp_path):
    root = tmp_path / "proj"
    # iteration 1 (factor): edit - first an invalid expression (re-asked), then a valid one; keep the others
    # iteration 2 (model): reject with a reason
    script = "edit\nMean($close, 7\nMean($close, 7)/$close - 1\nreject\ntoo slow for today\n"
    result = CliRunner().invoke(
        app,
        [
            "loop",
            "--budget",
            "2",
            "--data",
            MARKET,
            "--review",
            "--root",
            str(root),
            "--workers",
            "1",
            "--candidates",
            "1",
            "--screen",
            "16",
        ],
        input=script,
    )
    assert result.exit_code == 0, result.output
    run_id = result.output.strip().splitlines()[-1]
    store = open_project(root)
    reviews = store.rows(ReviewRow, run_id)
    assert [r.action for r in reviews] == ["edit", "reject"]
    assert reviews[1].reason == "too slow for today"
    assert "invalid" in result.output  # the bad edit was refused and asked again
    specs = [json.loads(e.spec_json) for e in store.rows(ExperimentRow, run_id) if e.iteration == 1]
    assert any("Mean($close, 7)/$close - 1" in s["expressions"].values() for s in specs)
    assert not [e for e in store.rows(ExperimentRow, run_id) if e.iteration == 2]  # rejected: nothing ran
    rejected = [d for d in store.rows(DecisionRow, run_id) if d.iteration == 2]
    assert rejected and all("too slow for today" in d.reasons_json for d in rejected)


def test_kill_and_resume_loses_and_duplicates_nothing(tmp_path):
    root = tmp_path / "proj"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        CLI + ["loop", "--budget", "4", "--data", MARKET, "--root", str(root), "--seed", "5", "--screen", "16"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    db = root / "rdquant.db"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # kill once iteration 1 is committed, inside a later iteration
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    done = con.execute("select max(iterations_done) from runs").fetchone()[0] or 0
            except sqlite3.OperationalError:
                done = 0
            if done >= 1:
                break
        if proc.poll() is not None:
            pytest.fail(f"the loop exited early: {proc.stdout.read().decode()[-2000:]}")
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = open_project(root)
    run = store.runs()[0]
    assert run.iterations_done < 4
    resumed = subprocess.run(
        CLI + ["loop", "--resume", run.id, "--root", str(root)], capture_output=True, text=True, env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert resumed.stdout.strip().splitlines()[-1] == run.id
    assert [r.number for r in store.rows(IterationRow, run.id)] == [1, 2, 3, 4]
    assert json.loads(store.run(run.id).config_json)["code_versions"] == [code_version()]  # one code, listed once
    keys = [(e.iteration, e.candidate) for e in store.rows(ExperimentRow, run.id)]
    assert len(keys) == len(set(keys))
    # and it decided exactly what an uninterrupted run with the same settings decides
    reference = tmp_path / "reference"
    start_run(LoopConfig.model_validate(json.loads(run.config_json)["loop"]), reference, run_id=run.id)
    diff = compare(store, open_project(reference), run.id)
    assert diff.divergences == [], diff.divergences[:3] + diff.divergences[-3:]


def test_loop_cli_refuses_bad_input_clearly(tmp_path):
    runner = CliRunner()
    bad_market = runner.invoke(app, ["loop", "--budget", "1", "--data", "nosuchmarket", "--root", str(tmp_path)])
    assert bad_market.exit_code == 2 and "unknown market 'nosuchmarket'" in bad_market.output
    assert open_project(tmp_path).runs() == []  # nothing half-started is stored
    for folds in ("0", "5"):
        bad_folds = runner.invoke(app, ["loop", "--budget", "1", "--model-folds", folds, "--root", str(tmp_path)])
        assert bad_folds.exit_code == 2 and "--model-folds" in bad_folds.output, bad_folds.output
    assert open_project(tmp_path).runs() == []
    bad_resume = runner.invoke(app, ["loop", "--resume", "nope", "--root", str(tmp_path)])
    assert bad_resume.exit_code == 2 and "no run 'nope'" in bad_resume.output
    for command in (["replay", "nope"], ["report", "nope"]):
        result = runner.invoke(app, command + ["--root", str(tmp_path)])
        assert result.exit_code == 2 and "no run 'nope'" in result.output, command
