"""The worker process: spawned (never forked), its own process group, limited, isolated, and reused.

Started by `main` as `python -c ... FD CONFIG_JSON` (a fresh interpreter: nothing inherited but the
socket FD). Protocol over that socket (multiprocessing Connection, pickled tuples):
  parent -> worker  ("run", [(task_id, spec_json, workdir, market_folders), ...])  |  ("stop",)
  worker -> parent  ("ready", info)  then ("result", task_id, result_dict) once per task, in order
The parent enforces wall-clock limits by killing the whole process group (see `sandbox.local`).
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

__all__ = ["WorkerConfig", "worker_main"]


@dataclass(frozen=True)
class WorkerConfig:
    limits: object  # sandbox.limits.Limits (kept untyped so this module imports nothing heavy)
    isolate_network: bool = True
    cache_bytes: int = 256 << 20


def worker_main(conn, config: WorkerConfig) -> None:
    """Serve experiments on `conn` (the parent started us in our own session / process group)."""
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one experiment per core; kernels run single-threaded
    from sandbox.experiments import WorkerContext, run_spec
    from sandbox.failures import CpuLimitExceeded
    from sandbox.guard import Guard, default_read_roots
    from sandbox.limits import apply_process_limits, arm_cpu_limit, isolate_network
    from sandbox.market import attach_market
    from sandbox.result import ExperimentResult, Failure, FailureCategory

    network = isolate_network() if config.isolate_network else "disabled by the executor"
    folders: dict[str, str] = {}

    def attach(market: str):
        if market not in folders:
            raise KeyError(f"market {market!r} was not exported to this worker")
        return attach_market(folders[market])

    def on_cpu_limit(signum, frame):
        raise CpuLimitExceeded(f"CPU time limit of {config.limits.cpu_seconds:g} s exceeded")

    guard = Guard()
    ctx = WorkerContext(attach=attach, guard=guard, cache_bytes=config.cache_bytes,
                        output_chars=config.limits.output_chars)
    apply_process_limits(config.limits)
    conn.send(("ready", {"pid": os.getpid(), "network_isolated": network is None, "network_note": network}))
    read_roots_set = False
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if message[0] == "stop":
            return
        for task_id, spec_json, workdir, market_folders in message[1]:
            folders.update(market_folders)
            if not read_roots_set or any(Path(f) not in guard.read_roots for f in market_folders.values()):
                guard.read_roots = default_read_roots(*folders.values())
                read_roots_set = True
            try:
                arm_cpu_limit(config.limits.cpu_seconds, on_cpu_limit)
                result = run_spec(spec_json, ctx, workdir)
            except MemoryError as exc:  # raised outside run_spec's own handling
                result = ExperimentResult("", "?", failure=Failure(FailureCategory.MEMORY_LIMIT, str(exc) or "MemoryError"))
            except CpuLimitExceeded as exc:
                result = ExperimentResult("", "?", failure=Failure(FailureCategory.TIMEOUT, str(exc)))
            payload = result.to_dict()
            try:
                conn.send(("result", task_id, payload))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                bad = ExperimentResult(result.spec_hash, result.kind, failure=Failure(
                    FailureCategory.DEGENERATE_OUTPUT, f"the result could not be sent back: {exc}"))
                conn.send(("result", task_id, bad.to_dict()))
            except (BrokenPipeError, OSError):
                return
        sys.stdout.flush()


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
