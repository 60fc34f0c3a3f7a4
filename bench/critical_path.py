"""Wall time of four strategies against their critical-path lower bound.

Issue 7 asks, for best-of-N, refine, beam and MCTS (P parallel rollouts) against a
fixed-latency server: wall time divided by the algorithm's critical-path lower bound,
the longest chain of dependent calls times the latency. Targets: at most 1.2 for
best-of-N with N = 64 and for MCTS with P = 8; refine and beam are reported.

**What runs.** Each strategy runs through the engine (``deliberate.arun``) with the
model ``openai:sim@<server>/v1``: the real ``openai`` backend, talking to the sim's
OpenAI-compatible server in a child process (``LatencyServer``) that answers every
request after ``ttft_ms`` (``tokens_per_s=0``, no faults). The response cache is off,
every run has its own temporary SQLite store, tasks run one after another, and
``max_inflight_calls`` is far above the widest wave (the default, 64, would just fit
N = 64 judge calls; a demanding user raises it). As in ``parallel_rollouts``, every
generated or refined candidate starts with a ``Draft <letters>.`` line
(``parallel_rollouts.DraftTags``), so that no two requests are identical and the
run's journal answers none of them without the server.

**The bound comes from what the run did.** The run's nodes, judgements and model
calls are read back from the store, and every recorded call gets the calls it
depended on:

- a call about node X (its ``node_id``) needs the call that created X (X's text is
  in its request);
- a call that creates children of X (an expansion, a refinement) also needs the
  judging calls about X and X's siblings: the value, critique or score the
  strategy chose X by (refine's critique of X, beam's and MCTS's values);
- a judgement's repair request needs the request it repairs (``call_ids``);
- an edge that the recorded times contradict (the needed call ended after the
  other started) cannot be a dependency and is dropped (``dropped_edges``).

A request for n samples is one call (the openai backend sends up to 128 samples in
one HTTP request, and the sim server answers them in one: ``one_request_per_call``).
``chain_calls`` is the longest chain; for best-of-N, refine and beam the bound is
``chain_calls × ttft`` and the waves of calls are the chain's levels. For MCTS with
P rollouts in flight the chain is not enough: the rollout forest read from the tree
(``parallel_rollouts.rollouts_of``) is scheduled by Hu's rule on P machines
(``parallel_rollouts.critical_path_waves``, the fewest rounds any scheduler could
use), and each round is as many waves as its rollouts have levels of calls
(expansion, then valuation: two). The bound is the number of waves × ``ttft``.

**Baseline, measured in the same run.** A bare ``openai.AsyncOpenAI`` client (on
``DefaultAioHttpClient``, created for each replay as the engine creates its own)
replays what the run sent, against the same server: the same HTTP bodies in the
same dependency order. For best-of-N, refine and beam each wave goes out at once
and the next when it is back; for MCTS each rollout goes out (expansion, then
valuation) as soon as the rollout it grows from is back and one of P slots is
free, in Hu's order, so the replay is not held back by whole rounds. It posts each
body with ``client.post`` as the engine's backend does (``chat.completions.create``
would add the SDK's walk of the body against its TypedDicts). ``replay / bound``
is what any client pays (HTTP, the server), ``wall / replay`` the engine's share.
A second replay with a plain aiohttp session (no SDK) splits the client's share
into HTTP-and-server and the SDK: ``excess_split_ms_per_wave``.

When a target is missed the note says where the time went, measured: that split,
CPU per call of each process, call latency against ``ttft``, the engine's set-up
before its first call and tail after its last, the widest wave's span (best-of-N),
calls in flight and in-order rounds (MCTS).

``python -m bench.critical_path`` (full, writes ``bench/results/critical_path.json``),
``--quick`` (1 task each, small N and iterations, 10 ms; writes only with ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI, DefaultAioHttpClient
from openai.types.chat import ChatCompletion
from rich.console import Console
from rich.table import Table

from bench import parallel_rollouts
from bench._harness import RESULTS, LatencyServer, machine, own_cpu_s, ratio, write_result
from bench.parallel_rollouts import hu_rounds
from deliberate import RunConfig, Store, arun
from deliberate.models.base import ChatRequest, ModelProfile, messages_from
from deliberate.models.openai_backend import plan_calls, request_body
from deliberate.models.registry import build_model
from deliberate.tasks import load_suite
from deliberate.tree import JudgementRecord, ModelCallRecord, NodeRecord

DEFAULT_OUT = RESULTS / "critical_path.json"
SUITE = "arithmetic"
MODEL = "sim"
STRATEGIES = ("best_of_n", "refine", "beam", "mcts")
TARGET = 1.2
TOLERANCE_S = 0.001  # clock slack when checking that a needed call ended first


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of one invocation."""

    ttft_ms: float = 100.0
    tasks: int = 3
    repeats: int = 5
    n: int = 64  # best_of_n samples, each judged
    rounds: int = 4  # refine: refinements (the critic never accepts, so all are made)
    beam_n: int = 8
    beam_width: int = 2
    beam_depth: int = 4
    iterations: int = 64  # mcts rollouts
    k: int = 3
    parallel: int = 8  # mcts rollouts in flight
    max_inflight_calls: int = 1024
    draft_tags: bool = True
    strategies: tuple[str, ...] = STRATEGIES

    def params(self, strategy: str) -> dict[str, Any]:
        if strategy == "best_of_n":
            return {"n": self.n, "scorer": "judge"}
        if strategy == "refine":
            # accept_score above any scale: a fixed chain of `rounds` refinements
            return {"max_rounds": self.rounds, "patience": None, "accept_score": 1e9}
        if strategy == "beam":
            return {
                "space": "answer",
                "n": self.beam_n,
                "width": self.beam_width,
                "max_depth": self.beam_depth,
            }
        if strategy == "mcts":
            return {
                "iterations": self.iterations,
                "k": self.k,
                "parallel": self.parallel,
                "max_depth": 16,
                "threshold": None,
                "finished": None,
            }
        raise ValueError(f"unknown strategy {strategy!r}")


FULL = Settings()
QUICK = Settings(
    ttft_ms=10.0,
    tasks=1,
    repeats=1,
    n=8,
    rounds=2,
    beam_n=4,
    beam_depth=3,
    iterations=12,
    parallel=8,
)


# ------------------------------------------------------------------ the dependency plan


@dataclass(frozen=True, slots=True)
class Call:
    """What the plan needs of one recorded call: times are wall-clock seconds."""

    id: str
    node_id: str | None
    role: str
    start: float
    end: float


def calls_of(records: Iterable[ModelCallRecord]) -> list[Call]:
    """The calls that reached the model (no error, not from a cache), by start time.

    A record is written when its answer is back (``created_at``); its latency is
    the backend's time for the HTTP request(s), so the start is the difference.
    """
    out = [
        Call(r.id, r.node_id, r.role, r.created_at - r.latency_s, r.created_at)
        for r in records
        if r.error is None and not r.cached
    ]
    return sorted(out, key=lambda c: (c.start, c.id))


@dataclass(slots=True)
class Deps:
    needs: dict[str, set[str]]  # call id -> ids of the calls it needed
    dropped: int = 0  # structural edges the recorded times contradict


def dependencies(
    nodes: Sequence[NodeRecord],
    judgements: Sequence[JudgementRecord],
    calls: Sequence[Call],
    tolerance_s: float = TOLERANCE_S,
) -> Deps:
    """Which recorded call needed which (the rules are in the module docstring)."""
    by_id = {c.id: c for c in calls}
    node = {n.id: n for n in nodes}
    creating = {n.call_id for n in nodes if n.call_id in by_id}
    kids: dict[str, list[str]] = {}
    for n in nodes:
        if n.parent_id is not None:
            kids.setdefault(n.parent_id, []).append(n.id)
    judging: dict[str, list[str]] = {}  # node id -> non-creating calls about it
    for c in calls:
        if c.node_id is not None and c.id not in creating:
            judging.setdefault(c.node_id, []).append(c.id)
    needs: dict[str, set[str]] = {c.id: set() for c in calls}
    for c in calls:
        x = node.get(c.node_id) if c.node_id is not None else None
        if x is None:
            continue
        if x.call_id in by_id:
            needs[c.id].add(x.call_id)
        if c.id in creating:
            family = kids.get(x.parent_id, [x.id]) if x.parent_id is not None else [x.id]
            for y in family:
                needs[c.id].update(judging.get(y, ()))
    for j in judgements:
        ids = [i for i in j.meta.get("call_ids") or () if i in by_id]
        for a, b in itertools.pairwise(ids):
            needs[b].add(a)
    dropped = 0
    for cid, ds in needs.items():
        ok = {d for d in ds if d != cid and by_id[d].end <= by_id[cid].start + tolerance_s}
        dropped += len(ds) - len(ok)
        needs[cid] = ok
    return Deps(needs, dropped)


def levels(
    calls: Sequence[Call], needs: dict[str, set[str]], within: dict[str, str | None] | None = None
) -> dict[str, int]:
    """Each call's place on its longest chain (1 = needs nothing); with ``within``
    (call -> group), only needs inside the same group count."""
    out: dict[str, int] = {}
    for c in sorted(calls, key=lambda c: (c.start, c.id)):  # needs start earlier
        ds = needs.get(c.id, set())
        if within is not None:
            ds = {d for d in ds if within.get(d) == within.get(c.id)}
        out[c.id] = 1 + max((out[d] for d in ds), default=0)
    return out


def asap_waves(level: dict[str, int]) -> list[list[str]]:
    """Calls grouped by level: wave w can start when wave w-1 is back."""
    waves: list[list[str]] = [[] for _ in range(max(level.values(), default=0))]
    for cid, lv in level.items():
        waves[lv - 1].append(cid)
    return [sorted(w) for w in waves]


def rollout_of(call: Call, node: dict[str, NodeRecord], creating: set[str]) -> str | None:
    """The MCTS rollout a call belongs to: an expansion of X is rollout X; the
    valuation of a node belongs to the rollout that created it (its parent's)."""
    x = node.get(call.node_id) if call.node_id is not None else None
    if x is None:
        return None
    return x.id if call.id in creating else x.parent_id


@dataclass(slots=True)
class Plan:
    """One task's calls in the order a perfect client could make them, and its figures.

    ``waves`` are what the bound counts: for best-of-N, refine and beam the chain's
    levels; for MCTS each of Hu's rounds at P, as many waves as its rollouts have
    levels. MCTS also keeps its rollouts (their calls by level, the forest, Hu's
    order) for the replay, which runs them without waiting for whole rounds.
    """

    waves: list[list[str]]
    chain_calls: int  # longest chain of dependent calls, no limit on calls in flight
    calls: int
    edges: int
    dropped_edges: int
    rollout_calls: dict[str, list[list[str]]] = field(default_factory=dict)
    rollout_parent: dict[str, str | None] = field(default_factory=dict)
    rollout_order: list[str] = field(default_factory=list)
    stray_waves: list[list[str]] = field(default_factory=list)  # mcts: calls in no rollout
    rollout_rounds: int | None = None  # Hu's rounds at P
    critical_path_waves: int | None = None  # parallel_rollouts' count of the same
    inorder_rounds: float | None = None  # the engine's own rules (launch/fold in order)

    @property
    def bound_waves(self) -> int:
        return len(self.waves)


def plan(
    strategy: str,
    nodes: Sequence[NodeRecord],
    judgements: Sequence[JudgementRecord],
    records: Iterable[ModelCallRecord],
    parallel: int | None = None,
) -> Plan:
    """The waves a perfect client would need for what this task did."""
    calls = calls_of(records)
    deps = dependencies(nodes, judgements, calls)
    edges = sum(len(d) for d in deps.needs.values())
    level = levels(calls, deps.needs)
    chain = max(level.values(), default=0)
    if strategy != "mcts" or parallel is None:
        return Plan(asap_waves(level), chain, len(calls), edges, deps.dropped)
    node = {n.id: n for n in nodes}
    creating = {n.call_id for n in nodes if n.call_id}
    ro = parallel_rollouts.rollouts_of(nodes)
    rounds = hu_rounds(ro.parent, parallel)
    group = {c.id: rollout_of(c, node, creating) for c in calls}
    local = levels(calls, deps.needs, within=group)
    by_rollout: dict[str, list[list[str]]] = {r: [] for r in ro.parent}
    stray: list[Call] = []
    for c in calls:
        r = group[c.id]
        if r is None or r not in by_rollout:
            stray.append(c)
            continue
        lv = by_rollout[r]
        while len(lv) < local[c.id]:
            lv.append([])
        lv[local[c.id] - 1].append(c.id)
    waves: list[list[str]] = []
    for rnd in rounds:
        for i in range(max((len(by_rollout[r]) for r in rnd), default=0)):
            waves.append(sorted(c for r in rnd if i < len(by_rollout[r]) for c in by_rollout[r][i]))
    stray_waves = asap_waves(levels(stray, deps.needs)) if stray else []
    return Plan(
        waves + stray_waves,
        chain,
        len(calls),
        edges,
        deps.dropped,
        rollout_calls=by_rollout,
        rollout_parent=dict(ro.parent),
        rollout_order=[r for rnd in rounds for r in rnd],
        stray_waves=stray_waves,
        rollout_rounds=len(rounds),
        critical_path_waves=parallel_rollouts.critical_path_waves(ro.parent, parallel),
        inorder_rounds=parallel_rollouts.inorder_waves(ro.parent, ro.order, parallel),
    )


def http_bodies(record: ModelCallRecord, model: str = MODEL) -> list[dict[str, Any]]:
    """The JSON bodies the openai backend sent for a recorded call (one per HTTP call)."""
    d = record.request
    req = ChatRequest(
        messages=messages_from(d["messages"]),
        temperature=d["temperature"],
        top_p=d.get("top_p"),
        max_tokens=d.get("max_tokens"),
        stop=tuple(d.get("stop") or ()),
        seed=d.get("seed"),
        n=d.get("n", 1),
        sample_offset=d.get("sample_offset", 0),
        response_format=d.get("response_format"),
        extra=d.get("extra") or {},
    )
    messages = [m.to_dict() for m in req.messages]
    return [
        {"model": model, "messages": messages, **request_body(req, call), **req.extra}
        for call in plan_calls(req, ModelProfile())
    ]


# ------------------------------------------------------------------ measuring

Body = dict[str, Any]


@dataclass(slots=True)
class Script:
    """One task's HTTP bodies as the replay sends them: the rollouts first (MCTS: each
    once its parent rollout is back and one of ``parallel`` slots is free, its levels
    one after another), then ``waves`` (each wave at once, then the next)."""

    waves: list[list[Body]]
    rollouts: dict[str, list[list[Body]]] = field(default_factory=dict)
    parent: dict[str, str | None] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    parallel: int = 1

    @property
    def requests(self) -> int:
        lists = [*self.waves, *(lv for r in self.rollouts.values() for lv in r)]
        return sum(len(w) for w in lists)


def script(p: Plan, records: dict[str, ModelCallRecord], parallel: int | None) -> Script:
    def bodies(ids: list[str]) -> list[Body]:
        return [b for cid in ids for b in http_bodies(records[cid])]

    if not p.rollout_calls:
        return Script([bodies(w) for w in p.waves])
    return Script(
        [bodies(w) for w in p.stray_waves],
        {r: [bodies(lv) for lv in lvs] for r, lvs in p.rollout_calls.items()},
        p.rollout_parent,
        p.rollout_order,
        parallel or 1,
    )


Post = Callable[[Body], Awaitable[object]]


async def play(sc: Script, post: Post) -> None:
    """Send one task's script (see :class:`Script`)."""
    if sc.rollouts:
        done = {r: asyncio.Event() for r in sc.rollouts}
        slots = asyncio.Semaphore(sc.parallel)

        async def rollout(r: str) -> None:
            q = sc.parent.get(r)
            if q is not None and q in done:
                await done[q].wait()
            async with slots:
                for level in sc.rollouts[r]:
                    await asyncio.gather(*(post(b) for b in level))
            done[r].set()

        await asyncio.gather(*(rollout(r) for r in sc.order))
    for wave in sc.waves:
        await asyncio.gather(*(post(b) for b in wave))


@dataclass(slots=True)
class Replay:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    server_requests: int = 0
    server_max_in_flight: int = 0


async def replay(scripts: list[Script], server: LatencyServer, transport: str) -> Replay:
    """The scripts from a bare client, one task after another: ``openai`` is
    ``AsyncOpenAI`` on ``DefaultAioHttpClient`` posting each body as the engine's
    backend does; ``aiohttp`` is a plain aiohttp session (no SDK: HTTP and the server)."""
    import aiohttp

    server.reset_stats()
    cpu0 = own_cpu_s()
    t0 = time.perf_counter()
    if transport == "openai":
        client = AsyncOpenAI(
            api_key="EMPTY",
            base_url=server.base_url,
            max_retries=0,
            http_client=DefaultAioHttpClient(timeout=60.0),
        )

        async def post(b: Body) -> object:
            return await client.post("/chat/completions", body=b, cast_to=ChatCompletion)

        try:
            for sc in scripts:
                await play(sc, post)
        finally:
            await client.close()
    else:
        url = server.base_url + "/chat/completions"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def raw(b: Body) -> object:
                async with session.post(url, json=b) as r:
                    r.raise_for_status()
                    return await r.json()

            for sc in scripts:
                await play(sc, raw)
    out = Replay(time.perf_counter() - t0, own_cpu_s() - cpu0)
    stats = server.stats()
    out.server_requests = int(stats.get("completed", 0))
    out.server_max_in_flight = int(stats.get("max_in_flight", 0))
    return out


@dataclass(slots=True)
class Run:
    """One engine run of a strategy, its plan and the replays of it."""

    wall_s: float
    engine_cpu_s: float
    bound_waves: int
    chain_calls: int
    calls: int
    http_requests: int
    samples: int
    edges: int
    dropped_edges: int
    failed_tasks: int
    server_requests: int
    server_max_in_flight: int
    server_cpu_s: float | None
    widest_wave: int
    call_latency_median_s: float
    mean_calls_in_flight: float
    setup_s: float  # arun start -> first call starts
    tail_s: float  # last call back -> arun returns
    between_tasks_s: float  # summed: a task's last answer in -> the next task's first call
    issue_spread_s: float | None  # summed over waves: first -> last start (not mcts)
    widest_wave_span_s: float | None  # first start -> last answer of the widest wave
    rollouts: int | None = None
    rollout_rounds: int | None = None
    inorder_rounds: float | None = None
    critical_path_waves: int | None = None
    stray_calls: int = 0
    replay: Replay = field(default_factory=Replay)
    raw_replay: Replay = field(default_factory=Replay)
    scripts: list[Script] = field(default_factory=list, repr=False)


def run_config(st: Settings, strategy: str, base_url: str, store: Path) -> RunConfig:
    return RunConfig.model_validate(
        {
            "suite": SUITE,
            "limit": st.tasks,
            "strategy": strategy,
            "strategy_params": st.params(strategy),
            "model": f"openai:{MODEL}@{base_url}",
            "store": str(store),
            "cache": False,
            "concurrency": 1,
            "max_inflight_calls": st.max_inflight_calls,
            "seed": 0,
        }
    )


async def engine_run(st: Settings, strategy: str, server: LatencyServer, db: Path) -> Run:
    """The strategy through the engine, then its plan read back from the store."""
    cfg = run_config(st, strategy, server.base_url, db)
    assert cfg.model is not None
    model = build_model(cfg.model, load_suite(SUITE))
    models = {cfg.model: parallel_rollouts.DraftTags(model) if st.draft_tags else model}
    mcts = strategy == "mcts"
    store = await Store.aopen(str(db))
    try:
        server.reset_stats()
        srv0 = server.cpu_s()
        cpu0 = own_cpu_s()
        t0_wall = time.time()
        t0 = time.perf_counter()
        res = await arun(cfg, store=store, models=models)
        wall = time.perf_counter() - t0
        t1_wall = time.time()
        cpu = own_cpu_s() - cpu0
        srv1 = server.cpu_s()
        stats = server.stats()
        plans: list[Plan] = []
        records: dict[str, ModelCallRecord] = {}
        spans: list[tuple[float, float]] = []  # per task: first call out, last answer in
        for a in res.attempts:
            nodes, judgements = await store.load_tree(res.run_id, a.task_id)
            task_calls = await store.load_calls(res.run_id, a.task_id)
            records.update({r.id: r for r in task_calls.values()})
            mine = calls_of(task_calls.values())
            if mine:
                spans.append((min(c.start for c in mine), max(c.end for c in mine)))
            p = st.parallel if mcts else None
            plans.append(plan(strategy, nodes, judgements, task_calls.values(), p))
    finally:
        await store.aclose()
    calls = {c.id: c for c in calls_of(records.values())}
    scripts = [script(p, records, st.parallel if mcts else None) for p in plans]
    starts = [c.start for c in calls.values()]
    ends = [c.end for c in calls.values()]
    latencies = [c.end - c.start for c in calls.values()]
    waves = [w for p in plans for w in p.waves if w]
    widest = max(waves, key=len, default=[])
    return Run(
        wall_s=wall,
        engine_cpu_s=cpu,
        bound_waves=sum(p.bound_waves for p in plans),
        chain_calls=sum(p.chain_calls for p in plans),
        calls=len(calls),
        http_requests=sum(sc.requests for sc in scripts),
        samples=sum(int(records[i].request.get("n", 1)) for i in calls),
        edges=sum(p.edges for p in plans),
        dropped_edges=sum(p.dropped_edges for p in plans),
        failed_tasks=int(res.summary["failed"]),
        server_requests=int(stats.get("completed", 0)),
        server_max_in_flight=int(stats.get("max_in_flight", 0)),
        server_cpu_s=None if srv0 is None or srv1 is None else srv1 - srv0,
        widest_wave=len(widest),
        call_latency_median_s=statistics.median(latencies) if latencies else 0.0,
        mean_calls_in_flight=sum(latencies) / wall if wall > 0 else 0.0,
        setup_s=min(starts) - t0_wall if starts else 0.0,
        tail_s=t1_wall - max(ends) if ends else 0.0,
        between_tasks_s=sum(max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(sorted(spans))),
        # MCTS's waves are a schedule, not what the engine did: no per-wave figures
        issue_spread_s=None
        if mcts
        else sum(max(calls[i].start for i in w) - min(calls[i].start for i in w) for w in waves),
        widest_wave_span_s=None
        if mcts or not widest
        else max(calls[i].end for i in widest) - min(calls[i].start for i in widest),
        rollouts=sum(len(p.rollout_parent) for p in plans) if mcts else None,
        rollout_rounds=sum(p.rollout_rounds or 0 for p in plans) if mcts else None,
        inorder_rounds=(
            sum(p.inorder_rounds for p in plans if p.inorder_rounds is not None)
            if mcts and all(p.inorder_rounds is not None for p in plans)
            else None
        ),
        critical_path_waves=(sum(p.critical_path_waves or 0 for p in plans) if mcts else None),
        stray_calls=sum(len(w) for p in plans for w in p.stray_waves),
        scripts=scripts,
    )


# ------------------------------------------------------------------ the benchmark


def per_wave_ms(seconds: float, waves: int) -> float | None:
    return 1000 * seconds / waves if waves else None


def row(strategy: str, st: Settings, runs: list[Run]) -> dict[str, Any]:
    """A strategy's figures: the median of each wall time over the repeats (the engine's,
    each replay's: on a shared machine one wave can stall, so they are not paired), and
    the diagnostics of the run with the median engine wall time."""
    latency = st.ttft_ms / 1000.0
    m = sorted(runs, key=lambda r: r.wall_s)[(len(runs) - 1) // 2]
    bound_waves = statistics.median_low(r.bound_waves for r in runs)
    bound = bound_waves * latency
    fields = {k: v for k, v in asdict(m).items() if k not in ("scripts", "replay", "raw_replay")}
    fields["bound_waves"] = bound_waves
    rp = Replay(
        statistics.median_low(r.replay.wall_s for r in runs),
        m.replay.cpu_s,
        m.replay.server_requests,
        m.replay.server_max_in_flight,
    )
    raw = Replay(
        statistics.median_low(r.raw_replay.wall_s for r in runs),
        m.raw_replay.cpu_s,
        m.raw_replay.server_requests,
    )
    excess = per_wave_ms(m.wall_s - bound, bound_waves)
    return {
        "strategy": strategy,
        "params": st.params(strategy),
        "tasks": st.tasks,
        "bound_s": bound,
        **fields,
        "replay_wall_s": rp.wall_s,
        "replay_cpu_s": rp.cpu_s,
        "replay_server_requests": rp.server_requests,
        "replay_server_max_in_flight": rp.server_max_in_flight,
        "raw_replay_wall_s": raw.wall_s,
        "raw_replay_cpu_s": raw.cpu_s,
        "raw_replay_server_requests": raw.server_requests,
        "wall_over_bound": ratio(m.wall_s, bound),
        "replay_over_bound": ratio(rp.wall_s, bound),
        "wall_over_replay": ratio(m.wall_s, rp.wall_s),
        "raw_replay_over_bound": ratio(raw.wall_s, bound),
        "runs": [
            {
                "wall_s": r.wall_s,
                "replay_wall_s": r.replay.wall_s,
                "raw_replay_wall_s": r.raw_replay.wall_s,
                "bound_waves": r.bound_waves,
            }
            for r in runs
        ],
        "same_bound_every_run": len({r.bound_waves for r in runs}) == 1,
        "one_request_per_call": m.server_requests == m.calls,
        "engine_cpu_ms_per_call": 1000 * m.engine_cpu_s / m.calls if m.calls else None,
        "replay_cpu_ms_per_call": 1000 * rp.cpu_s / m.calls if m.calls else None,
        "raw_replay_cpu_ms_per_call": 1000 * raw.cpu_s / m.calls if m.calls else None,
        # wall - bound = (raw - bound) + (replay - raw) + (wall - replay), per wave:
        "excess_ms_per_wave": excess,
        "excess_split_ms_per_wave": {
            "http_and_server": per_wave_ms(raw.wall_s - bound, bound_waves),
            "openai_sdk": per_wave_ms(rp.wall_s - raw.wall_s, bound_waves),
            "engine": per_wave_ms(m.wall_s - rp.wall_s, bound_waves),
        },
        # the latency at which this excess per wave would just meet the target
        "latency_for_target_ms": None if excess is None else excess / (TARGET - 1),
    }


def cause(r: dict[str, Any], ttft_ms: float) -> str:
    """Where the time above the bound went, from the measured figures."""
    split = r["excess_split_ms_per_wave"]
    parts = [
        f"{1000 * (r['wall_s'] - r['bound_s']):.0f} ms above the bound over "
        f"{r['bound_waves']} waves, {r['excess_ms_per_wave']:.1f} ms a wave: HTTP and the "
        f"server {split['http_and_server']:.1f} (plain aiohttp replay), the openai SDK "
        f"{split['openai_sdk']:.1f}, the engine {split['engine']:.1f}",
        f"CPU per call: engine {r['engine_cpu_ms_per_call']:.2f} ms, bare openai client "
        f"{r['replay_cpu_ms_per_call']:.2f}, aiohttp {r['raw_replay_cpu_ms_per_call']:.2f}; "
        f"server process {1000 * (r['server_cpu_s'] or 0) / max(r['calls'], 1):.2f}",
        f"median call {1000 * r['call_latency_median_s']:.1f} ms against {ttft_ms:g}",
        f"no call in flight: {1000 * r['setup_s']:.0f} ms of engine set-up before the first "
        f"call, {1000 * r['between_tasks_s']:.0f} ms between tasks, "
        f"{1000 * r['tail_s']:.0f} ms after the last answer",
    ]
    if r["strategy"] == "mcts":
        parts.append(
            f"{r['mean_calls_in_flight']:.1f} calls in flight on average; in-order rounds "
            f"{r['inorder_rounds']} against Hu's {r['rollout_rounds']}"
        )
    elif r["widest_wave_span_s"] is not None:
        parts.append(
            f"the widest wave ({r['widest_wave']} calls) took "
            f"{1000 * r['widest_wave_span_s']:.0f} ms from its first call out to its last "
            f"answer in, {1000 * (r['issue_spread_s'] or 0):.0f} ms of all waves went on "
            "sending them"
        )
    if r["latency_for_target_ms"] is not None:
        parts.append(
            f"the same excess per wave meets {TARGET} from a latency of "
            f"{r['latency_for_target_ms']:.0f} ms"
        )
    return "; ".join(parts) + "."


def targets(st: Settings, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {r["strategy"]: r for r in results}
    out = []
    for strategy, text in (
        ("best_of_n", f"best_of_n N={st.n}: wall <= {TARGET} x bound"),
        ("mcts", f"mcts P={st.parallel}: wall <= {TARGET} x bound"),
    ):
        r = by.get(strategy)
        if r is None:
            continue
        value = r["wall_over_bound"]
        met = None if value is None else value <= TARGET
        note = cause(r, st.ttft_ms)
        if met:
            note = (
                f"replay/bound {r['replay_over_bound']}, wall/replay {r['wall_over_replay']}; "
                + note
            )
        out.append({"target": text, "value": value, "limit": TARGET, "met": met, "note": note})
    return out


async def measure(st: Settings, strategy: str, server: LatencyServer, db: Path) -> Run:
    """One engine run, then its replays by the bare openai client and by aiohttp."""
    run = await engine_run(st, strategy, server, db)
    run.replay = await replay(run.scripts, server, "openai")
    run.raw_replay = await replay(run.scripts, server, "aiohttp")
    return run


async def bench(st: Settings, console: Console) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-critical-path-") as tmp,
        LatencyServer(SUITE, ttft_ms=st.ttft_ms, tokens_per_s=0.0) as server,
    ):
        work = Path(tmp)
        # unmeasured: imports, templates, the server's first requests
        await measure(replace(st, tasks=1, n=2), "best_of_n", server, work / "warm.db")
        for strategy in st.strategies:
            runs: list[Run] = []
            for rep in range(st.repeats):
                console.log(f"{strategy}: run {rep + 1}/{st.repeats}")
                runs.append(await measure(st, strategy, server, work / f"{strategy}-{rep}.db"))
            results.append(row(strategy, st, runs))
        described = server.describe()
    return {
        "benchmark": "critical_path",
        "machine": machine(),
        "config": {
            **asdict(st),
            "strategies": list(st.strategies),
            "suite": SUITE,
            "model": f"openai:{MODEL}@<latency server>/v1",
            "cache": False,
            "task_concurrency": 1,
            "max_inflight_calls_default": RunConfig().max_inflight_calls,
            "server": described,
            "params": {s: st.params(s) for s in st.strategies},
        },
        "baseline": {
            "what": "a bare openai.AsyncOpenAI client (DefaultAioHttpClient) replaying the "
            "run's HTTP bodies in its dependency order against the same server: each wave "
            "at once (MCTS: each rollout once its parent is back, at most P at once)",
            "replay_wall_s": {r["strategy"]: r["replay_wall_s"] for r in results},
            "replay_over_bound": {r["strategy"]: r["replay_over_bound"] for r in results},
            "raw_replay_over_bound": {r["strategy"]: r["raw_replay_over_bound"] for r in results},
        },
        "results": results,
        "headline": {
            f"{r['strategy']}_{k}": r[k]
            for r in results
            for k in ("wall_over_bound", "replay_over_bound", "wall_over_replay")
        },
        "targets": targets(st, results),
    }


# ------------------------------------------------------------------ output


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


COLUMNS = (
    "strategy",
    "calls",
    "chain",
    "waves",
    "bound s",
    "wall s",
    "replay s",
    "wall/bound",
    "replay/bound",
    "wall/replay",
    "aiohttp/bound",
    "CPU ms/call",
    "median call ms",
)


def cells(r: dict[str, Any]) -> list[str]:
    return [
        r["strategy"],
        str(r["calls"]),
        str(r["chain_calls"]),
        str(r["bound_waves"]),
        f"{r['bound_s']:.2f}",
        f"{r['wall_s']:.2f}",
        f"{r['replay_wall_s']:.2f}",
        _num(r["wall_over_bound"], ".3f"),
        _num(r["replay_over_bound"], ".3f"),
        _num(r["wall_over_replay"], ".3f"),
        _num(r["raw_replay_over_bound"], ".3f"),
        _num(r["engine_cpu_ms_per_call"], ".2f"),
        f"{1000 * r['call_latency_median_s']:.1f}",
    ]


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        "## critical_path: wall time against the critical-path bound",
        "",
        f"{cfg['tasks']} arithmetic task(s) one after another per strategy, through the engine "
        f"and `openai:sim@…` against a server answering after {cfg['ttft_ms']:g} ms; median "
        f"of {cfg['repeats']} runs. Bound = waves × latency, the waves derived from the "
        "run's recorded calls (MCTS: Hu's schedule of its rollout forest at P). Baseline: "
        f"{result['baseline']['what']}; aiohttp/bound is the same replay from a plain "
        "aiohttp session (HTTP and the server alone).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * (len(COLUMNS) - 1),
    ]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in result["results"]]
    lines += ["", "Targets:", ""]
    for t in result["targets"]:
        state = "met" if t["met"] else ("not measured" if t["met"] is None else "missed")
        lines.append(f"- {t['target']}: {_num(t['value'], '.3f')} ({state}). {t['note']}")
    lines += [
        "",
        "```",
        "python -m bench.critical_path"
        + (" " + " ".join(result["machine"]["argv"]) if result["machine"].get("argv") else ""),
        "```",
        "",
    ]
    return "\n".join(lines)


def show(result: dict[str, Any], console: Console) -> None:
    cfg = result["config"]
    t = Table(
        title=f"critical path: {cfg['tasks']} task(s) per strategy, latency "
        f"{cfg['ttft_ms']:g} ms, median of {cfg['repeats']}"
    )
    for col in COLUMNS:
        t.add_column(col, justify="left" if col == "strategy" else "right")
    for r in result["results"]:
        t.add_row(*cells(r))
    console.print(t)
    for tg in result["targets"]:
        state = "met" if tg["met"] else "MISSED"
        console.print(f"{tg['target']}: {_num(tg['value'], '.3f')} {state}. {tg['note']}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Wall time of best_of_n, refine, beam and mcts "
        "against their critical-path bound (see the docstring)."
    )
    ap.add_argument("--quick", action="store_true", help="1 task each, small sizes, 10 ms")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default: bench/results/critical_path.json for a full "
        "run; none for --quick)",
    )
    ap.add_argument("--ttft-ms", type=float, default=None, help="server latency per request")
    ap.add_argument("--tasks", type=int, default=None, help="tasks per strategy")
    ap.add_argument("--repeats", type=int, default=None, help="runs per strategy (median)")
    ap.add_argument("--n", type=int, default=None, help="best_of_n: candidates, each judged")
    ap.add_argument("--iterations", type=int, default=None, help="mcts: rollouts per search")
    ap.add_argument("--parallel", type=int, default=None, help="mcts: rollouts in flight (P)")
    ap.add_argument(
        "--strategies",
        type=str,
        default=None,
        help=f"comma-separated subset of {','.join(STRATEGIES)}",
    )
    args = ap.parse_args(argv)
    st = QUICK if args.quick else FULL
    if args.strategies:
        chosen = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
        bad = [s for s in chosen if s not in STRATEGIES]
        if bad or not chosen:
            ap.error(f"--strategies: choose from {','.join(STRATEGIES)}")
        st = replace(st, strategies=chosen)
    for name in ("ttft_ms", "tasks", "repeats", "n", "iterations", "parallel"):
        value = getattr(args, name)
        if value is not None:
            if value <= 0:
                ap.error(f"--{name.replace('_', '-')} must be positive")
            st = replace(st, **{name: value})
    if st.n > st.max_inflight_calls:  # best_of_n's own limit is the same 1024
        ap.error(f"--n must be at most {st.max_inflight_calls}")
    if st.parallel > 256:
        ap.error("--parallel must be at most 256 (mcts's limit)")
    console = Console() if Console().is_terminal else Console(width=160)
    result = asyncio.run(bench(st, console))
    show(result, console)
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    if write_result(result, out) is not None:
        console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
