#!/usr/bin/env python
"""Alpha158 + LightGBM + TopkDropout workflow, rdquant vs pyqlib 0.9.7, side by side.

    python benchmarks/bench_workflow.py [--instruments 300 --days 2520 --seed 0] [--repeat 1] \
        [--qlib-python ~/qlibref/bin/python] [--no-qlib]

Generates the synthetic market, writes it in qlib's binary format (with the `change` field qlib's
price limits read), then alternates fresh processes on that one directory: rdquant's workflow
(examples/alpha158_lightgbm_synthetic.yaml pointed at the directory, via `python -m quantcore.cli run`)
and benchmarks/qlib_workflow.py under pyqlib's interpreter (the same segments, processors, LightGBM
parameters and backtest settings, through qlib's public API with caches off). Wall times are whole
processes (imports included; rdquant also records the run in MLflow with plots, qlib records nothing).
Prints the median wall times, their ratio, each side's stage seconds, and both sides' IC / Rank IC /
annualised excess return so a reader can see they did the same work. pyqlib is not an rdquant
dependency: install it in its own venv (`python3.11 -m venv ~/qlibref && ~/qlibref/bin/pip install
pyqlib==0.9.7`). qlib's side takes minutes, hence --repeat 1 by default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "alpha158_lightgbm_synthetic.yaml"
QLIB_SCRIPT = REPO / "benchmarks" / "qlib_workflow.py"
DEFAULT_QLIB_PYTHON = Path.home() / "qlibref" / "bin" / "python"
SHOWN = ("IC", "Rank IC", "ARR.without_cost", "ARR.with_cost", "IR.with_cost")


def write_market(instruments: int, days: int, seed: int, out: Path) -> None:
    from quantcore.data.qlib_format import write_qlib
    from quantcore.data.synthetic import synth_market

    panel = synth_market(instruments, days, seed)
    close = panel.fields["close"]
    # qlib's exchange reads price limits from a `$change` field only; store it so both engines apply them
    change = np.full_like(close, np.nan)
    change[:, 1:] = close[:, 1:] / close[:, :-1] - 1.0
    write_qlib(replace(panel, fields={**panel.fields, "change": change}), out, overwrite=True)


def _json_line(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON result in the output:\n{stdout[-2000:]}")


def _timed(cmd: list[str], env: dict | None = None) -> tuple[float, dict]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return wall, _json_line(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instruments", type=int, default=300)
    ap.add_argument("--days", type=int, default=2520)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per side (qlib's side takes minutes)")
    ap.add_argument(
        "--qlib-python", type=Path, default=Path(os.environ.get("RDQUANT_QLIB_PYTHON", DEFAULT_QLIB_PYTHON))
    )
    ap.add_argument("--qlib-kernels", type=int, default=2, help="qlib expression workers (2 = both cores)")
    ap.add_argument("--no-qlib", action="store_true")
    args = ap.parse_args()
    run_qlib = not args.no_qlib
    if run_qlib and not args.qlib_python.exists():
        sys.exit(f"no pyqlib interpreter at {args.qlib_python}; pass --qlib-python or --no-qlib")

    cfg = yaml.safe_load(EXAMPLE.read_text())
    segs = cfg["dataset"]["segments"]
    threads = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        qdir = tmp / "qlib_data"
        t0 = time.perf_counter()
        write_market(args.instruments, args.days, args.seed, qdir)
        print(
            f"synth_market({args.instruments}, {args.days}, {args.seed}) written in qlib format in "
            f"{time.perf_counter() - t0:.1f} s; {threads} cores; repeat {args.repeat}"
        )
        cfg["data"]["market"] = str(qdir)
        workflow = tmp / "workflow.yaml"
        workflow.write_text(yaml.safe_dump(cfg, sort_keys=False))
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        # the quant core's own CLI (`rdquant run` is the same command behind the agent loop's imports)
        ours_cmd = [sys.executable, "-m", "quantcore.cli", "run", str(workflow), "--json"]
        qlib_cmd = [
            str(args.qlib_python),
            str(QLIB_SCRIPT),
            str(qdir),
            "--kernels",
            str(args.qlib_kernels),
            "--num-threads",
            str(threads),
        ]
        for seg in ("train", "valid", "test"):
            qlib_cmd += [f"--{seg}", *(str(d) for d in segs[seg])]

        ours, theirs = [], []
        for r in range(args.repeat):
            wall, out = _timed(ours_cmd + ["--root", str(tmp / f"runs{r}")], env)
            ours.append((wall, out))
            print(f"  run {r + 1}: rdquant {wall:6.1f} s", end="", flush=True)
            if run_qlib:
                wall, out = _timed(qlib_cmd, env)
                theirs.append((wall, out))
                print(f"   qlib {wall:6.1f} s", end="")
            print()

    med_ours = statistics.median(w for w, _ in ours)
    print(f"\nrdquant  {med_ours:7.1f} s  (median wall, whole process)")
    wall, out = ours[-1]
    startup = wall - sum(out["seconds"].values())
    print("  stages: " + ", ".join(f"{k} {v:.1f}" for k, v in out["seconds"].items()) + f", imports+rest {startup:.1f}")
    if theirs:
        med_qlib = statistics.median(w for w, _ in theirs)
        print(f"qlib     {med_qlib:7.1f} s")
        print("  stages: " + ", ".join(f"{k} {v:.1f}" for k, v in theirs[-1][1]["seconds"].items()))
        print(f"ratio    {med_qlib / med_ours:7.1f}x  (qlib / rdquant)")
    print(f"\n{'metric (test segment)':24s} {'rdquant':>10s} {'qlib':>10s}")
    for key in SHOWN:
        q = f"{theirs[-1][1][key]:10.4f}" if theirs else f"{'-':>10s}"
        print(f"{key:24s} {ours[-1][1][key]:10.4f} {q}")


if __name__ == "__main__":
    main()
