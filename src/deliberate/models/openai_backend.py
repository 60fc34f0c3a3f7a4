"""Any OpenAI-compatible chat endpoint, through the official ``openai`` SDK.

The SDK's own retries are switched off: retrying is one middleware of ours, so
that every attempt is visible to accounting and budgets. SDK exceptions are
translated here, at the boundary, into :mod:`deliberate.errors`; nothing from
``openai`` leaks past this module.

Samples: with ``profile.supports_n`` one HTTP request asks for ``n`` choices (in
chunks of ``profile.max_n``); otherwise ``n`` single-sample requests run
concurrently. Under a request seed every HTTP request gets its own seed, mixed
from the request seed and the index of its first sample, so samples at different
offsets differ and each sample is reproducible on its own.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import json
import os
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import httpx
import openai
from openai import AsyncOpenAI, AsyncStream, DefaultAioHttpClient
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from deliberate.errors import (
    ModelAuthError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    ModelRateLimitError,
    ModelResponseError,
    ModelTimeoutError,
)
from deliberate.models.base import (
    ChatRequest,
    ChatResponse,
    Completion,
    ModelProfile,
    StreamEvent,
    TextDelta,
    Usage,
)

__all__ = [
    "DEFAULT_OPENAI_BASE_URL",
    "OpenAIChatModel",
    "SampleCall",
    "mix_seed",
    "parse_retry_after",
    "plan_calls",
]

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
_MAX_CONNECTIONS = 100_000  # RunConfig.max_inflight_calls' own maximum

T = TypeVar("T")


# --------------------------------------------------------------------------- helpers
# Shared with the LiteLLM backend: how a request becomes HTTP calls, and how
# their results come back.


def mix_seed(seed: int, index: int) -> int:
    """The seed sent for the HTTP request whose first sample is ``index``.

    Index 0 keeps the caller's seed unchanged, so a plain one-sample request sends
    exactly the seed asked for; other indices get a stable hash of (seed, index)
    folded into 0..2**31-1, a range every server we know accepts.
    """
    if index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


@dataclass(frozen=True, slots=True)
class SampleCall:
    """One HTTP request serving samples ``offset .. offset + n - 1``."""

    offset: int
    n: int
    seed: int | None


def plan_calls(request: ChatRequest, profile: ModelProfile) -> list[SampleCall]:
    """Split a request into HTTP calls: chunks of ``max_n``, or one per sample."""
    if request.n < 1:
        raise ValueError(f"n must be at least 1, got {request.n}")
    chunk = max(1, profile.max_n) if profile.supports_n else 1
    calls: list[SampleCall] = []
    start = request.sample_offset
    end = request.sample_offset + request.n
    while start < end:
        k = min(chunk, end - start)
        seed = None if request.seed is None else mix_seed(request.seed, start)
        calls.append(SampleCall(offset=start, n=k, seed=seed))
        start += k
    return calls


async def gather_all(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest and raise that failure.

    Plain ``asyncio.gather`` would leave the other requests running (and paying)
    after one has failed; a TaskGroup would wrap the error in an ExceptionGroup.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def parse_retry_after(headers: Mapping[str, str] | httpx.Headers | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def short_body(body: str, limit: int = 300) -> str:
    """The error message inside an OpenAI-style error body, else the body on one line."""
    text = body.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            text = err["message"]
        elif isinstance(err, str):
            text = err
        elif isinstance(data.get("detail"), str):
            text = data["detail"]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_error(
    status: int,
    body: str,
    retry_after: float | None,
    *,
    endpoint: str,
    model: str,
) -> ModelError:
    """Our error for an HTTP error status, one line naming endpoint and model."""
    detail = short_body(body) or "(empty body)"
    if status in (401, 403):
        return ModelAuthError(
            f"{endpoint} refused the credentials for model {model} (HTTP {status}): {detail}"
        )
    if status == 429:
        wait = f", retry after {retry_after:g}s" if retry_after is not None else ""
        return ModelRateLimitError(
            f"{endpoint} rate-limited model {model} (HTTP 429{wait}): {detail}",
            status=status,
            body=body,
            retry_after=retry_after,
        )
    return ModelHTTPError(
        f"{endpoint} answered HTTP {status} for model {model}: {detail}",
        status=status,
        body=body,
        retry_after=retry_after,
    )


def request_body(request: ChatRequest, call: SampleCall) -> dict[str, Any]:
    """The OpenAI chat-completions fields of one HTTP call (without model/messages)."""
    body: dict[str, Any] = {"temperature": request.temperature}
    if call.n != 1:
        body["n"] = call.n
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.stop:
        body["stop"] = list(request.stop)
    if call.seed is not None:
        body["seed"] = call.seed
    if request.response_format is not None:
        body["response_format"] = dict(request.response_format)
    return body


def field_of(obj: Any, name: str) -> Any:
    """A field of a provider object: an SDK model's attribute or a parsed JSON key."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def completions_from_choices(
    choices: Sequence[Any],
    call: SampleCall,
    *,
    completion_tokens: int | None,
    endpoint: str,
    model: str,
) -> list[Completion]:
    """Map provider choices to our Completions, refusing empty or contentless ones.

    Per-choice token counts are only known when the call had one choice; then
    the response's completion tokens are that sample's.
    """
    if not choices:
        raise ModelResponseError(f"{endpoint} returned no choices for model {model}")
    if len(choices) != call.n:
        raise ModelResponseError(
            f"{endpoint} returned {len(choices)} choices for model {model} where {call.n} "
            "were asked for; if the server ignores n, use a profile with supports_n=False"
        )
    given = [field_of(c, "index") for c in choices]
    ints = [i for i in given if isinstance(i, int)]
    # Trust the choices' own indices only when they are exactly 0..n-1.
    rel = ints if len(ints) == len(given) and sorted(ints) == list(range(call.n)) else None
    out: list[Completion] = []
    for pos, choice in enumerate(choices):
        message = field_of(choice, "message")
        content = field_of(message, "content")
        if not isinstance(content, str):
            refusal = field_of(message, "refusal")
            why = f" (refusal: {short_body(str(refusal), 120)})" if refusal else ""
            raise ModelResponseError(
                f"{endpoint} returned a choice without text content for model {model}{why}"
            )
        out.append(
            Completion(
                text=content,
                sample_index=call.offset + (rel[pos] if rel is not None else pos),
                finish_reason=field_of(choice, "finish_reason"),
                completion_tokens=completion_tokens if call.n == 1 else None,
            )
        )
    return sorted(out, key=lambda c: c.sample_index)


def usage_of(response: Any) -> Usage:
    """Token usage of a provider response; missing fields count as 0."""
    usage = field_of(response, "usage")
    prompt = field_of(usage, "prompt_tokens") if usage is not None else None
    completion = field_of(usage, "completion_tokens") if usage is not None else None
    return Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else 0,
        completion_tokens=completion if isinstance(completion, int) else 0,
    )


async def run_calls(
    request: ChatRequest,
    profile: ModelProfile,
    one: Callable[[SampleCall], Awaitable[tuple[list[Completion], Usage]]],
    model_id: str,
) -> ChatResponse:
    """Plan, run concurrently, and merge: the part every HTTP backend shares."""
    started = time.perf_counter()
    results = await gather_all(one(call) for call in plan_calls(request, profile))
    completions = [c for comps, _ in results for c in comps]
    usage = Usage()
    for _, u in results:
        usage = usage + u
    return ChatResponse(
        completions=completions,
        usage=usage,
        model=model_id,
        latency_s=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------- backend


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``NO_PROXY``, …)."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    if not proxies or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxies.get(parts.scheme)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The default TLS context, built once per process: loading the CA bundle costs
    ~25 ms of CPU, which every run paid again when each client built its own. A
    context is safe to share between clients and threads."""
    return httpx.create_ssl_context()


def _refused_connect(exc: BaseException | None) -> bool:
    """Whether an httpx timeout is really a refused or unroutable connection.

    httpx's aiohttp transport reports every failure to connect as ``ConnectTimeout``;
    its cause says whether time ran out or the connection was refused.
    """
    inner = exc.__cause__ if exc is not None else None
    return isinstance(exc, httpx.ConnectTimeout) and isinstance(
        inner, aiohttp.ClientConnectorError) and not isinstance(inner, TimeoutError)


def _said(exc: BaseException) -> str:
    """What an exception says, or its type when it says nothing."""
    return str(exc) or type(exc).__name__


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


class OpenAIChatModel:
    """A chat model behind an OpenAI-compatible ``/v1/chat/completions``.

    ``base_url`` and ``api_key`` fall back to ``DELIBERATE_BASE_URL`` /
    ``OPENAI_BASE_URL`` and ``DELIBERATE_API_KEY`` / ``OPENAI_API_KEY``. A custom
    endpoint (vLLM, SGLang, a local server) may need no key; the OpenAI API does,
    and its absence is reported now rather than as a 401 later.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        profile: ModelProfile | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        resolved_url = (
            base_url or _env("DELIBERATE_BASE_URL", "OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL
        ).rstrip("/")
        key = api_key or _env("DELIBERATE_API_KEY", "OPENAI_API_KEY")
        if not key:
            if resolved_url == DEFAULT_OPENAI_BASE_URL:
                raise ModelAuthError(
                    f"no API key for openai:{model}: set OPENAI_API_KEY, "
                    "or use the offline model 'sim:arithmetic'"
                )
            key = "EMPTY"
        self.model = model
        self.base_url = resolved_url
        self.timeout_s = timeout_s
        self._profile = profile or ModelProfile()
        # With no client given, completions use an aiohttp session of our own (made on
        # first use, inside the event loop): httpx's request layer over aiohttp cost
        # ~0.3 ms of CPU per call (cookies, URL parsing, auth and redirect flows). A
        # client passed in is used as it is.
        self._session: aiohttp.ClientSession | None = None
        self._own_http = http_client is None
        self._proxy = _env_proxy(resolved_url)
        if http_client is None:
            # aiohttp's transport: httpx's connection pool rescans every pooled
            # connection per request and costs milliseconds of CPU per call once
            # dozens of calls are in flight (bench/parallel_rollouts.py)
            # The engine's max_inflight_calls is the one limit on calls in flight: the
            # pool must not add a lower one (the SDK's default is 1,000 connections).
            http_client = DefaultAioHttpClient(
                timeout=timeout_s, verify=_tls_context(),
                limits=httpx.Limits(max_connections=_MAX_CONNECTIONS,
                                    max_keepalive_connections=_MAX_CONNECTIONS))
        self._client = AsyncOpenAI(
            api_key=key,
            base_url=resolved_url,
            timeout=timeout_s,
            max_retries=0,
            http_client=http_client,
        )
        # Completions go straight through the SDK's HTTP client with the SDK's own
        # headers, built once: the SDK's request pipeline (options, headers, URL and
        # response objects per call) cost as much CPU as the rest of the engine
        # (bench/engine_overhead.py). Streaming and model listing still use the SDK.
        self._http = http_client
        self._url = f"{resolved_url}/chat/completions"
        self._headers = {k: v for k, v in {**self._client.default_headers,
                                            **self._client.auth_headers}.items()
                         if isinstance(v, str)}

    @property
    def model_id(self) -> str:
        return f"openai:{self.model}@{self.base_url}"

    @property
    def profile(self) -> ModelProfile:
        return self._profile

    def __repr__(self) -> str:
        return f"OpenAIChatModel({self.model_id!r})"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        messages = [m.to_dict() for m in request.messages]

        async def one(call: SampleCall) -> tuple[list[Completion], Usage]:
            body = {"model": self.model, "messages": messages, **request_body(request, call),
                    **request.extra}
            response = await self._post(body)
            if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
                raise ModelResponseError(
                    f"{self.base_url} answered model {self.model} with something other than "
                    f"a chat completion: {short_body(str(response), 120)}"
                )
            usage = usage_of(response)
            has_count = response.get("usage") is not None
            comps = completions_from_choices(
                response["choices"],
                call,
                completion_tokens=usage.completion_tokens if has_count else None,
                endpoint=self.base_url,
                model=self.model,
            )
            return comps, usage

        return await run_calls(request, self._profile, one, self.model_id)

    async def _post(self, body: dict[str, Any]) -> Any:
        """POST a chat-completions body; the parsed JSON reply, or one of our errors."""
        data = json.dumps(body).encode()
        if self._own_http:
            status, content, headers = await self._post_aiohttp(data)
        else:
            status, content, headers = await self._post_httpx(data)
        if not 200 <= status < 300:
            raise status_error(status, content.decode(errors="replace"),
                               parse_retry_after(headers), endpoint=self.base_url,
                               model=self.model)
        try:
            return json.loads(content)
        except ValueError as exc:  # a 2xx body that is not JSON
            raise ModelResponseError(
                f"{self.base_url} answered model {self.model} with a body that is not valid "
                f"JSON: {exc}"
            ) from exc

    async def _post_aiohttp(self, data: bytes) -> tuple[int, bytes, Mapping[str, str]]:
        session = self._session
        if session is None or session.closed:
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=_tls_context()),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s,
                                              sock_read=self.timeout_s),
                # trust_env would re-read the proxy variables and ~/.netrc on every
                # request (it doubled the CPU per call); the proxy is resolved once
                headers=self._headers, trust_env=False)
        try:
            async with session.post(self._url, data=data, proxy=self._proxy) as reply:
                return reply.status, await reply.read(), reply.headers
        except TimeoutError as exc:  # aiohttp's connect and read timeouts are TimeoutErrors
            raise self._timed_out() from exc
        except aiohttp.ClientError as exc:
            raise self._unreachable(_said(exc)) from exc

    async def _post_httpx(self, data: bytes) -> tuple[int, bytes, Mapping[str, str]]:
        try:
            reply = await self._http.post(self._url, content=data, headers=self._headers,
                                          timeout=self.timeout_s)
        except httpx.TimeoutException as exc:
            if not _refused_connect(exc):
                raise self._timed_out() from exc
            raise self._unreachable(_said(exc.__cause__ or exc)) from exc
        except httpx.TransportError as exc:
            raise self._unreachable(_said(exc)) from exc
        return reply.status_code, reply.content, reply.headers

    def _timed_out(self) -> ModelTimeoutError:
        return ModelTimeoutError(
            f"{self.base_url} did not answer within {self.timeout_s:g}s (model {self.model})"
        )

    def _unreachable(self, reason: str) -> ModelConnectionError:
        return ModelConnectionError(
            f"cannot reach {self.base_url} (model {self.model}): {' '.join(reason.split())}"
        )

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """The completion as the endpoint streams it (``stream=true``), then whole.

        Usage comes from the stream's last chunk (``stream_options.include_usage``);
        an endpoint that sends none is counted as 0 tokens, as ``complete`` counts a
        response without usage. A request that needs several HTTP calls (more
        samples than one call may ask for) is answered whole, not streamed.
        """
        calls = plan_calls(request, self._profile)
        if len(calls) != 1:
            yield await self.complete(request)
            return
        call = calls[0]
        messages: Any = [m.to_dict() for m in request.messages]
        body = {"model": self.model, "messages": messages, **request_body(request, call),
                **request.extra, "stream": True, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        texts: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        usage: Usage | None = None
        try:
            chunks = await self._client.post(
                "/chat/completions", body=body, cast_to=ChatCompletion, stream=True,
                stream_cls=AsyncStream[ChatCompletionChunk])
            try:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        usage = usage_of(chunk)
                    for choice in chunk.choices:
                        parts = texts.setdefault(choice.index, [])
                        piece = choice.delta.content if choice.delta is not None else None
                        if piece:
                            parts.append(piece)
                            yield TextDelta(call.offset + choice.index, piece)
                        if choice.finish_reason is not None:
                            finish[choice.index] = choice.finish_reason
            finally:
                await chunks.close()
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        except httpx.TimeoutException as exc:
            raise ModelTimeoutError(
                f"{self.base_url} stopped streaming for {self.timeout_s:g}s (model {self.model})"
            ) from exc
        except (httpx.HTTPError, ValueError) as exc:
            raise ModelResponseError(
                f"{self.base_url} broke off the stream for model {self.model}: "
                f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            ) from exc
        if sorted(texts) != list(range(call.n)):
            raise ModelResponseError(
                f"{self.base_url} streamed choices {sorted(texts)} for model {self.model} "
                f"where {call.n} were asked for"
            )
        total = usage or Usage()
        completions = [
            Completion(
                text="".join(texts[i]),
                sample_index=call.offset + i,
                finish_reason=finish.get(i),
                completion_tokens=total.completion_tokens if call.n == 1 and usage else None,
            )
            for i in range(call.n)
        ]
        yield ChatResponse(completions=completions, usage=total, model=self.model_id,
                           latency_s=time.perf_counter() - started)

    async def list_models(self) -> list[str]:
        """Ids of the models the endpoint serves (``GET /models``)."""
        try:
            return [m.id async for m in self._client.models.list()]
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc

    async def aclose(self) -> None:
        """Close the HTTP client (also one passed in: the model owns it from then on)."""
        if self._session is not None:
            await self._session.close()
        await self._client.close()

    def _translate(self, exc: openai.OpenAIError) -> ModelError:
        """SDK exception → ours, one line naming the endpoint and the model."""
        endpoint, model = self.base_url, self.model
        refused = _refused_connect(exc.__cause__)
        if isinstance(exc, openai.APITimeoutError) and not refused:
            return self._timed_out()
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            if refused and cause is not None and cause.__cause__ is not None:
                cause = cause.__cause__
            return self._unreachable(str(cause) if cause is not None and str(cause)
                                     else exc.message)
        if isinstance(exc, openai.APIStatusError):
            response = exc.response
            try:
                body = response.text
            except httpx.ResponseNotRead:
                body = exc.message
            return status_error(
                exc.status_code,
                body,
                parse_retry_after(response.headers),
                endpoint=endpoint,
                model=model,
            )
        return ModelResponseError(
            f"{endpoint} gave an unusable response for model {model}: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        )
