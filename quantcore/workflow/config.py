"""The workflow YAML, as typed and validated configuration (pydantic, unknown keys forbidden).

A workflow is data -> dataset -> model -> backtest -> analysis -> record, like qlib's `qrun` config, but
every key has a type and a default, and a mistake is reported with its path in the YAML
(`dataset.segments.tran: unknown key`, `backtest.topk: expected an integer`), not as a stack trace
from deep inside a run.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quantcore.errors import QuantcoreError

__all__ = ["WorkflowConfig", "WorkflowConfigError", "load_workflow", "parse_workflow"]


class WorkflowConfigError(QuantcoreError):
    """The workflow file is unreadable or invalid; the message lists every problem with its key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    market: str = "sp500"  # sp500 | synthetic[:N:T:SEED] | qlib directory | CSV/Parquet bars file


class ProcessorConfig(_Strict):
    name: str
    fields_group: Literal["feature", "label"] | None = None  # None = the processor's own default
    params: dict[str, Any] = Field(default_factory=dict)


class SegmentsConfig(_Strict):
    train: tuple[dt.date, dt.date]
    valid: tuple[dt.date, dt.date]
    test: tuple[dt.date, dt.date]

    @model_validator(mode="after")
    def _ordered(self) -> "SegmentsConfig":
        for name in ("train", "valid", "test"):
            start, end = getattr(self, name)
            if start > end:
                raise ValueError(f"{name} starts ({start}) after it ends ({end})")
        if not (self.train[1] < self.valid[0] and self.valid[1] < self.test[0]):
            raise ValueError("segments must be in time order without overlap: train < valid < test")
        return self


class PurgeConfig(_Strict):
    # trading days dropped after the label's horizon: rolling features and overlapping labels are
    # autocorrelated, so days just past a boundary still inform it; 5, a trading week, covers the short
    # windows (Lopez de Prado, "Advances in Financial Machine Learning", 2018, ch. 7: purging and embargo)
    embargo: int = Field(5, ge=0)


class DatasetConfig(_Strict):
    features: str | dict[str, str] = "alpha158"  # a feature-set name, or name -> expression
    extra_features: dict[str, str] = Field(default_factory=dict)  # added to the set (e.g. mined factors)
    label: str = "Ref($close, -2) / Ref($close, -1) - 1"  # qlib's default label
    segments: SegmentsConfig
    # opt-in: train and valid end the label's horizon + `embargo` trading days before the next segment
    # starts, so no label they hold reads its prices. Off by default, as in qlib; `true` = `{}` (embargo 5)
    purge: PurgeConfig | None = None
    infer_processors: tuple[ProcessorConfig, ...] = ()
    learn_processors: tuple[ProcessorConfig, ...] = (
        ProcessorConfig(name="DropnaLabel"),
        ProcessorConfig(name="CSZScoreNorm", fields_group="label"),
    )  # qlib's Alpha158 defaults

    @field_validator("purge", mode="before")
    @classmethod
    def _purge_switch(cls, v: Any) -> Any:
        return {} if v is True else None if v is False else v


class ModelConfig(_Strict):
    family: str = "lightgbm"  # lightgbm | linear | mlp | gru
    params: dict[str, Any] = Field(
        default_factory=dict
    )  # the family's options (e.g. gru: step_len); seed comes from the top level


class OptimizerConfig(_Strict):
    risk_aversion: float = Field(1.0, ge=0)
    turnover_penalty: float = Field(0.0015, ge=0)  # about the round-trip cost per unit traded
    max_weight: float = Field(0.05, gt=0, le=1)
    risk_model: Literal["factor", "shrinkage"] = "factor"
    tracking_error: float | None = Field(None, gt=0)  # annualised cap vs the benchmark, None = off
    lookback: int = Field(120, ge=20)  # days of returns for the risk model
    refit_every: int = Field(20, ge=1)  # re-estimate the risk model every k days


class BacktestConfig(_Strict):
    strategy: Literal["topk", "optimizer"] = "topk"
    topk: int = Field(50, ge=1)
    n_drop: int = Field(5, ge=0)
    account: float = Field(1e8, gt=0)
    benchmark: str = "equal-weight"  # equal-weight | an instrument of the market
    deal_price: Literal["close", "open"] = "close"
    open_cost: float = Field(0.0005, ge=0)
    close_cost: float = Field(0.0015, ge=0)
    min_cost: float = Field(5.0, ge=0)
    limit_threshold: float | None = Field(0.095, gt=0)
    trade_unit: int | None = Field(100, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)

    @model_validator(mode="after")
    def _drop_fits(self) -> "BacktestConfig":
        if self.n_drop > self.topk:
            raise ValueError(f"n_drop ({self.n_drop}) cannot exceed topk ({self.topk})")
        return self


class RecordConfig(_Strict):
    root: Path = Path("runs")  # MLflow store: <root>/mlflow.db + <root>/mlartifacts (unless MLFLOW_TRACKING_URI)
    experiment: str = "workflow"
    plots: bool = True


class WorkflowConfig(_Strict):
    name: str = "workflow"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    dataset: DatasetConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    backtest: BacktestConfig = Field(default_factory=BacktestConfig)
    record: RecordConfig = Field(default_factory=RecordConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name must not be empty")
        return v


def _describe(err: ValidationError) -> list[str]:
    """pydantic errors as 'key.path: message' lines, in the YAML's vocabulary."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        kind = e["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required key is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and kind not in ("value_error",):
                msg += f" (got {e['input']!r})"
        lines.append(f"{path}: {msg}")
    return lines


def parse_workflow(raw: Any, source: str = "<workflow>") -> WorkflowConfig:
    """Validate an already-loaded YAML document."""
    if not isinstance(raw, dict):
        raise WorkflowConfigError(f"{source}: the workflow must be a mapping of sections, got {type(raw).__name__}")
    try:
        return WorkflowConfig.model_validate(raw)
    except ValidationError as err:
        problems = _describe(err)
        raise WorkflowConfigError(f"{source}: invalid workflow\n  - " + "\n  - ".join(problems)) from None


def load_workflow(path: str | Path) -> WorkflowConfig:
    """Read and validate a workflow YAML file; relative record roots stay relative to the current directory."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise WorkflowConfigError(f"workflow file not found: {path}") from None
    except yaml.YAMLError as err:
        raise WorkflowConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_workflow(raw, str(path))
