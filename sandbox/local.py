"""`LocalExecutor`: a pool of spawned worker processes on this machine.

Workers start once, attach the exported markets (memory-mapped) and serve batches of tasks. The
parent watches every worker: a task past its wall-clock limit gets its worker's whole process group
killed; a worker that dies (segfault, OOM kill, hard exit) fails only the task it was running; the
unstarted rest of its batch goes back to the queue and a fresh worker takes its place.

Where bubblewrap runs (`sandbox.jail`), every worker starts in a jail: its own user, PID, IPC and
network namespaces and a read-only view of the interpreter and the markets. A pool worker runs only
the project's own code (expressions, model families, workflows) and may write the experiment folders
and the markets' feature caches. An experiment with generated code (a factor's or a model's `code`)
runs alone on a worker started for it, whose one writable folder is its own experiment folder, and
that worker is replaced before anything else runs: no generated code ever shares an interpreter, a
cache or a folder with another experiment. Every worker loads a seccomp filter (`sandbox.seccomp`)
once ready: no new processes, programs or sockets. Workers answer
in JSON (`sandbox.channel`), read without ever blocking and checked against the result schema: a
malformed, oversized or out-of-order message is the running task's `worker_crash`, and the worker is
replaced, exactly as if it had died."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Iterator

from sandbox.channel import MAX_MESSAGE_BYTES, FrameReader, ProtocolError, encode, read_ready, read_result, send_frame
from sandbox.executor import BaseExecutor, Task
from sandbox.jail import Jail, JailUnavailable, interpreter_paths, jail_argv, jail_unavailable_reason
from sandbox.landlock import landlock_unavailable_reason, system_read_paths
from sandbox.result import ExperimentResult, Failure, FailureCategory
from sandbox.seccomp import seccomp_unavailable_reason
from sandbox.worker import WORKER_ENV, WorkerConfig, config_json

__all__ = ["LocalExecutor"]

_START_TIMEOUT = 120.0  # seconds for a spawned worker to import and report ready
_SEND_TIMEOUT = 30.0  # seconds for an idle worker to take a batch off the socket (a healthy one: microseconds)


class _Process:
    """A worker subprocess with a pidfd sentinel (readable once it exits), for `connection.wait`.

    In the jail, `popen` is bwrap and the worker runs in a PID namespace of its own, in another
    session: `status_fd` is the read end of bwrap's --json-status-fd, which names the namespace's
    first process, so `kill` can wait for it - and with it every process of the namespace (the kernel
    kills and reaps them all before the namespace's init is gone)."""

    def __init__(self, popen: subprocess.Popen, status_fd: int = -1):
        self.popen = popen
        self.pid = popen.pid
        self.sentinel = os.pidfd_open(popen.pid)
        self._status_fd = status_fd
        self._inner = -1  # pidfd of the namespace's init, once known

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

    def learn_inner(self) -> None:
        """Read the namespace init's pid from bwrap's status (written before the worker started)."""
        if self._status_fd < 0 or self._inner >= 0:
            return
        if select.select([self._status_fd], [], [], 1.0)[0]:
            for line in os.read(self._status_fd, 4096).decode(errors="replace").splitlines():
                try:
                    pid = json.loads(line).get("child-pid")
                except ValueError:
                    continue
                if type(pid) is int:
                    try:
                        self._inner = os.pidfd_open(pid)
                    except OSError:
                        pass  # gone already
                    return

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (and in the jail its PID namespace); wait for them."""
        _kill_group(self.pid)
        if self._inner >= 0:
            try:
                signal.pidfd_send_signal(self._inner, signal.SIGKILL)
            except OSError:
                pass
            select.select([self._inner], [], [], 5.0)  # readable once it, and so its namespace, is gone
        self.join(timeout=5)

    def close(self) -> None:
        for name in ("sentinel", "_inner", "_status_fd"):  # once: a number may belong to another file afterwards
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


@dataclass
class _Worker:
    process: _Process
    channel: FrameReader  # the parent's end of the worker's socket (reads; `.sock` sends)
    info: dict = field(default_factory=dict)
    batch: deque = field(default_factory=deque)  # tasks sent and not yet answered, in order
    deadline: float = math.inf  # wall-clock limit of the task at the head of `batch`
    served: int = 0
    oom_kills: int | None = None  # the cgroup's OOM-kill count when the current batch was sent
    generated: bool = False  # started for (and ran) generated code: replaced before its next task
    started_for: int | None = None  # the task id `_prestart` started it for, until that task is sent


class LocalExecutor(BaseExecutor):
    """Run experiments on `workers` local processes (default: the cores this process may use).

    `batch_size`: tasks sent to a worker in one message (amortises the pipe round trip for cheap
    factor experiments; model and workflow experiments are always sent one at a time).
    `max_tasks_per_worker`: recycle a worker after this many tasks (None = never).
    `max_message_bytes`: the largest message either side of a worker's channel accepts.
    `jail`: start workers in `sandbox.jail` (None: where it runs here; True: required, `JailUnavailable`
    otherwise; False: never). `seccomp`: workers load `sandbox.seccomp`'s filter where libseccomp is.
    `landlock`: where the jail does not run, workers restrict their files with `sandbox.landlock`.
    `python_guard=False` drops the guard's Python rules for generated code (any import, full builtins):
    allowed only where the seccomp filter and the jail (or Landlock) hold, which then contain it alone."""

    def __init__(
        self,
        workers: int | None = None,
        *,
        batch_size: int = 8,
        max_tasks_per_worker: int | None = None,
        isolate_network: bool = True,
        cache_bytes: int = 256 << 20,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        jail: bool | None = None,
        seccomp: bool = True,
        python_guard: bool = True,
        landlock: bool = True,
        **kw,
    ):
        super().__init__(**kw)
        self.n_workers = max(1, workers or len(os.sched_getaffinity(0)))
        self.batch_size = max(1, batch_size)
        self.max_tasks_per_worker = max_tasks_per_worker
        if max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be at least 1024, got {max_message_bytes}")
        why_not = jail_unavailable_reason() if jail is not False else "turned off by the caller (jail=False)"
        if jail and why_not:
            raise JailUnavailable(f"a jail was required but cannot start here: {why_not}")
        self.jailed = why_not is None
        self._jail_note = why_not
        self._export_jail = self.jailed
        if not python_guard:
            files = why_not and ("landlock=False" if not landlock else landlock_unavailable_reason())
            missing = files or (seccomp_unavailable_reason() if seccomp else "seccomp=False")
            if missing:
                raise ValueError(f"python_guard=False needs the seccomp filter and the jail or Landlock, and {missing}")
        self._config = WorkerConfig(
            limits=self.limits,
            isolate_network=isolate_network,
            cache_bytes=cache_bytes,
            max_message_bytes=max_message_bytes,
            jailed=self.jailed,
            seccomp=seccomp,
            python_guard=python_guard,
        )
        self._landlock = landlock and not self.jailed
        self._workers: list[_Worker] = []
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rdquant-worker-spawner")

    # ---- capabilities ----------------------------------------------------------------------------
    @property
    def capabilities(self) -> dict:
        """Which containment layers the workers actually got (the seccomp filter as they reported it)."""
        self._ensure_workers()
        info = self._workers[0].info
        return {
            "workers": self.n_workers,
            "jail": self.jailed,
            "jail_note": self._jail_note,
            "seccomp": info.get("seccomp", False),
            "seccomp_note": info.get("seccomp_note"),
            "landlock": info.get("landlock", False),
            "landlock_note": info.get("landlock_note") or ("the jail holds the files" if self.jailed else None),
            "network_isolated": info.get("network_isolated", False),
            "network_note": info.get("network_note"),
            "generated_code": "one fresh worker per experiment"
            + (", writing only its own folder" if self.jailed or self._landlock else ""),
            "limits": self.limits.__dict__,
            "start_method": "exec",
            "process_group_kill": True,
        }

    def worker_info(self) -> dict:
        """The first worker's start-up report (its pid, the layers it loaded) and whether it is jailed."""
        self.worker_pids()
        return {**self._workers[0].info, "jail": self.jailed}

    def tasks_served(self) -> list[int]:
        """Tasks each current worker has answered since it started (how a batch was shared out)."""
        return [w.served for w in self._workers]

    def worker_pids(self) -> list[int]:
        """The pids of the processes that serve the next tasks (started where none is running)."""
        self._ensure_workers()
        for w in self._workers:
            if w.process.sentinel < 0:  # retired after generated code
                self._replace(w)
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        for w in self._workers:
            if w.process.sentinel < 0:
                continue  # retired
            try:
                send_frame(w.channel.sock, encode({"op": "stop"}), timeout=1.0)
            except (OSError, TimeoutError):
                pass
        for w in self._workers:
            w.process.join(timeout=5)
            if w.process.is_alive():
                self._retire(w)
            w.channel.sock.close()
            w.process.close()
        self._workers = []
        self._spawner.shutdown(wait=False)
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rdquant-worker-spawner")  # reusable

    # ---- dispatch -------------------------------------------------------------------------------
    def _dispatch(self, tasks: list[Task]) -> Iterator[tuple[int, ExperimentResult]]:
        if not tasks:
            return
        self._ensure_workers()
        queue = deque(tasks)
        limit = self.limits.wall_seconds
        while queue or any(w.batch for w in self._workers):
            idle = [w for w in self._workers if not w.batch]
            self._prestart(idle, queue)
            for k, w in enumerate(idle):
                if queue:
                    yield from self._send(w, queue, limit, len(idle) - k)
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
                    yield self._lost(
                        w,
                        queue,
                        Failure(
                            FailureCategory.TIMEOUT,
                            f"wall-clock limit of {limit:g} s exceeded; the worker's process group was killed",
                        ),
                    )

    def _prestart(self, idle: list[_Worker], queue: deque) -> None:
        """Start side by side the fresh workers the generated experiments at the head of the queue need
        (a start is mostly imports; one after another, two would take twice as long on two cores).
        Idle workers take tasks in order, one generated experiment each, so worker k gets queue[k]."""
        plans = []
        for w, task in zip(idle, list(queue)):
            if not task.generated:
                break
            if w.generated or self.jailed or self._landlock or not w.process.is_alive():
                plans.append((w, task))  # it needs a fresh worker (otherwise a clean pool worker runs it as it is)
        if len(plans) < 2:
            return  # nothing to overlap: `_send` starts it
        for w, _ in plans:
            self._retire(w)
        spawned = [(w, self._spawn(task)) for w, task in plans]
        try:
            while spawned:
                w, pending = spawned.pop(0)
                _adopt(w, self._ready(*pending))
                self.stats["fresh_workers"] += 1
                w.started_for = pending[2].task_id
        finally:
            for _, (process, channel, _) in spawned:  # a start failed: the others go too
                _discard(process, channel)

    def _send(self, w: _Worker, queue: deque, limit: float, sharing: int = 1) -> Iterator[tuple[int, ExperimentResult]]:
        """Send the next batch to idle `w`, one of `sharing` idle workers the queue is shared out among;
        yields a failure only if the batch cannot be delivered."""
        if w.started_for is not None and w.started_for == queue[0].task_id and w.process.is_alive():
            pass  # started by `_prestart` for this very experiment
        elif (
            w.generated or not w.process.is_alive() or self._spoke_unasked(w)
        ):  # ran generated code, killed from outside,
            self._replace(w, queue[0] if queue[0].generated else None)  # or talking out of turn
        elif queue[0].generated and (self.jailed or self._landlock):  # a worker of its own, writing only its
            self._replace(w, queue[0])  # experiment's folder
        w.generated = w.generated or queue[0].generated  # retired once it has answered
        w.started_for = None
        # a fair share of what is queued, at most `batch_size`: four heavy experiments on two workers go
        # two and two, not all four to the first idle one
        share = math.ceil(len(queue) / max(sharing, 1))
        size = min(self.batch_size, share) if queue[0].kind == "factor" and not queue[0].generated else 1
        batch = []
        while queue and len(batch) < size and (not batch or (queue[0].kind == "factor" and not queue[0].generated)):
            batch.append(queue.popleft())
        w.batch.extend(batch)
        w.deadline = time.monotonic() + limit
        w.oom_kills = _oom_kills()
        try:
            send_frame(w.channel.sock, encode({"op": "run", "tasks": [t.message() for t in batch]}), _SEND_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            yield self._lost(
                w,
                queue,
                Failure(FailureCategory.WORKER_CRASH, f"the experiment could not be sent to the worker: {exc}"),
            )

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
        if not w.batch and w.generated:
            self._retire(w)  # now, not at its next task: nothing it started may run on while it idles
        elif not w.batch and self.max_tasks_per_worker and w.served >= self.max_tasks_per_worker:
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
        if self.jailed and code is not None and code > 128 and code - 128 in signal.valid_signals():
            code = 128 - code  # bwrap exits 128 + n when the worker inside died from signal n
        if code is None:  # alive, but its end of the channel is closed
            return Failure(FailureCategory.WORKER_CRASH, "the worker closed its channel mid-experiment")
        if code < 0:
            sig = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            if -code == signal.SIGXCPU:
                return Failure(
                    FailureCategory.TIMEOUT, f"CPU time limit of {self.limits.cpu_seconds:g} s exceeded (SIGXCPU)"
                )
            if -code == signal.SIGKILL:
                # not ours (our kills are wall-clock timeouts, reported as such): the kernel's OOM killer,
                # or an operator's `kill -9`. The cgroup's OOM-kill counter tells them apart where it exists.
                kills = _oom_kills()
                if kills is not None and w.oom_kills is not None and kills > w.oom_kills:
                    return Failure(
                        FailureCategory.MEMORY_LIMIT,
                        "the worker was killed by the kernel's out-of-memory killer (SIGKILL)",
                    )
                return Failure(
                    FailureCategory.WORKER_CRASH,
                    "the worker was killed (SIGKILL) from outside the sandbox "
                    "(an operator, or possibly the kernel's out-of-memory killer)",
                )
            return Failure(FailureCategory.WORKER_CRASH, f"the worker process died from signal {sig}")
        return Failure(FailureCategory.WORKER_CRASH, f"the worker process exited with status {code} mid-experiment")

    # ---- worker lifecycle ------------------------------------------------------------------------
    def _ensure_workers(self) -> None:
        """Start the missing workers side by side (each spends most of its start importing)."""
        pending = [self._spawn() for _ in range(self.n_workers - len(self._workers))]
        try:
            while pending:
                self._workers.append(self._ready(*pending.pop(0)))
        finally:
            for process, channel, _ in pending:  # a start failed: the others go too
                _discard(process, channel)

    def _start(self, task: Task | None = None) -> _Worker:
        """A fresh interpreter (fork + exec: it inherits nothing of ours but one socket) in its own session,
        so its process group - and any child it manages to start - can be killed at once. `task`: the
        generated-code experiment it is started for (in the jail, its folder is the only one writable)."""
        return self._ready(*self._spawn(task))

    def _spawn(self, task: Task | None = None) -> tuple[_Process, FrameReader, Task | None]:
        ours, theirs = socket.socketpair()
        config = self._config
        env = {**_passed_env(), **WORKER_ENV, "PYTHONNOUSERSITE": "1"}
        if self._landlock:
            config = dataclasses.replace(config, **self._landlock_paths(task))
            env["TMPDIR"] = config.landlock_write[0]  # the one place it may write
        command = [
            sys.executable,
            "-c",
            "from sandbox.worker import main; main()",
            str(theirs.fileno()),
            config_json(config),
        ]
        status_read, status_write = os.pipe() if self.jailed else (-1, -1)
        if self.jailed:
            inside = {k: v for k, v in env.items() if k not in ("PATH", "HOME", "TMPDIR", "LANG")}  # the jail's own
            command = jail_argv(self._jail_for(task, inside), command, status_fd=status_write)
            env = {}
        passed = (theirs.fileno(), status_write) if self.jailed else (theirs.fileno(),)
        try:
            # started from the executor's own thread: "die with parent" (bwrap's, or ours for an unjailed
            # worker) means with the thread that forked it, which must live as long as the executor -
            # not a caller's thread that may end while its workers still serve
            popen = self._spawner.submit(
                subprocess.Popen,
                command,
                pass_fds=passed,
                start_new_session=True,
                cwd=self._home(task),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                preexec_fn=None if self.jailed else _die_with_parent,
            ).result()
        finally:
            theirs.close()
            if status_write >= 0:
                os.close(status_write)
        return _Process(popen, status_read), FrameReader(ours, self._config.max_message_bytes), task

    def _ready(self, process: _Process, channel: FrameReader, task: Task | None) -> _Worker:
        """Wait for a spawned worker's ready message (killing it if none comes)."""
        deadline = time.monotonic() + _START_TIMEOUT
        frames: list[bytes] = []
        try:
            while not frames and not channel.eof and wait([channel], max(0.0, deadline - time.monotonic())):
                frames = channel.read()
            if not frames and channel.eof:
                raise RuntimeError(f"a sandbox worker exited while starting (status {process.popen.wait()})")
            if not frames:
                raise RuntimeError(f"a sandbox worker did not start within {_START_TIMEOUT:g} s")
            info = read_ready(frames[0], self._config.max_message_bytes)
            process.learn_inner()
        except (RuntimeError, ProtocolError) as exc:
            _discard(process, channel)
            if isinstance(exc, ProtocolError):
                raise RuntimeError(f"a sandbox worker started but did not report ready: {exc}") from None
            raise
        return _Worker(process, channel, info, generated=task is not None)

    def _jail_for(self, task: Task | None, env: dict[str, str]) -> Jail:
        """A pool worker writes the experiment folders and the markets' feature caches; a worker for
        generated code writes its experiment's folder only and reads the markets."""
        markets = self.store.root / "markets"
        if task is None:
            return Jail.for_this_interpreter(self.store.root / "experiments", writable=(markets,), env=env)
        Path(task.workdir).mkdir(parents=True, exist_ok=True)
        return Jail.for_this_interpreter(Path(task.workdir), market_dir=markets, env=env)

    def _home(self, task: Task | None) -> Path:
        """A worker's working directory: its experiment's folder, or the experiments' for a pool worker."""
        home = Path(task.workdir) if task is not None else self.store.root / "experiments"
        home.mkdir(parents=True, exist_ok=True)
        return home

    def _landlock_paths(self, task: Task | None) -> dict[str, tuple[str, ...]]:
        """What an unjailed worker may read and write under Landlock (the jail's view, as rules)."""
        markets = self.store.root / "markets"
        read = (*interpreter_paths(), *system_read_paths(), markets)
        write = (self._home(task), markets) if task is None else (self._home(task),)
        return {"landlock_read": tuple(map(str, read)), "landlock_write": tuple(map(str, write))}

    def _retire(self, w: _Worker) -> None:
        """Kill `w`'s whole process group and close its channel; `_send` starts its successor."""
        if w.process.sentinel < 0:
            return  # retired already (its pid may be another process's by now)
        _discard(w.process, w.channel)

    def _replace(self, w: _Worker, task: Task | None = None) -> None:
        """Retire `w` and start its successor (for `task`'s generated code, if given). Counted in
        `stats`: "worker_restarts" for a worker that failed or was recycled, "fresh_workers" for the
        planned starts around generated code."""
        planned = task is not None or (w.generated and w.process.sentinel < 0)  # not a crash: retired as planned
        self._retire(w)
        fresh = self._start(task)
        self.stats["fresh_workers" if planned else "worker_restarts"] += 1
        _adopt(w, fresh)


#: What a worker keeps of this process's environment (no API keys or tokens: a worker has no use for them).
_PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "PYTHONHASHSEED", "CUDA_VISIBLE_DEVICES")


def _passed_env() -> dict[str, str]:
    return {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}


def _discard(process: _Process, channel: FrameReader) -> None:
    """Kill a worker (its whole group, its namespace) and close its channel and descriptors."""
    process.kill()
    channel.sock.close()
    process.close()


def _adopt(w: _Worker, fresh: _Worker) -> None:
    """Put a freshly started worker in `w`'s slot (the slot keeps its place in the pool)."""
    w.process, w.channel, w.info, w.deadline, w.served = fresh.process, fresh.channel, fresh.info, math.inf, 0
    w.generated, w.started_for = fresh.generated, None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started it (the executor's spawner) ends,
    as bwrap's --die-with-parent does for a jailed worker: a worker never outlives its executor's
    process, even one killed with SIGKILL (a Ray actor)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


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
