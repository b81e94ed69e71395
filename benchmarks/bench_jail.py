#!/usr/bin/env python
"""What the OS jail (bubblewrap + seccomp, `sandbox/jail.py`, `sandbox/seccomp.py`) costs, measured
side by side in one run: the same executor with every OS layer off (`jail=False, seccomp=False,
landlock=False`) and with the jail and the seccomp filter on.

    python benchmarks/bench_jail.py [--workers 2] [--candidates 1000] [--starts 5] [--generated 10]

- worker start: `--starts` pools of `--workers` workers started (median time to all ready);
- warm experiment overhead: a tiny experiment run `--overhead-experiments` times through the pool,
  wall time per experiment beyond the work the worker measured (as `bench_sandbox.py` does);
- generated code: `--generated` tiny `factor(fields)` experiments one after another; with the jail
  each runs on a worker started for it (one whose only writable folder is its experiment's); without
  it, on a clean pool worker that is then retired: either way one worker start per experiment;
- throughput: `--candidates` distinct factor expressions scored on the 300 x 2520 synthetic market.
The two modes alternate (off, on, on, off) and each figure is the median of its two runs, so a drift
in the machine's speed does not favour one. Caching is off throughout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sandbox import candidates, factor_spec, overhead  # noqa: E402

from sandbox import Limits, LocalExecutor  # noqa: E402
from sandbox.jail import jail_unavailable_reason  # noqa: E402
from sandbox.seccomp import seccomp_unavailable_reason  # noqa: E402

LIMITS = Limits(wall_seconds=120, cpu_seconds=240, memory_mb=4096)
GENERATED = (
    "import numpy as np\ndef factor(fields):\n    return fields['close'] / np.roll(fields['close'], {i}, axis=1)\n"
)


def executor(on: bool, workers: int, root: Path) -> LocalExecutor:
    return LocalExecutor(
        workers=workers, root=root, limits=LIMITS, use_cache=False, jail=on, seccomp=on, landlock=False
    )


def measure(on: bool, args, root: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    starts = []
    for i in range(args.starts):
        with executor(on, args.workers, root / f"start{i}") as ex:
            t0 = time.perf_counter()
            ex.worker_pids()  # starts the pool, waits for every worker's ready message
            starts.append(time.perf_counter() - t0)
    out["start_s"] = statistics.median(starts)
    with executor(on, args.workers, root / "run") as ex:
        caps = ex.capabilities
        assert caps["jail"] == on and caps["seccomp"] == on, caps
        out["overhead_ms"], out["work_ms"] = overhead(ex, "synthetic:60:400:0", args.overhead_experiments)
        walls = []
        for i in range(args.generated):
            spec = {
                "kind": "factor",
                "market": "synthetic:60:400:0",
                "report": "screen",
                "code": GENERATED.format(i=i + 1),
            }
            t0 = time.perf_counter()
            result = ex.run(spec)
            walls.append(time.perf_counter() - t0)
            assert result.ok, result.failure
        out["generated_s"] = statistics.median(walls)
        specs = [factor_spec(args.market, f"c{i}", e) for i, e in enumerate(candidates(args.candidates))]
        ex.run(factor_spec(args.market, "warm", "$close"))
        t0 = time.perf_counter()
        results = ex.run_many(specs)
        out["throughput_s"] = time.perf_counter() - t0
        assert all(r.ok for r in results), [r.failure for r in results if not r.ok][:3]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--generated", type=int, default=10)
    ap.add_argument("--overhead-experiments", type=int, default=200)
    ap.add_argument("--market", default="synthetic:300:2520:0")
    args = ap.parse_args()
    why = jail_unavailable_reason() or seccomp_unavailable_reason()
    if why:
        raise SystemExit(f"the jail cannot run here: {why}")
    runs: dict[bool, list[dict]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for n, on in enumerate((False, True, True, False)):
            runs[on].append(measure(on, args, Path(tmp) / f"{n}"))
            print(f"  run {n + 1}/4 ({'jail' if on else 'no jail'}): {runs[on][-1]}", flush=True)
    off = {k: statistics.median(r[k] for r in runs[False]) for k in runs[False][0]}
    on = {k: statistics.median(r[k] for r in runs[True]) for k in runs[True][0]}
    rows = [
        ("worker pool start (all ready)", "start_s", "s", 1),
        ("overhead per warm experiment", "overhead_ms", "ms", 1),
        ("a generated-code experiment (fresh worker)", "generated_s", "s", 2),
        (f"{args.candidates} factors scored, {args.workers} workers", "throughput_s", "s", 1),
    ]
    print(f"\n{'':45} {'no jail':>9} {'jail':>9} {'added':>9} {'ratio':>6}")
    for label, key, unit, digits in rows:
        print(
            f"{label:45} {off[key]:>7.{digits}f}{unit:>2} {on[key]:>7.{digits}f}{unit:>2} "
            f"{on[key] - off[key]:>+7.{digits}f}{unit:>2} {on[key] / off[key]:>6.2f}"
        )


if __name__ == "__main__":
    main()
