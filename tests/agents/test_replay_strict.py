"""Strict replay: a replay vouches for everything a run stored, so one altered value, one recorded LLM
call the replay never made, or a run that decided nothing each make it fail."""

from __future__ import annotations

import json
import shutil

import pytest

from typer.testing import CliRunner

from agents.cli import app
from agents.config import LoopConfig
from agents.loop import open_project, start_run
from agents.replay import compare, replay_run
from agents.store import ExperimentRow, LLMCallRow, RunRow, TrialRow, dumps

MARKET = "synthetic:60:700:4:4"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A stored run, and the same run re-executed into a second project (what a replay builds)."""
    root, again = tmp_path_factory.mktemp("original"), tmp_path_factory.mktemp("again")
    config = LoopConfig(budget=1, data=MARKET, workers=2, seed=2, screen_per_worker=16)
    run_id = start_run(config, root, record=False)
    start_run(config, again, run_id=run_id, record=False)
    return root, again, run_id


def _copy(root, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(root, work)
    return open_project(work)


def test_an_unaltered_run_matches_in_every_part(recorded):
    root, again, run_id = recorded
    report = compare(open_project(root), open_project(again), run_id)
    assert report.divergences == []
    assert report.decisions >= 2 and report.metrics > 100


def test_one_altered_detail_value_fails(recorded, tmp_path):
    root, again, run_id = recorded
    store = _copy(root, tmp_path)
    with store.session() as db:
        row = next(e for e in store.rows(ExperimentRow, run_id) if e.candidate.startswith("screen."))
        result = json.loads(row.result_json)
        name = next(k for k, v in result["details"].items() if isinstance(v, dict) and "base_correlation" in v)
        result["details"][name]["base_correlation"]["feature"] = "NOT_A_FEATURE"
        row.result_json = dumps(result)
        db.add(row)
    report = compare(store, open_project(again), run_id)
    assert len(report.divergences) == 1
    assert f"{name}.base_correlation.feature" in report.divergences[0] and "NOT_A_FEATURE" in report.divergences[0]


def test_an_altered_trial_or_spec_fails(recorded, tmp_path):
    root, again, run_id = recorded
    store = _copy(root, tmp_path)
    with store.session() as db:
        trial = store.rows(TrialRow, run_id)[0]
        trial.fitness += 1e-9
        db.add(trial)
        row = store.rows(ExperimentRow, run_id)[-1]
        spec = json.loads(row.spec_json)
        spec["seed"] = 99
        row.spec_json = dumps(spec)
        db.add(row)
    report = compare(store, open_project(again), run_id)
    assert any("trial" in d and "fitness" in d for d in report.divergences)
    assert any("spec differs" in d for d in report.divergences)


def test_a_recorded_call_the_replay_never_made_fails(recorded, tmp_path):
    root, again, run_id = recorded
    store = _copy(root, tmp_path)
    with store.session() as db:
        db.add(LLMCallRow(run_id=run_id, iteration=1, node="proposer", attempt=0, model="m", request_json="{}",
                          response_text="{}", ok=True))
    report = compare(store, open_project(again), run_id)
    assert any("never asked for by the replay" in d for d in report.divergences)


def test_a_run_that_decided_nothing_cannot_pass(tmp_path):
    store = open_project(tmp_path)
    config = LoopConfig(budget=1, data=MARKET, workers=1)
    with store.session() as db:
        db.add(RunRow(id="empty", config_json=dumps({"loop": config.model_dump(mode="json"), "segments": {},
                                                      "library_at_start": {}}), status="failed"))
    report = compare(store, open_project(tmp_path / "other"), "empty")
    assert report.divergences and "no decisions" in report.divergences[0]
    assert "no decisions" in replay_run(store, "empty").divergences[0]
    result = CliRunner().invoke(app, ["replay", "empty", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "no decisions" in result.output and "Traceback" not in result.output
