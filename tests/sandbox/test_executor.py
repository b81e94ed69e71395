"""LocalExecutor end to end with real worker processes, a real MLflow store and real markets."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from quantcore.data.sources import load_market
from quantcore.evaluate.report import evaluate_arrays
from quantcore.expr.evaluate import Evaluator
from quantcore.features import DEFAULT_LABEL
from quantcore.recording import Recorder
from sandbox import FailureCategory, Limits, LocalExecutor, parse_spec, spec_hash
from sandbox.spec import SpecError, default_segments

MARKET = "synthetic:60:400:0"
REV = "-($close/Ref($close, 5) - 1)"
SEGMENTS = {
    "train": ["2010-01-04", "2010-12-31"],
    "valid": ["2011-01-03", "2011-04-29"],
    "test": ["2011-05-02", "2011-07-15"],
}


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox")
    recorder = Recorder.open(root / "mlflow", "sandbox-tests")
    with LocalExecutor(
        workers=2, root=root / "sbx", recorder=recorder, limits=Limits(wall_seconds=60, cpu_seconds=120, memory_mb=2048)
    ) as ex:
        yield ex


def factor(expressions, **kw):
    return {"kind": "factor", "market": MARKET, "expressions": expressions, **kw}


# ---- specs ----------------------------------------------------------------------------------------------


def test_spec_hash_ignores_formatting_but_not_meaning():
    a = spec_hash(factor({"f": "Mean($close,5)/$close"}))
    assert a == spec_hash(factor({"f": "  ( Mean( $close , 5 ) ) / $close "}))
    assert a == spec_hash(json.dumps(factor({"f": "Mean($close,5)/$close"})))
    assert a != spec_hash(factor({"f": "Mean($close,6)/$close"}))
    assert a != spec_hash(factor({"f": "Mean($close,5)/$close"}, seed=1))


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("{not json", "not valid JSON"),
        ({"kind": "factor", "market": MARKET}, "needs `expressions` or `code`"),
        ({"kind": "nope"}, "kind"),
        ({"expressions": {"a": "$close"}}, "no `kind`"),
        ({"kind": "factor", "version": 7, "expressions": {"a": "$close"}}, "version 7"),
        ({"kind": "factor", "expressions": {"a": "$close"}, "colour": "red"}, "colour: unknown key"),
        ({"kind": "factor", "expressions": {"bad name": "$close"}}, "letters, digits and underscores"),
    ],
)
def test_bad_specs_name_the_problem(raw, fragment):
    with pytest.raises(SpecError, match=None) as err:
        parse_spec(raw)
    assert fragment in str(err.value)


def test_default_segments_split_the_calendar_in_time_order():
    cal = load_market(MARKET).calendar
    seg = default_segments(cal)
    assert seg["train"][0] == str(cal[0])[:10] and seg["test"][1] == str(cal[-1])[:10]
    assert seg["train"][1] < seg["valid"][0] <= seg["valid"][1] < seg["test"][0]


# ---- factor experiments -----------------------------------------------------------------------------------


def test_factor_metrics_match_the_quant_core_directly(executor):
    spec = factor({"rev": REV}, segment=["2010-06-01", "2011-06-30"])
    result = executor.run(spec)
    assert result.ok, result.failure
    panel = load_market(MARKET)
    days = panel.date_index("2010-06-01", "2011-06-30")
    ev = Evaluator(panel)
    x = ev.evaluate({"f": REV}, dtype=np.float64)["f"][:, days]
    y = ev.evaluate({"y": DEFAULT_LABEL}, allow_future=True, dtype=np.float64)["y"][:, days]
    report, _ = evaluate_arrays(x, y, calendar=panel.calendar[days])
    assert result.metrics["rev.rank_ic"] == pytest.approx(report.rank_ic.mean, abs=1e-12)
    assert result.metrics["rev.ic"] == pytest.approx(report.ic.mean, abs=1e-12)
    assert result.details["segment"] == ["2010-06-01", "2011-06-30"]
    assert result.data_version == panel.version


def test_identical_spec_is_served_from_the_cache_with_identical_metrics(executor):
    spec = factor({"rev": REV, "mom": "$close/Ref($close, 20) - 1"})
    first = executor.run(spec)
    again = executor.run(json.dumps(spec))
    assert first.ok and not first.cached
    assert again.cached and again.metrics == first.metrics
    assert again.spec_hash == first.spec_hash


def test_a_corrupt_cache_entry_is_recomputed_not_trusted(executor):
    spec = factor({"vol": "Std($close/Ref($close,1)-1, 20)"})
    first = executor.run(spec)
    for path in (executor.store.root / "results").glob("*.json"):
        data = json.loads(path.read_text())
        if data["spec_hash"] == first.spec_hash:
            path.write_text(path.read_text()[:40])  # truncated, as by a crash mid-write of an older version
    again = executor.run(spec)
    assert not again.cached and again.metrics == first.metrics


def test_results_are_recorded_in_mlflow(executor):
    result = executor.run(factor({"rng": "($high-$low)/$close"}))
    run = executor.recorder.get_run(result.mlflow_run_id)
    assert run.status == "FINISHED"
    assert run.metrics["rng.rank_ic"] == pytest.approx(result.metrics["rng.rank_ic"])
    bad = executor.run(factor({"x": "Mean($close"}))
    failed = executor.recorder.get_run(bad.mlflow_run_id)
    assert failed.status == "FAILED" and failed.tags["failure_category"] == "parse_error"


def test_a_batch_is_shared_out_among_the_workers(executor):
    # four experiments on two workers go two and two (the first idle worker does not take all four)
    executor.worker_pids()
    before = executor.tasks_served()
    specs = [factor({f"w{k}": f"Mean($close, {k + 3})/$close - 1"}, seed=40 + k) for k in range(4)]
    assert all(r.ok and not r.cached for r in executor.run_many(specs))
    assert [a - b for a, b in zip(executor.tasks_served(), before)] == [2, 2]


def test_generated_factor_code_runs_and_is_scored(executor):
    code = (
        "import numpy as np\n\ndef factor(fields):\n    c = fields['close']\n"
        "    out = np.full_like(c, np.nan)\n    out[:, 5:] = -(c[:, 5:] / c[:, :-5] - 1)\n    return out\n"
    )
    result = executor.run(
        {"kind": "factor", "market": MARKET, "code": code, "code_name": "rev_code", "expressions": {"rev": REV}}
    )
    assert result.ok, result.failure
    assert result.metrics["rev_code.rank_ic"] == pytest.approx(result.metrics["rev.rank_ic"], abs=1e-9)


def test_failures_are_structured(executor):
    cases = {
        "parse_error": factor({"x": "Mean($close, 5"}),
        "invalid_spec": factor({"x": "Mean($nosuch, 5)"}),
        "look_ahead": factor({"x": "Ref($close, -2)"}),
        "degenerate_output": factor({"x": "$close - $close"}),
        "forbidden_operation": {
            "kind": "factor",
            "market": MARKET,
            "code": "import socket\ndef factor(f):\n    return f\n",
        },
    }
    results = executor.run_many(list(cases.values()))
    for expected, result in zip(cases, results):
        assert not result.ok and result.failure.category.value == expected, (expected, result.failure)
        assert result.failure.message and "\n" not in result.failure.message
    assert "^" in results[0].failure.context  # the caret under the parse error
    assert "available" in results[1].failure.message  # names the fields that exist


# ---- model and workflow experiments ----------------------------------------------------------------------


def test_model_experiment_trains_backtests_and_records(executor):
    spec = {
        "kind": "model",
        "market": MARKET,
        "features": {"rev": REV, "vol": "Std($close/Ref($close,1)-1, 10)"},
        "family": "linear",
        "segments": SEGMENTS,
        "backtest": {"topk": 10, "n_drop": 2},
    }
    result = executor.run(spec)
    assert result.ok, result.failure
    assert {"IC", "Rank IC", "ARR.with_cost", "IR.with_cost", "MDD.with_cost"} <= set(result.metrics)
    run = executor.recorder.get_run(result.mlflow_run_id)
    assert run.metrics["IC"] == pytest.approx(result.metrics["IC"])
    assert "pred.parquet" in executor.recorder.list_artifacts(result.mlflow_run_id)


def test_generated_model_class_is_trained_under_the_guard(executor):
    code = (
        "import numpy as np\n\n"
        "class Model:\n"
        "    def fit(self, x, y, xv, yv):\n"
        "        x = np.nan_to_num(x)\n"
        "        self.w = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0]\n"
        "    def predict(self, x):\n"
        "        x = np.nan_to_num(x)\n"
        "        return np.c_[x, np.ones(len(x))] @ self.w\n"
    )
    spec = {
        "kind": "model",
        "market": MARKET,
        "features": {"rev": REV, "rng": "($high-$low)/$close"},
        "code": code,
        "segments": SEGMENTS,
        "backtest": {"topk": 10, "n_drop": 2},
    }
    result = executor.run(spec)
    assert result.ok, result.failure
    assert math.isfinite(result.metrics["IC"])
    hostile = executor.run({**spec, "code": code.replace("self.w = ", "open('/etc/hosts'); self.w = ")})
    assert hostile.failure.category is FailureCategory.FORBIDDEN_OPERATION


def test_workflow_experiment_runs_a_workflow_document(executor):
    doc = {
        "name": "wf",
        "data": {"market": MARKET},
        "dataset": {"features": {"rev": REV}, "segments": SEGMENTS},
        "model": {"family": "linear"},
        "backtest": {"topk": 10, "n_drop": 2},
        "record": {"plots": False},
    }
    result = executor.run({"kind": "workflow", "workflow": doc})
    assert result.ok, result.failure
    assert "ARR.with_cost" in result.metrics
    bad = executor.run({"kind": "workflow", "workflow": {**doc, "model": {"family": "nosuch"}}})
    assert bad.failure.category is FailureCategory.INVALID_SPEC and "nosuch" in bad.failure.message


def test_rl_kind_is_reserved_and_refused_clearly(executor):
    result = executor.run({"kind": "rl", "market": MARKET})
    assert result.failure.category is FailureCategory.INVALID_SPEC
    assert "not runnable yet" in result.failure.message


# ---- isolation ---------------------------------------------------------------------------------------------


def test_workers_are_isolated_processes_in_their_own_groups(executor):
    pids = executor.worker_pids()
    assert len(set(pids)) == 2 and os.getpid() not in pids
    for pid in pids:
        assert os.getpgid(pid) == pid  # group leader: a timeout kills the whole group
    caps = executor.capabilities
    assert caps["start_method"] == "exec" and "network_isolated" in caps


def test_cli_runs_one_spec_and_exits_by_outcome(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(factor({"rev": REV})))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(factor({"x": "Ref($close, -1)"})))
    cmd = [
        sys.executable,
        "-c",
        "from agents.cli import main; main()",
        "sandbox",
        "run",
        "--root",
        str(tmp_path / "sbx"),
    ]
    ok = subprocess.run(cmd + [str(good), "--json"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["metrics"]["rev.rank_ic"] is not None
    fail = subprocess.run(cmd + [str(bad)], capture_output=True, text=True, timeout=300)
    assert fail.returncode == 1 and "look_ahead" in fail.stdout


def test_cli_answers_bad_input_clearly(tmp_path):
    cmd = [
        sys.executable,
        "-c",
        "from agents.cli import main; main()",
        "sandbox",
        "run",
        "--root",
        str(tmp_path / "sbx"),
    ]
    missing = subprocess.run(cmd + [str(tmp_path / "nope.json")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    fields = tmp_path / "fields.json"
    fields.write_text(json.dumps({"kind": "factor", "market": MARKET, "expressions": {"x": "$close"}, "colour": "red"}))
    bad = subprocess.run(cmd + [str(fields)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "invalid_spec" in bad.stdout and "colour" in bad.stdout  # a spec mistake: a failure


@pytest.mark.parametrize(
    "content, options, fragment",
    [
        (b'\xff\xfe{"kind": "factor"}', [], "is not UTF-8 text (byte 0xff at offset 0)"),
        (b"[1, 2]", [], "holds an array; a spec is a JSON object"),
        (b'"factor"', [], "holds a string; a spec is a JSON object"),
        (b"null", [], "holds null; a spec is a JSON object"),
        (b"{not json", [], "is not valid JSON: Expecting property name"),
        (b"[" * 100_000, [], "nested too deeply"),
        (None, ["--wall-seconds", "-1"], "--wall-seconds must be a number of seconds above 0"),
        (None, ["--wall-seconds", "nan"], "--wall-seconds must be a number of seconds above 0"),
        (None, ["--cpu-seconds", "inf"], "--cpu-seconds must be a number of seconds above 0"),
        (None, ["--memory-mb", "1e14"], "--memory-mb must be a whole number of MiB from 1 to"),
        (None, ["--memory-mb", "100000000000000"], "--memory-mb must be a whole number of MiB from 1 to"),
        (None, ["--memory-mb", "0.5"], "--memory-mb must be a whole number of MiB"),
        (None, ["--wall-seconds", "soon"], "--wall-seconds takes a number, got 'soon'"),
    ],
)
def test_cli_refuses_bad_specs_and_limits_in_one_line(tmp_path, content, options, fragment):
    """Exit 2 and one line naming the problem: no traceback, no hang, no worker left running."""
    spec = tmp_path / "spec.json"
    spec.write_bytes(content if content is not None else json.dumps(factor({"rev": REV})).encode())
    cmd = [
        sys.executable,
        "-c",
        "from agents.cli import main; main()",
        "sandbox",
        "run",
        "--root",
        str(tmp_path / "sbx"),
    ]
    done = subprocess.run(cmd + [str(spec), *options], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and fragment in done.stderr, done.stderr
    assert not (tmp_path / "sbx" / "markets").exists() or not any(
        (tmp_path / "sbx" / "markets").iterdir()
    )  # no worker ran


def test_cli_refuses_a_spec_on_standard_input_that_is_not_utf8(tmp_path):
    cmd = [
        sys.executable,
        "-c",
        "from agents.cli import main; main()",
        "sandbox",
        "run",
        "--root",
        str(tmp_path / "sbx"),
    ]
    piped = subprocess.run(cmd + ["-"], input=b'{"kind": "\x80"}', capture_output=True, timeout=120)
    assert piped.returncode == 2 and piped.stderr.decode().startswith("error: standard input is not UTF-8 text")


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"wall_seconds": -1}, "wall_seconds must be"),
        ({"wall_seconds": math.nan}, "wall_seconds must be"),
        ({"cpu_seconds": math.inf}, "cpu_seconds must be"),
        ({"memory_mb": 10**14}, "memory_mb must be"),
        ({"memory_mb": 1.5}, "memory_mb must be a whole number"),
        ({"memory_mb": True}, "memory_mb must be"),
        ({"output_chars": 0}, "output_chars must be"),
    ],
)
def test_limits_refuse_what_the_kernel_or_the_clock_cannot_hold(kw, fragment):
    from sandbox.limits import LimitsError

    with pytest.raises(LimitsError, match=fragment) as err:
        Limits(**kw)
    assert err.value.field == next(iter(kw))


def test_an_exception_that_cannot_be_printed_is_still_a_structured_failure(executor):
    head = "import numpy as np\nclass E(Exception):\n"
    cases = {
        "str_raises": head + "    def __str__(self):\n        raise ValueError('no')\n",
        "str_returns_a_number": head + "    def __str__(self):\n        return 5\n",
        "class_attribute_raises": head + "    @property\n    def __class__(self):\n        raise ValueError('no')\n",
    }
    specs = [
        {"kind": "factor", "market": MARKET, "code": code + "def factor(fields):\n    raise E('x')\n"}
        for code in cases.values()
    ]
    restarts = executor.stats["worker_restarts"]
    for name, result in zip(cases, executor.run_many(specs)):
        assert result.failure.category is FailureCategory.RUNTIME_ERROR, (name, result.failure)
        assert result.failure.message and "\n" not in result.failure.message
    assert executor.stats["worker_restarts"] == restarts  # the worker did not die of it


def test_the_cache_key_follows_the_code(tmp_path):
    """Editing a source file or rebuilding a kernel changes the code digest in every cache key;
    files that are not code (data, notes, bytecode) do not."""
    from sandbox.store import code_digest, code_version

    pkg = tmp_path / "pkg"
    (pkg / "_ext").mkdir(parents=True)
    (pkg / "ops.py").write_text("def f(x):\n    return x + 1\n")
    (pkg / "_ext" / "k.so").write_bytes(b"\x7fELF v1")
    before = code_digest({"quantcore": pkg})
    (pkg / "notes.txt").write_text("not code")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "ops.cpython-311.pyc").write_bytes(b"stale")
    assert code_digest({"quantcore": pkg}) == before
    (pkg / "ops.py").write_text("def f(x):\n    return x + 2\n")
    edited = code_digest({"quantcore": pkg})
    (pkg / "_ext" / "k.so").write_bytes(b"\x7fELF v2")
    assert len({before, edited, code_digest({"quantcore": pkg})}) == 3
    assert code_version().startswith("rdquant-code-") and code_version() == code_version()


def test_model_experiments_share_evaluated_features_through_the_market_folder(tmp_path):
    """The first model experiment stores its features and label beside the exported market; the next
    one on the same features reads them (nothing rewritten) and gets what a recomputation gives.
    Caches of other code versions are dropped when the market is exported again."""
    import shutil

    from sandbox.market import export_market, feature_cache_dir

    features = {"rev7": "-($close/Ref($close, 7) - 1)", "range3": "Mean(($high-$low)/$close, 3)"}
    first = {
        "kind": "model",
        "market": MARKET,
        "features": features,
        "family": "linear",
        "segments": SEGMENTS,
        "backtest": {"topk": 10, "n_drop": 2},
    }
    second = {**first, "feature_norm": "csrank"}
    with LocalExecutor(workers=1, root=tmp_path / "sbx", use_cache=False) as ex:
        assert ex.run(first).ok
        folder, _ = export_market(ex.store.root, MARKET)
        cache = feature_cache_dir(folder)
        # a rewrite (temp file + rename) gives an entry a new inode; a read only refreshes its mtime
        stored = {p: p.stat().st_ino for p in cache.rglob("*.npy")}
        assert len(stored) == len(features) + 2  # the features, the label in float32 and in float64
        from_cache = ex.run(second)
        assert from_cache.ok, from_cache.failure
        assert {p: p.stat().st_ino for p in cache.rglob("*.npy")} == stored  # read, not recomputed
        shutil.rmtree(cache)
        recomputed = ex.run(second)
        assert recomputed.ok and recomputed.metrics == from_cache.metrics
        assert recomputed.details["daily_rank_ic"] == from_cache.details["daily_rank_ic"]

        stale = folder / "features" / "rdquant-code-0000000000000000"
        stale.mkdir(parents=True)
        (stale / "x.npy").write_bytes(b"old")
        export_market(ex.store.root, MARKET)
        assert not stale.exists() and cache.is_dir()


def test_an_unwritable_feature_cache_folder_does_not_fail_a_model_experiment(tmp_path):
    """The shared feature cache is an optimisation: when its folder cannot be created (here a file is in
    the way) the experiment computes its features and reports the same numbers."""
    from sandbox.experiments import WorkerContext, run_spec

    spec = {
        "kind": "model",
        "market": MARKET,
        "features": {"rev": REV},
        "family": "linear",
        "segments": SEGMENTS,
        "backtest": {"topk": 10, "n_drop": 2},
    }
    panel = load_market(MARKET)
    (tmp_path / "blocked").write_bytes(b"a file, not a folder")
    blocked = run_spec(
        spec, WorkerContext(attach=lambda m: panel, feature_cache=lambda m: tmp_path / "blocked" / "f"), tmp_path / "a"
    )
    plain = run_spec(spec, WorkerContext(attach=lambda m: panel), tmp_path / "b")
    assert blocked.ok, blocked.failure
    assert blocked.metrics == plain.metrics
