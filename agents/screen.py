"""Screening: many factor candidates scored cheaply, only the strongest original ones sent to admission.

A screen scores each candidate's mean daily RankIC on the *training* segment (purged of the label's
horizon, so no label reads a validation day) together with its largest value correlation with the base
feature set and with the library, in batches sized to the executor's workers. Admission then judges
the survivors on the validation segment, which the selection never saw: choosing the best of hundreds
on one segment and confirming on another keeps the search from fitting validation noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agents.contracts import CodedCandidate
from agents.decide import factor_metrics
from agents.errors import ExperimentFailed
from agents.search import skeleton
from quantcore.data.panel import Panel
from quantcore.errors import ExpressionError
from quantcore.expr.ast import future_reads
from quantcore.expr.parser import parse
from sandbox.result import ExperimentResult
from sandbox.spec import MAX_EXPRESSIONS

__all__ = ["ScreenScore", "t_fitness", "screen_segment", "screen_specs", "screen_scores", "select_survivors"]


@dataclass(frozen=True)
class ScreenScore:
    """One screened candidate: its training-segment RankIC statistics and originality."""

    name: str
    expression: str
    ok: bool
    rank_ic: float = math.nan
    rank_ic_t: float = math.nan
    rank_ic_hac_t: float = math.nan  # with a Newey-West standard error (NaN in results of older code)
    rank_icir: float = math.nan
    # what it adds beyond the base features' principal components and the library (NaN: not measured)
    residual_rank_ic: float = math.nan
    residual_t: float = math.nan
    measured_residual: bool = False  # the screen measured it (NaN then means: could not be measured)
    base_corr: float = math.nan  # largest |value correlation| with a base feature
    base_feature: str = ""
    library_corr: float = 0.0  # largest |value correlation| with a library factor
    library_factor: str = ""
    failure: str = ""
    scored: bool = True  # False: its chunk failed as a whole (not a trial of the candidate)

    @property
    def fitness(self) -> float:
        """What the search selects on: see `t_fitness`; the residual RankIC's HAC t when measured (a
        candidate that restates what the model already has scores what it adds: nothing), else the
        raw RankIC's HAC t, else its iid t. Daily ICs of a multi-day label overlap, and a smooth
        ensemble's autocorrelated ICs inflate the iid t most, so the iid t would steer the search
        towards them."""
        if self.measured_residual:
            return t_fitness(self.residual_t, self.ok)
        t = self.rank_ic_hac_t if math.isfinite(self.rank_ic_hac_t) else self.rank_ic_t
        return t_fitness(t, self.ok)

    def metrics(self) -> dict[str, float]:
        return {
            k: v
            for k, v in (
                ("rank_ic", self.rank_ic),
                ("rank_ic_t", self.rank_ic_t),
                ("rank_ic_hac_t", self.rank_ic_hac_t),
                ("rank_icir", self.rank_icir),
                ("residual_rank_ic", self.residual_rank_ic),
                ("residual_t", self.residual_t),
                ("base_corr", self.base_corr),
                ("library_corr", self.library_corr),
            )
            if math.isfinite(v)
        }


def t_fitness(rank_ic_t: float, ok: bool = True) -> float:
    """A trial's fitness: |t| of its mean daily RankIC, 0 when it failed or the t is NaN."""
    return abs(rank_ic_t) if ok and math.isfinite(rank_ic_t) else 0.0


def screen_segment(panel: Panel, train: tuple[str, str], label: str) -> tuple[str, str]:
    """The training segment without its last days whose label reads past it (the label's horizon)."""
    horizon = max((-r.periods for r in future_reads(parse(label))), default=0)
    days = panel.date_index(*train)
    stop = max(days.start + 1, days.stop - horizon)
    return str(panel.calendar[days.start])[:10], str(panel.calendar[stop - 1])[:10]


def screen_specs(
    candidates: list[CodedCandidate],
    *,
    market: str,
    segment: tuple[str, str],
    library: dict[str, str],
    base_features: str,
    corr_days: int,
    seed: int,
    workers: int,
    label: str,
    residual: dict | None = None,
) -> list[tuple[str, dict]]:
    """(experiment name, spec) of the screen: the candidates in chunks, about two per worker so a
    slow chunk does not leave a worker idle. `residual`: the spec keys that make it also score each
    candidate's residual RankIC (`residual_components`, `controls`, `pair_threshold`)."""
    n = len(candidates)
    if n == 0:
        return []
    chunks = max(1, min(n, 2 * max(workers, 1)))
    size = min(MAX_EXPRESSIONS, math.ceil(n / chunks))
    out = []
    for k, start in enumerate(range(0, n, size)):
        batch = {c.name: c.expression for c in candidates[start : start + size]}
        out.append(
            (
                f"screen.{k}",
                {
                    "kind": "factor",
                    "market": market,
                    "expressions": batch,
                    "segment": list(segment),
                    "report": "screen",
                    "library": dict(library),
                    "base_features": base_features,
                    "corr_days": corr_days,
                    "seed": seed,
                    "label": label,
                    **(residual or {}),
                },
            )
        )
    return out


def screen_scores(
    candidates: list[CodedCandidate], results: dict[str, ExperimentResult], specs: dict[str, dict]
) -> list[ScreenScore]:
    """Each candidate's screen score, from its chunk's result. A degenerate factor fails alone; a chunk
    that failed as a whole leaves its members unscored (`scored` False: not a trial, free to come back).
    Every chunk failing at once is not the candidates' doing: a RuntimeError names the first failure."""
    failures = [r for r in results.values() if not r.ok]
    if results and len(failures) == len(results):
        raise ExperimentFailed(f"every screening experiment failed, first: {failures[0].failure.for_llm()[:500]}")
    chunk_of, by_failed = {}, {}
    for key, r in results.items():
        for name in specs.get(key, {}).get("expressions", {}):
            (chunk_of if r.ok else by_failed)[name] = r
    out = []
    for c in candidates:
        r = chunk_of.get(c.name)
        if r is None:
            failed = by_failed.get(c.name)
            why = failed.failure.for_llm().splitlines()[0][:300] if failed is not None else "not scored"
            out.append(ScreenScore(c.name, c.expression, ok=False, failure=why, scored=False))
            continue
        detail = r.details.get(c.name) or {}
        if "degenerate" in detail:
            out.append(ScreenScore(c.name, c.expression, ok=False, failure=str(detail["degenerate"])[:300]))
            continue
        m = factor_metrics(c.name, r)
        out.append(
            ScreenScore(
                c.name,
                c.expression,
                ok=True,
                rank_ic=_num(m.get("rank_ic")),
                rank_ic_t=_num(m.get("rank_ic_t")),
                rank_ic_hac_t=_num(m.get("rank_ic_hac_t")),
                rank_icir=_num(m.get("rank_icir")),
                base_corr=_num(m.get("base_corr")),
                residual_rank_ic=_num(m.get("residual_rank_ic")),
                residual_t=_num(m.get("residual_t")),
                measured_residual="residual_t" in m,
                base_feature=str((detail.get("base_correlation") or {}).get("feature", "")),
                library_corr=_num(m.get("library_corr"), 0.0),
                library_factor=str((detail.get("library_max") or {}).get("factor", "")),
            )
        )
    return out


def select_survivors(
    scores: list[ScreenScore], k: int, bound: float, library: dict[str, str], library_fitness: dict[str, float]
) -> tuple[list[str], dict[str, str]]:
    """Up to `k` candidate names for admission, strongest first, and why each other one stopped.

    A survivor is original against the base features (|corr| < `bound`); one correlated with a library
    factor, or of the same idea at another window (same skeleton), competes to refine that factor: it
    must out-score it on the screen, and only one challenger per library factor goes on. At most one
    survivor per skeleton: the best window of an idea."""
    lib_skeletons = {}
    for name, expr in library.items():
        try:
            lib_skeletons.setdefault(skeleton(parse(expr)), name)
        except ExpressionError:  # a library expression that no longer parses rivals nothing
            continue
    why: dict[str, str] = {}
    chosen: list[str] = []
    used_skeletons: set[str] = set()
    challenged: set[str] = set()
    for s in sorted(scores, key=lambda s: (-s.fitness, s.name)):
        if not s.ok:
            why[s.name] = f"screen failed: {s.failure}"
            continue
        if s.fitness == 0.0:
            why[s.name] = "screen: no RankIC"
            continue
        if math.isfinite(s.base_corr) and s.base_corr >= bound:
            why[s.name] = f"screen: repeats base feature {s.base_feature} (|corr| {s.base_corr:.2f} >= {bound})"
            continue
        shape = skeleton(parse(s.expression))
        if shape in used_skeletons:
            why[s.name] = "screen: a stronger window of the same idea goes on"
            continue
        rival = s.library_factor if s.library_corr >= bound else lib_skeletons.get(shape, "")
        if rival:
            if rival in challenged:
                why[s.name] = f"screen: a stronger challenger of library factor {rival} goes on"
                continue
            if s.fitness <= library_fitness.get(rival, 0.0):
                why[s.name] = (
                    f"screen: repeats library factor {rival} without beating it "
                    f"(|t| {s.fitness:.2f} <= {library_fitness.get(rival, 0.0):.2f})"
                )
                continue
            challenged.add(rival)
        if len(chosen) >= k:
            why[s.name] = f"screen: not among the {k} strongest (|t| {s.fitness:.2f})"
            continue
        chosen.append(s.name)
        used_skeletons.add(shape)
    return chosen, why


def _num(value, default: float = math.nan) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default
