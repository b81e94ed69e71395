"""The search inside the loop: later runs of a project continue where earlier ones stopped, replays of
such a run match, and the planted answers of a synthetic market never reach the agents or the sandbox."""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

from agents.config import LoopConfig
from agents.decide import admission_p
from agents.loop import open_project, start_run
from agents.replay import replay_run
from agents.runs import run_summary
from agents.store import DecisionRow, ExperimentRow, TrialRow
from quantcore.data.sources import load_market
from quantcore.data.synthetic import planted_alphas

MARKET = "synthetic:60:700:2:4"
AGENTS = Path(__file__).resolve().parents[2] / "agents"


def _config(seed: int) -> LoopConfig:
    # a factor iteration screening 2 x 24 candidates keeps the test short; the logic is the same at 2 x 64
    return LoopConfig(budget=1, data=MARKET, workers=2, seed=seed, screen_per_worker=24)


def test_a_later_run_continues_the_search_and_replays(tmp_path):
    first = start_run(_config(0), tmp_path)
    second = start_run(_config(0), tmp_path)  # same seed, same project
    store = open_project(tmp_path)
    tried_first = {t.form for t in store.rows(TrialRow, first)}
    tried_second = {t.form for t in store.rows(TrialRow, second)}
    assert len(tried_first) >= 40 and len(tried_second) >= 40
    assert not tried_first & tried_second  # nothing tried again: the store remembers
    counts = run_summary(store, second)["trials"]  # what `runs show` and the report print
    assert counts["screened"] == sum(t.stage == "screen" for t in store.rows(TrialRow, second)) >= 40
    assert counts["judged"] == sum(t.stage == "admission" for t in store.rows(TrialRow, second))
    assert counts["project_market"] == len(store.rows(TrialRow, first)) + len(store.rows(TrialRow, second))
    # the second run's admission tests are adjusted over the first run's admission trials too
    tested = [
        t
        for run in (first, second)
        for t in store.rows(TrialRow, run)
        if t.stage == "admission" and math.isfinite(admission_p(json.loads(t.metrics_json)))
    ]
    cited = {
        int(n)
        for d in store.rows(DecisionRow, second)
        for n in re.findall(r"over (\d+) admission trials", " ".join(json.loads(d.reasons_json)))
    }
    # ... and over the tests the run planned (budget 1 x 4 candidates), counted from its first one
    planned = json.loads(store.run(second).config_json)["loop"]["fdr_planned_tests"]
    earlier = sum(t.run_id == first for t in tested)
    assert planned == 4 and cited == {max(len(tested), earlier + planned)}
    assert len(tested) > sum(t.run_id == second for t in tested) > 0
    screens = [e for e in store.rows(ExperimentRow, second) if e.candidate.startswith("screen.")]
    assert screens and all(e.ok for e in screens)
    report = replay_run(store, second, workers=2)  # starts from the first run's trials, as the run did
    assert report.divergences == [] and report.decisions >= 1


def test_planted_alphas_never_reach_the_agents_or_the_sandbox(tmp_path):
    # no module of the agents imports the generator or names its planted list
    for path in AGENTS.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "quantcore.data.synthetic", path
            if isinstance(node, ast.Import):
                assert all(a.name != "quantcore.data.synthetic" for a in node.names), path
        assert "planted_alphas" not in path.read_text(), path
    # the market the loop loads carries none of them, and neither does what the sandbox exports
    expressions = [a.expression for a in planted_alphas(2, 4)]
    panel = load_market(MARKET)
    meta = " ".join(str(v) for v in panel.meta.values())
    assert not any(e in meta for e in expressions)
    start_run(_config(1), tmp_path)
    exported = [
        p
        for p in (tmp_path / "sandbox" / "markets").rglob("*")
        if p.is_file() and p.stat().st_size < 5_000_000 and p.suffix in (".json", ".txt", ".yaml", ".md", "")
    ]
    assert exported
    for p in exported:
        text = p.read_text(errors="ignore")
        assert not any(e in text for e in expressions), p
