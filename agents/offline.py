"""The offline back-end (the default, no network): a seeded proposer over Alpha158's grammar and a
rule-based critic text. Every choice comes from `random.Random(f"{seed}:{iteration}:...")`, so a run,
its resume and its replay propose exactly the same things.

Factor ideas come in families (reversal, volume, intraday, price-volume correlation, ...): a
hypothesis is a family in words plus concrete expressions varying its windows and fields. Once the
library holds factors, mutation (window/operator/field substitution) and crossover of accepted
factors take a growing share, as in RD-Agent(Q)'s factor loop.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from agents.contracts import FactorCandidate, Hypothesis, ModelCandidate, ProposalContext, Verdict

__all__ = ["FAMILIES", "OfflineProposer", "offline_analysis"]


@dataclass(frozen=True)
class Family:
    name: str
    idea: str
    templates: tuple[str, ...]  # {w}: a window, {p}: a price field


FAMILIES: tuple[Family, ...] = (
    Family("reversal", "short-term reversal: instruments that moved most over the last days revert",
           ("Ref($close, {w})/$close - 1", "Ref($vwap, {w})/$close - 1", "Mean($close, {w})/$close - 1")),
    Family("volume", "volume shocks: volume far above its recent mean carries a premium",
           ("$volume/(Mean($volume, {w})+1e-12)", "Std($volume, {w})/(Mean($volume, {w})+1e-12)",
            "Log($volume+1) - Log(Mean($volume, {w})+1)")),
    Family("intraday", "the intraday (open-to-close) move reverts the next days",
           ("($close-$open)/$open", "($close-$open)/($high-$low+1e-12)", "Mean(($close-$open)/$open, {w})")),
    Family("price_volume", "price-volume co-movement over a window predicts returns",
           ("Corr($close, $volume, {w})", "Corr($close, Log($volume+1), {w})",
            "Corr($close/Ref($close, 1), Log($volume/Ref($volume, 1)+1), {w})")),
    Family("volatility", "recent volatility is priced: calmer names outperform",
           ("Std($close/Ref($close, 1)-1, {w})", "Mean(Abs($close/Ref($close, 1)-1), {w})", "Std({p}, {w})/$close")),
    Family("range_position", "where the close sits inside its recent range predicts mean reversion",
           ("($close-Min($low, {w}))/(Max($high, {w})-Min($low, {w})+1e-12)", "Max($high, {w})/$close - 1",
            "Min($low, {w})/$close - 1")),
    Family("trend_quality", "a steady trend (high R-squared, positive slope) persists",
           ("Slope($close, {w})/$close", "Rsquare($close, {w})", "Resi($close, {w})/$close")),
    Family("extreme_timing", "how long ago the window's extreme happened carries information",
           ("IdxMax($high, {w})/{w}", "IdxMin($low, {w})/{w}", "(IdxMax($high, {w})-IdxMin($low, {w}))/{w}")),
    Family("vwap_gap", "closing away from the day's VWAP reverts",
           ("$vwap/$close - 1", "Mean($vwap/$close - 1, {w})", "Quantile($close, {w}, 0.8)/$close - 1")),
)
WINDOWS = (3, 5, 10, 20, 30, 60)
PRICES = ("$close", "$open", "$high", "$low", "$vwap")
# structural model questions, asked once each: (family key, model family, feature_norm, hypothesis)
MODEL_QUESTIONS = (
    ("norm:csrank", "lightgbm", "csrank", "features ranked per day generalise better than raw levels: volatility "
     "regimes shift raw feature scales over time"),
    ("norm:cszscore", "lightgbm", "cszscore", "features z-scored per day generalise better than raw levels"),
    ("family:linear", "linear", "cszscore", "many weak, roughly linear signals: a ridge on per-day z-scored features "
     "is less noisy than trees"),
)
RIDGE_STEPS = {"alpha": (0.1, 1.0, 10.0, 100.0, 1000.0)}
_OP_SWAPS = {"Mean": ("EMA", "WMA"), "EMA": ("Mean",), "WMA": ("Mean",), "Max": ("Min",), "Min": ("Max",),
             "Std": ("Mean",), "IdxMax": ("IdxMin",), "IdxMin": ("IdxMax",)}
_WINDOW = re.compile(r"(?<=, )(\d+)(?=\))")

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
    """Deterministic proposer; `propose(ctx)` never repeats a canonical form it has already tried."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _rng(self, ctx: ProposalContext, salt: str = "") -> random.Random:
        return random.Random(f"{self.seed}:{ctx.iteration}:{ctx.direction}:{salt}")

    def propose(self, ctx: ProposalContext, tried: set[str], library: dict[str, str]) -> Hypothesis:
        if ctx.direction == "model":
            return self._propose_model(ctx)
        rng = self._rng(ctx)
        explore = not library or rng.random() < max(0.35, 1.0 - 0.15 * len(library))
        if explore:
            family = self._next_family(ctx, rng)
            exprs = self._family_candidates(family, rng, tried, ctx.n_candidates)
            text = f"{family.idea} (family {family.name}: windows and fields varied)"
            name_base, fam = family.name, family.name
        else:
            exprs = self._mutations(rng, library, tried, ctx.n_candidates)
            text = "variations of accepted factors: window, operator and field substitutions, and crossovers"
            name_base, fam = "mut", "mutation"
        factors = [FactorCandidate(name=f"{name_base}_{ctx.iteration}_{i}", expression=e, rationale=text)
                   for i, e in enumerate(exprs)]
        return Hypothesis(direction="factor", text=text, family=fam, factors=factors)

    def repair(self, ctx: ProposalContext, candidate: FactorCandidate, failure: str, attempt: int,
               tried: set[str]) -> FactorCandidate | None:
        """A replacement for a candidate the coder refused: another member of its family."""
        rng = self._rng(ctx, f"repair:{candidate.name}:{attempt}")
        family = rng.choice(FAMILIES)
        exprs = self._family_candidates(family, rng, tried, 1)
        if not exprs:
            return None
        return FactorCandidate(name=candidate.name, expression=exprs[0],
                               rationale=f"replaces a refused candidate ({failure.splitlines()[0][:120]})")

    # ---- factor ideas -------------------------------------------------------------------------------
    def _next_family(self, ctx: ProposalContext, rng: random.Random) -> Family:
        least = min(ctx.families_tried.get(f.name, 0) for f in FAMILIES)
        fresh = [f for f in FAMILIES if ctx.families_tried.get(f.name, 0) == least]
        return rng.choice(fresh)

    def _family_candidates(self, family: Family, rng: random.Random, tried: set[str], k: int) -> list[str]:
        pool = [t.format(w=w, p=p) for t in family.templates for w in WINDOWS for p in PRICES]
        pool = list(dict.fromkeys(pool))  # templates without {w}/{p} appear once
        rng.shuffle(pool)
        # one of each template first, so a hypothesis covers the family's shapes
        pool.sort(key=lambda e: 0 if any(e == t.format(w=w, p="$close") for t in family.templates for w in (5, 10, 20)) else 1)
        return _fresh(pool, tried, k)

    def _mutations(self, rng: random.Random, library: dict[str, str], tried: set[str], k: int) -> list[str]:
        names = sorted(library)
        out: list[str] = []
        for _ in range(40 * k):
            base = library[rng.choice(names)]
            move = rng.random()
            if move < 0.35 and _WINDOW.search(base):
                expr = _WINDOW.sub(lambda m: str(rng.choice([w for w in WINDOWS if str(w) != m.group(1)])), base, count=1)
            elif move < 0.55:
                ops = [op for op in _OP_SWAPS if f"{op}(" in base]
                if not ops:
                    continue
                op = rng.choice(ops)
                expr = base.replace(f"{op}(", f"{rng.choice(_OP_SWAPS[op])}(", 1)
            elif move < 0.7:
                present = [p for p in PRICES if p in base and p != "$close"] or ["$close"]
                src = rng.choice(present)
                expr = base.replace(src, rng.choice([p for p in PRICES if p != src]), 1)
            elif len(names) > 1:
                a, b = rng.sample(names, 2)
                shape = rng.choice(("CSRank({a}) + CSRank({b})", "CSRank({a}) - CSRank({b})", "CSRank({a}) * CSRank({b})"))
                expr = shape.format(a=library[a], b=library[b])
            else:
                expr = f"Mean({base}, {rng.choice((3, 5, 10))})"
            out += _fresh([expr], tried | set(out), 1)
            if len(out) >= k:
                break
        return out

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
            cand = ModelCandidate(name=f"{key.split(':')[1]}_{ctx.iteration}", family=cand_family,
                                  params=params if cand_family == family else {}, feature_norm=cand_norm,
                                  rationale=text)
            return Hypothesis(direction="model", text=text, family=key, models=[cand])
        steps = LGB_STEPS if family == "lightgbm" else RIDGE_STEPS if family == "linear" else {}
        candidates: list[ModelCandidate] = []
        for _ in range(8):  # up to two distinct perturbations
            p = dict(params)
            for key in rng.sample(sorted(steps), min(2, len(steps))):
                current = p.get(key, _default_param(family, key))
                p[key] = rng.choice([v for v in steps[key] if v != current])
            if all(c.params != p for c in candidates):
                candidates.append(ModelCandidate(name=f"{family[:3]}_{ctx.iteration}_{len(candidates)}", family=family,
                                                 params=p, feature_norm=norm,
                                                 rationale="perturb hyperparameters of the best model"))
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


def _fresh(pool: list[str], tried: set[str], k: int) -> list[str]:
    from quantcore.errors import ExpressionError
    from quantcore.expr.canonical import canonical
    from quantcore.expr.parser import parse

    out = []
    seen = set(tried)
    for expr in pool:
        try:
            key = canonical(parse(expr))
        except ExpressionError:
            continue
        if key in seen:
            continue
        seen.add(key)
        out.append(expr)
        if len(out) >= k:
            break
    return out


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
        feedback = ("build on the accepted factors (vary windows, combine with CSRank)" if accepted else
                    "this family shows no validation signal here; move to another family")
    else:
        feedback = "keep the improved settings and refine nearby" if accepted else "revert to the best model's settings"
    return analysis, feedback
