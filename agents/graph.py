"""The research loop as a LangGraph `StateGraph`, wired in one place:

    scheduler -> proposer -> coder -> screen -> review -> runner -> critic -> update --(budget left)--> next -> scheduler
                                                                         \\--(spent/stopped)--> END

Each node is a plain function in `agents.nodes` taking the typed `IterationState` and the run's
`Services`; `update` commits the whole iteration to the store in one transaction."""

from __future__ import annotations

import time
from functools import partial

from langgraph.graph import END, START, StateGraph

from agents import nodes
from agents.nodes import IterationState, Services

__all__ = ["build_graph", "budget_left"]


def budget_left(s: Services) -> str | None:
    """None while the loop may go on, else why it stops."""
    m, c = s.memory, s.config
    if m.stopped:
        return "stopped by the reviewer"
    if m.iterations_done >= c.budget:
        return f"budget of {c.budget} iterations spent"
    if c.max_tokens is not None and m.tokens >= c.max_tokens:
        return f"token budget of {c.max_tokens} spent ({m.tokens})"
    if c.max_minutes is not None and (time.monotonic() - s.started) / 60 >= c.max_minutes:
        return f"time budget of {c.max_minutes:g} minutes spent"
    return None


def _next(state: IterationState, s: Services) -> dict:
    return {
        "iteration": state.iteration + 1,
        "direction": None,
        "context": None,
        "hypothesis": None,
        "coded": None,
        "review": None,
        "results": {},
        "critic": None,
        "stop": False,
        "screen": [],
        "screen_specs": {},
        "screen_why": {},
        "screen_results": {},
    }


def build_graph(s: Services):
    g = StateGraph(IterationState)
    for name, fn in (
        ("scheduler", nodes.scheduler_node),
        ("proposer", nodes.proposer_node),
        ("coder", nodes.coder_node),
        ("screen", nodes.screen_node),
        ("review", nodes.review_node),
        ("runner", nodes.runner_node),
        ("critic", nodes.critic_node),
        ("update", nodes.update_node),
        ("next", _next),
    ):
        g.add_node(name, partial(fn, s=s))
    g.add_edge(START, "scheduler")
    g.add_edge("scheduler", "proposer")
    g.add_edge("proposer", "coder")
    g.add_edge("coder", "screen")
    g.add_edge("screen", "review")
    g.add_edge("review", "runner")
    g.add_edge("runner", "critic")
    g.add_edge("critic", "update")
    g.add_conditional_edges("update", lambda state: END if budget_left(s) else "next", {END: END, "next": "next"})
    g.add_edge("next", "scheduler")
    return g.compile()
