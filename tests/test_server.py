"""``deliberate serve`` on loopback: the official openai client and DSPy against it, with
the in-process ``sim``, a scripted model and a ``SimServer`` upstream; streaming that is
real; auth, limits and errors; disconnects that stop the run's calls."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from deliberate import FunctionModel, Store
from deliberate.config import BudgetConfig
from deliberate.errors import ConfigError
from deliberate.models.base import ChatModel, ChatRequest
from deliberate.models.sim import SimModel, SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.server import BackgroundServer, RouteConfig, ServeConfig, create_app
from deliberate.server.openai_api import effective_budget, parse_model_name
from deliberate.server.wire import ApiError
from deliberate.tasks import load_suite
from deliberate.tree import AttemptRecord, ModelCallRecord, RunRecord
from deliberate.verifiers.answer import answers_match

SUITE = load_suite("arithmetic")
KEY = "client-key-0001"
FAST_RETRY = {"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.02}
STRATEGIES = {"best_of_n": object(), "self_consistency": object(), "refine": object()}


def question(k: int = 0) -> str:
    return SUITE.tasks[k].prompt


def config(tmp_path: Path, **kw: Any) -> ServeConfig:
    data: dict[str, Any] = {"upstreams": {"sim": "sim:arithmetic"},
                            "store": str(tmp_path / "runs.db"), "run": {"retry": FAST_RETRY}}
    data.update(kw)
    return ServeConfig.model_validate(data)


@contextmanager
def serving(cfg: ServeConfig, models: dict[str, ChatModel] | None = None
            ) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(cfg, models=models)) as srv:
        yield srv


def client(srv: BackgroundServer, key: str = "none", **kw: Any) -> OpenAI:
    return OpenAI(base_url=srv.base_url, api_key=key, max_retries=0, **kw)


async def _read(path: Path, run_id: str) -> tuple[RunRecord | None, AttemptRecord | None,
                                                  list[ModelCallRecord]]:
    async with await Store.aopen(str(path)) as st:
        run = await st.get_run(run_id)
        attempt = await st.get_attempt(run_id, "chat")
        calls = list((await st.load_calls(run_id, "chat")).values())
    return run, attempt, calls


def stored(path: Path, run_id: str) -> tuple[RunRecord | None, AttemptRecord | None,
                                             list[ModelCallRecord]]:
    """The run, its attempt and its recorded calls, read from the store (sync tests)."""
    return asyncio.run(_read(path, run_id))


def run_info(obj: Any) -> dict[str, Any]:
    info = (obj.model_extra or {}).get("deliberate")
    assert isinstance(info, dict), "every response carries the deliberate object"
    return info


def error_of(resp: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object of a response, checking its shape."""
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return dict(err)


# ------------------------------------------------------------------ the grammar


def test_model_names_resolve_routes_upstreams_and_strategies(tmp_path: Path) -> None:
    cfg = config(tmp_path, routes={"smart": RouteConfig(strategy="best_of_n",
                                                        params={"n": 3})},
                 upstreams={"sim": "sim:arithmetic", "big": "sim:arithmetic?skill=0.9"})
    assert parse_model_name("smart", cfg, STRATEGIES) == ("best_of_n", {"n": 3}, None, "smart")
    assert parse_model_name("big", cfg, STRATEGIES) == (None, {}, "big", None)
    assert parse_model_name("best_of_n:n=8,scorer=judge/big", cfg, STRATEGIES) == (
        "best_of_n", {"n": 8, "scorer": "judge"}, "big", None)
    assert parse_model_name("self_consistency:weighted=true", cfg, STRATEGIES) == (
        "self_consistency", {"weighted": True}, None, None)
    assert parse_model_name("refine/sim", cfg, STRATEGIES) == ("refine", {}, "sim", None)
    for bad, status in (("gpt-4o", 404), ("mcts/sim", 404), ("best_of_n:n/sim", 400)):
        with pytest.raises(ApiError) as err:
            parse_model_name(bad, cfg, STRATEGIES)
        assert err.value.status == status


def test_budgets_take_the_request_then_the_route_then_the_server_under_caps(
        tmp_path: Path) -> None:
    cfg = config(tmp_path, budget={"max_tokens": 5000, "max_calls": 50},
                 limits={"max_budget": {"max_tokens": 10_000, "max_calls": 100,
                                        "max_wall_s": 60}})
    route = RouteConfig(budget=BudgetConfig(max_calls=20))
    b = effective_budget(cfg, route, BudgetConfig(max_tokens=800))
    assert (b.max_tokens, b.max_calls, b.max_wall_s, b.max_cost) == (800, 20, 60, None)
    assert effective_budget(cfg, None, None).max_calls == 50
    with pytest.raises(ApiError) as err:
        effective_budget(cfg, None, BudgetConfig(max_tokens=20_000))
    assert err.value.status == 400 and err.value.param == "deliberate.budget.max_tokens"


def test_serve_config_refuses_what_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="may not set model"):
        ServeConfig.from_mapping({"run": {"model": "sim"}})
    with pytest.raises(ConfigError, match=r"above limits\.max_budget"):
        ServeConfig.from_mapping({"budget": {"max_tokens": 10**9}})
    with pytest.raises(ConfigError, match="default_upstream"):
        ServeConfig.from_mapping({"upstreams": {"a": "sim:arithmetic"}, "default_upstream": "b"})
    with pytest.raises(ConfigError, match="at least 8"):
        ServeConfig.from_mapping({"api_keys": ["short"]})
    with pytest.raises(ConfigError, match="without API keys"):
        ServeConfig(host="0.0.0.0").check_exposure()
    ServeConfig(host="0.0.0.0", api_keys=(KEY,)).check_exposure()
    ServeConfig(host="::1").check_exposure()
    assert ServeConfig().effective_upstreams() == {"sim": "sim:arithmetic"}


def test_keys_come_from_file_flags_and_environment(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("api_keys: [file-key-0001]\nupstreams:\n  sim: sim:arithmetic\n"
                    "run:\n  judge:\n    model: sim\n")
    monkeypatch.setenv("DELIBERATE_SERVE_API_KEYS", "env-key-0001, env-key-0002")
    cfg = ServeConfig.load(path, overrides={"api_keys": ["flag-key-0001"], "port": 0})
    assert cfg.api_keys == ("file-key-0001", "flag-key-0001", "env-key-0001", "env-key-0002")
    assert KEY not in repr(cfg) and "file-key" not in repr(cfg)
    # a role's model may name an upstream: it runs on that upstream's shared stack
    assert cfg.base_run().judge.model == "sim:arithmetic"


# ------------------------------------------------------------------ the openai client


def test_plain_request_passes_the_conversation_through(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": question(0)}]
    with serving(cfg) as srv:
        reply = client(srv).chat.completions.create(model="sim", messages=messages,  # type: ignore[arg-type]
                                                    temperature=0.3, max_tokens=200, seed=4)
    info = run_info(reply)
    run, attempt, calls = stored(tmp_path / "runs.db", info["run_id"])
    assert run is not None and run.status == "done" and attempt is not None
    assert info["strategy"] == "passthrough" and info["url"] == f"/runs/{info['run_id']}"
    assert reply.id == f"chatcmpl-{info['run_id']}" and reply.model == "sim"
    [call] = calls
    # the messages went to the upstream as they are, with the client's sampling settings
    assert call.request["messages"] == messages
    assert (call.request["temperature"], call.request["max_tokens"]) == (0.3, 200)
    assert reply.choices[0].message.content == call.response["completions"][0]["text"]  # type: ignore[index]
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        call.prompt_tokens, call.completion_tokens)
    assert reply.choices[0].finish_reason == "stop"


def _scripted(request: ChatRequest, i: int) -> str:
    """Candidates 'Answer: 10+i'; the judge scores a candidate by its number mod 7."""
    if request.tags.get("role") == "judge":
        number = int(re.findall(r"Answer: (\d+)", request.messages[-1].content)[-1])
        return json.dumps({"critique": "checked", "verdict": "correct",
                           "score": 1 + number % 7})
    return f"Let me think.\nAnswer: {10 + i}"


def test_strategy_request_runs_the_strategy_and_counts_every_call(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with serving(cfg, models={"sim": FunctionModel(_scripted)}) as srv:
        reply = client(srv).chat.completions.create(
            model="best_of_n:n=5/sim", messages=[{"role": "user", "content": "Pick one."}])
    info = run_info(reply)
    # 10..14 score 4,5,6,7,1: the judge's favourite is 13
    assert reply.choices[0].message.content == "Let me think.\nAnswer: 13"
    assert info["strategy"] == "best_of_n" and info["calls"] == 6
    _, attempt, calls = stored(tmp_path / "runs.db", info["run_id"])
    assert attempt is not None and attempt.final_node_id == info["node_id"]
    assert len(calls) == 6 and sorted(c.role for c in calls) == ["generator"] + ["judge"] * 5
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == sum(c.prompt_tokens for c in calls)
    assert reply.usage.completion_tokens == sum(c.completion_tokens for c in calls)
    assert reply.usage.total_tokens == attempt.prompt_tokens + attempt.completion_tokens


def test_extension_object_sets_strategy_kind_reference_and_budget(tmp_path: Path) -> None:
    task = SUITE.tasks[3]
    with serving(config(tmp_path)) as srv:
        reply = client(srv).chat.completions.create(
            model="sim", messages=[{"role": "user", "content": task.prompt}], seed=2,
            extra_body={"deliberate": {"strategy": "self_consistency", "params": {"n": 5},
                                       "kind": "math", "reference": task.answer,
                                       "budget": {"max_calls": 3}}})
    info = run_info(reply)
    assert info["strategy"] == "self_consistency" and info["note"].endswith("votes")
    assert info["correct"] == answers_match(info["answer"], task.answer)
    run, _, _ = stored(tmp_path / "runs.db", info["run_id"])
    assert run is not None and run.config["task_budget"]["max_calls"] == 3
    assert run.config["strategy_params"] == {"n": 5}


def test_stream_of_a_plain_request_is_the_same_answer_token_by_token(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": question(1)}]
    with serving(config(tmp_path)) as srv:
        c = client(srv)
        whole = c.chat.completions.create(model="sim", messages=messages, seed=9)  # type: ignore[arg-type]
        chunks = list(c.chat.completions.create(model="sim", messages=messages, seed=9,  # type: ignore[arg-type]
                                                stream=True,
                                                stream_options={"include_usage": True}))
    first = run_info(chunks[0])
    assert first["event"] == "run" and chunks[0].choices[0].delta.role == "assistant"
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices
              and ch.choices[0].delta.content]
    assert "".join(pieces) == whole.choices[0].message.content
    assert whole.usage is not None and len(pieces) == whole.usage.completion_tokens > 5
    last = chunks[-1]
    assert last.choices == [] and last.usage == whole.usage
    assert run_info(last)["event"] == "done" and run_info(last)["run_id"] == first["run_id"]
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices
              and ch.choices[0].finish_reason]
    assert finish == ["stop"]


def test_stream_of_a_selection_sends_progress_then_the_chosen_answer(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": question(2)}]
    model = "best_of_n:n=4/sim"
    with serving(config(tmp_path)) as srv:
        c = client(srv)
        whole = c.chat.completions.create(model=model, messages=messages, seed=3)  # type: ignore[arg-type]
        chunks = list(c.chat.completions.create(model=model, messages=messages, seed=3,  # type: ignore[arg-type]
                                                stream=True))
    kinds: list[str] = []
    for ch in chunks:
        if ch.choices and ch.choices[0].delta.content:
            kinds.append("content")
        elif ch.choices and ch.choices[0].finish_reason:
            kinds.append("finish")
        elif (ch.model_extra or {}).get("deliberate"):
            kinds.append(run_info(ch)["event"])
    calls = run_info(whole)["calls"]
    assert kinds == ["run"] + ["call"] * kinds.count("call") + [
        "answer", "content", "finish", "done"]
    assert 1 <= kinds.count("call") <= calls == 5
    content = [ch.choices[0].delta.content for ch in chunks if ch.choices
               and ch.choices[0].delta.content]
    assert content == [whole.choices[0].message.content]
    assert run_info(chunks[-1])["answer"] == run_info(whole)["answer"]
    roles = [run_info(ch)["role"] for ch in chunks
             if (ch.model_extra or {}).get("deliberate", {}).get("event") == "call"]
    assert roles[0] == "generator" and set(roles[1:]) == {"judge"}


def test_stream_with_several_choices(tmp_path: Path) -> None:
    with serving(config(tmp_path)) as srv:
        chunks = list(client(srv).chat.completions.create(
            model="sim", messages=[{"role": "user", "content": question(4)}], n=2,
            stream=True, temperature=1.0))
    texts: dict[int, str] = {}
    finished: set[int] = set()
    for ch in chunks:
        for choice in ch.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished.add(choice.index)
    assert set(texts) == finished == {0, 1} and all("Answer" in t for t in texts.values())


def test_first_content_arrives_while_the_upstream_is_still_writing(tmp_path: Path) -> None:
    """Streaming is real: at the client's first content chunk the upstream (a SimServer
    sending 20 tokens a second) has not produced its last token; each upstream token
    arrives as one chunk."""
    with SimServer(SUITE, SimParams(), ServerConfig(tokens_per_s=20)) as up:
        stats = up.app.state.sim.stats
        cfg = config(tmp_path, upstreams={"up": f"openai:sim@{up.base_url}"})
        with serving(cfg) as srv:
            stream = client(srv).chat.completions.create(
                model="up", messages=[{"role": "user", "content": question(5)}],
                stream=True, stream_options={"include_usage": True})
            at_first: tuple[int, int] | None = None
            pieces: list[str] = []
            usage = None
            for ch in stream:
                if ch.choices and ch.choices[0].delta.content:
                    if at_first is None:
                        at_first = (stats.completed, stats.in_flight)
                    pieces.append(ch.choices[0].delta.content)
                usage = ch.usage or usage
            done_after = stats.completed
    assert at_first == (0, 1), "the upstream was still writing at the first chunk"
    assert done_after == 1 and usage is not None
    assert len(pieces) == usage.completion_tokens > 10


def test_dspy_is_a_second_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "dspy-cache"))
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    dspy = pytest.importorskip("dspy", reason='DSPy is in the test extra: pip install -e ".[test]"')
    task = SUITE.tasks[6]
    with serving(config(tmp_path, api_keys=[KEY])) as srv:
        plain = dspy.LM("openai/sim", api_base=srv.base_url, api_key=KEY, cache=False)
        strategy = dspy.LM("openai/self_consistency:n=3/sim", api_base=srv.base_url,
                           api_key=KEY, cache=False)
        out_plain = plain(task.prompt)
        out_strategy = strategy(task.prompt)
        wrong = dspy.LM("openai/sim", api_base=srv.base_url, api_key="not-the-key",
                        cache=False, num_retries=0)
        with pytest.raises(Exception, match=r"(?i)api key|401|auth"):
            wrong(task.prompt)
    assert len(out_plain) == 1 and "Answer" in out_plain[0]
    assert len(out_strategy) == 1 and "Answer" in out_strategy[0]
    usage = strategy.history[-1]["usage"]
    # three candidates written in one call: the usage counts all of them
    assert usage["completion_tokens"] > len(out_strategy[0].split()) * 2


def test_models_are_listed_and_resolved(tmp_path: Path) -> None:
    cfg = config(tmp_path, routes={"careful": RouteConfig(strategy="refine",
                                                          description="critique and refine")})
    with serving(cfg) as srv:
        c = client(srv)
        ids = [m.id for m in c.models.list().data]
        one = c.models.retrieve("best_of_n:n=8/sim")
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("no-such-model")
    assert ids[:2] == ["careful", "sim"] and "best_of_n/sim" in ids and "mcts/sim" in ids
    assert (one.model_extra or {})["deliberate"] == {"strategy": "best_of_n",
                                                     "params": {"n": 8}, "upstream": "sim"}


async def test_concurrent_requests_are_served_concurrently(tmp_path: Path) -> None:
    with SimServer(SUITE, SimParams(), ServerConfig(ttft_ms=500)) as up:
        cfg = config(tmp_path, upstreams={"up": f"openai:sim@{up.base_url}"})
        with serving(cfg) as srv:
            c = AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
            replies = await asyncio.gather(*(
                c.chat.completions.create(model="self_consistency:n=2/up",
                                          messages=[{"role": "user", "content": question(k)}])
                for k in range(16)))
            await c.close()
        peak = up.app.state.sim.stats.max_in_flight
    assert len({run_info(r)["run_id"] for r in replies}) == 16
    assert peak >= 8, "requests were served one after another"


# ------------------------------------------------------------------ auth, limits, errors


def test_api_keys_guard_every_route_but_health_and_schema(tmp_path: Path) -> None:
    with serving(config(tmp_path, api_keys=[KEY, "second-key-02"])) as srv:
        for key in ("none", "wrong-key-000"):
            with pytest.raises(openai.AuthenticationError):
                client(srv, key).chat.completions.create(
                    model="sim", messages=[{"role": "user", "content": "hi"}])
        reply = client(srv, "second-key-02").chat.completions.create(
            model="sim", messages=[{"role": "user", "content": question(0)}])
        assert reply.choices[0].message.content
        with httpx.Client(base_url=srv.url) as h:
            missing = h.post("/v1/chat/completions", json={"model": "sim", "messages": []})
            assert missing.status_code == 401 and error_of(missing)["code"] == "invalid_api_key"
            assert "Missing API key" in error_of(missing)["message"]
            assert h.get("/v1/models").status_code == 401
            assert h.get("/api/runs").status_code == 401
            assert h.get("/runs").status_code == 401
            assert h.get("/healthz").status_code == 200
            assert h.get("/openapi.json").status_code == 200
            assert h.get("/login", params={"key": "wrong-key-000"}).status_code == 401
            login = h.get("/login", params={"key": KEY, "next": "/api/runs"},
                          follow_redirects=True)
            assert login.status_code == 200 and login.url.path == "/api/runs"
            runs = h.get("/api/runs").json()["runs"]  # the cookie now opens the views
            assert [r["id"] for r in runs] == [run_info(reply)["run_id"]]
        with httpx.Client(base_url=srv.url) as fresh:  # no cookie: the bearer key alone
            assert fresh.get("/v1/models",
                             headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
            assert fresh.get("/api/runs",
                             headers={"Authorization": "Bearer wrong-key-000"}).status_code == 401


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    tmp = tmp_path_factory.mktemp("serve")
    cfg = config(tmp, limits={"max_body_bytes": 4096, "max_n": 3, "max_tokens": 300,
                              "max_messages": 4,
                              "max_budget": {"max_tokens": 50_000, "max_calls": 40}},
                 budget={"max_tokens": 20_000, "max_calls": 20})
    with serving(cfg) as srv:
        yield srv


DROP = object()  # a field the bad request leaves out

BAD_REQUESTS: list[tuple[str, dict[str, Any] | bytes, int, str | None]] = [
    ("malformed JSON", b'{"model": "sim", "messages": [', 400, None),
    ("not an object", b"[1, 2]", 400, None),
    ("no messages", {"messages": DROP}, 400, "messages"),
    ("no model", {"model": DROP}, 400, "model"),
    ("empty messages", {"model": "sim", "messages": []}, 400, "messages"),
    ("bad role", {"model": "sim", "messages": [{"role": "robot", "content": "x"}]}, 400,
     "messages.0.role"),
    ("temperature", {"temperature": 3}, 400, "temperature"),
    ("n over the limit", {"n": 4}, 400, "n"),
    ("n with a strategy", {"model": "best_of_n/sim", "n": 2}, 400, "n"),
    ("max_tokens over the limit", {"max_tokens": 301}, 400, "max_tokens"),
    ("too many messages", {"messages": [{"role": "user", "content": "x"}] * 5}, 400,
     "messages"),
    ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ("image content", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 400, "messages"),
    ("strategy needs a user turn last", {"model": "refine/sim", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, 400,
     "messages"),
    ("unknown model", {"model": "gpt-17"}, 404, "model"),
    ("unknown upstream", {"model": "best_of_n/gpt-17"}, 404, "model"),
    ("unknown strategy", {"deliberate": {"strategy": "telepathy"}}, 404,
     "deliberate.strategy"),
    ("bad strategy parameter", {"model": "best_of_n:n=0/sim"}, 400, "deliberate.params"),
    ("unknown strategy parameter", {"model": "best_of_n:m=3/sim"}, 400, "deliberate.params"),
    ("unknown extension field", {"deliberate": {"stratgy": "refine"}}, 400,
     "deliberate.stratgy"),
    ("budget over the cap", {"deliberate": {"budget": {"max_calls": 41}}}, 400,
     "deliberate.budget.max_calls"),
    ("oversized body", {"messages": [{"role": "user", "content": "x" * 5000}]}, 413, None),
]


@pytest.mark.parametrize(("what", "body", "status", "param"), BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
        shared_server: BackgroundServer, what: str, body: dict[str, Any] | bytes, status: int,
        param: str | None) -> None:
    with httpx.Client(base_url=shared_server.url) as h:
        if isinstance(body, bytes):
            resp = h.post("/v1/chat/completions", content=body,
                          headers={"Content-Type": "application/json"})
        else:
            payload = {"model": "sim", "messages": [{"role": "user", "content": question(0)}],
                       **body}
            payload = {k: v for k, v in payload.items() if v is not DROP}
            resp = h.post("/v1/chat/completions", json=payload)
        assert resp.status_code == status, resp.text
        err = error_of(resp)
        assert err["param"] == param
        ok = h.post("/v1/chat/completions", json={
            "model": "sim", "messages": [{"role": "user", "content": question(0)}]})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]


def test_oversized_bodies_without_a_length_are_refused_too(
        shared_server: BackgroundServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "sim", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    with httpx.Client(base_url=shared_server.url) as h:
        resp = h.post("/v1/chat/completions", content=chunks(),
                      headers={"Content-Type": "application/json"})
        assert resp.status_code == 413 and error_of(resp)["code"] == "request_too_large"
        assert h.get("/nowhere").status_code == 404 and error_of(h.get("/nowhere"))
        assert h.delete("/v1/models").status_code == 405


def test_requests_beyond_capacity_get_429(tmp_path: Path) -> None:
    slow = SimModel(SUITE, SimParams(latency_ms=600))
    cfg = config(tmp_path, limits={"max_concurrent_requests": 1})
    body = {"model": "sim", "messages": [{"role": "user", "content": question(0)}]}
    with serving(cfg, models={"sim": slow}) as srv, httpx.Client(base_url=srv.url,
                                                                 timeout=30) as h:
        first: list[httpx.Response] = []
        t = threading.Thread(target=lambda: first.append(
            h.post("/v1/chat/completions", json=body)))
        t.start()
        while h.get("/healthz").json()["requests_in_flight"] < 1:
            time.sleep(0.01)
        busy = h.post("/v1/chat/completions", json=body)
        t.join()
        after = h.post("/v1/chat/completions", json=body)
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert error_of(busy)["code"] == "rate_limit_exceeded"
    assert first[0].status_code == 200 and after.status_code == 200


def test_upstream_failures_are_502_and_timeouts_504(tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": question(0)}]
    failing = ServerConfig(fail_rate=1.0, fail_statuses=(500,))
    with SimServer(SUITE, SimParams(), failing) as bad, \
            SimServer(SUITE, SimParams(), ServerConfig(hang_rate=1.0, hang_s=3)) as hung:
        cfg = config(tmp_path, upstreams={
            "sim": "sim:arithmetic", "bad": f"openai:sim@{bad.base_url}",
            "hung": f"openai:sim@{hung.base_url}?timeout=0.3",
            "gone": "openai:sim@http://127.0.0.1:9/v1"})
        with serving(cfg) as srv:
            c = client(srv)
            with pytest.raises(openai.InternalServerError) as e502:
                c.chat.completions.create(model="bad", messages=msgs)  # type: ignore[arg-type]
            with pytest.raises(openai.InternalServerError) as e504:
                c.chat.completions.create(model="best_of_n:n=2/hung", messages=msgs)  # type: ignore[arg-type]
            with pytest.raises(openai.InternalServerError) as gone:
                c.chat.completions.create(model="gone", messages=msgs)  # type: ignore[arg-type]
            with pytest.raises(openai.APIError, match="upstream model failed"):
                list(c.chat.completions.create(model="bad", messages=msgs, stream=True))  # type: ignore[arg-type]
            ok = c.chat.completions.create(model="sim", messages=msgs)  # type: ignore[arg-type]
    assert (e502.value.status_code, e504.value.status_code, gone.value.status_code) == (
        502, 504, 502)
    assert e502.value.code == "upstream_error" and e504.value.code == "upstream_timeout"
    assert gone.value.code == "upstream_unreachable"
    assert ok.choices[0].message.content


def test_a_budget_too_small_for_any_answer_is_a_clear_400(tmp_path: Path) -> None:
    with serving(config(tmp_path)) as srv, pytest.raises(openai.BadRequestError) as err:
        client(srv).chat.completions.create(
            model="refine/sim", messages=[{"role": "user", "content": question(0)}],
            extra_body={"deliberate": {"budget": {"max_tokens": 20}}})
    assert err.value.code == "budget_exceeded"


# ------------------------------------------------------------------ disconnects


def _slow_upstream() -> SimServer:
    """A SimServer whose refine runs never end early: the generator is always wrong, the
    refiner never fixes, the critic always objects, and every call waits 120 ms."""
    params = SimParams(skill=-10.0, task_noise=0.0, fix_rate=0.0, fix_rate_wrong_critique=0.0,
                       sensitivity=1.0)
    return SimServer(SUITE, params, ServerConfig(ttft_ms=120))


REFINE = "refine:max_rounds=8,patience=null/up"  # 1 + 8 refinements, each judged: 18 calls


async def _wait_status(path: Path, run_id: str, want: str) -> None:
    for _ in range(600):
        run, _, _ = await _read(path, run_id)
        if run is not None and run.status == want:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} never became {want}")


async def test_a_client_that_disconnects_mid_stream_stops_its_run(tmp_path: Path) -> None:
    with _slow_upstream() as up:
        stats = up.app.state.sim.stats
        cfg = config(tmp_path, upstreams={"up": f"openai:sim@{up.base_url}"})
        with serving(cfg) as srv:
            body = {"model": REFINE, "stream": True,
                    "messages": [{"role": "user", "content": question(7)}]}
            run_id = None
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as h, \
                    h.stream("POST", "/v1/chat/completions", json=body) as resp:
                async for line in resp.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    info = json.loads(line[6:]).get("deliberate") or {}
                    run_id = run_id or info.get("run_id")
                    if info.get("event") == "call":
                        break  # the client goes away after the first step
            assert run_id is not None
            await _wait_status(tmp_path / "runs.db", run_id, "interrupted")
            at_cancel = stats.requests
            await asyncio.sleep(1.0)  # long enough for 8 more calls had the run gone on
            assert stats.requests == at_cancel and stats.in_flight == 0
            assert at_cancel < 18
            _, _, calls = await _read(tmp_path / "runs.db", run_id)
            # a call cut off in flight may have finished upstream, but was not used
            assert 1 <= len(calls) <= stats.completed <= at_cancel
            assert h.is_closed


async def test_a_client_that_gives_up_on_a_plain_request_stops_its_run(tmp_path: Path) -> None:
    with _slow_upstream() as up:
        stats = up.app.state.sim.stats
        cfg = config(tmp_path, upstreams={"up": f"openai:sim@{up.base_url}"})
        with serving(cfg) as srv:
            body = {"model": REFINE, "messages": [{"role": "user", "content": question(8)}]}
            async with httpx.AsyncClient(base_url=srv.url, timeout=0.5) as h:
                with pytest.raises(httpx.ReadTimeout):
                    await h.post("/v1/chat/completions", json=body)
            async with await Store.aopen(str(tmp_path / "runs.db")) as st:
                for _ in range(600):
                    runs = await st.list_runs()
                    if runs and runs[0].status == "interrupted":
                        break
                    await asyncio.sleep(0.02)
                assert runs and runs[0].status == "interrupted"
            at_cancel = stats.requests
            await asyncio.sleep(1.0)
            assert stats.requests == at_cancel < 18 and stats.in_flight == 0


# ------------------------------------------------------------------ schema and CLI


def test_openapi_schema_describes_the_endpoints(tmp_path: Path) -> None:
    with serving(config(tmp_path)) as srv:
        schema = httpx.get(srv.url + "/openapi.json").json()
    paths = schema["paths"]
    post = paths["/v1/chat/completions"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ChatCompletionRequest")
    assert set(post["responses"]) >= {"200", "400", "401", "404", "413", "429", "502", "504"}
    assert "text/event-stream" in post["responses"]["200"]["content"]
    assert "get" in paths["/v1/models"] and "/api/runs" in paths
    comps = schema["components"]
    assert "deliberate" in comps["schemas"]["ChatCompletionRequest"]["properties"]
    assert comps["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_openapi_document_is_current() -> None:
    from deliberate.server.app import openapi_document

    committed = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"
    assert committed.read_text() == openapi_document(), (
        "docs/openapi.json is stale: python -m deliberate.server > docs/openapi.json")


def test_cli_refuses_to_expose_a_keyless_server(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "deliberate", "serve", "--host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "without API keys" in out.stderr


def test_cli_serves_until_interrupted(tmp_path: Path) -> None:
    env = {**os.environ, "DELIBERATE_SERVE_API_KEYS": KEY}
    with subprocess.Popen(
        [sys.executable, "-m", "deliberate", "serve", "--port", "0",
         "--store", str(tmp_path / "cli.db"), "--upstream", "sim:arithmetic?skill=0.9",
         "--upstream", "other=sim:arithmetic"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            url = re.search(r"http://127\.0\.0\.1:\d+", line)
            assert url, line
            with OpenAI(base_url=url.group(0) + "/v1", api_key=KEY, max_retries=0) as c:
                ids = [m.id for m in c.models.list().data]
                reply = c.chat.completions.create(
                    model="best_of_n:n=2", messages=[{"role": "user", "content": question(0)}])
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    assert ids[:2] == ["sim", "other"] and reply.choices[0].message.content
    assert run_info(reply)["upstream"] == "sim"  # the first upstream is the default
    assert proc.returncode in (0, 130)
