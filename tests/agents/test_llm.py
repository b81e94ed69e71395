"""LLMBackend against a real OpenAI-compatible HTTP server on 127.0.0.1 with scripted replies."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.backend import OfflineBackend
from agents.config import LoopConfig
from agents.contracts import FactorCandidate, Hypothesis, ProposalContext, TraceSummary, Verdict
from agents.llm import PRICES, LLMBackend, LLMError, ReplayMismatch, load_prompt, load_replay_calls

MARKET = "synthetic:60:400:0"
FACTORS = {
    "text": "short-term reversal",
    "family": "reversal",
    "factors": [
        {"name": "rev5", "expression": "-($close/Ref($close, 5) - 1)", "rationale": "reversal"},
        {"name": "vol_shock", "expression": "$volume/(Mean($volume, 10)+1e-12)"},
    ],
}
ANALYSIS = {"analysis": "reversal carries signal on validation", "feedback": "try longer windows"}


# ---- a scripted chat-completions server -----------------------------------------------------------


def completion(content, prompt_tokens=120, completion_tokens=40, refusal=None) -> dict:
    if not isinstance(content, str) and content is not None:
        content = json.dumps(content)
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content, "refusal": refusal},
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def reply(content, **kw):  # (status, headers, body, delay)
    return 200, {}, completion(content, **kw), 0.0


def status(code: int, headers: dict | None = None):
    return code, headers or {}, {"error": {"message": f"scripted {code}", "type": "scripted", "code": None}}, 0.0


def delayed(seconds: float, content):
    return 200, {}, completion(content), seconds


class Scripted:
    """Serves POST /v1/chat/completions: queued replies first, then `respond(body)` if set."""

    def __init__(self):
        self.queue: deque = deque()
        self.respond = None
        self.bodies: list[dict] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                script.bodies.append(body)
                if self.path != "/v1/chat/completions":
                    code, headers, payload, delay = status(404)
                elif script.queue:
                    code, headers, payload, delay = script.queue.popleft()
                else:
                    code, headers, payload, delay = script.respond(body)
                time.sleep(delay)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    for k, v in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server(monkeypatch):
    s = Scripted()
    monkeypatch.setenv("OPENAI_BASE_URL", s.url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.delenv("RDQUANT_PRICE_IN", raising=False)
    monkeypatch.delenv("RDQUANT_PRICE_OUT", raising=False)
    yield s
    s.stop()


def backend(**config) -> LLMBackend:
    return LLMBackend.from_env(LoopConfig(backend="llm", **config), timeout_s=0.5, backoff_s=0.01)


def context(iteration: int = 1, direction: str = "factor") -> ProposalContext:
    trace = TraceSummary(
        accepted=[
            {
                "name": "mom20",
                "expression": "$close/Ref($close, 20) - 1",
                "rank_ic": 0.031,
                "rank_icir": 0.21,
                "ic": 0.02,
            }
        ],
        failures=[{"candidate": "bad", "failure": "UnknownOperatorError: unknown operator 'Foo'"}],
        lessons=["volume ideas were weak"],
        best_model={"name": "baseline", "family": "lightgbm", "params": {}, "metrics": {"Rank IC": 0.04}},
    )
    return ProposalContext(
        run_id="r1",
        iteration=iteration,
        direction=direction,
        fields=["close", "high", "low", "open", "volume", "vwap"],
        trace=trace,
        library_names=["mom20"],
        n_candidates=2,
    )


# ---- attempts, feedback and retries ----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, kind",
    [
        (reply("this is not {json"), "bad_json"),
        (reply({"text": "x", "factors": [{"name": "1bad", "expression": "$close"}]}), "schema"),
        (reply({"text": "x", "factors": []}), "schema"),
        (reply(None, refusal="I can't help with that"), "refusal"),
        (reply(""), "refusal"),
    ],
)
def test_an_unusable_reply_is_fed_back_and_both_attempts_are_recorded(server, bad, kind):
    server.queue.extend([bad, reply(FACTORS)])
    b = backend()
    hyp = b.propose(context(), set(), {"mom20": "$close/Ref($close, 20) - 1"})
    assert hyp.direction == "factor" and [f.name for f in hyp.factors] == ["rev5", "vol_shock"]
    calls = b.drain_calls()
    assert [(c["node"], c["attempt"], c["ok"]) for c in calls] == [("proposer", 1, False), ("proposer", 2, True)]
    assert calls[0]["error"].startswith(f"{kind}: ")
    second = json.loads(calls[1]["request_json"])["messages"]
    assert second[-1]["role"] == "user" and "could not be used" in second[-1]["content"]
    assert len(server.bodies) == 2 and len(server.bodies[1]["messages"]) == 4
    assert server.bodies[0]["response_format"] == {"type": "json_object"}
    assert b.drain_calls() == []


def test_429_and_500_are_retried_after_a_pause_honouring_retry_after(server):
    server.queue.extend([status(429, {"Retry-After": "1"}), status(500), reply(ANALYSIS)])
    b = backend()
    hyp = Hypothesis(direction="factor", text="reversal", factors=[FactorCandidate(name="a", expression="$close")])
    started = time.monotonic()
    analysis, feedback = b.analyse(context(), hyp, [Verdict(candidate="a", verdict="accept", reasons=["ok"])])
    assert time.monotonic() - started >= 1.0  # the server asked for one second
    assert (analysis, feedback) == (ANALYSIS["analysis"], ANALYSIS["feedback"])
    calls = b.drain_calls()
    assert [c["error"].split(":")[0] for c in calls] == ["http_429", "http_5xx", ""]
    assert [c["ok"] for c in calls] == [False, False, True] and {c["node"] for c in calls} == {"critic"}


def test_a_reply_slower_than_the_client_timeout_is_retried(server):
    server.queue.extend([delayed(2.0, FACTORS), reply(FACTORS)])
    b = backend()
    b.propose(context(), set(), {})
    calls = b.drain_calls()
    assert calls[0]["error"].startswith("timeout: ") and 0.4 < calls[0]["latency_s"] < 1.5
    assert calls[1]["ok"]


def test_repeated_failures_end_in_a_clear_llm_error(server):
    server.queue.extend([status(500)] * 3)
    b = backend()
    with pytest.raises(
        LLMError,
        match=r"proposer LLM call \(iteration 1, model gpt-4o-mini\) failed after 3 "
        r"attempt\(s\); last error: http_5xx: HTTP 500",
    ):
        b.propose(context(), set(), {})
    assert [c["attempt"] for c in b.drain_calls()] == [1, 2, 3]


def test_a_client_error_is_not_retried(server):
    server.queue.append(status(401))
    with pytest.raises(LLMError, match="check OPENAI_API_KEY"):
        backend().propose(context(), set(), {})
    assert len(server.bodies) == 1


def test_repeated_failures_fall_back_to_the_offline_backend_when_configured(server):
    server.queue.extend([reply("nope")] * 3)
    b = backend(fallback_offline=True, seed=7)
    hyp = b.propose(context(), set(), {})
    assert hyp == OfflineBackend(7).propose(context(), set(), {})
    calls = b.drain_calls()
    assert len(calls) == 3 and calls[-1]["error"].endswith("| fell back to the offline back-end")


def test_repair_keeps_the_candidate_name_and_model_proposals_are_checked(server):
    server.queue.extend(
        [
            reply({"name": "renamed", "expression": "Mean($close, 5)/$close - 1", "rationale": "fix"}),
            reply({"text": "t", "models": [{"name": "m", "family": "lightgbm", "params": {"leaves": 3}}]}),
            reply({"text": "t", "models": [{"name": "m", "family": "lightgbm", "params": {"num_leaves": 31}}]}),
        ]
    )
    b = backend()
    fixed = b.repair(
        context(), FactorCandidate(name="bad", expression="Foo($close, 5)"), "unknown operator 'Foo'", 1, set()
    )
    assert fixed == FactorCandidate(name="bad", expression="Mean($close, 5)/$close - 1", rationale="fix")
    hyp = b.propose(context(2, "model"), set(), {})
    assert hyp.direction == "model" and hyp.models[0].params == {"num_leaves": 31}
    calls = b.drain_calls()
    assert [c["node"] for c in calls] == ["coder", "proposer", "proposer"]
    assert "has no parameter(s) leaves" in calls[1]["error"]


def test_colliding_factor_names_are_made_unique(server):
    twice = {
        "text": "t",
        "factors": [
            {"name": "mom20", "expression": "$close/Ref($close, 10) - 1"},
            {"name": "x", "expression": "$open"},
            {"name": "x", "expression": "$high"},
        ],
    }
    server.queue.append(reply(twice))
    hyp = backend().propose(context(3), set(), {"mom20": "$close/Ref($close, 20) - 1"})
    assert [f.name for f in hyp.factors] == ["mom20_3_0", "x", "x_3_2"]


# ---- accounting ------------------------------------------------------------------------------------


def test_tokens_latency_and_cost_are_recorded(server, monkeypatch):
    server.queue.extend([(200, {}, completion(FACTORS, prompt_tokens=1000, completion_tokens=500), 0.2)])
    b = backend(model="gpt-4o-mini")
    b.propose(context(), set(), {})
    (call,) = b.drain_calls()
    price_in, price_out = PRICES["gpt-4o-mini"]
    assert (call["prompt_tokens"], call["completion_tokens"]) == (1000, 500)
    assert call["cost_usd"] == pytest.approx((1000 * price_in + 500 * price_out) / 1e6)
    assert call["latency_s"] >= 0.2 and b.tokens_used == 1500
    request = json.loads(call["request_json"])
    assert request["model"] == "gpt-4o-mini" and request["max_tokens"] == 4000
    assert request["templates"] == {
        "system.md": load_prompt("system.md").hash,
        "propose_factor.md": load_prompt("propose_factor.md").hash,
    }
    assert server.bodies[0]["max_tokens"] == 4000

    server.queue.append(reply(FACTORS, prompt_tokens=10, completion_tokens=10))
    b = backend(model="local-llama")
    b.propose(context(), set(), {})
    (call,) = b.drain_calls()
    assert call["cost_usd"] == 0
    assert "no price for model 'local-llama'" in json.loads(call["request_json"])["price_note"]

    monkeypatch.setenv("RDQUANT_PRICE_IN", "1")
    monkeypatch.setenv("RDQUANT_PRICE_OUT", "2")
    server.queue.append(reply(FACTORS, prompt_tokens=1_000_000, completion_tokens=1_000_000))
    b = backend(model="local-llama")
    b.propose(context(), set(), {})
    assert b.drain_calls()[0]["cost_usd"] == pytest.approx(3.0)


def test_a_call_that_would_exceed_the_run_token_budget_is_refused(server):
    b = backend(max_tokens=1000)
    with pytest.raises(LLMError, match="run token budget 1000 would be exceeded.*raise --max-tokens"):
        b.propose(context(), set(), {})
    assert server.bodies == []
    # within budget, the reply is capped at what is left
    b = backend(max_tokens=4500)
    server.queue.append(reply(FACTORS))
    b.propose(context(), set(), {})
    assert 256 <= server.bodies[0]["max_tokens"] < 4000


def test_missing_endpoint_settings_name_both_variables(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    with pytest.raises(LLMError, match="OPENAI_BASE_URL and OPENAI_API_KEY; OPENAI_BASE_URL not set"):
        LLMBackend.from_env(LoopConfig(backend="llm"))


# ---- replay ----------------------------------------------------------------------------------------


def test_replay_serves_the_recorded_calls_without_a_server(server, monkeypatch):
    server.queue.extend([reply("not json"), reply(FACTORS), status(429), reply(ANALYSIS)])
    b = backend()
    hyp = b.propose(context(4), set(), {})
    verdicts = [Verdict(candidate="rev5", verdict="reject", reasons=["weak"])]
    text = b.analyse(context(4), hyp, verdicts)
    recorded = [{**c, "iteration": 4} for c in b.drain_calls()]
    server.stop()
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("OPENAI_API_KEY")

    r = LLMBackend.from_env(LoopConfig(backend="llm"), replay_calls=recorded)
    assert r.propose(context(4), set(), {}) == hyp
    assert r.analyse(context(4), hyp, verdicts) == text
    replayed = r.drain_calls()
    keys = ("node", "attempt", "ok", "error", "response_text", "prompt_tokens", "completion_tokens", "cost_usd")
    assert [{k: c[k] for k in keys} for c in replayed] == [{k: c[k] for k in keys} for c in recorded]
    with pytest.raises(ReplayMismatch, match="iteration 5 asks the proposer"):
        r.propose(context(5), set(), {})
    with pytest.raises(ReplayMismatch, match="iteration 4 asks the critic"):
        r.analyse(context(4), hyp, verdicts)


# ---- the whole loop --------------------------------------------------------------------------------


def test_loop_with_the_llm_backend_stores_its_calls_and_never_shows_test_dates(server, tmp_path):
    from agents.loop import make_executor, open_project, project_paths, start_run
    from agents.store import HypothesisRow, LLMCallRow
    from quantcore.data.sources import load_market
    from quantcore.recording import Recorder
    from sandbox.spec import default_segments

    def respond(body):
        task = body["messages"][1]["content"]
        if task.startswith("# Task: propose factors"):
            bad = {"name": "broken", "expression": "Foo($close, 5)"}  # refused by the coder, then repaired
            return reply({**FACTORS, "factors": FACTORS["factors"] + [bad]})
        if task.startswith("# Task: repair a factor"):
            return reply({"name": "broken", "expression": "Std($close/Ref($close, 1) - 1, 10)"})
        if task.startswith("# Task: propose models"):
            return reply(
                {
                    "text": "smaller trees generalise better",
                    "family": "lightgbm",
                    "models": [
                        {"name": "lgb_small", "family": "lightgbm", "params": {"num_leaves": 31, "learning_rate": 0.1}}
                    ],
                }
            )
        if task.startswith("# Task: analyse"):
            return reply(ANALYSIS)
        return status(400)

    server.respond = respond
    server.queue.append(reply("{truncated"))  # the first proposal is retried
    config = LoopConfig(backend="llm", budget=2, data=MARKET, workers=1, n_factor_candidates=3)
    run_id = start_run(config, tmp_path)

    store = open_project(tmp_path)
    assert store.run(run_id).status == "finished"
    rows = store.rows(LLMCallRow, run_id)
    seen = [(r.iteration, r.node, r.attempt, r.ok) for r in rows]
    assert seen == [
        (1, "proposer", 1, False),
        (1, "proposer", 2, True),
        (1, "coder", 1, True),
        (1, "critic", 1, True),
        (2, "proposer", 1, True),
        (2, "critic", 1, True),
    ]
    assert store.run(run_id).tokens == sum(r.prompt_tokens + r.completion_tokens for r in rows) > 0
    assert [c["response_text"] for c in load_replay_calls(store, run_id)] == [r.response_text for r in rows]

    # replay in a fresh project (experiments come from the first project's sandbox cache, their MLflow runs
    # from its store, where the critic reads them back): no server
    server.stop()
    replay = LLMBackend(config, replay_calls=load_replay_calls(store, run_id))
    recorder = Recorder.open(project_paths(tmp_path)["mlflow"], "replay")
    with make_executor(config, project_paths(tmp_path)["sandbox"], recorder=recorder) as executor:
        again = start_run(config, tmp_path / "replay", backend=replay, executor=executor)
    store2 = open_project(tmp_path / "replay")

    def hypotheses(st, rid):
        return [(h.iteration, h.text, h.candidates_json, h.status) for h in st.rows(HypothesisRow, rid)]

    assert hypotheses(store2, again) == hypotheses(store, run_id)
    assert [r.response_text for r in store2.rows(LLMCallRow, again)] == [r.response_text for r in rows]

    calendar = load_market(MARKET).calendar
    test_start, test_end = default_segments(calendar)["test"]
    test_days = [str(d)[:10] for d in calendar if test_start <= str(d)[:10] <= test_end]
    assert len(test_days) > 50
    sent = [r.request_json for r in rows] + [json.dumps(b) for b in server.bodies]
    assert not [d for d in test_days if any(d in text for text in sent)]
