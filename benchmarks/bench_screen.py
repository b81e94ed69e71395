#!/usr/bin/env python
"""Screening and admission cost of factor candidates with originality checks against Alpha158.

    python benchmarks/bench_screen.py [--workers 2] [--candidates 200] [--chunk 16] [--market synthetic:300:2520:0]
                                      [--residual 10]

- screen: `--candidates` seeded expressions (operators x fields x windows over the grammar) as screening
  specs (report "screen" on the train segment, base_features "alpha158", corr_days 60, `--chunk`
  expressions per spec, and with `--residual K` (the loop's default, 10) each candidate's residual
  RankIC beyond Alpha158's top K principal components and the 10-factor library, as the loop's screen
  scores it) through LocalExecutor. Timed from warm workers (started, market attached), so
  the batch includes each worker's first evaluation of Alpha158; the same batch again (caching off)
  shows the cost without it, and their difference is the base-feature evaluation.
- admission: 4 candidates, one full-report spec each (as the loop's admission), on the valid segment
  with base_features "alpha158", a 10-factor library, lookahead_check and pair_threshold 0.7.
- memory: every worker's peak resident set (VmHWM; includes its share of the memory-mapped market).
Each batch also prints the workers' CPU seconds: on a shared machine its wall time depends on the
neighbours, CPU time per worker is what it would take on idle cores.
Targets: screen < 15 s for 200 candidates on 2 workers; admission well under 10 s.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantcore.data.sources import load_market  # noqa: E402
from sandbox import Limits, LocalExecutor  # noqa: E402
from sandbox.spec import default_segments  # noqa: E402

FIELDS = ("$close", "$open", "$high", "$low", "$vwap", "$volume")
WINDOWS = (3, 5, 7, 10, 14, 20, 30, 40, 60)
# one-field shapes; {f} a field, {w} a window
UNARY = (
    "Mean({f}, {w})/{f}",
    "Std({f}, {w})/Mean({f}, {w})",
    "Ref({f}, {w})/{f}",
    "Max({f}, {w})/{f}",
    "Min({f}, {w})/{f}",
    "Quantile({f}, {w}, 0.8)/{f}",
    "Rank({f}, {w})",
    "Slope({f}, {w})/{f}",
    "Rsquare({f}, {w})",
    "IdxMax({f}, {w})/{w}",
    "({f}-Min({f}, {w}))/(Max({f}, {w})-Min({f}, {w})+1e-12)",
    "EMA({f}, {w})/{f}",
    "WMA({f}, {w})/{f}",
    "Sum(Greater({f}-Ref({f}, 1), 0), {w})/(Sum(Abs({f}-Ref({f}, 1)), {w})+1e-12)",
    "Skew({f}/Ref({f}, 1), {w})",
)
# two-field shapes
BINARY = (
    "Corr({f}, {g}, {w})",
    "Cov({f}/Ref({f},1), {g}/Ref({g},1), {w})",
    "Mean({f}/{g}, {w})",
    "({f}-{g})/({f}+{g}+1e-12)",
)
WRAPS = ("{e}", "{e}", "-{e}", "CSRank({e})", "Abs({e})", "Sign({e})*Log(Abs({e})+1)")
LIBRARY = {
    "lib_rev5": "-($close/Ref($close, 5) - 1)",
    "lib_mom20": "$close/Ref($close, 20) - 1",
    "lib_vol20": "Std($close/Ref($close, 1) - 1, 20)",
    "lib_range": "($high - $low)/$close",
    "lib_vwap": "$vwap/$close",
    "lib_turn": "$volume/Mean($volume, 20)",
    "lib_ma10": "Mean($close, 10)/$close",
    "lib_corr10": "Corr($close, Log($volume + 1), 10)",
    "lib_max30": "Max($high, 30)/$close",
    "lib_skew20": "Skew($close/Ref($close, 1), 20)",
}
ADMIT = {  # two repeat a library factor at another window (so pair_threshold has work), two are new
    "adm_rev6": "-($close/Ref($close, 6) - 1)",
    "adm_ma12": "Mean($close, 12)/$close",
    "adm_hl": "Corr($high/$low, $volume, 15)",
    "adm_gap": "Mean($open/Ref($close, 1) - 1, 10)",
}


def candidates(n: int, seed: int = 0) -> list[str]:
    """n distinct expressions drawn (seeded) from the shapes above."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        f, g = rng.sample(FIELDS, 2)
        w = rng.choice(WINDOWS)
        body = rng.choice(BINARY if rng.random() < 0.3 else UNARY).format(f=f, g=g, w=w)
        out.setdefault(rng.choice(WRAPS).format(e=f"({body})"), None)
    return list(out)


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants: a jailed worker runs two levels below the pid the executor reports
    (bubblewrap, then the namespace's init)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes and their descendants have used (all their threads): on a
    shared machine the wall time depends on the neighbours, this does not."""
    total = 0
    for pid in (p for root in pids for p in _tree(root)):
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pids: list[int]) -> list[float]:
    """Per worker, the largest peak resident set (VmHWM) in its process tree."""
    peaks = []
    for root in pids:
        best = 0.0
        for pid in _tree(root):
            with open(f"/proc/{pid}/status") as fh:
                best = max(best, next((int(line.split()[1]) for line in fh if line.startswith("VmHWM:")), 0) / 1024)
        peaks.append(best)
    return peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--corr-days", type=int, default=60)
    ap.add_argument("--market", default="synthetic:300:2520:0")
    ap.add_argument(
        "--residual",
        type=int,
        default=10,
        metavar="K",
        help="also score each candidate's residual RankIC beyond Alpha158's top K principal components "
        "and a 10-factor library, as the loop's screen does (0: raw RankIC only)",
    )
    args = ap.parse_args()

    segments = default_segments(load_market(args.market).calendar)
    exprs = candidates(args.candidates)
    names = [f"c{k:03d}" for k in range(len(exprs))]
    specs = [
        {
            "kind": "factor",
            "market": args.market,
            "report": "screen",
            "segment": list(segments["train"]),
            "base_features": "alpha158",
            "corr_days": args.corr_days,
            "expressions": dict(zip(names[lo : lo + args.chunk], exprs[lo : lo + args.chunk])),
            **(
                {
                    "library": LIBRARY,
                    "residual_components": args.residual,
                    "controls": sorted(LIBRARY),
                    "pair_threshold": 0.7,
                }
                if args.residual
                else {}
            ),
        }
        for lo in range(0, len(exprs), args.chunk)
    ]
    admission = [
        {
            "kind": "factor",
            "market": args.market,
            "segment": list(segments["valid"]),
            "expressions": {name: expr},
            "library": LIBRARY,
            "base_features": "alpha158",
            "lookahead_check": True,
            "pair_threshold": 0.7,
        }
        for name, expr in ADMIT.items()
    ]

    with tempfile.TemporaryDirectory() as tmp:
        limits = Limits(wall_seconds=300, cpu_seconds=600, memory_mb=4096)
        with LocalExecutor(workers=args.workers, root=Path(tmp), limits=limits, use_cache=False, batch_size=1) as ex:
            t0 = time.perf_counter()
            warm = ex.run_many(
                [
                    {
                        "kind": "factor",
                        "market": args.market,
                        "expressions": {"w": f"$close/$open+{k}"},
                        "report": "screen",
                    }
                    for k in range(args.workers)
                ]
            )
            assert all(r.ok for r in warm), [r.failure for r in warm if not r.ok]
            print(f"start-up (workers, market export and attach): {time.perf_counter() - t0:.1f} s (excluded)")

            def batch(label: str, todo: list[dict], n_candidates: int) -> list:
                pids = ex.worker_pids()
                t, cpu = time.perf_counter(), cpu_seconds(pids)
                results = ex.run_many(todo)
                wall = time.perf_counter() - t
                cpu = cpu_seconds(pids) - cpu
                bad = [r.failure for r in results if not r.ok]
                secs = sorted(r.seconds for r in results)
                print(
                    f"{label}: {wall:.2f} s wall for {n_candidates} candidates in {len(todo)} specs "
                    f"({1000 * wall / n_candidates:.0f} ms per candidate); worker CPU {cpu:.1f} s "
                    f"({1000 * cpu / n_candidates:.0f} ms per candidate, {cpu / len(pids):.1f} s per worker); "
                    f"machine load {os.getloadavg()[0]:.1f}; per spec in the worker: "
                    f"median {statistics.median(secs):.2f} s, max {secs[-1]:.2f} s; failed specs: {len(bad)}"
                )
                for f in bad[:3]:
                    print("   ", f.category.value, f.message[:200])
                return results

            first = batch("screen, first (incl. Alpha158 per worker)", specs, len(exprs))
            batch("screen, again (Alpha158 kept)       ", specs, len(exprs))
            scored = {
                k.split(".")[0]: v for r in first if r.ok for k, v in r.metrics.items() if k.endswith(".base_corr")
            }
            print(
                f"  base_corr over candidates: median {statistics.median(scored.values()):.2f}, "
                f">= 0.9: {sum(v >= 0.9 for v in scored.values())}"
            )
            adm = batch("admission, first (incl. Alpha158 on valid)", admission, len(admission))
            batch("admission, again                      ", admission, len(admission))
            for r in adm:
                if r.ok:
                    name = next(k for k in r.details if k in ADMIT)
                    d = r.details[name]
                    print(
                        f"  {name}: rank_ic {r.metrics[name + '.rank_ic']:+.4f}, base {d.get('base_correlation')}, "
                        f"library max {d.get('library_max')}, paired {sorted(r.details['library_daily_rank_ic'])}"
                    )
            peaks = peak_rss_mb(ex.worker_pids())
            print("worker peak RSS (VmHWM, MB): " + ", ".join(f"{p:.0f}" for p in peaks))


if __name__ == "__main__":
    main()
