"""Watching a run as it happens: every model call, its text as it streams, each result.

The engine runs strategies that only ever call ``complete``. An embedding program
(the server) that wants to show a run live passes a :class:`RunObserver`; each
task's model stack is then wrapped in an :class:`ObservedModel`, below the task's
budget and journal::

    Budget → Journal → ObservedModel → shared stack (cache, retry, limit, backend)

so budgets and the journal see exactly what they see without an observer (whole
responses with their final usage), while the observer sees each call start, its
text arrive piece by piece where the observer asks for it and the stack can
stream, and each call end. Calls the journal answers (replays, identical calls
shared) never reach the observer: they are not new calls.

A strategy whose last step is a generation (the answer it returns is that call's
text) tags that request with ``FINAL_TAG`` (``tags={"final": "1", …}``), so an
observer can pass its text on as the answer while it is being written.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Protocol

from deliberate.models.base import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    ModelWrapper,
    TextDelta,
    stream_chat,
)
from deliberate.tree import NodeRecord

FINAL_TAG = "final"
"""Request tag marking the call whose text is the strategy's answer (value ``"1"``)."""


class RunObserver(Protocol):
    """Callbacks from a running engine; they must not block (queue and return)."""

    def wants_stream(self, task_id: str, request: ChatRequest) -> bool:
        """Whether to stream this call (deltas reported) or ask for it whole."""
        ...

    def call_started(self, task_id: str, request: ChatRequest) -> None: ...

    def call_delta(self, task_id: str, request: ChatRequest, delta: TextDelta) -> None: ...

    def call_finished(self, task_id: str, request: ChatRequest,
                      response: ChatResponse | None, error: BaseException | None) -> None:
        """The call ended with ``response``, or failed (or was cancelled) with ``error``."""
        ...

    def task_result(self, task_id: str, node: NodeRecord | None, note: str) -> None:
        """The strategy chose ``node`` (before grading and before the attempt is saved)."""
        ...


class ObservedModel(ModelWrapper):
    """Reports the calls of one task to a :class:`RunObserver`; otherwise transparent."""

    def __init__(self, inner: ChatModel, observer: RunObserver, task_id: str) -> None:
        super().__init__(inner)
        self.observer = observer
        self.task_id = task_id

    async def complete(self, request: ChatRequest) -> ChatResponse:
        obs, task_id = self.observer, self.task_id
        obs.call_started(task_id, request)
        response: ChatResponse | None = None
        try:
            if obs.wants_stream(task_id, request):
                async with aclosing(stream_chat(self.inner, request)) as events:
                    async for event in events:
                        if isinstance(event, TextDelta):
                            obs.call_delta(task_id, request, event)
                        else:
                            response = event
                if response is None:
                    raise RuntimeError(f"{self.model_id}: stream ended without a response")
            else:
                response = await self.inner.complete(request)
        except BaseException as exc:
            obs.call_finished(task_id, request, None, exc)
            raise
        obs.call_finished(task_id, request, response, None)
        return response
