"""Parallel MCTS rollouts against a fixed-latency server: wall time as P grows.

Issue 4 asks that with P rollouts in flight the wall time of a search falls close
to 1/P of the sequential one. This script measures it end to end, the way a user
runs a search: the ``mcts`` strategy through the engine (``deliberate.arun``, as
``deliberate run`` does) with the model string ``openai:sim@<server>/v1``, so every
request goes through the real ``openai`` client path to the sim model behind an
HTTP server on loopback that answers after a fixed delay (``ttft_ms``;
``tokens_per_s=0`` so output length costs nothing; no faults).

Set-up, chosen so that only P varies:

- the server runs in a child process, so its CPU work does not share the engine's
  GIL (a real server is another process too);
- tasks run one after another (``concurrency=1``): parallelism comes only from P;
- ``threshold`` and ``finished`` are off and ``max_depth`` is deep enough that the
  tree never runs out, so every search makes exactly ``iterations`` rollouts;
- the response cache is off and each run has its own temporary SQLite store;
  ``max_inflight_calls`` is far above P·k, so no engine limit caps concurrency;
- one small unmeasured warm-up run first (imports, templates, connections); each
  P is measured ``repeats`` times (P=1, 2, …, then again) and the run with the
  median wall time stands for P. Every ratio is against P=1 of the same invocation.

Two departures from a plain ``SimServer`` + ``openai:sim@…`` run, both switchable:

- *Draft tags* (off with ``--plain-sim``). The sim writes few distinct texts for an
  arithmetic task, so most requests of a search (the value of a candidate seen
  before, the same refinement asked again) are identical, and the run's journal
  answers them without reaching the server: in a 64-rollout search only about 15
  of 382 requests did. A real model at temperature 0.8 rarely repeats itself. The
  backend is wrapped (where the backend sits, under all of the engine's
  middleware) so that each generated or refined candidate starts with a line
  ``Draft <8 letters>.`` derived from its request and sample index: every later
  request about it is distinct and reaches the server; runs stay deterministic
  and answer extraction is unaffected (letters only, first line).
- *Nagle off.* The server's socket is made with IPPROTO_TCP, so asyncio turns
  Nagle's algorithm off on accepted connections. ``SimServer`` did not until this
  benchmark found it (each kept-alive response then waited ~40 ms for the client's
  delayed ACK); every server of ours now binds through ``deliberate.serving.bind``.

The critical path. A rollout is one expansion (the k children's calls in
parallel, one latency) then the valuation of its children (again in parallel, one
latency), so it costs about ``2 × ttft``. A rollout can only expand a node some
earlier rollout created: read back from the stored tree, each rollout (the
expansion of node X; mcts expands a node once) depends on the rollout that
created X (the expansion of X's parent); the root's expansion depends on nothing.
Those dependencies form a forest over the rollouts the search actually made. Two
wave counts come from it, in units of one rollout's latency:

- ``critical_path_waves``: the fewest rounds in which *any* scheduler with at
  most P rollouts in flight could have made this same set of expansions: the
  optimal makespan of unit tasks with out-forest precedence on P machines,
  computed exactly by Hu's highest-level-first rule on the reversed forest (an
  in-forest, where Hu's rule is optimal; a schedule reversed in time stays
  valid). It includes the ramp-up (only the root can be expanded at first, then
  only as many leaves as exist) and the search's depth.
  ``lower_bound_s = critical_path_waves × 2 × ttft``, and
  ``bound_ratio = critical_path_waves(P) / critical_path_waves(1)`` is the best
  wall(P)/wall(1) this search allows.
- ``inorder_waves``: the same forest replayed under the engine's own rules:
  rollouts launch in their recorded order (``meta["rollout"]``), at most P in
  flight, each after the rollout that created its node has been folded back, and
  results are folded back in launch order (what keeps the search independent of
  latencies). The gap between the two is the price of those rules.

``wall / lower_bound`` above 1 is everything else: per-call latency above
``ttft`` (HTTP, the sim's own work), the engine's and the client's CPU per call,
selection stalling when every open leaf it reaches is in flight, repair calls.
``engine_cpu_s`` and ``server_cpu_s`` (Linux) say which process was busy.

Diagnostics (full run; ``--no-diagnostics`` skips them), each at the largest P:
all tasks at once (more calls in flight); the sim in the engine's process behind
the same fixed delay, with no HTTP at all, against its own P=1 (is the engine,
i.e. search, journal, store and budget, the bottleneck?); and the openai client
over an aiohttp transport instead of httpx's own (how much of the client's CPU
per call is httpx's connection pool, which scans every connection, with a
``poll()`` each, whenever it places a request).

Run ``python -m bench.parallel_rollouts`` (full; writes
``bench/results/parallel_rollouts.json``) or ``--quick`` (small, for the test;
writes only where ``--out`` says). ``--help`` lists the knobs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import httpx
from rich.console import Console
from rich.table import Table

from bench._harness import RESULTS, load_average, machine, process_cpu_s
from deliberate import RunConfig, Store, arun
from deliberate.models.base import ChatModel, ChatRequest, ChatResponse, ModelWrapper
from deliberate.models.openai_backend import OpenAIChatModel
from deliberate.models.registry import build_model
from deliberate.models.sim import SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.tasks import load_suite
from deliberate.tree import ModelCallRecord, NodeRecord

DEFAULT_OUT = RESULTS / "parallel_rollouts.json"
SUITE = "arithmetic"
CANDIDATE_ROLES = frozenset({"generator", "refiner"})
Transport = Literal["httpx", "aiohttp", "in_process"]


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What one invocation measures."""

    ps: tuple[int, ...] = (1, 2, 4, 8, 16)
    tasks: int = 3
    iterations: int = 128
    k: int = 3
    max_depth: int = 16
    ttft_ms: float = 50.0
    repeats: int = 3
    seed: int = 0
    diagnostics: bool = True
    draft_tags: bool = True

    def mcts_params(self, p: int) -> dict[str, Any]:
        return {"iterations": self.iterations, "k": self.k, "max_depth": self.max_depth,
                "parallel": p, "threshold": None, "finished": None}


FULL = BenchConfig()
QUICK = BenchConfig(ps=(1, 4), tasks=2, iterations=8, ttft_ms=20.0, repeats=1,
                    diagnostics=False)


# ------------------------------------------------------------------ the server


def _serve(server_config: dict[str, Any], conn: Connection) -> None:
    """Child process: serve the sim until told to stop."""
    cfg = ServerConfig.model_validate(server_config)
    with SimServer(load_suite(SUITE), SimParams(), cfg) as srv:
        conn.send(srv.base_url)
        conn.recv()


class ServerProcess:
    """The sim server in a child process (its CPU must not share the engine's GIL)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(config.model_dump(), child),
                                 daemon=True)
        self.base_url = ""

    def __enter__(self) -> ServerProcess:
        self._proc.start()
        if not self._conn.poll(60):
            self._proc.kill()
            raise RuntimeError("the sim server did not start within 60 s")
        self.base_url = str(self._conn.recv())
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def reset_stats(self) -> None:
        httpx.post(self.root_url + "/stats/reset").raise_for_status()

    def stats(self) -> dict[str, int]:
        r = httpx.get(self.root_url + "/stats")
        r.raise_for_status()
        return dict(r.json())

    def cpu_s(self) -> float | None:
        """CPU seconds the server process has used (Linux), else None."""
        return None if self._proc.pid is None else process_cpu_s(self._proc.pid)


# ------------------------------------------------------------------ the model


class DraftTags(ModelWrapper):
    """Starts every candidate the server writes with a tag unique to its request and
    sample, so that no two candidates (and no two later requests about them) are
    the same. See the module docstring for why."""

    async def complete(self, request: ChatRequest) -> ChatResponse:
        resp = await self.inner.complete(request)
        if request.tags.get("role") not in CANDIDATE_ROLES:
            return resp
        # The request alone, not the model id: that holds the server's URL, whose port
        # changes every run, and tags (so every later request) would change with it.
        prefix = request.prefix_key("draft")
        resp.completions = [
            dataclasses.replace(c, text=f"Draft {draft_tag(prefix, c.sample_index)}.\n{c.text}")
            for c in resp.completions
        ]
        return resp


def draft_tag(prefix: str, sample_index: int) -> str:
    """Eight letters from the request's hash and the sample index (no digits: answer
    extraction must not see them)."""
    digest = int(hashlib.sha256(f"{prefix}#{sample_index}".encode()).hexdigest()[:16], 16)
    letters = []
    for _ in range(8):
        digest, r = divmod(digest, 26)
        letters.append(chr(ord("a") + r))
    return "".join(letters)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx requests sent with aiohttp (diagnostic: httpx's own pool scans every
    connection, with a poll() each, on every request it places)."""

    def __init__(self) -> None:
        self._session: Any = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        skip = {"host", "content-length", "accept-encoding", "connection"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        body = await request.aread()
        async with self._session.request(request.method, str(request.url), headers=headers,
                                         data=body) as r:
            content = await r.read()
            drop = {"content-encoding", "transfer-encoding", "content-length"}
            out = [(k, v) for k, v in r.headers.items() if k.lower() not in drop]
        return httpx.Response(r.status, headers=out, content=content)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class InProcessLatency(ModelWrapper):
    """The sim in this process, answering after the server's fixed delay (diagnostic:
    the engine without any HTTP)."""

    def __init__(self, inner: ChatModel, delay_s: float) -> None:
        super().__init__(inner)
        self.delay_s = delay_s

    async def complete(self, request: ChatRequest) -> ChatResponse:
        t0 = time.perf_counter()
        resp = await self.inner.complete(request)
        await asyncio.sleep(self.delay_s)
        resp.latency_s = time.perf_counter() - t0
        return resp


def backend(spec: str, base_url: str, transport: Transport, delay_s: float) -> ChatModel:
    """The backend under the engine's middleware: the openai client over httpx (as
    shipped) or over aiohttp, or the sim in process with the same delay."""
    if transport == "httpx":
        return build_model(spec, load_suite(SUITE))
    if transport == "in_process":
        return InProcessLatency(build_model("sim", load_suite(SUITE)), delay_s)
    client = httpx.AsyncClient(transport=AiohttpTransport(), timeout=60.0)
    return OpenAIChatModel("sim", base_url=base_url, http_client=client)


def aiohttp_available() -> bool:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------ wave counts


@dataclass(slots=True)
class Rollouts:
    """The rollouts one search made, read back from its tree; a rollout's id is the
    id of the node it expanded."""

    parent: dict[str, str | None] = field(default_factory=dict)  # rollout -> the one it needs
    order: dict[str, int] = field(default_factory=dict)  # rollout -> launch index, if known


def rollouts_of(nodes: Sequence[NodeRecord]) -> Rollouts:
    """One rollout per expanded node; it needs the rollout that created that node."""
    by_id = {n.id: n for n in nodes}
    out = Rollouts()
    for n in nodes:
        x = by_id.get(n.parent_id) if n.parent_id is not None else None
        if x is None:
            continue
        out.parent[x.id] = x.parent_id  # None for the root's expansion
        idx = n.meta.get("rollout")
        if isinstance(idx, int) and x.id not in out.order:
            out.order[x.id] = idx
    return out


def critical_path_waves(parent: dict[str, str | None], p: int) -> int:
    """Fewest unit-time rounds to run every rollout, ≤ p at once, each after its parent.

    Hu's highest-level-first list schedule on the reversed forest (an in-forest,
    where it is optimal); reversed in time it is a schedule of the same length for
    the original forest, and no schedule of the original can be shorter.
    """
    return len(hu_rounds(parent, p))


def hu_rounds(parent: dict[str, str | None], p: int) -> list[list[str]]:
    """The rollouts of each round of that schedule, first round first (bench/critical_path
    replays them)."""
    depth: dict[str, int] = {}

    def level(r: str) -> int:  # nodes from r up to its forest root, inclusive
        chain = []
        x: str | None = r
        while x is not None and x not in depth:
            chain.append(x)
            x = parent.get(x)
        d = 0 if x is None else depth[x]
        for y in reversed(chain):
            d += 1
            depth[y] = d
        return depth[r]

    waiting = dict.fromkeys(parent, 0)  # unfinished children (predecessors once reversed)
    for q in parent.values():
        if q is not None and q in waiting:
            waiting[q] += 1
    ready = [r for r, w in waiting.items() if w == 0]
    rounds: list[list[str]] = []
    while ready:
        ready.sort(key=lambda r: (-level(r), r))
        now, ready = ready[:p], ready[p:]
        rounds.append(now)
        for r in now:
            q = parent[r]
            if q is not None and q in waiting:
                waiting[q] -= 1
                if waiting[q] == 0:
                    ready.append(q)
    if sum(len(r) for r in rounds) != len(parent):
        raise ValueError("the rollouts' dependencies are not a forest")
    return list(reversed(rounds))


def inorder_waves(parent: dict[str, str | None], order: dict[str, int], p: int) -> float | None:
    """Rounds under the engine's rules: launch in recorded order, ≤ p in flight, each
    after its parent rollout is folded back, results folded back in launch order.

    None when the launch order is not recorded for every rollout.
    """
    if set(order) != set(parent):
        return None
    seq = sorted(parent, key=lambda r: order[r])
    folded: dict[str, float] = {}
    launched: list[float] = []
    folds: list[float] = []
    for i, r in enumerate(seq):
        start = launched[-1] if launched else 0.0
        q = parent[r]
        if q is not None and q in folded:
            start = max(start, folded[q])
        if i >= p:
            start = max(start, folds[i - p])  # a slot frees when rollout i-p is folded back
        launched.append(start)
        fold = max(start + 1.0, folds[-1]) if folds else start + 1.0
        folds.append(fold)
        folded[r] = fold
    return folds[-1] if folds else 0.0


# ------------------------------------------------------------------ one run


@dataclass(slots=True)
class Measure:
    wall_s: float
    calls: int
    prompt_tokens: int
    completion_tokens: int
    rollouts: int
    rollouts_in_tree: int
    stopped_by: list[str]
    failed_tasks: int
    critical_path_waves: int
    inorder_waves: float | None
    calls_recorded: int
    server_requests: int
    server_max_in_flight: int
    mean_calls_in_flight: float
    call_latency_median_s: float
    engine_cpu_s: float
    server_cpu_s: float | None


def run_config(bc: BenchConfig, p: int, base_url: str, store: Path,
               concurrency: int = 1) -> RunConfig:
    return RunConfig.model_validate({
        "suite": SUITE, "limit": bc.tasks, "strategy": "mcts",
        "strategy_params": bc.mcts_params(p), "model": f"openai:sim@{base_url}",
        "store": str(store), "cache": False, "concurrency": concurrency,
        "max_inflight_calls": 100_000, "seed": bc.seed,
    })


async def measure(bc: BenchConfig, p: int, server: ServerProcess, store_path: Path, *,
                  concurrency: int = 1, transport: Transport = "httpx") -> Measure:
    """One run of the suite's first ``bc.tasks`` tasks with P=``p``, read back."""
    cfg = run_config(bc, p, server.base_url, store_path, concurrency)
    assert cfg.model is not None
    model = backend(cfg.model, server.base_url, transport, bc.ttft_ms / 1000.0)
    models = {cfg.model: DraftTags(model) if bc.draft_tags else model}
    store = await Store.aopen(str(store_path))
    try:
        server.reset_stats()
        srv_cpu0 = server.cpu_s()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        res = await arun(cfg, store=store, models=models)
        wall = time.perf_counter() - t0
        engine_cpu = time.process_time() - cpu0
        srv_cpu1 = server.cpu_s()
        srv = server.stats()
        waves = 0
        inorder: float | None = 0.0
        in_tree = 0
        calls: list[ModelCallRecord] = []
        for a in res.attempts:
            nodes, _ = await store.load_tree(res.run_id, a.task_id)
            ro = rollouts_of(nodes)
            in_tree += len(ro.parent)
            waves += critical_path_waves(ro.parent, p)
            w = inorder_waves(ro.parent, ro.order, p)
            inorder = None if w is None or inorder is None else inorder + w
            calls += (await store.load_calls(res.run_id, a.task_id)).values()
    finally:
        await store.aclose()
    paid = [c for c in calls if c.error is None and not c.cached]
    search = [a.stats.get("search", {}) for a in res.attempts]
    return Measure(
        wall_s=wall,
        calls=int(res.summary["calls"]),
        prompt_tokens=int(res.summary["prompt_tokens"]),
        completion_tokens=int(res.summary["completion_tokens"]),
        rollouts=sum(int(s.get("iterations", 0)) for s in search),
        rollouts_in_tree=in_tree,
        stopped_by=[str(s.get("stopped_by", "")) for s in search],
        failed_tasks=int(res.summary["failed"]),
        critical_path_waves=waves,
        inorder_waves=inorder,
        calls_recorded=len(paid),
        server_requests=int(srv.get("completed", 0)),
        server_max_in_flight=int(srv.get("max_in_flight", 0)),
        mean_calls_in_flight=sum(c.latency_s for c in paid) / wall if wall > 0 else 0.0,
        call_latency_median_s=statistics.median(c.latency_s for c in paid) if paid else 0.0,
        engine_cpu_s=engine_cpu,
        server_cpu_s=(None if srv_cpu0 is None or srv_cpu1 is None else srv_cpu1 - srv_cpu0),
    )


# ------------------------------------------------------------------ the benchmark


def median_run(runs: list[Measure]) -> Measure:
    return sorted(runs, key=lambda m: m.wall_s)[len(runs) // 2]


def row(p: int, runs: list[Measure], base: Measure, rollout_s: float) -> dict[str, Any]:
    """Per-P figures of the median run, as ratios against the baseline ``base``."""
    m = median_run(runs)
    bound = m.critical_path_waves * rollout_s
    return {
        "parallel": p,
        "wall_s": m.wall_s,
        "wall_s_runs": [r.wall_s for r in runs],
        "ratio": m.wall_s / base.wall_s,
        "ideal": 1.0 / p,
        "efficiency": base.wall_s / (p * m.wall_s),
        "critical_path_waves": m.critical_path_waves,
        "inorder_waves": m.inorder_waves,
        "bound_ratio": m.critical_path_waves / base.critical_path_waves,
        "lower_bound_s": bound,
        "wall_over_lower_bound": m.wall_s / bound if bound > 0 else None,
        "s_per_wave": m.wall_s / m.critical_path_waves if m.critical_path_waves else None,
        "calls": m.calls,
        "prompt_tokens": m.prompt_tokens,
        "completion_tokens": m.completion_tokens,
        "tokens": m.prompt_tokens + m.completion_tokens,
        "rollouts": m.rollouts,
        "rollouts_in_tree": m.rollouts_in_tree,
        "stopped_by": m.stopped_by,
        "failed_tasks": m.failed_tasks,
        "calls_recorded": m.calls_recorded,
        "server_requests": m.server_requests,
        "server_max_in_flight": m.server_max_in_flight,
        "mean_calls_in_flight": m.mean_calls_in_flight,
        "call_latency_median_s": m.call_latency_median_s,
        "engine_cpu_s": m.engine_cpu_s,
        "server_cpu_s": m.server_cpu_s,
    }


def diagnostic(m: Measure, p: int, base: Measure, same_p: dict[str, Any],
               **extra: Any) -> dict[str, Any]:
    return {"parallel": p, **extra, "wall_s": m.wall_s, "ratio": m.wall_s / base.wall_s,
            "wall_s_default_setup": same_p["wall_s"], "rollouts": m.rollouts,
            "calls": m.calls, "server_requests": m.server_requests,
            "server_max_in_flight": m.server_max_in_flight,
            "mean_calls_in_flight": m.mean_calls_in_flight,
            "call_latency_median_s": m.call_latency_median_s,
            "engine_cpu_s": m.engine_cpu_s, "server_cpu_s": m.server_cpu_s}


async def bench(bc: BenchConfig, console: Console) -> dict[str, Any]:
    server_cfg = ServerConfig(ttft_ms=bc.ttft_ms, tokens_per_s=0.0)
    rollout_s = 2 * bc.ttft_ms / 1000.0
    out: dict[str, Any] = {
        "benchmark": "parallel_rollouts",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine(), "httpx": httpx.__version__},
        "server": {**server_cfg.model_dump(mode="json"), "nagle_off": True},
        "suite": SUITE,
        "tasks": bc.tasks,
        "task_concurrency": 1,
        "repeats": bc.repeats,
        "draft_tags": bc.draft_tags,
        "mcts": {k: v for k, v in bc.mcts_params(1).items() if k != "parallel"},
        "parallel": list(bc.ps),
        "rollout_latency_s": rollout_s,
        "bench_config": asdict(bc),
    }
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp, \
            ServerProcess(server_cfg) as server:
        work = Path(tmp)
        warm = replace(bc, tasks=1, iterations=2)
        await measure(warm, 1, server, work / "warmup.db")
        runs: dict[int, list[Measure]] = {}
        for rep in range(bc.repeats):
            for p in bc.ps:
                console.log(f"P={p} run {rep + 1}/{bc.repeats}")
                runs.setdefault(p, []).append(
                    await measure(bc, p, server, work / f"p{p}-r{rep}.db"))
        base = median_run(runs[bc.ps[0]])
        out["baseline"] = {"parallel": bc.ps[0], "wall_s": base.wall_s,
                           "critical_path_waves": base.critical_path_waves}
        out["results"] = [row(p, runs[p], base, rollout_s) for p in bc.ps]
        if bc.diagnostics:
            p = max(bc.ps)
            same_p = next(r for r in out["results"] if r["parallel"] == p)
            diag: dict[str, Any] = {}
            console.log(f"diagnostic: P={p}, all {bc.tasks} tasks at once")
            m = await measure(bc, p, server, work / "concurrent.db", concurrency=bc.tasks)
            diag["concurrent_tasks"] = diagnostic(m, p, base, same_p, task_concurrency=bc.tasks)
            console.log(f"diagnostic: P={p} and P=1, the sim in process (no HTTP)")
            one = await measure(bc, 1, server, work / "in-process-1.db", transport="in_process")
            m = await measure(bc, p, server, work / "in-process.db", transport="in_process")
            diag["in_process_backend"] = {
                **diagnostic(m, p, base, same_p, transport="in_process"),
                "wall_s_p1": one.wall_s, "ratio_to_own_p1": m.wall_s / one.wall_s,
                "bound_ratio": m.critical_path_waves / one.critical_path_waves,
                "engine_cpu_s_p1": one.engine_cpu_s}
            if aiohttp_available():
                console.log(f"diagnostic: P={p}, openai client over aiohttp")
                m = await measure(bc, p, server, work / "aiohttp.db", transport="aiohttp")
                diag["aiohttp_transport"] = diagnostic(m, p, base, same_p, transport="aiohttp")
            out["diagnostics"] = diag
    out["machine"]["load_average_at_end"] = load_average()
    return out


def show(result: dict[str, Any], console: Console) -> None:
    mc = result["mcts"]
    t = Table(title=f"mcts, {result['tasks']} tasks one at a time × {mc['iterations']} "
                    f"rollouts, k={mc['k']}; server latency {result['server']['ttft_ms']:g} ms; "
                    f"median of {result['repeats']}")
    cols = ("P", "wall s", "wall(P)/wall(1)", "1/P", "efficiency", "waves", "bound ratio",
            "in-order waves", "wall/bound", "s/wave", "calls", "tokens", "rollouts",
            "calls in flight", "engine CPU s")
    for col in cols:
        t.add_column(col, justify="right")

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    for r in result["results"]:
        t.add_row(
            str(r["parallel"]), f"{r['wall_s']:.2f}", f"{r['ratio']:.3f}", f"{r['ideal']:.3f}",
            f"{r['efficiency']:.2f}", str(r["critical_path_waves"]), f"{r['bound_ratio']:.3f}",
            num(r["inorder_waves"], "g"), num(r["wall_over_lower_bound"], ".2f"),
            num(r["s_per_wave"], ".3f"), str(r["calls"]), str(r["tokens"]),
            str(r["rollouts"]), f"{r['mean_calls_in_flight']:.1f}",
            f"{r['engine_cpu_s']:.2f}")
    console.print(t)
    for name, d in result.get("diagnostics", {}).items():
        own = (f"; against its own P=1 {d['ratio_to_own_p1']:.3f}, bound ratio "
               f"{d['bound_ratio']:.3f}" if "ratio_to_own_p1" in d else "")
        console.print(f"{name}: P={d['parallel']} {d['wall_s']:.2f} s (ratio {d['ratio']:.3f}"
                      f"{own}; default set-up {d['wall_s_default_setup']:.2f} s), "
                      f"{d['mean_calls_in_flight']:.1f} calls in flight on average, "
                      f"engine CPU {d['engine_cpu_s']:.2f} s")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Wall time of mcts with P parallel rollouts "
                                 "against a fixed-latency sim server (see the docstring).")
    ap.add_argument("--quick", action="store_true", help="small configuration (for the test)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON output (default: bench/results/parallel_rollouts.json for a "
                    "full run; none for --quick)")
    ap.add_argument("--ps", type=str, default=None,
                    help="values of P, comma-separated; the first is the baseline")
    ap.add_argument("--tasks", type=int, default=None, help="tasks of the suite")
    ap.add_argument("--iterations", type=int, default=None, help="rollouts per search")
    ap.add_argument("--ttft-ms", type=float, default=None, help="server latency per request")
    ap.add_argument("--repeats", type=int, default=None, help="runs per P (median kept)")
    ap.add_argument("--no-diagnostics", action="store_true", help="skip the extra runs")
    ap.add_argument("--plain-sim", action="store_true",
                    help="no draft tags: identical requests are answered by the journal")
    args = ap.parse_args(argv)
    bc = QUICK if args.quick else FULL
    given: dict[str, Any] = {
        "ps": tuple(int(x) for x in args.ps.split(",")) if args.ps else None,
        "tasks": args.tasks, "iterations": args.iterations, "ttft_ms": args.ttft_ms,
        "repeats": args.repeats,
        "diagnostics": False if args.no_diagnostics else None,
        "draft_tags": False if args.plain_sim else None,
    }
    bc = replace(bc, **{k: v for k, v in given.items() if v is not None})
    if not bc.ps or min(bc.ps) < 1 or bc.repeats < 1 or bc.tasks < 1:
        ap.error("P values, --repeats and --tasks must be positive")
    console = Console()
    if not console.is_terminal:
        console = Console(width=180)
    result = asyncio.run(bench(bc, console))
    show(result, console)
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
