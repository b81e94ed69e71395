#!/usr/bin/env python
"""Alpha158 speed: rdquant vs pyqlib 0.9.7 (caches off) vs a pure-pandas implementation, side by side.

    python benchmarks/bench_alpha158.py [--instruments 300 --days 2520] [--repeat 3] \
        [--qlib-python ~/qlibref/bin/python] [--qlib-kernels 2] [--no-qlib] [--no-pandas]

Every measurement is a fresh process (cold: no expression cache, nothing warmed) reading the same
qlib-format directory; the runs alternate rdquant / qlib so machine drift hits both alike, and the
ratio is taken pair by pair. Times are the computation alone (data already on disk, import excluded),
as qlib's reference script reports them. Also: peak RSS of the rdquant process, and single-expression
latency for typical Alpha158-sized expressions. Each rdquant run also reports the CPU time of its
timed region: system time is mostly the kernel zeroing fresh pages (the 409 MiB frame among them),
cheap on a laptop but several times dearer on a VM whose host has reclaimed the memory (right after
another large process exits), which is where this benchmark's spread comes from.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

SINGLE_EXPRESSIONS = {
    "MA20": "Mean($close, 20)/$close",
    "CORR20": "Corr($close, Log($volume+1), 20)",
    "CORD20": "Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), 20)",
    "QTLU20": "Quantile($close, 20, 0.8)/$close",
    "RSV20": "($close-Min($low, 20))/(Max($high, 20)-Min($low, 20)+1e-12)",
    "SUMD20": "(Sum(Greater($close-Ref($close, 1), 0), 20)-Sum(Greater(Ref($close, 1)-$close, 0), 20))"
    "/(Sum(Abs($close-Ref($close, 1)), 20)+1e-12)",
    "WVMA60": "Std(Abs($close/Ref($close, 1)-1)*$volume, 60)/(Mean(Abs($close/Ref($close, 1)-1)*$volume, 60)+1e-12)",
    "RANK60": "Rank($close, 60)",
}


def worker(data_dir: str, backend: str, threads: int | None) -> None:
    """Child process: load the market, compute Alpha158 once, print timing JSON."""
    from quantcore.data.qlib_format import read_qlib
    from quantcore.expr.evaluate import Evaluator
    from quantcore.features import alpha158

    panel = read_qlib(data_dir)
    if backend == "pandas":
        from quantcore._ext import reference as kernel_backend
    else:
        from quantcore import kernels as kernel_backend
    evaluator = Evaluator(panel, threads=threads, backend=kernel_backend)
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    frame = evaluator.frame(alpha158())
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    rss = after.ru_maxrss / 1024  # KiB -> MiB on Linux
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mib": rss,
                "shape": list(frame.shape),
                "cpu_user": after.ru_utime - before.ru_utime,
                "cpu_sys": after.ru_stime - before.ru_stime,
            }
        )
    )


def run_ours(data_dir: Path, backend: str = "kernels", threads: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(data_dir), "--backend", backend]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_qlib(qlib_python: Path, reference: Path, data_dir: Path, kernels: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            str(qlib_python),
            str(reference),
            "features",
            str(data_dir),
            f"{tmp}/q.parquet",
            "--alpha158",
            "--kernels",
            str(kernels),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    m = re.search(r"qlib D.features: ([\d.]+) s", proc.stdout)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"qlib reference failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return float(m.group(1))


def single_expression_latency(data_dir: Path, repeat: int = 7) -> dict[str, float]:
    """Median wall time (ms) to evaluate one new expression on the panel, no cache, warm process."""
    from quantcore.data.qlib_format import read_qlib
    from quantcore.expr.evaluate import Evaluator

    panel = read_qlib(data_dir)
    Evaluator(panel).evaluate({"warm": "Mean($close, 5)"})  # first call pays one-off import/JIT-free setup
    out = {}
    for name, expr in SINGLE_EXPRESSIONS.items():
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            Evaluator(panel).evaluate({name: expr})
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times) * 1e3
    return out


def main() -> None:
    from qlib_parity import DEFAULT_QLIB_PYTHON, DEFAULT_REFERENCE

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instruments", type=int, default=300)
    ap.add_argument("--days", type=int, default=2520)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--qlib-python", type=Path, default=Path(os.environ.get("RDQUANT_QLIB_PYTHON", DEFAULT_QLIB_PYTHON))
    )
    ap.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    ap.add_argument("--qlib-kernels", type=int, default=2, help="qlib worker processes (2 = both cores)")
    ap.add_argument("--no-qlib", action="store_true")
    ap.add_argument("--no-pandas", action="store_true")
    ap.add_argument("--pandas-instruments", type=int, default=30, help="universe size for the pandas-twin ratio")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="kernels", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.backend, args.threads)
        return

    from quantcore.data.qlib_format import write_qlib
    from quantcore.data.synthetic import synth_market

    use_qlib = not args.no_qlib and args.qlib_python.exists() and args.reference.exists()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "qlib_data"
        write_qlib(synth_market(n_instruments=args.instruments, n_days=args.days, seed=args.seed), data_dir)
        print(
            f"market: synthetic {args.instruments} x {args.days} (seed {args.seed}), qlib format; "
            f"{os.cpu_count()} cores"
        )
        ours, theirs = [], []
        for i in range(args.repeat):
            ours.append(run_ours(data_dir))
            if use_qlib:
                theirs.append(run_qlib(args.qlib_python, args.reference, data_dir, args.qlib_kernels))
            line = (
                f"  run {i + 1}: rdquant {ours[-1]['seconds']:.3f} s (CPU user {ours[-1]['cpu_user']:.2f} s, "
                f"sys {ours[-1]['cpu_sys']:.2f} s; peak RSS {ours[-1]['peak_rss_mib']:.0f} MiB)"
            )
            if use_qlib:
                line += f" | qlib {theirs[-1]:.2f} s | ratio {theirs[-1] / ours[-1]['seconds']:.1f}x"
            print(line, flush=True)
        med = statistics.median(r["seconds"] for r in ours)
        print(
            f"rdquant Alpha158 cold: median {med:.3f} s, shape {ours[0]['shape']}, "
            f"peak RSS max {max(r['peak_rss_mib'] for r in ours):.0f} MiB"
        )
        if use_qlib:
            ratios = [q / o["seconds"] for q, o in zip(theirs, ours)]
            print(
                f"pyqlib 0.9.7 ({args.qlib_kernels} kernels, caches off): median {statistics.median(theirs):.2f} s; "
                f"speed-up median {statistics.median(ratios):.1f}x (min {min(ratios):.1f}x, max {max(ratios):.1f}x)"
            )
        else:
            print("pyqlib: skipped (no --qlib-python with pyqlib, or --no-qlib)")
        print(
            f"  (for scale: the output frame alone is {ours[0]['shape'][0] * ours[0]['shape'][1] * 4 / 2**20:.0f} MiB "
            "of float32, written once)"
        )
        one = run_ours(data_dir, threads=1)
        print(f"rdquant with 1 kernel thread: {one['seconds']:.3f} s")
        if not args.no_pandas:
            # The pandas twin loops over instruments in Python (minutes at full size), so both engines
            # are timed on the same smaller universe and the ratio is reported.
            small_dir = Path(tmp) / "qlib_small"
            write_qlib(synth_market(n_instruments=args.pandas_instruments, n_days=args.days, seed=args.seed), small_dir)
            pandas_run = run_ours(small_dir, backend="pandas")
            ours_small = run_ours(small_dir)
            print(
                f"pure-pandas twin (same evaluator, pandas per-instrument kernels), {args.pandas_instruments} x "
                f"{args.days}: {pandas_run['seconds']:.2f} s vs rdquant {ours_small['seconds']:.3f} s: "
                f"rdquant is {pandas_run['seconds'] / ours_small['seconds']:.1f}x faster"
            )
        latency = single_expression_latency(data_dir)
        print("single new expression (no cache), median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in latency.items()))


if __name__ == "__main__":
    main()
