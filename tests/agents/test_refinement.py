"""Library refinement through the real nodes: a candidate that repeats a weaker library factor replaces
it when its daily RankIC is better beyond noise, and the store's graph records it consistently."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.backend import OfflineBackend
from agents.config import LoopConfig
from agents.contracts import CodedCandidate, CoderOutput, FactorCandidate, Hypothesis
from agents.loop import open_project
from agents.nodes import IterationState, RunMemory, Services, admission_spec, critic_node, runner_node, update_node
from agents.store import EdgeRow, HypothesisRow, LibraryFactorRow, RunRow, dumps
from quantcore.data.sources import load_market
from quantcore.data.synthetic import planted_alphas
from quantcore.evaluate.correlation import library_correlation
from quantcore.expr.ast import max_lookback
from quantcore.expr.evaluate import Evaluator
from quantcore.expr.parser import parse
from quantcore.recording import Recorder
from sandbox.local import LocalExecutor
from sandbox.spec import default_segments


def _persistent_alpha() -> tuple[str, str, int]:
    """A market, one of its planted alphas with a window of 12-40 days, and the longest lag at which
    its stale copy is still a close relative (mean daily |corr| >= 0.8, above the 0.7 bound) but a
    weaker predictor: the kind of library factor a refinement should replace."""
    for seed in range(8):
        for a in planted_alphas(seed, 4):
            window = max_lookback(parse(a.expression))
            if 12 <= window <= 40 and abs(a.target_rank_ic) >= 0.035:
                market = f"synthetic:200:1500:{seed}:4"
                ev = Evaluator(load_market(market))
                lags = (2, 3, 4, 6, 8, 10)
                values = ev.evaluate(
                    {"p": a.expression, **{f"l{k}": f"Ref({a.expression}, {k})" for k in lags}}, dtype=np.float64
                )
                corr = library_correlation(values["p"], {f"l{k}": values[f"l{k}"] for k in lags})
                close = [k for k in lags if abs(corr[f"l{k}"].daily_mean) >= 0.8]
                if close:
                    return market, a.expression, max(close)
    pytest.skip("no planted alpha with a persistent 12-40 day window in seeds 0-7")


def test_a_stronger_twin_replaces_the_weaker_library_factor(tmp_path):
    market, strong, lag = _persistent_alpha()
    weak = f"Ref({strong}, {lag})"
    panel = load_market(market)
    store = open_project(tmp_path)
    config = LoopConfig(budget=1, data=market, workers=2, seed=0)
    with store.session() as db:  # an earlier run admitted the weak version
        db.add(RunRow(id="first", config_json=dumps({"loop": config.model_dump(mode="json")})))
        db.add(
            HypothesisRow(
                run_id="first",
                iteration=1,
                direction="factor",
                family="search",
                text="earlier idea",
                candidates_json="[]",
                status="accepted",
            )
        )
        db.add(
            LibraryFactorRow(
                name="old", expression=weak, canonical=weak, run_id="first", iteration=1, metrics_json="{}"
            )
        )
        db.add(RunRow(id="second", config_json=dumps({"loop": config.model_dump(mode="json")})))
    memory = RunMemory(run_id="second", library={"old": weak}, market=panel.version)
    recorder = Recorder.open(tmp_path, "refinement")  # the critic reads the metrics back from MLflow
    with LocalExecutor(workers=2, root=tmp_path / "sandbox", recorder=recorder, use_cache=False) as executor:
        s = Services(
            config=config,
            store=store,
            executor=executor,
            backend=OfflineBackend(0),
            panel=panel,
            segments={k: tuple(v) for k, v in default_segments(panel.calendar).items()},
            memory=memory,
        )
        coded = CodedCandidate(name="new", expression=strong, spec=admission_spec(strong, "new", {}, s))
        hyp = Hypothesis(
            direction="factor",
            text="the same idea, fresher",
            family="search",
            factors=[FactorCandidate(name="new", expression=strong)],
        )
        state = IterationState(iteration=1, direction="factor", hypothesis=hyp, coded=CoderOutput(coded=[coded]))
        state = state.model_copy(update=runner_node(state, s))
        state = state.model_copy(update=critic_node(state, s))
        verdict = state.critic.verdicts[0]
        assert verdict.verdict == "accept", verdict.reasons
        assert verdict.replaces == ["old"] and any("refines old" in r for r in verdict.reasons)
        update_node(state, s)
    assert "old" not in memory.library and memory.library["new"] == strong
    rows = {r.name: r for r in store.library(include_replaced=True)}
    assert rows["old"].replaced_by == "new" and rows["old"].replaced_run == "second"
    assert [r.name for r in store.library()] == ["new"]
    edges = store.rows(EdgeRow, "second")
    source = next(h for h in store.rows(HypothesisRow, "second"))
    earlier = next(h for h in store.rows(HypothesisRow, "first"))
    assert [(e.source, e.target, e.relation) for e in edges if e.relation == "refines"] == [
        (source.id, earlier.id, "refines")
    ]
    assert "new replaces old" in edges[-1].note
    # the decision is stored with the reasons a person reads
    assert json.loads(store.rows(HypothesisRow, "second")[0].candidates_json)[0]["name"] == "new"
