"""Chooses the next direction (factor or model) with a discounted UCB bandit over recent gains.

The reward of an iteration is its improvement over the current best (0 when nothing improved), as in
RD-Agent(Q)'s scheduler: a direction that keeps paying off is chosen more, one that stalls gives way.
State is a plain dict so it is stored with the run and restored on resume."""

from __future__ import annotations

import math

__all__ = ["choose_direction", "update_scheduler", "DIRECTIONS"]

DIRECTIONS = ("factor", "model")
DISCOUNT = 0.9  # older rewards fade: the loop adapts as the library fills up
EXPLORATION = 0.5
REWARD_SCALE = 100.0  # rewards are RankIC differences (~0.01): scale to order 1


def choose_direction(state: dict, iteration: int, model_ready: bool) -> str:
    """Deterministic: factor first, model only once a best model exists, then discounted UCB."""
    counts = state.get("counts", {})
    if iteration <= 1 or not model_ready:
        return "factor"
    for d in DIRECTIONS:  # try each once
        if counts.get(d, 0.0) == 0:
            return d
    total = sum(counts.values())
    sums = state.get("sums", {})

    def ucb(d: str) -> float:
        n = counts[d]
        return sums.get(d, 0.0) / n + EXPLORATION * math.sqrt(2 * math.log(max(total, 1.0)) / n)

    return max(DIRECTIONS, key=lambda d: (ucb(d), d == "factor"))


def update_scheduler(state: dict, direction: str, reward: float) -> dict:
    """The bandit state after `direction` earned `reward` (a new dict)."""
    counts = {d: DISCOUNT * state.get("counts", {}).get(d, 0.0) for d in DIRECTIONS}
    sums = {d: DISCOUNT * state.get("sums", {}).get(d, 0.0) for d in DIRECTIONS}
    counts[direction] += 1.0
    sums[direction] += max(0.0, reward) * REWARD_SCALE
    history = list(state.get("history", [])) + [[direction, reward]]
    return {"counts": counts, "sums": sums, "history": history}
