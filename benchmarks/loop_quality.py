#!/usr/bin/env python
"""Does the research loop find what is there? Run it on a market, then check discoveries and the sealed test.

    python benchmarks/loop_quality.py [--budget 30] [--data synthetic:300:2520:0] [--root DIR] [--run-id ID]

On the synthetic market: for each planted alpha, the accepted factor with the highest |value
correlation| (mean daily cross-sectional Pearson over the validation segment); "found" means > 0.8.
On any market: the final model (base features + accepted factors + best model settings) vs the
Alpha158 + LightGBM baseline on the sealed test segment (`rdquant report`'s numbers), plus timings:
the loop's wall time and peak RSS (the `rdquant loop` process and its sandbox workers), and each
direction's iteration seconds (mean and max) as the run stored them. `--budget 5 --data sp500` is
the README's main job.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.loop import open_project  # noqa: E402
from agents.report import build_report  # noqa: E402
from agents.runs import run_summary  # noqa: E402
from agents.store import IterationRow  # noqa: E402
from quantcore.data.sources import load_market  # noqa: E402
from quantcore.data.synthetic import PLANTED_ALPHAS  # noqa: E402
from quantcore.evaluate.correlation import library_correlation  # noqa: E402
from quantcore.expr.evaluate import Evaluator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--data", default="synthetic:300:2520:0")
    ap.add_argument("--root", type=Path, default=Path("runs/quality"))
    ap.add_argument("--run-id", help="analyse an existing run instead of starting one")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if args.run_id is None:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-c", "from agents.cli import main; main()", "loop", "--budget", str(args.budget),
               "--offline", "--data", args.data, "--root", str(args.root), "--workers", str(args.workers)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        args.run_id = out.strip().splitlines()[-1]
        rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # largest child process, KiB
        print(f"loop --budget {args.budget} on {args.data}: {time.perf_counter() - t0:.0f} s, "
              f"peak RSS {rss_gib:.2f} GiB, run {args.run_id}")
    store = open_project(args.root)
    for direction in ("factor", "model"):
        seconds = [r.seconds for r in store.rows(IterationRow, args.run_id) if r.direction == direction]
        if seconds:
            print(f"{direction} iterations: {len(seconds)}, {np.mean(seconds):.1f} s mean, {max(seconds):.1f} s max")
    summary = run_summary(store, args.run_id)
    accepted = {f["name"]: f["expression"] for f in summary["accepted"]}
    print(f"accepted factors: {len(accepted)}; iterations: {summary['iterations']}")
    if args.data.startswith("synthetic"):
        panel = load_market(args.data)
        valid = panel.date_index(*summary["segments"]["valid"])
        ev = Evaluator(panel)
        arrays = ev.evaluate(accepted, dtype=np.float64) if accepted else {}
        found = 0
        for alpha in PLANTED_ALPHAS:
            planted = ev.evaluate({"p": alpha.expression}, dtype=np.float64)["p"][:, valid]
            corr = library_correlation(planted, {k: v[:, valid] for k, v in arrays.items()}, 30)
            best = max(corr.items(), key=lambda kv: abs(kv[1].daily_mean), default=(None, None))
            value = abs(best[1].daily_mean) if best[0] else 0.0
            found += value > 0.8
            print(f"  planted {alpha.name:18s} {alpha.expression:28s} best match "
                  f"{best[0] or '-'} ({accepted.get(best[0], '')}) |corr| {value:.2f}{'  FOUND' if value > 0.8 else ''}")
        print(f"planted alphas found (|value corr| > 0.8): {found} of {len(PLANTED_ALPHAS)}")
    path, headline = build_report(store, args.root, args.run_id, workers=args.workers)
    print("sealed test segment:   " + "  ".join(f"{k:>14s}" for k in headline["baseline"]))
    for name in ("baseline", "final"):
        print(f"  {name:20s} " + "  ".join(f"{v:14.4f}" for v in headline[name].values()))
    print(f"report: {path}")
    print(json.dumps({"run_id": args.run_id, "headline": headline}))


if __name__ == "__main__":
    main()
