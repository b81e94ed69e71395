"""Export a market a spec names in a child process under the experiment limits (and in the jail where
it runs), not in the executor: generating a synthetic market or reading a bars file is work done on a
spec's behalf, so a spec that asks for too much costs a failed experiment, never the executor's
memory or time. A market exported before is served in place (`export_market` reads its meta)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from sandbox.jail import Jail, interpreter_paths, jail_argv, jail_unavailable_reason
from sandbox.limits import Limits
from sandbox.market import export_market, market_dir

__all__ = ["MarketExportError", "export_limited"]

#: Address space the exporting interpreter itself needs (numpy, pandas, pyarrow reserve a lot of
#: virtual memory they never touch) on top of the experiment's `memory_mb`.
_BASE_ADDRESS_SPACE_MB = 2048  # measured: exporting the embedded market peaks at 1.7 GB virtual
_EXPORT = (
    "import json, sys\nfrom sandbox.market import export_market\n"
    "folder, version = export_market(sys.argv[1], sys.argv[2])\n"
    "print(json.dumps({'folder': str(folder), 'version': version}))\n"
)


class MarketExportError(RuntimeError):
    """The market could not be exported; the message is the child's last line, or the limit it hit."""


def export_limited(
    root: Path, market: str, limits: Limits, readable: Sequence[Path] = (), jail: bool | None = None
) -> tuple[Path, str]:
    """Export `market` under `root` in a limited child; returns (folder, data version). `readable`:
    folders the child may read besides the interpreter (the executor's market roots)."""
    if (market_dir(root, market) / "meta.json").exists():
        folder, version = export_market(root, market)  # exported already: only reads its meta
        return folder, version
    markets = Path(root) / "markets"
    markets.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-c", _EXPORT, str(root), market]
    use_jail = jail if jail is not None else jail_unavailable_reason() is None
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": "1",
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
    }
    if use_jail:
        view = Jail(
            experiment_dir=markets,
            readonly=(*interpreter_paths(), *map(Path, readable)),
            env={k: v for k, v in env.items() if k != "PATH"},
        )
        command, env = jail_argv(view, command), {}
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            timeout=limits.wall_seconds,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: _limit(limits),
        )
    except subprocess.TimeoutExpired:
        raise MarketExportError(
            f"exporting it took more than the wall-clock limit of {limits.wall_seconds:g} s"
        ) from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        if "MemoryError" in done.stderr:
            last = f"it needs more than the memory limit ({limits.memory_mb} MiB)"
        elif done.returncode in (-9, -24, 128 + 9, 128 + 24):
            last = f"it exceeded the CPU or memory limit (exit {done.returncode})"
        raise MarketExportError(last)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return Path(out["folder"]), out["version"]


def _limit(limits: Limits) -> None:
    """In the child before exec: the experiment's CPU time and memory, no core files."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cpu = int(limits.cpu_seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    space = (limits.memory_mb + _BASE_ADDRESS_SPACE_MB) << 20
    resource.setrlimit(resource.RLIMIT_AS, (space, space))
