"""Peers side by side: the same workloads through deliberate, optillm and DSPy.

Issue 7 asks for best-of-N, self-consistency and MCTS-like / refine workloads run
through optillm (a proxy in front of the latency server) and DSPy (``dspy.BestOfN``,
``dspy.Refine``, pointed at the same server) against deliberate, on the same tasks,
in one run: wall time, calls, tokens and the ratio to deliberate, each peer's version
and configuration stated. Target: deliberate ahead of both on every shared workload.

**What runs.** One latency server (``bench._harness.LatencyServer``: the sim's
OpenAI-compatible server in a child process, answering each request after
``ttft_ms``) serves every system. The first ``tasks`` ``arithmetic`` tasks go through
each system with at most ``concurrency`` tasks in flight; the server's ``/stats`` are
reset before each system, so its request and token counts are that system's alone.

- **deliberate** (the baseline of each workload): ``deliberate.arun`` with
  ``openai:sim@<server>/v1``, ``concurrency`` tasks in flight, response cache off, a
  temporary SQLite store. As in ``parallel_rollouts``, every generated or refined
  candidate starts with a ``Draft <letters>.`` line (``DraftTags``) so the run's journal
  never answers an identical request itself (the sim writes few distinct texts; a
  real model at temperature 0.8 rarely repeats itself, and the peers resend them):
  deliberate pays for every call the peers pay for (``--plain-sim`` turns this off).
- **optillm** (``optillm==0.4.0``): its proxy (``optillm --base-url <server>/v1``,
  Flask's threaded server, the only one it ships) in the peer environment; the
  approach is chosen per request by the model-name prefix (``bon-sim``,
  ``self_consistency-sim``, ``mcts-sim``), MCTS parameters in the request body. A
  client in this process (``openai.AsyncOpenAI`` over aiohttp) sends the tasks with
  ``concurrency`` requests in flight: the proxy runs each strategy's calls one after
  another (that is how its strategies are written), so parallelism comes from
  concurrent requests, which is how it is meant to be used.
- **DSPy** (``dspy==3.4.1``): ``bench/_peer_dspy.py`` in the peer environment, its
  programs run with ``Module.batch(num_threads=concurrency)``, DSPy's parallel
  executor. Rewards are an LLM judge (a ``Predict`` scoring 0 to 10), so each attempt
  costs what a judged attempt costs the others.

Workloads (rows):

1. ``best_of_n`` (N = ``bon_n``): deliberate ``best_of_n`` (N samples, the LLM judge
   scores each) · optillm ``bon`` (N samples in one request, an LLM rating of each) ·
   ``dspy.BestOfN`` (N attempts, the judge's score as reward, threshold never reached
   so every attempt is made and judged, as in the others).
2. ``self_consistency`` (N = ``sc_n``, 5: optillm 0.4.0's self-consistency takes 5
   samples and the proxy has no setting for it, so all three use 5): deliberate
   ``self_consistency`` · optillm ``self_consistency`` (5 requests, the largest
   cluster of similar texts) · DSPy ``ChainOfThought(n=5)`` and ``dspy.majority``
   (engine ``litellm``, which keeps the backend's ``n``: one request; DSPy's default
   engine sends the n requests one after another).
3. ``mcts``: deliberate ``mcts`` (``mcts_iterations`` rollouts, k = 3, ``mcts_parallel``
   in flight, no early stop) · optillm ``mcts`` (as many simulations, depth 1,
   3 children per expansion, its defaults otherwise).
4. ``refine``: deliberate ``refine`` (at most ``refine_attempts`` versions, its critic
   accepting by verdict) · ``dspy.Refine`` (``refine_attempts`` attempts, the judge's
   score as reward, threshold 7 of 10: the band of the sim judge's "correct").

Measures per row: wall time (around ``arun``; around the client's requests for
optillm; around ``batch`` inside the DSPy process), the server's completed requests
and tokens, accuracy of the returned answers against the tasks', failures, and the
CPU seconds of the processes doing the work. Ratios are peer ÷ deliberate for the
same workload. The peers run from their own virtual environment
(``bench/.peers/venv``: their dependencies conflict with ours); ``--setup`` creates it
(pinned versions), a full run creates it when missing, ``--peer-python`` points at
another. Without one, ``--quick`` skips the peers and says so; the deliberate rows
still run. Peer processes start (and warm up with one unmeasured call) before any
measurement, so their start-up does not share the CPU with a measured run.

``python -m bench.peers`` (full: 30 tasks, 8 in flight, 100 ms; writes
``bench/results/peers.json``), ``--quick`` (3 tasks, small N, 5 ms; writes only with
``--out``), ``--setup`` (only the peer environment). ``--help`` lists the knobs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench._harness import (
    HERE,
    RESULTS,
    LatencyServer,
    limited,
    machine,
    own_cpu_s,
    process_cpu_s,
    ratio,
    write_result,
)

DEFAULT_OUT = RESULTS / "peers.json"
PEER_DIR = HERE / ".peers"
PEER_VENV = PEER_DIR / "venv"
DSPY_SCRIPT = HERE / "_peer_dspy.py"
SUITE = "arithmetic"
# torch first: pip then takes the CPU wheel instead of resolving a multi-GB CUDA build
# (litellm and openai: the versions these two resolved to when the benchmark was written)
PINS: tuple[tuple[str, ...], ...] = (
    ("torch==2.13.0",),
    ("optillm==0.4.0", "dspy==3.4.1", "litellm==1.106.2", "openai==2.54.0"),
)
VERSIONED = ("optillm", "dspy", "litellm", "openai", "flask", "torch")
WORKLOADS = ("best_of_n", "self_consistency", "mcts", "refine")
PEERS_OF: dict[str, tuple[str, ...]] = {
    "best_of_n": ("optillm", "dspy"),
    "self_consistency": ("optillm", "dspy"),
    "mcts": ("optillm",),
    "refine": ("dspy",),
}
OPTILLM_APPROACH = {"best_of_n": "bon", "self_consistency": "self_consistency", "mcts": "mcts"}
OPTILLM_SC_SAMPLES = 5  # AdvancedSelfConsistency's default; the proxy cannot change it
JUDGE_SCALE = (0.0, 10.0)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of one invocation."""

    tasks: int = 30
    concurrency: int = 8
    ttft_ms: float = 100.0
    tokens_per_s: float = 0.0
    bon_n: int = 8
    sc_n: int = OPTILLM_SC_SAMPLES
    mcts_iterations: int = 8
    mcts_parallel: int = 4
    mcts_k: int = 3
    optillm_mcts_depth: int = 1
    refine_attempts: int = 4
    refine_threshold: float = 7.0
    seed: int = 0
    draft_tags: bool = True
    workloads: tuple[str, ...] = WORKLOADS
    peers: bool = True

    def strategy_params(self, workload: str) -> dict[str, Any]:
        if workload == "best_of_n":
            return {"n": self.bon_n, "scorer": "judge"}
        if workload == "self_consistency":
            return {"n": self.sc_n}
        if workload == "mcts":
            return {
                "iterations": self.mcts_iterations,
                "k": self.mcts_k,
                "parallel": self.mcts_parallel,
                "threshold": None,
                "finished": None,
            }
        if workload == "refine":
            return {"max_rounds": self.refine_attempts - 1}
        raise ValueError(f"unknown workload {workload!r}")


FULL = Settings()
QUICK = Settings(
    tasks=3,
    concurrency=3,
    ttft_ms=5.0,
    bon_n=3,
    mcts_iterations=2,
    mcts_parallel=2,
    refine_attempts=2,
)


@dataclass(slots=True)
class Measure:
    """One system on one workload."""

    workload: str
    system: str
    status: str = "ok"
    wall_s: float | None = None
    calls: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    correct: int | None = None
    tasks: int = 0
    failed: int = 0
    cpu_s: dict[str, float | None] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int | None:
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return self.prompt_tokens + self.completion_tokens

    def read_server(self, stats: dict[str, int]) -> None:
        self.calls = int(stats.get("completed", 0))
        self.prompt_tokens = int(stats.get("prompt_tokens", 0))
        self.completion_tokens = int(stats.get("completion_tokens", 0))
        self.extra["server_max_in_flight"] = int(stats.get("max_in_flight", 0))


# ------------------------------------------------------------------ the peer environment


def default_peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def setup_peers(venv: Path = PEER_VENV, log: Path | None = None) -> Path:
    """Create the peers' virtual environment with the pinned versions; its python."""
    py = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("a") if log is not None else subprocess.DEVNULL
    try:
        if not py.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv)],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        for group in PINS:
            subprocess.run(
                [str(py), "-m", "pip", "install", "--quiet", *group],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=1800,
            )
    finally:
        if log is not None and not isinstance(out, int):
            out.close()
    return py


def peer_versions(py: Path) -> dict[str, str | None]:
    """``pip freeze`` versions of the packages the result must name."""
    proc = subprocess.run(
        [str(py), "-m", "pip", "freeze"], capture_output=True, text=True, timeout=120, check=False
    )
    found: dict[str, str | None] = dict.fromkeys(VERSIONED)
    for line in proc.stdout.splitlines():
        name, sep, ver = line.partition("==")
        key = name.strip().lower()
        if sep and key in found:
            found[key] = ver.strip()
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OptillmProxy:
    """optillm's proxy in the peer environment, in front of the latency server."""

    def __init__(self, py: Path, upstream: str, st: Settings, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            "--base-url",
            upstream,
            "--port",
            str(self.port),
            "--model",
            "sim",
            "--best-of-n",
            str(st.bon_n),
            "--mcts-simulations",
            str(st.mcts_iterations),
            "--mcts-depth",
            str(st.optillm_mcts_depth),
            "--log",
            "warning",
        ]
        # any OPENAI_API_KEY makes it use the OpenAI client on --base-url (else LiteLLM);
        # not "sk-…", which would make it build a second client per request
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPTILLM_")}
        env.update(
            OPENAI_API_KEY="bench-peers",
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [str(py.parent / "optillm"), *self.args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"optillm exited with {self.proc.returncode} at start-up")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"optillm did not answer /health within {timeout_s:g} s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class DspyWorker:
    """``_peer_dspy.py`` in the peer environment, spoken to in JSON lines."""

    def __init__(self, py: Path, upstream: str, warmup: str, log: Path) -> None:
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "DSPY_CACHEDIR": str(log.parent / "dspy-cache"),
        }
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [str(py), str(DSPY_SCRIPT)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.ready: dict[str, Any] = {}
        self._send({"base_url": upstream, "warmup": warmup})

    def _send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def _receive(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            raise RuntimeError(f"the DSPy worker said nothing within {timeout_s:g} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the DSPy worker exited ({self.proc.poll()})")
        return dict(json.loads(line))

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        self.ready = self._receive(timeout_s)

    def run(self, job: dict[str, Any], timeout_s: float = 3600.0) -> dict[str, Any]:
        self._send(job)
        return self._receive(timeout_s)

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


# ------------------------------------------------------------------ the systems


def is_right(answer: str | None, reference: str | None) -> bool:
    from deliberate.verifiers.answer import answers_match, extract_answer

    if answer is None:
        return False
    return answers_match(extract_answer(answer), reference) or answers_match(
        answer.strip(), reference
    )


async def run_deliberate(
    st: Settings, workload: str, server: LatencyServer, store_dir: Path, limit: int | None = None
) -> Measure:
    from bench.parallel_rollouts import DraftTags
    from deliberate import RunConfig, Store, arun
    from deliberate.models.registry import build_model
    from deliberate.tasks import load_suite

    spec = f"openai:sim@{server.base_url}"
    cfg = RunConfig.model_validate(
        {
            "suite": SUITE,
            "limit": limit or st.tasks,
            "strategy": workload,
            "strategy_params": st.strategy_params(workload),
            "model": spec,
            "cache": False,
            "concurrency": st.concurrency,
            "seed": st.seed,
            "grade_candidates": False,
            "store": str(store_dir / f"{workload}.db"),
            "max_inflight_calls": 1024,
        }
    )
    backend = build_model(spec, load_suite(SUITE))
    model = DraftTags(backend) if st.draft_tags else backend
    m = Measure(
        workload,
        "deliberate",
        settings={
            "strategy": workload,
            "strategy_params": st.strategy_params(workload),
            "concurrency": st.concurrency,
            "cache": False,
            "draft_tags": st.draft_tags,
            "max_inflight_calls": 1024,
        },
    )
    store = await Store.aopen(str(store_dir / f"{workload}.db"))
    try:
        server.reset_stats()
        srv0, cpu0 = server.cpu_s(), own_cpu_s()
        t0 = time.perf_counter()
        res = await arun(cfg, store=store, models={spec: model})
        m.wall_s = time.perf_counter() - t0
        srv1 = server.cpu_s()
        m.cpu_s = {
            "engine": own_cpu_s() - cpu0,
            "server": None if srv0 is None or srv1 is None else srv1 - srv0,
        }
        m.read_server(server.stats())
    finally:
        await store.aclose()
        with contextlib.suppress(Exception):
            await backend.aclose()
    m.tasks = len(res.attempts)
    m.correct = sum(1 for a in res.attempts if a.correct)
    m.failed = sum(1 for a in res.attempts if a.status == "failed")
    m.errors = [str(a.error) for a in res.attempts if a.error][:5]
    m.extra["engine_calls"] = int(res.summary.get("calls", 0))
    return m


def optillm_settings(st: Settings, workload: str) -> dict[str, Any]:
    approach = OPTILLM_APPROACH[workload]
    out: dict[str, Any] = {
        "approach": approach,
        "model": f"{approach}-sim",
        "client_concurrency": st.concurrency,
        "server": "Flask threaded (optillm's own)",
    }
    if workload == "best_of_n":
        out.update(
            best_of_n=st.bon_n,
            selection="the highest of an LLM rating 0-10 per sample, asked one after another",
        )
    elif workload == "self_consistency":
        out.update(
            num_samples=OPTILLM_SC_SAMPLES,
            selection="the largest cluster of texts with similarity >= 0.8",
            note="samples asked one after another",
        )
    else:
        out.update(
            mcts_simulations=st.mcts_iterations,
            mcts_depth=st.optillm_mcts_depth,
            mcts_exploration=0.2,
            children_per_expansion=3,
        )
    return out


def optillm_body(st: Settings, workload: str, prompt: str) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
    if workload == "mcts":
        body.update(
            mcts_simulations=st.mcts_iterations,
            mcts_depth=st.optillm_mcts_depth,
            mcts_exploration=0.2,
        )
    return body


async def run_optillm(
    st: Settings, workload: str, server: LatencyServer, proxy: OptillmProxy, tasks: Sequence[Any]
) -> Measure:
    from openai import AsyncOpenAI, DefaultAioHttpClient

    m = Measure(workload, "optillm", settings=optillm_settings(st, workload))
    model = m.settings["model"]
    http = DefaultAioHttpClient(
        timeout=3600,
        limits=httpx.Limits(
            max_connections=st.concurrency * 2, max_keepalive_connections=st.concurrency * 2
        ),
    )
    client = AsyncOpenAI(
        base_url=proxy.url + "/v1", api_key="bench-peers", max_retries=0, http_client=http
    )
    answers: dict[str, str | None] = {}
    async def one(task: Any) -> None:
        body = optillm_body(st, workload, task.prompt)
        try:
            reply = await client.chat.completions.create(
                model=model, messages=body.pop("messages"), extra_body=body or None
            )
            answers[task.id] = reply.choices[0].message.content
        except Exception as exc:  # counted as the task's failure, not hidden
            answers[task.id] = None
            m.errors.append(f"{type(exc).__name__}: {exc}"[:300])

    try:
        server.reset_stats()
        srv0, prx0, cpu0 = server.cpu_s(), process_cpu_s(proxy.proc.pid), own_cpu_s()
        t0 = time.perf_counter()
        await limited([one(t) for t in tasks], st.concurrency)
        m.wall_s = time.perf_counter() - t0
        srv1, prx1 = server.cpu_s(), process_cpu_s(proxy.proc.pid)
        m.cpu_s = {
            "client": own_cpu_s() - cpu0,
            "proxy": None if prx0 is None or prx1 is None else prx1 - prx0,
            "server": None if srv0 is None or srv1 is None else srv1 - srv0,
        }
        m.read_server(server.stats())
    finally:
        await client.close()
    score(m, tasks, answers)
    if tasks and m.failed == len(tasks):
        m.status = f"failed: every request to the proxy failed ({m.errors[0] if m.errors else ''})"
    return m


def dspy_settings(st: Settings, workload: str) -> dict[str, Any]:
    judge = "LLM judge: Predict(Judge) 'question, response -> score: float', 0 to 10, T=0"
    base: dict[str, Any] = {
        "num_threads": st.concurrency,
        "batch": "Module.batch",
        "lm": "dspy.LM('openai/sim', cache=False, temperature=1.0)",
    }
    if workload == "best_of_n":
        base.update(
            module="dspy.BestOfN(ChainOfThought('question -> answer'))",
            N=st.bon_n,
            reward_fn=judge,
            threshold=None,
            engine="auto",
            note="threshold never reached: all N attempts are made and judged",
        )
    elif workload == "self_consistency":
        base.update(
            module="ChainOfThought('question -> answer', n=N) + dspy.majority",
            N=st.sc_n,
            engine="litellm",
            note="engine litellm keeps the backend's n (one request); the default "
            "engine sends n requests one after another",
        )
    else:
        base.update(
            module="dspy.Refine(ChainOfThought('question -> answer'))",
            N=st.refine_attempts,
            reward_fn=judge,
            threshold=st.refine_threshold,
            engine="auto",
        )
    return base


def dspy_job(st: Settings, workload: str, tasks: Sequence[Any]) -> dict[str, Any]:
    n = {"best_of_n": st.bon_n, "self_consistency": st.sc_n, "refine": st.refine_attempts}[workload]
    return {
        "workload": workload,
        "tasks": [{"id": t.id, "prompt": t.prompt} for t in tasks],
        "concurrency": st.concurrency,
        "n": n,
        "threshold": st.refine_threshold if workload == "refine" else None,
        "engine": "litellm" if workload == "self_consistency" else "auto",
    }


def run_dspy(
    st: Settings, workload: str, server: LatencyServer, worker: DspyWorker, tasks: Sequence[Any]
) -> Measure:
    m = Measure(workload, "dspy", settings=dspy_settings(st, workload))
    server.reset_stats()
    srv0, wk0 = server.cpu_s(), process_cpu_s(worker.proc.pid)
    t0 = time.perf_counter()
    out = worker.run(dspy_job(st, workload, tasks))
    outer = time.perf_counter() - t0
    srv1, wk1 = server.cpu_s(), process_cpu_s(worker.proc.pid)
    m.read_server(server.stats())
    if "error" in out:
        m.status = f"failed: {out['error']}"[:300]
        return m
    m.wall_s = float(out["wall_s"])
    m.extra["round_trip_s"] = outer
    m.cpu_s = {
        "dspy": None if wk0 is None or wk1 is None else wk1 - wk0,
        "server": None if srv0 is None or srv1 is None else srv1 - srv0,
    }
    m.errors = list(out.get("errors", []))
    score(m, tasks, out.get("answers", {}))
    return m


def score(m: Measure, tasks: Sequence[Any], answers: dict[str, str | None]) -> None:
    m.tasks = len(tasks)
    m.correct = sum(1 for t in tasks if is_right(answers.get(t.id), t.answer))
    m.failed = sum(1 for t in tasks if answers.get(t.id) is None)


def skipped(workload: str, system: str, why: str, st: Settings) -> Measure:
    settings = (
        optillm_settings(st, workload) if system == "optillm" else dspy_settings(st, workload)
    )
    return Measure(workload, system, status=f"skipped: {why}", settings=settings)


# ------------------------------------------------------------------ the run


@dataclass(slots=True)
class Peers:
    """What the peer side has: a python, versions, the two processes, or why not."""

    python: Path | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    optillm: OptillmProxy | None = None
    dspy: DspyWorker | None = None
    problems: dict[str, str] = field(default_factory=dict)

    def why_not(self, system: str) -> str | None:
        if self.python is None:
            return self.problems.get("env", "no peer environment")
        if system in self.problems:
            return self.problems[system]
        return None


@contextlib.contextmanager
def peer_processes(
    st: Settings,
    py: Path | None,
    server: LatencyServer,
    work: Path,
    env_problem: str | None,
    warmup: str,
) -> Iterator[Peers]:
    """Start the peers (both at once), wait until each is warm; close them after."""
    peers = Peers(python=py)
    if env_problem:
        peers.problems["env"] = env_problem
    wanted = {p for w in st.workloads for p in PEERS_OF[w]} if st.peers else set()
    try:
        if py is not None and wanted:
            peers.versions = peer_versions(py)
            if "optillm" in wanted:
                try:
                    peers.optillm = OptillmProxy(py, server.base_url, st, work / "optillm.log")
                except OSError as exc:
                    peers.problems["optillm"] = f"optillm did not start: {exc}"
            if "dspy" in wanted:
                try:
                    peers.dspy = DspyWorker(py, server.base_url, warmup, work / "dspy.log")
                except OSError as exc:
                    peers.problems["dspy"] = f"the DSPy worker did not start: {exc}"
            if peers.optillm is not None:
                try:
                    peers.optillm.wait_ready()
                    httpx.post(
                        peers.optillm.url + "/v1/chat/completions",
                        timeout=120,
                        json={
                            "model": "none-sim",
                            "messages": [{"role": "user", "content": warmup}],
                        },
                    )
                except (RuntimeError, httpx.HTTPError) as exc:
                    peers.problems["optillm"] = f"optillm failed at start-up: {exc}"
            if peers.dspy is not None:
                try:
                    peers.dspy.wait_ready()
                except (RuntimeError, ValueError) as exc:
                    peers.problems["dspy"] = f"the DSPy worker failed at start-up: {exc}"
        yield peers
    finally:
        if peers.optillm is not None:
            peers.optillm.close()
        if peers.dspy is not None:
            peers.dspy.close()


def find_peer_python(
    explicit: Path | None, create: bool, work: Path
) -> tuple[Path | None, str | None]:
    """The peers' python, or None and why (creating or completing the environment if asked)."""
    if explicit is not None:
        if not explicit.exists():
            return None, f"no python at {explicit}"
        return complete(explicit)
    py = default_peer_python()
    if py.exists() and complete(py)[0] is not None:
        return py, None
    if not create:
        return None, "no peer environment (python -m bench.peers --setup creates it)"
    try:
        return complete(setup_peers(log=work / "setup.log"))
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"the peer environment could not be set up: {exc}"


def complete(py: Path) -> tuple[Path | None, str | None]:
    """``py`` if optillm and dspy are installed in its environment, else None and why."""
    versions = peer_versions(py)
    missing = [name for name in ("optillm", "dspy") if versions.get(name) is None]
    if missing:
        return None, f"the environment of {py} lacks {', '.join(missing)}"
    return py, None


async def measure_all(
    st: Settings, server: LatencyServer, peers: Peers, work: Path, console: Console | None
) -> list[Measure]:
    from deliberate.tasks import load_suite

    tasks = load_suite(SUITE).tasks[: st.tasks]
    out: list[Measure] = []
    # unmeasured warm-up of the engine (imports, templates, connections)
    await run_deliberate(replace(st, bon_n=2), "best_of_n", server, work, limit=1)
    for w in st.workloads:
        rows = [await run_deliberate(st, w, server, work)]
        for system in PEERS_OF[w] if st.peers else ():
            why = peers.why_not(system)
            if why is not None:
                rows.append(skipped(w, system, why, st))
            elif system == "optillm":
                assert peers.optillm is not None
                rows.append(await run_optillm(st, w, server, peers.optillm, tasks))
            else:
                assert peers.dspy is not None
                try:
                    rows.append(await asyncio.to_thread(run_dspy, st, w, server, peers.dspy, tasks))
                except (RuntimeError, ValueError) as exc:
                    rows.append(skipped(w, system, f"failed: {exc}", st))
                    peers.problems["dspy"] = f"the DSPy worker failed: {exc}"
        out += rows
        if console is not None:
            console.print(
                f"[dim]{w}: "
                + ", ".join(
                    f"{r.system} {r.wall_s:.2f} s"
                    if r.wall_s is not None
                    else f"{r.system} {r.status}"
                    for r in rows
                )
                + "[/]"
            )
    return out


CRITICAL_PATH = {
    ("best_of_n", "deliberate"): "2 latencies a task (N samples in one request, N judge "
    "calls at once)",
    ("best_of_n", "optillm"): "1 + N latencies a task (N ratings one after another)",
    ("best_of_n", "dspy"): "2N latencies a task (attempt, then its judgement, N times)",
    ("self_consistency", "deliberate"): "1 latency a task (one request of N samples)",
    ("self_consistency", "optillm"): "5 latencies a task (5 requests one after another)",
    ("self_consistency", "dspy"): "1 latency a task (one request of n samples)",
    ("mcts", "deliberate"): "about 2 × iterations / parallel latencies a task (expansion, "
    "then valuation, per rollout; parallel rollouts in flight)",
    ("mcts", "optillm"): "7 latencies per simulation (3 children in one request, 3 "
    "'next user query' calls, a simulated turn of 2 calls, an evaluation), one after another",
    ("refine", "deliberate"): "2 latencies per version (write, critique)",
    ("refine", "dspy"): "3 latencies per failed attempt (attempt, judgement, feedback), 2 for "
    "the last",
}


def row_dict(m: Measure, base: Measure | None) -> dict[str, Any]:
    acc = None if m.correct is None or not m.tasks else round(m.correct / m.tasks, 3)
    out: dict[str, Any] = {
        "workload": m.workload,
        "system": m.system,
        "status": m.status,
        "wall_s": m.wall_s,
        "calls": m.calls,
        "prompt_tokens": m.prompt_tokens,
        "completion_tokens": m.completion_tokens,
        "tokens": m.tokens,
        "tasks": m.tasks,
        "correct": m.correct,
        "accuracy": acc,
        "failed": m.failed,
        "cpu_s": {k: None if v is None else round(v, 3) for k, v in m.cpu_s.items()},
        "critical_path": CRITICAL_PATH.get((m.workload, m.system)),
        "settings": m.settings,
        "errors": m.errors,
        **m.extra,
    }
    ok = m.status == "ok" and base is not None and base.status == "ok"
    out["ratio_to_deliberate"] = {
        "wall": ratio(m.wall_s, base.wall_s) if ok and base else None,
        "calls": ratio(m.calls, base.calls) if ok and base else None,
        "tokens": ratio(m.tokens, base.tokens) if ok and base else None,
    }
    return out


def target_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per peer row: deliberate ahead on wall time, and on tokens (the issue's "ahead")."""
    base = {r["workload"]: r for r in rows if r["system"] == "deliberate"}
    out: list[dict[str, Any]] = []
    for r in rows:
        if r["system"] == "deliberate":
            continue
        out.append(wall_target(r, base.get(r["workload"])))
        out.append(token_target(r, base.get(r["workload"])))
    return out


def wall_target(r: dict[str, Any], b: dict[str, Any] | None) -> dict[str, Any]:
    w, peer, rt = r["workload"], r["system"], r["ratio_to_deliberate"]
    value = rt["wall"]
    t: dict[str, Any] = {
        "target": f"deliberate ahead of {peer} on {w}: {peer}'s wall time ÷ deliberate's > 1",
        "value": value,
        "limit": 1.0,
        "met": None if value is None else value > 1.0,
    }
    if value is None or b is None:
        t["note"] = f"not measured: {r['status']}"
        return t
    facts = (
        f"{peer} {r['wall_s']:.2f} s against {b['wall_s']:.2f} s; calls ×{rt['calls']}; "
        f"critical path: {peer} {r['critical_path']}, deliberate {b['critical_path']}"
    )
    if value > 1.0:
        t["note"] = f"ahead by {value:.2f}×: {facts}"
    else:
        t["note"] = (
            f"missed: deliberate takes {1 / value:.2f}× {peer}'s wall time "
            f"({(1 / value - 1) * 100:.0f}% slower). {facts}. " + gap_cause(r, b)
        )
    return t


def token_target(r: dict[str, Any], b: dict[str, Any] | None) -> dict[str, Any]:
    w, peer, rt = r["workload"], r["system"], r["ratio_to_deliberate"]
    value = rt["tokens"]
    t: dict[str, Any] = {
        "target": f"deliberate ahead of {peer} on {w}: {peer}'s tokens ÷ deliberate's >= 1",
        "value": value,
        "limit": 1.0,
        "met": None if value is None else value >= 1.0,
    }
    if value is None or b is None:
        t["note"] = f"not measured: {r['status']}"
        return t
    split = f"{per_call(b, 'deliberate')}; {per_call(r, peer)}"
    if value >= 1.0:
        t["note"] = f"{peer} uses {value:.2f}× deliberate's tokens: {split}"
    else:
        t["note"] = (
            f"missed: deliberate uses {1 / value:.2f}× {peer}'s tokens. {split}. "
            + TOKEN_CAUSE.get((w, peer), "")
        )
    return t


def per_call(r: dict[str, Any], name: str) -> str:
    calls = r["calls"] or 1
    return (
        f"{name} {r['calls']} calls × ({r['prompt_tokens'] / calls:.0f} prompt + "
        f"{r['completion_tokens'] / calls:.0f} completion tokens)"
    )


TOKEN_CAUSE = {
    ("best_of_n", "optillm"): "deliberate's judge writes a JSON critique, verdict and score, "
    "and its prompt carries the judge's instructions; optillm's rating is a bare number.",
    ("mcts", "optillm"): "deliberate's value calls write a JSON explanation, advice and "
    "score, and its expansions and valuations carry the solution so far; optillm's "
    "evaluation is a bare number and its calls carry a short dialogue.",
}


def gap_cause(peer: dict[str, Any], base: dict[str, Any]) -> str:
    """What the measured figures say about a missed wall-time target."""
    parts = []
    pc, bc = peer.get("calls") or 0, base.get("calls") or 0
    if bc > pc:
        parts.append(f"deliberate made {bc - pc} more server calls")
    cpu = base.get("cpu_s", {}).get("engine")
    if cpu is not None and base.get("calls"):
        parts.append(
            f"the engine spent {1000 * cpu / base['calls']:.1f} ms of CPU per call "
            f"({cpu:.2f} s in all)"
        )
    parts.append(
        f"both ran {base['settings'].get('concurrency')} tasks in flight against the same "
        "server, so the gap is per-task latency (calls in sequence) or CPU"
    )
    return "Measured: " + "; ".join(parts) + "."


async def bench(
    st: Settings, peer_python: Path | None, create_env: bool, console: Console | None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        work = Path(tmp)
        py, env_problem = (
            (None, "peers off (--no-peers)")
            if not st.peers
            else find_peer_python(peer_python, create_env, work)
        )
        from deliberate.tasks import load_suite

        warmup = load_suite(SUITE).tasks[-1].prompt
        with (
            LatencyServer(SUITE, ttft_ms=st.ttft_ms, tokens_per_s=st.tokens_per_s) as server,
            peer_processes(st, py, server, work, env_problem, warmup) as peers,
        ):
            measures = await measure_all(st, server, peers, work, console)
            peer_info = {
                "python": None if peers.python is None else str(peers.python),
                "versions": peers.versions,
                "problems": peers.problems,
                "optillm_command": None
                if peers.optillm is None
                else ["optillm", *peers.optillm.args],
                "dspy": peers.dspy.ready if peers.dspy is not None else None,
            }
            server_desc = server.describe()
    base = {m.workload: m for m in measures if m.system == "deliberate"}
    rows = [row_dict(m, base.get(m.workload)) for m in measures]
    sees = sim_sees_conversation()
    headline: dict[str, float | None] = {}
    for r in rows:
        if r["system"] != "deliberate":
            for k in ("wall", "calls", "tokens"):
                headline[f"{r['workload']}.{r['system']}.{k}"] = r["ratio_to_deliberate"][k]
    return {
        "benchmark": "peers",
        "machine": machine(),
        "config": {
            **asdict(st),
            "suite": SUITE,
            "server": server_desc,
            "judge_scale_dspy": list(JUDGE_SCALE),
            "sim_rates_whole_conversation": sees,
        },
        "peers": peer_info,
        "notes": notes(sees, rows),
        "baseline": {
            "what": "deliberate on the same workload, tasks, server and task concurrency, "
            "measured in the same run",
            "rows": [r for r in rows if r["system"] == "deliberate"],
        },
        "results": rows,
        "headline": headline,
        "targets": target_rows(rows),
    }


def sim_sees_conversation() -> bool:
    """Whether the sim hands its handlers the whole request (needed to rate an earlier
    assistant message, as optillm asks)."""
    from deliberate.models.sim.core import HandlerContext

    return "messages" in HandlerContext.__dataclass_fields__


def notes(sees: bool, rows: list[dict[str, Any]]) -> list[str]:
    """What a reader of the figures must know about the peers on the sim."""
    out = []
    has_optillm = any(r["system"] == "optillm" and r["status"] == "ok" for r in rows)
    if has_optillm and not sees:
        out.append(
            "optillm's ratings (best_of_n, mcts) were coin flips between the sim judge's "
            "bands: rating 'the above response' needs the earlier messages, which the sim's "
            "HandlerContext does not carry yet, so optillm's best_of_n accuracy is that of a "
            "random pick; its wall time, calls and tokens are unaffected."
        )
    if has_optillm:
        out.append(
            "optillm's mcts is a dialogue search: after the first expansion its conversation "
            "keeps the answers but not the question, so its evaluations cannot check an "
            "answer against the question on any model (on the sim they are coin flips)."
        )
    return out


def run(
    quick: bool = False,
    settings: Settings | None = None,
    peer_python: Path | None = None,
    create_env: bool | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """The benchmark's payload (see the module docstring). A full run creates the peer
    environment when it is missing; ``--quick`` only uses one that exists."""
    st = settings or (QUICK if quick else FULL)
    create = (not quick) if create_env is None else create_env
    return asyncio.run(bench(st, peer_python, create, console))


# ------------------------------------------------------------------ reporting

COLUMNS = (
    "workload",
    "system",
    "wall s",
    "wall ÷ delib.",
    "calls",
    "calls ÷ delib.",
    "tokens",
    "tokens ÷ delib.",
    "accuracy",
    "status",
)


def _num(x: float | int | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def cells(r: dict[str, Any]) -> list[str]:
    rt = r["ratio_to_deliberate"]
    acc = "–" if r["correct"] is None else f"{r['correct']}/{r['tasks']}"
    return [
        r["workload"],
        r["system"],
        _num(r["wall_s"], ".2f"),
        _num(rt["wall"], ".2f"),
        _num(r["calls"], "d"),
        _num(rt["calls"], ".2f"),
        _num(r["tokens"], ",d"),
        _num(rt["tokens"], ".2f"),
        acc,
        r["status"].split(":")[0],
    ]


def markdown(result: dict[str, Any]) -> str:
    cfg, peers = result["config"], result["peers"]
    v = peers.get("versions") or {}
    lines = [
        "## peers: deliberate, optillm and DSPy side by side",
        "",
        f"The first {cfg['tasks']} `{cfg['suite']}` tasks per workload and system, "
        f"{cfg['concurrency']} tasks in flight, one latency server answering after "
        f"{cfg['ttft_ms']:g} ms. Baseline: {result['baseline']['what']}. Ratios are "
        "peer ÷ deliberate; calls and tokens are the server's counts.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---:|" * (len(COLUMNS) - 3) + "---|",
    ]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in result["results"]]
    lines += [
        "",
        "Peers (pip freeze of the peer environment): "
        + (", ".join(f"{k} {val}" for k, val in v.items() if val) or "none"),
        "",
    ]
    for r in result["results"]:
        if r["system"] != "deliberate":
            s = "; ".join(f"{k}={val}" for k, val in r["settings"].items())
            lines.append(f"- {r['workload']} / {r['system']}: {s}")
    if result.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    lines += ["", "Targets:", ""]
    for t in result["targets"]:
        state = "met" if t["met"] else ("not measured" if t["met"] is None else "missed")
        lines.append(f"- {t['target']}: {_num(t['value'], '.2f')} ({state}). {t['note']}")
    argv = result["machine"].get("argv") or []
    lines += [
        "",
        "```",
        "python -m bench.peers" + (" " + " ".join(argv) if argv else ""),
        "```",
        "",
    ]
    return "\n".join(lines)


def show(result: dict[str, Any], console: Console) -> None:
    cfg = result["config"]
    t = Table(
        title=f"peers: {cfg['tasks']} tasks, {cfg['concurrency']} in flight, "
        f"{cfg['ttft_ms']:g} ms a call"
    )
    for col in COLUMNS:
        t.add_column(col, justify="left" if col in ("workload", "system", "status") else "right")
    for r in result["results"]:
        t.add_row(*cells(r))
    console.print(t)
    for tg in result["targets"]:
        state = "met" if tg["met"] else ("not measured" if tg["met"] is None else "MISSED")
        console.print(f"{state}: {tg['target']} ({_num(tg['value'], '.2f')})")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="deliberate side by side with optillm and DSPy")
    ap.add_argument("--quick", action="store_true", help="a small run (what the test runs)")
    ap.add_argument(
        "--out",
        type=Path,
        help="JSON output (default: bench/results/peers.json "
        "for a full run; --quick writes only with --out)",
    )
    ap.add_argument(
        "--setup",
        action="store_true",
        help="only create the peer environment (bench/.peers/venv) and exit",
    )
    ap.add_argument(
        "--peer-python", type=Path, help="python of an environment with optillm and dspy installed"
    )
    ap.add_argument("--no-peers", action="store_true", help="only the deliberate rows")
    ap.add_argument("--tasks", type=int, help="tasks per workload")
    ap.add_argument("--concurrency", type=int, help="tasks in flight, every system")
    ap.add_argument("--ttft-ms", type=float, help="the server's latency per call")
    ap.add_argument("--tokens-per-s", type=float, help="the server's output pace")
    ap.add_argument("--bon-n", type=int, help="best-of-N samples")
    ap.add_argument("--mcts-iterations", type=int, help="MCTS rollouts / optillm simulations")
    ap.add_argument("--mcts-parallel", type=int, help="deliberate MCTS rollouts in flight")
    ap.add_argument("--refine-attempts", type=int, help="refine: versions / DSPy attempts")
    ap.add_argument("--workloads", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    ap.add_argument(
        "--plain-sim",
        action="store_true",
        help="no Draft tags on deliberate's candidates (its journal may then "
        "answer identical requests itself)",
    )
    args = ap.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 140)
    if args.setup:
        py = setup_peers(log=PEER_DIR / "setup.log")
        console.print(f"peer environment: {py}")
        console.print(json.dumps(peer_versions(py)))
        return 0
    st = QUICK if args.quick else FULL
    updates: dict[str, Any] = {}
    for name in (
        "tasks",
        "concurrency",
        "ttft_ms",
        "tokens_per_s",
        "bon_n",
        "mcts_iterations",
        "mcts_parallel",
        "refine_attempts",
    ):
        if getattr(args, name) is not None:
            updates[name] = getattr(args, name)
    if args.workloads:
        chosen = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
        bad = [w for w in chosen if w not in WORKLOADS]
        if bad:
            ap.error(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(WORKLOADS)}")
        updates["workloads"] = chosen
    if args.no_peers:
        updates["peers"] = False
    if args.plain_sim:
        updates["draft_tags"] = False
    if updates:
        st = replace(st, **updates)
    result = run(args.quick, st, args.peer_python, console=console)
    out = args.out or (None if args.quick else DEFAULT_OUT)
    write_result(result, out)
    show(result, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
