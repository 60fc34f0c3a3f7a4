"""The one narrow async chat-model interface every role and middleware speaks.

Requests and responses are frozen slotted dataclasses rather than pydantic models:
they are built on the hot path, thousands per second, and never come from users
directly (configuration does, and that is pydantic).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def messages_from(obj: Sequence[Mapping[str, Any] | Message]) -> tuple[Message, ...]:
    """Accept OpenAI-style dicts or Messages; content must be plain text."""
    out: list[Message] = []
    for m in obj:
        if isinstance(m, Message):
            out.append(m)
        else:
            out.append(Message(role=m["role"], content=str(m.get("content") or "")))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a role asks of a model.

    ``n`` samples are asked for at once; they carry the sample indices
    ``sample_offset .. sample_offset + n - 1``. The sample index is part of every
    cache and journal key, so two samples of the same prompt are two entries.
    """

    messages: tuple[Message, ...]
    temperature: float = 1.0
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    sample_offset: int = 0
    response_format: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Who asks and for which node (e.g. {"role": "judge", "node": id}); for records
    # only: never sent to a backend and not part of any key.
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def sample_indices(self) -> range:
        return range(self.sample_offset, self.sample_offset + self.n)

    def with_samples(self, n: int, offset: int) -> ChatRequest:
        return replace(self, n=n, sample_offset=offset)

    def canonical(self, model_id: str) -> dict[str, Any]:
        """Everything that determines the output, except n and the sample index."""
        return {
            "model": model_id,
            "messages": [m.to_dict() for m in self.messages],
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "seed": self.seed,
            "response_format": self.response_format,
            "extra": dict(self.extra),
        }

    def prefix_key(self, model_id: str) -> str:
        """Hash of the request without the sample index (shared by its samples)."""
        blob = json.dumps(self.canonical(model_id), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def sample_key(self, model_id: str, sample_index: int, prefix: str | None = None) -> str:
        """Cache/journal key of one sample: the whole request plus its sample index."""
        p = prefix or self.prefix_key(model_id)
        return hashlib.sha256(f"{p}#{sample_index}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    sample_index: int
    finish_reason: str | None = "stop"
    completion_tokens: int | None = None


@dataclass(slots=True)
class ChatResponse:
    """One or more completions for one request.

    ``cached`` means the response cache served it (no provider call); ``replayed``
    means the run's own journal served it on resume. ``call_ids`` are the store ids
    of the model-call records behind it, set by the journal middleware.
    """

    completions: list[Completion]
    usage: Usage
    model: str
    latency_s: float = 0.0
    cost: float = 0.0
    cached: bool = False
    replayed: bool = False
    call_ids: list[str] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.completions]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of one sample's text, as the model produces it (see :func:`stream_chat`)."""

    sample_index: int
    text: str


StreamEvent = TextDelta | ChatResponse
"""What a stream yields: text deltas, then exactly one whole :class:`ChatResponse` last."""


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """What a backend can do; capabilities come from here, never from a model's name."""

    supports_n: bool = True
    max_n: int = 128
    supports_seed: bool = True
    supports_json_schema: bool = False


@runtime_checkable
class ChatModel(Protocol):
    """Messages in, completions out. Every backend and middleware implements this."""

    @property
    def model_id(self) -> str:
        """Stable identity used in cache keys, e.g. ``openai:gpt-4o-mini@http://host/v1``."""
        ...

    @property
    def profile(self) -> ModelProfile: ...

    async def complete(self, request: ChatRequest) -> ChatResponse: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class StreamingChatModel(ChatModel, Protocol):
    """A chat model that can also hand out its text as it is produced.

    ``stream`` is optional: most of the library only calls ``complete``. A stream
    yields zero or more :class:`TextDelta` and then one :class:`ChatResponse`, the
    same response ``complete`` would have returned (each sample's text is the
    concatenation of its deltas). Closing the stream early cancels the call.
    """

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]: ...


async def stream_chat(model: ChatModel, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
    """``model``'s stream if it has one, else its whole response as the only event."""
    if not isinstance(model, StreamingChatModel):
        yield await model.complete(request)
        return
    async with aclosing(model.stream(request)) as events:
        async for event in events:
            yield event


class ModelWrapper:
    """Base for middleware: one concern each, delegating the rest to ``inner``."""

    def __init__(self, inner: ChatModel) -> None:
        self.inner = inner

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def profile(self) -> ModelProfile:
        return self.inner.profile

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return await self.inner.complete(request)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """No streaming by default: a wrapper's concern lives in ``complete``, and a
        wrapper that has not said how to stream must not be bypassed. Wrappers that
        can stream override this."""
        yield await self.complete(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def split_usage(usage: Usage, completions: Sequence[Completion]) -> list[Usage]:
    """Attribute a multi-sample response's usage to its samples.

    The prompt is processed once, so its tokens go to the first sample; completion
    tokens use the per-choice counts where the backend gave them and are otherwise
    shared in proportion to text length, so the parts always sum to the whole.
    """
    k = len(completions)
    if k == 0:
        return []
    if all(c.completion_tokens is not None for c in completions) and (
        sum(c.completion_tokens or 0 for c in completions) == usage.completion_tokens
    ):
        parts = [c.completion_tokens or 0 for c in completions]
    else:
        lengths = [max(1, len(c.text)) for c in completions]
        total = sum(lengths)
        parts = [usage.completion_tokens * n // total for n in lengths]
        parts[-1] += usage.completion_tokens - sum(parts)
    return [
        Usage(prompt_tokens=usage.prompt_tokens if i == 0 else 0, completion_tokens=p)
        for i, p in enumerate(parts)
    ]
