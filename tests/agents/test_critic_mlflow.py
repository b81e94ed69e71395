"""The critic decides on metrics read back from the MLflow runs the executor logged: a decision's metrics
are the run's, its reasons cite the run, and a missing or altered record is a structured failure."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from mlflow import MlflowClient

from agents.backend import OfflineBackend
from agents.config import LoopConfig
from agents.contracts import CodedCandidate, CoderOutput, FactorCandidate, Hypothesis
from agents.loop import open_project, project_paths, start_run
from agents.nodes import IterationState, RunMemory, Services, admission_spec, critic_node, runner_node
from agents.recorded import read_back, recorded
from agents.store import DecisionRow, ExperimentRow, HypothesisRow
from quantcore.data.sources import load_market
from quantcore.recording import Recorder
from sandbox.local import LocalExecutor
from sandbox.result import ExperimentResult, Failure, FailureCategory
from sandbox.spec import default_segments

MARKET = "synthetic:60:700:0"


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A two-iteration run (a factor iteration, then a model one) recorded in the project's MLflow store."""
    root = tmp_path_factory.mktemp("project")
    run_id = start_run(LoopConfig(budget=2, data=MARKET, workers=2, seed=3, screen_per_worker=8), root)
    return root, run_id


def _mlflow_metrics(root, run_id: str) -> dict[str, float]:
    """A run's metrics straight from the store, through MLflow's own client (not the code under test)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return dict(client.get_run(run_id).data.metrics)


def test_decisions_use_the_mlflow_run_metrics_and_cite_the_run(loop):
    root, run_id = loop
    store = open_project(root)
    assert [h.direction for h in store.rows(HypothesisRow, run_id)] == ["factor", "model"]
    runs = {e.candidate: e.mlflow_run_id for e in store.rows(ExperimentRow, run_id) if e.iteration > 0}
    decided = [d for d in store.rows(DecisionRow, run_id) if d.iteration > 0 and d.candidate in runs]
    kinds = set()
    for d in decided:
        metrics, reasons = json.loads(d.metrics_json), json.loads(d.reasons_json)
        folds = sorted(k for k in runs if k == d.candidate or k.startswith(f"{d.candidate}.fold"))
        assert all(runs[k] for k in folds)  # every experiment a decision read was recorded
        if len(folds) == 1:  # a factor: its `<name>.<metric>` keys, and the run cited last
            kinds.add("factor")
            logged = {
                k.split(".", 1)[1]: v
                for k, v in _mlflow_metrics(root, runs[d.candidate]).items()
                if k.startswith(f"{d.candidate}.")
            }
            own = {k: v for k, v in metrics.items() if k not in ("p_adjusted", "trials")}  # the batch's FDR test
            assert own and own == {k: v for k, v in logged.items() if math.isfinite(v)}
            assert reasons[-1] == f"(MLflow run {runs[d.candidate]})"
        else:  # a model: fold 0's metrics, the means over the folds' runs, and every fold run cited
            kinds.add("model")
            per_fold = [_mlflow_metrics(root, runs[k]) for k in folds]
            for key, value in metrics.items():
                if key == "folds":
                    assert value == len(folds)
                elif key.startswith("folds."):
                    assert value == float(np.mean([m[key[len("folds.") :]] for m in per_fold])), key
                else:
                    assert value == per_fold[0][key], key
            assert "Rank IC" in metrics and "folds.Rank IC" in metrics
            assert all(runs[k] in reasons[-1] for k in folds) and reasons[-1].startswith("(MLflow runs ")
    assert kinds == {"factor", "model"}


@pytest.fixture
def factor_result(loop, tmp_path):
    """A factor result the loop stored, and a recorder on a copy of the project's MLflow store."""
    root, run_id = loop
    work = tmp_path / "project"
    shutil.copytree(root, work)
    row = next(
        e
        for e in open_project(work).rows(ExperimentRow, run_id)
        if e.iteration == 1 and e.ok and not e.candidate.startswith("screen.")
    )
    recorder = Recorder.open(project_paths(work)["mlflow"], f"loop-{run_id}", create=False)
    return ExperimentResult.from_dict(json.loads(row.result_json)), recorder


def test_an_altered_mlflow_metric_is_a_record_failure_naming_the_key(factor_result):
    result, recorder = factor_result
    assert recorded(result, recorder).to_dict() == result.to_dict()  # unaltered: the same metrics, from the run
    key = next(k for k, v in result.metrics.items() if k.endswith(".rank_ic") and math.isfinite(v))
    # a metric the record lacks, a value the sandbox has as NaN, another spec's run
    lacking = recorded(result.with_(metrics={**result.metrics, "extra": 1.0}), recorder)
    assert lacking.failure.category is FailureCategory.RECORD and "'extra'" in lacking.failure.message
    blank = recorded(result.with_(metrics={**result.metrics, key: math.nan}), recorder)
    assert blank.failure.category is FailureCategory.RECORD and key in blank.failure.message
    other = recorded(result.with_(spec_hash="0" * 64), recorder)
    assert other.failure.category is FailureCategory.RECORD and "spec" in other.failure.message
    # the record altered after the runner logged it
    altered = result.metrics[key] + 1e-12
    recorder.client.log_metric(result.mlflow_run_id, key, altered, step=1)  # the run's latest value now
    out = recorded(result, recorder)
    assert not out.ok and out.failure.category is FailureCategory.RECORD and out.metrics == {}
    message = out.failure.message
    assert key in message and repr(altered) in message and repr(result.metrics[key]) in message
    assert result.mlflow_run_id in message and out.mlflow_run_id == result.mlflow_run_id


def test_a_result_without_its_mlflow_run_is_a_record_failure(factor_result):
    result, recorder = factor_result
    missing = recorded(result.with_(mlflow_run_id=None), recorder)
    assert not missing.ok and missing.failure.category is FailureCategory.RECORD
    assert "no MLflow run recorded this result" in missing.failure.message
    gone = recorded(result.with_(mlflow_run_id="0" * 32), recorder)
    assert gone.failure.category is FailureCategory.RECORD and "0" * 32 in gone.failure.message
    # a failure of the sandbox stays that failure; and no recorder at all is our bug, raised
    crashed = result.with_(metrics={}, failure=Failure(FailureCategory.WORKER_CRASH, "killed"))
    assert recorded(crashed.with_(mlflow_run_id=None), recorder) == crashed.with_(mlflow_run_id=None)
    with pytest.raises(ValueError, match="recorder"):
        read_back({"x": result}, None)


def test_non_finite_metrics_read_back_as_nan(tmp_path):
    recorder = Recorder.open(tmp_path, "nonfinite")
    with recorder.start_run("factor", tags={"spec_hash": "h"}) as run:
        run.log_metrics({"f.rank_ic": 0.1, "f.rank_icir": math.inf, "f.loss": math.nan})
    result = ExperimentResult(
        "h", "factor", metrics={"f.rank_ic": 0.1, "f.rank_icir": math.nan, "f.loss": math.nan}, mlflow_run_id=run.run_id
    )  # inf is NaN once a result went through its JSON form
    out = recorded(result, recorder)
    assert out.ok and out.metrics["f.rank_ic"] == 0.1
    assert math.isnan(out.metrics["f.rank_icir"]) and math.isnan(out.metrics["f.loss"])
    finite = recorded(result.with_(metrics={**result.metrics, "f.loss": 0.0}), recorder)
    assert finite.failure.category is FailureCategory.RECORD and "'f.loss'" in finite.failure.message


def test_the_critic_rejects_a_candidate_whose_record_was_altered(tmp_path):
    """Through the real nodes: the runner logs, the record is edited, the critic decides on the record."""
    panel = load_market(MARKET)
    config = LoopConfig(budget=1, data=MARKET, workers=1, seed=0)
    recorder = Recorder.open(tmp_path, "critic")
    expression = "Mean($close, 5)/$close - 1"
    with LocalExecutor(workers=1, root=tmp_path / "sandbox", recorder=recorder, use_cache=False) as executor:
        s = Services(
            config=config,
            store=open_project(tmp_path),
            executor=executor,
            backend=OfflineBackend(0),
            panel=panel,
            segments={k: tuple(v) for k, v in default_segments(panel.calendar).items()},
            memory=RunMemory(run_id="r", market=panel.version),
        )
        coded = CodedCandidate(name="mr5", expression=expression, spec=admission_spec(expression, "mr5", {}, s))
        hyp = Hypothesis(
            direction="factor",
            text="short-term reversal",
            family="reversal",
            factors=[FactorCandidate(name="mr5", expression=expression)],
        )
        state = IterationState(iteration=1, direction="factor", hypothesis=hyp, coded=CoderOutput(coded=[coded]))
        state = state.model_copy(update=runner_node(state, s))
        logged = ExperimentResult.from_dict(state.results["mr5"])
        assert logged.ok and logged.mlflow_run_id
        recorder.client.log_metric(logged.mlflow_run_id, "mr5.rank_ic", 0.5, step=1)
        update = critic_node(state, s)
    verdict = update["critic"].verdicts[0]
    assert verdict.verdict == "reject" and verdict.metrics == {}
    assert verdict.reasons[0].startswith("record: metric 'mr5.rank_ic' is 0.5 in MLflow run ")
    assert verdict.reasons[-1] == f"(MLflow run {logged.mlflow_run_id})"
    stored = ExperimentResult.from_dict(update["results"]["mr5"])  # what the update node will store
    assert stored.failure.category is FailureCategory.RECORD and stored.mlflow_run_id == logged.mlflow_run_id
