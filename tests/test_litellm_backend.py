"""LiteLLMChatModel against a real OpenAI-compatible stub server on loopback.

LiteLLM addresses the stub as ``openai/<name>`` with ``api_base`` pointing at it.
A subprocess test audits every socket LiteLLM opens, from import to answer, to
hold the promise that the backend contacts nothing but the model endpoint.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from deliberate.errors import (
    MissingDependencyError,
    ModelAuthError,
    ModelConnectionError,
    ModelHTTPError,
    ModelRateLimitError,
    ModelResponseError,
    ModelTimeoutError,
)
from deliberate.models.base import ChatModel, ChatRequest, Message, ModelProfile
from deliberate.models.litellm_backend import LiteLLMChatModel
from deliberate.models.openai_backend import mix_seed

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("litellm") is None,
    reason='litellm is not installed (pip install "deliberate[litellm]")',
)


def _req(**kw: Any) -> ChatRequest:
    return ChatRequest(messages=(Message("user", "Say hi"),), **kw)


@dataclass
class Stub:
    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)


def _stub_app(stub: Stub) -> FastAPI:
    """OpenAI-compatible echo server; the model name selects an error to answer with."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        stub.bodies.append(body)
        model = body["model"]
        if model == "e401":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        if model == "e429":
            return JSONResponse(
                {"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "3"}
            )
        if model == "e500":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if model == "slow":
            await asyncio.sleep(3)
        n = body.get("n", 1)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": f"hi#{body.get('seed')}#{i}"},
                "finish_reason": "stop",
            }
            for i in range(0 if model == "empty" else n)
        ]
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": choices,
            "usage": {"prompt_tokens": 3, "completion_tokens": 2 * n, "total_tokens": 3 + 2 * n},
        }

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def stub() -> Iterator[Stub]:
    port = _free_port()
    state = Stub(url=f"http://127.0.0.1:{port}/v1")
    config = uvicorn.Config(
        _stub_app(state),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        ws="none",
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
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
async def models() -> AsyncIterator[Callable[..., LiteLLMChatModel]]:
    made: list[LiteLLMChatModel] = []

    def make(name: str, base_url: str, **kw: Any) -> LiteLLMChatModel:
        model = LiteLLMChatModel(f"openai/{name}", base_url=base_url, **kw)
        made.append(model)
        return model

    yield make
    for m in made:
        await m.aclose()


async def test_n_seed_and_extra_reach_the_server(stub: Stub, models: Any) -> None:
    model = models("echo", stub.url, timeout_s=10)
    assert isinstance(model, ChatModel)
    assert model.model_id == f"litellm:openai/echo@{stub.url}"
    stub.bodies.clear()
    resp = await model.complete(
        _req(n=2, seed=5, sample_offset=3, temperature=0.5, max_tokens=20, extra={"top_k": 7})
    )
    (body,) = stub.bodies
    assert body["model"] == "echo"
    assert body["n"] == 2
    assert body["seed"] == mix_seed(5, 3)
    assert body["temperature"] == 0.5
    assert body["max_tokens"] == 20
    assert body["top_k"] == 7
    assert resp.texts == [f"hi#{mix_seed(5, 3)}#{i}" for i in range(2)]
    assert [c.sample_index for c in resp.completions] == [3, 4]
    assert resp.usage.prompt_tokens == 3
    assert resp.usage.completion_tokens == 4


async def test_fans_out_when_n_is_unsupported(stub: Stub, models: Any) -> None:
    model = models("echo", stub.url, profile=ModelProfile(supports_n=False))
    stub.bodies.clear()
    resp = await model.complete(_req(n=3, seed=1))
    assert len(stub.bodies) == 3
    assert all("n" not in b for b in stub.bodies)
    assert sorted(b["seed"] for b in stub.bodies) == sorted(mix_seed(1, i) for i in range(3))
    assert resp.texts == [f"hi#{mix_seed(1, i)}#0" for i in range(3)]
    assert resp.usage.prompt_tokens == 9


async def test_status_errors_are_translated(stub: Stub, models: Any) -> None:
    with pytest.raises(ModelAuthError, match="bad key"):
        await models("e401", stub.url).complete(_req())
    with pytest.raises(ModelRateLimitError) as rate:
        await models("e429", stub.url).complete(_req())
    assert rate.value.status == 429
    assert rate.value.retry_after == 3.0
    with pytest.raises(ModelHTTPError) as boom:
        await models("e500", stub.url).complete(_req())
    assert boom.value.status == 500
    assert "boom" in str(boom.value)
    assert stub.url in str(boom.value)


async def test_empty_choices(stub: Stub, models: Any) -> None:
    with pytest.raises(ModelResponseError, match="no choices"):
        await models("empty", stub.url).complete(_req())


async def test_timeout(stub: Stub, models: Any) -> None:
    with pytest.raises(ModelTimeoutError, match=r"did not answer within 0\.5s"):
        await models("slow", stub.url, timeout_s=0.5).complete(_req())


async def test_unreachable_endpoint(models: Any) -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    # A refused connection is reported as such, not waited out as a timeout.
    with pytest.raises(ModelConnectionError) as info:
        await models("echo", url, timeout_s=10).complete(_req())
    assert str(info.value).startswith(f"cannot reach {url} (model openai/echo): ")


def test_missing_litellm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litellm", None)
    with pytest.raises(MissingDependencyError) as info:
        LiteLLMChatModel("openai/x", base_url="http://127.0.0.1:1/v1")
    assert 'pip install "deliberate[litellm]"' in str(info.value)


_AUDIT = textwrap.dedent(
    """
    import asyncio, json, sys
    seen = []
    def hook(event, args):
        if event == "socket.connect":
            seen.append(["connect", repr(args[1])])
        elif event == "socket.getaddrinfo":
            seen.append(["getaddrinfo", repr(args[0])])
    sys.addaudithook(hook)
    from deliberate.models.base import ChatRequest, Message
    from deliberate.models.litellm_backend import LiteLLMChatModel

    async def main():
        model = LiteLLMChatModel("openai/echo", base_url=sys.argv[1], timeout_s=10)
        try:
            resp = await model.complete(ChatRequest(messages=(Message("user", "hi"),), n=2))
        finally:
            await model.aclose()
        return resp.texts

    texts = asyncio.run(main())
    print(json.dumps({"texts": texts, "sockets": seen}))
    """
)


def test_no_network_beyond_loopback(stub: Stub) -> None:
    """Import, first call and close of LiteLLM, audited in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM")}
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", _AUDIT, stub.url],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["texts"] == ["hi#None#0", "hi#None#1"]
    assert report["sockets"], "the audit hook saw no socket at all"
    for kind, target in report["sockets"]:
        assert "127.0.0.1" in target or "localhost" in target or "::1" in target, (kind, target)
