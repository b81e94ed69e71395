"""`LocalExecutor`: a pool of spawned worker processes on this machine.

Workers start once, attach the exported markets (memory-mapped) and serve batches of tasks. The
parent watches every worker: a task past its wall-clock limit gets its worker's whole process group
killed; a worker that dies (segfault, OOM kill, hard exit) fails only the task it was running; the
unstarted rest of its batch goes back to the queue and a fresh worker takes its place. Workers answer
in JSON (`sandbox.channel`), read without ever blocking and checked against the result schema: a
malformed, oversized or out-of-order message is the running task's `worker_crash`, and the worker is
replaced, exactly as if it had died."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Iterator

from sandbox.channel import MAX_MESSAGE_BYTES, FrameReader, ProtocolError, encode, read_ready, read_result, send_frame
from sandbox.executor import BaseExecutor, Task
from sandbox.result import ExperimentResult, Failure, FailureCategory
from sandbox.worker import WORKER_ENV, WorkerConfig, config_json

__all__ = ["LocalExecutor"]

_START_TIMEOUT = 120.0  # seconds for a spawned worker to import and report ready
_SEND_TIMEOUT = 30.0  # seconds for an idle worker to take a batch off the socket (a healthy one: microseconds)


class _Process:
    """A worker subprocess with a pidfd sentinel (readable once it exits), for `connection.wait`."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.pid = popen.pid
        self.sentinel = os.pidfd_open(popen.pid)

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        try:
            os.close(self.sentinel)
        except OSError:
            pass


@dataclass
class _Worker:
    process: _Process
    channel: FrameReader  # the parent's end of the worker's socket (reads; `.sock` sends)
    info: dict = field(default_factory=dict)
    batch: deque = field(default_factory=deque)  # tasks sent and not yet answered, in order
    deadline: float = math.inf  # wall-clock limit of the task at the head of `batch`
    served: int = 0
    oom_kills: int | None = None  # the cgroup's OOM-kill count when the current batch was sent


class LocalExecutor(BaseExecutor):
    """Run experiments on `workers` local processes (default: the cores this process may use).

    `batch_size`: tasks sent to a worker in one message (amortises the pipe round trip for cheap
    factor experiments; model and workflow experiments are always sent one at a time).
    `max_tasks_per_worker`: recycle a worker after this many tasks (None = never).
    `max_message_bytes`: the largest message either side of a worker's channel accepts."""

    def __init__(self, workers: int | None = None, *, batch_size: int = 8, max_tasks_per_worker: int | None = None,
                 isolate_network: bool = True, cache_bytes: int = 256 << 20,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, **kw):
        super().__init__(**kw)
        self.n_workers = max(1, workers or len(os.sched_getaffinity(0)))
        self.batch_size = max(1, batch_size)
        self.max_tasks_per_worker = max_tasks_per_worker
        if max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be at least 1024, got {max_message_bytes}")
        self._config = WorkerConfig(limits=self.limits, isolate_network=isolate_network, cache_bytes=cache_bytes,
                                    max_message_bytes=max_message_bytes)
        self._workers: list[_Worker] = []

    # ---- capabilities ----------------------------------------------------------------------------
    @property
    def capabilities(self) -> dict:
        """What isolation the workers actually got (detected when they start)."""
        self._ensure_workers()
        info = self._workers[0].info
        return {"workers": self.n_workers, "network_isolated": info.get("network_isolated", False),
                "network_note": info.get("network_note"), "limits": self.limits.__dict__,
                "start_method": "exec", "process_group_kill": True}

    def worker_pids(self) -> list[int]:
        self._ensure_workers()
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        for w in self._workers:
            try:
                send_frame(w.channel.sock, encode({"op": "stop"}), timeout=1.0)
            except (OSError, TimeoutError):
                pass
        for w in self._workers:
            w.process.join(timeout=5)
            if w.process.is_alive():
                _kill_group(w.process.pid)
                w.process.join(timeout=5)
            w.channel.sock.close()
            w.process.close()
        self._workers = []

    # ---- dispatch -------------------------------------------------------------------------------
    def _dispatch(self, tasks: list[Task]) -> Iterator[tuple[int, ExperimentResult]]:
        if not tasks:
            return
        self._ensure_workers()
        queue = deque(tasks)
        limit = self.limits.wall_seconds
        while queue or any(w.batch for w in self._workers):
            for w in self._workers:
                if not w.batch and queue:
                    yield from self._send(w, queue, limit)
            busy = [w for w in self._workers if w.batch]
            if not busy:  # every send failed (each failed one task): send again
                continue
            now = time.monotonic()
            timeout = max(0.0, min(w.deadline for w in busy) - now)
            ready = wait([w.channel for w in busy] + [w.process.sentinel for w in busy], timeout=timeout)
            for w in busy:
                if w.channel in ready:
                    yield from self._drain(w, queue, limit)
                if not w.batch:
                    continue
                if w.process.sentinel in ready or w.channel.eof or not w.process.is_alive():
                    yield from self._drain(w, queue, limit)  # results it sent before dying
                    if w.batch:
                        yield self._lost(w, queue, self._death_failure(w))
                elif time.monotonic() >= w.deadline:
                    yield self._lost(w, queue, Failure(
                        FailureCategory.TIMEOUT, f"wall-clock limit of {limit:g} s exceeded; the worker's process group was killed"))

    def _send(self, w: _Worker, queue: deque, limit: float) -> Iterator[tuple[int, ExperimentResult]]:
        """Send the next batch to idle `w`; yields a failure only if the batch cannot be delivered."""
        if not w.process.is_alive() or self._spoke_unasked(w):  # killed from outside, or talking out of turn
            self._replace(w)
        size = self.batch_size if queue[0].kind == "factor" else 1
        if self.max_tasks_per_worker:
            size = max(1, min(size, self.max_tasks_per_worker - w.served))
        batch = []
        while queue and len(batch) < size and (not batch or queue[0].kind == "factor"):
            batch.append(queue.popleft())
        w.batch.extend(batch)
        w.deadline = time.monotonic() + limit
        w.oom_kills = _oom_kills()
        try:
            send_frame(w.channel.sock, encode({"op": "run", "tasks": [t.message() for t in batch]}), _SEND_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            yield self._lost(w, queue, Failure(FailureCategory.WORKER_CRASH,
                                               f"the experiment could not be sent to the worker: {exc}"))

    def _spoke_unasked(self, w: _Worker) -> bool:
        """Whether an idle worker sent something (or closed its end) since its last batch."""
        try:
            return bool(w.channel.read()) or w.channel.pending or w.channel.eof
        except ProtocolError:
            return True

    def _drain(self, w: _Worker, queue: deque, limit: float) -> Iterator[tuple[int, ExperimentResult]]:
        """Yield the results `w` has sent; a message that breaks the protocol fails the running task."""
        try:
            for frame in w.channel.read():
                if not w.batch:
                    raise ProtocolError("a message after the last result of its batch")
                task = w.batch[0]
                result = read_result(frame, task.task_id, task.spec_hash, self._config.max_message_bytes)
                w.batch.popleft()
                w.served += 1
                w.deadline = time.monotonic() + limit  # the next task in the batch starts now
                yield task.task_id, result
        except ProtocolError as exc:
            failure = Failure(FailureCategory.WORKER_CRASH, f"the worker broke the result protocol: {exc}")
            if w.batch:
                yield self._lost(w, queue, failure)
            else:
                self._replace(w)
            return
        if not w.batch and self.max_tasks_per_worker and w.served >= self.max_tasks_per_worker:
            self._replace(w)

    def _lost(self, w: _Worker, queue: deque, failure: Failure) -> tuple[int, ExperimentResult]:
        """Fail the task `w` was running, requeue the rest of its batch, replace the worker."""
        task = w.batch.popleft()
        queue.extendleft(reversed(w.batch))
        w.batch.clear()
        self._replace(w)
        return task.task_id, ExperimentResult(spec_hash=task.spec_hash, kind=task.kind, failure=failure)

    def _death_failure(self, w: _Worker) -> Failure:
        w.process.join(timeout=1)
        code = w.process.exitcode
        if code is None:  # alive, but its end of the channel is closed
            return Failure(FailureCategory.WORKER_CRASH, "the worker closed its channel mid-experiment")
        if code < 0:
            sig = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            if -code == signal.SIGXCPU:
                return Failure(FailureCategory.TIMEOUT, f"CPU time limit of {self.limits.cpu_seconds:g} s exceeded (SIGXCPU)")
            if -code == signal.SIGKILL:
                # not ours (our kills are wall-clock timeouts, reported as such): the kernel's OOM killer,
                # or an operator's `kill -9`. The cgroup's OOM-kill counter tells them apart where it exists.
                kills = _oom_kills()
                if kills is not None and w.oom_kills is not None and kills > w.oom_kills:
                    return Failure(FailureCategory.MEMORY_LIMIT, "the worker was killed by the kernel's out-of-memory "
                                   "killer (SIGKILL)")
                return Failure(FailureCategory.WORKER_CRASH, "the worker was killed (SIGKILL) from outside the sandbox "
                               "(an operator, or possibly the kernel's out-of-memory killer)")
            return Failure(FailureCategory.WORKER_CRASH, f"the worker process died from signal {sig}")
        return Failure(FailureCategory.WORKER_CRASH, f"the worker process exited with status {code} mid-experiment")

    # ---- worker lifecycle ------------------------------------------------------------------------
    def _ensure_workers(self) -> None:
        while len(self._workers) < self.n_workers:
            self._workers.append(self._start())

    def _start(self) -> _Worker:
        """A fresh interpreter (fork + exec: it inherits nothing of ours but one socket) in its own session,
        so its process group - and any child it manages to start - can be killed at once."""
        ours, theirs = socket.socketpair()
        popen = subprocess.Popen(
            [sys.executable, "-c", "from sandbox.worker import main; main()", str(theirs.fileno()),
             config_json(self._config)],
            pass_fds=(theirs.fileno(),), start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, env={**WORKER_ENV, **os.environ, "PYTHONNOUSERSITE": "1"},
        )
        theirs.close()
        channel = FrameReader(ours, self._config.max_message_bytes)
        process = _Process(popen)
        deadline = time.monotonic() + _START_TIMEOUT
        frames: list[bytes] = []
        try:
            while not frames and not channel.eof and wait([channel], max(0.0, deadline - time.monotonic())):
                frames = channel.read()
            if not frames and channel.eof:
                raise RuntimeError(f"a sandbox worker exited while starting (status {popen.wait()})")
            if not frames:
                raise RuntimeError(f"a sandbox worker did not start within {_START_TIMEOUT:g} s")
            info = read_ready(frames[0], self._config.max_message_bytes)
        except (RuntimeError, ProtocolError) as exc:
            _kill_group(process.pid)
            ours.close()
            process.close()
            if isinstance(exc, ProtocolError):
                raise RuntimeError(f"a sandbox worker started but did not report ready: {exc}") from None
            raise
        return _Worker(process, channel, info)

    def _replace(self, w: _Worker) -> None:
        _kill_group(w.process.pid)
        w.process.join(timeout=5)
        w.channel.sock.close()
        w.process.close()
        fresh = self._start()
        self.stats["worker_restarts"] += 1
        w.process, w.channel, w.info, w.deadline, w.served = fresh.process, fresh.channel, fresh.info, math.inf, 0


def _oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has killed in our memory cgroup (v2 or v1); None if unknown."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def _kill_group(pid: int) -> None:
    """SIGKILL the worker's process group (it called setsid, so its group id is its pid)."""
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass
