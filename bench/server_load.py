"""Many concurrent strategy requests through ``deliberate serve``: errors and added latency.

Issue 8, "done when" 5: 200 concurrent strategy requests against a fixed-latency
upstream complete without errors, and the server's added latency per request is
reported. This script measures it the way a user meets the server:

- the **upstream** is the sim behind an OpenAI-compatible HTTP server
  (``SimServer``) in a child process, answering every request after ``ttft_ms``
  (``tokens_per_s=0``: output length costs nothing; no faults);
- the **server** is ``deliberate serve`` in another child process (the CLI, with
  its defaults: SQLite store, no response cache), its one upstream
  ``openai:sim@<upstream>/v1``;
- the **client** is the official ``openai`` client (``AsyncOpenAI``) in this
  process, sending ``--requests`` chat requests for the model
  ``best_of_n:n=4/up`` with at most C in flight, each for a different arithmetic
  task and seed, and timing each request from send to the whole response.

The **baseline** is the same strategy on the same tasks and seeds run directly
through the engine in this process (``deliberate.arun`` with a one-task suite and
one shared model stack for the upstream, which is what the server does per
request), with at most C runs in flight, each timed around ``arun``. It pays
everything a run pays (engine set-up, store writes, the journal, the upstream)
and nothing of the server's: HTTP in and out, request parsing and validation,
FastAPI, the openai client on the caller's side.

**Added latency** per request is the server's wall time minus the baseline's for
the same request (same task, same seed: the same calls). Both are also compared
with the **critical path** of the strategy: best-of-N makes one generation call
(N samples in one request) and then N judge calls in parallel, two upstream
latencies, ``2 × ttft``. At high concurrency both sides also queue for the CPU
(two cores run the upstream, the server and the client), which shows in both the
baseline and the server and is reported, not hidden: ``wall / critical_path``.

Levels of concurrency C are measured in turn (``--levels``, default 1, 50, 200;
C = 1 sends ``--sequential`` requests one at a time to see the per-request cost
without queueing), the baseline and the server alternately, ``--repeats`` times,
after an unmeasured warm-up of each. Errors of either kind are counted; the run
fails (exit 1) if any request errs.

``python -m bench.server_load`` writes ``bench/results/server_load.json``;
``--quick`` (levels 1 and 8, a few requests, 20 ms) is what the test runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI, DefaultAioHttpClient

from bench._harness import RESULTS, limited, machine, process_cpu_s
from deliberate.config import RunConfig
from deliberate.engine.runner import arun, new_run_id
from deliberate.evals.stats import paired_difference
from deliberate.models.middleware import ConcurrencyLimitModel
from deliberate.models.openai_backend import OpenAIChatModel
from deliberate.server.app import SharedUpstream
from deliberate.server.openai_api import TASK_ID
from deliberate.store import Store
from deliberate.strategies.base import Strategy, available_strategies
from deliberate.tasks import Suite, Task, load_suite

DEFAULT_OUT = RESULTS / "server_load.json"

UPSTREAM = r"""
import json, sys
from deliberate.models.sim import SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.tasks import load_suite
with SimServer(load_suite("arithmetic"), SimParams(), ServerConfig(**json.loads(sys.argv[1]))) as s:
    print(s.url, flush=True)
    sys.stdin.read()
"""


@dataclass(frozen=True, slots=True)
class Settings:
    levels: tuple[int, ...] = (1, 50, 200)
    requests: int = 200
    sequential: int = 20
    ttft_ms: float = 100.0
    strategy: str = "best_of_n"
    n: int = 4
    repeats: int = 2
    warmup: int = 4


@dataclass(slots=True)
class Sample:
    """Per request (keyed by its number): wall time and tokens; and the errors."""

    wall_s: dict[int, float] = field(default_factory=dict)
    usage: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # process → CPU seconds used

    def add_cpu(self, name: str, seconds: float | None) -> None:
        if seconds is not None:
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + seconds


def cpu_now(pids: dict[str, int]) -> dict[str, float | None]:
    out: dict[str, float | None] = {name: process_cpu_s(pid) for name, pid in pids.items()}
    out["bench"] = time.process_time()
    return out


def pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def spread(xs: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "p50": pct(xs, 0.5), "p95": pct(xs, 0.95),
            "max": max(xs), "min": min(xs)}


# ------------------------------------------------------------------ processes


def start(cmd: list[str], pattern: str, env: dict[str, str] | None = None
          ) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(pattern, line)
    if m is None:
        proc.kill()
        raise RuntimeError(f"{cmd[:4]} did not start: {line!r}")
    return proc, m.group(0)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# ------------------------------------------------------------------ one request, two ways


def question(k: int, tasks: Sequence[Task]) -> str:
    return tasks[k % len(tasks)].prompt


async def through_server(client: AsyncOpenAI, model: str, k: int, tasks: Sequence[Task],
                         out: Sample) -> None:
    started = time.perf_counter()
    try:
        reply = await client.chat.completions.create(
            model=model, seed=1000 + k,
            messages=[{"role": "user", "content": question(k, tasks)}])
        out.wall_s[k] = time.perf_counter() - started
        out.usage[k] = reply.usage.total_tokens if reply.usage else 0
    except Exception as exc:  # counted, not hidden: the run fails on any
        out.errors.append(f"{type(exc).__name__}: {exc}")


async def direct(spec: str, shared: SharedUpstream, store: Store, bs: Settings, k: int,
                 tasks: Sequence[Task], out: Sample, strategies: dict[str, type[Strategy]]
                 ) -> None:
    """What the server does for one request, without the server (the strategy classes
    are found once, as the server finds them once)."""
    prompt = question(k, tasks)
    task = Task(id=TASK_ID, prompt=prompt, kind="text",
                metadata={"messages": [{"role": "user", "content": prompt}]})
    cfg = RunConfig(suite="serve", strategy=bs.strategy, strategy_params={"n": bs.n},
                    model=spec, cache=False, seed=1000 + k, grade_candidates=False,
                    task_budget={"max_tokens": 200_000, "max_calls": 200, "max_wall_s": 300})
    started = time.perf_counter()
    try:
        res = await arun(cfg, run_id=new_run_id() + f"-{k}", store=store,
                         models={spec: shared}, suite=Suite.of("serve", [task]),
                         strategy=make(strategies[cfg.strategy], cfg.strategy_params))
        a = res.attempts[0]
        if a.status == "failed":
            raise RuntimeError(a.error)
        out.wall_s[k] = time.perf_counter() - started
        out.usage[k] = a.prompt_tokens + a.completion_tokens
    except Exception as exc:
        out.errors.append(f"{type(exc).__name__}: {exc}")


def make(cls: type[Strategy], params: dict[str, Any]) -> Strategy:
    return cls(cls.Config.model_validate(params))


# ------------------------------------------------------------------ the benchmark


async def measure(bs: Settings, upstream_url: str, server_url: str, store_path: Path,
                  pids: dict[str, int]) -> list[dict[str, Any]]:
    tasks = load_suite("arithmetic").tasks
    spec = f"openai:sim@{upstream_url}/v1"
    backend = OpenAIChatModel("sim", base_url=f"{upstream_url}/v1", timeout_s=120)
    shared = SharedUpstream(ConcurrencyLimitModel(backend, 256))
    model = f"{bs.strategy}:n={bs.n}/up"
    # aiohttp's transport, as the engine's backend uses: httpx's own pool costs the
    # client milliseconds of CPU per request with hundreds of connections open, CPU the
    # server's process would then compete for on a small machine
    http = DefaultAioHttpClient(timeout=300, limits=httpx.Limits(
        max_connections=1000, max_keepalive_connections=1000))
    client = AsyncOpenAI(base_url=f"{server_url}/v1", api_key="bench", max_retries=0,
                         http_client=http)
    rows: list[dict[str, Any]] = []
    strategies = available_strategies()
    try:
        async with await Store.aopen(str(store_path)) as store:
            warm_d, warm_s = Sample(), Sample()
            await limited([direct(spec, shared, store, bs, 10_000 + k, tasks, warm_d, strategies)
                           for k in range(bs.warmup)], bs.warmup)
            await limited([through_server(client, model, 10_000 + k, tasks, warm_s)
                           for k in range(bs.warmup)], bs.warmup)
            for c in bs.levels:
                count = bs.sequential if c == 1 else bs.requests
                d, s = Sample(), Sample()
                d_walls: list[float] = []
                s_walls: list[float] = []
                for rep in range(bs.repeats):
                    ks = range(rep * 100_000, rep * 100_000 + count)
                    await batch(d, d_walls, pids, c, [
                        direct(spec, shared, store, bs, k, tasks, d, strategies) for k in ks])
                    await batch(s, s_walls, pids, c, [
                        through_server(client, model, k, tasks, s) for k in ks])
                rows.append(level_row(c, count, bs, d, s, d_walls, s_walls))
    finally:
        await client.close()
        await backend.aclose()
    return rows


async def batch(sample: Sample, walls: list[float], pids: dict[str, int], c: int,
                jobs: list[Any]) -> None:
    """Run ``jobs`` with at most ``c`` in flight; add the batch's wall and CPU times."""
    cpu0, t0 = cpu_now(pids), time.perf_counter()
    await limited(jobs, c)
    walls.append(time.perf_counter() - t0)
    cpu1 = cpu_now(pids)
    for name, before in cpu0.items():
        after = cpu1[name]
        sample.add_cpu(name, None if before is None or after is None else after - before)


def level_row(c: int, count: int, bs: Settings, d: Sample, s: Sample,
              d_walls: list[float], s_walls: list[float]) -> dict[str, Any]:
    floor = 2 * bs.ttft_ms / 1000.0
    row: dict[str, Any] = {
        "concurrency": c, "requests": count * bs.repeats,
        "errors": {"server": len(s.errors), "direct": len(d.errors)},
        "error_examples": (s.errors + d.errors)[:3],
        "critical_path_s": floor,
        "batch_wall_s": {"server": s_walls, "direct": d_walls},
    }
    both = sorted(set(s.wall_s) & set(d.wall_s))
    if both:
        sw, dw = [s.wall_s[k] for k in both], [d.wall_s[k] for k in both]
        sv, dv = spread(sw), spread(dw)
        diff = paired_difference(sw, dw, seed=c)
        done = len(both)
        row.update({
            "server_s": sv, "direct_s": dv,
            # per request: the server's wall minus the engine's for the same request
            "added_s": {"mean": diff.value, "ci95": [diff.low, diff.high],
                        "p50": pct([a - b for a, b in zip(sw, dw, strict=True)], 0.5)},
            "server_over_direct": {k: sv[k] / dv[k] for k in ("mean", "p50", "p95")},
            "server_over_critical_path": sv["p50"] / floor,
            "direct_over_critical_path": dv["p50"] / floor,
            "throughput_rps": {"server": count / statistics.fmean(s_walls),
                               "direct": count / statistics.fmean(d_walls)},
            "cpu_ms_per_request": {
                "server": {"server_process": 1000 * s.cpu_s.get("server", 0.0) / done,
                           "client": 1000 * s.cpu_s.get("bench", 0.0) / done,
                           "upstream": 1000 * s.cpu_s.get("upstream", 0.0) / done},
                "direct": {"engine": 1000 * d.cpu_s.get("bench", 0.0) / done,
                           "upstream": 1000 * d.cpu_s.get("upstream", 0.0) / done}},
            "same_usage": all(s.usage[k] == d.usage[k] for k in both),
        })
    return row


def run(bs: Settings) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="server-load-") as tmp:
        up_cfg = json.dumps({"ttft_ms": bs.ttft_ms, "tokens_per_s": 0})
        upstream, up_url = start([sys.executable, "-c", UPSTREAM, up_cfg],
                                 r"http://127\.0\.0\.1:\d+")
        try:
            env = {**os.environ, "DELIBERATE_HOME": tmp}
            server, srv_url = start(
                [sys.executable, "-m", "deliberate", "serve", "--port", "0",
                 "--store", str(Path(tmp) / "served.db"),
                 "--upstream", f"up=openai:sim@{up_url}/v1?timeout=120"],
                r"http://127\.0\.0\.1:\d+", env)
            try:
                started = time.perf_counter()
                rows = asyncio.run(measure(bs, up_url, srv_url, Path(tmp) / "direct.db",
                                           {"server": server.pid, "upstream": upstream.pid}))
                wall = time.perf_counter() - started
            finally:
                stop(server)
        finally:
            stop(upstream)
    return {"benchmark": "server_load", "settings": {
        "levels": list(bs.levels), "requests": bs.requests, "sequential": bs.sequential,
        "ttft_ms": bs.ttft_ms, "model": f"{bs.strategy}:n={bs.n}/up",
        "repeats": bs.repeats, "warmup": bs.warmup},
        "machine": machine(), "wall_s": wall, "results": rows}


def report(result: dict[str, Any]) -> str:
    lines = [f"{'C':>4} {'reqs':>5} {'err':>4} {'server p50':>11} {'direct p50':>11} "
             f"{'added mean [95% CI]':>26} {'srv/dir':>8} {'srv/floor':>9} "
             f"{'cpu ms/req srv+cli / eng':>25}"]
    for r in result["results"]:
        err = r["errors"]["server"] + r["errors"]["direct"]
        if "server_s" not in r:
            lines.append(f"{r['concurrency']:>4} {r['requests']:>5} {err:>4}  (no successes)")
            continue
        a, cpu = r["added_s"], r["cpu_ms_per_request"]
        added = (f"{a['mean'] * 1000:.1f}ms [{a['ci95'][0] * 1000:.1f}, "
                 f"{a['ci95'][1] * 1000:.1f}]")
        cpus = (f"{cpu['server']['server_process']:.1f}+{cpu['server']['client']:.1f} / "
                f"{cpu['direct']['engine']:.1f}")
        lines.append(
            f"{r['concurrency']:>4} {r['requests']:>5} {err:>4} "
            f"{r['server_s']['p50'] * 1000:>9.1f}ms {r['direct_s']['p50'] * 1000:>9.1f}ms "
            f"{added:>26} {r['server_over_direct']['p50']:>8.2f} "
            f"{r['server_over_critical_path']:>9.2f} {cpus:>25}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Concurrent strategy requests through "
                                 "deliberate serve: errors and added latency")
    ap.add_argument("--quick", action="store_true", help="a small run (what the test runs)")
    ap.add_argument("--levels", help="concurrency levels, e.g. 1,50,200")
    ap.add_argument("--requests", type=int, help="requests per level (C > 1)")
    ap.add_argument("--sequential", type=int, help="requests at C = 1")
    ap.add_argument("--ttft-ms", type=float, help="the upstream's latency per call")
    ap.add_argument("--repeats", type=int, help="rounds of each level")
    ap.add_argument("--out", type=Path, help="JSON output (default: bench/results/"
                    "server_load.json for a full run; --quick writes only with --out)")
    args = ap.parse_args(argv)
    bs = (Settings(levels=(1, 8), requests=8, sequential=3, ttft_ms=20, repeats=1, warmup=1)
          if args.quick else Settings())
    updates: dict[str, Any] = {}
    if args.levels:
        updates["levels"] = tuple(int(x) for x in args.levels.split(","))
    for name in ("requests", "sequential", "ttft_ms", "repeats"):
        if getattr(args, name) is not None:
            updates[name] = getattr(args, name)
    if updates:
        bs = replace(bs, **updates)
    result = run(bs)
    out = args.out or (None if args.quick else DEFAULT_OUT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    errors = sum(r["errors"]["server"] + r["errors"]["direct"] for r in result["results"])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
