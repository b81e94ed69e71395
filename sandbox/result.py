"""Experiment results: metrics + artifacts + MLflow run id, or a structured failure an LLM can act on."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

__all__ = ["FailureCategory", "Failure", "ExperimentResult", "MAX_CONTEXT_CHARS"]

#: A failure's context is cut to this many characters: enough for an LLM to repair the idea, no more.
MAX_CONTEXT_CHARS = 1500


class FailureCategory(str, Enum):
    PARSE_ERROR = "parse_error"  # the expression or the code does not parse
    INVALID_SPEC = "invalid_spec"  # unknown field/operator, wrong arity, bad option, unknown kind
    LOOK_AHEAD = "look_ahead"  # the factor reads future data
    RUNTIME_ERROR = "runtime_error"  # the experiment raised
    TIMEOUT = "timeout"  # wall-clock or CPU-time limit
    MEMORY_LIMIT = "memory_limit"  # address-space limit hit (MemoryError) or killed for memory
    FORBIDDEN_OPERATION = "forbidden_operation"  # network, subprocess, file access outside the run dir...
    DEGENERATE_OUTPUT = "degenerate_output"  # all-NaN, constant, inf, wrong shape, too large
    WORKER_CRASH = "worker_crash"  # the worker process died (signal, hard exit)
    RECORD = "record"  # the result's MLflow record is missing, unreadable or differs from it (agents.recorded)


@dataclass(frozen=True)
class Failure:
    category: FailureCategory
    message: str  # one line
    context: str = ""  # a short excerpt: the offending code line, the expression with a caret, a trimmed traceback

    def __post_init__(self) -> None:
        object.__setattr__(self, "category", FailureCategory(self.category))
        first = (self.message.strip().splitlines() or [""])[0]
        object.__setattr__(self, "message", first[:300])
        object.__setattr__(self, "context", self.context[-MAX_CONTEXT_CHARS:])

    def for_llm(self) -> str:
        """The failure as feedback text for a repair attempt."""
        text = f"{self.category.value}: {self.message}"
        return f"{text}\n{self.context}" if self.context else text


@dataclass(frozen=True)
class ExperimentResult:
    spec_hash: str
    kind: str
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # JSON-ready extras (per-factor reports, stage timings)
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> path (in the experiment directory)
    mlflow_run_id: str | None = None
    failure: Failure | None = None
    seconds: float = 0.0  # work time inside the worker
    cached: bool = False
    data_version: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["metrics"] = {k: (v if v is None or math.isfinite(v) else None) for k, v in self.metrics.items()}
        if self.failure is not None:
            out["failure"] = {**out["failure"], "category": self.failure.category.value}
        out["ok"] = self.ok
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentResult":
        data = dict(data)
        data.pop("ok", None)
        failure = data.pop("failure", None)
        metrics = {k: (math.nan if v is None else float(v)) for k, v in data.pop("metrics", {}).items()}
        return cls(**data, metrics=metrics, failure=Failure(**failure) if failure else None)

    def with_(self, **changes) -> "ExperimentResult":
        return replace(self, **changes)
