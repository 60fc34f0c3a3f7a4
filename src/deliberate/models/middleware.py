"""Wrapper models that add one concern each: retry and concurrency limit.

Cache, budget/accounting and the run journal live in their own modules; all of
them wrap any :class:`~deliberate.models.base.ChatModel` and are one themselves.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from deliberate.errors import ModelError
from deliberate.models.base import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    ModelWrapper,
    StreamEvent,
    TextDelta,
    stream_chat,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, honouring ``Retry-After``, capped."""

    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None) -> float:
        backoff = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        jittered = rng.uniform(backoff / 2, backoff)
        if retry_after is not None:
            return min(self.max_delay_s, max(jittered, retry_after))
        return jittered


class RetryModel(ModelWrapper):
    """Retries retryable failures (429, 408, 5xx, timeouts, connection errors).

    Non-retryable errors (400, 401, bad responses) go straight through: retrying a
    request the server has refused as malformed only burns time.
    """

    def __init__(self, inner: ChatModel, policy: RetryPolicy | None = None, *, seed: int = 0):
        super().__init__(inner)
        self.policy = policy or RetryPolicy()
        self._rng = random.Random(seed)  # jitter only; never affects results
        self.retries = 0

    async def complete(self, request: ChatRequest) -> ChatResponse:
        attempt = 1
        while True:
            try:
                return await self.inner.complete(request)
            except ModelError as exc:
                if not exc.retryable or attempt >= self.policy.max_attempts:
                    raise
                await self._backoff(exc, attempt)
                attempt += 1

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Retry a stream that fails before its first delta; once text has gone out it
        cannot be taken back, so a later failure goes straight through."""
        attempt = 1
        while True:
            started = False
            try:
                async with aclosing(stream_chat(self.inner, request)) as events:
                    async for event in events:
                        started = started or isinstance(event, TextDelta)
                        yield event
                return
            except ModelError as exc:
                if started or not exc.retryable or attempt >= self.policy.max_attempts:
                    raise
                await self._backoff(exc, attempt)
                attempt += 1

    async def _backoff(self, exc: ModelError, attempt: int) -> None:
        retry_after = getattr(exc, "retry_after", None)
        delay = self.policy.delay(attempt, self._rng, retry_after)
        log.info(
            "retrying %s after %s (attempt %d, sleeping %.2fs)",
            self.model_id,
            type(exc).__name__,
            attempt,
            delay,
        )
        self.retries += 1
        await asyncio.sleep(delay)


class ConcurrencyLimitModel(ModelWrapper):
    """At most ``limit`` requests in flight to the inner model."""

    def __init__(self, inner: ChatModel, limit: int) -> None:
        super().__init__(inner)
        if limit < 1:
            raise ValueError("concurrency limit must be at least 1")
        self._sem = asyncio.Semaphore(limit)
        self.limit = limit
        self.in_flight = 0
        self.max_in_flight = 0

    async def complete(self, request: ChatRequest) -> ChatResponse:
        async with self._sem:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return await self.inner.complete(request)
            finally:
                self.in_flight -= 1

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """A stream holds its slot until its last event (or until it is closed)."""
        async with self._sem:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                async with aclosing(stream_chat(self.inner, request)) as events:
                    async for event in events:
                        yield event
            finally:
                self.in_flight -= 1
