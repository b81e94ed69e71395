#!/usr/bin/env python
"""Sandbox figures: per-experiment overhead, screening throughput and worker memory over time.

    python benchmarks/bench_sandbox.py [--workers 2] [--candidates 1000] [--rss-experiments 2000] [--ray]

- overhead: a tiny experiment (one cheap expression on a small market) run N times through the pool;
  overhead = wall time per experiment minus the work time the worker measured, per worker.
- throughput: `--candidates` distinct factor expressions (Alpha158's operators x fields x windows)
  scored (IC, RankIC, ICIR on the valid segment) on the 300 x 2520 synthetic market.
- memory: proportional set size (PSS: shared market pages split between the workers) of every worker
  sampled every 100 experiments over `--rss-experiments` experiments; it must stay flat.
Caching is off throughout, so every experiment really runs. Runnable with public tools only.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox import Limits, LocalExecutor  # noqa: E402

FIELDS = ("$close", "$open", "$high", "$low", "$vwap", "$volume")
WINDOWS = (3, 5, 7, 10, 14, 15, 20, 25, 30, 40, 50, 60)
TEMPLATES = (
    "Mean({f}, {w})/{f}",
    "Std({f}, {w})/{f}",
    "Ref({f}, {w})/{f}",
    "Max({f}, {w})/{f}",
    "Min({f}, {w})/{f}",
    "Quantile({f}, {w}, 0.8)/{f}",
    "Rank({f}, {w})",
    "Slope({f}, {w})/{f}",
    "Rsquare({f}, {w})",
    "IdxMax({f}, {w})/{w}",
    "Corr({f}, Log($volume+1), {w})",
    "({f}-Min({f}, {w}))/(Max({f}, {w})-Min({f}, {w})+1e-12)",
    "CSRank(Mean({f}/Ref({f}, 1), {w}))",
    "Sum(Greater({f}-Ref({f}, 1), 0), {w})/(Sum(Abs({f}-Ref({f}, 1)), {w})+1e-12)",
    "EMA({f}, {w})/{f}",
    "WMA({f}, {w})/{f}",
)


def candidates(n: int) -> list[str]:
    """n distinct expressions in a fixed order (templates x fields x windows, cycled)."""
    out = [t.format(f=f, w=w) for w, t, f in itertools.product(WINDOWS, TEMPLATES, FIELDS)]
    if n > len(out):
        raise SystemExit(f"only {len(out)} distinct candidates available")
    return out[:n]


def factor_spec(market: str, name: str, expr: str) -> dict:
    return {"kind": "factor", "market": market, "expressions": {name: expr}, "report": "screen"}


def make_executor(kind: str, workers: int, root: Path, batch_size: int):
    limits = Limits(wall_seconds=120, cpu_seconds=240, memory_mb=4096)
    if kind == "ray":
        from sandbox.ray_executor import RayExecutor

        return RayExecutor(workers=workers, root=root, limits=limits, use_cache=False, batch_size=batch_size)
    return LocalExecutor(workers=workers, root=root, limits=limits, use_cache=False, batch_size=batch_size)


def overhead(executor, market: str, n: int) -> tuple[float, float]:
    """(ms per experiment of overhead, ms of work) for a tiny experiment run n times."""
    specs = [factor_spec(market, "f", f"Mean($close, 5)/$close + {i}") for i in range(n)]
    executor.run_many(specs[:4])  # warm: workers started, market attached, label cached
    t0 = time.perf_counter()
    results = executor.run_many(specs)
    wall = time.perf_counter() - t0
    assert all(r.ok for r in results), [r.failure for r in results if not r.ok][:3]
    work = sum(r.seconds for r in results)
    workers = executor.n_workers
    return (wall * workers - work) / n * 1e3, work / n * 1e3


def pss_mib(pid: int) -> float:
    """PSS of `pid` and every process under it (a jailed worker is bwrap, its namespace's init, then
    the interpreter)."""
    total, found = 0.0, False
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) / 1024
                        found = True
        except OSError:
            pass
    return total if found else float("nan")


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--rss-experiments", type=int, default=2000)
    ap.add_argument("--overhead-experiments", type=int, default=200)
    ap.add_argument("--market", default="synthetic:300:2520:0")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--ray", action="store_true", help="also run the overhead and throughput parts on Ray")
    args = ap.parse_args()
    kinds = ["local"] + (["ray"] if args.ray else [])
    exprs = candidates(max(args.candidates, 1))
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            with make_executor(kind, args.workers, Path(tmp) / kind, args.batch_size) as ex:
                t0 = time.perf_counter()
                ex.run(factor_spec(args.market, "warm", "$close"))
                print(
                    f"[{kind}] {args.workers} workers up and market exported/attached in {time.perf_counter() - t0:.1f} s"
                )
                over, work = overhead(ex, "synthetic:60:400:0", args.overhead_experiments)
                print(
                    f"[{kind}] per-experiment overhead: {over:.1f} ms beyond {work:.1f} ms of work "
                    f"({args.overhead_experiments} tiny experiments, 60 x 400 market)"
                )
                specs = [factor_spec(args.market, f"c{i}", e) for i, e in enumerate(exprs[: args.candidates])]
                t0 = time.perf_counter()
                results = ex.run_many(specs)
                wall = time.perf_counter() - t0
                ok = [r for r in results if r.ok]
                failed = {}
                for r in results:
                    if not r.ok:
                        failed[r.failure.category.value] = failed.get(r.failure.category.value, 0) + 1
                per = statistics.median(r.seconds for r in ok) * 1e3 if ok else float("nan")
                print(
                    f"[{kind}] screening: {len(specs)} candidate factors scored (IC, RankIC, ICIR) on {args.market} "
                    f"in {wall:.1f} s ({len(specs) / wall:.1f}/s); {len(ok)} ok, failures {failed or 'none'}; "
                    f"median work {per:.0f} ms per factor"
                )
        if args.rss_experiments:
            with make_executor("local", args.workers, Path(tmp) / "rss", args.batch_size) as ex:
                pids = ex.worker_pids()
                pool = candidates(len(WINDOWS) * len(TEMPLATES) * len(FIELDS))
                samples = []
                done = 0
                while done < args.rss_experiments:
                    chunk = [
                        factor_spec(args.market, "f", pool[(done + i) % len(pool)] + f" + {done + i}")
                        for i in range(100)
                    ]
                    ex.run_many(chunk)
                    done += len(chunk)
                    if ex.worker_pids() != pids:
                        print("  (a worker was replaced; memory series restarts)")
                        pids = ex.worker_pids()
                    samples.append((done, [pss_mib(p) for p in pids]))
                series = ", ".join(f"{n}: {sum(v):.0f}" for n, v in samples[:: max(1, len(samples) // 10)])
                first, last = sum(samples[0][1]), sum(samples[-1][1])
                warm = sum(samples[min(2, len(samples) - 1)][1])
                print(f"[local] worker memory (PSS, all workers, MiB) after N experiments: {series}")
                print(
                    f"[local] after {samples[0][0]}: {first:.0f} MiB, after {samples[-1][0]}: {last:.0f} MiB "
                    f"(growth after warm-up: {last - warm:+.0f} MiB)"
                )


if __name__ == "__main__":
    main()
