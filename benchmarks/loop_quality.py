#!/usr/bin/env python
"""Does the research loop discover what is there, and only that? Runs `rdquant loop` (offline) on
synthetic markets with random planted alphas, one fresh project per market, then scores the run.

    python benchmarks/loop_quality.py --seeds 0 1 2 [--budget 30] [--size 300:2520] [--alphas 4]
    python benchmarks/loop_quality.py --data sp500 --seeds 0 [--budget 30]   # a real market: no recall
    python benchmarks/loop_quality.py --seeds 0 1 2 --alphas 0          # null markets: nothing to find
    python benchmarks/loop_quality.py --data sp500 --label 'Ref($close, -62)/Ref($close, -61) - 1'
                                                   # S&P 500 with its label 60 days in the future: a null

Per synthetic market (the loop's seed is the market's seed; the loop never sees the planted list):
  * recall: of the planted alphas the base feature set does NOT already hold (no Alpha158 column with
    mean daily |value correlation| > 0.8 on the validation segment), the share with an accepted factor
    at |value correlation| > 0.8;
  * unmatched: accepted factors whose |value correlation| with every planted alpha is below 0.5;
  * the sealed test segment, baseline (Alpha158 + LightGBM) vs final model (`rdquant report`'s numbers);
  * model replacements: "replace the best model" decisions after the baseline (on a null market, every
    one is false);
  * the loop's wall time, factor-iteration seconds (mean, max), candidates screened, and the peak RSS
    of the loop process tree (the largest process: loop or a sandbox worker).
`--out FILE` also writes the summary table as Markdown (for docs/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.loop import open_project  # noqa: E402
from agents.report import build_report  # noqa: E402
from agents.runs import run_summary  # noqa: E402
from agents.store import DecisionRow, IterationRow, TrialRow  # noqa: E402
from quantcore.data.sources import load_market  # noqa: E402
from quantcore.data.synthetic import planted_alphas  # noqa: E402
from quantcore.evaluate.correlation import library_correlation  # noqa: E402
from quantcore.expr.evaluate import Evaluator  # noqa: E402
from quantcore.features import alpha158  # noqa: E402

FOUND, MATCH = 0.8, 0.5


def run_loop(
    data: str, seed: int, budget: int, workers: int, root: Path, label: str | None
) -> tuple[str, float, float]:
    """(run id, wall seconds, peak RSS GiB of the largest process of the loop's tree)."""
    cmd = [
        sys.executable,
        "-c",
        "from agents.cli import main; main()",
        "loop",
        "--budget",
        str(budget),
        "--offline",
        "--data",
        data,
        "--seed",
        str(seed),
        "--root",
        str(root),
        "--workers",
        str(workers),
    ]
    cmd += ["--label", label] if label else []
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as errs:
        proc = subprocess.Popen(cmd, stdout=out, stderr=errs, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        _, status, usage = os.wait4(proc.pid, 0)  # this child's tree only (a worker is its largest process)
        wall = time.perf_counter() - t0
        out.seek(0)
        errs.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"loop on {data} failed:\n{errs.read()[-3000:]}")
        return out.read().strip().splitlines()[-1], wall, usage.ru_maxrss / 2**20  # KiB -> GiB


def _max_abs_corr(x: np.ndarray, others: dict[str, np.ndarray]) -> tuple[str | None, float]:
    corr = library_correlation(x, others, 30)
    if not corr:
        return None, 0.0
    name = max(corr, key=lambda k: abs(np.nan_to_num(corr[k].daily_mean)))
    return name, abs(float(np.nan_to_num(corr[name].daily_mean)))


def score_market(data: str, seed: int, n_alphas: int, root: Path, run_id: str, workers: int) -> dict:
    store = open_project(root)
    summary = run_summary(store, run_id)
    # the library the run ends with (the final model's extra features): refined-out factors are not in it
    accepted = summary["library"]
    replaced = sum(1 for f in summary["accepted"] if f["name"] not in accepted)
    factor_s = [r.seconds for r in store.rows(IterationRow, run_id) if r.direction == "factor"]
    screened = sum(1 for t in store.rows(TrialRow, run_id) if t.stage == "screen")
    replacements = sum(1 for d in store.rows(DecisionRow, run_id) if d.verdict == "replace_best" and d.iteration > 0)
    out = {
        "data": data,
        "run_id": run_id,
        "accepted": len(accepted),
        "replaced": replaced,
        "screened": screened,
        "model_replacements": replacements,
        "factor_iterations": len(factor_s),
        "factor_s_mean": float(np.mean(factor_s)) if factor_s else None,
        "factor_s_max": float(max(factor_s)) if factor_s else None,
    }
    if data.startswith("synthetic"):
        panel = load_market(data)
        valid = panel.date_index(*summary["segments"]["valid"])
        ev = Evaluator(panel)
        planted = planted_alphas(seed, n_alphas)
        values = ev.evaluate({f"p{i}": a.expression for i, a in enumerate(planted)}, dtype=np.float64)
        planted_v = {a.expression: values[f"p{i}"][:, valid] for i, a in enumerate(planted)}
        base = {k: v[:, valid] for k, v in ev.evaluate(alpha158(), dtype=np.float64).items()}
        mined = {k: v[:, valid] for k, v in ev.evaluate(accepted, dtype=np.float64).items()} if accepted else {}
        rows, findable, found = [], 0, 0
        for expr, x in planted_v.items():
            base_name, base_corr = _max_abs_corr(x, base)
            best, corr = _max_abs_corr(x, mined)
            held = base_corr > FOUND
            findable += not held
            found += (not held) and corr > FOUND
            rows.append(
                {
                    "planted": expr,
                    "base": base_name,
                    "base_corr": base_corr,
                    "best": accepted.get(best, ""),
                    "corr": corr,
                    "held_by_base": held,
                    "found": corr > FOUND,
                }
            )
        unmatched = (
            [k for k, v in mined.items() if _max_abs_corr(v, planted_v)[1] < MATCH] if planted_v else list(mined)
        )
        out.update(
            {
                "planted": rows,
                "findable": findable,
                "found": found,
                "recall": found / findable if findable else None,
                "unmatched": len(unmatched),
            }
        )
    _, headline = build_report(store, root, run_id, workers=workers)
    out["test"] = headline
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--size", default="300:2520", help="N:T of the synthetic markets")
    ap.add_argument("--alphas", type=int, default=4, help="planted alphas per market (0: null markets)")
    ap.add_argument("--data", help="one market spec instead of synthetic ones (e.g. sp500), run once per seed")
    ap.add_argument("--label", help="the loop's label expression (default: the loop's own)")
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--root", type=Path, default=Path("runs/quality"))
    ap.add_argument("--out", type=Path, help="also write the summary as a Markdown table")
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="score the runs already in --root again (no new loop; wall time and RSS read from the "
        "first scoring's JSON next to them)",
    )
    args = ap.parse_args()
    markets = (
        [(args.data, s) for s in args.seeds]
        if args.data
        else [(f"synthetic:{args.size}:{s}:{args.alphas}", s) for s in args.seeds]
    )
    results = []
    for data, seed in markets:
        root = args.root / (data.replace(":", "_") + (f"_seed{seed}" if args.data else ""))
        timing = root / "loop_timing.json"
        if not args.rescore and (root / "rdquant.db").exists():
            raise SystemExit(
                f"{root} already holds a project: the benchmark needs a fresh one per market "
                "(remove it, pick another --root, or --rescore it)"
            )
        if args.rescore:
            run_id, wall, rss = (json.loads(timing.read_text())[k] for k in ("run_id", "wall_s", "peak_rss_gib"))
        else:
            run_id, wall, rss = run_loop(data, seed, args.budget, args.workers, root, args.label)
            timing.write_text(json.dumps({"run_id": run_id, "wall_s": wall, "peak_rss_gib": rss}))
        res = score_market(data, seed, args.alphas, root, run_id, args.workers)
        res["seed"] = seed
        res.update({"wall_s": wall, "peak_rss_gib": rss})
        results.append(res)
        _print(res)
    lines = _table(results)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    print(json.dumps(results, default=float))


def _print(r: dict) -> None:
    print(
        f"\n{r['data']} (seed {r.get('seed', '-')}): run {r['run_id']}, {r['model_replacements']} model replacements, {r['wall_s']:.0f} s, peak RSS {r['peak_rss_gib']:.2f} GiB, "
        f"{r['accepted']} in the library ({r['replaced']} more refined out) of {r['screened']} screened; factor iterations {r['factor_iterations']} "
        f"({r['factor_s_mean'] or 0:.1f} s mean, {r['factor_s_max'] or 0:.1f} s max)"
    )
    for p in r.get("planted", []):
        tag = "held by base" if p["held_by_base"] else ("FOUND" if p["found"] else "missed")
        print(
            f"  planted {p['planted']:55s} base {p['base']} {p['base_corr']:.2f}; best {p['best'][:50]} "
            f"{p['corr']:.2f}  {tag}"
        )
    t = r["test"]
    print("  sealed test " + ", ".join(f"{k} {t['baseline'][k]:+.4f} -> {t['final'][k]:+.4f}" for k in t["baseline"]))


def _table(results: list[dict]) -> list[str]:
    lines = [
        "| market | seed | recall (found / findable) | accepted | unmatched | model replacements | "
        "test RankIC baseline -> final | wall | factor iteration mean / max | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r["test"]
        key = "Rank IC" if "Rank IC" in t["baseline"] else next(iter(t["baseline"]))
        recall = f"{r['found']} / {r['findable']}" if "found" in r else "-"
        lines.append(
            f"| {r['data']} | {r.get('seed', '-')} | {recall} | {r['accepted']} | {r.get('unmatched', '-')} | "
            f"{r['model_replacements']} | "
            f"{t['baseline'][key]:.4f} -> {t['final'][key]:.4f} | {r['wall_s']:.0f} s | "
            f"{r['factor_s_mean'] or 0:.1f} / {r['factor_s_max'] or 0:.1f} s | {r['peak_rss_gib']:.2f} GiB |"
        )
    findable = sum(r.get("findable", 0) for r in results)
    if findable:
        recalls = [r["recall"] for r in results if r.get("recall") is not None]
        lines.append(
            f"| average | | {np.mean(recalls):.0%} ({sum(r['found'] for r in results)} / {findable}) | "
            f"{np.mean([r['accepted'] for r in results]):.1f} | "
            f"{np.mean([r['unmatched'] for r in results]):.1f} | "
            f"{np.mean([r['model_replacements'] > 0 for r in results]):.0%} of runs | | | | |"
        )
    else:
        lines.append(
            f"| total | | | {sum(r['accepted'] for r in results)} | | "
            f"{sum(r['model_replacements'] > 0 for r in results)} of {len(results)} runs | | | | |"
        )
    if any(r.get("planted") for r in results):
        lines += [
            "",
            "Each planted alpha, the closest Alpha158 column and the closest factor of the final library",
            "(mean daily |value correlation| on the validation segment):",
            "",
            "| market | planted alpha | best Alpha158 column (\\|corr\\|) | best accepted factor (\\|corr\\|) | |",
            "|---|---|---|---|---|",
        ]
        for r in results:
            for p in r.get("planted", []):
                tag = "held by the base set" if p["held_by_base"] else ("**found**" if p["found"] else "missed")
                best = p["best"] if len(p["best"]) <= 70 else p["best"][:70] + "..."
                lines.append(
                    f"| {r['data']} | `{p['planted']}` | {p['base']} ({p['base_corr']:.2f}) | `{best}` "
                    f"({p['corr']:.2f}) | {tag} |"
                )
    lines += [
        "",
        "Sealed test segment, Alpha158 + LightGBM baseline -> final model (base features + the library +",
        "the best model settings), `rdquant report`'s numbers:",
        "",
        "| market | IC | Rank IC | ARR with cost | IR with cost | MDD with cost |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        b, f = r["test"]["baseline"], r["test"]["final"]
        lines.append(
            f"| {r['data']}, seed {r.get('seed', '-')} | {b['IC']:.4f} -> {f['IC']:.4f} | {b['Rank IC']:.4f} -> {f['Rank IC']:.4f} | "
            f"{b['ARR.with_cost']:.1%} -> {f['ARR.with_cost']:.1%} | {b['IR.with_cost']:.2f} -> "
            f"{f['IR.with_cost']:.2f} | {b['MDD.with_cost']:.1%} -> {f['MDD.with_cost']:.1%} |"
        )
    return lines


if __name__ == "__main__":
    main()
