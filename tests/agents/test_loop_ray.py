"""`rdquant loop --executor ray`: the same run as on local workers (a real local Ray runtime), and a
start it refuses - unknown executor, Ray missing, cluster unreachable - is one line, exit 2, nothing stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from agents.cli import app
from agents.config import LoopConfig, stored_config
from agents.loop import open_project, start_run
from agents.replay import compare
from agents.store import LibraryFactorRow

MARKET = "synthetic:60:700:0"
# one factor iteration after the baseline model: both kinds of experiment, and this seed accepts factors
# lenient admission (on 60 names the trial-aware test admits little), so that the runs have accepted
# factors to compare; the executor does not depend on the gates
LENIENT = {"fdr_q": 0.5, "residual_components": 0}
LOOP = [
    "loop",
    "--budget",
    "1",
    "--data",
    MARKET,
    "--seed",
    "3",
    "--workers",
    "2",
    "--fdr-q",
    "0.5",
    "--residual-components",
    "0",
]
CLI = [sys.executable, "-c", "from agents.cli import main; main()"]
# `import ray` fails as if Ray were not installed: a None entry in sys.modules halts the import
CLI_WITHOUT_RAY = [sys.executable, "-c", "import sys; sys.modules['ray'] = None; from agents.cli import main; main()"]
UNREACHABLE = "127.0.0.1:1"  # a port nothing listens on


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a cluster of the caller's must not be joined
    return {**env, **extra}


@pytest.fixture(scope="module")
def ray_and_local_runs(tmp_path_factory):
    """The same offline run twice: through the CLI on Ray, then on local workers under the same run id."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'rdquant[ray]')")
    ray_root, local_root = tmp_path_factory.mktemp("ray"), tmp_path_factory.mktemp("local")
    result = CliRunner().invoke(app, LOOP + ["--executor", "ray", "--root", str(ray_root)], env={"RAY_ADDRESS": None})
    assert result.exit_code == 0, result.output
    run_id = result.output.strip().splitlines()[-1]
    start_run(LoopConfig(budget=1, data=MARKET, seed=3, workers=2, **LENIENT), local_root, run_id=run_id)
    return open_project(ray_root), open_project(local_root), run_id, ray_root


def test_ray_run_decides_exactly_what_a_local_run_decides(ray_and_local_runs):
    ray_store, local_store, run_id, _ = ray_and_local_runs
    assert json.loads(ray_store.run(run_id).config_json)["loop"]["executor"] == "ray"
    assert ray_store.run(run_id).status == local_store.run(run_id).status == "finished"
    diff = compare(local_store, ray_store, run_id)  # every decision (verdict, metrics) and experiment metric
    assert diff.divergences == [] and diff.decisions >= 3 and diff.metrics > 50, diff.divergences[:5]

    def library(store):
        return sorted((f.name, f.expression) for f in store.rows(LibraryFactorRow, run_id=run_id))

    assert library(ray_store) == library(local_store) != []  # the case needs accepted factors to compare


def test_resume_uses_the_executor_the_run_was_stored_with(ray_and_local_runs):
    """A stored Ray run resumes on Ray: with its cluster unreachable it is refused and left untouched."""
    ray_store, _, run_id, ray_root = ray_and_local_runs
    before = ray_store.run(run_id)
    resumed = subprocess.run(
        CLI + ["loop", "--resume", run_id, "--root", str(ray_root)],
        capture_output=True,
        text=True,
        env=_env(RAY_ADDRESS=UNREACHABLE),
        timeout=120,
    )
    assert resumed.returncode == 2 and UNREACHABLE in resumed.stderr, resumed.stderr
    after = open_project(ray_root).run(run_id)
    assert (after.status, after.iterations_done) == (before.status, before.iterations_done) == ("finished", 1)


def test_runs_stored_before_the_executor_setting_ran_locally():
    assert stored_config(LoopConfig().model_dump(exclude={"executor"})).executor == "local"


def _assert_refused(output: str, expected: str, root) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], output
    assert open_project(root).runs() == []  # no run row: nothing was started


def test_unknown_executor_is_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(app, LOOP + ["--executor", "dask", "--root", str(tmp_path)])
    assert result.exit_code == 2
    _assert_refused(result.output, "unknown --executor 'dask': use one of local, ray", tmp_path)


def test_ray_not_installed_is_refused_in_one_line(tmp_path):
    result = subprocess.run(
        CLI_WITHOUT_RAY + LOOP + ["--executor", "ray", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout.strip() == "", result.stdout + result.stderr
    _assert_refused(result.stderr, "Ray is not installed: pip install 'rdquant[ray]'", tmp_path)


def test_unreachable_cluster_is_refused_fast_in_one_line(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'rdquant[ray]')")
    start = time.monotonic()
    result = subprocess.run(
        CLI + LOOP + ["--executor", "ray", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        env=_env(RAY_ADDRESS=UNREACHABLE),
        timeout=120,
    )
    seconds = time.monotonic() - start
    assert result.returncode == 2 and result.stdout.strip() == "", result.stdout + result.stderr
    _assert_refused(result.stderr, f"cannot reach the Ray cluster at {UNREACHABLE}", tmp_path)
    assert seconds < 30, f"took {seconds:.1f} s (ray.init alone retries for minutes)"  # imports included
