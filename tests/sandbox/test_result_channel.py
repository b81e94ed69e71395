"""The result channel trusts nothing a worker sends (issue 18, item 2).

A worker runs generated code, so the hostile tests play a worker that was taken over: they take a copy
of a real `LocalExecutor` worker's end of its socket (pidfd_getfd(2): the very descriptor code inside
the worker writes to) and, while the worker runs an experiment, write a crafted message on it.
Whatever the message, the parent runs nothing of it (the pickle's canary file never appears), the
experiment that was running fails as `worker_crash` (or `timeout`, for a message that never ends),
and the rest of the batch and every later experiment give the metrics of a fresh executor, bit for bit."""

from __future__ import annotations

import ctypes
import json
import math
import os
import pickle
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sandbox import Limits, LocalExecutor, spec_hash
from sandbox.channel import FrameReader, ProtocolError, decode, encode, read_result, result_message
from sandbox.result import (
    MAX_CONTEXT_CHARS,
    MAX_STRING_CHARS,
    ExperimentResult,
    Failure,
    FailureCategory,
    ResultSchemaError,
)

MARKET = "synthetic:60:400:0"
SPECS = [
    {"kind": "factor", "market": MARKET, "report": "screen", "expressions": {name: expr}}
    for name, expr in (
        ("rev5", "-($close/Ref($close, 5) - 1)"),
        ("vol10", "Std($close/Ref($close, 1) - 1, 10)"),
        ("rng", "($high - $low)/$close"),
    )
]
# generated code that computes for about a second: the window in which the "worker" writes its message
SLOW_CODE = (
    "import numpy as np\ndef factor(fields):\n    s = 0\n    for i in range(10_000_000):\n        s += i\n"
    "    return fields['close'] * 0 + s\n"
)
WALL = 8.0  # seconds: the "never ends" message is a timeout of this length
MAX_BYTES = 1 << 16  # a small channel limit, so that "oversized" is cheap to write
_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[ExperimentResult]:
    """SPECS on a fresh executor nobody has written to."""
    with LocalExecutor(workers=1, root=tmp_path_factory.mktemp("fresh"), use_cache=False) as ex:
        results = ex.run_many(SPECS)
    assert all(r.ok for r in results), [r.failure for r in results]
    return results


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    # no jail, no Landlock: the test takes the idle worker's socket from its python process before the
    # slow experiment runs on that very worker (with either layer, generated code gets a worker started
    # for it, and a jailed one is in a PID namespace of its own); the channel must hold either way
    with LocalExecutor(
        workers=1,
        root=tmp_path_factory.mktemp("sbx"),
        use_cache=False,
        max_message_bytes=MAX_BYTES,
        jail=False,
        landlock=False,
        limits=Limits(wall_seconds=WALL, cpu_seconds=60, memory_mb=2048),
    ) as ex:
        yield ex


def _frame(payload: bytes) -> bytes:
    """`payload` framed as `multiprocessing.connection.Connection.send_bytes` frames it."""
    return len(payload).to_bytes(4, "big", signed=True) + payload


class _Canary:
    """Unpickling this writes a file: the proof that a parent ran code a worker sent."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return exec, (f"open({str(self.path)!r}, 'w').write('the parent ran worker code')",)


def _forged_result(task_id: int, spec: dict, **changes) -> bytes:
    """A result message as a worker would send it, with `changes` to the result dict."""
    result = ExperimentResult(spec_hash(spec), "factor", metrics={"rev5.rank_ic": 0.9}).to_dict()
    return encode({"op": "result", "task_id": task_id, "result": {**result, **changes}})


# name -> (the bytes a taken-over worker writes, given the canary path and the next task id; the
#          failure category of the experiment that was running)
HOSTILE = {
    "pickle_that_runs_code": (
        lambda canary, task: _frame(pickle.dumps(("result", task, _Canary(canary)))),
        FailureCategory.WORKER_CRASH,
    ),
    "bytes_that_are_not_utf8": (
        lambda canary, task: _frame(b"\xff\xfe\x80 not a message"),
        FailureCategory.WORKER_CRASH,
    ),
    "json_that_is_not_an_object": (lambda canary, task: _frame(b"[1, 2, 3]"), FailureCategory.WORKER_CRASH),
    "forged_ok_with_a_string_metric": (
        lambda canary, task: _frame(_forged_result(task, SPECS[0], metrics={"x": "0.9"})),
        FailureCategory.WORKER_CRASH,
    ),
    "forged_ok_with_an_unknown_key": (
        lambda canary, task: _frame(_forged_result(task, SPECS[0], owned=True)),
        FailureCategory.WORKER_CRASH,
    ),
    "forged_ok_with_infinite_metric": (
        lambda canary, task: _frame(_forged_result(task, SPECS[0]).replace(b"0.9", b"Infinity")),
        FailureCategory.WORKER_CRASH,
    ),
    "ok_that_contradicts_its_failure": (
        lambda canary, task: _frame(
            _forged_result(task, SPECS[0], ok=True, failure={"category": "timeout", "message": "m"})
        ),
        FailureCategory.WORKER_CRASH,
    ),
    "result_for_another_task": (
        lambda canary, task: _frame(_forged_result(task + 1, SPECS[0])),
        FailureCategory.WORKER_CRASH,
    ),
    "result_for_another_spec": (
        lambda canary, task: _frame(_forged_result(task, SPECS[1])),
        FailureCategory.WORKER_CRASH,
    ),
    "oversized_declared_length": (
        lambda canary, task: (MAX_BYTES + 1).to_bytes(4, "big") + b"{}",
        FailureCategory.WORKER_CRASH,
    ),
    "terabyte_declared_length": (
        lambda canary, task: (-1).to_bytes(4, "big", signed=True) + (1 << 40).to_bytes(8, "big"),
        FailureCategory.WORKER_CRASH,
    ),
    "negative_declared_length": (
        lambda canary, task: (-7).to_bytes(4, "big", signed=True),
        FailureCategory.WORKER_CRASH,
    ),
    "deeply_nested_json": (lambda canary, task: _frame(b"[" * 30000 + b"]" * 30000), FailureCategory.WORKER_CRASH),
    # half a message that is never finished (its length is more than the real result will fill):
    # the parent must not wait on it past the wall-clock limit
    "a_message_that_never_ends": (
        lambda canary, task: (MAX_BYTES - 1).to_bytes(4, "big") + b'{"op": "res',
        FailureCategory.TIMEOUT,
    ),
}


def _worker_end(ex: LocalExecutor) -> socket.socket:
    """A duplicate of the (only) worker's end of its channel, taken from the running worker."""
    (pid,) = ex.worker_pids()
    fd = int(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[3])  # python -c CODE FD CONFIG
    pidfd = os.pidfd_open(pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ours = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if ours < 0:
            pytest.skip(f"this kernel refuses pidfd_getfd(2): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(pidfd)
    return socket.socket(fileno=ours)


def _while_running(ex: LocalExecutor, spec: dict, write) -> list[ExperimentResult]:
    """Run [spec, *SPECS] as one batch; once the worker has started `spec`, write `write(task_id)` on
    the worker's channel (as code inside `spec` would)."""
    task_id = ex._next_id + 1  # the id `spec` gets: the executor numbers the specs it prepares
    workdir = ex.store.workdir(spec_hash(spec))  # the worker creates it when it starts the experiment
    assert not workdir.exists()
    with _worker_end(ex) as end, ThreadPoolExecutor(1) as pool:
        running = pool.submit(ex.run_many, [spec, *SPECS])
        deadline = time.monotonic() + 60
        while not workdir.exists() and not running.done() and time.monotonic() < deadline:
            time.sleep(0.002)
        end.sendall(write(task_id))
        return running.result(timeout=120)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_taken_over_worker_fails_only_its_experiment(executor, reference, tmp_path, case):
    write, expected = HOSTILE[case]
    canary = tmp_path / "canary"
    slow = {"kind": "factor", "market": MARKET, "code": SLOW_CODE, "seed": sorted(HOSTILE).index(case)}
    restarts = executor.stats["worker_restarts"]
    results = _while_running(executor, slow, lambda task_id: write(canary, task_id))
    assert not canary.exists(), "the parent unpickled what a worker sent"
    assert results[0].failure is not None and results[0].failure.category is expected, results[0]
    if expected is FailureCategory.WORKER_CRASH:  # refused when it arrived, not timed out
        assert "broke the result protocol" in results[0].failure.message, results[0].failure
    assert executor.stats["worker_restarts"] == restarts + 1  # the worker was replaced
    for got, want in zip(results[1:], reference):  # the rest of the batch, on the fresh worker
        assert got.ok and got.metrics == want.metrics, got.failure
    again = executor.run(SPECS[0])
    assert again.ok and again.metrics == reference[0].metrics


def test_a_worker_that_speaks_out_of_turn_is_replaced_before_its_next_batch(executor, reference):
    executor.worker_pids()  # started, idle
    with _worker_end(executor) as end:
        end.sendall(_frame(_forged_result(executor._next_id + 1, SPECS[0])))  # while idle, unasked
    restarts = executor.stats["worker_restarts"]
    results = executor.run_many(SPECS)
    assert executor.stats["worker_restarts"] == restarts + 1
    assert [r.metrics for r in results] == [r.metrics for r in reference]  # the forged 0.9 was never read


def test_an_honest_result_over_the_limit_is_degenerate_output_not_a_crash():
    result = ExperimentResult("ab" * 16, "factor", details={"blob": "x" * 5000})
    message = decode(result_message(7, result, max_bytes=4096))
    back = ExperimentResult.from_dict(message["result"])
    assert message["task_id"] == 7 and back.failure.category is FailureCategory.DEGENERATE_OUTPUT
    assert "at most 4096" in back.failure.message
    unjsonable = ExperimentResult("ab" * 16, "factor", details={"obj": object()})
    back = ExperimentResult.from_dict(decode(result_message(8, unjsonable))["result"])
    assert back.failure.category is FailureCategory.DEGENERATE_OUTPUT and "could not be sent" in back.failure.message


# ---- the result schema -----------------------------------------------------------------------------------


def test_real_results_round_trip_through_json(reference):
    failure = ExperimentResult(
        "cd" * 16, "model", failure=Failure(FailureCategory.TIMEOUT, "too slow", "ctx"), seconds=3.5
    )
    nan_metric = ExperimentResult("ef" * 16, "factor", metrics={"a": math.nan, "b": 1}, details={"x": [None, math.inf]})
    for result in [*reference, failure, nan_metric]:
        wire = json.loads(json.dumps(result.to_dict()))
        assert ExperimentResult.from_dict(wire).to_dict() == result.to_dict()
    back = ExperimentResult.from_dict(json.loads(json.dumps(nan_metric.to_dict())))
    assert math.isnan(back.metrics["a"]) and back.metrics["b"] == 1.0 and back.details["x"][1] == math.inf


GOOD = ExperimentResult(
    "ab" * 16, "factor", metrics={"f.ic": 0.1}, details={"f": {"n_days": 80}}, artifacts={"a": "/x"}, seconds=0.25
).to_dict()
BAD_RESULTS = {
    "not an object": ([GOOD], "expected an object"),
    "unknown top-level key": ({**GOOD, "exploit": 1}, "unknown key 'exploit'"),
    "missing kind": ({k: v for k, v in GOOD.items() if k != "kind"}, "kind: missing"),
    "spec_hash a number": ({**GOOD, "spec_hash": 5}, "spec_hash: expected a string"),
    "metrics a list": ({**GOOD, "metrics": [1.0]}, "metrics: expected an object"),
    "metric a string": ({**GOOD, "metrics": {"f.ic": "0.1"}}, "metrics.f.ic: expected a number"),
    "metric a boolean": ({**GOOD, "metrics": {"f.ic": True}}, "metrics.f.ic: expected a number"),
    "metric infinite": ({**GOOD, "metrics": {"f.ic": math.inf}}, "finite"),
    "metric NaN (to_dict writes null)": ({**GOOD, "metrics": {"f.ic": math.nan}}, "finite"),
    "metric too large for a float": ({**GOOD, "metrics": {"f.ic": 10**400}}, "a float can hold"),
    "details not JSON": ({**GOOD, "details": {"f": {1, 2}}}, "expected a JSON value"),
    "details nested too deep": ({**GOOD, "details": {"f": json.loads("[" * 40 + "]" * 40)}}, "nested deeper"),
    "artifact path a number": ({**GOOD, "artifacts": {"a": 1}}, "artifacts.a: expected a string"),
    "seconds negative": ({**GOOD, "seconds": -1}, "seconds: expected a finite number >= 0"),
    "seconds NaN": ({**GOOD, "seconds": math.nan}, "seconds: expected a finite number >= 0"),
    "seconds a string": ({**GOOD, "seconds": "1"}, "seconds: expected a number"),
    "cached a string": ({**GOOD, "cached": "yes"}, "cached: expected true or false"),
    "run id a number": ({**GOOD, "mlflow_run_id": 5}, "mlflow_run_id: expected a string"),
    "ok false without a failure": ({**GOOD, "ok": False}, "ok: expected True"),
    "unknown failure key": (
        {**GOOD, "ok": False, "failure": {"category": "timeout", "message": "m", "x": 1}},
        "failure: unknown key 'x'",
    ),
    "unknown failure category": (
        {**GOOD, "ok": False, "failure": {"category": "pwned", "message": "m"}},
        "failure.category: expected one of",
    ),
    "failure message of two lines": (
        {**GOOD, "ok": False, "failure": {"category": "timeout", "message": "a\nb"}},
        "failure.message: expected one line",
    ),
    "failure message oversized": (
        {**GOOD, "ok": False, "failure": {"category": "timeout", "message": "m" * 301}},
        "at most 300",
    ),
    "failure context oversized": (
        {
            **GOOD,
            "ok": False,
            "failure": {"category": "timeout", "message": "m", "context": "c" * (MAX_CONTEXT_CHARS + 1)},
        },
        f"at most {MAX_CONTEXT_CHARS}",
    ),
    "oversized string in details": (
        {**GOOD, "details": {"f": "x" * (MAX_STRING_CHARS + 1)}},
        f"at most {MAX_STRING_CHARS}",
    ),
    "oversized spec hash": ({**GOOD, "spec_hash": "a" * 129}, "at most 128"),
}


@pytest.mark.parametrize("case", sorted(BAD_RESULTS))
def test_from_dict_refuses_what_to_dict_never_writes(case):
    data, fragment = BAD_RESULTS[case]
    with pytest.raises(ResultSchemaError) as err:
        ExperimentResult.from_dict(data)
    assert fragment in str(err.value)
    assert len(str(err.value)) < 400  # names the problem, never echoes a huge value


def test_from_dict_accepts_every_key_to_dict_writes():
    assert ExperimentResult.from_dict(GOOD).to_dict() == GOOD


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"\xff\xfe{}", "not UTF-8 JSON"),
        (b'{"op": "result", ', "not UTF-8 JSON"),
        (b"[" * 100000 + b"]" * 100000, "not UTF-8 JSON"),  # deeper than the parser recurses
        (b'"result"', "not a message"),
        (b'{"op": 5}', "not a message"),
        (b'{"op": "result"}' + b" " * (1 << 20), "at most 1048576"),
        ("{}", "must be bytes"),
    ],
)
def test_decode_refuses_what_is_not_a_message(data, fragment):
    with pytest.raises(ProtocolError, match=fragment):
        decode(data, max_bytes=1 << 20)


def test_read_result_checks_the_task_and_the_schema():
    spec = SPECS[0]
    good = _forged_result(3, spec)
    assert read_result(good, 3, spec_hash(spec)).metrics == {"rev5.rank_ic": 0.9}
    with pytest.raises(ProtocolError, match="task 4"):
        read_result(good, 4, spec_hash(spec))
    with pytest.raises(ProtocolError, match="schema"):
        read_result(_forged_result(3, spec, seconds="soon"), 3, spec_hash(spec))
    with pytest.raises(ProtocolError, match="expected a result message"):
        read_result(encode({"op": "result", "task_id": 3, "result": {}, "extra": 1}), 3, spec_hash(spec))


# ---- frames ----------------------------------------------------------------------------------------------


def test_frame_reader_takes_whole_frames_and_refuses_an_oversized_one_unread():
    parent, worker = socket.socketpair()
    with parent, worker:
        reader = FrameReader(parent, max_bytes=1024)
        assert reader.read() == [] and not reader.eof  # nothing yet: returns at once
        worker.sendall(_frame(b"one") + _frame(b"two") + _frame(b"thr"))
        worker.sendall(_frame(b"partial")[:6])
        assert reader.read() == [b"one", b"two", b"thr"] and reader.pending
        worker.sendall(_frame(b"partial")[6:])
        assert reader.read() == [b"partial"] and not reader.pending
        worker.sendall((1025).to_bytes(4, "big"))
        with pytest.raises(ProtocolError, match="at most 1024"):
            reader.read()
    parent, worker = socket.socketpair()
    with parent:
        reader = FrameReader(parent)
        worker.close()
        assert reader.read() == [] and reader.eof
