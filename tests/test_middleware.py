"""Cache, retry, concurrency limit and budget middleware, on scripted models."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deliberate.errors import BudgetExceeded, ModelHTTPError, ModelRateLimitError
from deliberate.models.base import ChatRequest, ChatResponse, Message, ModelProfile
from deliberate.models.budget import BudgetedModel, Ledger, Limits, Price, PriceTable
from deliberate.models.cache import CachedModel, ResponseCache
from deliberate.models.middleware import ConcurrencyLimitModel, RetryModel, RetryPolicy
from deliberate.models.scripted import FunctionModel


def req(text: str = "What is 2+2?", **kw: object) -> ChatRequest:
    return ChatRequest(messages=(Message("user", text),), **kw)  # type: ignore[arg-type]


def echo_model() -> FunctionModel:
    return FunctionModel(lambda r, i: f"sample {i} t={r.temperature}")


async def test_cache_key_includes_sample_index_and_params(tmp_path: Path) -> None:
    inner = echo_model()
    cache = ResponseCache(tmp_path / "c.db")
    m = CachedModel(inner, cache)
    r1 = await m.complete(req(n=2, temperature=0.8))
    assert r1.texts == ["sample 0 t=0.8", "sample 1 t=0.8"]
    assert len(cache) == 2  # two samples, two entries
    again = await m.complete(req(n=2, temperature=0.8))
    assert again.cached and again.texts == r1.texts
    assert len(inner.requests) == 1
    await m.complete(req(n=1, temperature=0.9))  # any sampling parameter changes the key
    assert len(inner.requests) == 2 and len(cache) == 3
    cache.close()


async def test_cache_asks_only_for_missing_samples(tmp_path: Path) -> None:
    inner = echo_model()
    cache = ResponseCache(tmp_path / "c.db")
    m = CachedModel(inner, cache)
    await m.complete(req(n=2))  # samples 0, 1
    r = await m.complete(req(n=4))  # 2 and 3 are new
    assert [c.sample_index for c in r.completions] == [0, 1, 2, 3]
    assert not r.cached
    last = inner.requests[-1]
    assert (last.sample_offset, last.n) == (2, 2)
    cache.close()


async def test_a_partly_cached_request_reports_the_usage_of_an_uncached_one(
        tmp_path: Path) -> None:
    """The prompt counts once however the samples were split between cache and model,
    so a run's tokens do not depend on what an earlier run left in the cache."""
    plain = await echo_model().complete(req(n=4))
    cache = ResponseCache(tmp_path / "c.db")
    m = CachedModel(echo_model(), cache)
    await m.complete(req(n=2))  # samples 0, 1 cached (the prompt stored with sample 0)
    mixed = await m.complete(req(n=4))  # 0, 1 from the cache, 2, 3 asked for
    assert mixed.usage == plain.usage
    tail = await m.complete(req(n=2, sample_offset=2))  # wholly cached, without sample 0
    alone = await echo_model().complete(req(n=2, sample_offset=2))
    assert tail.cached and tail.usage == alone.usage
    cache.close()


async def test_cache_persists_across_instances(tmp_path: Path) -> None:
    c1 = ResponseCache(tmp_path / "c.db")
    await CachedModel(echo_model(), c1).complete(req(n=3))
    c1.close()
    inner = echo_model()
    c2 = ResponseCache(tmp_path / "c.db")
    r = await CachedModel(inner, c2).complete(req(n=3))
    assert r.cached and inner.requests == []
    c2.close()


def test_cache_reads_see_queued_writes_and_close_commits_them(tmp_path: Path) -> None:
    """Writes go to one batching writer thread; until it commits, a read must still see
    them, and close() must not drop what is queued."""
    cache = ResponseCache(tmp_path / "c.db")
    items = [(f"k{i}", {"text": f"t{i}"}) for i in range(200)]
    for i in range(0, 200, 10):
        cache.put_many("m", items[i:i + 10])
    got = cache.get_many([k for k, _ in items] + ["absent"])  # some may still be queued
    assert got == dict(items)
    cache.close()
    cache.close()  # a second close is harmless
    with pytest.raises(RuntimeError, match="closed"):
        cache.put_many("m", items[:1])
    reopened = ResponseCache(tmp_path / "c.db")
    assert len(reopened) == 200 and reopened.get_many(["k7"]) == {"k7": {"text": "t7"}}
    reopened.close()


def test_cache_write_failure_is_logged_and_loses_only_the_batch(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A failed commit (here: the table is gone) costs the queued entries, never the run."""
    cache = ResponseCache(tmp_path / "c.db")
    cache.put_many("m", [("a", {"text": "1"})])
    cache.flush()
    cache._writer.execute("DROP TABLE cache")
    with caplog.at_level("WARNING", logger="deliberate.models.cache"):
        cache.put_many("m", [("b", {"text": "2"})])
        cache.flush()
    assert "1 entries not saved" in caplog.text
    cache._writer.execute(
        "CREATE TABLE cache (key TEXT PRIMARY KEY, model TEXT NOT NULL, value TEXT NOT NULL, "
        "created_at REAL NOT NULL)")
    cache.put_many("m", [("c", {"text": "3"})])  # the writer goes on after a failure
    cache.flush()
    assert cache.get_many(["b", "c"]) == {"c": {"text": "3"}}
    cache.close()


class Flaky:
    """Fails the first ``k`` calls with the given error, then answers."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.inner = echo_model()
        self.model_id = "flaky"
        self.profile = ModelProfile()

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return await self.inner.complete(request)

    async def aclose(self) -> None:
        return None


async def test_retry_recovers_from_429_and_500() -> None:
    flaky = Flaky([ModelRateLimitError("slow down", status=429, retry_after=0.01),
                   ModelHTTPError("boom", status=500)])
    m = RetryModel(flaky, RetryPolicy(max_attempts=5, base_delay_s=0.001, max_delay_s=0.05))
    r = await m.complete(req())
    assert r.texts == ["sample 0 t=1.0"] and flaky.calls == 3 and m.retries == 2


async def test_retry_gives_up_and_does_not_retry_client_errors() -> None:
    flaky = Flaky([ModelHTTPError("bad", status=400)])
    m = RetryModel(flaky, RetryPolicy(max_attempts=5, base_delay_s=0.001))
    with pytest.raises(ModelHTTPError):
        await m.complete(req())
    assert flaky.calls == 1
    flaky = Flaky([ModelHTTPError("boom", status=503)] * 3)
    m = RetryModel(flaky, RetryPolicy(max_attempts=3, base_delay_s=0.001))
    with pytest.raises(ModelHTTPError):
        await m.complete(req())
    assert flaky.calls == 3


def test_retry_delay_honours_retry_after_and_cap() -> None:
    import random

    p = RetryPolicy(max_attempts=5, base_delay_s=1.0, max_delay_s=10.0)
    rng = random.Random(0)
    assert p.delay(1, rng, 4.0) == 4.0
    assert p.delay(1, rng, 99.0) == 10.0
    for attempt in range(1, 8):
        d = p.delay(attempt, rng, None)
        assert 0 < d <= 10.0


async def test_concurrency_limit_caps_in_flight() -> None:
    async def slow(r: ChatRequest, i: int) -> str:
        await asyncio.sleep(0.01)
        return "x"

    m = ConcurrencyLimitModel(FunctionModel(slow), 3)
    await asyncio.gather(*(m.complete(req(text=f"q{i}")) for i in range(20)))
    assert m.max_in_flight == 3


async def test_budget_shrinks_n_then_refuses() -> None:
    ledger = Ledger(limits=Limits(max_tokens=200))
    m = BudgetedModel(FunctionModel(lambda r, i: "four"), ledger, default_max_tokens=50)
    r = await m.complete(req(text="hi", n=8))
    # prompt bound = 2 bytes + 8 + 8 = 18 → (200 - 18) // 50 = 3 samples fit
    assert len(r.completions) == 3 and ledger.limited and ledger.limited_by == "tokens"
    assert ledger.tokens <= 200
    with pytest.raises(BudgetExceeded):
        await m.complete(req(text="a much longer prompt " * 20, n=1))


async def test_calls_and_cost_budgets() -> None:
    ledger = Ledger(limits=Limits(max_calls=2))
    m = BudgetedModel(FunctionModel(lambda r, i: "ok"), ledger)
    await m.complete(req())
    await m.complete(req())
    with pytest.raises(BudgetExceeded) as e:
        await m.complete(req())
    assert e.value.limit == "calls" and ledger.calls == 2
    prices = PriceTable((("scripted", Price(input=1_000_000.0, output=0.0)),))
    ledger = Ledger(limits=Limits(max_cost=100.0))
    m = BudgetedModel(FunctionModel(lambda r, i: "ok"), ledger, prices)
    with pytest.raises(BudgetExceeded) as e:
        await m.complete(req(text="x" * 200))  # prompt bound alone costs > $100
    assert e.value.limit == "cost"


async def test_run_ledger_is_shared_by_task_ledgers() -> None:
    run = Ledger(limits=Limits(max_tokens=300))
    a = BudgetedModel(FunctionModel(lambda r, i: "one two"), Ledger(parent=run),
                      default_max_tokens=100)
    b = BudgetedModel(FunctionModel(lambda r, i: "one two"), Ledger(parent=run),
                      default_max_tokens=100)
    await a.complete(req(text="hi"))
    await b.complete(req(text="hi"))
    with pytest.raises(BudgetExceeded):
        await a.complete(req(text="hi " * 100))
    assert run.tokens <= 300 and run.limited


async def test_a_call_that_does_not_fit_waits_for_calls_in_flight_to_settle() -> None:
    """Reservations are upper bounds: concurrent calls under a tight budget wait for
    what the calls in flight did not use instead of being refused at once."""
    started: list[int] = []

    async def slow(r: ChatRequest, i: int) -> str:
        started.append(len(started))
        await asyncio.sleep(0.01)
        return "one"

    ledger = Ledger(limits=Limits(max_tokens=150))
    m = BudgetedModel(FunctionModel(slow), ledger, default_max_tokens=100)
    # each call reserves 2 + 8 + 8 + 100 = 118 tokens but uses far fewer: one at a time fits
    results = await asyncio.gather(*(m.complete(req(text="hi")) for _ in range(4)),
                                   return_exceptions=True)
    assert all(not isinstance(r, BaseException) for r in results), results
    assert len(started) == 4 and ledger.tokens <= 150 and not ledger.limited
    # when nothing is in flight and the call still cannot fit, it is refused
    with pytest.raises(BudgetExceeded):
        await m.complete(req(text="x" * 200))
    assert ledger.limited


@settings(max_examples=60, deadline=None)
@given(
    budget=st.integers(min_value=1, max_value=3000),
    prompts=st.lists(st.text(min_size=0, max_size=300), min_size=1, max_size=12),
    ns=st.lists(st.integers(min_value=1, max_value=6), min_size=12, max_size=12),
    out_words=st.integers(min_value=0, max_value=120),
)
def test_token_budget_is_never_exceeded(budget: int, prompts: list[str], ns: list[int],
                                         out_words: int) -> None:
    async def go() -> Ledger:
        ledger = Ledger(limits=Limits(max_tokens=budget))
        m = BudgetedModel(FunctionModel(lambda r, i: "w " * out_words), ledger,
                          default_max_tokens=64)
        for p, n in zip(prompts, ns, strict=False):
            with contextlib.suppress(BudgetExceeded):
                await m.complete(req(text=p, n=n))
        return ledger

    ledger = asyncio.run(go())
    assert ledger.tokens <= budget
