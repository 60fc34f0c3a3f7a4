"""What one request's run reports while it runs, and how it goes out as chunks.

:class:`RequestObserver` is the engine's :class:`~deliberate.engine.observe.RunObserver`
for one chat request. It asks the engine to stream exactly the calls tagged
``final`` (a strategy's last step when that step is a generation: the answer the
client receives), queues their text as it arrives, queues a progress event per
finished model call and the strategy's choice, and keeps what the response needs
at the end (the final call's choices, the last model error).

The chunk builders write OpenAI ``chat.completion.chunk`` objects; progress events
are chunks with ``choices: []`` and a ``deliberate`` object, which OpenAI clients
pass over (they read ``choices`` and ``usage`` only).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from deliberate.engine.observe import FINAL_TAG
from deliberate.errors import ModelError
from deliberate.models.base import ChatRequest, ChatResponse, TextDelta
from deliberate.tree import NodeRecord

__all__ = ["Event", "RequestObserver", "chunk", "sse"]


@dataclass(frozen=True, slots=True)
class Event:
    """One thing to tell a streaming client: ``delta`` (answer text of a choice),
    ``call`` (a model call ended), ``answer`` (the strategy chose) or ``end``."""

    kind: str
    index: int = 0
    text: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    node: NodeRecord | None = None


class RequestObserver:
    """Collects one request's run as it happens (see the module docstring)."""

    def __init__(self, *, stream: bool, progress: bool) -> None:
        self.stream = stream
        self.progress = progress
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.final: ChatResponse | None = None  # the last finished call tagged final
        self.streamed: set[int] = set()  # choices whose text went out as it arrived
        self.node: NodeRecord | None = None
        self.note = ""
        self.decided = False
        self.error: ModelError | None = None
        self.calls = 0

    # -- RunObserver

    def wants_stream(self, task_id: str, request: ChatRequest) -> bool:
        return self.stream and request.tags.get(FINAL_TAG) == "1"

    def call_started(self, task_id: str, request: ChatRequest) -> None:
        return None

    def call_delta(self, task_id: str, request: ChatRequest, delta: TextDelta) -> None:
        index = delta.sample_index - request.sample_offset
        self.streamed.add(index)
        self.queue.put_nowait(Event("delta", index=index, text=delta.text))

    def call_finished(self, task_id: str, request: ChatRequest,
                      response: ChatResponse | None, error: BaseException | None) -> None:
        self.calls += 1
        if isinstance(error, ModelError):
            self.error = error
        if response is not None and request.tags.get(FINAL_TAG) == "1":
            self.final = response
        if not self.progress:
            return
        info: dict[str, Any] = {"event": "call", "role": request.tags.get("role", ""),
                                "node": request.tags.get("node"), "n": request.n}
        if response is not None:
            info.update(prompt_tokens=response.usage.prompt_tokens,
                        completion_tokens=response.usage.completion_tokens,
                        latency_s=round(response.latency_s, 4), cached=response.cached)
        elif error is not None:
            info["error"] = type(error).__name__
        self.queue.put_nowait(Event("call", info=info))

    def task_result(self, task_id: str, node: NodeRecord | None, note: str) -> None:
        self.node, self.note, self.decided = node, note, True
        self.queue.put_nowait(Event("answer", node=node, info={"note": note}))

    def end(self) -> None:
        """The run is over (its task is done, failed or cancelled)."""
        self.queue.put_nowait(Event("end"))


def chunk(cid: str, model: str, created: int, choices: list[dict[str, Any]], *,
          usage: dict[str, int] | None = None,
          deliberate: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``chat.completion.chunk``; ``deliberate`` is our extension object."""
    out: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created,
                           "model": model, "system_fingerprint": None, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    if deliberate is not None:
        out["deliberate"] = deliberate
    return out


def delta_choice(index: int, content: dict[str, str],
                 finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": content, "finish_reason": finish_reason, "logprobs": None}


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event; a string is sent as it is (``[DONE]``)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def now() -> int:
    return int(time.time())
