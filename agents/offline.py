"""The offline back-end (the default, no network): the generic grammar search for factors
(`agents.search`), seeded structural questions and hyperparameter moves for models, and a
rule-based critic text. Every choice comes from `random.Random(f"{seed}:{iteration}:...")`, so a
run, its resume and its replay propose exactly the same things given the same store.
"""

from __future__ import annotations

import random
from collections import Counter

from agents.contracts import FactorCandidate, Hypothesis, ModelCandidate, ProposalContext, Verdict
from agents.search import GrammarSearch, SearchPool

__all__ = ["OfflineProposer", "offline_analysis"]

# structural model questions, asked once each: (family key, model family, feature_norm, hypothesis)
MODEL_QUESTIONS = (
    (
        "norm:csrank",
        "lightgbm",
        "csrank",
        "features ranked per day generalise better than raw levels: volatility "
        "regimes shift raw feature scales over time",
    ),
    ("norm:cszscore", "lightgbm", "cszscore", "features z-scored per day generalise better than raw levels"),
    (
        "family:linear",
        "linear",
        "cszscore",
        "many weak, roughly linear signals: a ridge on per-day z-scored features is less noisy than trees",
    ),
)
RIDGE_STEPS = {"alpha": (0.1, 1.0, 10.0, 100.0, 1000.0)}

# model search: qlib's Alpha158 LightGBM defaults and the moves a quant would try around them
LGB_STEPS = {
    "learning_rate": (0.05, 0.1, 0.2),
    "num_leaves": (31, 63, 127, 210),
    "max_depth": (6, 8),
    "colsample_bytree": (0.5, 0.7, 0.8879),
    "subsample": (0.7, 0.8789),
    "lambda_l1": (10.0, 100.0, 205.6999),
    "lambda_l2": (100.0, 300.0, 580.9768),
}


class OfflineProposer:
    """Deterministic proposer; never proposes a form already tried (`pool.tried`: affine cores)."""

    def __init__(self, seed: int = 0, max_nodes: int = 40, max_depth: int = 10):
        """`max_nodes` / `max_depth`: the coder's complexity caps, so the search proposes nothing it refuses."""
        self.seed = seed
        self.search = GrammarSearch(seed, max_nodes=max_nodes, max_depth=max_depth)

    def _rng(self, ctx: ProposalContext, salt: str = "") -> random.Random:
        return random.Random(f"{self.seed}:{ctx.iteration}:{ctx.direction}:{salt}")

    def propose(
        self, ctx: ProposalContext, tried: set[str], library: dict[str, str], pool: SearchPool | None = None
    ) -> Hypothesis:
        if ctx.direction == "model":
            return self._propose_model(ctx)
        pool = pool or SearchPool()
        found = self.search.propose(
            ctx.iteration, ctx.n_candidates, ctx.fields, SearchPool(pool.scored, pool.seeds, pool.tried | tried)
        )
        regions = Counter(p.region for p in found)
        text = (
            f"generic grammar search: {len(found)} small scale-free trees "
            f"({', '.join(f'{r} {n}' for r, n in regions.most_common(6))}); each is screened cheaply and "
            "only the strongest original ones are sent to admission"
        )
        factors = [
            FactorCandidate(
                name=f"{p.region[:20]}_{ctx.iteration}_{i}",
                expression=p.expression,
                rationale=p.origin[:300],
                region=p.region,
            )
            for i, p in enumerate(found)
        ]
        return Hypothesis(direction="factor", text=text, family="search", factors=factors)

    def repair(
        self, ctx: ProposalContext, candidate: FactorCandidate, failure: str, attempt: int, tried: set[str]
    ) -> FactorCandidate | None:
        """A replacement for a candidate the coder refused: a fresh draw of the search."""
        found = self.search.propose(
            ctx.iteration, 1, ctx.fields, SearchPool(tried=set(tried)), salt=f"repair:{candidate.name}:{attempt}"
        )
        if not found:
            return None
        return FactorCandidate(
            name=candidate.name,
            expression=found[0].expression,
            region=found[0].region,
            rationale=f"replaces a refused candidate ({failure.splitlines()[0][:120]})",
        )

    # ---- model ideas --------------------------------------------------------------------------------
    def _propose_model(self, ctx: ProposalContext) -> Hypothesis:
        """First the structural questions (per-day feature normalisation, a linear model), one per
        model iteration; then perturbations of the best model's hyperparameters."""
        rng = self._rng(ctx)
        best = ctx.trace.best_model
        family = best.get("family", "lightgbm") or "lightgbm"
        params = dict(best.get("params", {}))
        norm = best.get("feature_norm", "none")
        for key, cand_family, cand_norm, text in MODEL_QUESTIONS:
            if ctx.families_tried.get(key) or (cand_family == family and cand_norm == norm):
                continue
            cand = ModelCandidate(
                name=f"{key.split(':')[1]}_{ctx.iteration}",
                family=cand_family,
                params=params if cand_family == family else {},
                feature_norm=cand_norm,
                rationale=text,
            )
            return Hypothesis(direction="model", text=text, family=key, models=[cand])
        steps = LGB_STEPS if family == "lightgbm" else RIDGE_STEPS if family == "linear" else {}
        candidates: list[ModelCandidate] = []
        for _ in range(8):  # up to two distinct perturbations
            p = dict(params)
            for key in rng.sample(sorted(steps), min(2, len(steps))):
                current = p.get(key, _default_param(family, key))
                p[key] = rng.choice([v for v in steps[key] if v != current])
            if all(c.params != p for c in candidates):
                candidates.append(
                    ModelCandidate(
                        name=f"{family[:3]}_{ctx.iteration}_{len(candidates)}",
                        family=family,
                        params=p,
                        feature_norm=norm,
                        rationale="perturb hyperparameters of the best model",
                    )
                )
            if len(candidates) == 2:
                break
        changed = sorted({k for c in candidates for k in c.params if c.params.get(k) != params.get(k)})
        text = f"the best {family} model may be mis-regularised: try {', '.join(changed) or 'other settings'} around it"
        return Hypothesis(direction="model", text=text, family=family, models=candidates)


def _default_param(family: str, key: str):
    """A model family's default for `key` (so a perturbation never proposes the value already in use)."""
    from dataclasses import fields

    from quantcore.models.registry import FAMILIES

    cls = FAMILIES.get(family)
    return next((f.default for f in fields(cls.Config) if f.name == key), None) if cls else None


def offline_analysis(direction: str, verdicts: list[Verdict]) -> tuple[str, str]:
    """The rule-based critic's analysis and next-step feedback (the verdicts are decided elsewhere)."""
    accepted = [v for v in verdicts if v.verdict in ("accept", "replace_best")]
    rejected = [v for v in verdicts if v.verdict in ("reject", "keep_best")]
    reasons: dict[str, int] = {}
    for v in rejected:
        for r in v.reasons[:1]:
            key = r.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    analysis = f"{len(accepted)} of {len(verdicts)} {direction} candidates accepted"
    if reasons:
        analysis += "; rejections: " + ", ".join(f"{k} ({n})" for k, n in sorted(reasons.items()))
    if direction == "factor":
        feedback = (
            "build on the accepted factors (vary windows, combine with CSRank)"
            if accepted
            else "this family shows no validation signal here; move to another family"
        )
    else:
        feedback = "keep the improved settings and refine nearby" if accepted else "revert to the best model's settings"
    return analysis, feedback
