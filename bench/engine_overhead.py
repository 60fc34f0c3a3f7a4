"""Engine overhead: the CPU the engine spends per model call, against a bare client.

Against a zero-latency server (``bench.latency_server`` in its own process, so its CPU is
not counted), three clients make the same model calls:

- **bare** (the baseline): an ``openai.AsyncOpenAI`` loop with aiohttp's transport, as a
  careful user would write it, sending the engine's recorded request bodies at the same
  concurrency;
- **backend**: deliberate's ``OpenAIChatModel.complete`` on the same requests (the HTTP
  client and the mapping to our types, no middleware);
- **engine**: ``deliberate.arun`` running a strategy over a suite with the response
  cache and the store on: strategy, roles, middleware (retries, budgets, cache,
  journal), store writes and tree updates, on top of the backend.

Each client's own CPU (user + system, all threads) is divided by the calls the server
answered. The engine pass is repeated with fresh seeds (every call misses the cache)
and the median repeat stands; each repeat's calls are then replayed by backend and bare.
``overhead`` is engine minus bare: what the engine costs beyond any client.

    python -m bench.engine_overhead            # writes bench/results/engine_overhead.json
    python -m bench.engine_overhead --quick --out /tmp/eo.json
    python -m bench.engine_overhead --profile /tmp/eo.html   # pyinstrument, engine pass
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI, DefaultAioHttpClient
from rich.console import Console
from rich.table import Table

from bench._harness import (
    RESULTS,
    LatencyServer,
    limited,
    machine,
    ratio,
    targets_markdown,
    timed,
    write_result,
)
from deliberate import RunConfig, Store, arun
from deliberate.models.base import ChatRequest, Message
from deliberate.models.openai_backend import OpenAIChatModel

DEFAULT_OUT = RESULTS / "engine_overhead.json"
TARGET_MS = 1.0


@dataclass(frozen=True, slots=True)
class Settings:
    """What one invocation measures."""

    workloads: tuple[tuple[str, str], ...] = (
        ("best_of_n", '{"n": 4}'), ("refine", '{"max_rounds": 2, "accept_score": null}'),
        ("mcts", '{"iterations": 8, "k": 2}'))
    tasks: int = 30
    repeats: int = 9
    concurrency: int = 8


FULL = Settings()
QUICK = Settings(workloads=(("best_of_n", '{"n": 2}'),), tasks=4, repeats=2, concurrency=4)


@dataclass(slots=True)
class Pass:
    """One client's pass over one set of calls."""

    calls: int
    cpu_s: float
    wall_s: float

    @property
    def cpu_ms_per_call(self) -> float:
        return 1000.0 * self.cpu_s / max(self.calls, 1)


def body_of(request: dict[str, Any]) -> dict[str, Any]:
    """The HTTP body the engine sent for a recorded request (see openai_backend)."""
    body: dict[str, Any] = {"model": "sim", "messages": request["messages"],
                            "temperature": request["temperature"]}
    if request.get("n", 1) != 1:
        body["n"] = request["n"]
    for key in ("top_p", "max_tokens", "seed", "response_format"):
        if request.get(key) is not None:
            body[key] = request[key]
    if request.get("stop"):
        body["stop"] = request["stop"]
    return body


def chat_request(request: dict[str, Any]) -> ChatRequest:
    return ChatRequest(
        messages=tuple(Message(m["role"], m["content"]) for m in request["messages"]),
        temperature=request["temperature"], top_p=request.get("top_p"),
        max_tokens=request.get("max_tokens"), stop=tuple(request.get("stop") or ()),
        seed=request.get("seed"), n=request.get("n", 1),
        sample_offset=request.get("sample_offset", 0))


async def engine_pass(srv: LatencyServer, s: Settings, strategy: str, params: str,
                      seed: int, store: Store, cache_path: Path
                      ) -> tuple[Pass, list[dict[str, Any]]]:
    import json

    cfg = RunConfig(suite="arithmetic", limit=s.tasks, strategy=strategy,
                    strategy_params=json.loads(params), model=f"openai:sim@{srv.base_url}",
                    cache=True, cache_path=str(cache_path), seed=seed,
                    concurrency=s.concurrency, grade_candidates=False)
    srv.reset_stats()
    with timed() as t:
        result = await arun(cfg, store=store)
    answered = srv.stats()["completed"]
    requests: list[dict[str, Any]] = []
    for attempt in result.attempts:
        calls = await store.load_calls(result.run_id, attempt.task_id)
        requests += [c.request for c in calls.values() if not c.cached and c.error is None]
    return Pass(answered, t["cpu_s"], t["wall_s"]), requests


async def bare_pass(srv: LatencyServer, client: AsyncOpenAI, requests: list[dict[str, Any]],
                    c: int) -> Pass:
    bodies = [body_of(r) for r in requests]
    srv.reset_stats()
    with timed() as t:
        await limited([client.chat.completions.create(**b) for b in bodies], c)
    return Pass(srv.stats()["completed"], t["cpu_s"], t["wall_s"])


async def backend_pass(srv: LatencyServer, model: OpenAIChatModel,
                       requests: list[dict[str, Any]], c: int) -> Pass:
    reqs = [chat_request(r) for r in requests]
    srv.reset_stats()
    with timed() as t:
        await limited([model.complete(r) for r in reqs], c)
    return Pass(srv.stats()["completed"], t["cpu_s"], t["wall_s"])


async def measure(s: Settings, profile: Path | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with LatencyServer(ttft_ms=0) as srv, tempfile.TemporaryDirectory() as tmp:
        # Both comparison clients are built once, as a long-lived program would; the
        # engine builds its backend per run, and that cost stays in its figures.
        client = AsyncOpenAI(base_url=srv.base_url, api_key="bench", max_retries=0,
                             http_client=DefaultAioHttpClient(timeout=60))
        model = OpenAIChatModel("sim", base_url=srv.base_url, api_key="bench")
        try:
            async with await Store.aopen(str(Path(tmp) / "store.db")) as store:
                # warm-up: imports, first connections, the cache file's schema
                _, warm = await engine_pass(srv, QUICK, "best_of_n", '{"n": 2}', 10_000, store,
                                            Path(tmp) / "cache.db")
                await bare_pass(srv, client, warm, s.concurrency)
                await backend_pass(srv, model, warm, s.concurrency)
                for strategy, params in s.workloads:
                    per: dict[str, list[Pass]] = {"engine": [], "backend": [], "bare": []}
                    for rep in range(s.repeats):
                        profiler = _start_profile(profile) if rep == 0 else None
                        engine, requests = await engine_pass(
                            srv, s, strategy, params, rep, store, Path(tmp) / "cache.db")
                        if profiler is not None:
                            _stop_profile(profiler, profile, strategy)
                        per["engine"].append(engine)
                        per["backend"].append(
                            await backend_pass(srv, model, requests, s.concurrency))
                        per["bare"].append(await bare_pass(srv, client, requests, s.concurrency))
                    rows.append(row(strategy, params, per))
        finally:
            await client.close()
            await model.aclose()
    return rows


def _start_profile(path: Path | None) -> Any:
    if path is None:
        return None
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="enabled")
    profiler.start()
    return profiler


def _stop_profile(profiler: Any, path: Path | None, strategy: str) -> None:
    profiler.stop()
    assert path is not None
    out = path.with_name(f"{path.stem}-{strategy}{path.suffix}")
    if out.suffix == ".html":
        out.write_text(profiler.output_html())
    else:
        out.write_text(profiler.output_text(unicode=True, show_all=False))


def row(strategy: str, params: str, per: dict[str, list[Pass]]) -> dict[str, Any]:
    ms = {k: [p.cpu_ms_per_call for p in v] for k, v in per.items()}
    med = {k: statistics.median(v) for k, v in ms.items()}
    return {
        "strategy": strategy, "params": params,
        "calls_per_repeat": [p.calls for p in per["engine"]],
        "cpu_ms_per_call": {k: round(v, 4) for k, v in med.items()},
        "cpu_ms_per_call_repeats": {k: [round(x, 4) for x in v] for k, v in ms.items()},
        "overhead_ms_per_call": round(med["engine"] - med["bare"], 4),
        # the engine's layers above HTTP alone: strategy, roles, middleware, store
        "above_backend_ms_per_call": round(med["engine"] - med["backend"], 4),
        "engine_over_bare": ratio(med["engine"], med["bare"]),
        "backend_over_bare": ratio(med["backend"], med["bare"]),
        "passes": {k: [asdict(p) for p in v] for k, v in per.items()},
    }


def run(quick: bool = False, profile: Path | None = None) -> dict[str, Any]:
    s = QUICK if quick else FULL
    rows = asyncio.run(measure(s, profile))
    overheads = [r["overhead_ms_per_call"] for r in rows]
    worst = max(overheads)
    bare = statistics.median(r["cpu_ms_per_call"]["bare"] for r in rows)
    return {
        "benchmark": "engine_overhead",
        "machine": machine(),
        "config": {**asdict(s), "server": {"ttft_ms": 0, "tokens_per_s": 0},
                   "cache": True, "store": "SQLite (temporary file)",
                   "suite": "arithmetic", "quick": quick},
        "baseline": {"what": "bare openai.AsyncOpenAI (aiohttp transport) sending the engine's "
                             "recorded request bodies at the same concurrency",
                     "cpu_ms_per_call": round(bare, 4)},
        "results": rows,
        "headline": {f"{r['strategy']}_engine_over_bare": r["engine_over_bare"] for r in rows}
        | {f"{r['strategy']}_overhead_ms": r["overhead_ms_per_call"] for r in rows},
        "targets": [{
            "target": "engine CPU overhead ≤ 1 ms per model call (median, cache and store on)",
            "value": worst, "limit": TARGET_MS, "met": worst <= TARGET_MS,
            "note": "worst workload's median (engine − bare) CPU per call",
        }],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = ["## Engine overhead: CPU per model call", "",
             f"Baseline: {result['baseline']['what']}; zero-latency server in its own process.",
             "", "| workload | calls/repeat | bare ms | backend ms | engine ms | engine − bare "
             "ms | engine − backend ms | engine / bare |", "|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        c = r["cpu_ms_per_call"]
        lines.append(f"| {r['strategy']} {r['params']} | {statistics.median(r['calls_per_repeat']):.0f}"
                     f" | {c['bare']:.3f} | {c['backend']:.3f} | {c['engine']:.3f} | "
                     f"{r['overhead_ms_per_call']:.3f} | {r['above_backend_ms_per_call']:.3f} | "
                     f"{r['engine_over_bare']:.2f}× |")
    lines += ["", "*engine − bare* is the target's measure: what a run costs beyond the same "
              "calls from the bare client. *engine − backend* is the engine's layers above HTTP "
              "alone (strategy, roles, middleware, cache, store, tree); the difference between "
              "the two is that deliberate's backend spends less CPU per call than the openai "
              "SDK's `create`.", "", *targets_markdown(result["targets"]), "",
              "Reproduce: `python -m bench.engine_overhead`"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engine_overhead",
                                description="CPU per model call: engine vs a bare client.")
    p.add_argument("--quick", action="store_true", help="a small run that checks the script")
    p.add_argument("--out", type=Path, default=None, help="result JSON (full run: "
                   f"{DEFAULT_OUT.relative_to(RESULTS.parent.parent)})")
    p.add_argument("--profile", type=Path, default=None,
                   help="write a pyinstrument profile of each workload's first engine pass "
                        "(.html or .txt)")
    args = p.parse_args(argv)
    result = run(args.quick, args.profile)
    write_result(result, args.out or (None if args.quick else DEFAULT_OUT))
    show(result, Console())
    return 0


def show(result: dict[str, Any], console: Console) -> None:
    table = Table(title="CPU ms per model call (median of repeats)")
    for col in ("workload", "bare", "backend", "engine", "engine − bare", "engine/bare"):
        table.add_column(col, justify="right" if col != "workload" else "left")
    for r in result["results"]:
        c = r["cpu_ms_per_call"]
        table.add_row(r["strategy"], f"{c['bare']:.3f}", f"{c['backend']:.3f}",
                      f"{c['engine']:.3f}", f"{r['overhead_ms_per_call']:.3f}",
                      f"{r['engine_over_bare']:.2f}×")
    console.print(table)
    for line in targets_markdown(result["targets"]):
        console.print(line)


if __name__ == "__main__":
    raise SystemExit(main())
