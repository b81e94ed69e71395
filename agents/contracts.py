"""Typed contracts between the loop's nodes (pydantic, extra keys forbidden: a renamed key fails loudly)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Direction",
    "FactorCandidate",
    "ModelCandidate",
    "Hypothesis",
    "CodedCandidate",
    "CoderOutput",
    "Verdict",
    "CriticOutput",
    "TraceSummary",
    "ProposalContext",
    "Review",
    "NAME_MAX",
]

Direction = Literal["factor", "model"]

NAME_MAX = 40
"""Longest candidate name: a letter, then letters, digits or underscores."""
_NAME_PATTERN = rf"^[A-Za-z][A-Za-z0-9_]{{0,{NAME_MAX - 1}}}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FactorCandidate(_Strict):
    name: str = Field(pattern=_NAME_PATTERN)
    expression: str = Field(min_length=1, max_length=2000)
    rationale: str = ""
    region: str = ""  # where the idea came from: a search region, "evolved", or empty (an LLM's)


class ModelCandidate(_Strict):
    name: str = Field(pattern=_NAME_PATTERN)
    family: str
    params: dict[str, Any] = Field(default_factory=dict)
    feature_norm: Literal["none", "csrank", "cszscore"] = "none"  # cross-sectional normalisation of the features
    rationale: str = ""


class Hypothesis(_Strict):
    direction: Direction
    text: str = Field(min_length=1, max_length=2000)
    family: str = ""  # the idea's family (e.g. "reversal", "volume"), for the scheduler and the graph
    factors: list[FactorCandidate] = Field(default_factory=list)
    models: list[ModelCandidate] = Field(default_factory=list)
    parent: int | None = None  # hypothesis id this one builds on
    relation: Literal["derived_from", "refines", "contradicts"] | None = None


class CodedCandidate(_Strict):
    name: str
    spec: dict[str, Any]  # a sandbox experiment spec
    fold_specs: list[dict[str, Any]] = Field(default_factory=list)  # model candidates: earlier walk-forward folds
    expression: str | None = None  # factor candidates: the validated expression (library names inlined)
    region: str = ""  # factor candidates: the search region the idea came from (see FactorCandidate)
    family: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    feature_norm: str = "none"


class CoderOutput(_Strict):
    coded: list[CodedCandidate] = Field(default_factory=list)
    refused: dict[str, str] = Field(default_factory=dict)  # candidate -> structured failure text


class Verdict(_Strict):
    candidate: str
    verdict: Literal["accept", "reject", "replace_best", "keep_best"]
    reasons: list[str]
    metrics: dict[str, float] = Field(default_factory=dict)
    replaces: list[str] = Field(default_factory=list)  # accepted factors: library factors it refines (and retires)


class CriticOutput(_Strict):
    verdicts: list[Verdict]
    reward: float
    analysis: str = ""
    feedback: str = ""


class TraceSummary(_Strict):
    """The bounded context prompts get: never the whole history, never test-segment numbers."""

    accepted: list[dict[str, Any]] = Field(default_factory=list)  # top-k library factors with valid metrics
    failures: list[dict[str, str]] = Field(default_factory=list)  # last N structured failures
    lessons: list[str] = Field(default_factory=list)
    best_model: dict[str, Any] = Field(default_factory=dict)  # config + valid metrics


class ProposalContext(_Strict):
    run_id: str
    iteration: int
    direction: Direction
    fields: list[str]
    trace: TraceSummary
    library_names: list[str] = Field(default_factory=list)
    families_tried: dict[str, int] = Field(default_factory=dict)
    n_candidates: int = 4


class Review(_Strict):
    action: Literal["approve", "edit", "reject", "stop"]
    reason: str = ""
    edits: dict[str, str] = Field(default_factory=dict)  # factor name -> replacement expression
