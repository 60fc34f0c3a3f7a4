"""Response cache: one SQLite entry per sample, keyed by the whole request.

The key is the model id, the messages, every sampling parameter and the sample
index (see :meth:`ChatRequest.sample_key`), so two samples of the same prompt at
temperature 0.8 are two entries and a rerun with the same seed asks the provider
for nothing. A request whose samples are partly cached asks only for the missing
ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path

from deliberate.models.base import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    Completion,
    ModelWrapper,
    StreamEvent,
    Usage,
    split_usage,
    stream_chat,
)

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache (
  key TEXT PRIMARY KEY,
  model TEXT NOT NULL,
  value TEXT NOT NULL,
  created_at REAL NOT NULL
)
"""


class ResponseCache:
    """A thread-safe SQLite key-value store for completions.

    Reads are answered inline: a keyed lookup in a WAL database takes microseconds,
    less than handing it to a thread. Writes are queued and committed in batches by
    one writer thread, so a call costs no transaction of its own; a queued entry is
    already visible to reads. The cache only saves money (the run's journal is what
    resume relies on), so entries still queued when a process is killed are lost,
    never wrong. :meth:`flush` and :meth:`close` wait for the queue.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._read_lock = threading.Lock()
        self._reader = self._connect()
        self._writer = self._connect()
        self._writer.execute(_SCHEMA)
        self._pending: dict[str, tuple[str, str, float]] = {}  # key -> (model, json, time)
        self._cond = threading.Condition()
        self._writing = 0  # entries taken by the writer and not yet committed
        self._closed = False
        self._thread = threading.Thread(target=self._write_loop, name="response-cache",
                                        daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def get_many(self, keys: list[str]) -> dict[str, dict[str, object]]:
        if not keys:
            return {}
        out: dict[str, dict[str, object]] = {}
        rest = keys
        with self._cond:
            if self._pending:
                rest = []
                for k in keys:
                    hit = self._pending.get(k)
                    if hit is None:
                        rest.append(k)
                    else:
                        out[k] = json.loads(hit[1])
        if rest:
            marks = ",".join("?" * len(rest))
            with self._read_lock:
                rows = self._reader.execute(
                    f"SELECT key, value FROM cache WHERE key IN ({marks})", rest
                ).fetchall()
            out.update((k, json.loads(v)) for k, v in rows)
        return out

    def put_many(self, model: str, items: list[tuple[str, dict[str, object]]]) -> None:
        if not items:
            return
        now = time.time()
        encoded = [(k, (model, json.dumps(v), now)) for k, v in items]
        with self._cond:
            if self._closed:
                raise RuntimeError("the response cache is closed")
            self._pending.update(encoded)
            self._cond.notify()

    def flush(self) -> None:
        """Wait until every queued entry is committed."""
        with self._cond:
            while (self._pending or self._writing) and self._thread.is_alive():
                self._cond.wait(0.1)

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending and self._closed:
                    return
                batch = self._pending
                self._pending = {}
                self._writing = len(batch)
            try:
                self._writer.execute("BEGIN")
                self._writer.executemany(
                    "INSERT OR REPLACE INTO cache(key, model, value, created_at) "
                    "VALUES (?,?,?,?)",
                    [(k, m, v, t) for k, (m, v, t) in batch.items()],
                )
                self._writer.execute("COMMIT")
            except sqlite3.Error as exc:  # a full disk, a locked file: lose the batch
                log.warning("response cache %s: %d entries not saved (%s); the run goes on "
                            "without them", self.path, len(batch), exc)
                with contextlib.suppress(sqlite3.Error):
                    self._writer.execute("ROLLBACK")
            with self._cond:
                self._writing = 0
                self._cond.notify_all()

    def __len__(self) -> int:
        self.flush()
        with self._read_lock:
            row = self._reader.execute("SELECT COUNT(*) FROM cache").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        with self._read_lock:
            self._reader.close()
        self._writer.close()


class CachedModel(ModelWrapper):
    """Serves samples from a :class:`ResponseCache`; asks the inner model for the rest."""

    def __init__(self, inner: ChatModel, cache: ResponseCache) -> None:
        super().__init__(inner)
        self.cache = cache
        self.hits = 0
        self.misses = 0

    async def complete(self, request: ChatRequest) -> ChatResponse:
        model_id = self.model_id
        prefix = request.prefix_key(model_id)
        keys = {i: request.sample_key(model_id, i, prefix) for i in request.sample_indices}
        found = self.cache.get_many(list(keys.values()))
        missing = [i for i, k in keys.items() if k not in found]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)

        completions: dict[int, Completion] = {}
        # The usage reported is what one uncached request would report, whatever part of
        # it the cache held: the prompt once, plus every sample's completion.
        prompt = 0
        completion = 0
        for i, k in keys.items():
            if k in found:
                v = found[k]
                completions[i] = Completion(
                    text=str(v["text"]),
                    sample_index=i,
                    finish_reason=_opt_str(v.get("finish_reason")),
                    completion_tokens=_opt_int(v.get("completion_tokens")),
                )
                prompt = max(prompt, _int(v.get("call_prompt_tokens", v.get("prompt_tokens"))))
                completion += _int(v.get("completion_tokens"))
        usage = Usage(prompt, completion)
        if not missing:
            return ChatResponse(
                completions=[completions[i] for i in request.sample_indices],
                usage=usage,
                model=model_id,
                cached=True,
            )

        fresh: list[Completion] = []
        latency = 0.0
        cost = 0.0
        served_by = model_id
        for offset, n in _runs(missing):
            resp = await self.inner.complete(request.with_samples(n, offset))
            latency += resp.latency_s
            cost += resp.cost
            served_by = resp.model
            prompt = max(prompt, resp.usage.prompt_tokens)
            completion += resp.usage.completion_tokens
            fresh.extend(resp.completions)
            self._store(keys, resp)
        for c in fresh:
            completions[c.sample_index] = c
        return ChatResponse(
            completions=[completions[i] for i in request.sample_indices if i in completions],
            usage=Usage(prompt, completion),
            model=served_by,
            latency_s=latency,
            cost=cost,
        )

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream from the inner model when no sample is cached, storing the result at
        the end; a request with cached samples is answered whole (cached text is
        there at once, and a partly cached one asks only for what is missing)."""
        model_id = self.model_id
        prefix = request.prefix_key(model_id)
        keys = {i: request.sample_key(model_id, i, prefix) for i in request.sample_indices}
        found = self.cache.get_many(list(keys.values()))
        if found:
            yield await self.complete(request)
            return
        self.misses += len(keys)
        async with aclosing(stream_chat(self.inner, request)) as events:
            async for event in events:
                if isinstance(event, ChatResponse):
                    self._store(keys, event)
                yield event

    def _store(self, keys: dict[int, str], resp: ChatResponse) -> None:
        parts = split_usage(resp.usage, resp.completions)
        items: list[tuple[str, dict[str, object]]] = []
        for c, u in zip(resp.completions, parts, strict=True):
            items.append(
                (
                    keys[c.sample_index],
                    {
                        "text": c.text,
                        "finish_reason": c.finish_reason,
                        "prompt_tokens": u.prompt_tokens,
                        "call_prompt_tokens": resp.usage.prompt_tokens,
                        "completion_tokens": u.completion_tokens,
                    },
                )
            )
        self.cache.put_many(self.model_id, items)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of sample indices as (offset, count)."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


def _int(v: object) -> int:
    return int(v) if isinstance(v, int | float) else 0


def _opt_int(v: object) -> int | None:
    return int(v) if isinstance(v, int | float) else None


def _opt_str(v: object) -> str | None:
    return v if isinstance(v, str) else None
