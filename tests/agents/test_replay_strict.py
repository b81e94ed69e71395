"""Strict replay: a replay vouches for everything a run stored, so one altered value, one recorded LLM
call the replay never made, or a run that decided nothing each make it fail."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from agents.cli import app
from agents.config import LoopConfig, stored_config
from agents.loop import _with_code_version, open_project, resume_run, start_run
from agents.nodes import inner_folds
from agents.replay import CROSS_VERSION_TOLERANCE, compare, replay_run
from agents.store import ExperimentRow, LLMCallRow, RunRow, TrialRow, dumps
from quantcore.data.sources import load_market
from sandbox.spec import default_segments
from sandbox.store import code_version

MARKET = "synthetic:60:700:4:4"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A run stored before purging existed (its settings have no `embargo_days`: unpurged segments and
    folds), and the same run re-executed from its stored settings into a second project (what a replay
    builds): the strict comparisons below hold for such runs too."""
    root, again = tmp_path_factory.mktemp("original"), tmp_path_factory.mktemp("again")
    config = LoopConfig(budget=1, data=MARKET, workers=2, seed=2, screen_per_worker=16, embargo_days=None)
    run_id = start_run(config, root)
    with open_project(root).session() as db:
        row = db.get(RunRow, run_id)
        raw = json.loads(row.config_json)
        del raw["loop"]["embargo_days"]
        row.config_json = dumps(raw)
        db.add(row)
    start_run(stored_config(raw["loop"]), again, run_id=run_id)
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


def test_a_run_stored_before_purging_resumes_with_its_segments_and_unpurged_folds(recorded, tmp_path):
    root, _, run_id = recorded
    store = _copy(root, tmp_path)
    raw = json.loads(store.run(run_id).config_json)
    panel = load_market(MARKET)
    assert "embargo_days" not in raw["loop"]
    assert raw["segments"] == {k: list(v) for k, v in default_segments(panel.calendar).items()}  # unpurged
    resume_run(run_id, tmp_path / "copy", budget=2)  # where _copy put it
    run = store.run(run_id)
    assert run.iterations_done == 2 and json.loads(run.config_json) == raw
    folds = [
        {k: list(v) for k, v in f.items()}
        for f in inner_folds(raw["segments"], panel, raw["loop"]["model_folds"], horizon=0, embargo=0)
    ]
    # the baseline (iteration 0) and the resumed iteration score on unpurged folds and segments
    specs = {
        (e.iteration, e.candidate): json.loads(e.spec_json)
        for e in store.rows(ExperimentRow, run_id)
        if e.iteration in (0, 2)
    }
    assert {it for it, _ in specs} == {0, 2} and specs[0, "baseline"]["segments"] == folds[0]
    for (it, name), spec in specs.items():
        if spec["kind"] == "model":
            assert spec["segments"] in folds, (it, name)
        elif not name.startswith("screen."):  # factor admission: the stored, unpurged validation segment
            assert spec["segment"] == raw["segments"]["valid"], (it, name)


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


def test_other_code_is_held_to_rounding_not_to_the_bit(recorded, tmp_path):
    """Under the code that recorded a run, a metric moved in its last digits is a divergence; a run
    recorded by other code (a kernel that adds in another order) is held to a relative 1e-9, which such
    a move passes and a real change does not. A new run records the code version that computed it."""
    root, again, run_id = recorded
    assert json.loads(open_project(root).run(run_id).config_json)["code_versions"] == [code_version()]
    store = _copy(root, tmp_path)

    def move(relative: float) -> str:
        with store.session() as db:
            row = next(e for e in store.rows(ExperimentRow, run_id) if e.candidate.startswith("screen."))
            result = json.loads(row.result_json)
            key = next(k for k in sorted(result["metrics"]) if k.endswith(".rank_ic") and result["metrics"][k])
            result["metrics"][key] *= 1 + relative
            row.result_json = dumps(result)
            db.add(row)
        return key

    key = move(1e-12)
    exact = compare(store, open_project(again), run_id)
    assert len(exact.divergences) == 1 and key in exact.divergences[0]
    assert compare(store, open_project(again), run_id, tolerance=CROSS_VERSION_TOLERANCE).divergences == []
    move(1e-6)
    loose = compare(store, open_project(again), run_id, tolerance=CROSS_VERSION_TOLERANCE)
    assert len(loose.divergences) == 1 and key in loose.divergences[0]
    # a resume under other code adds its version: such a run is never compared bit for bit again
    assert _with_code_version({"code_versions": ["rdquant-code-older"]})["code_versions"] == [
        "rdquant-code-older",
        code_version(),
    ]
    assert _with_code_version({})["code_versions"] == [code_version()]


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
        db.add(
            LLMCallRow(
                run_id=run_id,
                iteration=1,
                node="proposer",
                attempt=0,
                model="m",
                request_json="{}",
                response_text="{}",
                ok=True,
            )
        )
    report = compare(store, open_project(again), run_id)
    assert any("never asked for by the replay" in d for d in report.divergences)


def test_a_run_that_decided_nothing_cannot_pass(tmp_path):
    store = open_project(tmp_path)
    config = LoopConfig(budget=1, data=MARKET, workers=1)
    with store.session() as db:
        db.add(
            RunRow(
                id="empty",
                config_json=dumps({"loop": config.model_dump(mode="json"), "segments": {}, "library_at_start": {}}),
                status="failed",
            )
        )
    report = compare(store, open_project(tmp_path / "other"), "empty")
    assert report.divergences and "no decisions" in report.divergences[0]
    assert "no decisions" in replay_run(store, "empty").divergences[0]
    result = CliRunner().invoke(app, ["replay", "empty", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "no decisions" in result.output and "Traceback" not in result.output
