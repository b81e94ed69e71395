"""The loop's nodes: plain functions from the iteration state to its update, given the services.

scheduler -> proposer -> coder -> review -> runner -> critic -> update (see `agents.graph`)."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable

from pydantic import BaseModel, ConfigDict

from agents.backend import Backend
from agents.config import LoopConfig, loop_label, purge_days
from agents.contracts import (
    NAME_MAX,
    CodedCandidate,
    CoderOutput,
    CriticOutput,
    FactorCandidate,
    Hypothesis,
    ProposalContext,
    Review,
    TraceSummary,
    Verdict,
)
from agents.decide import (
    AdmissionRules,
    admission_p,
    admit_factor,
    compare_models,
    factor_metrics,
    merge_folds,
    model_score,
    refine_factor,
    trial_significance,
)
from agents.recorded import cite, read_back
from agents.scheduler import choose_direction, update_scheduler
from agents.screen import screen_scores, screen_segment, screen_specs, select_survivors, t_fitness
from agents.search import ScoredExpression, SearchPool, affine_core, skeleton
from agents.store import (
    DecisionRow,
    EdgeRow,
    ExperimentRow,
    HypothesisRow,
    IterationRow,
    LibraryFactorRow,
    LLMCallRow,
    ReviewRow,
    RunRow,
    Store,
    TrialRow,
    dumps,
)
from quantcore.data.panel import Panel
from quantcore.dataset.errors import SegmentError
from quantcore.errors import ExpressionError
from quantcore.expr.ast import depth, node_count
from quantcore.expr.canonical import canonical
from quantcore.expr.parser import parse
from quantcore.expr.validate import validate
from sandbox.executor import BaseExecutor
from sandbox.result import ExperimentResult, FailureCategory

__all__ = [
    "IterationState",
    "Services",
    "RunMemory",
    "inner_folds",
    "fold_key",
    "candidate_specs",
    "candidate_result",
    "experiment_rows",
]


class IterationState(BaseModel):
    """What flows through the graph for one iteration (typed: a misspelt key is an error)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    iteration: int
    direction: str | None = None
    context: ProposalContext | None = None
    hypothesis: Hypothesis | None = None
    coded: CoderOutput | None = None
    review: Review | None = None
    results: dict[str, dict] = {}  # candidate -> ExperimentResult.to_dict()
    screen: list[CodedCandidate] = []  # factor candidates screened this iteration (before the survivors)
    screen_specs: dict[str, dict] = {}  # screen chunk -> its spec
    screen_why: dict[str, str] = {}  # screened candidate -> why it did not go on to admission
    screen_results: dict[str, dict] = {}  # screen chunk -> ExperimentResult.to_dict()
    critic: CriticOutput | None = None
    stop: bool = False
    started: float = 0.0


#: What the run keeps in memory for the proposer (restored the same way on resume): the latest failures,
#: each cut to this many characters, and the latest distinct lessons of the critic.
FAILURES_KEPT, FAILURE_CHARS, LESSONS_KEPT = 10, 400, 8


def failure_note(candidate: str, text: str) -> dict:
    """A failed or refused candidate as the proposer sees it in `RunMemory.failures`."""
    return {"candidate": candidate, "failure": text[:FAILURE_CHARS]}


@dataclass
class RunMemory:
    """The run's state between iterations (restored from the store on resume)."""

    run_id: str
    iterations_done: int = 0
    best: dict = field(default_factory=dict)  # {"name", "family", "params", "metrics", "daily_rank_ic"}
    scheduler: dict = field(default_factory=dict)
    library: dict[str, str] = field(default_factory=dict)  # name -> expression (project-wide)
    library_metrics: dict[str, dict] = field(default_factory=dict)
    tried: set[str] = field(default_factory=set)  # forms (canonical affine cores) tried on this market, project-wide
    trials: list[ScoredExpression] = field(default_factory=list)  # scored trials on this market, oldest first
    admission_p: list[float] = field(default_factory=list)  # raw p of every admission trial on this market
    planned_tests: int = 0  # the FDR family's size at the run's end: earlier runs' tests + the run's budget (0: off)
    library_fitness: dict[str, float] = field(default_factory=dict)  # library factor -> its screen fitness
    market: str = ""  # the panel's data version trials are recorded under
    taken_names: set[str] = field(default_factory=set)  # library names in use, retired ones included (unique)
    families: dict[str, int] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    lessons: list[str] = field(default_factory=list)
    tokens: int = 0
    cost_usd: float = 0.0
    cpu_seconds: float = 0.0
    stopped: bool = False


@dataclass
class Services:
    """Everything the nodes use, passed explicitly (no globals)."""

    config: LoopConfig
    store: Store
    executor: BaseExecutor
    backend: Backend
    panel: Panel
    segments: dict[str, tuple[str, str]]
    memory: RunMemory
    reviewer: Callable[[Hypothesis, CoderOutput, Callable[[str], str | None]], Review] | None = None
    on_event: Callable[[str, dict], None] = lambda kind, data: None
    started: float = field(default_factory=time.monotonic)
    _base_forms: dict[str, str] | None = None

    def held_forms(self) -> dict[str, str]:
        """Form (canonical affine core) -> who holds it: the base feature set's columns and the
        library's factors. A candidate of one of these forms adds nothing the model lacks."""
        if self._base_forms is None:
            from quantcore.features import feature_set

            try:
                base = feature_set(self.config.base_features)
            except ValueError:
                base = {}
            self._base_forms = {form_of(e): f"base feature {k}" for k, e in base.items()}
        return {**self._base_forms, **{form_of(e): f"library factor {k}" for k, e in self.memory.library.items()}}

    @property
    def workers(self) -> int:
        """The run's sandbox workers (the executor's parallelism): screen batches are sized and chunked
        from it. The stored setting, not the executor at hand: a replay on fewer workers proposes alike."""
        return self.config.workers

    @property
    def screen_size(self) -> int:
        """Factor candidates the offline search proposes per iteration (0 or less: no screening)."""
        if self.backend.name != "offline" or self.config.screen_per_worker == 0:
            return self.config.n_factor_candidates
        return max(self.config.screen_per_worker * self.workers, self.config.n_factor_candidates)

    @property
    def rules(self) -> AdmissionRules:
        c = self.config
        return AdmissionRules(
            min_abs_rank_ic=c.min_abs_rank_ic,
            min_abs_rank_icir=c.min_abs_rank_icir,
            max_library_corr=c.max_library_corr,
            max_nodes=c.max_nodes,
            max_depth=c.max_depth,
            fdr_q=c.fdr_q,
            fdr_method=c.fdr_method,
            model_alpha=c.model_alpha,
            model_tests=c.budget * c.n_model_candidates,
        )


MIN_FOLD_FIT_DAYS = 250  # about a trading year: Alpha158's 60-day warm-up leaves enough rows to fit on


def inner_folds(
    segments: dict[str, tuple[str, str]], panel: Panel, folds: int, *, horizon: int, embargo: int
) -> list[dict[str, tuple[str, str]]]:
    """Walk-forward folds for model experiments: fold 0 scores the validation segment (fitting on the
    first 80% of train, early-stopping on the rest); fold j scores the block of the same length that
    ends where fold j-1's block starts, fitting and early-stopping on what precedes it. More scored days
    narrow the noise band honestly, without touching the test segment. A fold is dropped when what
    precedes its block is shorter than the block or than MIN_FOLD_FIT_DAYS (too little to fit on).

    Purged: `horizon + embargo` trading days (the label's horizon, `label_horizon`, plus an embargo) lie
    between fitting and early-stopping and between early-stopping and the scored block, so no label a
    fold fits or stops on reads a price of the days after it. Fold 0 early-stops until train's end or
    `horizon + embargo` days before valid, whichever is earlier (purged segments already end there)."""
    if horizon < 0 or embargo < 0:
        raise ValueError(f"horizon and embargo must be >= 0 trading days, got {horizon} and {embargo}")
    drop = horizon + embargo
    train, valid = panel.date_index(*segments["train"]), panel.date_index(*segments["valid"])
    block = valid.stop - valid.start
    day = lambda i: str(panel.calendar[i])[:10]  # noqa: E731
    out = []
    for j in range(max(folds, 1)):
        start = valid.start - j * block
        stop_end = min(train.stop, valid.start - drop) if j == 0 else start - drop  # early-stopping ends here
        if j > 0 and stop_end - train.start < max(block, MIN_FOLD_FIT_DAYS):
            break
        end = valid.stop if j == 0 else start + block
        cut = train.start + int((stop_end - train.start) * 0.8)  # early-stopping starts here
        fit_end = cut - drop
        if fit_end <= train.start:
            raise SegmentError(
                f"segment 'train' {tuple(segments['train'])} is too short for a model fold: fitting, "
                f"{drop} purged days (horizon {horizon} + embargo {embargo}), early-stopping and "
                f"{drop} more; lengthen it or lower the embargo"
            )
        out.append(
            {
                "train": (day(train.start), day(fit_end - 1)),
                "valid": (day(cut), day(stop_end - 1)),
                "test": (day(start), day(end - 1)),
            }
        )
    return out


def fold_key(name: str, fold: int) -> str:
    """The experiment name of a model candidate's fold (fold 0 keeps the candidate's own name)."""
    return name if fold == 0 else f"{name}.fold{fold}"


def candidate_specs(c: CodedCandidate) -> list[tuple[str, dict]]:
    """(experiment name, spec) of everything a coded candidate runs: its spec, then its folds'."""
    return [(fold_key(c.name, j), spec) for j, spec in enumerate([c.spec, *c.fold_specs])]


# ---- nodes ----------------------------------------------------------------------------------------------


def scheduler_node(state: IterationState, s: Services) -> dict:
    m = s.memory
    direction = choose_direction(m.scheduler, state.iteration, model_ready=bool(m.best))
    ctx = ProposalContext(
        run_id=m.run_id,
        iteration=state.iteration,
        direction=direction,
        fields=sorted(s.panel.field_names),
        trace=trace_summary(m),
        library_names=sorted(m.library),
        families_tried=dict(m.families),
        n_candidates=s.screen_size if direction == "factor" else s.config.n_model_candidates,
    )
    s.on_event("direction", {"iteration": state.iteration, "direction": direction})
    return {"direction": direction, "context": ctx, "started": time.monotonic()}


def proposer_node(state: IterationState, s: Services) -> dict:
    pool = search_pool(s) if state.direction == "factor" else None
    hyp = s.backend.propose(state.context, s.memory.tried, s.memory.library, pool=pool)
    if hyp.direction != state.direction:
        raise ValueError(f"the proposer answered a {hyp.direction} hypothesis for a {state.direction} iteration")
    if hyp.direction == "factor":
        factors = _fresh_names(hyp.factors[: s.screen_size], set(s.memory.library) | s.memory.taken_names)
        hyp = hyp.model_copy(update={"factors": factors})
    else:
        hyp = hyp.model_copy(update={"models": hyp.models[: s.config.n_model_candidates]})
    s.on_event("hypothesis", {"iteration": state.iteration, "text": hyp.text})
    return {"hypothesis": hyp}


def _fresh_names(factors: list[FactorCandidate], taken: set[str]) -> list[FactorCandidate]:
    """The candidates, each under a name no library factor and no earlier candidate has: library names
    are unique across the project, and a proposer's names (the offline one's `mut_3_0`, an LLM's
    `momentum_20`) repeat from run to run. A taken name gets the first free `_2`, `_3`, ... suffix.
    Depends only on the run's own library, so a replay renames alike."""
    out, used = [], set(taken)
    for cand in factors:
        name, k = cand.name, 2
        while name in used:
            suffix = f"_{k}"
            name, k = cand.name[: NAME_MAX - len(suffix)] + suffix, k + 1
        used.add(name)
        out.append(cand if name == cand.name else cand.model_copy(update={"name": name}))
    return out


def coder_node(state: IterationState, s: Services) -> dict:
    """Hypothesis -> experiment specs. A candidate that does not validate goes back to the back-end with
    the structured failure, up to `repair_attempts` times."""
    hyp = state.hypothesis
    if hyp.direction == "model":
        return {
            "coded": CoderOutput(coded=[_model_spec(c.name, c.family, c.params, s, c.feature_norm) for c in hyp.models])
        }
    coded, refused = [], {}
    seen = set(s.memory.tried)
    held = s.held_forms()
    for cand in hyp.factors:
        current, attempt = cand, 0
        while True:
            problem, expr, key = _check_factor(current, s, seen, held)
            if problem is None:
                seen.add(key)
                coded.append(CodedCandidate(name=current.name, expression=expr, spec={}, region=current.region))
                break
            if attempt >= s.config.repair_attempts or len(hyp.factors) > s.config.n_factor_candidates:
                refused[current.name] = problem  # a screened batch drops what does not validate
                break
            attempt += 1
            fixed = s.backend.repair(state.context, current, problem, attempt, seen)
            if fixed is None:
                refused[current.name] = problem
                break
            current = fixed
    if len(coded) > s.config.n_factor_candidates:  # screened first: the survivors get admission specs
        return {"coded": CoderOutput(coded=coded, refused=refused)}
    return {"coded": CoderOutput(coded=with_admission_specs(coded, s), refused=refused)}


def with_admission_specs(batch: list[CodedCandidate], s: Services) -> list[CodedCandidate]:
    """The batch, each candidate with its admission spec (its peers are the rest of the batch)."""
    out = []
    for c in batch:
        others = {o.name: o.expression for o in batch if o.name != c.name}
        out.append(c.model_copy(update={"spec": admission_spec(c.expression, c.name, others, s)}))
    return out


def admission_spec(expression: str, name: str, others: dict[str, str], s: Services) -> dict:
    """The validation-segment experiment that decides a factor: full report, look-ahead check, value
    correlations with the base features, the library and the batch, and the daily RankIC of library
    factors it repeats (for a refinement's paired comparison)."""
    library = s.memory.library
    residual = _residual_keys(s)
    return {
        "kind": "factor",
        "market": s.config.data,
        "expressions": {name: expression},
        "segment": list(s.segments["valid"]),
        "library": {**library, **others},
        "base_features": s.config.base_features,
        "pair_threshold": s.config.max_library_corr,
        "pair_with": sorted(_same_idea(parse(expression), library)),
        "lookahead_check": True,
        "seed": s.config.seed,
        "label": loop_label(s.config),
        **residual,
    }


def _residual_keys(s: Services) -> dict:
    """The spec keys that score a factor's residual RankIC beyond the base features' principal
    components and the library (none where the run measures no residual)."""
    if not s.config.residual_components:
        return {}
    return {"residual_components": s.config.residual_components, "controls": sorted(s.memory.library)}


def _screen_residual(s: Services) -> dict:
    """The screen's residual settings: candidates scored as admission scores them (their rivals left
    out); none for runs stored before the screen measured it."""
    residual = _residual_keys(s) if s.config.screen_residual else {}
    return {**residual, "pair_threshold": s.config.max_library_corr} if residual else {}


def screen_node(state: IterationState, s: Services) -> dict:
    """Screen a large factor batch on the training segment; only the strongest original candidates
    go on to review and admission (see `agents.screen`)."""
    coded = state.coded
    if state.direction != "factor" or len(coded.coded) <= s.config.n_factor_candidates:
        return {}
    m = s.memory
    segment = screen_segment(s.panel, s.segments["train"], loop_label(s.config))
    named = screen_specs(
        coded.coded,
        market=s.config.data,
        segment=segment,
        library=m.library,
        base_features=s.config.base_features,
        corr_days=s.config.screen_corr_days,
        seed=s.config.seed,
        workers=s.workers,
        label=loop_label(s.config),
        residual=_screen_residual(s),
    )
    s.on_event("screen", {"iteration": state.iteration, "candidates": len(coded.coded), "segment": segment})
    # scores as MLflow recorded them, like the critic's (a chunk whose record differs fails as a whole)
    results = read_back(
        dict(zip([k for k, _ in named], s.executor.run_many([spec for _, spec in named]))), s.executor.recorder
    )
    scores = screen_scores(coded.coded, results, dict(named))
    chosen, why = select_survivors(
        scores, s.config.n_factor_candidates, s.config.max_library_corr, m.library, m.library_fitness
    )
    survivors = with_admission_specs(
        sorted((c for c in coded.coded if c.name in set(chosen)), key=lambda c: chosen.index(c.name)), s
    )
    best = sorted(scores, key=lambda x: -x.fitness)[:3]
    note = (
        f" Screened {len(scores)} on {segment[0]}..{segment[1]} (best |t| "
        f"{', '.join(f'{x.fitness:.1f}' for x in best)}); {len(survivors)} sent to admission."
    )
    hyp = state.hypothesis
    hyp = hyp.model_copy(
        update={"text": (hyp.text + note)[:2000], "factors": [f for f in hyp.factors if f.name in set(chosen)]}
    )
    if survivors:
        hyp = hyp.model_copy(update={"family": survivors[0].region or hyp.family})
    return {
        "coded": CoderOutput(coded=survivors, refused=coded.refused),
        "hypothesis": hyp,
        "screen": list(coded.coded),
        "screen_specs": dict(named),
        "screen_why": why,
        "screen_results": {k: r.to_dict() for k, r in results.items()},
    }


def review_node(state: IterationState, s: Services) -> dict:
    if not s.config.review or s.reviewer is None or not state.coded.coded:
        return {}
    review = s.reviewer(state.hypothesis, state.coded, lambda expr: _validate_edit(expr, s))
    if review.action == "edit" and review.edits:
        coded = []
        for c in state.coded.coded:
            if c.name in review.edits and c.expression is not None:
                expr = _inline_library(review.edits[c.name], s)
                spec = {**c.spec, "expressions": {c.name: expr}}
                c = c.model_copy(update={"expression": expr, "spec": spec})
            coded.append(c)
        return {"review": review, "coded": CoderOutput(coded=coded, refused=state.coded.refused)}
    return {"review": review, "stop": review.action == "stop"}


def runner_node(state: IterationState, s: Services) -> dict:
    if state.review is not None and state.review.action in ("reject", "stop"):
        return {"results": {}}
    named = [pair for c in state.coded.coded for pair in candidate_specs(c)]
    results = s.executor.run_many([spec for _, spec in named])
    return {"results": {key: r.to_dict() for (key, _), r in zip(named, results)}}


def critic_node(state: IterationState, s: Services) -> dict:
    """Decide on the results as read back from the MLflow runs the executor logged (`read_back`): each
    verdict cites the runs it read, and the read-back results replace the sandbox's in the state, so the
    store keeps what was decided on (a missing or differing record is a `record` failure)."""
    m, rules = s.memory, s.rules
    verdicts: list[Verdict] = []
    results = read_back({k: ExperimentResult.from_dict(v) for k, v in state.results.items()}, s.executor.recorder)
    reward = 0.0
    if state.review is not None and state.review.action in ("reject", "stop"):
        why = f"rejected by the reviewer: {state.review.reason or 'no reason given'}"
        verdicts = [Verdict(candidate=c.name, verdict="reject", reasons=[why]) for c in state.coded.coded]
    elif state.direction == "factor":
        accepted_now: list[str] = []
        claimed: set[str] = set()  # library factors a stronger candidate of this batch already refines
        bound = rules.max_library_corr
        seed = s.config.seed * 1000 + state.iteration
        significance = (
            trial_significance(
                m.admission_p,
                {k: admission_p(factor_metrics(k, r)) for k, r in results.items() if r.ok},
                rules.fdr_method,
                m.planned_tests,
            )
            if rules.fdr_q is not None
            else {}
        )
        by_strength = sorted(results, key=lambda k: -abs(results[k].metrics.get(f"{k}.rank_ic", 0.0) or 0.0))
        for name in by_strength:
            r = results[name]
            node = parse(next(c.expression for c in state.coded.coded if c.name == name))
            detail = r.details.get(name, {}) if r.ok else {}
            corr_all = detail.get("correlations", {})
            rivals = sorted(
                (
                    {k for k, v in corr_all.items() if k in m.library and v is not None and abs(v) >= bound}
                    | _same_idea(node, m.library)
                )
                - claimed
            )
            corr = {k: v for k, v in corr_all.items() if (k in m.library and k not in rivals) or k in accepted_now}
            base = detail.get("base_correlation") or None
            v = admit_factor(
                name,
                r,
                rules,
                corr,
                (node_count(node), depth(node)),
                base=(base["feature"], base["corr"]) if base else None,
                significance=significance.get(name),
            )
            if v.verdict == "accept" and rivals:
                v = refine_factor(v, r, rivals, {k: corr_all.get(k) for k in rivals}, rules, seed)
            verdicts.append(v)
            if v.verdict == "accept":
                accepted_now.append(name)
                claimed.update(v.replaces)
        best_before = max((abs(x.get("rank_ic", 0.0)) for x in m.library_metrics.values()), default=0.0)
        best_new = max((abs(v.metrics.get("rank_ic", 0.0)) for v in verdicts if v.verdict == "accept"), default=0.0)
        reward = max(0.0, best_new - best_before)
    else:
        for c in state.coded.coded:
            r = candidate_result(c, results)
            v = compare_models(
                c.name,
                r,
                m.best.get("daily_rank_ic"),
                m.best.get("metrics", {}),
                rules,
                seed=s.config.seed * 1000 + state.iteration,
            )
            verdicts.append(v)
        wins = [v for v in verdicts if v.verdict == "replace_best"]
        if wins:
            best_v = max(wins, key=lambda v: model_score(v.metrics))
            reward = max(0.0, model_score(best_v.metrics) - model_score(m.best.get("metrics", {})))
    for name, reason in state.coded.refused.items():
        verdicts.append(Verdict(candidate=name, verdict="reject", reasons=[f"refused by the coder: {reason}"]))
    analysis, feedback = s.backend.analyse(state.context, state.hypothesis, verdicts)
    # cited after the analysis: a run id tells the LLM nothing, and a replay's ids differ
    cited = {c.name: cite([results[k] for k, _ in candidate_specs(c) if k in results]) for c in state.coded.coded}
    verdicts = [
        v.model_copy(update={"reasons": [*v.reasons, cited[v.candidate]]}) if cited.get(v.candidate) else v
        for v in verdicts
    ]
    return {
        "critic": CriticOutput(verdicts=verdicts, reward=reward, analysis=analysis, feedback=feedback),
        "results": {k: r.to_dict() for k, r in results.items()},
    }


def update_node(state: IterationState, s: Services) -> dict:
    """Write the whole iteration in one transaction, then update the in-memory run state."""
    m, hyp, critic = s.memory, state.hypothesis, state.critic
    results = {k: ExperimentResult.from_dict(v) for k, v in state.results.items()}
    verdict_of = {v.candidate: v for v in critic.verdicts}
    accepted = [v.candidate for v in critic.verdicts if v.verdict == "accept"]
    new_best = None
    if state.direction == "model":
        wins = [v for v in critic.verdicts if v.verdict == "replace_best"]
        if wins:
            w = max(wins, key=lambda v: model_score(v.metrics))
            coded = next(c for c in state.coded.coded if c.name == w.candidate)
            new_best = {
                "name": w.candidate,
                "family": coded.family,
                "params": coded.params,
                "feature_norm": coded.feature_norm,
                "metrics": w.metrics,
                "daily_rank_ic": candidate_result(coded, results).details.get("daily_rank_ic"),
            }
    calls = s.backend.drain_calls()
    seconds = time.monotonic() - state.started
    cpu = sum(r.seconds for r in results.values()) + sum(r.get("seconds", 0.0) for r in state.screen_results.values())
    status = (
        "rejected"
        if state.review and state.review.action in ("reject", "stop")
        else "accepted"
        if accepted or new_best
        else "rejected"
    )
    if accepted and len(accepted) < len(critic.verdicts):
        status = "partial"
    scheduler = update_scheduler(m.scheduler, state.direction, critic.reward)
    new_library = {name: next(c.expression for c in state.coded.coded if c.name == name) for name in accepted}
    retired: dict[str, str] = {}
    for v in critic.verdicts:
        for rival in v.replaces if v.verdict == "accept" else ():
            retired.setdefault(rival, v.candidate)
    trials = trial_rows(state, results, m)
    # a `record` failure is ours (the MLflow store), not the proposer's: it is no lesson for it
    new_failures = [
        failure_note(k, r.failure.for_llm())
        for k, r in results.items()
        if not r.ok and r.failure.category is not FailureCategory.RECORD
    ]
    new_failures += [failure_note(k, v) for k, v in state.coded.refused.items()]
    lessons = list(m.lessons)
    if critic.feedback and critic.feedback not in lessons:
        lessons = (lessons + [critic.feedback])[-LESSONS_KEPT:]
    with s.store.session() as db:
        run = db.get(RunRow, m.run_id)
        h = HypothesisRow(
            run_id=m.run_id,
            iteration=state.iteration,
            direction=state.direction,
            family=hyp.family,
            text=hyp.text,
            candidates_json=dumps(hyp.model_dump()["factors" if hyp.direction == "factor" else "models"]),
            feedback=f"{critic.analysis}\n{critic.feedback}".strip(),
            status=status,
        )
        db.add(h)
        db.flush()
        for parent_id, relation in _edges(hyp, m, s, db, state):
            db.add(EdgeRow(run_id=m.run_id, source=h.id, target=parent_id, relation=relation))
        for c in state.coded.coded:
            db.add_all(experiment_rows(m.run_id, state.iteration, c, results, hypothesis_id=h.id))
        for key, spec in state.screen_specs.items():
            r = ExperimentResult.from_dict(state.screen_results[key])
            db.add(_experiment_row(m.run_id, state.iteration, h.id, key, spec, r))
        db.add_all(trials)
        for rival, winner in retired.items():
            _retire(db, rival, winner, h.id, m.run_id)
        for v in critic.verdicts:
            db.add(
                DecisionRow(
                    run_id=m.run_id,
                    iteration=state.iteration,
                    candidate=v.candidate,
                    verdict=v.verdict,
                    reasons_json=dumps(v.reasons),
                    metrics_json=dumps(v.metrics),
                )
            )
        for name, expr in new_library.items():
            db.add(
                LibraryFactorRow(
                    name=name,
                    expression=expr,
                    canonical=canonical(parse(expr)),
                    run_id=m.run_id,
                    iteration=state.iteration,
                    metrics_json=dumps(verdict_of[name].metrics),
                )
            )
        for call in calls:
            db.add(LLMCallRow(run_id=m.run_id, iteration=state.iteration, **call))
        if state.review is not None:
            db.add(
                ReviewRow(
                    run_id=m.run_id,
                    iteration=state.iteration,
                    action=state.review.action,
                    reason=state.review.reason,
                    edits_json=dumps(state.review.edits),
                )
            )
        db.add(
            IterationRow(
                run_id=m.run_id,
                number=state.iteration,
                direction=state.direction,
                reward=critic.reward,
                summary=critic.analysis,
                seconds=seconds,
            )
        )
        run.iterations_done = state.iteration
        run.tokens += sum(c.get("prompt_tokens", 0) + c.get("completion_tokens", 0) for c in calls)
        run.cost_usd += sum(c.get("cost_usd", 0.0) for c in calls)
        run.cpu_seconds += cpu
        run.scheduler_json = dumps(scheduler)
        run.lessons_json = dumps(lessons)
        if new_best is not None:
            run.best_json = dumps(new_best)
        if state.stop:
            run.status = "stopped"
        db.add(run)
        tokens, cost = run.tokens, run.cost_usd
    # committed: now the in-memory state may move on
    m.iterations_done, m.scheduler, m.lessons = state.iteration, scheduler, lessons
    m.tokens, m.cost_usd, m.cpu_seconds = tokens, cost, m.cpu_seconds + cpu
    for rival in retired:
        m.library.pop(rival, None)
        m.library_metrics.pop(rival, None)
        m.library_fitness.pop(rival, None)
    m.library.update(new_library)
    m.taken_names |= set(new_library)
    m.library_metrics.update({k: verdict_of[k].metrics for k in new_library})
    fitness = {t.candidate: t.fitness for t in trials if t.stage == "screen"}  # its screen fitness (as on resume)
    m.library_fitness.update({k: fitness.get(k, 0.0) for k in new_library})
    m.trials += [ScoredExpression(t.expression, t.fitness, t.region) for t in trials if t.stage == "screen"]
    m.tried |= {t.form for t in trials}
    m.admission_p += [admission_p(json.loads(t.metrics_json)) for t in trials if t.stage == "admission"]
    if new_best is not None:
        m.best = new_best
    for c in state.coded.coded:
        if c.expression and c.name in results:  # what ran (a rejected batch is free to come back, as on resume)
            m.tried.add(form_of(c.expression))
    m.families[hyp.family] = m.families.get(hyp.family, 0) + 1
    m.failures = (m.failures + new_failures)[-FAILURES_KEPT:]
    m.stopped = m.stopped or state.stop
    s.on_event(
        "iteration",
        {
            "iteration": state.iteration,
            "direction": state.direction,
            "hypothesis": hyp.text,
            "accepted": accepted,
            "new_best": new_best["name"] if new_best else None,
            "best": m.best.get("metrics", {}),
            "library": len(m.library),
            "reward": critic.reward,
            "seconds": seconds,
            "tokens": tokens,
            "cost_usd": cost,
            "analysis": critic.analysis,
        },
    )
    return {}


# ---- helpers ------------------------------------------------------------------------------------------


def trace_summary(m: RunMemory, top_k: int = 8, last_failures: int = 5) -> TraceSummary:
    top = sorted(m.library, key=lambda k: -abs(m.library_metrics.get(k, {}).get("rank_ic", 0.0)))[:top_k]
    best = {k: v for k, v in m.best.items() if k != "daily_rank_ic"}
    return TraceSummary(
        accepted=[
            {
                "name": k,
                "expression": m.library[k],
                **{x: m.library_metrics.get(k, {}).get(x) for x in ("rank_ic", "rank_icir", "ic")},
            }
            for k in top
        ],
        failures=m.failures[-last_failures:],
        lessons=m.lessons[-5:],
        best_model=best,
    )


def trial_rows(state: IterationState, results: dict[str, ExperimentResult], m: RunMemory) -> list[TrialRow]:
    """Every factor candidate scored this iteration, as trials: the screened batch (training-segment
    scores, and why each one stopped there) and the admitted candidates (validation-segment scores)."""
    if state.direction != "factor":
        return []
    rows = []
    adjusted = {
        v.candidate: {k: v.metrics[k] for k in ("p_adjusted", "trials") if k in v.metrics}
        for v in (state.critic.verdicts if state.critic else [])
    }
    screen = {k: ExperimentResult.from_dict(v) for k, v in state.screen_results.items()}
    region = {c.name: c.region for c in state.screen}
    for sc in screen_scores(state.screen, screen, state.screen_specs) if state.screen else []:
        if not sc.scored:  # its chunk failed as a whole: nothing was learnt about the candidate
            continue
        why = state.screen_why.get(sc.name, "sent to admission")
        metrics = {**sc.metrics(), "outcome": why}
        rows.append(
            _trial_row(
                m,
                state.iteration,
                sc.name,
                sc.expression,
                region.get(sc.name, ""),
                "screen",
                fitness=sc.fitness,
                metrics=metrics,
            )
        )
    for c in state.coded.coded:
        r = results.get(c.name)
        if r is None or c.expression is None:
            continue
        mt = {**factor_metrics(c.name, r), **adjusted.get(c.name, {})}
        t = mt.get("residual_t", mt.get("rank_ic_hac_t", mt.get("rank_ic_t", math.nan)))
        metrics = {k: v for k, v in mt.items() if math.isfinite(v)}
        rows.append(
            _trial_row(
                m,
                state.iteration,
                c.name,
                c.expression,
                c.region,
                "admission",
                fitness=t_fitness(t, r.ok),
                metrics=metrics,
            )
        )
    return rows


def _trial_row(
    m: RunMemory,
    iteration: int,
    candidate: str,
    expression: str,
    region: str,
    stage: str,
    *,
    fitness: float,
    metrics: dict,
) -> TrialRow:
    """One scored candidate of the iteration as a stored trial (its form is what later runs skip)."""
    return TrialRow(
        run_id=m.run_id,
        iteration=iteration,
        market=m.market,
        candidate=candidate,
        expression=expression,
        form=form_of(expression),
        region=region,
        stage=stage,
        fitness=fitness,
        metrics_json=dumps(metrics),
    )


def _retire(db, rival: str, winner: str, hypothesis_id: int, run_id: str) -> None:
    """A library factor refined out by `winner`: marked replaced, and a `refines` edge from the new
    hypothesis to the one that produced the rival."""
    from sqlmodel import select

    row = db.exec(select(LibraryFactorRow).where(LibraryFactorRow.name == rival)).first()
    if row is None:
        return
    row.replaced_by, row.replaced_run = winner, run_id
    db.add(row)
    source = db.exec(
        select(HypothesisRow)
        .where(HypothesisRow.run_id == row.run_id)
        .where(HypothesisRow.iteration == row.iteration)
        .where(HypothesisRow.direction == "factor")
    ).first()
    if source is not None:
        db.add(
            EdgeRow(
                run_id=run_id,
                source=hypothesis_id,
                target=source.id,
                relation="refines",
                note=f"{winner} replaces {rival}",
            )
        )


def _same_idea(node, library: dict[str, str]) -> set[str]:
    """Library factors of the same idea as `node` at other windows (the same skeleton)."""
    shape = skeleton(node)
    return {k for k, e in library.items() if skeleton(parse(e)) == shape}


def search_pool(s: Services) -> SearchPool:
    """What the offline search evolves: the market's scored trials, the library, the base features."""
    from quantcore.features import feature_set

    m = s.memory
    scored = list(m.trials) + [
        ScoredExpression(e, m.library_fitness.get(k, 0.0), "library") for k, e in m.library.items()
    ]
    try:
        seeds = list(feature_set(s.config.base_features).values())
    except ValueError:
        seeds = []
    return SearchPool(scored=scored, seeds=seeds, tried=set(m.tried) | set(s.held_forms()))


def form_of(expression: str) -> str:
    """The identity the search deduplicates on: the canonical text of the affine core."""
    return canonical(affine_core(parse(expression)))


_REF = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def _inline_library(expr: str, s: Services) -> str:
    """`$name` of an accepted factor (not a market field) becomes that factor's expression."""
    fields = set(s.panel.field_names)

    def sub(match: re.Match) -> str:
        name = match.group(1)
        if name in fields or name not in s.memory.library:
            return match.group(0)
        return f"({s.memory.library[name]})"

    return _REF.sub(sub, expr)


def _check_factor(
    cand: FactorCandidate, s: Services, seen: set[str], held: dict[str, str]
) -> tuple[str | None, str, str]:
    """(problem or None, expression with library names inlined, canonical form)."""
    expr = _inline_library(cand.expression, s)
    try:
        node = parse(expr)
        validate(node, s.panel.field_names)
    except ExpressionError as e:
        kind = type(e).__name__
        return f"{kind}: {e}", expr, ""
    key = canonical(affine_core(node))
    if node_count(node) > s.config.max_nodes or depth(node) > s.config.max_depth:
        return (
            (
                f"too complex: {node_count(node)} nodes, depth {depth(node)} (caps {s.config.max_nodes} nodes, "
                f"depth {s.config.max_depth})"
            ),
            expr,
            key,
        )
    if key in held:
        return (
            (f"duplicate: {held[key]} already holds it up to an affine map (a*x + b carries the same information)"),
            expr,
            key,
        )
    if key in seen:
        return "duplicate: already tried on this market (same form up to an affine map)", expr, key
    return None, expr, key


def _validate_edit(expr: str, s: Services) -> str | None:
    """A reviewer's edited expression: None if valid, else the problem."""
    try:
        validate(parse(_inline_library(expr, s)), s.panel.field_names)
    except ExpressionError as e:
        return str(e)
    return None


def _model_spec(name: str, family: str, params: dict, s: Services, feature_norm: str = "none") -> CodedCandidate:
    spec = {
        "kind": "model",
        "market": s.config.data,
        "features": s.config.base_features,
        "label": loop_label(s.config),
        "extra_features": dict(s.memory.library),
        "family": family,
        "params": params,
        "feature_norm": feature_norm,
        "seed": s.config.seed,
    }
    horizon, embargo = purge_days(s.config)
    specs = [
        {**spec, "segments": {k: list(v) for k, v in fold.items()}}
        for fold in inner_folds(s.segments, s.panel, s.config.model_folds, horizon=horizon, embargo=embargo)
    ]
    return CodedCandidate(
        name=name, spec=specs[0], fold_specs=specs[1:], family=family, params=params, feature_norm=feature_norm
    )


def experiment_rows(
    run_id: str,
    iteration: int,
    c: CodedCandidate,
    results: dict[str, ExperimentResult],
    hypothesis_id: int | None = None,
) -> list[ExperimentRow]:
    """The store rows of a coded candidate's experiments (spec, then folds) that have a result."""
    return [
        _experiment_row(run_id, iteration, hypothesis_id, key, spec, r)
        for key, spec in candidate_specs(c)
        if (r := results.get(key)) is not None
    ]


def _experiment_row(
    run_id: str, iteration: int, hypothesis_id: int | None, key: str, spec: dict, r: ExperimentResult
) -> ExperimentRow:
    """One experiment (its spec and result) as a store row."""
    return ExperimentRow(
        run_id=run_id,
        iteration=iteration,
        hypothesis_id=hypothesis_id,
        candidate=key,
        spec_hash=r.spec_hash,
        spec_json=dumps(spec),
        ok=r.ok,
        result_json=dumps(r.to_dict()),
        mlflow_run_id=r.mlflow_run_id,
    )


def candidate_result(c: CodedCandidate, results: dict[str, ExperimentResult]) -> ExperimentResult:
    """A model candidate's folds merged into one result (see `merge_folds`)."""
    return merge_folds([results[key] for key, _ in candidate_specs(c)])


def _edges(hyp: Hypothesis, m: RunMemory, s: Services, db, state: IterationState) -> list[tuple[int, str]]:
    """Graph edges: an explicit parent, else the latest hypothesis of the same family (refines) or, for
    mutations of accepted factors, the hypotheses that produced them (derived_from)."""
    from sqlmodel import select

    if hyp.parent is not None:
        return [(hyp.parent, hyp.relation or "derived_from")]
    rows = list(
        db.exec(
            select(HypothesisRow)
            .where(HypothesisRow.run_id == m.run_id)
            .where(HypothesisRow.iteration < state.iteration)
            .order_by(HypothesisRow.iteration.desc())
        )
    )
    if hyp.family == "mutation":
        parents = [r.id for r in rows if r.direction == "factor" and r.status in ("accepted", "partial")][:2]
        return [(p, "derived_from") for p in parents]
    same = [r for r in rows if r.family == hyp.family and r.direction == hyp.direction]
    if same:
        relation = (
            "contradicts"
            if same[0].status == "accepted"
            and state.critic
            and not any(v.verdict in ("accept", "replace_best") for v in state.critic.verdicts)
            else "refines"
        )
        return [(same[0].id, relation)]
    return []
