"""`rdquant report` and the sealed test: the final model is scored on validation before the test opens,
each opening is recorded, a changed run is refused until --reopen, and the cost of a discovery is the
run's spending over the factors it holds. Real loop, real sandbox, real SQLite store."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from agents.cli import app
from agents.config import LoopConfig
from agents.loop import open_project, project_paths, start_run
from agents.report import SealedTestChanged, build_report, sealed_test
from agents.store import EvaluationRow, LibraryFactorRow, OpeningRow, RunRow, TrialRow
from quantcore.expr.canonical import canonical
from quantcore.expr.parser import parse

MARKET = "synthetic:60:700:0"  # the market of the loop tests (tests/agents/test_loop.py)


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A finished run and its first report; what the store held when the test was about to open."""
    root = tmp_path_factory.mktemp("project")
    # one iteration (a small screen) is enough: the report needs a best model, the tests set the library themselves
    run_id = start_run(LoopConfig(budget=1, data=MARKET, workers=2, seed=3, screen_per_worker=24), root)
    store = open_project(root)
    at_opening: list[list[str]] = []

    def log(message: str) -> None:
        if message.startswith("opening the sealed test"):
            at_opening.append([r.name for r in store.rows(EvaluationRow, run_id)])

    path, headline = build_report(store, root, run_id, log=log)
    return root, run_id, at_opening, path.read_text()


def _copy(reported, tmp_path):
    root, run_id, *_ = reported
    work = tmp_path / "project"
    shutil.copytree(root, work)
    return work, run_id, open_project(work)


def _add_factor(store, run_id: str, name: str, expression: str, **extra) -> None:
    with store.session() as db:
        db.add(
            LibraryFactorRow(
                name=name,
                expression=expression,
                canonical=canonical(parse(expression)),
                run_id=run_id,
                iteration=1,
                metrics_json="{}",
                **extra,
            )
        )


def _text(html: str) -> str:
    """The report's visible text, tags dropped, whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<img[^>]*>", "", html)).split())


def _words(result) -> str:
    """A command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_the_final_model_is_scored_on_validation_before_the_test_opens(reported):
    root, run_id, at_opening, html = reported
    assert at_opening == [["final.valid"]]  # stored, and nothing of the test yet, when the test opened
    store = open_project(root)
    rows = store.rows(EvaluationRow, run_id)
    assert [r.name for r in rows] == ["final.valid", "baseline", "final"] and {r.opening for r in rows} == {1}
    [opening] = store.rows(OpeningRow, run_id)
    assert opening.number == 1 and opening.opened
    valid = {**json.loads(rows[0].metrics_json), **json.loads(rows[0].detail_json)}
    assert valid["final_hash"] == opening.final_hash  # the same combination the test then scored
    # scored on the run's validation segment, fitted and early-stopped before it: the test is untouched
    segments = json.loads(store.run(run_id).config_json)["segments"]
    assert valid["segments"]["test"] == segments["valid"]
    assert (
        valid["segments"]["train"][1]
        < valid["segments"]["valid"][0]
        <= valid["segments"]["valid"][1]
        < segments["valid"][0]
    )
    # shown next to the test figures, formatted for people
    text = _text(html)
    final_test = json.loads(rows[2].metrics_json)
    assert "final (validation) baseline (test) final (test)" in text
    assert (
        f"Rank IC {valid['Rank IC']:+.4f} {json.loads(rows[1].metrics_json)['Rank IC']:+.4f} "
        f"{final_test['Rank IC']:+.4f}" in text
    )
    assert "test opened 1 time" in text
    assert not re.search(r"\d\.\d{6,}", text)  # no raw floats
    shown = CliRunner().invoke(app, ["runs", "show", run_id, "--root", str(root)], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "final (validation)" in shown.output and f"{valid['Rank IC']:+.4f}" in shown.output
    assert "sealed test opened 1 time" in shown.output


def test_a_second_report_reuses_the_figures_and_a_changed_run_needs_reopen(reported, tmp_path):
    work, run_id, store = _copy(reported, tmp_path)
    before = [r.id for r in store.rows(EvaluationRow, run_id)]
    messages: list[str] = []
    _, headline = build_report(store, work, run_id, log=messages.append)
    assert messages == [] and headline["times_opened"] == 1  # nothing scored again
    assert [r.id for r in store.rows(EvaluationRow, run_id)] == before and len(store.rows(OpeningRow, run_id)) == 1

    _add_factor(store, run_id, "late_factor", "Mean($close, 5) / $close")  # as a resumed run admitting one would
    with pytest.raises(SealedTestChanged):
        sealed_test(store, work, run_id)
    runner = CliRunner()
    refused = runner.invoke(app, ["report", run_id, "--root", str(work)], terminal_width=400)
    assert refused.exit_code == 2
    assert "changed since" in refused.output and "late_factor added" in refused.output
    assert f"rdquant report {run_id} --reopen" in _words(refused)
    assert [r.id for r in store.rows(EvaluationRow, run_id)] == before  # refused: nothing scored, nothing stored

    reopened = runner.invoke(app, ["report", run_id, "--root", str(work), "--reopen"], terminal_width=200)
    assert reopened.exit_code == 0, reopened.output
    assert "sealed test opened 2 times" in reopened.output
    openings = store.rows(OpeningRow, run_id)
    assert [o.number for o in openings] == [1, 2] and "late_factor added" in openings[1].reason
    assert openings[0].final_hash != openings[1].final_hash
    second = [r for r in store.rows(EvaluationRow, run_id) if r.opening == 2]
    assert [r.name for r in second] == ["final.valid", "baseline", "final"]
    assert "late_factor" in json.loads(openings[1].state_json)["library"]
    assert "test opened 2 times" in _text((work / "reports" / f"{run_id}.html").read_text())
    # the same state again: reused, still two openings
    again = runner.invoke(app, ["report", run_id, "--root", str(work)], terminal_width=200)
    assert again.exit_code == 0 and "sealed test opened 2 times" in again.output
    assert len(store.rows(OpeningRow, run_id)) == 2


def test_cost_per_accepted_factor_is_the_run_total_over_the_factors_it_holds(reported, tmp_path):
    work, run_id, store = _copy(reported, tmp_path)
    with store.session() as db:  # offline runs spend no tokens: give the run some so the shares are not all 0
        run = db.get(RunRow, run_id)
        run.tokens, run.cost_usd = 123457, 0.0672624
        db.add(run)
        for row in db.exec(select(LibraryFactorRow).where(LibraryFactorRow.run_id == run_id)):
            row.replaced_by, row.replaced_run = "retired", run_id  # whatever the loop admitted, the run let go
            db.add(row)

    build_report(store, work, run_id, reopen=True)
    text = _text((work / "reports" / f"{run_id}.html").read_text())
    assert "it holds no accepted factor, so there is no cost per factor" in text and "per accepted factor" not in text
    shown = CliRunner().invoke(app, ["runs", "show", run_id, "--root", str(work)], terminal_width=300)
    assert "the run holds no accepted factor, nothing to divide" in _words(shown)

    _add_factor(store, run_id, "kept_a", "Mean($close, 5) / $close")
    _add_factor(store, run_id, "kept_b", "Std($close, 10) / $close")
    _add_factor(store, run_id, "let_go", "Mean($volume, 5) / $volume", replaced_by="kept_b", replaced_run=run_id)
    build_report(store, work, run_id, reopen=True)
    text = _text((work / "reports" / f"{run_id}.html").read_text())

    run = store.run(run_id)
    held = [f for f in store.rows(LibraryFactorRow, run_id=run_id) if f.replaced_run != run_id]
    trials = store.rows(TrialRow, run_id)
    n = len(held)
    assert n == 2
    screened = sum(t.stage == "screen" for t in trials) / n
    judged = sum(t.stage == "admission" for t in trials) / n
    assert f"Cost per accepted factor ({n} held by the run)" in text
    assert f"tokens {run.tokens:,} {run.tokens / n:,.0f} " in text
    assert f"cost ${run.cost_usd:.4f} ${run.cost_usd / n:.4f} " in text
    assert f"CPU seconds {run.cpu_seconds:,.1f} {run.cpu_seconds / n:,.1f} " in text
    assert f"trials screened {sum(t.stage == 'screen' for t in trials):,} {screened:,.1f} " in text
    assert f"trials judged on validation {sum(t.stage == 'admission' for t in trials):,} {judged:,.1f}" in text
    shown = CliRunner().invoke(app, ["runs", "show", run_id, "--root", str(work)], terminal_width=300)
    assert (
        f"cost per accepted factor ({n} held by the run): {run.tokens / n:,.0f} tokens, ${run.cost_usd / n:.4f}, "
        f"{run.cpu_seconds / n:,.1f} CPU s, {screened:,.1f} trials screened, {judged:,.1f} judged"
    ) in _words(shown)


def test_a_store_from_before_openings_were_recorded_still_reports(reported, tmp_path):
    """An older store: evaluations without an opening column or a validation figure, no openings table.
    It opens, its figures count as one opening of unknown state and are reused; --reopen makes it two."""
    work, run_id, _ = _copy(reported, tmp_path)
    with sqlite3.connect(project_paths(work)["db"]) as db:
        db.execute("DELETE FROM evaluations WHERE name = 'final.valid'")
        db.execute("ALTER TABLE evaluations DROP COLUMN opening")
        db.execute("DROP TABLE test_openings")
    store = open_project(work)
    messages: list[str] = []
    _, headline = build_report(store, work, run_id, log=messages.append)
    assert messages == [] and headline["times_opened"] == 1
    text = _text((work / "reports" / f"{run_id}.html").read_text())
    assert "opened 1 time; last not recorded" in text
    _, headline = build_report(store, work, run_id, reopen=True)
    assert headline["times_opened"] == 2
    assert [o.number for o in store.rows(OpeningRow, run_id)] == [2]
