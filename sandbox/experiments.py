"""Run one experiment spec inside a worker: factor scoring, model training, or a whole workflow.

Everything here runs in the worker process; `run_spec` never raises - every problem becomes a
structured `Failure` (see `sandbox.failures`)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from quantcore.data.panel import Panel
from quantcore.evaluate.correlation import (
    ReferenceStack,
    StackBuilder,
    daily_correlations,
    reference_stack,
    stack_components,
)
from quantcore.evaluate.ic import MIN_PAIRS, DailyRanks, daily_ranks
from quantcore.evaluate.report import DECAY_HORIZONS, evaluate_arrays, evaluate_expression
from quantcore.evaluate.significance import newey_west_t, residual_ic, residual_ics, two_sided_p
from quantcore.expr.cache import DiskCache, MemoryCache
from quantcore.expr.evaluate import Evaluator
from quantcore.features import feature_set
from sandbox.failures import DegenerateOutput, classify
from sandbox.guard import ForbiddenOperation, Guard, load_generated
from sandbox.result import ExperimentResult
from sandbox.spec import FactorSpec, ModelSpec, RLSpec, WorkflowSpec, default_segments, parse_spec, spec_hash

__all__ = ["WorkerContext", "run_spec", "SCREEN_METRICS"]

#: Per-factor metrics a factor experiment reports (validation-segment numbers). Besides these,
#: `{name}.library_corr` (always) and `{name}.base_corr` (with `base_features`): see `_originality`.
SCREEN_METRICS = (
    "ic",
    "rank_ic",
    "icir",
    "rank_icir",
    "ic_t",
    "rank_ic_t",
    "rank_ic_hac_t",
    "rank_ic_p",
    "n_days",
    "loss",
    "long_short",
    "long_short_t",
    "autocorr",
    "residual_rank_ic",
    "residual_t",
    "residual_p",
)

_BASE_CHUNK = 32  # base features per evaluator batch when building a base stack


@dataclass
class WorkerContext:
    """What a worker keeps between experiments: attached markets, one evaluator (with a bounded
    memory cache) per market, the label ranked on the scoring days (`label_ranks`: every candidate of
    a loop is scored against it), and the audit-hook guard.

    `feature_cache`: market spec -> a folder where model experiments keep evaluated features on disk,
    shared by every worker (or None: no disk cache). Model candidates mostly reuse one feature set
    (Alpha158 + the library), so all but the first experiment read it instead of computing it."""

    attach: Callable[[str], Panel]  # market spec -> panel (memory-mapped in the pool)
    guard: Guard = field(default_factory=Guard)
    cache_bytes: int = 256 << 20
    output_chars: int = 1 << 20
    feature_cache: Callable[[str], Path | None] = lambda market: None
    # Base-feature stacks kept for originality checks, least recently used dropped first. Stored in
    # float32 (correlations to ~1e-6, far finer than any originality bound) to halve the memory: Alpha158
    # on a 504-day validation segment of 300 names is ~95 MB (190 MB in float64); on 60 screening days, 11 MB.
    base_stack_slots: int = 2
    # Labels ranked on a scoring segment (values, ranks, each day's sorted values and their order:
    # ~15 MB for 300 names x 1512 days), least recently used dropped first: a loop scores its
    # candidates on the train segment and admits them on the valid one.
    label_slots: int = 2
    _panels: dict[str, Panel] = field(default_factory=dict)
    _evaluators: dict[str, Evaluator] = field(default_factory=dict)
    _base_stacks: OrderedDict = field(default_factory=OrderedDict)
    _components: OrderedDict = field(default_factory=OrderedDict)
    _labels: OrderedDict = field(default_factory=OrderedDict)
    _histories: OrderedDict = field(default_factory=OrderedDict)

    def panel(self, market: str) -> Panel:
        if market not in self._panels:
            self._panels[market] = self.attach(market)
        return self._panels[market]

    def evaluator(self, market: str) -> Evaluator:
        if market not in self._evaluators:
            # threads=1: the pool runs one experiment per core
            self._evaluators[market] = Evaluator(
                self.panel(market), threads=1, memory_cache=MemoryCache(self.cache_bytes)
            )
        return self._evaluators[market]

    def history_evaluator(self, market: str, stop: int) -> Evaluator:
        """An evaluator on the market's first `stop` days, sharing the market evaluator's memory cache,
        for factors scored before `stop`: a factor cannot read the future (the evaluator refuses it), so
        its values there are the same bit for bit, for stop / n_days of the cost (60% on a train
        segment). Its panel's fields are views; one is kept per scoring segment, as labels are."""
        ev = self.evaluator(market)
        if stop >= ev.panel.n_days:
            return ev
        return _kept(
            self._histories,
            (market, stop),
            self.label_slots,
            lambda: Evaluator(
                ev.panel.slice_dates(None, ev.panel.calendar[stop - 1]), threads=1, memory_cache=ev.memory_cache
            ),
        )

    def base_stack(self, market: str, features: str | dict[str, str], days: np.ndarray) -> ReferenceStack:
        """The base feature set's values on `days` (absolute day positions) as a float32 reference
        stack, evaluated once per (market, feature set, days) and kept for the next experiments."""
        exprs = _feature_exprs(features)
        return _kept(
            self._base_stacks,
            self._stack_key(market, exprs, days),
            self.base_stack_slots,
            lambda: _base_stack(self.panel(market), exprs, days),
        )

    def _stack_key(self, market: str, exprs: dict[str, str], days: np.ndarray) -> tuple:
        return (
            market,
            self.panel(market).version,
            hashlib.sha256(json.dumps(exprs, sort_keys=True).encode()).hexdigest(),
            hashlib.sha256(np.ascontiguousarray(days, dtype=np.int64).tobytes()).hexdigest(),
        )

    def base_components(self, market: str, features: str | dict[str, str], days: slice, k: int) -> np.ndarray:
        """The base feature set's top-`k` pooled principal-component scores on `days`, (k, N, T) float64:
        the controls a residual IC regresses on, computed once per (market, feature set, days, k)."""
        positions = np.arange(days.start, days.stop)
        key = (market, self.panel(market).version, json.dumps(features, sort_keys=True), days.start, days.stop, k)

        def build() -> np.ndarray:
            # the stack kept when an experiment already uses it (admission: its correlations too), else
            # built for the components alone and dropped (a screen's whole training segment: ~280 MB)
            exprs = _feature_exprs(features)
            kept = self._base_stacks.get(self._stack_key(market, exprs, positions))
            return stack_components(kept if kept is not None else _base_stack(self.panel(market), exprs, positions), k)

        return _kept(self._components, key, self.base_stack_slots, build)

    def label_ranks(self, market: str, label: str, days: slice) -> DailyRanks:
        """The label's values on `days` ranked once per day (see `daily_ranks`), for every factor scored
        against it: evaluated and sorted once per (market data version, label, days), then kept."""
        panel = self.panel(market)

        def build() -> DailyRanks:
            values = self.evaluator(market).evaluate({"label": label}, allow_future=True, dtype=np.float64)["label"]
            return daily_ranks(values[:, days])

        return _kept(self._labels, (market, panel.version, label, days.start, days.stop), self.label_slots, build)

    def dataset_evaluator(self, market: str, panel: Panel) -> Evaluator:
        """A fresh evaluator for one model experiment's dataset on `panel`, with the market's disk cache
        when `panel` is the market itself (not one extended by a generated factor's field)."""
        folder = self.feature_cache(market) if panel is self.panel(market) else None
        if folder is not None:
            try:
                return Evaluator(panel, disk_cache=DiskCache(folder))
            except OSError:  # an unwritable sandbox folder: compute the features, as without a cache
                pass
        return Evaluator(panel)


def _kept(cache: OrderedDict, key, slots: int, build: Callable[[], Any]):
    """cache[key], built on a miss; at most `slots` entries, the least recently used dropped first
    (before building the next, so that the old and the new never take memory together)."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    while len(cache) >= max(1, slots):
        cache.popitem(last=False)
    value = cache[key] = build()
    return value


def _feature_exprs(features: str | dict[str, str]) -> dict[str, str]:
    """A base feature set's name -> expression (a set's name, or the mapping itself)."""
    return feature_set(features) if isinstance(features, str) else dict(features)


def _base_stack(panel: Panel, exprs: dict[str, str], days: np.ndarray) -> ReferenceStack:
    """`exprs` evaluated on `days` (absolute day positions) of `panel`, as a float32 reference stack."""
    names = list(exprs)
    builder = StackBuilder(names, panel.n_instruments, len(days), np.float32)
    # Only the history up to the last needed day: the features cannot read the future (the evaluator
    # refuses it), so their values there are the same bit for bit, and a train segment's cost is 60%.
    # Its own evaluator without a memory cache: 158 whole-history features would flush the
    # candidates' and the label's cached values; chunks bound the peak to 32 (N, T) arrays.
    last = int(np.max(days))
    ev = Evaluator(panel if last == panel.n_days - 1 else panel.slice_dates(None, panel.calendar[last]), threads=1)
    for lo in range(0, len(names), _BASE_CHUNK):
        chunk = {k: exprs[k] for k in names[lo : lo + _BASE_CHUNK]}
        for j, values in enumerate(ev.evaluate(chunk, dtype=np.float64).values()):
            builder.add(lo + j, values[:, days])
    return builder.build()


def run_spec(raw_spec: Any, ctx: WorkerContext, workdir: str | Path) -> ExperimentResult:
    """Run a spec (dict/JSON/spec object) with `workdir` as the experiment's own folder."""
    start = time.perf_counter()
    try:
        spec = parse_spec(raw_spec)
        key = spec_hash(spec)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a structured result
        return ExperimentResult(
            spec_hash="",
            kind=str(getattr(raw_spec, "get", lambda *_: "?")("kind", "?")),
            failure=classify(exc),
            seconds=time.perf_counter() - start,
        )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx.guard.refusals = []
    try:
        runner = {FactorSpec: _factor, ModelSpec: _model, WorkflowSpec: _workflow, RLSpec: _rl}[type(spec)]
        metrics, details, artifacts, version = runner(spec, ctx, workdir)
        if ctx.guard.refusals:  # refused after its guarded blocks (a finaliser, say): blocked, and still reported
            raise ForbiddenOperation(f"the sandbox refused {ctx.guard.refusals[0]}")
        return ExperimentResult(
            spec_hash=key,
            kind=spec.kind,
            metrics=metrics,
            details=details,
            artifacts=artifacts,
            seconds=time.perf_counter() - start,
            data_version=version,
        )
    except BaseException as exc:  # noqa: BLE001 - includes the CPU-limit signal's exception
        # (type(), not isinstance: isinstance reads `__class__`, which generated code can make raise)
        if issubclass(type(exc), (KeyboardInterrupt, SystemExit)) and not ctx.guard.refusals:
            raise
        failure = classify(exc, refusals=ctx.guard.refusals, source=getattr(spec, "code", None))
        return ExperimentResult(spec_hash=key, kind=spec.kind, failure=failure, seconds=time.perf_counter() - start)


# ---- factor ----------------------------------------------------------------------------------------


def _factor(spec: FactorSpec, ctx: WorkerContext, workdir: Path):
    panel = ctx.panel(spec.market)
    ev = ctx.evaluator(spec.market)
    ev.compile(spec.expressions)  # parse + validate all first: one bad expression fails the experiment early
    ev.compile({"label": spec.label}, allow_future=True)
    if spec.segment is not None:
        days = panel.date_index(*spec.segment)
    else:
        days = panel.date_index(*_segments(spec.segments or (spec.pipeline and spec.pipeline.segments), panel)["valid"])
    if days.stop <= days.start:
        raise DegenerateOutput(f"no trading days in the scoring segment {spec.segment}")
    # Expressions only up to the segment's last day (bit-identical there, see `history_evaluator`),
    # except for a pipeline, whose model trains and tests on every segment.
    fev = ev if spec.pipeline is not None else ctx.history_evaluator(spec.market, days.stop)
    factors = fev.evaluate(spec.expressions, dtype=np.float64) if spec.expressions else {}
    if spec.code is not None:
        factors[spec.code_name] = _code_factor(spec, panel, ctx, workdir)
    label = ctx.label_ranks(spec.market, spec.label, days)  # the same for every factor of the loop
    library = fev.evaluate(spec.library, dtype=np.float64) if spec.library else {}
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {
        "segment": [str(panel.calendar[days.start])[:10], str(panel.calendar[days.stop - 1])[:10]]
    }
    if spec.lookahead_check:
        _check_no_look_ahead(spec, panel, factors, days, ctx, workdir)
    corr_at = _correlation_days(days, spec.corr_days)  # absolute day positions
    # the library in float64 (exact: a few factors, built per experiment); the base set from the worker's store
    lib_stack = reference_stack({k: _clean(v[:, corr_at]) for k, v in library.items()}) if library else None
    base_stack = ctx.base_stack(spec.market, spec.base_features, corr_at) if spec.base_features is not None else None
    lib_corr: dict[str, np.ndarray] = {}
    deferred: dict[str, np.ndarray] = {}  # a screen's factors whose residual RankIC is computed together
    paired = spec.report != "screen" and (spec.pair_threshold is not None or bool(spec.pair_with))
    for name, values in factors.items():
        window = values[:, days]
        try:
            _check_degenerate(name, window, spec.max_inf_share)
        except DegenerateOutput as e:
            if spec.report != "screen":
                raise
            details[name] = {"degenerate": str(e)}  # a screen judges each factor alone: the rest are scored
            continue
        clean = _clean(window)
        if spec.report == "screen":
            row, daily_rank = _screen(clean, label, panel.calendar[days], spec.expressions.get(name, name))
        else:
            report, data = evaluate_arrays(
                clean, label, calendar=panel.calendar[days], expression=spec.expressions.get(name, name)
            )
            row = report.to_dict()
            daily_rank = _daily_rank_of(data)
        if spec.decay:
            full = (
                evaluate_expression(
                    panel,
                    spec.expressions[name],
                    spec.label,
                    panel.calendar[days.start],
                    panel.calendar[days.stop - 1],
                    evaluator=ev,
                    decay_horizons=DECAY_HORIZONS,
                )
                if name in spec.expressions
                else None
            )
            row["decay"] = full.to_dict()["decay"] if full else {}
        hac = newey_west_t(daily_rank)  # daily ICs of a multi-day label overlap: the iid t overstates them
        row["rank_ic_hac_t"], row["rank_ic_p"] = _finite(hac.t), _finite(two_sided_p(hac.t))
        x = clean[:, corr_at - days.start]
        if lib_stack is not None:
            lib_corr[name] = daily_correlations(x, lib_stack, min_pairs=MIN_PAIRS)
            if spec.report == "full":
                row["correlations"] = {k: _finite(c) for k, c in zip(lib_stack.names, lib_corr[name])}
        metrics.update(_originality(name, row, lib_stack, lib_corr.get(name), "library_max", "factor", "library_corr"))
        if base_stack is not None:
            base = daily_correlations(x, base_stack, min_pairs=MIN_PAIRS)
            metrics.update(_originality(name, row, base_stack, base, "base_correlation", "feature", "base_corr"))
        if spec.residual_components is not None:
            if spec.report == "screen":  # all of the screen's factors at once, below
                deferred[name] = clean
            else:
                row.update(_residual(spec, name, clean, label, days, ctx, library, lib_stack, lib_corr.get(name)))
        if paired:
            row["daily_rank_ic"] = _series(daily_rank)
        details[name] = row
        _report_metrics(metrics, name, row)
    if deferred:
        for name, row in _screen_residuals(spec, deferred, label, days, ctx, library, lib_stack, lib_corr).items():
            details[name].update(row)
            _report_metrics(metrics, name, row)
    if paired:
        details["library_daily_rank_ic"] = _paired_library(
            library, lib_corr, spec.pair_threshold, spec.pair_with, days, label
        )
    artifacts: dict[str, str] = {}
    if spec.pipeline is not None:
        metrics_p, details_p, artifacts = _pipeline(spec, panel, factors, ctx, workdir)
        metrics.update(metrics_p)
        details["pipeline"] = details_p
    return metrics, details, artifacts, panel.version


def _report_metrics(metrics: dict[str, float], name: str, row: dict) -> None:
    for m in SCREEN_METRICS:
        if m in row:
            v = row[m]
            metrics[f"{name}.{m}"] = math.nan if v is None else float(v)


def _residual_controls(spec: FactorSpec, lib_stack: ReferenceStack | None, lib_corr: np.ndarray | None) -> list[str]:
    """The library factors a factor's residual is regressed on: `spec.controls` less its rivals (the
    factors it repeats, |corr| >= `pair_threshold`, or named in `pair_with`)."""
    corr = dict(zip(lib_stack.names, lib_corr)) if lib_stack is not None and lib_corr is not None else {}
    threshold = spec.pair_threshold

    def rival(k: str) -> bool:
        c = corr.get(k, math.nan)
        return k in spec.pair_with or (threshold is not None and math.isfinite(c) and abs(c) >= threshold)

    return [k for k in spec.controls if not rival(k)]


def _control_stack(
    spec: FactorSpec, used: list[str], days: slice, ctx: WorkerContext, library: dict[str, np.ndarray]
) -> np.ndarray:
    base = ctx.base_components(spec.market, spec.base_features, days, spec.residual_components)
    return np.concatenate([base, np.stack([_clean(library[k][:, days]) for k in used])]) if used else base


def _residual_row(res, used: list[str], spec: FactorSpec) -> dict:
    return {
        "residual_rank_ic": _finite(res.mean),
        "residual_t": _finite(res.hac.t),
        "residual_p": _finite(two_sided_p(res.hac.t)),
        "residual_controls": used,
        "residual_components": spec.residual_components,
    }


def _residual(
    spec: FactorSpec,
    name: str,
    factor: np.ndarray,
    label: DailyRanks,
    days: slice,
    ctx: WorkerContext,
    library: dict[str, np.ndarray],
    lib_stack: ReferenceStack | None,
    lib_corr: np.ndarray | None,
) -> dict:
    """A factor's residual RankIC on the scoring days (see `FactorSpec.residual_components`): its
    mean, HAC t and two-sided p, and the library factors it was regressed on."""
    used = _residual_controls(spec, lib_stack, lib_corr)
    res = residual_ic(factor, label.values, _control_stack(spec, used, days, ctx, library))
    return _residual_row(res, used, spec)


def _screen_residuals(
    spec: FactorSpec,
    factors: dict[str, np.ndarray],
    label: DailyRanks,
    days: slice,
    ctx: WorkerContext,
    library: dict[str, np.ndarray],
    lib_stack: ReferenceStack | None,
    lib_corr: dict[str, np.ndarray],
) -> dict[str, dict]:
    """`_residual` of a screen's factors, fitted together (`residual_ics`) against one stack of every
    control, each factor using its own subset: a screen scores thousands of days for dozens of factors."""
    used = {name: _residual_controls(spec, lib_stack, lib_corr.get(name)) for name in factors}
    every = [k for k in spec.controls if any(k in u for u in used.values())]
    controls = _control_stack(spec, every, days, ctx, library)
    n_base = controls.shape[0] - len(every)
    uses = [list(range(n_base)) + [n_base + every.index(k) for k in used[name]] for name in factors]
    results = residual_ics(list(factors.values()), label, controls, uses=uses)
    return {name: _residual_row(res, used[name], spec) for name, res in zip(factors, results)}


def _screen(factor: np.ndarray, label: DailyRanks, calendar: np.ndarray, expression: str) -> tuple[dict, np.ndarray]:
    """IC and RankIC with their ICIR and t-statistics only: the bulk-screening subset of the report;
    also the daily RankIC series its `rank_ic` is the mean of."""
    from quantcore.evaluate.factor_data import align
    from quantcore.evaluate.ic import daily_ic, ic_stats

    data = align(factor, label, calendar=calendar, name=expression)
    ic = ic_stats(daily_ic(data.factor, data.label))
    daily_rank = _daily_rank_of(data)
    rank_ic = ic_stats(daily_rank)
    return (
        {
            "expression": expression,
            "ic": ic.mean,
            "rank_ic": rank_ic.mean,
            "icir": ic.icir,
            "rank_icir": rank_ic.icir,
            "ic_t": ic.t_stat,
            "rank_ic_t": rank_ic.t_stat,
            "n_days": data.n_days,
            "loss": data.loss,
        },
        daily_rank,
    )


def _daily_rank_of(data) -> np.ndarray:
    """Daily RankIC of aligned factor data, computed as `evaluate_arrays` computes `rank_ic` (its mean)."""
    from quantcore.evaluate.ic import daily_ic

    return daily_ic(data.factor_rank, data.label_rank, MIN_PAIRS)


def _clean(x: np.ndarray) -> np.ndarray:
    """+-inf as NaN: a division by zero is a missing value to every score. `x` itself (not a copy)
    when it has none: nothing downstream writes to it."""
    inf = np.isinf(x)
    return np.where(inf, np.nan, x) if inf.any() else x


def _correlation_days(days: slice, corr_days: int) -> np.ndarray:
    """Absolute positions of the days value correlations are averaged over: the whole scoring segment,
    or `corr_days` of its days evenly spaced from its first to its last."""
    n = days.stop - days.start
    if corr_days == 0 or corr_days >= n:
        return np.arange(days.start, days.stop)
    return days.start + np.unique(np.linspace(0, n - 1, corr_days).round().astype(np.int64))


def _originality(
    name: str, row: dict, stack: ReferenceStack | None, corr: np.ndarray | None, key: str, kind: str, metric: str
) -> dict[str, float]:
    """Put the reference of largest |correlation| in `row[key]` ({kind: its name, "corr": signed}) and
    return `{name.metric: that |corr|}`: 0.0 against no references, NaN when none could be compared
    (no day with enough common instruments), and then no `row[key]`."""
    if stack is None or corr is None:
        return {f"{name}.{metric}": 0.0}
    ok = np.isfinite(corr)
    if not ok.any():
        return {f"{name}.{metric}": math.nan}
    k = int(np.argmax(np.where(ok, np.abs(corr), -1.0)))
    row[key] = {kind: stack.names[k], "corr": float(corr[k])}
    return {f"{name}.{metric}": float(abs(corr[k]))}


def _paired_library(
    library: dict[str, np.ndarray],
    lib_corr: dict[str, np.ndarray],
    threshold: float | None,
    pair_with: tuple[str, ...],
    days: slice,
    label: DailyRanks,
) -> dict[str, list[float | None]]:
    """Library name -> its daily RankIC on the scoring days, for each library factor some candidate
    correlates with at |corr| >= `threshold` and each one named in `pair_with` (the days and order of
    each candidate's `daily_rank_ic`)."""
    from quantcore.evaluate.ic import daily_rank_ic

    names = list(library)
    paired = [
        k
        for j, k in enumerate(names)
        if k in pair_with
        or (threshold is not None and any(abs(c[j]) >= threshold for c in lib_corr.values() if np.isfinite(c[j])))
    ]
    return {k: _series(daily_rank_ic(_clean(library[k][:, days]), label, MIN_PAIRS)) for k in paired}


def _series(x: np.ndarray) -> list[float | None]:
    return [_finite(v) for v in x]


def _finite(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _code_factor(spec: FactorSpec, panel: Panel, ctx: WorkerContext, workdir: Path) -> np.ndarray:
    """Run generated `factor(fields)` under the guard; returns its (N, T) float64 output."""
    out: list[np.ndarray] = []
    _run_code(spec, [panel], ctx, workdir, lambda _, arr: out.append(arr))
    return out[0]


def _run_code(
    spec: FactorSpec,
    panels: Iterable[Panel],
    ctx: WorkerContext,
    workdir: Path,
    emit: Callable[[int, np.ndarray], None],
) -> None:
    """Run generated `factor(fields)` on each panel, loaded afresh each time (no state carries over),
    and hand `emit` (position, its (N, T) float64 output). One guarded block for all: its exit (a full
    garbage collection, ~50 ms in a worker) is paid once. `panels` and `emit` run guarded: numpy only."""
    guard = ctx.guard
    with guard.active(workdir, ctx.output_chars):
        for i, panel in enumerate(panels):
            namespace = load_generated(spec.code, restricted=guard.python_rules)
            fn = namespace.get("factor")
            if not callable(fn):
                raise DegenerateOutput("the code defines no function `factor(fields)`")
            out = fn(_ReadOnlyFields(panel.fields))
            # converted (and the output released) while still guarded: a returned object's `__array__`,
            # `__float__` or `__del__` is generated code too
            try:
                arr = np.asarray(out, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise DegenerateOutput(f"factor() returned a {type(out).__name__} that is not numeric: {e}") from None
            del namespace, fn, out
            if guard.refusals:
                raise ForbiddenOperation(f"the sandbox refused {guard.refusals[0]}")
            if arr.shape != (panel.n_instruments, panel.n_days):
                raise DegenerateOutput(
                    f"factor() returned shape {arr.shape}; expected (instruments, days) = "
                    f"{(panel.n_instruments, panel.n_days)}"
                )
            arr = np.array(arr, copy=True)
            arr[panel.outside_span] = np.nan
            emit(i, arr)
            del arr
    if guard.refusals:
        raise ForbiddenOperation(f"the sandbox refused {guard.refusals[0]}")


def _check_no_look_ahead(
    spec: FactorSpec, panel: Panel, factors: dict[str, np.ndarray], days: slice, ctx: WorkerContext, workdir: Path
) -> None:
    """Perturbation test at `spec.lookahead_cuts` seeded cut days spread over the scoring segment (one
    in each equal part, `lookahead_cut_points`) and its last day: for each, scramble every field after
    the cut; a factor that reads only the past keeps every value up to the cut bit for bit. (One
    mid-segment cut passed code that leaks only later in the segment.)"""
    from quantcore.errors import LookAheadError
    from quantcore.evaluate.significance import lookahead_cut_points
    from quantcore.expr.ast import fields_used

    seed = spec.seed % (1 << 64)  # numpy seeds are non-negative; a spec's may not be
    k = min(spec.lookahead_cuts, days.stop - days.start)  # a segment shorter than k days: every day is a cut
    cuts = set(lookahead_cut_points(days.start, days.stop, k, seed))
    # ... and the segment's last day (the one before it when the market ends there: nothing follows the
    # market's last day): no value on the segment may depend on what follows it, so code that leaks
    # only on the segment's last few days is caught whatever the seed.
    last = min(days.stop - 1, panel.n_days - 2)
    cuts = sorted(cuts | {last} if last >= days.start else cuts)
    # Only the days up to the segment's end (views): no value after it is compared, and a factor that
    # reads only the past has the same values there on the shorter panel (see `history_evaluator`);
    # one that reads past the end changes, as it does when those days are scrambled.
    history = panel.slice_dates(None, panel.calendar[days.stop - 1])

    def compare(name: str, i: int, again: np.ndarray) -> None:
        cut = cuts[i]
        before, after = factors[name][:, : cut + 1], again[:, : cut + 1]
        changed = ~((before == after) | (np.isnan(before) & np.isnan(after)))
        if changed.any():
            first = str(panel.calendar[int(np.nonzero(changed)[1].min())])[:10]
            raise LookAheadError(
                f"factor {name!r} changed on {int(changed.sum())} cells up to {str(panel.calendar[cut])[:10]} "
                f"(look-ahead cut {i + 1} of {len(cuts)}, seed {spec.seed}) when only later data changed "
                f"(first on {first}): it reads the future; use only data up to each day"
            )

    if spec.expressions:  # scramble only the fields they read
        used = set().union(*(fields_used(c.node) for c in Evaluator(history).compile(spec.expressions)))
        for i, cut in enumerate(cuts):
            if cut + 1 >= history.n_days:
                continue  # nothing scrambled, later days only cut off: what `history_evaluator` relies on
            again = Evaluator(_scrambled(history, cut, seed, used), threads=1).evaluate(
                spec.expressions, dtype=np.float64
            )
            for name, values in again.items():
                compare(name, i, values)
    if spec.code is not None:  # every field; each scrambled panel built (guarded) when its turn comes
        shadows = (_scrambled(history, cut, seed, set(history.fields)) for cut in cuts)
        _run_code(spec, shadows, ctx, workdir, lambda i, values: compare(spec.code_name, i, values))


def _scrambled(panel: Panel, cut: int, seed: int, keys: set[str]) -> Panel:
    """`panel` with the fields in `keys` times seeded noise in [0.5, 1.5) after day `cut`, as fresh
    read-only copies (one cut's scrambling never reaches another's; generated code cannot write to them);
    the other fields shared. Field j's noise depends on (seed, cut, j) only: reproducible per spec."""
    fields = {}
    for j, (key, arr) in enumerate(panel.fields.items()):
        if key in keys:
            arr = np.array(arr, copy=True)
            tail = arr[:, cut + 1 :]
            tail *= np.random.default_rng((seed, cut, j)).uniform(0.5, 1.5, size=tail.shape)
            arr.flags.writeable = False
        fields[key] = arr
    return Panel(panel.calendar, panel.instruments, fields, panel.starts, panel.ends, panel.name, panel.meta)


class _ReadOnlyFields(dict):
    """The panel's fields as a plain read-only mapping (the arrays themselves are read-only maps)."""

    def __setitem__(self, key, value):
        raise TypeError("fields are read-only; build new arrays instead")


def _check_degenerate(name: str, x: np.ndarray, max_inf_share: float) -> None:
    finite = np.isfinite(x)
    n_finite = int(np.count_nonzero(finite))
    cells = x.size - int(np.count_nonzero(np.isnan(x)))  # not NaN: finite or +-inf
    n_inf = cells - n_finite
    if cells == 0:
        raise DegenerateOutput(f"factor {name!r} is all NaN on the scoring segment")
    if n_finite == 0:
        raise DegenerateOutput(
            f"factor {name!r} has no finite value on the scoring segment (all +-inf: a division by zero?)"
        )
    if n_inf and n_inf / cells > max_inf_share:
        raise DegenerateOutput(
            f"factor {name!r} has {n_inf} infinite values ({n_inf / cells:.1%} of its values; "
            "guard divisions, e.g. x / (y + 1e-12))"
        )
    if np.max(x, initial=-np.inf, where=finite) == np.min(x, initial=np.inf, where=finite):
        raise DegenerateOutput(f"factor {name!r} is constant ({x[finite][0]:g}) on the scoring segment")


# ---- model / workflow ----------------------------------------------------------------------------------


def _pipeline(spec: FactorSpec, panel: Panel, factors: dict[str, np.ndarray], ctx: WorkerContext, workdir: Path):
    """Base features + the factors -> model -> TopkDropout, via the workflow runner."""
    p = spec.pipeline
    extra = dict(spec.expressions)
    if spec.code is not None:  # a generated factor enters the feature set as a panel field
        panel = panel.with_fields(**{spec.code_name: factors[spec.code_name]})
        extra[spec.code_name] = f"${spec.code_name}"
    cfg = {
        "name": f"factor-{spec_hash(spec)[:8]}",
        "seed": spec.seed,
        "data": {"market": spec.market},
        "dataset": {
            "features": p.features,
            "extra_features": extra,
            "label": spec.label,
            "segments": _segments(p.segments or spec.segments, panel),
        },
        "model": {"family": p.family, "params": p.params},
        "backtest": p.backtest.model_dump(),
        "record": {"plots": False},
    }
    return _run_workflow_doc(cfg, panel, workdir, ctx, market=spec.market)


def _model(spec: ModelSpec, ctx: WorkerContext, workdir: Path):
    panel = ctx.panel(spec.market)
    norm = {"csrank": "CSRankNorm", "cszscore": "CSZScoreNorm"}.get(spec.feature_norm)
    cfg = {
        "name": f"model-{spec_hash(spec)[:8]}",
        "seed": spec.seed,
        "data": {"market": spec.market},
        "dataset": {
            "features": spec.features,
            "extra_features": spec.extra_features,
            "label": spec.label,
            "segments": _segments(spec.segments, panel),
            "infer_processors": [{"name": norm, "fields_group": "feature"}] if norm else [],
        },
        "model": {"family": spec.family, "params": spec.params},
        "backtest": spec.backtest.model_dump(),
        "record": {"plots": False},
    }
    model = None
    if spec.code is not None:
        from sandbox.generated_model import GeneratedModel

        model = GeneratedModel(spec.code, ctx.guard, workdir, ctx.output_chars, seed=spec.seed)
    metrics, details, artifacts = _run_workflow_doc(cfg, panel, workdir, ctx, market=spec.market, model=model)
    return metrics, details, artifacts, panel.version


def _workflow(spec: WorkflowSpec, ctx: WorkerContext, workdir: Path):
    from quantcore.workflow.config import parse_workflow

    cfg = parse_workflow(spec.workflow, "spec.workflow")
    panel = ctx.panel(cfg.data.market)
    metrics, details, artifacts = _run_workflow_doc(
        cfg.model_dump(mode="json"), panel, workdir, ctx, market=cfg.data.market
    )
    return metrics, details, artifacts, panel.version


def _run_workflow_doc(doc: dict, panel: Panel, workdir: Path, ctx: WorkerContext, *, market: str, model=None):
    from quantcore.recording.capture import CaptureRecorder
    from quantcore.workflow.config import parse_workflow
    from quantcore.workflow.runner import run_workflow

    cfg = parse_workflow(doc, "spec")
    capture = workdir / "mlflow"
    evaluator = ctx.dataset_evaluator(market, panel)
    result = run_workflow(cfg, CaptureRecorder(capture), panel=panel, model=model, evaluator=evaluator)
    metrics = {k: float(v) for k, v in result.metrics.items()}
    details = {"seconds": result.seconds, "daily_rank_ic": _daily_rank_ic(result.prediction, evaluator, cfg)}
    return metrics, details, {"mlflow_capture": str(capture)}


def _daily_rank_ic(prediction, evaluator: Evaluator, cfg) -> list[float | None]:
    """The evaluated segment's daily RankIC of the predictions (for noise-band comparisons of models)."""
    from quantcore.backtest import align_signal
    from quantcore.evaluate.ic import daily_rank_ic

    panel = evaluator.panel
    days = panel.date_index(*cfg.dataset.segments.test)
    label = evaluator.evaluate({"y": cfg.dataset.label}, allow_future=True, dtype=np.float64)["y"]
    scores = align_signal(prediction, panel).T
    return _series(daily_rank_ic(scores[:, days], label[:, days]))


def _segments(segments, panel: Panel) -> dict:
    """The spec's segments as JSON, or the market's default 60/20/20 split."""
    return segments.model_dump(mode="json") if segments is not None else default_segments(panel.calendar)


def _rl(spec: RLSpec, ctx: WorkerContext, workdir: Path):
    from sandbox.failures import SpecNotRunnable

    raise SpecNotRunnable("rl experiments are not runnable yet (the spec kind is reserved for the RL work)")
