"""Accounting and budgets: what a task and a run consumed, and hard limits on it.

A :class:`Ledger` counts tokens, calls, cost and wall time; a ledger may have a
parent (the run's), and a call must fit both. Budgets are *hard*: before a call,
the :class:`BudgetedModel` reserves an upper bound of what the call can consume
(prompt bytes as a token bound — every byte-level tokenizer needs at most one
token per byte — plus ``max_tokens`` per sample) and refuses a call that might not
fit. A call that does not fit while other calls are in flight waits for them to
settle first (a reservation is an upper bound; what a call did not use comes
back), so concurrency does not turn a budget into a fraction of itself. When only
some of the asked-for samples fit with nothing in flight, it asks for fewer and
marks the ledger as limited. Budgets count what the strategy consumed, cached or replayed
included, so a run's results never depend on the state of the cache.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from dataclasses import dataclass, field, replace

from deliberate.errors import BudgetExceeded
from deliberate.models.base import ChatModel, ChatRequest, ChatResponse, ModelWrapper, Usage

MESSAGE_OVERHEAD_TOKENS = 8
REQUEST_OVERHEAD_TOKENS = 8


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input: float = 0.0
    output: float = 0.0

    def cost(self, usage: Usage) -> float:
        return (usage.prompt_tokens * self.input + usage.completion_tokens * self.output) / 1e6


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices by model-id pattern (fnmatch); the first matching pattern wins."""

    entries: tuple[tuple[str, Price], ...] = ()

    def for_model(self, model_id: str) -> Price:
        for pattern, price in self.entries:
            if fnmatch.fnmatchcase(model_id, pattern):
                return price
        return Price()


@dataclass(frozen=True, slots=True)
class Limits:
    max_tokens: int | None = None
    max_calls: int | None = None
    max_cost: float | None = None
    max_wall_s: float | None = None

    @property
    def empty(self) -> bool:
        return (
            self.max_tokens is None
            and self.max_calls is None
            and self.max_cost is None
            and self.max_wall_s is None
        )


@dataclass(slots=True)
class Reservation:
    tokens: int
    calls: int
    cost: float


@dataclass(slots=True)
class Ledger:
    """Consumption so far plus outstanding reservations, against optional limits."""

    limits: Limits = field(default_factory=Limits)
    parent: Ledger | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    paid_calls: int = 0
    cached_calls: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    limited: bool = False
    limited_by: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    _reserved_tokens: int = 0
    _reserved_calls: int = 0
    _reserved_cost: float = 0.0
    _settled: asyncio.Event | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def _room(self) -> tuple[float, float, float]:
        lim = self.limits
        inf = float("inf")
        tokens = (
            inf
            if lim.max_tokens is None
            else lim.max_tokens - self.tokens - self._reserved_tokens
        )
        calls = inf if lim.max_calls is None else lim.max_calls - self.calls - self._reserved_calls
        cost = inf if lim.max_cost is None else lim.max_cost - self.cost - self._reserved_cost
        return tokens, calls, cost

    def mark_limited(self, what: str) -> None:
        self.limited = True
        self.limited_by = self.limited_by or what
        if self.parent is not None:
            self.parent.mark_limited(what)

    def check_time(self) -> None:
        lim = self.limits.max_wall_s
        if lim is not None and time.monotonic() - self.started_at >= lim:
            self.mark_limited("wall_time")
            raise BudgetExceeded(f"wall-time budget of {lim:g}s used up", limit="wall_time")
        if self.parent is not None:
            self.parent.check_time()

    def affordable(self, prompt_bound: int, per_sample_tokens: int, per_sample_cost: float,
                   prompt_cost: float, wanted: int) -> tuple[int, str | None]:
        """How many of ``wanted`` samples fit in one call here and in every parent.

        Returns the count and the name of the limit that cut it (None if none did).
        """
        tokens, calls, cost = self._room()
        k, why = wanted, None
        if calls < 1:
            k, why = 0, "calls"
        if tokens != float("inf"):
            fit = int((tokens - prompt_bound) // max(1, per_sample_tokens))
            if fit < k:
                k, why = max(0, fit), "tokens"
        if cost != float("inf"):
            fit = (
                int((cost - prompt_cost) // per_sample_cost)
                if per_sample_cost > 0
                else (wanted if prompt_cost <= cost else 0)
            )
            if fit < k:
                k, why = max(0, fit), "cost"
        if self.parent is not None:
            pk, pwhy = self.parent.affordable(
                prompt_bound, per_sample_tokens, per_sample_cost, prompt_cost, wanted
            )
            if pk < k:
                k, why = pk, pwhy
        return k, why

    def in_flight(self) -> bool:
        """Whether a reservation is outstanding here or in a parent."""
        return self._reserved_calls > 0 or (self.parent is not None and self.parent.in_flight())

    async def wait_settled(self) -> None:
        """Wait until some call in flight here or in a parent settles."""
        events: list[asyncio.Event] = []
        level: Ledger | None = self
        while level is not None:
            if level._reserved_calls > 0:
                if level._settled is None:
                    level._settled = asyncio.Event()
                events.append(level._settled)
            level = level.parent
        if not events:
            return
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def reserve(self, r: Reservation) -> None:
        self._reserved_tokens += r.tokens
        self._reserved_calls += r.calls
        self._reserved_cost += r.cost
        if self.parent is not None:
            self.parent.reserve(r)

    def settle(self, r: Reservation, usage: Usage, cost: float, latency_s: float,
               *, cached: bool) -> None:
        self._reserved_tokens -= r.tokens
        self._reserved_calls -= r.calls
        self._reserved_cost -= r.cost
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.calls += r.calls
        self.cost += cost
        self.latency_s += latency_s
        if cached:
            self.cached_calls += r.calls
        else:
            self.paid_calls += r.calls
        if self._settled is not None:
            self._settled.set()
            self._settled = None
        if self.parent is not None:
            self.parent.settle(r, usage, cost, latency_s, cached=cached)


def prompt_token_bound(request: ChatRequest) -> int:
    """An upper bound on the prompt's tokens for any byte-level tokenizer."""
    return (
        sum(len(m.content.encode()) + MESSAGE_OVERHEAD_TOKENS for m in request.messages)
        + REQUEST_OVERHEAD_TOKENS
    )


class BudgetedModel(ModelWrapper):
    """Accounting plus hard budgets for one ledger (a task's, chained to the run's)."""

    def __init__(self, inner: ChatModel, ledger: Ledger, prices: PriceTable | None = None,
                 *, default_max_tokens: int = 1024) -> None:
        super().__init__(inner)
        self.ledger = ledger
        self.prices = prices or PriceTable()
        self.default_max_tokens = default_max_tokens

    async def complete(self, request: ChatRequest) -> ChatResponse:
        ledger = self.ledger
        ledger.check_time()
        if request.max_tokens is None:
            request = replace(request, max_tokens=self.default_max_tokens)
        max_tokens = request.max_tokens or self.default_max_tokens
        price = self.prices.for_model(self.model_id)
        prompt_bound = prompt_token_bound(request)
        prompt_cost = price.cost(Usage(prompt_bound, 0))
        sample_cost = price.cost(Usage(0, max_tokens))
        k, why = ledger.affordable(prompt_bound, max_tokens, sample_cost, prompt_cost, request.n)
        while k < request.n and ledger.in_flight():
            # what the calls in flight do not use comes back when they settle
            await ledger.wait_settled()
            ledger.check_time()
            k, why = ledger.affordable(prompt_bound, max_tokens, sample_cost, prompt_cost,
                                       request.n)
        if k < 1:
            what = why or "tokens"
            ledger.mark_limited(what)
            raise BudgetExceeded(f"{what} budget would be exceeded by the next call", limit=what)
        if k < request.n:
            ledger.mark_limited(why or "tokens")
            request = request.with_samples(k, request.sample_offset)
        reservation = Reservation(
            tokens=prompt_bound + k * max_tokens, calls=1, cost=prompt_cost + k * sample_cost
        )
        ledger.reserve(reservation)
        try:
            response = await self.inner.complete(request)
        except BaseException:
            ledger.settle(reservation, Usage(), 0.0, 0.0, cached=False)
            raise
        cost = price.cost(response.usage)
        response.cost = cost
        ledger.settle(
            reservation,
            response.usage,
            cost,
            response.latency_s,
            cached=response.cached or response.replayed,
        )
        return response
