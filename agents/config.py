"""Loop settings: what `rdquant loop` was asked to do, stored with the run (so resume and replay use them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LoopConfig", "stored_config"]

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
    n_model_candidates: int = Field(1, ge=1, le=4)
    model_folds: int = Field(2, ge=1, le=4)  # walk-forward validation blocks a model candidate is scored on
    repair_attempts: int = Field(2, ge=0, le=5)
    base_features: str = "alpha158"
    segments: dict[str, tuple[str, str]] | None = None  # None: the market's 60/20/20 split
    min_abs_rank_ic: float = 0.01
    min_abs_rank_icir: float = 0.08
    max_library_corr: float = 0.7
    max_nodes: int = 40
    max_depth: int = 10
    wall_seconds: float = 300.0  # per experiment


def stored_config(raw: dict) -> LoopConfig:
    """The LoopConfig a run was stored with. Runs stored before `model_folds` existed scored models on
    one fold, so that is their default (resume and replay must decide as they did); runs stored before
    `executor` existed ran on local workers, the field's own default."""
    return LoopConfig.model_validate({"model_folds": 1, **raw})
