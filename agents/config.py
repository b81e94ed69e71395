"""Loop settings: what `rdquant loop` was asked to do, stored with the run (so resume and replay use them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LoopConfig", "stored_config", "purge_days", "loop_label"]


class LoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    budget: int = Field(5, ge=1)  # iterations
    backend: Literal["offline", "llm"] = "offline"
    model: str = "gpt-4o-mini"  # LLM model name (OpenAI-compatible endpoint)
    fallback_offline: bool = False  # an LLM failure falls back to the offline back-end instead of stopping
    workers: int = Field(2, ge=1)  # experiments run at once (local processes or Ray actors)
    executor: Literal["local", "ray"] = "local"  # where experiments run; same results either way
    data: str = "sp500"
    seed: int = 0
    review: bool = False
    max_tokens: int | None = Field(None, ge=1)  # per run
    max_call_tokens: int = Field(4000, ge=100)  # per LLM call (completion)
    max_minutes: float | None = Field(None, gt=0)
    n_factor_candidates: int = Field(4, ge=1, le=16)  # candidates sent to full admission per factor iteration
    # offline search: candidates screened per sandbox worker each factor iteration (their RankIC on the
    # training segment, originality against the base features and the library); the strongest original
    # ones go to admission. 0 turns screening off (every proposal goes to admission)
    screen_per_worker: int = Field(64, ge=0, le=1024)
    screen_corr_days: int = Field(60, ge=0)  # days the screen's correlations are measured on (0: all)
    # the screen ranks candidates on their residual RankIC (as admission judges them: beyond the base
    # features' `residual_components` principal components and the library) rather than the raw one,
    # so the search is steered to what the model lacks, not to restatements of what it has
    screen_residual: bool = True
    n_model_candidates: int = Field(1, ge=1, le=4)
    model_folds: int = Field(2, ge=1, le=4)  # walk-forward validation blocks a model candidate is scored on
    repair_attempts: int = Field(2, ge=0, le=5)
    base_features: str = "alpha158"
    # What factors and models predict; None: quantcore.features.DEFAULT_LABEL (the next day's
    # close-to-close return, qlib's). Another horizon, or a null check's far-future label, goes here.
    label: str | None = None
    segments: dict[str, tuple[str, str]] | None = None  # None: the market's 60/20/20 split
    # trading days purged after the label's horizon at every segment and fold boundary: rolling features and
    # overlapping labels are autocorrelated, so days just past a boundary still inform it; 5, a trading week,
    # covers the short windows (Lopez de Prado, AFML 2018, ch. 7). None: a run stored before purging
    embargo_days: int | None = Field(5, ge=0)
    min_abs_rank_ic: float = 0.01
    min_abs_rank_icir: float = 0.08
    max_library_corr: float = 0.7
    max_nodes: int = 40
    max_depth: int = 10
    # Trial-aware significance (None: off, as in runs stored before it). A factor's admission statistic
    # is its residual RankIC on validation (after the base features' top `residual_components` principal
    # components and the library; 0: the raw RankIC), tested with a HAC t; the false discovery rate is
    # controlled at `fdr_q` across every admission trial of the project on the market (Benjamini-
    # Yekutieli by default: valid under the dependence of factors mined from one library).
    fdr_q: float | None = Field(0.05, gt=0, lt=1)
    fdr_method: Literal["bh", "by"] = "by"
    # The run's planned admission tests, counted in the FDR family (at p = 1 until made) from its first
    # iteration so an early trial needs the evidence a late one needs. None: budget x n_factor_candidates,
    # fixed when the run starts (so a replay, whose budget is the iterations done, counts the same); 0: off
    fdr_planned_tests: int | None = Field(None, ge=0)
    residual_components: int = Field(10, ge=0, le=64)
    # The run's false replacement rate for "a model replaces the best", split evenly over the model
    # comparisons the run may make (budget x model candidates): each one-sided test runs at alpha / that.
    model_alpha: float | None = Field(0.05, gt=0, lt=1)
    wall_seconds: float = 300.0  # per experiment


def stored_config(raw: dict) -> LoopConfig:
    """The LoopConfig a run was stored with. Runs stored before `model_folds` existed scored models on
    one fold, so that is their default (resume and replay must decide as they did), and likewise no
    trial-aware significance and no residual IC for runs stored before those (nor a residual screen, nor planned tests in the FDR family); runs stored before
    `executor` existed ran on local workers, the field's own default. Runs stored before `embargo_days`
    kept their segments and folds unpurged (None; see `purge_days`)."""
    return LoopConfig.model_validate(
        {
            "model_folds": 1,
            "fdr_q": None,
            "model_alpha": None,
            "residual_components": 0,
            "embargo_days": None,
            "screen_residual": False,
            "fdr_planned_tests": 0,
            **raw,
        }
    )


def purge_days(config: LoopConfig) -> tuple[int, int]:
    """(label horizon, embargo) in trading days dropped at every segment and fold boundary of a run: the
    loop's label reads `horizon` days ahead. (0, 0) for a run stored before purging, which replays unpurged."""
    if config.embargo_days is None:
        return 0, 0
    # imported here: `rdquant --help` loads this module, and these pull in pandas and the evaluators
    from quantcore.evaluate.significance import label_horizon

    return label_horizon(loop_label(config)), config.embargo_days


def loop_label(config: LoopConfig) -> str:
    """The label expression a run scores against."""
    if config.label is not None:
        return config.label
    from quantcore.features import DEFAULT_LABEL  # imported here, as in `purge_days`

    return DEFAULT_LABEL
