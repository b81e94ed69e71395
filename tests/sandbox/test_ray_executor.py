"""RayExecutor on a local Ray runtime: the same results as LocalExecutor, and the same failure handling."""

from __future__ import annotations

import os
import signal
import threading

import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'rdquant[ray]')")

from sandbox import FailureCategory, Limits, LocalExecutor  # noqa: E402
from sandbox.ray_executor import RayExecutor  # noqa: E402

MARKET = "synthetic:60:400:0"
LIMITS = Limits(wall_seconds=3, cpu_seconds=30, memory_mb=2048)
BUSY = "def factor(fields):\n    while True:\n        pass\n"


def factor(expressions=None, code=None):
    spec = {"kind": "factor", "market": MARKET}
    if expressions:
        spec["expressions"] = expressions
    if code:
        spec["code"] = code
    return spec


# (spec, expected failure category or None); expectations are written by hand, not taken from either executor
CASES = [
    (factor({"rev5": "-($close/Ref($close, 5) - 1)"}), None),
    (factor({"mom10": "$close/Ref($close, 10) - 1", "vol20": "Std($close/Ref($close, 1) - 1, 20)"}), None),
    (factor({"ma_gap": "Mean($close, 5)/Mean($close, 20) - 1"}), None),
    (factor({"bad": "Mean($close,"}), FailureCategory.PARSE_ERROR),
    (factor({"peek": "Ref($close, -1)/$close"}), FailureCategory.LOOK_AHEAD),
    (
        factor(
            code="import numpy as np\ndef factor(fields):\n    c = fields['close']\n"
            "    return -c / np.roll(c, 5, axis=1)\n"
        ),
        None,
    ),
    # the guard's read roots: market arrays are in memory, /etc is not readable
    (
        factor(
            code="import numpy as np\ndef factor(fields):\n    np.load('/etc/hostname')\n    return fields['close']\n"
        ),
        FailureCategory.FORBIDDEN_OPERATION,
    ),
    (factor(code=BUSY), FailureCategory.TIMEOUT),
]


@pytest.fixture(scope="module")
def ray_executor(tmp_path_factory):
    with RayExecutor(workers=2, root=tmp_path_factory.mktemp("ray"), limits=LIMITS) as ex:
        yield ex


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    with LocalExecutor(workers=2, root=tmp_path_factory.mktemp("local"), limits=LIMITS) as ex:
        return ex.run_many([spec for spec, _ in CASES])


def _category(result):
    return result.failure.category if result.failure else None


def test_results_match_local_executor(ray_executor, local_results):
    results = ray_executor.run_many([spec for spec, _ in CASES])
    assert [_category(r) for r in results] == [expected for _, expected in CASES]
    assert [_category(r) for r in local_results] == [expected for _, expected in CASES]
    for ours, local in zip(results, local_results):
        assert ours.spec_hash == local.spec_hash
        assert ours.data_version == local.data_version
        assert ours.metrics.keys() == local.metrics.keys()
        for key, value in ours.metrics.items():  # bit-identical, NaN where NaN
            assert value == local.metrics[key] or (value != value and local.metrics[key] != local.metrics[key]), key
    assert results[0].metrics["rev5.n_days"] > 0
    assert "wall-clock limit of 3 s" in results[-1].failure.message
    assert ray_executor.stats["worker_restarts"] >= 1  # the timed-out actor was replaced


def test_killed_actor_is_a_worker_crash_and_the_executor_keeps_serving(ray_executor, local_results):
    pids = ray_executor.worker_pids()
    # one actor runs the busy loop, the other is idle; both die. Only the running task is blamed:
    # the idle actor's death is found by the probe queued ahead of its next batch.
    killer = threading.Timer(1.0, lambda: [os.kill(pid, signal.SIGKILL) for pid in pids])
    killer.start()
    try:
        crashed = ray_executor.run(factor(code=BUSY.replace("pass", "continue")))
    finally:
        killer.join()
    assert crashed.failure is not None and crashed.failure.category == FailureCategory.WORKER_CRASH
    assert "died mid-experiment" in crashed.failure.message
    again = ray_executor.run_many([factor({"rev5_again": "-($close/Ref($close, 5) - 1)"}), CASES[1][0]])
    assert all(r.ok for r in again), [r.failure for r in again]
    assert again[0].metrics["rev5_again.rank_ic"] == local_results[0].metrics["rev5.rank_ic"]
    assert again[1].cached  # served from the store without a worker
    assert set(ray_executor.worker_pids()).isdisjoint(pids)
