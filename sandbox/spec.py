"""Experiment specs: what to run, as versioned JSON-serialisable pydantic models.

A spec names its market, so a result is reproducible from the spec alone; `spec_hash` identifies it
(canonical JSON, expressions in canonical form, so whitespace or redundant brackets do not make a new
experiment). Kinds: `factor`, `model`, `workflow`, and `rl` (reserved for the RL work; refused for now).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from quantcore.errors import ExpressionError
from quantcore.expr.canonical import canonical
from quantcore.expr.parser import parse
from quantcore.features import DEFAULT_LABEL, feature_set
from quantcore.workflow.config import SegmentsConfig as Segments  # one definition of ordered segments

__all__ = [
    "SPEC_VERSION",
    "Segments",
    "default_segments",
    "ExperimentSpec",
    "FactorSpec",
    "ModelSpec",
    "WorkflowSpec",
    "RLSpec",
    "PipelineConfig",
    "SpecError",
    "RESERVED_DETAIL_KEYS",
    "parse_spec",
    "spec_hash",
    "spec_json",
]

#: Bumped when the meaning of a field changes; a spec of another version is refused, not guessed at.
SPEC_VERSION = 1

MAX_CODE_CHARS = 20_000
MAX_EXPRESSIONS = 64
#: Keys a factor experiment's `details` uses beside the factor names, so no factor may take them.
RESERVED_DETAIL_KEYS = frozenset({"segment", "pipeline", "library_daily_rank_ic"})


def default_segments(calendar) -> dict[str, tuple[str, str]]:
    """A market's calendar split 60/20/20 into train/valid/test (ISO dates), for specs that give none."""
    n = len(calendar)
    if n < 10:
        raise ValueError(f"a market of {n} days is too short to split into train/valid/test")
    a, b = int(n * 0.6), int(n * 0.8)
    day = lambda i: str(calendar[i])[:10]  # noqa: E731
    return {"train": (day(0), day(a - 1)), "valid": (day(a), day(b - 1)), "test": (day(b), day(n - 1))}


def _check_code(code: str | None) -> str | None:
    if code is not None and len(code) > MAX_CODE_CHARS:
        raise ValueError(f"code is {len(code)} characters; at most {MAX_CODE_CHARS}")
    return code


class SpecError(ValueError):
    """A spec is not valid JSON, not a known kind, or has bad fields; the message names each problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BacktestSettings(_Strict):
    topk: int = Field(50, ge=1)
    n_drop: int = Field(5, ge=0)
    open_cost: float = Field(0.0005, ge=0)
    close_cost: float = Field(0.0015, ge=0)
    min_cost: float = Field(5.0, ge=0)


class PipelineConfig(_Strict):
    """Model + backtest run for a factor experiment: base features (plus the factors) -> model -> TopkDropout."""

    features: str | dict[str, str] = "alpha158"
    family: str = "lightgbm"
    params: dict[str, Any] = Field(default_factory=dict)
    segments: Segments | None = None  # None: the market's calendar split 60/20/20 (train/valid/test)
    backtest: BacktestSettings = Field(default_factory=BacktestSettings)


class _Base(_Strict):
    version: Literal[1] = SPEC_VERSION
    market: str = "sp500"  # sp500 | synthetic[:N:T:SEED] | qlib directory | bars file (quantcore.data.sources)
    seed: int = 0


class FactorSpec(_Base):
    """Score factor expressions (and/or one generated factor function) against a label on a segment."""

    kind: Literal["factor"] = "factor"
    expressions: dict[str, str] = Field(default_factory=dict)  # name -> expression
    code: str | None = None  # Python defining `def factor(fields) -> (N, T) array`, scored as `code_name`
    code_name: str = "code_factor"
    library: dict[str, str] = Field(default_factory=dict)  # name -> expression; value correlation is reported
    label: str = DEFAULT_LABEL
    segment: tuple[dt.date, dt.date] | None = None  # scoring days; None = the valid segment (see `segments`)
    decay: bool = False  # IC decay over 20 horizons (costs ~20 label evaluations)
    max_inf_share: float = Field(0.0, ge=0, le=1)  # share of +-inf values tolerated before "degenerate"
    lookahead_check: bool = False  # perturb data after a cutoff and require identical values up to it
    # That check's cutoffs: one seeded day (`seed`) in each of k equal parts of the scoring segment (k
    # capped at its length), plus its last day, so code that leaks only early or late in the segment is
    # caught too; each costs one evaluation of the expressions and the code up to the segment's end.
    lookahead_cuts: int = Field(5, ge=1, le=64)
    report: Literal["full", "screen"] = "full"  # screen: IC, RankIC and their ICIR/t only (bulk screening)
    # Originality against what the model already has: a feature-set name ("alpha158", "alpha360", as
    # quantcore.features.feature_set resolves it) or name -> expression. Reports each candidate's base
    # column of largest |value correlation| on the scoring segment (`base_correlation`, `.base_corr`).
    base_features: str | dict[str, str] | None = None
    # Days the value correlations (library and base) are averaged over: 0 = every scoring day; k > 0 =
    # k evenly spaced scoring days, first to last (bulk screening: cost and the worker's base-feature
    # store scale with the days). The IC/RankIC scores always use every scoring day.
    corr_days: int = Field(0, ge=0)
    # Set: every library factor with |correlation| >= this against some candidate gets its daily RankIC
    # on the scoring segment reported, and every candidate its own (same days), so a replacement can be
    # judged day by day (a paired bootstrap) rather than on two means.
    pair_threshold: float | None = Field(None, ge=0, le=1)
    # Library factors whose daily RankIC is reported whatever their correlation (the same idea at
    # another window, a refinement's rival by construction); names must be in `library`.
    pair_with: tuple[str, ...] = ()
    # Set (with `base_features`): each factor's residual RankIC is reported, its daily IC after a
    # cross-sectional regression on the base features' top-k pooled principal components and on the
    # library factors named in `controls` (`residual_rank_ic`, `residual_t`, `residual_p`): what the
    # factor adds to what the model already has. A control the factor repeats (|corr| >=
    # `pair_threshold`, or named in `pair_with`) is left out: it is the rival the factor would replace.
    residual_components: int | None = Field(None, ge=1, le=64)
    controls: tuple[str, ...] = ()
    segments: Segments | None = None  # None: the market's calendar split 60/20/20 (train/valid/test)
    pipeline: PipelineConfig | None = None  # also add the factors to a feature set and run model + backtest

    @field_validator("expressions")
    @classmethod
    def _expressions(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_EXPRESSIONS:
            raise ValueError(f"at most {MAX_EXPRESSIONS} expressions per experiment, got {len(v)}")
        for name in v:
            if not name or not name.replace("_", "").isalnum():
                raise ValueError(f"factor name {name!r} must be letters, digits and underscores")
            if name in RESERVED_DETAIL_KEYS:
                raise ValueError(f"factor name {name!r} is reserved (a key of the result's details); rename it")
        return v

    @field_validator("base_features")
    @classmethod
    def _base_features(cls, v: str | dict[str, str] | None) -> str | dict[str, str] | None:
        if isinstance(v, str):
            feature_set(v)  # an unknown name fails here, listing the known ones
            return v.lower()  # "Alpha158" and "alpha158" are one experiment
        if isinstance(v, dict) and not v:
            raise ValueError("base_features is an empty mapping; give a feature-set name or name -> expression")
        return v

    _code = field_validator("code")(classmethod(lambda cls, v: _check_code(v)))

    @model_validator(mode="after")
    def _something(self) -> "FactorSpec":
        if not self.expressions and self.code is None:
            raise ValueError("a factor experiment needs `expressions` or `code`")
        if self.code is not None and self.code_name in self.expressions:
            raise ValueError(f"code_name {self.code_name!r} is also an expression name")
        missing = [k for k in self.pair_with if k not in self.library]
        if missing:
            raise ValueError(f"pair_with names {', '.join(missing)}, not in the spec's library")
        missing = [k for k in self.controls if k not in self.library]
        if missing:
            raise ValueError(f"controls names {', '.join(missing)}, not in the spec's library")
        if self.residual_components is not None and self.base_features is None:
            raise ValueError("residual_components needs base_features (the components are theirs)")
        return self


class ModelSpec(_Base):
    """Train a model family with hyperparameters (or a generated model class) on a feature set, then backtest."""

    kind: Literal["model"] = "model"
    features: str | dict[str, str] = "alpha158"
    extra_features: dict[str, str] = Field(default_factory=dict)
    family: str = "lightgbm"
    params: dict[str, Any] = Field(default_factory=dict)
    feature_norm: Literal["none", "csrank", "cszscore"] = "none"  # per-day normalisation of every feature
    # Python defining `class Model` with fit(x_train, y_train, x_valid, y_valid), predict(x). predict gets the
    # whole test segment at once; its predictions must pass a look-ahead gate (`sandbox.generated_model`):
    # rows after seeded cut days (`seed`) perturbed, every earlier prediction the same bit for bit.
    code: str | None = None
    label: str = DEFAULT_LABEL
    segments: Segments | None = None  # None: the market's calendar split 60/20/20 (train/valid/test)
    backtest: BacktestSettings = Field(default_factory=BacktestSettings)

    _code = field_validator("code")(classmethod(lambda cls, v: _check_code(v)))


class WorkflowSpec(_Base):
    """A whole workflow document (the content of a workflow YAML), run as `rdquant run` would."""

    kind: Literal["workflow"] = "workflow"
    workflow: dict[str, Any]


class RLSpec(_Base):
    """Reserved for reinforcement-learning execution experiments (not runnable yet)."""

    kind: Literal["rl"] = "rl"
    config: dict[str, Any] = Field(default_factory=dict)


ExperimentSpec = Annotated[Union[FactorSpec, ModelSpec, WorkflowSpec, RLSpec], Field(discriminator="kind")]
_ADAPTER: TypeAdapter = TypeAdapter(ExperimentSpec)


def parse_spec(raw: Any) -> FactorSpec | ModelSpec | WorkflowSpec | RLSpec:
    """Validate a spec given as a dict, a JSON string or an already-built spec."""
    if isinstance(raw, (FactorSpec, ModelSpec, WorkflowSpec, RLSpec)):
        return raw
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise SpecError(f"spec is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"a spec must be a JSON object, got {type(raw).__name__}")
    if raw.get("version", SPEC_VERSION) != SPEC_VERSION:
        raise SpecError(f"spec version {raw.get('version')!r} is not supported (this is version {SPEC_VERSION})")
    if "kind" not in raw:
        raise SpecError("spec has no `kind`; expected one of factor, model, workflow, rl")
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = [str(p) for p in e["loc"]]
            if loc and loc[0] in ("factor", "model", "workflow", "rl"):
                loc = loc[1:]  # the discriminator's branch name adds nothing
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
            lines.append(f"{'.'.join(loc) or '(top level)'}: {msg}")
        raise SpecError("invalid spec\n  - " + "\n  - ".join(lines)) from None


def spec_json(spec) -> str:
    """Canonical JSON of a spec (sorted keys, defaults filled, expressions in canonical form where they parse)."""
    try:
        data = spec.model_dump(mode="json")
    except ValueError as e:  # a spec built in Python can hold values JSON has no form for (a set, an object)
        raise SpecError(f"spec is not JSON-serialisable: {e}") from None
    if isinstance(spec, FactorSpec):
        data["expressions"] = {k: _canonical_or_raw(v) for k, v in data["expressions"].items()}
        data["library"] = {k: _canonical_or_raw(v) for k, v in data["library"].items()}
        if isinstance(data["base_features"], dict):
            data["base_features"] = {k: _canonical_or_raw(v) for k, v in data["base_features"].items()}
        data["label"] = _canonical_or_raw(data["label"])
    elif isinstance(spec, ModelSpec):
        data["extra_features"] = {k: _canonical_or_raw(v) for k, v in data["extra_features"].items()}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def spec_hash(spec) -> str:
    """Stable content hash of a spec (hex, 32 characters)."""
    return hashlib.sha256(spec_json(parse_spec(spec)).encode()).hexdigest()[:32]


def _canonical_or_raw(text: str) -> str:
    try:
        return canonical(parse(text))
    except (ExpressionError, RecursionError):
        return text  # the experiment will fail with a parse error; the raw text still identifies it
