"""OpenAIChatModel: wire format and error translation (MockTransport), then end to end
against a real FastAPI server on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from deliberate.errors import (
    ModelAuthError,
    ModelConnectionError,
    ModelHTTPError,
    ModelRateLimitError,
    ModelResponseError,
    ModelTimeoutError,
)
from deliberate.models.base import ChatModel, ChatRequest, Message, ModelProfile, split_usage
from deliberate.models.openai_backend import (
    OpenAIChatModel,
    mix_seed,
    parse_retry_after,
    plan_calls,
)

Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


def _req(**kw: Any) -> ChatRequest:
    return ChatRequest(messages=(Message("user", "What is 2+2?"),), **kw)


def _completion(n: int, *, prefix: str = "c", usage: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": f"{prefix}{i}"},
                "finish_reason": "stop",
            }
            for i in range(n)
        ],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 5, "completion_tokens": 2 * n, "total_tokens": 5 + 2 * n}
    return body


class Recorder:
    """A MockTransport handler that records request bodies and answers like OpenAI."""

    def __init__(self, respond: Handler | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []
        self._respond = respond

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.bodies.append(body)
        self.headers.append(request.headers)
        if self._respond is not None:
            out = self._respond(request)
            return out if isinstance(out, httpx.Response) else await out
        n = body.get("n", 1)
        return httpx.Response(200, json=_completion(n, prefix=f"s{body.get('seed')}-"))


@pytest.fixture
async def models() -> AsyncIterator[Callable[..., OpenAIChatModel]]:
    """Factory of models over a MockTransport; every one is closed afterwards."""
    made: list[OpenAIChatModel] = []

    def make(handler: Handler, **kw: Any) -> OpenAIChatModel:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        kw.setdefault("base_url", "http://mock.test/v1")
        model = OpenAIChatModel("test-model", http_client=client, **kw)
        made.append(model)
        return model

    yield make
    for m in made:
        await m.aclose()


# --------------------------------------------------------------------------- planning


def test_mix_seed_keeps_index_zero_and_spreads_the_rest() -> None:
    assert mix_seed(7, 0) == 7
    seeds = {mix_seed(7, i) for i in range(1, 1000)}
    assert len(seeds) == 999
    assert all(0 <= s < 2**31 for s in seeds)
    assert mix_seed(7, 3) == mix_seed(7, 3)
    assert mix_seed(7, 3) != mix_seed(8, 3)


def test_plan_chunks_by_max_n_and_fans_out_without_n() -> None:
    req = _req(n=5, sample_offset=2, seed=11)
    chunks = plan_calls(req, ModelProfile(supports_n=True, max_n=2))
    assert [(c.offset, c.n) for c in chunks] == [(2, 2), (4, 2), (6, 1)]
    assert [c.seed for c in chunks] == [mix_seed(11, 2), mix_seed(11, 4), mix_seed(11, 6)]
    singles = plan_calls(req, ModelProfile(supports_n=False))
    assert [(c.offset, c.n) for c in singles] == [(i, 1) for i in range(2, 7)]
    assert plan_calls(_req(n=3), ModelProfile())[0].seed is None


def test_parse_retry_after_seconds_date_and_ms() -> None:
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    wait = parse_retry_after({"retry-after": future})
    assert wait is not None
    assert 25 <= wait <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# --------------------------------------------------------------------------- wire format


async def test_one_request_carries_n_seed_and_every_parameter(models: Any) -> None:
    rec = Recorder()
    model = models(rec)
    assert isinstance(model, ChatModel)
    req = _req(
        n=3,
        sample_offset=4,
        seed=42,
        temperature=0.7,
        top_p=0.9,
        max_tokens=64,
        stop=("\n\n",),
        response_format={"type": "json_object"},
        extra={"top_k": 20, "chat_template_kwargs": {"enable_thinking": False}},
    )
    resp = await model.complete(req)
    assert len(rec.bodies) == 1
    body = rec.bodies[0]
    assert body["model"] == "test-model"
    assert body["messages"] == [{"role": "user", "content": "What is 2+2?"}]
    assert body["n"] == 3
    assert body["seed"] == mix_seed(42, 4)
    assert body["temperature"] == 0.7
    assert body["top_p"] == 0.9
    assert body["max_tokens"] == 64
    assert body["stop"] == ["\n\n"]
    assert body["response_format"] == {"type": "json_object"}
    assert body["top_k"] == 20
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert [c.sample_index for c in resp.completions] == [4, 5, 6]
    assert resp.texts == [f"s{mix_seed(42, 4)}-{i}" for i in range(3)]
    assert resp.usage.prompt_tokens == 5
    assert resp.usage.completion_tokens == 6
    assert resp.model == "openai:test-model@http://mock.test/v1"
    assert resp.latency_s > 0


async def test_optional_fields_are_left_out(models: Any) -> None:
    rec = Recorder()
    await models(rec).complete(_req())
    body = rec.bodies[0]
    for key in ("n", "seed", "top_p", "max_tokens", "stop", "response_format"):
        assert key not in body


async def test_chunks_of_max_n(models: Any) -> None:
    rec = Recorder()
    model = models(rec, profile=ModelProfile(supports_n=True, max_n=2))
    resp = await model.complete(_req(n=5, seed=1))
    assert sorted((b.get("n", 1), b["seed"]) for b in rec.bodies) == sorted(
        [(2, mix_seed(1, 0)), (2, mix_seed(1, 2)), (1, mix_seed(1, 4))]
    )
    assert [c.sample_index for c in resp.completions] == [0, 1, 2, 3, 4]
    assert resp.usage.prompt_tokens == 15


async def test_fan_out_sends_n_single_requests_with_distinct_seeds(models: Any) -> None:
    rec = Recorder()
    model = models(rec, profile=ModelProfile(supports_n=False))
    resp = await model.complete(_req(n=4, seed=9, sample_offset=10))
    assert len(rec.bodies) == 4
    assert all("n" not in b for b in rec.bodies)
    seeds = sorted(b["seed"] for b in rec.bodies)
    assert seeds == sorted(mix_seed(9, i) for i in range(10, 14))
    assert len(set(seeds)) == 4
    assert [c.sample_index for c in resp.completions] == [10, 11, 12, 13]
    assert resp.texts == [f"s{mix_seed(9, i)}-0" for i in range(10, 14)]
    # One choice per call: its token count is known exactly and the parts add up.
    assert [c.completion_tokens for c in resp.completions] == [2, 2, 2, 2]
    assert resp.usage.completion_tokens == 8
    assert sum(u.total_tokens for u in split_usage(resp.usage, resp.completions)) == 28


async def test_missing_usage_counts_zero(models: Any) -> None:
    rec = Recorder(lambda r: httpx.Response(200, json=_completion(1, usage=False)))
    resp = await models(rec).complete(_req())
    assert resp.usage.total_tokens == 0
    assert resp.texts == ["c0"]


# --------------------------------------------------------------------------- credentials


def test_missing_key_for_openai_points_to_the_offline_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("DELIBERATE_API_KEY", "OPENAI_API_KEY", "DELIBERATE_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ModelAuthError) as info:
        OpenAIChatModel("gpt-4o-mini")
    assert str(info.value) == (
        "no API key for openai:gpt-4o-mini: set OPENAI_API_KEY, "
        "or use the offline model 'sim:arithmetic'"
    )


async def test_custom_endpoint_needs_no_key_and_env_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("DELIBERATE_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DELIBERATE_BASE_URL", "http://env.test/v1/")
    rec = Recorder()
    client = httpx.AsyncClient(transport=httpx.MockTransport(rec))
    model = OpenAIChatModel("local", http_client=client)
    try:
        await model.complete(_req())
    finally:
        await model.aclose()
    assert model.model_id == "openai:local@http://env.test/v1"
    assert rec.headers[0]["authorization"] == "Bearer EMPTY"

    monkeypatch.setenv("DELIBERATE_API_KEY", "sk-from-env")
    rec2 = Recorder()
    model2 = OpenAIChatModel(
        "local", http_client=httpx.AsyncClient(transport=httpx.MockTransport(rec2))
    )
    try:
        await model2.complete(_req())
    finally:
        await model2.aclose()
    assert rec2.headers[0]["authorization"] == "Bearer sk-from-env"


# --------------------------------------------------------------------------- errors


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Handler:
    return lambda r: httpx.Response(
        status, json={"error": {"message": message, "type": "x"}}, headers=headers
    )


async def test_401_is_an_auth_error(models: Any) -> None:
    with pytest.raises(ModelAuthError) as info:
        await models(Recorder(_error(401, "Incorrect API key"))).complete(_req())
    msg = str(info.value)
    assert "http://mock.test/v1" in msg
    assert "test-model" in msg
    assert "Incorrect API key" in msg
    assert "\n" not in msg


async def test_429_carries_retry_after(models: Any) -> None:
    rec = Recorder(_error(429, "slow down", {"Retry-After": "7"}))
    with pytest.raises(ModelRateLimitError) as info:
        await models(rec).complete(_req())
    err = info.value
    assert err.status == 429
    assert err.retry_after == 7.0
    assert err.retryable
    assert "slow down" in err.body
    assert "retry after 7s" in str(err)


async def test_429_with_http_date(models: Any) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    with pytest.raises(ModelRateLimitError) as info:
        await models(Recorder(_error(429, "later", {"Retry-After": when}))).complete(_req())
    assert info.value.retry_after is not None
    assert 50 <= info.value.retry_after <= 61


async def test_500_is_a_retryable_http_error(models: Any) -> None:
    with pytest.raises(ModelHTTPError) as info:
        await models(Recorder(_error(500, "boom"))).complete(_req())
    err = info.value
    assert not isinstance(err, ModelRateLimitError)
    assert err.status == 500
    assert err.retryable
    assert "boom" in err.body
    assert str(err) == "http://mock.test/v1 answered HTTP 500 for model test-model: boom"


async def test_400_is_not_retryable(models: Any) -> None:
    with pytest.raises(ModelHTTPError) as info:
        await models(Recorder(_error(400, "bad request"))).complete(_req())
    assert info.value.status == 400
    assert not info.value.retryable


async def test_timeout(models: Any) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(ModelTimeoutError) as info:
        await models(Recorder(slow), timeout_s=2.5).complete(_req())
    assert str(info.value) == "http://mock.test/v1 did not answer within 2.5s (model test-model)"


async def test_connection_refused(models: Any) -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(ModelConnectionError) as info:
        await models(Recorder(refused)).complete(_req())
    assert str(info.value) == (
        "cannot reach http://mock.test/v1 (model test-model): [Errno 111] Connection refused"
    )


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({**_completion(1), "choices": []}, "no choices"),
        (
            {
                **_completion(1),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": None}}],
            },
            "without text content",
        ),
        ([{"choices": []}], "other than a chat completion"),
        ({"object": "error", "message": "busy"}, "other than a chat completion"),
        ({**_completion(1), "choices": [{"index": 0, "message": {"role": "assistant"}}]},
         "without text content"),
    ],
)
async def test_unusable_responses(models: Any, payload: dict[str, Any], needle: str) -> None:
    with pytest.raises(ModelResponseError, match=needle):
        await models(Recorder(lambda r: httpx.Response(200, json=payload))).complete(_req())


async def test_server_ignoring_n_is_reported(models: Any) -> None:
    rec = Recorder(lambda r: httpx.Response(200, json=_completion(1)))
    with pytest.raises(ModelResponseError, match="supports_n=False"):
        await models(rec).complete(_req(n=3))


async def test_non_json_body(models: Any) -> None:
    rec = Recorder(
        lambda r: httpx.Response(200, text="<html>", headers={"content-type": "text/html"})
    )
    with pytest.raises(ModelResponseError):
        await models(rec).complete(_req())


async def test_one_failure_cancels_the_other_fanned_out_calls(models: Any) -> None:
    waiting = 0
    cancelled = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal waiting, cancelled
        body = json.loads(request.content)
        if body["seed"] == mix_seed(3, 2):
            return httpx.Response(500, json={"error": {"message": "one bad sample"}})
        waiting += 1
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return httpx.Response(200, json=_completion(1))

    model = models(handler, profile=ModelProfile(supports_n=False))
    with pytest.raises(ModelHTTPError, match="one bad sample"):
        await model.complete(_req(n=4, seed=3))
    # Whatever had started is cancelled, not left running (and paying) in the background.
    assert cancelled == waiting


async def test_list_models(models: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        data = [{"id": i, "object": "model", "created": 0, "owned_by": "x"} for i in ("a", "b")]
        return httpx.Response(200, json={"object": "list", "data": data})

    assert await models(handler).list_models() == ["a", "b"]


# --------------------------------------------------------------------------- loopback server


def _stub_app() -> FastAPI:
    """A minimal OpenAI-compatible server: echoes the prompt, seed and choice index."""
    app = FastAPI()

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": "echo", "object": "model", "created": 0, "owned_by": "test"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        if request.headers.get("authorization") != "Bearer sk-loopback":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        if body["model"] == "overloaded":
            return JSONResponse(
                {"error": {"message": "overloaded"}}, status_code=429, headers={"Retry-After": "2"}
            )
        last = body["messages"][-1]["content"]
        n = body.get("n", 1)
        return _completion(n, prefix=f"echo[{last}|seed={body.get('seed')}|{body.get('mode')}]#")

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def loopback_url() -> Iterator[str]:
    port = _free_port()
    config = uvicorn.Config(
        _stub_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("loopback stub server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def test_end_to_end_on_loopback(loopback_url: str) -> None:
    model = OpenAIChatModel("echo", base_url=loopback_url, api_key="sk-loopback", timeout_s=10)
    try:
        resp = await model.complete(_req(n=2, seed=5, extra={"mode": "fast"}))
        assert resp.texts == [f"echo[What is 2+2?|seed=5|fast]#{i}" for i in range(2)]
        assert resp.usage.total_tokens == 9
        fanned = OpenAIChatModel(
            "echo",
            base_url=loopback_url,
            api_key="sk-loopback",
            profile=ModelProfile(supports_n=False),
        )
        try:
            out = await fanned.complete(_req(n=3, seed=5))
        finally:
            await fanned.aclose()
        assert out.texts == [f"echo[What is 2+2?|seed={mix_seed(5, i)}|None]#0" for i in range(3)]
        assert await model.list_models() == ["echo"]
    finally:
        await model.aclose()


async def test_loopback_errors_are_translated(loopback_url: str) -> None:
    bad_key = OpenAIChatModel("echo", base_url=loopback_url, api_key="wrong")
    busy = OpenAIChatModel("overloaded", base_url=loopback_url, api_key="sk-loopback")
    try:
        with pytest.raises(ModelAuthError, match="bad key"):
            await bad_key.complete(_req())
        with pytest.raises(ModelRateLimitError) as info:
            await busy.complete(_req())
        assert info.value.retry_after == 2.0
    finally:
        await bad_key.aclose()
        await busy.aclose()


async def test_unreachable_endpoint_fails_fast_and_clearly() -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    model = OpenAIChatModel("echo", base_url=url, api_key="k", timeout_s=20)
    try:
        # Refused, and reported so: not waited out as a ModelTimeoutError.
        with pytest.raises(ModelConnectionError) as info:
            await model.complete(_req())
    finally:
        await model.aclose()
    msg = str(info.value)
    assert msg.startswith(f"cannot reach {url} (model echo): ")
    assert "\n" not in msg


async def test_a_stalled_server_times_out_on_the_default_transport() -> None:
    """The default client (our own aiohttp session) maps a read timeout to ours, and one
    model serves many calls over its session until it is closed."""
    from deliberate.models.sim.server import ServerConfig, SimServer
    from deliberate.tasks import load_suite

    with SimServer(load_suite("arithmetic"), server_config=ServerConfig(hang_rate=1.0,
                                                                         hang_s=5.0)) as srv:
        model = OpenAIChatModel("sim", base_url=srv.base_url, api_key="k", timeout_s=0.3)
        try:
            with pytest.raises(ModelTimeoutError) as info:
                await model.complete(_req())
        finally:
            await model.aclose()
    assert str(info.value) == f"{srv.base_url} did not answer within 0.3s (model sim)"
    with SimServer(load_suite("arithmetic")) as srv:
        model = OpenAIChatModel("sim", base_url=srv.base_url, api_key="k")
        try:
            replies = await asyncio.gather(*(model.complete(_req(seed=i)) for i in range(20)))
        finally:
            await model.aclose()
        assert all(len(r.texts) == 1 for r in replies)
        async with httpx.AsyncClient() as client:
            stats = (await client.get(srv.url + "/stats")).json()
        assert stats["completed"] == 20


async def test_the_default_transport_goes_through_the_environments_proxy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY is honoured (resolved once per model): a loopback proxy answers, and
    the endpoint's own host does not even resolve; NO_PROXY turns it off."""
    seen: list[bytes] = []
    reply = json.dumps(_completion(1)).encode()

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n", 1)[0])
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(reply), reply))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    for var in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    try:
        model = OpenAIChatModel("m", base_url="http://upstream.invalid/v1", api_key="k",
                                timeout_s=10)
        try:
            out = await model.complete(_req())
        finally:
            await model.aclose()
        assert len(out.texts) == 1
        assert seen == [b"POST http://upstream.invalid/v1/chat/completions HTTP/1.1"]
        monkeypatch.setenv("NO_PROXY", "upstream.invalid")
        direct = OpenAIChatModel("m", base_url="http://upstream.invalid/v1", api_key="k",
                                 timeout_s=10)
        try:
            with pytest.raises(ModelConnectionError, match="cannot reach"):
                await direct.complete(_req())
        finally:
            await direct.aclose()
        assert len(seen) == 1
    finally:
        server.close()
        await server.wait_closed()
