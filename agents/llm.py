"""The LLM back-end: proposer, repairer and critic text from any OpenAI-compatible endpoint.

Each back-end method renders a prompt from `prompts/` (system + task template), asks for one JSON
object, and validates it against the contracts in `agents.contracts`. A reply that is not JSON or
does not fit the contract goes back to the model with the validation error (the model's mistake is
its feedback); timeouts, 429 and 5xx are retried with exponential back-off. Every attempt becomes a
call record (see `agents.store.LLMCallRow`) for the store: request, reply, tokens, latency, cost.

With `replay_calls` (the records of an earlier run, `load_replay_calls`) no request leaves the
process: each attempt is answered by the record with the same iteration, node and attempt number.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import json
import os
import re
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.backend import OfflineBackend
from agents.config import LoopConfig
from agents.contracts import FactorCandidate, Hypothesis, ProposalContext, Verdict

__all__ = [
    "LLMBackend",
    "LLMError",
    "ReplayMismatch",
    "PromptError",
    "Prompt",
    "load_prompt",
    "load_replay_calls",
    "PRICES",
    "PROMPTS_DIR",
]


def _prompts_dir() -> Path:
    """prompts/ of the source checkout (editable installs), else the copy a wheel installs as data."""
    checkout = Path(__file__).resolve().parent.parent / "prompts"
    installed = Path(sys.prefix) / "share" / "rdquant" / "prompts"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


PROMPTS_DIR = _prompts_dir()

# List prices, dollars per 1M tokens (input, output); a dated model name ("gpt-4o-mini-2024-07-18")
# matches its longest listed prefix. RDQUANT_PRICE_IN / RDQUANT_PRICE_OUT override for any model.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
    "o4-mini": (1.10, 4.40),
    "o3-mini": (1.10, 4.40),
    "deepseek-chat": (0.27, 1.10),
    "deepseek-reasoner": (0.55, 2.19),
}
NODES = {"propose": "proposer", "repair": "coder", "analyse": "critic"}  # method -> LLMCallRow.node
TRANSIENT = ("timeout", "connection", "http_408", "http_409", "http_429", "http_5xx")  # retried after a pause
MIN_CALL_TOKENS = 256  # below this a reply cannot hold a hypothesis: refuse rather than truncate


class LLMError(RuntimeError):
    """An LLM call failed after its retries (the message says why and how to go on)."""


class ReplayMismatch(LLMError):
    """A replay asked for a call the recorded run did not make."""


class PromptError(ValueError):
    """A prompt template is missing or uses a variable it was not given."""


# ---- prompts ----------------------------------------------------------------------------------------

_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass(frozen=True)
class Prompt:
    """One template file; `{{ name }}` placeholders (braces, because expressions use `$field`)."""

    name: str
    text: str

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    @property
    def variables(self) -> set[str]:
        return set(_VAR.findall(self.text))

    def render(self, **values: Any) -> str:
        missing = sorted(self.variables - set(values))
        if missing:
            raise PromptError(
                f"prompt {self.name} uses {', '.join(missing)} but was given only "
                f"{', '.join(sorted(values)) or 'nothing'}; pass them or edit prompts/{self.name}"
            )
        return _VAR.sub(lambda m: str(values[m.group(1)]), self.text)


def load_prompt(name: str, directory: str | Path = PROMPTS_DIR) -> Prompt:
    path = Path(directory) / name
    if not path.is_file():
        raise PromptError(
            f"prompt template {path} not found (templates live in prompts/ next to agents/, or <prefix>/share/rdquant/prompts in a wheel install)"
        )
    return Prompt(name, path.read_text())


# ---- costs ------------------------------------------------------------------------------------------


def prices(model: str, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(input, output) dollars per 1M tokens for `model`, and a note when the price is unknown."""
    env = os.environ if env is None else env
    if env.get("RDQUANT_PRICE_IN") or env.get("RDQUANT_PRICE_OUT"):
        return float(env.get("RDQUANT_PRICE_IN") or 0), float(env.get("RDQUANT_PRICE_OUT") or 0), ""
    matches = [k for k in PRICES if model == k or model.startswith(k + "-")]
    if not matches:
        return (
            0.0,
            0.0,
            (
                f"no price for model {model!r}: cost recorded as 0 "
                "(set RDQUANT_PRICE_IN / RDQUANT_PRICE_OUT, dollars per 1M tokens)"
            ),
        )
    return (*PRICES[max(matches, key=len)], "")


# ---- replay -----------------------------------------------------------------------------------------


def load_replay_calls(store, run_id: str) -> list[dict]:
    """The LLM calls of run `run_id` in the order they were made, as `LLMBackend(replay_calls=...)` takes them."""
    from agents.store import LLMCallRow

    keep = (
        "iteration",
        "node",
        "attempt",
        "model",
        "request_json",
        "response_text",
        "ok",
        "error",
        "prompt_tokens",
        "completion_tokens",
        "latency_s",
        "cost_usd",
    )
    return [{k: getattr(row, k) for k in keep} for row in store.rows(LLMCallRow, run_id)]


class _Replay:
    """Recorded calls grouped by (iteration, node), served first to last."""

    def __init__(self, calls: list[dict]):
        self.queues: dict[tuple[int, str], deque] = {}
        for call in calls:
            self.queues.setdefault((int(call["iteration"]), call["node"]), deque()).append(call)

    def take(self, iteration: int, node: str, attempt: int) -> dict:
        queue = self.queues.get((iteration, node))
        if not queue:
            raise ReplayMismatch(
                f"replay: iteration {iteration} asks the {node} for a call (attempt {attempt}) "
                "that the recorded run did not make; the run being replayed diverged from the "
                "recording (different settings, code or prompts)"
            )
        call = queue[0]
        if int(call["attempt"]) != attempt:
            raise ReplayMismatch(
                f"replay: iteration {iteration}, {node}: attempt {attempt} was asked for but the "
                f"recording's next call is attempt {call['attempt']}; the replay diverged"
            )
        return queue.popleft()


# ---- reply shapes -----------------------------------------------------------------------------------


class _Analysis(BaseModel):
    model_config = ConfigDict(extra="forbid")
    analysis: str = Field(min_length=1, max_length=4000)
    feedback: str = Field(default="", max_length=2000)


class _Failed(Exception):
    """One attempt failed: `kind` says whether it is retried after a pause (TRANSIENT), fed back, or final."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None, text: str = ""):
        super().__init__(f"{kind}: {message}")
        self.kind, self.message, self.retry_after, self.text = kind, message, retry_after, text

    @property
    def feedback(self) -> bool:  # the model's own mistake: tell it what was wrong
        return self.kind in ("bad_json", "schema", "refusal")

    @property
    def retryable(self) -> bool:
        return self.feedback or self.kind in TRANSIENT


T = TypeVar("T")


# ---- the back-end -----------------------------------------------------------------------------------


class LLMBackend:
    """The `agents.backend.Backend` interface on an OpenAI-compatible chat-completions endpoint."""

    name = "llm"

    def __init__(
        self,
        config: LoopConfig,
        client=None,
        *,
        replay_calls: list[dict] | None = None,
        max_attempts: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        prompts_dir: str | Path = PROMPTS_DIR,
        tokens_used: int = 0,
    ):
        if client is None and replay_calls is None:
            raise ValueError("LLMBackend needs a client or replay_calls; use LLMBackend.from_env(config)")
        self.config = config
        self.model = config.model
        self.client = client
        self.replay = _Replay(replay_calls) if replay_calls is not None else None
        self.max_attempts = max_attempts  # per call, all causes together
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s  # seconds; tests keep them short
        self.prompts = {
            n: load_prompt(n, prompts_dir)
            for n in ("system.md", "propose_factor.md", "propose_model.md", "repair.md", "critic.md")
        }
        self.tokens_used = tokens_used  # this run's tokens so far (resume: the stored total)
        self.price_in, self.price_out, self.price_note = prices(self.model)
        self.offline = (
            OfflineBackend(config.seed, config.max_nodes, config.max_depth) if config.fallback_offline else None
        )
        self._calls: list[dict] = []

    @classmethod
    def from_env(
        cls, config: LoopConfig, replay_calls: list[dict] | None = None, *, timeout_s: float = 60.0, **options: Any
    ) -> "LLMBackend":
        """A back-end on OPENAI_BASE_URL with OPENAI_API_KEY (none needed for a replay)."""
        if replay_calls is not None:
            return cls(config, None, replay_calls=replay_calls, **options)
        base_url, api_key = os.environ.get("OPENAI_BASE_URL"), os.environ.get("OPENAI_API_KEY")
        if not base_url or not api_key:
            missing = [n for n, v in (("OPENAI_BASE_URL", base_url), ("OPENAI_API_KEY", api_key)) if not v]
            raise LLMError(
                f"the llm back-end needs OPENAI_BASE_URL and OPENAI_API_KEY; {' and '.join(missing)} "
                "not set (e.g. OPENAI_BASE_URL=https://api.openai.com/v1), or use --backend offline"
            )
        from openai import OpenAI

        # max_retries=0: the SDK's own retries would hide attempts; ours record each one
        client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
        return cls(config, client, **options)

    # ---- the Backend interface ------------------------------------------------------------------------
    def propose(self, ctx: ProposalContext, tried: set[str], library: dict[str, str], pool=None) -> Hypothesis:
        task = "propose_factor.md" if ctx.direction == "factor" else "propose_model.md"
        values = _context_values(ctx) | ({"families": _model_families()} if ctx.direction == "model" else {})
        parse = lambda data: _hypothesis(data, ctx, library)  # noqa: E731
        fallback = lambda: self.offline.propose(ctx, tried, library, pool)  # noqa: E731
        return self._ask("propose", ctx, task, values, parse, fallback)

    def repair(
        self, ctx: ProposalContext, candidate: FactorCandidate, failure: str, attempt: int, tried: set[str]
    ) -> FactorCandidate | None:
        values = _context_values(ctx) | {
            "name": candidate.name,
            "expression": candidate.expression,
            "failure": failure,
            "repair_attempt": attempt,
        }

        def parse(data: dict) -> FactorCandidate:
            data = {**data, "name": candidate.name}  # the coder tracks the candidate by its name
            return FactorCandidate.model_validate(data)

        fallback = lambda: self.offline.repair(ctx, candidate, failure, attempt, tried)  # noqa: E731
        return self._ask("repair", ctx, "repair.md", values, parse, fallback)

    def analyse(self, ctx: ProposalContext, hypothesis: Hypothesis, verdicts: list[Verdict]) -> tuple[str, str]:
        values = _context_values(ctx) | {
            "hypothesis": hypothesis.text,
            "family": hypothesis.family or "-",
            "candidates": _candidates_text(hypothesis),
            "verdicts": _verdicts_text(verdicts),
        }

        def parse(data: dict) -> tuple[str, str]:
            reply = _Analysis.model_validate(data)
            return reply.analysis, reply.feedback

        fallback = lambda: self.offline.analyse(ctx, hypothesis, verdicts)  # noqa: E731
        return self._ask("analyse", ctx, "critic.md", values, parse, fallback)

    def drain_calls(self) -> list[dict]:
        calls, self._calls = self._calls, []
        return calls

    # ---- one logical call: attempts, feedback, back-off ---------------------------------------------
    def _ask(
        self,
        method: str,
        ctx: ProposalContext,
        task: str,
        values: dict,
        parse: Callable[[dict], T],
        fallback: Callable[[], T],
    ) -> T:
        node = NODES[method]
        system, user = self.prompts["system.md"], self.prompts[task]
        messages = [
            {"role": "system", "content": system.render(operators=_operators_text(), fields=values["fields"])},
            {"role": "user", "content": user.render(**values)},
        ]
        templates = {system.name: system.hash, user.name: user.hash}
        failure: _Failed | None = None
        for attempt in range(1, self.max_attempts + 1):
            call, failed = self._attempt(node, ctx.iteration, attempt, messages, templates)
            try:
                if failed is not None:
                    raise failed
                value = _parse_reply(call["response_text"], parse)
            except _Failed as f:
                failure = f
                call.update(ok=False, error=str(f))
                self._calls.append(call)
                if not f.retryable or attempt == self.max_attempts:
                    break
                if f.feedback:  # the model sees its reply and what was wrong with it
                    messages = messages + [
                        {"role": "assistant", "content": f.text or "(no reply)"},
                        {"role": "user", "content": _fix_message(f)},
                    ]
                elif self.replay is None:
                    time.sleep(self._pause(attempt, f.retry_after))
                continue
            self._calls.append(call)
            return value
        why = (
            f"the {node} LLM call (iteration {ctx.iteration}, model {self.model}) failed after {attempt} "
            f"attempt(s); last error: {failure}"
        )
        if failure.kind == "replay":
            raise ReplayMismatch(failure.message)
        if self.offline is not None:
            self._calls[-1]["error"] += " | fell back to the offline back-end"
            return fallback()
        hint = {
            "budget": "raise --max-tokens or start a new run",
            "http_401": "check OPENAI_API_KEY",
            "http_404": "check OPENAI_BASE_URL and the model name",
        }.get(failure.kind, "check the endpoint, or allow fallback to the offline back-end (fallback_offline)")
        raise LLMError(f"{why}. {hint}")

    def _pause(self, attempt: int, retry_after: float | None) -> float:
        wait = retry_after if retry_after is not None else self.backoff_s * 2 ** (attempt - 1)
        return max(0.0, min(wait, self.max_backoff_s))

    def _attempt(
        self, node: str, iteration: int, attempt: int, messages: list[dict], templates: dict
    ) -> tuple[dict, _Failed | None]:
        """One request (or its recording): the call record, and why the attempt failed (None: a reply to parse)."""
        budget_left = None if self.config.max_tokens is None else self.config.max_tokens - self.tokens_used
        prompt_estimate = len(json.dumps(messages)) // 4  # ~4 characters a token: a guard, not a bill
        max_tokens = self.config.max_call_tokens
        if budget_left is not None:
            max_tokens = min(max_tokens, budget_left - prompt_estimate)
        request = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "response_format": {"type": "json_object"},
            "templates": templates,
        }
        if self.price_note:
            request["price_note"] = self.price_note
        call = {
            "node": node,
            "attempt": attempt,
            "model": self.model,
            "request_json": json.dumps(request),
            "response_text": "",
            "ok": True,
            "error": "",
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "latency_s": 0.0,
            "cost_usd": 0.0,
        }
        recorded = None
        if self.replay is not None:
            try:
                recorded = self.replay.take(iteration, node, attempt)
            except ReplayMismatch as e:
                return call, _Failed("replay", str(e))
        if max_tokens < MIN_CALL_TOKENS:
            if recorded is not None and not recorded.get("error", "").startswith("budget:"):
                return call, _Failed(
                    "replay",
                    f"replay: iteration {iteration}, {node}, attempt {attempt} is over the "
                    "token budget now but was sent when recorded; the replay diverged",
                )
            return call, _Failed(
                "budget",
                f"run token budget {self.config.max_tokens} would be exceeded ({self.tokens_used} used, "
                f"~{prompt_estimate} prompt tokens, fewer than {MIN_CALL_TOKENS} left for the reply)",
            )
        if recorded is not None:
            if recorded.get("error", "").startswith("budget:"):
                return call, _Failed(
                    "replay",
                    (
                        f"replay: iteration {iteration}, {node}, attempt {attempt} was refused for the token budget "
                        f"when recorded but is within it now ({self.tokens_used} tokens used); the replay diverged"
                    ),
                )
            return self._replayed(call, recorded)
        started = time.monotonic()
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, response_format={"type": "json_object"}
            )
        except Exception as e:  # noqa: BLE001 - sorted into retried / final causes below
            call["latency_s"] = time.monotonic() - started
            return call, _transport_failure(e)
        call["latency_s"] = time.monotonic() - started
        usage = getattr(response, "usage", None)
        self._count(call, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0)
        message = response.choices[0].message if response.choices else None
        call["response_text"] = (message.content or "") if message is not None else ""
        refusal = getattr(message, "refusal", None) if message is not None else "no choices in the reply"
        if refusal:
            return call, _Failed("refusal", f"the model refused: {refusal}")
        if not call["response_text"].strip():
            return call, _Failed("refusal", "the model sent an empty reply")
        return call, None

    def _replayed(self, call: dict, recorded: dict) -> tuple[dict, _Failed | None]:
        call.update(response_text=recorded["response_text"], latency_s=float(recorded.get("latency_s", 0.0)))
        self._count(call, int(recorded.get("prompt_tokens", 0)), int(recorded.get("completion_tokens", 0)))
        kind, _, message = (recorded.get("error") or "").partition(": ")
        if kind in TRANSIENT or kind.startswith("http_"):
            return call, _Failed(kind, message.split(" | ")[0])
        if kind == "refusal":
            return call, _Failed(kind, message.split(" | ")[0], text=call["response_text"])
        return call, None

    def _count(self, call: dict, prompt_tokens: int, completion_tokens: int) -> None:
        call.update(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=(prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6,
        )
        self.tokens_used += prompt_tokens + completion_tokens


# ---- parsing replies --------------------------------------------------------------------------------


def _parse_reply(text: str, parse: Callable[[dict], T]) -> T:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _Failed("bad_json", f"the reply is not valid JSON ({e})", text=text) from None
    if not isinstance(data, dict):
        raise _Failed("bad_json", f"the reply is JSON but not an object (got {type(data).__name__})", text=text)
    try:
        return parse(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}" for err in e.errors())
        raise _Failed("schema", f"the reply does not fit the schema: {problems}", text=text) from None
    except ValueError as e:
        raise _Failed("schema", str(e), text=text) from None


def _fix_message(f: _Failed) -> str:
    return (
        f"Your reply could not be used: {f.message}\n"
        "Answer again with one JSON object only, following the format described above exactly."
    )


def _hypothesis(data: dict, ctx: ProposalContext, library: dict[str, str]) -> Hypothesis:
    """A proposal reply as a Hypothesis of the iteration's direction, candidate names made unique."""
    data = {"direction": ctx.direction, **data}
    data.pop("parent", None)  # hypothesis ids are the store's; edges come from families (agents.nodes._edges)
    data.pop("relation", None)
    hyp = Hypothesis.model_validate(data)
    if hyp.direction != ctx.direction:
        raise ValueError(f"this iteration explores the {ctx.direction} direction; the reply proposed {hyp.direction}")
    if ctx.direction == "factor":
        if not hyp.factors:
            raise ValueError("`factors` is empty: propose at least one factor expression")
        taken = set(library) | set(ctx.fields)
        factors = []
        for i, f in enumerate(hyp.factors):
            name = f.name
            if name in taken:  # the library is shared by all runs of a project: names must not collide
                name = f"{name[:30]}_{ctx.iteration}_{i}"
            taken.add(name)
            factors.append(f.model_copy(update={"name": name}))
        return hyp.model_copy(update={"factors": factors})
    if not hyp.models:
        raise ValueError("`models` is empty: propose at least one model configuration")
    from quantcore.models import FAMILIES

    for m in hyp.models:
        cls = FAMILIES.get(m.family.lower())
        if cls is None:
            raise ValueError(f"model {m.name}: unknown family {m.family!r}; valid: {', '.join(FAMILIES)}")
        known = _config_fields(cls)
        unknown = sorted(set(m.params) - set(known))
        if unknown:
            raise ValueError(
                f"model {m.name}: {m.family} has no parameter(s) {', '.join(unknown)}; valid: {', '.join(known)}"
            )
    return hyp


# ---- prompt values ----------------------------------------------------------------------------------


def _context_values(ctx: ProposalContext) -> dict[str, Any]:
    """Everything a task template may use from the proposal context (validation-segment facts only)."""
    t = ctx.trace
    accepted = "\n".join(
        f"- {a.get('name')}: {a.get('expression')}  (valid RankIC {_num(a.get('rank_ic'))}, "
        f"RankICIR {_num(a.get('rank_icir'))}, IC {_num(a.get('ic'))})"
        for a in t.accepted
    )
    failures = "\n".join(f"- {f.get('candidate', '?')}: {f.get('failure', '')}" for f in t.failures)
    best = t.best_model
    best_text = "none yet"
    if best:
        metrics = ", ".join(
            f"{k} {_num(v)}" for k, v in sorted(best.get("metrics", {}).items()) if isinstance(v, (int, float))
        )
        best_text = (
            f"{best.get('name', '?')}: family {best.get('family', '?')}, params "
            f"{json.dumps(best.get('params', {}), sort_keys=True)}; validation metrics: {metrics or '-'}"
        )
    tried = ", ".join(f"{k} ({v})" for k, v in sorted(ctx.families_tried.items())) or "none yet"
    return {
        "iteration": ctx.iteration,
        "direction": ctx.direction,
        "n_candidates": ctx.n_candidates,
        "fields": ", ".join(f"${f}" for f in ctx.fields),
        "accepted": accepted or "(the library is empty)",
        "failures": failures or "(none)",
        "lessons": "\n".join(f"- {x}" for x in t.lessons) or "(none yet)",
        "best_model": best_text,
        "families_tried": tried,
        "library_names": ", ".join(f"${n}" for n in ctx.library_names) or "(none)",
    }


def _operators_text() -> str:
    from quantcore.expr.operators import OPERATORS

    lines = []
    for spec in OPERATORS.values():
        extra = f"  (also infix `{spec.infix}`)" if spec.infix else ""
        if spec.min_window > 1:
            extra += f"  (N >= {spec.min_window})"
        lines.append(f"- {spec.signature}{extra}")
    return "\n".join(lines)


def _config_fields(cls) -> dict[str, Any]:
    import dataclasses

    skip = {"seed", "num_threads", "device"}  # the sandbox's business, not the model's
    return {f.name: f.default for f in dataclasses.fields(cls.Config) if f.name not in skip}


@functools.cache
def _model_families() -> str:
    """Each family's parameters and defaults, read from its Config (imports torch once per process)."""
    from quantcore.models import FAMILIES

    return "\n".join(
        f"- {name}: " + ", ".join(f"{k}={v!r}" for k, v in _config_fields(cls).items())
        for name, cls in FAMILIES.items()
    )


def _candidates_text(h: Hypothesis) -> str:
    if h.direction == "factor":
        return "\n".join(f"- {f.name}: {f.expression}" for f in h.factors)
    return "\n".join(f"- {m.name}: {m.family} {json.dumps(m.params, sort_keys=True)}" for m in h.models)


def _verdicts_text(verdicts: list[Verdict]) -> str:
    lines = []
    for v in verdicts:
        metrics = ", ".join(f"{k} {_num(x)}" for k, x in sorted(v.metrics.items()))
        lines.append(f"- {v.candidate}: {v.verdict}; " + "; ".join(v.reasons) + (f" [{metrics}]" if metrics else ""))
    return "\n".join(lines) or "(no candidates)"


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) else "-"


def _transport_failure(e: Exception) -> _Failed:
    import openai

    if isinstance(e, openai.APITimeoutError):
        return _Failed("timeout", f"no reply within the client timeout ({e})")
    if isinstance(e, openai.APIConnectionError):
        return _Failed("connection", str(e))
    if isinstance(e, openai.APIStatusError):
        status = e.status_code
        kind = "http_5xx" if status >= 500 else f"http_{status}"
        return _Failed(kind, f"HTTP {status}: {str(e)[:300]}", retry_after=_retry_after(e.response.headers))
    raise e  # not the endpoint's doing: our bug, raised as is


def _retry_after(headers) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date)."""
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return float(value)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None
