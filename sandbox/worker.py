"""The worker process: spawned (never forked), its own process group, limited, isolated, and reused.

Started by `main` as `python -c ... FD CONFIG_JSON` (a fresh interpreter: nothing inherited but the
socket FD). It speaks `sandbox.channel`'s protocol over that socket (JSON frames, no pickle): a "ready"
message, then one "result" per task of each "run" message, in order, until "stop".
The parent enforces wall-clock limits by killing the whole process group (see `sandbox.local`).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from sandbox.channel import MAX_MESSAGE_BYTES

# Defaults read once at process start (OpenMP and malloc initialise before the worker's own code runs):
# one experiment per core, kernels single-threaded (without this a tiny experiment takes ~6x longer).
# Model fits still ask for every core; a passive OpenMP wait policy lets threads that wait sleep instead
# of spinning, so two fits side by side share the cores instead of fighting over them (spinning, two
# 2-thread LightGBM fits took 4-5x as long as two 1-thread fits), and a fit running alone, or left
# alone when its neighbour finishes, gets both cores.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "MALLOC_ARENA_MAX": "2"}

__all__ = ["WorkerConfig", "WorkerSession", "worker_main"]


@dataclass(frozen=True)
class WorkerConfig:
    limits: object  # sandbox.limits.Limits (kept untyped so this module imports nothing heavy)
    isolate_network: bool = True
    cache_bytes: int = 256 << 20
    max_message_bytes: int = MAX_MESSAGE_BYTES  # the largest message either side of the channel accepts
    jailed: bool = False  # started inside `sandbox.jail` (its own network namespace already)
    python_guard: bool = True  # the guard's Python rules (screen, namespace, audit hook) on generated code
    landlock_read: tuple[str, ...] = ()  # with landlock_write: restrict files with Landlock (unjailed workers)
    landlock_write: tuple[str, ...] = ()
    seccomp: bool = False  # load `sandbox.seccomp`'s filter once ready (pipe workers only: Ray needs sockets)


class WorkerSession:
    """What a worker keeps between experiments, and how it runs one under its limits and guard.
    Both the pipe worker (`worker_main`) and the Ray actor (`sandbox.ray_executor`) serve through it.

    `load(source)` turns a market source into a panel: an exported folder here (memory-mapped), an
    object-store reference under Ray. Folder sources are added to the guard's read roots."""

    def __init__(self, config: WorkerConfig, load: Callable[[Any], Any] | None = None):
        for key, value in WORKER_ENV.items():  # (a Ray actor: the pipe worker had them at spawn)
            os.environ.setdefault(key, value)
        from sandbox.experiments import WorkerContext
        from sandbox.guard import Guard
        from sandbox.limits import apply_process_limits, isolate_network
        from sandbox.market import attach_market

        self.config = config
        self._load = load or attach_market
        self._sources: dict[str, Any] = {}  # market spec -> source
        self._read_roots_set = False
        if config.jailed:
            network = None  # the jail unshared it; a nested user namespace is refused in there
        else:
            network = isolate_network() if config.isolate_network else "disabled by the executor"
        self.guard = Guard(python_rules=config.python_guard)
        self.ctx = WorkerContext(
            attach=self._attach,
            guard=self.guard,
            cache_bytes=config.cache_bytes,
            output_chars=config.limits.output_chars,
            feature_cache=self._feature_cache,
        )
        apply_process_limits(config.limits)
        self.info = {"pid": os.getpid(), "network_isolated": network is None, "network_note": network}

    def _attach(self, market: str):
        if market not in self._sources:
            raise KeyError(f"market {market!r} was not exported to this worker")
        return self._load(self._sources[market])

    def _feature_cache(self, market: str):
        """A market exported as a folder keeps its features cache inside; one from an object store has none."""
        from sandbox.market import feature_cache_dir

        source = self._sources.get(market)
        return feature_cache_dir(source) if isinstance(source, (str, os.PathLike)) else None

    def run(self, spec_json: str, workdir: str, markets: dict[str, Any]):
        """Run one experiment; returns its `ExperimentResult` (never raises for a bad experiment)."""
        from sandbox.experiments import run_spec
        from sandbox.failures import CpuLimitExceeded
        from sandbox.guard import default_read_roots
        from sandbox.limits import arm_cpu_limit
        from sandbox.result import ExperimentResult, Failure, FailureCategory

        self._sources.update(markets)
        folders = [Path(s) for s in self._sources.values() if isinstance(s, (str, os.PathLike))]
        if not self._read_roots_set or any(f not in self.guard.read_roots for f in folders):
            self.guard.read_roots = default_read_roots(*folders)
            self._read_roots_set = True
        try:
            arm_cpu_limit(self.config.limits.cpu_seconds, self._on_cpu_limit)
            return run_spec(spec_json, self.ctx, workdir)
        except MemoryError as exc:  # raised outside run_spec's own handling
            return ExperimentResult("", "?", failure=Failure(FailureCategory.MEMORY_LIMIT, str(exc) or "MemoryError"))
        except CpuLimitExceeded as exc:
            return ExperimentResult("", "?", failure=Failure(FailureCategory.TIMEOUT, str(exc)))

    def _on_cpu_limit(self, signum, frame):
        from sandbox.failures import CpuLimitExceeded

        raise CpuLimitExceeded(f"CPU time limit of {self.config.limits.cpu_seconds:g} s exceeded")


def worker_main(conn, config: WorkerConfig) -> None:
    """Serve experiments on `conn` (the parent started us in our own session / process group)."""
    from sandbox.channel import ProtocolError, decode, ready_message, result_message

    session = WorkerSession(config)
    # Landlock's checks load libc, and pyseccomp finds libseccomp by running ldconfig: both before the
    # seccomp filter (no processes) and the ruleset (no /tmp for ldconfig's helper) are in place
    landlock_why = _landlock_reason() if config.landlock_write else None
    if config.seccomp:
        session.info.update(_load_seccomp())
    if config.landlock_write:
        session.info.update(_load_landlock(config, landlock_why))
    conn.send_bytes(ready_message(session.info))
    while True:
        try:
            message = decode(conn.recv_bytes(config.max_message_bytes), config.max_message_bytes)
        except (EOFError, OSError, ProtocolError):
            return  # the parent went away (or is not speaking the protocol: nothing to serve)
        if message["op"] != "run":
            return
        for task in message["tasks"]:
            result = session.run(task["spec_json"], task["workdir"], task["markets"])
            try:
                conn.send_bytes(result_message(task["task_id"], result, config.max_message_bytes))
            except OSError:
                return
        sys.stdout.flush()


def _landlock_reason() -> str | None:
    from sandbox.landlock import landlock_unavailable_reason

    return landlock_unavailable_reason()


def _load_landlock(config: WorkerConfig, why: str | None) -> dict:
    """Restrict the worker's files with Landlock where the kernel has it; says which in the ready message."""
    from sandbox.landlock import apply_worker_landlock

    if why is None:
        try:
            apply_worker_landlock(config.landlock_read, config.landlock_write)
        except OSError as exc:
            why = f"applying the ruleset failed: {exc}"
    return {"landlock": why is None, "landlock_note": why}


def _load_seccomp() -> dict:
    """Load the worker's seccomp filter where this machine can; says which in the ready message."""
    from sandbox.seccomp import apply_worker_filter, seccomp_unavailable_reason

    why = seccomp_unavailable_reason()
    if why is None:
        try:
            apply_worker_filter()
        except OSError as exc:
            why = f"loading the filter failed: {exc}"
    return {"seccomp": why is None, "seccomp_note": why}


def config_json(config: WorkerConfig) -> str:
    return json.dumps({**asdict(config), "limits": asdict(config.limits)})


def _config_from_json(text: str) -> WorkerConfig:
    from sandbox.limits import Limits

    raw = json.loads(text)
    return WorkerConfig(limits=Limits(**raw.pop("limits")), **raw)


def main(argv: list[str] | None = None) -> None:
    """`python -c "from sandbox.worker import main; main()" FD CONFIG_JSON`."""
    fd, config = (argv or sys.argv[1:])[:2]
    worker_main(Connection(int(fd)), _config_from_json(config))
