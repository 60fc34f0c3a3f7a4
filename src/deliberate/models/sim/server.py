"""The sim model behind an OpenAI-compatible HTTP API, with faults on demand.

End-to-end tests and benchmarks need a real server on loopback that behaves like a
provider: ``n`` samples, seeds, streaming token by token, rate limits with
``Retry-After``, 5xx errors, hangs, a concurrency cap, API keys. Faults come from
a seeded generator in arrival order, so a test that sends requests one at a time
sees the same faults every run. All state lives on the app, so several servers can
share a process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deliberate.models.base import ChatRequest, ChatResponse, Message, Role
from deliberate.models.sim.core import SimModel, SimParams, token_pieces
from deliberate.serving import BackgroundServer, bind, run_foreground, url_of, uvicorn_config
from deliberate.tasks.task import Suite

__all__ = ["ServerConfig", "SimServer", "create_app", "serve"]

log = logging.getLogger(__name__)


class ServerConfig(BaseModel):
    """How the sim server listens, paces its output and misbehaves. See docs/sim.md."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(default="127.0.0.1", description="Interface to bind.")
    port: int = Field(default=0, ge=0, le=65535, description="Port; 0 picks a free one.")
    ttft_ms: float = Field(default=0.0, ge=0, description="Delay before the first token, in ms.")
    tokens_per_s: float = Field(
        default=0.0, ge=0, description="Output pace per choice; 0 sends everything at once."
    )
    fail_rate: float = Field(default=0.0, ge=0, le=1, description="P(a request fails on purpose).")
    fail_statuses: tuple[Annotated[int, Field(ge=400, le=599)], ...] = Field(
        default=(429, 500), min_length=1, description="Statuses an injected failure picks from."
    )
    retry_after_s: float = Field(default=1.0, ge=0, description="Retry-After header sent with 429.")
    hang_rate: float = Field(default=0.0, ge=0, le=1, description="P(a request stalls for hang_s).")
    hang_s: float = Field(default=30.0, ge=0, description="How long a stalled request waits.")
    fail_first: int = Field(
        default=0, ge=0, description="Fail the first K requests with fail_statuses[0]."
    )
    fault_seed: int = Field(default=0, description="Seed of the fault draws (in arrival order).")
    max_concurrency: int = Field(
        default=0, ge=0, description="Requests in flight beyond this get 429; 0 = unlimited."
    )
    supports_n: bool = Field(default=True, description="If false, n > 1 is refused with 400.")
    api_key: str | None = Field(
        default=None, description="If set, require 'Authorization: Bearer KEY'."
    )

    @field_validator("fail_statuses", mode="before")
    @classmethod
    def _split_statuses(cls, value: object) -> object:
        """Accept ``"429,500"`` from command lines and environment variables."""
        if isinstance(value, str):
            return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
        if isinstance(value, int):
            return (value,)
        return value


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = "text"
    text: str = ""


class _MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[_ContentPart] | None = None

    def to_message(self) -> Message:
        role: Role
        if self.role in ("system", "developer"):
            role = "system"
        elif self.role == "assistant":
            role = "assistant"
        else:
            role = "user"
        if isinstance(self.content, list):
            text = "".join(p.text for p in self.content if p.type == "text")
        else:
            text = self.content or ""
        return Message(role=role, content=text)


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _ChatBody(BaseModel):
    """The fields of an OpenAI chat-completions request the sim honours; others are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = ""
    messages: list[_MessageIn] = Field(min_length=1)
    n: int | None = Field(default=None, ge=1, le=128)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=0)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: _StreamOptions | None = None


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    completed: int = 0
    injected_failures: int = 0
    hung: int = 0
    rejected: int = 0
    invalid: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class _State:
    """Everything one app instance mutates; owned by its event loop."""

    sim: SimModel
    config: ServerConfig
    stats: _Stats = field(default_factory=_Stats)
    faults: random.Random = field(default_factory=random.Random)
    arrivals: int = 0

    def reset(self) -> None:
        in_flight = self.stats.in_flight
        self.stats = _Stats(in_flight=in_flight, max_in_flight=in_flight)
        self.faults = random.Random(self.config.fault_seed)
        self.arrivals = 0


def _error(
    status: int,
    message: str,
    kind: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error in OpenAI's shape, so clients raise their usual exceptions."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _injected(status: int, config: ServerConfig) -> JSONResponse:
    if status == 429:
        return _error(
            429,
            "Rate limit reached (injected by the sim server).",
            "requests",
            "rate_limit_exceeded",
            headers={"Retry-After": f"{config.retry_after_s:g}"},
        )
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return _error(status, f"Injected failure {status} (sim server).", kind)


def _to_request(body: _ChatBody) -> ChatRequest:
    stop: tuple[str, ...]
    if body.stop is None:
        stop = ()
    elif isinstance(body.stop, str):
        stop = (body.stop,)
    else:
        stop = tuple(body.stop)
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    # Without a seed every request draws fresh randomness, like a hosted model.
    seed = body.seed if body.seed is not None else secrets.randbits(62)
    return ChatRequest(
        messages=tuple(m.to_message() for m in body.messages),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=body.top_p,
        max_tokens=max_tokens,
        stop=stop,
        seed=seed,
        n=body.n or 1,
    )


def _usage_json(response: ChatResponse) -> dict[str, int]:
    u = response.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def create_app(
    suite: Suite,
    sim_params: SimParams | None = None,
    server_config: ServerConfig | None = None,
) -> FastAPI:
    """A FastAPI app serving a :class:`SimModel` over ``suite`` the way OpenAI's API does."""
    config = server_config or ServerConfig()
    state = _State(sim=SimModel(suite, sim_params or SimParams()), config=config)
    state.reset()
    app = FastAPI(title="deliberate sim", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sim = state

    def authorised(request: Request) -> bool:
        if config.api_key is None:
            return True
        return request.headers.get("authorization", "") == f"Bearer {config.api_key}"

    def unauthorised() -> JSONResponse:
        state.stats.invalid += 1
        return _error(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        name = state.sim.params.name
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "deliberate-sim"}]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return state.stats.as_dict()

    @app.post("/stats/reset")
    async def reset_stats() -> dict[str, int]:
        state.reset()
        return state.stats.as_dict()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        stats = state.stats
        stats.requests += 1
        if not authorised(request):
            return unauthorised()
        try:
            body = _ChatBody.model_validate(json.loads(await request.body()))
        except (ValueError, ValidationError) as exc:
            stats.invalid += 1
            return _error(400, f"Invalid request: {exc}", "invalid_request_error")
        if (body.n or 1) > 1 and not config.supports_n:
            stats.invalid += 1
            return _error(
                400,
                "This model does not support n > 1.",
                "invalid_request_error",
                "unsupported_parameter",
                "n",
            )
        if config.max_concurrency and stats.in_flight >= config.max_concurrency:
            stats.rejected += 1
            return _error(
                429,
                "Too many concurrent requests.",
                "requests",
                "rate_limit_exceeded",
                headers={"Retry-After": f"{config.retry_after_s:g}"},
            )
        state.arrivals += 1
        fail_roll, hang_roll = state.faults.random(), state.faults.random()
        status: int | None = None
        if state.arrivals <= config.fail_first:
            status = config.fail_statuses[0]
        elif fail_roll < config.fail_rate:
            status = config.fail_statuses[int(state.faults.random() * len(config.fail_statuses))]
        if status is not None:
            stats.injected_failures += 1
            return _injected(status, config)

        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            if hang_roll < config.hang_rate:
                stats.hung += 1
                await asyncio.sleep(config.hang_s)
            chat = _to_request(body)
            response = await state.sim.complete(chat)
            if config.ttft_ms > 0:
                await asyncio.sleep(config.ttft_ms / 1000.0)
        except BaseException:
            stats.in_flight -= 1
            raise
        model = body.model or state.sim.params.name
        stats.prompt_tokens += response.usage.prompt_tokens
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _stream(state, response, model, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        try:
            if config.tokens_per_s > 0:
                longest = max(c.completion_tokens or 0 for c in response.completions)
                await asyncio.sleep(longest / config.tokens_per_s)
        finally:
            stats.in_flight -= 1
        stats.completed += 1
        stats.completion_tokens += response.usage.completion_tokens
        return JSONResponse(
            {
                "id": f"chatcmpl-{secrets.token_hex(12)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "deliberate-sim",
                "choices": [
                    {
                        "index": j,
                        "message": {"role": "assistant", "content": c.text},
                        "finish_reason": c.finish_reason,
                        "logprobs": None,
                    }
                    for j, c in enumerate(response.completions)
                ],
                "usage": _usage_json(response),
            }
        )

    return app


async def _stream(
    state: _State, response: ChatResponse, model: str, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent chunks: role, then one token per choice per tick, finish reasons, usage."""
    config = state.config
    cid = f"chatcmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    delay = 1.0 / config.tokens_per_s if config.tokens_per_s > 0 else 0.0

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        payload: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "deliberate-sim",
            "choices": choices,
        }
        if include_usage:
            payload["usage"] = usage
        return f"data: {json.dumps(payload)}\n\n"

    def delta(j: int, content: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return {"index": j, "delta": content, "finish_reason": finish, "logprobs": None}

    try:
        pieces = [token_pieces(c.text) for c in response.completions]
        yield chunk([delta(j, {"role": "assistant", "content": ""}) for j in range(len(pieces))])
        for t in range(max((len(p) for p in pieces), default=0)):
            if delay:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let the server flush between chunks
            yield chunk([delta(j, {"content": p[t]}) for j, p in enumerate(pieces) if t < len(p)])
        yield chunk([delta(j, {}, c.finish_reason) for j, c in enumerate(response.completions)])
        if include_usage:
            yield chunk([], _usage_json(response))
        yield "data: [DONE]\n\n"
        state.stats.completed += 1
        state.stats.completion_tokens += response.usage.completion_tokens
    finally:
        state.stats.in_flight -= 1


class SimServer(BackgroundServer):
    """A sim server on a loopback port in a background thread, for tests and benchmarks.

    ``with SimServer(suite) as srv: AsyncOpenAI(base_url=srv.base_url, api_key="x")``.
    """

    def __init__(
        self,
        suite: Suite,
        sim_params: SimParams | None = None,
        server_config: ServerConfig | None = None,
    ) -> None:
        self.config = server_config or ServerConfig()
        super().__init__(create_app(suite, sim_params, self.config), self.config.host,
                         self.config.port, lifespan="off", graceful_s=1, name="sim-server")

    def start(self, timeout: float = 10.0) -> SimServer:
        super().start(timeout)
        log.info("sim server listening on %s", self.base_url)
        return self

    def __enter__(self) -> SimServer:
        return self.start()


def serve(
    suite: Suite,
    sim_params: SimParams | None = None,
    server_config: ServerConfig | None = None,
) -> None:
    """Run the sim server in the foreground until interrupted (the CLI's ``serve``)."""
    config = server_config or ServerConfig()
    app = create_app(suite, sim_params, config)
    sock = bind(config.host, config.port)
    port = sock.getsockname()[1]
    log.warning("sim server for suite %r on %s/v1", suite.name, url_of(config.host, port))
    run_foreground(uvicorn_config(app, config.host, port, lifespan="off", graceful_s=1), sock)
