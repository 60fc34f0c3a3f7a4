"""The run's journal: every model call persisted before its result is used.

One :class:`JournalModel` wraps the model stack for one task attempt. A call whose
key is already in the journal (a resumed run re-asking what it asked before) is
answered from the record and costs nothing; any other call goes to the model, is
written to the store, and only then returned. Strategies are deterministic under a
seed, so a killed run started again re-asks exactly the calls it made before.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from deliberate.errors import ModelError
from deliberate.models.base import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    Completion,
    ModelWrapper,
    Usage,
)
from deliberate.models.budget import PriceTable
from deliberate.tree import ModelCallRecord, make_id


class CallSink(Protocol):
    async def record_call(self, record: ModelCallRecord) -> None: ...


def call_key(request: ChatRequest, model_id: str) -> str:
    """Identity of a call within a task: the whole request, its first sample and n."""
    base = request.prefix_key(model_id)
    return hashlib.sha256(f"{base}#{request.sample_offset}+{request.n}".encode()).hexdigest()


def request_to_dict(request: ChatRequest, model_id: str) -> dict[str, Any]:
    d = request.canonical(model_id)
    d["n"] = request.n
    d["sample_offset"] = request.sample_offset
    d["tags"] = dict(request.tags)
    return d


def response_to_dict(response: ChatResponse) -> dict[str, Any]:
    return {
        "model": response.model,
        "completions": [
            {
                "text": c.text,
                "sample_index": c.sample_index,
                "finish_reason": c.finish_reason,
                "completion_tokens": c.completion_tokens,
            }
            for c in response.completions
        ],
        "usage": {
            "prompt_tokens": response.usage.prompt_tokens,
            "completion_tokens": response.usage.completion_tokens,
        },
        "latency_s": response.latency_s,
        "cached": response.cached,
    }


def response_from_dict(d: dict[str, Any]) -> ChatResponse:
    usage = d.get("usage") or {}
    return ChatResponse(
        completions=[
            Completion(
                text=c["text"],
                sample_index=int(c["sample_index"]),
                finish_reason=c.get("finish_reason"),
                completion_tokens=c.get("completion_tokens"),
            )
            for c in d.get("completions", [])
        ],
        usage=Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
        model=str(d.get("model", "")),
        latency_s=float(d.get("latency_s", 0.0)),
    )


class JournalModel(ModelWrapper):
    """Replays recorded calls, records new ones durably before returning them."""

    def __init__(
        self,
        inner: ChatModel,
        sink: CallSink,
        *,
        run_id: str,
        task_id: str,
        recorded: dict[str, ModelCallRecord] | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        super().__init__(inner)
        self.price = (prices or PriceTable()).for_model(inner.model_id)
        self.sink = sink
        self.run_id = run_id
        self.task_id = task_id
        self.recorded = recorded or {}
        self.replayed = 0
        self.recorded_now = 0
        self._errors = 0

    async def complete(self, request: ChatRequest) -> ChatResponse:
        model_id = self.model_id
        key = call_key(request, model_id)
        rec = self.recorded.get(key)
        if rec is not None and rec.response is not None and rec.error is None:
            self.replayed += 1
            resp = response_from_dict(rec.response)
            resp.replayed = True
            resp.call_ids = [rec.id]
            return resp
        try:
            resp = await self.inner.complete(request)
        except ModelError as exc:
            self._errors += 1
            err_key = f"{key}:error:{self._errors}"
            await self.sink.record_call(
                ModelCallRecord(
                    id=make_id(self.run_id, self.task_id, err_key),
                    run_id=self.run_id,
                    task_id=self.task_id,
                    node_id=request.tags.get("node"),
                    key=err_key,
                    model=model_id,
                    role=request.tags.get("role", ""),
                    request=request_to_dict(request, model_id),
                    response=None,
                    error=f"{type(exc).__name__}: {exc}",
                )
            )
            raise
        record = ModelCallRecord(
            id=make_id(self.run_id, self.task_id, key),
            run_id=self.run_id,
            task_id=self.task_id,
            node_id=request.tags.get("node"),
            key=key,
            model=model_id,
            role=request.tags.get("role", ""),
            request=request_to_dict(request, model_id),
            response=response_to_dict(resp),
            prompt_tokens=resp.usage.prompt_tokens,
            completion_tokens=resp.usage.completion_tokens,
            cost=self.price.cost(resp.usage),
            latency_s=resp.latency_s,
            cached=resp.cached,
        )
        await self.sink.record_call(record)
        self.recorded[key] = record
        self.recorded_now += 1
        resp.call_ids = [record.id]
        return resp
