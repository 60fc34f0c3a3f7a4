"""Streaming in the model layer: the optional ``stream`` method of backends and the
middleware that passes it through, and the engine's observer that uses it.

The contract: deltas, then the whole response last, the same response ``complete``
gives; closing a stream early cancels its call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from deliberate import FunctionModel, RunConfig, Store
from deliberate.engine.observe import FINAL_TAG, ObservedModel
from deliberate.engine.runner import arun
from deliberate.errors import ModelAuthError, ModelHTTPError
from deliberate.models.base import (
    ChatRequest,
    ChatResponse,
    Completion,
    Message,
    ModelWrapper,
    StreamEvent,
    TextDelta,
    stream_chat,
)
from deliberate.models.cache import CachedModel, ResponseCache
from deliberate.models.middleware import ConcurrencyLimitModel, RetryModel, RetryPolicy
from deliberate.models.openai_backend import OpenAIChatModel
from deliberate.models.sim import SimModel, SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.tasks import load_suite
from deliberate.tree import NodeRecord

SUITE = load_suite("arithmetic")
FAST = RetryPolicy(max_attempts=4, base_delay_s=0.001, max_delay_s=0.002)


def request(k: int = 0, **kw: Any) -> ChatRequest:
    kw.setdefault("seed", 5)
    return ChatRequest(messages=(Message("user", SUITE.tasks[k].prompt),), **kw)


async def collect(model: Any, req: ChatRequest) -> tuple[dict[int, str], ChatResponse, int]:
    """Text per sample from the deltas, the final response, and how many deltas came."""
    texts: dict[int, str] = {}
    final: ChatResponse | None = None
    deltas = 0
    async with aclosing(stream_chat(model, req)) as events:
        async for event in events:
            assert final is None, "nothing may follow the response"
            if isinstance(event, TextDelta):
                texts[event.sample_index] = texts.get(event.sample_index, "") + event.text
                deltas += 1
            else:
                final = event
    assert final is not None
    return texts, final, deltas


def same(a: ChatResponse, b: ChatResponse) -> None:
    assert a.texts == b.texts
    assert a.usage == b.usage
    assert [c.sample_index for c in a.completions] == [c.sample_index for c in b.completions]
    assert [c.finish_reason for c in a.completions] == [c.finish_reason for c in b.completions]


@pytest.mark.parametrize("kw", [{"n": 3}, {"n": 2, "sample_offset": 4},
                                {"max_tokens": 5}, {"stop": ("=",)}])
async def test_sim_streams_what_it_completes(kw: dict[str, Any]) -> None:
    sim = SimModel(SUITE, SimParams())
    req = request(1, **kw)
    texts, final, deltas = await collect(sim, req)
    same(final, await sim.complete(req))
    assert texts == {c.sample_index: c.text for c in final.completions}
    assert deltas >= sum(c.completion_tokens or 0 for c in final.completions) > 1


async def test_a_model_without_stream_gives_its_whole_response() -> None:
    fm = FunctionModel(lambda r, i: f"Answer: {i}")
    texts, final, deltas = await collect(fm, request(n=2))
    assert deltas == 0 and texts == {} and final.texts == ["Answer: 0", "Answer: 1"]


async def test_a_wrapper_that_only_completes_is_not_bypassed() -> None:
    """A middleware that has not said how to stream keeps its concern: stream falls
    back to its complete."""

    class Upper(ModelWrapper):
        async def complete(self, request: ChatRequest) -> ChatResponse:
            resp = await self.inner.complete(request)
            resp.completions = [Completion(c.text.upper(), c.sample_index)
                                for c in resp.completions]
            return resp

    _texts, final, deltas = await collect(Upper(SimModel(SUITE)), request())
    assert deltas == 0 and final.texts[0] == final.texts[0].upper()


async def test_openai_backend_streams_from_a_server() -> None:
    with SimServer(SUITE, SimParams(), ServerConfig(tokens_per_s=2000)) as srv:
        model = OpenAIChatModel("sim", base_url=srv.base_url)
        try:
            for req in (request(2), request(3, n=3, sample_offset=2), request(4, max_tokens=4)):
                texts, final, deltas = await collect(model, req)
                whole = await model.complete(req)
                same(final, whole)
                assert texts == {c.sample_index: c.text for c in final.completions}
                assert deltas > len(final.completions)
                assert final.usage.prompt_tokens > 0 and final.usage.completion_tokens > 0
        finally:
            await model.aclose()


async def test_openai_backend_answers_whole_when_one_call_cannot_serve_it() -> None:
    from deliberate.models.base import ModelProfile

    with SimServer(SUITE, SimParams(), ServerConfig(supports_n=False)) as srv:
        model = OpenAIChatModel("sim", base_url=srv.base_url,
                                profile=ModelProfile(supports_n=False))
        try:
            _texts, final, deltas = await collect(model, request(n=2))
        finally:
            await model.aclose()
    assert deltas == 0 and len(final.completions) == 2


async def test_openai_backend_stream_errors_are_translated() -> None:
    with SimServer(SUITE, SimParams(), ServerConfig(api_key="secret-key")) as srv:
        model = OpenAIChatModel("sim", base_url=srv.base_url, api_key="wrong-key")
        try:
            with pytest.raises(ModelAuthError):
                await collect(model, request())
        finally:
            await model.aclose()
    with SimServer(SUITE, SimParams(), ServerConfig(fail_first=1, fail_statuses=(503,))) as srv:
        model = OpenAIChatModel("sim", base_url=srv.base_url)
        try:
            with pytest.raises(ModelHTTPError) as err:
                await collect(model, request())
            assert err.value.status == 503
            await collect(model, request())  # the next one goes through
        finally:
            await model.aclose()


async def test_closing_a_stream_early_cancels_the_upstream_call() -> None:
    with SimServer(SUITE, SimParams(), ServerConfig(tokens_per_s=50)) as srv:
        model = OpenAIChatModel("sim", base_url=srv.base_url)
        state = srv.app.state.sim
        try:
            async with aclosing(stream_chat(model, request())) as events:
                async for event in events:
                    assert isinstance(event, TextDelta)
                    assert state.stats.in_flight == 1
                    break
            for _ in range(400):  # the server notices the closed connection
                if state.stats.in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            assert state.stats.in_flight == 0
            assert state.stats.completed == 0  # it never got to send its last token
        finally:
            await model.aclose()


async def test_retry_restarts_a_stream_that_failed_before_its_first_delta() -> None:
    cfg = ServerConfig(fail_first=2, fail_statuses=(500,))
    with SimServer(SUITE, SimParams(), cfg) as srv:
        backend = OpenAIChatModel("sim", base_url=srv.base_url)
        model = RetryModel(backend, FAST)
        try:
            texts, final, deltas = await collect(model, request())
        finally:
            await model.aclose()
    assert model.retries == 2 and deltas > 0 and texts[0] == final.texts[0]


class _Breaks:
    """Streams two deltas, then fails with a retryable error; counts its calls."""

    model_id = "breaks"
    calls = 0

    @property
    def profile(self) -> Any:
        from deliberate.models.base import ModelProfile

        return ModelProfile()

    async def complete(self, request: ChatRequest) -> ChatResponse:
        raise AssertionError("complete must not be called")

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        self.calls += 1
        yield TextDelta(0, "Answer")
        yield TextDelta(0, ":")
        raise ModelHTTPError("upstream broke", status=502)

    async def aclose(self) -> None:
        return None


async def test_retry_does_not_restart_a_stream_that_has_sent_text() -> None:
    inner = _Breaks()
    model = RetryModel(inner, FAST)  # type: ignore[arg-type]
    seen: list[StreamEvent] = []

    async def consume() -> None:
        async with aclosing(stream_chat(model, request())) as events:
            async for event in events:
                seen.append(event)

    with pytest.raises(ModelHTTPError):
        await consume()
    assert inner.calls == 1 and model.retries == 0 and len(seen) == 2


async def test_concurrency_limit_holds_its_slot_for_the_whole_stream() -> None:
    sim = SimModel(SUITE)
    model = ConcurrencyLimitModel(sim, 1)
    during: list[int] = []

    async def one(k: int) -> None:
        async with aclosing(stream_chat(model, request(k))) as events:
            async for _ in events:
                during.append(model.in_flight)

    await asyncio.gather(one(0), one(1), one(2))
    assert model.max_in_flight == 1 and set(during) == {1} and model.in_flight == 0


async def test_cache_stores_a_stream_and_serves_it_whole_next_time(tmp_path: Path) -> None:
    sim = SimModel(SUITE)
    cache = ResponseCache(tmp_path / "cache.db")
    model = CachedModel(sim, cache)
    try:
        _texts, first, deltas = await collect(model, request(n=2))
        assert deltas > 0 and len(cache) == 2
        _texts2, second, deltas2 = await collect(model, request(n=2))
        assert deltas2 == 0 and second.cached and second.texts == first.texts
        assert second.usage == first.usage
    finally:
        cache.close()


# ---------------------------------------------------------------- the engine's observer


class Recorder:
    """An observer that streams every call (or only ``final`` ones) and keeps all it sees."""

    def __init__(self, *, all_calls: bool) -> None:
        self.all_calls = all_calls
        self.started: list[ChatRequest] = []
        self.deltas: dict[tuple[int, int], list[str]] = {}
        self.finished: list[tuple[ChatRequest, ChatResponse | None]] = []
        self.results: list[tuple[str, NodeRecord | None, str]] = []

    def wants_stream(self, task_id: str, request: ChatRequest) -> bool:
        return self.all_calls or request.tags.get(FINAL_TAG) == "1"

    def call_started(self, task_id: str, request: ChatRequest) -> None:
        self.started.append(request)

    def call_delta(self, task_id: str, request: ChatRequest, delta: TextDelta) -> None:
        self.deltas.setdefault((id(request), delta.sample_index), []).append(delta.text)

    def call_finished(self, task_id: str, request: ChatRequest,
                      response: ChatResponse | None, error: BaseException | None) -> None:
        self.finished.append((request, response))

    def task_result(self, task_id: str, node: NodeRecord | None, note: str) -> None:
        self.results.append((task_id, node, note))


def _cfg(tmp_path: Path, name: str) -> RunConfig:
    return RunConfig(suite="arithmetic", limit=3, strategy="best_of_n",
                     strategy_params={"n": 3}, model="sim", store=str(tmp_path / f"{name}.db"),
                     cache=False, seed=11)


async def test_an_observer_sees_every_call_and_changes_nothing(tmp_path: Path) -> None:
    plain = await arun(_cfg(tmp_path, "plain"))
    rec = Recorder(all_calls=True)
    seen = await arun(_cfg(tmp_path, "seen"), observer=rec)
    assert [(a.answer, a.prompt_tokens, a.completion_tokens, a.calls)
            for a in plain.attempts] == [(a.answer, a.prompt_tokens, a.completion_tokens,
                                          a.calls) for a in seen.attempts]
    # calls the journal answers (identical judge calls shared) are not new calls
    assert len(rec.started) == len(rec.finished) == seen.summary["paid_calls"]
    assert seen.summary["paid_calls"] + seen.summary["cached_calls"] == seen.summary["calls"]
    for req, resp in rec.finished:  # every call streamed, and its pieces make its texts
        assert resp is not None
        for c in resp.completions:
            assert "".join(rec.deltas[id(req), c.sample_index]) == c.text
    chosen = {t: n.id if n else None for t, n, _ in rec.results}
    assert chosen == {a.task_id: a.final_node_id for a in seen.attempts}
    async with await Store.aopen(str(tmp_path / "seen.db")) as st:
        recorded = [len(await st.load_calls(seen.run_id, a.task_id)) for a in seen.attempts]
    assert sum(recorded) == len(rec.finished)  # the journal recorded every completed call


async def test_an_observed_model_reports_a_failed_call() -> None:
    rec = Recorder(all_calls=False)

    def boom(request: ChatRequest, i: int) -> str:
        raise ModelHTTPError("no", status=500)

    model = ObservedModel(FunctionModel(boom), rec, "t")
    with pytest.raises(ModelHTTPError):
        await model.complete(request())
    assert rec.finished[0][1] is None and len(rec.started) == 1


async def test_final_tagged_calls_stream_before_they_end() -> None:
    """The first delta reaches the observer while the call is still producing."""
    order: list[str] = []

    class Slow(SimModel):
        async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
            async with aclosing(super().stream(request)) as events:
                async for event in events:
                    yield event
                    if isinstance(event, TextDelta):
                        order.append("produced")
                        await asyncio.sleep(0.001)

    class Order(Recorder):
        def call_delta(self, task_id: str, request: ChatRequest, delta: TextDelta) -> None:
            order.append("seen")

    model = ObservedModel(Slow(SUITE), Order(all_calls=False), "t")
    resp = await model.complete(request(tags={FINAL_TAG: "1"}))
    assert order[0] == "seen" and order.count("seen") == order.count("produced") > 3
    assert resp.usage.completion_tokens == order.count("seen")
    quiet = ObservedModel(Slow(SUITE), Order(all_calls=False), "t")
    order.clear()
    await quiet.complete(request())  # not tagged: asked whole
    assert order == []
