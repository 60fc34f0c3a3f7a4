"""Concurrency: model calls in flight and calls per second as concurrency rises to 2,000,
on 2 cores, with memory.

Against a server that answers every request after a fixed latency (``ttft_ms``, in its
own process), C model calls can be in flight at once only if the client keeps C
requests open. At each level C:

- **engine**: ``deliberate.arun`` over 3·C tasks with ``concurrency`` = C tasks and
  ``max_inflight_calls`` = C, ``self_consistency`` with one sample per task (one call
  each), response cache and SQLite store on, through the real openai backend;
- **bare** (the baseline): an ``openai.AsyncOpenAI`` client (aiohttp transport, its
  connection limit raised to C) sending the same number of requests with C in flight.

Each level reports the server's count of calls in flight at its peak, calls per
second, the ideal C / latency, errors (failed task attempts, non-200 replies, requests
the server rejected) and the client's resident memory: its peak during the level and
its growth over the level. Prompts differ per task so that no call is a cache hit.

    python -m bench.concurrency            # writes bench/results/concurrency.json
    python -m bench.concurrency --quick --out /tmp/c.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI, DefaultAioHttpClient
from rich.console import Console
from rich.table import Table

from bench._harness import (
    RESULTS,
    LatencyServer,
    limited,
    machine,
    ratio,
    rss_mb,
    targets_markdown,
    timed,
    write_result,
)
from deliberate import RunConfig, Store, arun
from deliberate.tasks import load_suite
from deliberate.tasks.task import Suite, Task

DEFAULT_OUT = RESULTS / "concurrency.json"
TARGET_IN_FLIGHT = 1000


@dataclass(frozen=True, slots=True)
class Settings:
    levels: tuple[int, ...] = (10, 100, 250, 500, 1000, 2000)
    ttft_ms: float = 2000.0
    waves: int = 3  # tasks per level = waves × C


FULL = Settings()
QUICK = Settings(levels=(4, 32), ttft_ms=200.0, waves=2)


def suite_of(count: int, level: int) -> Suite:
    """``count`` tasks over the arithmetic problems, each prompt made unique (a tag the
    sim ignores when it matches the task) so that no request repeats another."""
    base = load_suite("arithmetic").tasks
    tasks = [Task(id=f"c{level}-{k}", prompt=f"{base[k % len(base)].prompt} (case {level}-{k})",
                  kind="math", answer=base[k % len(base)].answer) for k in range(count)]
    return Suite.of(f"concurrency-{level}", tasks)


class Memory:
    """Samples this process's resident memory while a level runs."""

    def __init__(self, every_s: float = 0.1) -> None:
        self.every_s = every_s
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            self.samples.append(rss_mb())
            await asyncio.sleep(self.every_s)

    async def __aenter__(self) -> Memory:
        self.samples = [rss_mb()]
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.samples.append(rss_mb())

    def summary(self) -> dict[str, float]:
        return {"start_mb": round(self.samples[0], 1), "peak_mb": round(max(self.samples), 1),
                "end_mb": round(self.samples[-1], 1),
                "growth_mb": round(self.samples[-1] - self.samples[0], 1)}


async def measured(srv: LatencyServer,
                   fn: Callable[[], Awaitable[Counter[str]]]) -> dict[str, Any]:
    """Run one pass; the server's counters and this process's CPU and memory around it.
    ``fn`` returns its errors by kind."""
    srv.reset_stats()
    server_cpu0 = srv.cpu_s()
    async with Memory() as mem:
        with timed() as t:
            errors = await fn()
    server_cpu1 = srv.cpu_s()
    st = srv.stats()
    calls = st["completed"]
    refused = st["rejected"] + st["invalid"] + st["injected_failures"]
    return {"calls": calls, "server_requests": st["requests"], "wall_s": round(t["wall_s"], 3),
            "cpu_s": round(t["cpu_s"], 3),
            "server_cpu_s": (None if server_cpu0 is None or server_cpu1 is None
                             else round(server_cpu1 - server_cpu0, 2)),
            "calls_per_s": round(calls / t["wall_s"], 1), "max_in_flight": st["max_in_flight"],
            "errors": sum(errors.values()) + refused,
            "error_kinds": dict(errors.most_common(3)), "memory": mem.summary()}


async def engine_level(srv: LatencyServer, c: int, s: Settings, tmp: Path) -> dict[str, Any]:
    suite = suite_of(s.waves * c, c)
    cfg = RunConfig(suite=suite.name, strategy="self_consistency", strategy_params={"n": 1},
                    model=f"openai:sim@{srv.base_url}", cache=True,
                    cache_path=str(tmp / "cache.db"), concurrency=c, max_inflight_calls=c,
                    grade_candidates=False, seed=c)

    async def go() -> Counter[str]:
        async with await Store.aopen(str(tmp / f"store-{c}.db")) as store:
            result = await arun(cfg, store=store, suite=suite)
        return Counter((a.error or "failed")[:120] for a in result.attempts
                       if a.status == "failed")

    return await measured(srv, go)


async def bare_level(srv: LatencyServer, c: int, s: Settings) -> dict[str, Any]:
    prompts = [t.prompt for t in suite_of(s.waves * c, c).tasks]
    client = AsyncOpenAI(base_url=srv.base_url, api_key="bench", max_retries=0,
                         http_client=DefaultAioHttpClient(
                             timeout=120, limits=httpx.Limits(max_connections=c,
                                                              max_keepalive_connections=c)))
    async def one(prompt: str) -> str | None:
        try:
            await client.chat.completions.create(
                model="sim", temperature=0.8, max_tokens=1024,
                messages=[{"role": "user", "content": prompt}])
        except Exception as exc:  # counted by kind: the baseline has no retries
            cause = exc.__cause__
            return f"{type(exc).__name__}" + (f" ({type(cause).__name__}: {cause})"[:120]
                                              if cause else "")
        return None

    async def go() -> Counter[str]:
        outcomes = await limited([one(p) for p in prompts], c)
        return Counter(x for x in outcomes if x is not None)

    try:
        return await measured(srv, go)
    finally:
        await client.close()


async def measure(s: Settings) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with LatencyServer(ttft_ms=s.ttft_ms) as srv, tempfile.TemporaryDirectory() as tmp:
        await bare_level(srv, 4, QUICK)  # warm-up: imports, first connections
        for c in s.levels:
            bare = await bare_level(srv, c, s)
            engine = await engine_level(srv, c, s, Path(tmp))
            ideal = c / (s.ttft_ms / 1000.0)
            rows.append({
                "concurrency": c, "tasks": s.waves * c, "ideal_calls_per_s": round(ideal, 1),
                "engine": engine, "bare": bare,
                "engine_over_bare_calls_per_s": ratio(engine["calls_per_s"],
                                                      bare["calls_per_s"]),
                "engine_over_ideal": ratio(engine["calls_per_s"], ideal),
                "bare_over_ideal": ratio(bare["calls_per_s"], ideal),
            })
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    s = QUICK if quick else FULL
    rows = asyncio.run(measure(s))
    clean = [r for r in rows if r["engine"]["errors"] == 0]
    best = max((r["engine"]["max_in_flight"] for r in clean), default=0)
    top = rows[-1]
    return {
        "benchmark": "concurrency",
        "machine": machine(),
        "config": {**asdict(s), "strategy": "self_consistency n=1 (one call per task)",
                   "cache": True, "store": "SQLite (temporary file)", "quick": quick},
        "baseline": {"what": "bare openai.AsyncOpenAI (aiohttp transport, connection limit C) "
                             "with C requests in flight, same request count"},
        "results": rows,
        "headline": {"max_in_flight_without_errors": best,
                     f"calls_per_s_at_{top['concurrency']}": top["engine"]["calls_per_s"],
                     f"engine_over_bare_at_{top['concurrency']}":
                         top["engine_over_bare_calls_per_s"]},
        "targets": [{
            "target": f"≥ {TARGET_IN_FLIGHT:,} model calls in flight on 2 cores without errors",
            "value": best, "limit": TARGET_IN_FLIGHT,
            "met": None if quick else best >= TARGET_IN_FLIGHT,
            "note": "the server's peak count of calls in flight, at the highest level "
                    "whose run had no error" + (" (quick run: levels too low to judge)"
                                                if quick else ""),
        }],
    }


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = ["## Concurrency: calls in flight, calls per second, memory", "",
             f"Server latency {cfg['ttft_ms']:.0f} ms per call; {cfg['waves']}·C tasks per level, "
             f"one call each. Baseline: {result['baseline']['what']}.", "",
             "| C | engine in flight | engine calls/s | bare calls/s | engine / bare | "
             "engine / ideal | errors (engine, bare) | engine peak RSS MiB | bare peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        e, b = r["engine"], r["bare"]
        lines.append(
            f"| {r['concurrency']} | {e['max_in_flight']} | {e['calls_per_s']:.0f} | "
            f"{b['calls_per_s']:.0f} | {r['engine_over_bare_calls_per_s']:.2f} | "
            f"{r['engine_over_ideal']:.2f} | {e['errors']}, {b['errors']} | "
            f"{e['memory']['peak_mb']:.0f} | {b['memory']['peak_mb']:.0f} |")
    lines += ["", *targets_markdown(result["targets"]), "",
              "Reproduce: `python -m bench.concurrency`"]
    return "\n".join(lines)


def show(result: dict[str, Any], console: Console) -> None:
    table = Table(title="Calls in flight and per second")
    for col in ("C", "engine in flight", "engine calls/s", "bare calls/s", "engine/bare",
                "engine/ideal", "errors e,b", "engine peak MiB"):
        table.add_column(col, justify="right")
    for r in result["results"]:
        e, b = r["engine"], r["bare"]
        table.add_row(str(r["concurrency"]), str(e["max_in_flight"]), f"{e['calls_per_s']:.0f}",
                      f"{b['calls_per_s']:.0f}", f"{r['engine_over_bare_calls_per_s']:.2f}",
                      f"{r['engine_over_ideal']:.2f}", f"{e['errors']},{b['errors']}",
                      f"{e['memory']['peak_mb']:.0f}")
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.concurrency",
                                description="Calls in flight and per second up to C=2,000.")
    p.add_argument("--quick", action="store_true", help="a small run that checks the script")
    p.add_argument("--out", type=Path, default=None,
                   help="result JSON (full run default: bench/results/concurrency.json)")
    args = p.parse_args(argv)
    result = run(args.quick)
    write_result(result, args.out or (None if args.quick else DEFAULT_OUT))
    show(result, Console())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
