#!/usr/bin/env python3
"""pyqlib 0.9.7's side of `bench_workflow.py`: Alpha158 + LightGBM + TopkDropout on a qlib directory.

    ~/qlibref/bin/python benchmarks/qlib_workflow.py QLIB_DIR --train 2010-01-04 2015-12-31 \
        --valid 2016-01-01 2016-12-31 --test 2017-01-01 2019-08-30 [--kernels 2] [--num-threads 2]

Runs in pyqlib's own interpreter (pyqlib is not an rdquant dependency), with only public qlib API, the
way qlib's `qrun` runs examples/benchmarks/LightGBM/workflow_config_lightgbm_Alpha158.yaml: qlib.init
with caches off (conventions of ../shared/tools/qlib_reference.py), the Alpha158 handler with its
default processors (learn: DropnaLabel, CSZScoreNorm on the label; infer: none), DatasetH over the
three segments, LGBModel with the benchmark's hyperparameters, SigAnaRecord's IC/RankIC and
PortAnaRecord's TopkDropout backtest (topk 50, n_drop 5, deal price close, costs 0.0005 / 0.0015, min
cost 5, limit 0.095, trade unit 100, account 1e8, benchmark = the equal-weight mean daily return).
Prints one JSON line: stage seconds and the headline metrics.
"""

import argparse
import atexit
import json
import os
import shutil
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")
T0 = time.perf_counter()

import pandas as pd  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    for seg in ("train", "valid", "test"):
        p.add_argument(f"--{seg}", nargs=2, required=True, metavar=("START", "END"))
    p.add_argument("--kernels", type=int, default=2, help="qlib's expression worker processes")
    p.add_argument("--num-threads", type=int, default=2, help="LightGBM threads")
    a = p.parse_args()
    seconds = {}
    clock = [time.perf_counter()]

    def lap(stage):
        now = time.perf_counter()
        seconds[stage] = now - clock[0]
        clock[0] = now

    import qlib
    from qlib.backtest import backtest, executor
    from qlib.constant import REG_US
    from qlib.contrib.data.handler import Alpha158
    from qlib.contrib.eva.alpha import calc_ic
    from qlib.contrib.evaluate import risk_analysis
    from qlib.contrib.model.gbdt import LGBModel
    from qlib.contrib.strategy import TopkDropoutStrategy
    from qlib.data import D
    from qlib.data.dataset import DatasetH
    from qlib.data.dataset.handler import DataHandlerLP

    # qlib's experiment manager defaults to an MLflow file store (./mlruns), which MLflow 3 refuses
    # unless opted in; keep it, in a temporary folder, so LGBModel.fit can log its curves as in qrun
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlruns = tempfile.mkdtemp(prefix="qlib_mlruns_")
    atexit.register(shutil.rmtree, mlruns, ignore_errors=True)
    # qlib 0.9.7 puts the store's lock file at the URI's path with its leading "/" stripped, i.e.
    # relative to the working directory: work inside the temporary folder so nothing lands elsewhere
    data = os.path.abspath(a.data)
    os.chdir(mlruns)
    qlib.init(
        provider_uri=data,
        region=REG_US,
        expression_cache=None,
        dataset_cache=None,
        kernels=a.kernels,
        exp_manager={
            "class": "MLflowExpManager",
            "module_path": "qlib.workflow.expm",
            "kwargs": {"uri": f"file:{mlruns}", "default_exp_name": "Experiment"},
        },
    )
    seconds["import+init"] = time.perf_counter() - T0
    clock[0] = time.perf_counter()

    cal = D.calendar(freq="day")
    handler = Alpha158(
        instruments="all", start_time=cal[0], end_time=cal[-1], fit_start_time=a.train[0], fit_end_time=a.train[1]
    )  # default processors
    dataset = DatasetH(handler, segments={k: tuple(getattr(a, k)) for k in ("train", "valid", "test")})
    lap("dataset")

    # the Alpha158 benchmark's hyperparameters; threads, seed and the histogram layout as on rdquant's side
    model = LGBModel(
        loss="mse",
        colsample_bytree=0.8879,
        learning_rate=0.2,
        subsample=0.8789,
        lambda_l1=205.6999,
        lambda_l2=580.9768,
        max_depth=8,
        num_leaves=210,
        num_threads=a.num_threads,
        seed=0,
        deterministic=True,
        force_col_wise=True,
        verbosity=-1,
    )
    model.fit(dataset)
    lap("fit")
    pred = model.predict(dataset, segment="test")
    lap("predict")

    # SigAnaRecord: IC / Rank IC of the prediction against the raw label
    label = dataset.prepare("test", col_set="label", data_key=DataHandlerLP.DK_R).iloc[:, 0]
    ic, ric = calc_ic(pred, label.reindex(pred.index))
    lap("signal analysis")

    # PortAnaRecord: TopkDropout backtest, excess return over the equal-weight benchmark
    ret = D.features(D.instruments("all"), ["$close/Ref($close,1)-1"], cal[0], cal[-1]).iloc[:, 0]
    bench = ret.groupby(level="datetime").mean().fillna(0.0)
    strategy = TopkDropoutStrategy(signal=pred, topk=50, n_drop=5)
    ex = executor.SimulatorExecutor(time_per_step="day", generate_portfolio_metrics=True)
    # qlib's backtest reads the calendar day after each step, so it cannot run on the last calendar day
    end = min(pd.Timestamp(a.test[1]), pd.Timestamp(cal[-2]))
    pm, _ = backtest(
        executor=ex,
        strategy=strategy,
        start_time=a.test[0],
        end_time=end,
        account=1e8,
        benchmark=bench,
        exchange_kwargs=dict(
            freq="day",
            limit_threshold=0.095,
            deal_price="close",
            open_cost=0.0005,
            close_cost=0.0015,
            min_cost=5,
            trade_unit=100,
        ),
    )
    report = pm["1day"][0]
    lap("backtest")
    without = risk_analysis(report["return"] - report["bench"], freq="day")["risk"]
    with_cost = risk_analysis(report["return"] - report["bench"] - report["cost"], freq="day")["risk"]
    lap("analysis")
    metrics = {
        "IC": float(ic.mean()),
        "ICIR": float(ic.mean() / ic.std()),
        "Rank IC": float(ric.mean()),
        "Rank ICIR": float(ric.mean() / ric.std()),
        "ARR.without_cost": float(without["annualized_return"]),
        "IR.without_cost": float(without["information_ratio"]),
        "MDD.without_cost": float(without["max_drawdown"]),
        "ARR.with_cost": float(with_cost["annualized_return"]),
        "IR.with_cost": float(with_cost["information_ratio"]),
        "MDD.with_cost": float(with_cost["max_drawdown"]),
        "n_test_rows": int(len(pred)),
        "best_iteration": int(model.model.best_iteration),
    }
    print(json.dumps({**metrics, "seconds": seconds, "total": time.perf_counter() - T0}))


if __name__ == "__main__":
    main()
