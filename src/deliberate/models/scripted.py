"""A scripted model: a function decides each completion. For tests and prototypes.

``FunctionModel(lambda request, i: "Answer: 4")`` is a complete backend: it honours
``n`` and sample indices, reports usage with a simple deterministic token count,
and can fail on demand, so strategy logic is tested without any server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from deliberate.models.base import ChatRequest, ChatResponse, Completion, ModelProfile, Usage
from deliberate.models.tokens import count_tokens, prompt_tokens, truncate_tokens

Script = Callable[[ChatRequest, int], str | Awaitable[str]]


class FunctionModel:
    """Completions from ``script(request, sample_index)`` (sync or async)."""

    def __init__(self, script: Script, *, model_id: str = "scripted",
                 profile: ModelProfile | None = None) -> None:
        self._script = script
        self._model_id = model_id
        self._profile = profile or ModelProfile()
        self.requests: list[ChatRequest] = []

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def profile(self) -> ModelProfile:
        return self._profile

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        completions = []
        out_tokens = 0
        for i in request.sample_indices:
            value: Any = self._script(request, i)
            if isinstance(value, Awaitable):
                value = await value
            text = str(value)
            toks = count_tokens(text)
            reason = "stop"
            if request.max_tokens is not None and toks > request.max_tokens:
                text, _ = truncate_tokens(text, request.max_tokens)
                toks, reason = request.max_tokens, "length"
            out_tokens += toks
            completions.append(Completion(text, i, reason, toks))
        prompt = prompt_tokens(request.messages)
        return ChatResponse(completions, Usage(prompt, out_tokens), self._model_id)

    async def aclose(self) -> None:
        return None
