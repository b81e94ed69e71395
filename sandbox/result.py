"""Experiment results: metrics + artifacts + MLflow run id, or a structured failure an LLM can act on."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any

__all__ = [
    "FailureCategory",
    "Failure",
    "ExperimentResult",
    "ResultSchemaError",
    "MAX_CONTEXT_CHARS",
    "MAX_MESSAGE_CHARS",
    "MAX_STRING_CHARS",
]

#: A failure's context is cut to this many characters: enough for an LLM to repair the idea, no more.
MAX_CONTEXT_CHARS = 1500
#: A failure's message is one line of at most this many characters.
MAX_MESSAGE_CHARS = 300
#: Any other string in a result (a name, a path, an expression quoted in `details`). Expressions and
#: factor names have no length limit of their own, so this is generous; the channel's message size
#: (`sandbox.channel.MAX_MESSAGE_BYTES`) bounds a result as a whole.
MAX_STRING_CHARS = 1 << 20
_MAX_HASH_CHARS = 128  # spec hashes are 32 hex digits
_MAX_DEPTH = 32  # nesting of `details` (per-factor reports nest 3 deep)


class ResultSchemaError(ValueError):
    """A result dict that is not what `ExperimentResult.to_dict` writes: an unknown or missing key, a
    wrong type, a non-finite metric, an oversized string. The message names the key path."""


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
        object.__setattr__(self, "message", first[:MAX_MESSAGE_CHARS])
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
    def from_dict(cls, data: Any) -> "ExperimentResult":
        """The result `to_dict` wrote, checked key by key: it may come from a worker that cannot be
        trusted, so anything else raises `ResultSchemaError` (never coerced, never truncated)."""
        _expect(isinstance(data, dict), "result", "an object", data)
        _known_keys(data, _DICT_KEYS, "result")
        for key in ("spec_hash", "kind"):
            _expect(key in data, key, "present", None, missing=True)
        failure = data.get("failure")
        if failure is not None:
            failure = _failure(failure)
        if "ok" in data:
            _expect(
                data["ok"] is (failure is None), "ok", f"{failure is None} (it must agree with `failure`)", data["ok"]
            )
        run_id = data.get("mlflow_run_id")
        return cls(
            spec_hash=_string(data["spec_hash"], "spec_hash", _MAX_HASH_CHARS),
            kind=_string(data["kind"], "kind"),
            metrics=_metrics(_mapping(data.get("metrics", {}), "metrics")),
            details=_details(_mapping(data.get("details", {}), "details")),
            artifacts={
                _string(k, "artifacts", what="string keys"): _string(v, f"artifacts.{k}")
                for k, v in _mapping(data.get("artifacts", {}), "artifacts").items()
            },
            mlflow_run_id=None if run_id is None else _string(run_id, "mlflow_run_id"),
            failure=failure,
            seconds=_seconds(data.get("seconds", 0.0)),
            cached=_boolean(data.get("cached", False), "cached"),
            data_version=_string(data.get("data_version", ""), "data_version"),
        )

    def with_(self, **changes) -> "ExperimentResult":
        return replace(self, **changes)


# ---- the schema `from_dict` checks ---------------------------------------------------------------------

_DICT_KEYS = frozenset(f.name for f in fields(ExperimentResult)) | {"ok"}  # what `to_dict` writes
_FAILURE_KEYS = frozenset(f.name for f in fields(Failure))


def _failure(data: Any) -> Failure:
    _expect(isinstance(data, dict), "failure", "an object or null", data)
    _known_keys(data, _FAILURE_KEYS, "failure")
    for key in ("category", "message"):
        _expect(key in data, f"failure.{key}", "present", None, missing=True)
    category = _string(data["category"], "failure.category")
    _expect(category in _CATEGORIES, "failure.category", "one of " + ", ".join(sorted(_CATEGORIES)), category)
    message = _string(data["message"], "failure.message", MAX_MESSAGE_CHARS)
    context = _string(data.get("context", ""), "failure.context", MAX_CONTEXT_CHARS)
    failure = Failure(FailureCategory(category), message, context)
    _expect(failure.message == message, "failure.message", "one line without surrounding blanks", message)
    return failure


_CATEGORIES = frozenset(c.value for c in FailureCategory)


def _metrics(data: dict) -> dict[str, float]:
    """None stands for NaN (`to_dict` writes every non-finite metric as None); numbers must be finite."""
    out = {}
    for key, value in data.items():
        if type(key) is not str or (type(value) is not float and value is not None):  # (the common case is fast)
            _string(key, "metrics", what="string keys")
            value = _number(value, f"metrics.{key}") if value is not None else None
        if value is None:
            value = math.nan
        elif not math.isfinite(value):
            raise ResultSchemaError(f"metrics.{key}: expected a finite number or null, got {_type_name(value)}")
        out[key] = value
    return out


def _details(data: dict) -> dict:
    """`details` as given, once every value in it is checked to be JSON (see `_check_json`)."""
    try:
        _check_json(data, 1)
    except _JsonPathError as exc:
        raise ResultSchemaError(f"details{exc.path}: {exc.problem}") from None
    return data


def _seconds(value: Any) -> float:
    number = _number(value, "seconds")
    _expect(math.isfinite(number) and number >= 0, "seconds", "a finite number >= 0", value)
    return number


def _number(value: Any, where: str) -> float:
    _expect(_is_number(value), where, "a number", value)
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        raise ResultSchemaError(f"{where}: expected a number a float can hold") from None


def _boolean(value: Any, where: str) -> bool:
    _expect(isinstance(value, bool), where, "true or false", value)
    return value


def _string(value: Any, where: str, limit: int = MAX_STRING_CHARS, what: str = "a string") -> str:
    _expect(isinstance(value, str), where, what, value)
    if len(value) > limit:
        raise ResultSchemaError(f"{where}: a string of {len(value)} characters, at most {limit}")
    return value


def _mapping(value: Any, where: str) -> dict:
    _expect(isinstance(value, dict), where, "an object", value)
    return value


class _JsonPathError(Exception):
    """Raised inside `_check_json`; the path is built on the way out, so a valid value builds none."""

    def __init__(self, problem: str):
        self.problem, self.path = problem, ""

    def under(self, step: str) -> "_JsonPathError":
        self.path = step + self.path
        return self


def _check_json(value: Any, depth: int) -> None:
    """Raises `_JsonPathError` unless `value` is a JSON value: objects with string keys, arrays,
    strings of at most MAX_STRING_CHARS, numbers (NaN and infinities allowed: the result cache has
    always stored them), true/false/null; nested at most _MAX_DEPTH deep."""
    kind = type(value)
    if kind is float or kind is int or kind is bool or value is None:
        return
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise _JsonPathError(f"a string of {len(value)} characters, at most {MAX_STRING_CHARS}")
        return
    if _is_number(value):
        return
    if depth >= _MAX_DEPTH:
        raise _JsonPathError(f"nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if type(item) is not float:  # a daily series is thousands of floats: skip the call for each
                try:
                    _check_json(item, depth + 1)
                except _JsonPathError as exc:
                    raise exc.under(f"[{i}]") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _JsonPathError(f"expected string keys, got {_type_name(key)}")
            try:
                _check_json(item, depth + 1)
            except _JsonPathError as exc:
                raise exc.under(f".{key}") from None
    else:
        raise _JsonPathError(f"expected a JSON value, got {_type_name(value)}")


def _is_number(value: Any) -> bool:
    return type(value) in (float, int) or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def _known_keys(data: dict, known: frozenset, where: str) -> None:
    unknown = [k for k in data if k not in known]
    if unknown:
        names = ", ".join(repr(k)[:60] for k in unknown[:3])
        raise ResultSchemaError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {names}")


def _expect(ok: bool, where: str, expected: str, value: Any, *, missing: bool = False) -> None:
    if ok:
        return
    if missing:
        raise ResultSchemaError(f"{where}: missing")
    raise ResultSchemaError(f"{where}: expected {expected}, got {_type_name(value)}")


def _type_name(value: Any) -> str:
    """What a refused value is, without printing it (it may be huge, or hostile)."""
    if value is None or isinstance(value, (bool, float)) or (isinstance(value, int) and abs(value) < 10**15):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"a string of {len(value)} characters"
    return type(value).__name__
