"""The sim server end to end: the official OpenAI client against a real loopback server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from deliberate.models.sim import SimParams
from deliberate.models.sim.server import ServerConfig, SimServer, create_app
from deliberate.tasks.task import Suite, Task

TASK = Task(
    id="eggs",
    prompt="A box holds 12 rows of 4 eggs. How many eggs are in two boxes?",
    kind="math",
    answer="96",
    solution="One box holds 12 * 4 = <<12*4=48>>48 eggs.\nTwo boxes hold 48 * 2 = <<48*2=96>>96 eggs.\n#### 96",
    metadata={"difficulty": 0.6},
)
SUITE = Suite.of("server", [TASK])
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": TASK.prompt}]
# Near a coin flip, so samples differ.
PARAMS = SimParams(skill=0.6, task_noise=0.0)


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    with SimServer(SUITE, PARAMS, ServerConfig(tokens_per_s=400)) as srv:
        yield srv


async def stats(srv: SimServer, reset: bool = False) -> dict[str, int]:
    async with httpx.AsyncClient() as http:
        if reset:
            r = await http.post(f"{srv.url}/stats/reset")
        else:
            r = await http.get(f"{srv.url}/stats")
        r.raise_for_status()
        data: dict[str, int] = r.json()
        return data


def client(srv: SimServer, key: str = "x", timeout: float = 10.0) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=srv.base_url, api_key=key, max_retries=0, timeout=timeout)


async def test_n_samples_and_response_shape(server: SimServer) -> None:
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    async with client(server) as c:
        r = await c.chat.completions.create(model="sim", messages=MESSAGES, n=5, seed=3)
        assert r.object == "chat.completion"
        assert r.model == "sim"
        assert [ch.index for ch in r.choices] == list(range(5))
        assert all(ch.message.role == "assistant" and ch.message.content for ch in r.choices)
        assert all(ch.finish_reason == "stop" for ch in r.choices)
        assert r.usage is not None
        assert r.usage.total_tokens > r.usage.prompt_tokens > 0
        models = await c.models.list()
        assert [m.id for m in models.data] == ["sim"]


async def test_seed_reproduces_and_no_seed_draws_afresh(server: SimServer) -> None:
    async with client(server) as c:

        async def texts(**kw: object) -> list[str | None]:
            r = await c.chat.completions.create(model="sim", messages=MESSAGES, n=8, **kw)  # type: ignore[call-overload]
            return [ch.message.content for ch in r.choices]

        seeded = await texts(seed=42)
        assert await texts(seed=42) == seeded
        assert len(set(seeded)) > 1
        unseeded = [await texts() for _ in range(5)]
        assert len({tuple(t) for t in unseeded}) > 1
        greedy = await texts(temperature=0, seed=1)
        assert len(set(greedy)) == 1


async def test_max_tokens_and_stop(server: SimServer) -> None:
    async with client(server) as c:
        r = await c.chat.completions.create(model="sim", messages=MESSAGES, seed=1, max_tokens=3)
        assert r.choices[0].finish_reason == "length"
        assert r.usage is not None
        assert r.usage.completion_tokens == 3
        r = await c.chat.completions.create(model="sim", messages=MESSAGES, seed=1, stop=["\n"])
        assert "\n" not in (r.choices[0].message.content or "")


async def test_streaming_arrives_token_by_token(server: SimServer) -> None:
    async with client(server) as c:
        whole = await c.chat.completions.create(model="sim", messages=MESSAGES, seed=7, n=2)
        stream = await c.chat.completions.create(
            model="sim",
            messages=MESSAGES,
            seed=7,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts: dict[int, list[str]] = {0: [], 1: []}
        arrivals: list[float] = []
        finish: dict[int, str | None] = {}
        usage = None
        async for chunk in stream:
            assert chunk.object == "chat.completion.chunk"
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    parts[choice.index].append(choice.delta.content)
                    arrivals.append(time.perf_counter())
                if choice.finish_reason:
                    finish[choice.index] = choice.finish_reason
        assert ["".join(parts[j]) for j in (0, 1)] == [ch.message.content for ch in whole.choices]
        assert len(parts[0]) > 10
        # Paced at 400 tokens/s: the chunks are spread out, not one burst.
        assert arrivals[-1] - arrivals[0] > 0.5 * (len(parts[0]) - 1) / 400
        assert finish == {0: "stop", 1: "stop"}
        assert usage is not None
        assert whole.usage is not None
        assert usage.completion_tokens == whole.usage.completion_tokens


async def test_injected_429_carries_retry_after_then_recovers() -> None:
    config = ServerConfig(fail_first=2, fail_statuses=(429, 500), retry_after_s=2)
    with SimServer(SUITE, PARAMS, config) as srv:
        async with client(srv) as c:
            for _ in range(2):
                with pytest.raises(openai.RateLimitError) as info:
                    await c.chat.completions.create(model="sim", messages=MESSAGES)
                assert info.value.response.headers["retry-after"] == "2"
                assert info.value.status_code == 429
            r = await c.chat.completions.create(model="sim", messages=MESSAGES)
            assert r.choices[0].message.content
        counts = await stats(srv)
        assert counts["injected_failures"] == 2
        assert counts["completed"] == 1


async def test_fail_rate_injects_server_errors() -> None:
    with SimServer(SUITE, PARAMS, ServerConfig(fail_rate=1.0, fail_statuses=(500,))) as srv:
        async with client(srv) as c:
            with pytest.raises(openai.InternalServerError):
                await c.chat.completions.create(model="sim", messages=MESSAGES)


async def test_hang_triggers_client_timeout() -> None:
    with SimServer(SUITE, PARAMS, ServerConfig(hang_rate=1.0, hang_s=0.6)) as srv:
        async with client(srv, timeout=0.2) as c:
            with pytest.raises(openai.APITimeoutError):
                await c.chat.completions.create(model="sim", messages=MESSAGES)
        assert (await stats(srv))["hung"] == 1
        await asyncio.sleep(0.5)  # let the stalled handler finish before shutdown


async def test_supports_n_false_refuses_n_with_400() -> None:
    with SimServer(SUITE, PARAMS, ServerConfig(supports_n=False)) as srv:
        async with client(srv) as c:
            with pytest.raises(openai.BadRequestError) as info:
                await c.chat.completions.create(model="sim", messages=MESSAGES, n=2)
            body = info.value.body
            assert isinstance(body, dict)
            assert body["param"] == "n"
            r = await c.chat.completions.create(model="sim", messages=MESSAGES, n=1)
            assert len(r.choices) == 1


async def test_api_key_is_required_when_set() -> None:
    with SimServer(SUITE, PARAMS, ServerConfig(api_key="secret")) as srv:
        async with client(srv, key="wrong") as c:
            with pytest.raises(openai.AuthenticationError) as info:
                await c.chat.completions.create(model="sim", messages=MESSAGES)
            assert info.value.status_code == 401
        async with client(srv, key="secret") as c:
            r = await c.chat.completions.create(model="sim", messages=MESSAGES)
            assert r.choices[0].message.content


async def test_max_concurrency_rejects_the_excess() -> None:
    slow = SimParams(skill=0.6, task_noise=0.0, latency_ms=300)
    with SimServer(SUITE, slow, ServerConfig(max_concurrency=1)) as srv:
        async with client(srv) as c:
            results = await asyncio.gather(
                *(c.chat.completions.create(model="sim", messages=MESSAGES) for _ in range(3)),
                return_exceptions=True,
            )
        assert sum(isinstance(r, openai.RateLimitError) for r in results) == 2
        counts = await stats(srv)
        assert counts["rejected"] == 2
        assert counts["max_in_flight"] == 1


async def test_stats_count_and_reset() -> None:
    with SimServer(SUITE, PARAMS) as srv:
        async with client(srv) as c:
            for _ in range(3):
                await c.chat.completions.create(model="sim", messages=MESSAGES, n=2)
            stream = await c.chat.completions.create(model="sim", messages=MESSAGES, stream=True)
            async for _ in stream:
                pass
        counts = await stats(srv)
        assert counts["requests"] == counts["completed"] == 4
        assert counts["in_flight"] == 0
        assert counts["prompt_tokens"] > 0
        assert counts["completion_tokens"] > 0
        reset = await stats(srv, reset=True)
        assert reset["requests"] == 0
        assert reset["completion_tokens"] == 0


def test_bad_requests_get_openai_error_shape() -> None:
    app = create_app(SUITE, PARAMS, ServerConfig())
    with SimServer(SUITE, PARAMS) as srv:
        r = httpx.post(f"{srv.base_url}/chat/completions", json={"model": "sim"})
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert app.title == "deliberate sim"
