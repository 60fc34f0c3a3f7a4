"""The run's journal: every model call persisted before its result is used.

One :class:`JournalModel` wraps the model stack for one task attempt. A call whose
key is already in the journal (a resumed run re-asking what it asked before) is
answered from the record and costs nothing; any other call goes to the model, is
written to the store, and only then returned. Strategies are deterministic under a
seed, so a killed run started again re-asks exactly the calls it made before.
"""

from __future__ import annotations

import asyncio
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


class TaskJournal:
    """The journal of one task attempt, shared by the models of all its roles.

    Identical requests are one call: if the same request is already recorded or in
    flight, its answer is shared rather than paid for again (two judges asked about
    two identical candidates at temperature 0 ask the same thing).
    """

    def __init__(
        self,
        sink: CallSink,
        *,
        run_id: str,
        task_id: str,
        recorded: dict[str, ModelCallRecord] | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.sink = sink
        self.run_id = run_id
        self.task_id = task_id
        self.recorded = recorded or {}
        self.prices = prices or PriceTable()
        self.inflight: dict[str, asyncio.Future[ModelCallRecord]] = {}
        self.replayed = 0  # answered from a record made before this process started
        self.shared = 0  # answered by an identical call of this process
        self.recorded_now = 0
        self._errors = 0
        self._preexisting = set(self.recorded)

    def wrap(self, inner: ChatModel) -> JournalModel:
        return JournalModel(inner, self)


class JournalModel(ModelWrapper):
    """Replays recorded calls, records new ones durably before returning them."""

    def __init__(self, inner: ChatModel, journal: TaskJournal) -> None:
        super().__init__(inner)
        self.journal = journal
        self.price = journal.prices.for_model(inner.model_id)

    @staticmethod
    def _from_record(rec: ModelCallRecord) -> ChatResponse:
        assert rec.response is not None
        resp = response_from_dict(rec.response)
        resp.replayed = True
        resp.call_ids = [rec.id]
        return resp

    async def complete(self, request: ChatRequest) -> ChatResponse:
        j = self.journal
        model_id = self.model_id
        key = call_key(request, model_id)
        rec = j.recorded.get(key)
        if rec is not None and rec.response is not None and rec.error is None:
            if key in j._preexisting:
                j.replayed += 1
            else:
                j.shared += 1
            return self._from_record(rec)
        pending = j.inflight.get(key)
        if pending is not None:
            j.shared += 1
            return self._from_record(await asyncio.shield(pending))
        future: asyncio.Future[ModelCallRecord] = asyncio.get_running_loop().create_future()
        j.inflight[key] = future
        try:
            record = await self._call(request, key, model_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(record)
        finally:
            del j.inflight[key]
        resp = self._from_record(record)
        resp.replayed = False
        resp.cached = record.cached
        return resp

    async def _call(self, request: ChatRequest, key: str, model_id: str) -> ModelCallRecord:
        j = self.journal
        try:
            resp = await self.inner.complete(request)
        except ModelError as exc:
            j._errors += 1
            await j.sink.record_call(
                self._record(request, f"{key}:error:{j._errors}", model_id,
                             error=f"{type(exc).__name__}: {exc}")
            )
            raise
        record = self._record(
            request,
            key,
            model_id,
            response=response_to_dict(resp),
            prompt_tokens=resp.usage.prompt_tokens,
            completion_tokens=resp.usage.completion_tokens,
            cost=self.price.cost(resp.usage),
            latency_s=resp.latency_s,
            cached=resp.cached,
        )
        await j.sink.record_call(record)
        j.recorded[key] = record
        j.recorded_now += 1
        return record

    def _record(self, request: ChatRequest, key: str, model_id: str,
                **fields: Any) -> ModelCallRecord:
        j = self.journal
        return ModelCallRecord(
            id=make_id(j.run_id, j.task_id, key),
            run_id=j.run_id,
            task_id=j.task_id,
            node_id=request.tags.get("node"),
            key=key,
            model=model_id,
            role=request.tags.get("role", ""),
            request=request_to_dict(request, model_id),
            response=fields.pop("response", None),
            **fields,
        )
