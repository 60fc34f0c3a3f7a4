"""Any provider LiteLLM speaks (Anthropic, Vertex, Bedrock, Ollama, …), as a ChatModel.

LiteLLM is an optional extra, imported on first use. Before importing it we ask
for its bundled model-cost map (``LITELLM_LOCAL_MODEL_COST_MAP``) and switch off
its telemetry, so that using this backend contacts nothing but the model
endpoint itself. Its exceptions subclass ``openai``'s; they are translated here
into :mod:`deliberate.errors` by status code, with connection failures (which
LiteLLM reports as HTTP 500) recognised from the exception chain.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

import openai

from deliberate.errors import (
    MissingDependencyError,
    ModelConnectionError,
    ModelError,
    ModelResponseError,
    ModelTimeoutError,
)
from deliberate.models.base import ChatRequest, ChatResponse, Completion, ModelProfile, Usage
from deliberate.models.openai_backend import (
    SampleCall,
    completions_from_choices,
    parse_retry_after,
    request_body,
    run_calls,
    short_body,
    status_error,
    usage_of,
)

__all__ = ["LiteLLMChatModel", "import_litellm"]


def import_litellm() -> Any:
    """Import LiteLLM with network side effects off; a clear hint if it is missing."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        litellm: Any = importlib.import_module("litellm")
    except ImportError as exc:
        raise MissingDependencyError("the litellm backend", "litellm", "litellm") from exc
    litellm.telemetry = False
    # Otherwise every failure prints a "Give Feedback" banner to stdout.
    litellm.suppress_debug_info = True
    return litellm


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _transport_failure(exc: BaseException) -> str | None:
    """'timeout' or 'connection' if the chain shows the request never got an answer."""
    for e in _chain(exc):
        if isinstance(e, openai.APITimeoutError | TimeoutError):
            return "timeout"
        if isinstance(e, openai.APIConnectionError | ConnectionError):
            return "connection"
        if isinstance(e, openai.APIStatusError) and e is not exc:
            return None  # a real HTTP answer further down the chain
    return None


def _error_body(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict | list):
        return json.dumps(body)
    if isinstance(body, str | bytes):
        return body.decode(errors="replace") if isinstance(body, bytes) else body
    return str(getattr(exc, "message", "") or exc)


class LiteLLMChatModel:
    """A chat model reached through ``litellm.acompletion``.

    ``model`` is LiteLLM's address (``anthropic/claude-…``, ``openai/<name>`` for
    an OpenAI-compatible ``base_url``). LiteLLM's own retries are off: retrying is
    our middleware. An aiohttp session owned by this model carries its calls
    where LiteLLM allows, and :meth:`aclose` closes it; use one instance per
    event loop.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        profile: ModelProfile | None = None,
    ) -> None:
        self._litellm = import_litellm()
        self.model = model
        self.base_url = base_url.rstrip("/") if base_url else None
        if api_key is None and self.base_url and model.startswith("openai/"):
            api_key = "EMPTY"  # local OpenAI-compatible servers need no key
        self._api_key = api_key
        self.timeout_s = timeout_s
        self._profile = profile or ModelProfile()
        self._session: Any = None

    @property
    def model_id(self) -> str:
        where = f"@{self.base_url}" if self.base_url else ""
        return f"litellm:{self.model}{where}"

    @property
    def profile(self) -> ModelProfile:
        return self._profile

    def __repr__(self) -> str:
        return f"LiteLLMChatModel({self.model_id!r})"

    def _shared_session(self) -> Any:
        if self._session is None or self._session.closed:
            aiohttp = importlib.import_module("aiohttp")
            self._session = aiohttp.ClientSession()
        return self._session

    async def complete(self, request: ChatRequest) -> ChatResponse:
        messages = [m.to_dict() for m in request.messages]
        endpoint = self.base_url or "the provider endpoint"

        async def one(call: SampleCall) -> tuple[list[Completion], Usage]:
            kwargs = request_body(request, call)
            if request.extra:
                kwargs["extra_body"] = dict(request.extra)
            if self.base_url:
                kwargs["api_base"] = self.base_url
            if self._api_key is not None:
                kwargs["api_key"] = self._api_key
            try:
                response = await self._litellm.acompletion(
                    model=self.model,
                    messages=messages,
                    timeout=self.timeout_s,
                    max_retries=0,
                    num_retries=0,
                    shared_session=self._shared_session(),
                    **kwargs,
                )
            except openai.OpenAIError as exc:
                raise self._translate(exc) from exc
            usage = usage_of(response)
            has_count = getattr(response, "usage", None) is not None
            comps = completions_from_choices(
                getattr(response, "choices", None) or [],
                call,
                completion_tokens=usage.completion_tokens if has_count else None,
                endpoint=endpoint,
                model=self.model,
            )
            return comps, usage

        return await run_calls(request, self._profile, one, self.model_id)

    async def aclose(self) -> None:
        """Close this model's HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _translate(self, exc: openai.OpenAIError) -> ModelError:
        """LiteLLM exception → ours, one line naming the endpoint and the model."""
        endpoint = self.base_url or "the provider endpoint"
        model = self.model
        failure = _transport_failure(exc)
        if failure == "timeout":
            return ModelTimeoutError(
                f"{endpoint} did not answer within {self.timeout_s:g}s (model {model})"
            )
        if failure == "connection":
            reasons = [str(e) for e in _chain(exc)[1:] if str(e)]
            reason = reasons[-1] if reasons else str(exc)
            return ModelConnectionError(
                f"cannot reach {endpoint} (model {model}): {' '.join(reason.split())}"
            )
        status = getattr(exc, "status_code", None)
        if isinstance(status, str) and status.isdigit():
            status = int(status)
        if isinstance(status, int):
            headers = getattr(exc, "litellm_response_headers", None)
            if headers is None:
                response = getattr(exc, "response", None)
                headers = getattr(response, "headers", None)
            return status_error(
                status,
                _error_body(exc),
                parse_retry_after(headers),
                endpoint=endpoint,
                model=model,
            )
        return ModelResponseError(
            f"{endpoint} gave an unusable response for model {model}: {short_body(str(exc), 200)}"
        )
