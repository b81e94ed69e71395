"""The proposer/critic back-end interface, and the offline implementation of it.

`agents.llm.LLMBackend` implements the same interface against any OpenAI-compatible endpoint. A
back-end proposes and repairs candidates and writes the critic's analysis; it never decides a verdict.
`drain_calls()` hands over the LLM calls made since the last drain, for the store."""

from __future__ import annotations

from typing import Protocol

from agents.contracts import FactorCandidate, Hypothesis, ProposalContext, Verdict
from agents.offline import OfflineProposer, offline_analysis
from agents.search import SearchPool

__all__ = ["Backend", "OfflineBackend"]


class Backend(Protocol):
    name: str

    def propose(
        self, ctx: ProposalContext, tried: set[str], library: dict[str, str], pool: SearchPool | None = None
    ) -> Hypothesis: ...

    def repair(
        self, ctx: ProposalContext, candidate: FactorCandidate, failure: str, attempt: int, tried: set[str]
    ) -> FactorCandidate | None: ...

    def analyse(self, ctx: ProposalContext, hypothesis: Hypothesis, verdicts: list[Verdict]) -> tuple[str, str]: ...

    def drain_calls(self) -> list[dict]: ...


class OfflineBackend:
    """Seeded mutation/crossover proposer and rule-based critic text; no network, no tokens."""

    name = "offline"

    def __init__(self, seed: int = 0, max_nodes: int = 40, max_depth: int = 10):
        self.proposer = OfflineProposer(seed, max_nodes=max_nodes, max_depth=max_depth)

    def propose(self, ctx, tried, library, pool=None):
        return self.proposer.propose(ctx, tried, library, pool)

    def repair(self, ctx, candidate, failure, attempt, tried):
        return self.proposer.repair(ctx, candidate, failure, attempt, tried)

    def analyse(self, ctx, hypothesis, verdicts):
        return offline_analysis(hypothesis.direction, verdicts)

    def drain_calls(self) -> list[dict]:
        return []
