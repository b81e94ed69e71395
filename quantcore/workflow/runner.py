"""Run a workflow: data -> dataset -> model -> prediction -> signal analysis -> backtest -> analysis,
everything recorded in one MLflow run through an explicit `Recorder`.

Like qlib's `qrun` (SignalRecord + SigAnaRecord + PortAnaRecord) in one readable function: the
recorder, the market and the config are arguments; nothing is read from or written to global state.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from quantcore.backtest import CostModel, Exchange, TopkDropout, align_signal, backtest_scores
from quantcore.backtest.strategy import Strategy
from quantcore.data.panel import Panel
from quantcore.data.sources import load_market
from quantcore.dataset import DatasetConfig, build_dataset, make_processor
from quantcore.dataset.errors import SegmentError
from quantcore.dataset.purge import purge_segments
from quantcore.evaluate.ic import daily_ic, daily_rank_ic
from quantcore.evaluate.report import evaluate_arrays
from quantcore.evaluate.significance import label_horizon
from quantcore.expr.evaluate import Evaluator
from quantcore.features import feature_set
from quantcore.models import make_model
from quantcore.models.base import BaseModel
from quantcore.models.registry import FAMILIES
from quantcore.portfolio import FactorRiskModel, OptimizedPolicy, ShrinkageCovariance
from quantcore.portfolio.optimizer import OptimizerConfig as SolverSettings
from quantcore.portfolio.policy import AlphaScaling, PolicyStrategy, daily_returns
from quantcore.report import (
    analysis_frame,
    cumulative_return_figure,
    drawdown_figure,
    figure_png,
    ic_figure,
    portfolio_analysis,
    quantile_returns_figure,
)
from quantcore.report.html import write_html_report
from quantcore.workflow.config import WorkflowConfig

if TYPE_CHECKING:
    from quantcore.recording import Recorder

__all__ = ["WorkflowResult", "run_workflow", "summary_metrics"]


@dataclass(frozen=True)
class WorkflowResult:
    """What a run produced; the same numbers are in the MLflow run `run_id`."""

    run_id: str
    metrics: dict[str, float]
    prediction: pd.Series = field(repr=False)
    report: pd.DataFrame = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)


def _segments(cfg: WorkflowConfig, calendar: np.ndarray) -> dict[str, tuple[str, str]]:
    """The dataset's segments (inclusive ISO dates); with `dataset.purge`, train and valid end the label's
    horizon + the embargo trading days of `calendar` before the next segment starts (the test keeps its end)."""
    d = cfg.dataset
    segments = {name: tuple(str(x) for x in getattr(d.segments, name)) for name in ("train", "valid", "test")}
    if d.purge is None:
        return segments
    try:
        return purge_segments(calendar, segments, label_horizon(d.label), d.purge.embargo)
    except SegmentError as err:
        raise SegmentError(f"dataset.purge: {err}") from None


def _dataset_config(cfg: WorkflowConfig, segments: dict[str, tuple[str, str]]) -> DatasetConfig:
    d = cfg.dataset
    features = feature_set(d.features) if isinstance(d.features, str) else dict(d.features)
    clash = sorted(set(features) & set(d.extra_features))
    if clash:
        raise ValueError(f"dataset.extra_features: names already in the feature set: {', '.join(clash)}")
    features.update(d.extra_features)

    def procs(items):
        out = []
        for p in items:
            kwargs = dict(p.params)
            if p.fields_group is not None:
                kwargs["fields_group"] = p.fields_group
            out.append(make_processor(p.name, **kwargs))
        return tuple(out)

    return DatasetConfig(
        features=features,
        segments=segments,
        label=d.label,
        infer_processors=procs(d.infer_processors),
        learn_processors=procs(d.learn_processors),
    )


def _strategy(cfg: WorkflowConfig, panel: Panel) -> tuple[Strategy, OptimizedPolicy | None]:
    b = cfg.backtest
    if b.strategy == "topk":
        return TopkDropout(b.topk, b.n_drop), None
    o = b.optimizer
    risk_model = FactorRiskModel(n_factors=10) if o.risk_model == "factor" else ShrinkageCovariance()
    settings = SolverSettings(
        risk_aversion=o.risk_aversion,
        turnover_penalty=o.turnover_penalty,
        max_weight=o.max_weight,
        budget=0.95,  # qlib's risk_degree: keep 5% cash
        tracking_error=None if o.tracking_error is None else o.tracking_error / np.sqrt(252),  # daily units
    )
    if o.tracking_error is not None and b.benchmark.lower() not in ("equal-weight", "equal_weight"):
        raise ValueError("backtest.optimizer.tracking_error needs backtest.benchmark: equal-weight")
    policy = OptimizedPolicy(
        settings, risk_model, lookback=o.lookback, refit_every=o.refit_every, alpha_scaling=AlphaScaling.VOLATILITY
    )
    close = panel.fields["close"].T  # (T, N)
    bench_weights = None
    if o.tracking_error is not None:
        listed = np.isfinite(close)
        bench_weights = listed / np.maximum(listed.sum(axis=1, keepdims=True), 1)
    return PolicyStrategy(policy, daily_returns(close), benchmark=bench_weights), policy


def summary_metrics(signal: dict[str, float], analysis: dict[str, float]) -> dict[str, float]:
    """The headline numbers (qlib's benchmark table): IC, ICIR, Rank IC, Rank ICIR, and annualised
    return, information ratio and max drawdown of the excess return with and without cost."""
    out = {k: signal[k] for k in ("IC", "ICIR", "Rank IC", "Rank ICIR")}
    for series, tag in (("excess_return_without_cost", "without_cost"), ("excess_return_with_cost", "with_cost")):
        out[f"ARR.{tag}"] = analysis[f"{series}.annualized_return"]
        out[f"IR.{tag}"] = analysis[f"{series}.information_ratio"]
        out[f"MDD.{tag}"] = analysis[f"{series}.max_drawdown"]
    return out


def run_workflow(
    cfg: WorkflowConfig,
    recorder: Recorder | None = None,
    *,
    panel: Panel | None = None,
    model: BaseModel | None = None,
    evaluator: Evaluator | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> WorkflowResult:
    """Run `cfg` end to end; a failure inside marks the MLflow run FAILED with the reason and re-raises.
    `recorder` may be any object with `Recorder.start_run`'s shape (e.g. a `CaptureRecorder`); `model`,
    an unfitted model, replaces the one `cfg.model` describes; `evaluator` (on `panel`, e.g. with a disk
    cache shared by many runs) computes the features and the label."""
    if recorder is None:
        from quantcore.recording import Recorder  # mlflow: imported only when this function opens the store

        recorder = Recorder.open(cfg.record.root, cfg.record.experiment)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = now - clock
        clock = now
        log(f"{stage}: {seconds[stage]:.2f}s")

    with recorder.start_run(cfg.name, tags={"kind": "workflow", "model": cfg.model.family}) as run:
        run.log_params(cfg.model_dump(mode="json"))
        if panel is None:
            panel = evaluator.panel if evaluator is not None else load_market(cfg.data.market)
        if evaluator is None:
            evaluator = Evaluator(panel)
        elif evaluator.panel is not panel:
            raise ValueError("run_workflow: the evaluator is bound to another panel than the one given")
        run.log_params(
            {"data.version": panel.version, "data.instruments": panel.n_instruments, "data.days": panel.n_days}
        )
        lap("data")

        segments = _segments(cfg, panel.calendar)
        if cfg.dataset.purge is not None:
            run.log_params({"dataset.purged_segments": {name: list(bounds) for name, bounds in segments.items()}})
        dataset = build_dataset(panel, _dataset_config(cfg, segments), evaluator)
        lap("dataset")

        model = (model if model is not None else make_model(cfg.model.family, **_model_params(cfg))).fit(dataset)
        lap("fit")
        pred = model.predict(dataset, "test").rename("score")
        lap("predict")

        # Signal analysis (qlib's SigAnaRecord): IC of the prediction against the raw label on the test days.
        test_days = dataset.days("test")
        label = evaluator.evaluate({"label": cfg.dataset.label}, allow_future=True, dtype=np.float64)["label"]
        scores = align_signal(pred, panel)  # (T, N)
        factor = scores.T[:, test_days]
        y = label[:, test_days]
        factor_report, _ = evaluate_arrays(factor, y, calendar=panel.calendar[test_days], expression="prediction")
        signal = {
            "IC": factor_report.ic.mean,
            "ICIR": factor_report.ic.icir,
            "Rank IC": factor_report.rank_ic.mean,
            "Rank ICIR": factor_report.rank_ic.icir,
            "IC.t_stat": factor_report.rank_ic.t_stat,
            "long_short": factor_report.long_short,
        }
        lap("signal analysis")

        b = cfg.backtest
        exchange = Exchange.from_panel(
            panel,
            deal_price=b.deal_price,
            limit_threshold=b.limit_threshold,
            costs=CostModel(open_cost=b.open_cost, close_cost=b.close_cost, min_cost=b.min_cost),
            trade_unit=b.trade_unit,
        )
        strategy, policy = _strategy(cfg, panel)
        test_start, test_end = cfg.dataset.segments.test
        report = backtest_scores(
            panel,
            scores,
            strategy,
            start=str(test_start),
            end=str(test_end),
            account=b.account,
            benchmark=b.benchmark,
            exchange=exchange,
        )
        lap("backtest")

        analysis = portfolio_analysis(report)
        metrics = {**signal, **analysis}
        headline = summary_metrics(signal, analysis)
        run.log_metrics({**metrics, **headline})
        run.log_metrics({f"fit.{k}": v for k, v in _fit_numbers(model).items()})
        run.log_frame(pred.to_frame(), "pred.parquet")
        run.log_frame(report, "report.parquet")
        run.log_frame(analysis_frame(analysis), "port_analysis.parquet")
        run.log_dict(factor_report.to_dict(), "signal_analysis.json")
        if policy is not None:
            steps = policy.report()
            run.log_frame(steps, "optimizer_steps.parquet")
            fallbacks = int(steps["fallback"].notna().sum())
            run.log_metrics({"optimizer.fallback_days": fallbacks})
            if fallbacks:
                log(f"optimizer: {fallbacks} day(s) fell back (see optimizer_steps.parquet)")
        with tempfile.TemporaryDirectory() as tmp:
            model_path = Path(tmp) / f"{cfg.model.family}.model"
            model.save(model_path)
            run.log_model(model_path)
            if cfg.record.plots:
                dates = pd.DatetimeIndex(panel.calendar[test_days])
                figures = {
                    "Cumulative return": cumulative_return_figure(report),
                    "Drawdown": drawdown_figure(report),
                    "IC over time": ic_figure(daily_ic(factor, y), daily_rank_ic(factor, y), dates=dates),
                    "Quantile returns": quantile_returns_figure(list(factor_report.quantile_returns)),
                }
                # render each figure once: the same PNG bytes are the artifact and the HTML image
                pngs = {title: figure_png(fig) for title, fig in figures.items()}
                for title, png in pngs.items():
                    path = Path(tmp) / (title.lower().replace(" ", "_") + ".png")
                    path.write_bytes(png)
                    run.log_artifact(path)
                html = write_html_report(
                    Path(tmp) / "report.html", {"Headline": headline, **pngs}, title=f"rdquant workflow: {cfg.name}"
                )
                run.log_artifact(html)
        lap("record")
        run_id = run.run_id
    return WorkflowResult(run_id, headline, pred, report, seconds)


def _model_params(cfg: WorkflowConfig) -> dict:
    """The model section's params, plus the workflow seed for families that take one."""
    params = dict(cfg.model.params)
    family = FAMILIES.get(cfg.model.family.lower())
    if family is not None and "seed" in {f.name for f in dataclass_fields(family.Config)}:
        params.setdefault("seed", cfg.seed)
    return params


def _fit_numbers(model) -> dict[str, float]:
    info = getattr(model, "fit_info_", None)
    if info is None:
        return {}
    return {"best_iteration": info.best_iteration, "best_valid_loss": info.best_valid_loss, "seconds": info.seconds}
