"""`RayExecutor`: the `LocalExecutor` interface on Ray (`pip install rdquant[ray]`).

On one machine it starts a local Ray runtime; with `RAY_ADDRESS` set (or `address=`) it joins an
existing cluster, whose nodes need rdquant installed. Each worker is a one-CPU actor that starts a
`LocalExecutor` worker on its node and relays experiments to it, so a cluster node contains an
experiment exactly as one machine does: the bubblewrap jail (or Landlock), the seccomp filter, the
JSON channel checked against the result schema, a fresh worker for generated code. Markets go into
the object store once (`ray.put` of the exported arrays); an actor on another node writes them to
its disk once, where the driver's sandbox folder is on the driver's own machine.

Limits: the wall clock is the parent's (`ray.wait` with a deadline, then `ray.kill` and a fresh
actor, whose worker dies with it); CPU time, memory and file size are the local worker's rlimits.
The actor never runs experiment code, so what `ray.get` deserialises comes from a process that only
ever re-encoded a checked result; it still arrives as a `sandbox.channel` message and is checked
again here. On a cluster the experiment folders are written on the node that ran the experiment.

"""

from __future__ import annotations

import math
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

from sandbox.channel import MAX_MESSAGE_BYTES, ProtocolError, read_ready, read_result, ready_message, result_message
from sandbox.executor import BaseExecutor, Task
from sandbox.result import ExperimentResult, Failure, FailureCategory
from sandbox.worker import WorkerConfig

__all__ = ["RayExecutor", "RayUnavailable"]

_START_TIMEOUT = 120.0  # seconds for an actor to be scheduled, import and report ready
_CONNECT_TIMEOUT = 5.0  # seconds to reach a cluster's address before `ray.init` (which retries for minutes)
_PING = None  # marks a liveness probe queued ahead of a batch (see `_send`)


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster to join cannot be reached: nothing was run."""


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable("Ray is not installed: pip install 'rdquant[ray]'") from exc
    return ray


def _check_reachable(address: str, timeout: float = _CONNECT_TIMEOUT) -> None:
    """Fail fast, naming the address, when nothing answers at a cluster's `host:port`: `ray.init`
    itself retries an unreachable address for minutes. Addresses without a port are left to Ray."""
    target = address.removeprefix("ray://") if address.startswith("ray://") else _bootstrap_address(address)
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise RayUnavailable(
            f"cannot reach the Ray cluster at {address} ({reason}): start it with "
            "`ray start --head`, or leave RAY_ADDRESS unset for a local runtime"
        ) from None


def _bootstrap_address(address: str) -> str:
    """The `host:port` that `ray.init(address)` dials: Ray resolves "auto" and swaps a loopback host for
    this machine's node IP (so 127.0.0.1 must be checked as that IP). Ray's own rule, from a private
    module; if it moves, the address is checked as written."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(address) or address
    except Exception:  # noqa: BLE001 - only a less exact check
        return address


class _SandboxActor:
    """One worker: a relay to a `LocalExecutor` worker the actor starts on its node - in the jail, with
    the seccomp filter or Landlock, exactly as on one machine. The actor itself never runs an
    experiment, so what it hands Ray is only ever a checked result it re-encoded itself.

    `root` is the driver's sandbox folder: experiment folders have the same paths on every node (on
    the driver's machine, the very folders the driver reads captures from), and a market the driver
    exported there is used in place; on another node it is written there from the object store."""

    def __init__(self, config: WorkerConfig, root: str, jail: bool | None):
        from sandbox.local import LocalExecutor

        self.inner = LocalExecutor(
            workers=1,
            root=root,
            limits=config.limits,
            use_cache=False,
            batch_size=1,
            cache_bytes=config.cache_bytes,
            max_message_bytes=config.max_message_bytes,
            jail=jail,
        )
        self.max_bytes = config.max_message_bytes

    def ready(self) -> bytes:
        return ready_message({**self.inner.worker_info(), "pid": os.getpid()})

    def run(self, task_id: int, spec_json: str, workdir: str, markets: dict) -> bytes:
        from sandbox.market import export_market, market_dir, panel_from_arrays

        for market, ref in markets.items():
            exported = (market_dir(self.inner.store.root, market) / "meta.json").exists()
            panel = None if exported else panel_from_arrays(_import_ray().get(ref))
            self.inner.use_exported(market, *export_market(self.inner.store.root, market, panel))
        [result] = self.inner.run_many([spec_json])
        return result_message(task_id, result, self.max_bytes)


@dataclass
class _Worker:
    actor: Any
    info: dict = field(default_factory=dict)
    inflight: deque = field(default_factory=deque)  # (task or _PING, object ref), in submission order
    deadline: float = math.inf  # wall-clock limit of the call at the head of `inflight`


class RayExecutor(BaseExecutor):
    """Run experiments on `workers` Ray actors (default: the CPUs of the Ray runtime).

    `address`: a Ray cluster to join (default: `RAY_ADDRESS`, else a local runtime with `workers` CPUs).
    `batch_size`: factor experiments queued on an actor at once (hides the round trip between them;
    model and workflow experiments go one at a time).
    `max_message_bytes`: the largest result an actor may return (see `sandbox.channel`).
    `jail`: as `LocalExecutor`'s, for the worker each actor starts on its node."""

    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        batch_size: int = 8,
        cache_bytes: int = 256 << 20,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        jail: bool | None = None,
        **kw,
    ):
        super().__init__(**kw)
        self.batch_size = max(1, batch_size)
        self._address = address or os.environ.get("RAY_ADDRESS") or None
        self._requested = workers
        if max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be at least 1024, got {max_message_bytes}")
        self._config = WorkerConfig(limits=self.limits, cache_bytes=cache_bytes, max_message_bytes=max_message_bytes)
        self._jail = jail
        self._ray = None
        self._actor_class = None
        self._started_ray = False
        self._market_refs: dict[str, Any] = {}  # exported folder -> object ref of its arrays
        self._workers: list[_Worker] = []

    # ---- capabilities ----------------------------------------------------------------------------
    @property
    def n_workers(self) -> int:
        self._ensure_ray()
        if self._requested:
            return max(1, self._requested)
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    @property
    def capabilities(self) -> dict:
        """What isolation the actors actually got (detected when they start)."""
        self._ensure_workers()
        info = self._workers[0].info
        return {
            "workers": self.n_workers,
            "jail": info.get("jail", False),
            "seccomp": info.get("seccomp", False),
            "landlock": info.get("landlock", False),
            "network_isolated": info.get("network_isolated", False),
            "network_note": info.get("network_note"),
            "limits": self.limits.__dict__,
            "start_method": "ray-actor relaying to a local worker",
            "process_group_kill": True,
            "ray_address": self._address or "local",
        }

    def worker_pids(self) -> list[int]:
        """The actors' process ids (an actor found dead is replaced first)."""
        self._ensure_workers()
        for w in self._workers:
            try:
                w.info = self._read_ready(self._ray.get(w.actor.ready.remote(), timeout=_START_TIMEOUT))
            except (self._ray.exceptions.RayActorError, ProtocolError):
                self._replace(w)
                self._await_ready([w])
        return [w.info["pid"] for w in self._workers]

    def connect(self) -> None:
        """Join the cluster (or start the local runtime) now rather than at the first experiment, so a
        missing Ray or an unreachable address is reported before anything else happens."""
        self._ensure_ray()

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for w in self._workers:
            ray.kill(w.actor, no_restart=True)
        self._workers = []
        self._market_refs = {}
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._ray, self._started_ray = None, False

    # ---- dispatch -------------------------------------------------------------------------------
    def _dispatch(self, tasks: list[Task]) -> Iterator[tuple[int, ExperimentResult]]:
        if not tasks:
            return
        self._ensure_workers()
        ray = self._ray
        queue = deque(tasks)
        limit = self.limits.wall_seconds
        while queue or any(w.inflight for w in self._workers):
            for w in self._workers:
                if not w.inflight and queue:
                    self._send(w, queue, limit)
            busy = [w for w in self._workers if w.inflight]
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ray.wait([w.inflight[0][1] for w in busy], num_returns=1, timeout=timeout)
            refs = [ref for w in busy for _, ref in w.inflight]
            ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
            for w in busy:
                yield from self._drain(w, ready, queue, limit)
                if w.inflight and time.monotonic() >= w.deadline:
                    if w.inflight[0][0] is _PING:
                        raise RuntimeError(
                            f"a sandbox actor did not answer within {_START_TIMEOUT:g} s "
                            "(not enough free CPUs in the Ray cluster?)"
                        )
                    yield self._lost(
                        w,
                        queue,
                        Failure(
                            FailureCategory.TIMEOUT, f"wall-clock limit of {limit:g} s exceeded; the worker was killed"
                        ),
                    )

    def _send(self, w: _Worker, queue: deque, limit: float) -> None:
        """Queue a batch on an idle actor behind a liveness probe: if the actor died while idle, the
        probe fails and the batch goes back to the queue instead of being blamed for the death."""
        # spread a short queue over the actors rather than filling the first one
        size = min(self.batch_size, math.ceil(len(queue) / len(self._workers))) if queue[0].kind == "factor" else 1
        w.inflight.append((_PING, w.actor.ready.remote()))
        while queue and len(w.inflight) <= size and (len(w.inflight) == 1 or queue[0].kind == "factor"):
            task = queue.popleft()
            markets = {m: self._market_ref(folder) for m, folder in task.markets.items()}
            w.inflight.append((task, w.actor.run.remote(task.task_id, task.spec_json, task.workdir, markets)))
        w.deadline = time.monotonic() + _START_TIMEOUT  # the probe also waits for a replaced actor to start

    def _drain(self, w: _Worker, ready: set, queue: deque, limit: float) -> Iterator[tuple[int, ExperimentResult]]:
        ray = self._ray
        while w.inflight and w.inflight[0][1] in ready:
            task, ref = w.inflight[0]
            try:
                payload = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                if task is _PING:  # died while idle (or while starting)
                    if not w.info:
                        raise RuntimeError(f"a sandbox actor failed to start: {_first_line(exc)}") from exc
                    self._requeue(w, queue)
                else:
                    yield self._lost(w, queue, Failure(FailureCategory.WORKER_CRASH, _death_message(exc)))
                return
            except ray.exceptions.RayError as exc:  # the actor lives, but this call's result could not come back
                if task is _PING:
                    raise
                result = ExperimentResult(
                    spec_hash=task.spec_hash,
                    kind=task.kind,
                    failure=Failure(
                        FailureCategory.WORKER_CRASH, f"the worker could not return a result: {_first_line(exc)}"
                    ),
                )
            else:
                try:
                    if task is _PING:
                        info = self._read_ready(payload)
                    else:
                        result = read_result(payload, task.task_id, task.spec_hash, self._config.max_message_bytes)
                except ProtocolError as exc:
                    if task is _PING and not w.info:  # a fresh actor: our own bug, not an experiment's
                        raise RuntimeError(f"a sandbox actor started but did not report ready: {exc}") from None
                    if task is _PING:  # an actor that ran experiments before and now answers nonsense
                        self._requeue(w, queue)
                    else:
                        yield self._lost(
                            w,
                            queue,
                            Failure(FailureCategory.WORKER_CRASH, f"the worker broke the result protocol: {exc}"),
                        )
                    return
            w.inflight.popleft()
            w.deadline = time.monotonic() + limit  # the next call in the batch starts now
            if task is _PING:
                w.info = info
            else:
                yield task.task_id, result

    def _lost(self, w: _Worker, queue: deque, failure: Failure) -> tuple[int, ExperimentResult]:
        """Fail the task at the head of `w`, requeue the rest of its batch, replace the actor."""
        task, _ = w.inflight.popleft()
        result = ExperimentResult(spec_hash=task.spec_hash, kind=task.kind, failure=failure)
        self._requeue(w, queue)
        return task.task_id, result

    def _requeue(self, w: _Worker, queue: deque) -> None:
        queue.extendleft(reversed([t for t, _ in w.inflight if t is not _PING]))
        w.inflight.clear()
        self._replace(w)

    # ---- runtime and actors ----------------------------------------------------------------------
    def _ensure_ray(self) -> None:
        if self._ray is not None:
            return
        ray = _import_ray()
        if not ray.is_initialized():
            local = self._address is None
            if not local:
                _check_reachable(self._address)
            try:
                # "local", not None: None would join whatever cluster /tmp/ray/ray_current_cluster names
                ray.init(
                    address="local" if local else self._address,
                    num_cpus=(self._requested or len(os.sched_getaffinity(0))) if local else None,
                    include_dashboard=False,
                    log_to_driver=False,
                    ignore_reinit_error=True,
                )
            except ConnectionError as exc:  # something answers at the address, but no Ray that lets us in
                if local:
                    raise
                raise RayUnavailable(f"cannot join the Ray cluster at {self._address}: {_join_failure(exc)}") from exc
            self._started_ray = True
        self._ray = ray
        self._actor_class = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(_SandboxActor)

    def _ensure_workers(self) -> None:
        self._ensure_ray()
        missing = self.n_workers - len(self._workers)
        if missing > 0:
            fresh = [
                _Worker(self._actor_class.remote(self._config, str(self.store.root), self._jail))
                for _ in range(missing)
            ]
            self._await_ready(fresh)
            self._workers.extend(fresh)

    def _await_ready(self, workers: list[_Worker]) -> None:
        ray = self._ray
        refs = [w.actor.ready.remote() for w in workers]
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=_START_TIMEOUT)
        if pending:
            for w in workers:
                ray.kill(w.actor, no_restart=True)
            raise RuntimeError(
                f"{len(pending)} sandbox actor(s) did not start within {_START_TIMEOUT:g} s "
                "(not enough free CPUs in the Ray cluster?)"
            )
        for w, ready in zip(workers, ray.get(refs)):
            w.info = self._read_ready(ready)

    def _read_ready(self, payload) -> dict:
        return read_ready(payload, self._config.max_message_bytes)

    def _replace(self, w: _Worker) -> None:
        """Kill `w`'s actor and start a fresh one without waiting: the probe ahead of its next batch
        waits for it to start."""
        self._ray.kill(w.actor, no_restart=True)
        w.actor, w.info, w.inflight, w.deadline = (
            self._actor_class.remote(self._config, str(self.store.root), self._jail),
            {},
            deque(),
            math.inf,
        )
        self.stats["worker_restarts"] += 1

    def _market_ref(self, folder: str):
        """The exported market's arrays in the object store (put once; actors map them zero-copy)."""
        if folder not in self._market_refs:
            from sandbox.market import market_arrays

            self._market_refs[folder] = self._ray.put(market_arrays(folder))
        return self._market_refs[folder]


def _join_failure(exc: BaseException) -> str:
    """Why `ray.init` could not join, in one line. Ray's own message ("Failed to connect to Ray cluster")
    hides the cause in the text of a chained error; a missing token is the common one: `ray start`
    enables token authentication (Ray 2.60), a joining driver does not send one unless told to."""
    text, cause = [], exc
    while cause is not None and len(text) < 8:
        text.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    if any("InvalidAuthToken" in t or "AuthenticationError" in t for t in text):
        return (
            "the cluster wants its authentication token: set RAY_AUTH_MODE=token and give this machine "
            "the cluster's token (~/.ray/auth_token, or RAY_AUTH_TOKEN)"
        )
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _death_message(exc: BaseException) -> str:
    """Ray's reason for an actor's death ("killed by the OOM killer", "exited with code 1"...)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith("The actor is dead because")), None)
    return f"the worker died mid-experiment: {reason or _first_line(exc)}"
