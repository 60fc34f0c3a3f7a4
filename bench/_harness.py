"""What every issue-7 benchmark shares: the latency server in its own process, the
machine record, CPU and memory readings, and the result file.

The latency server is the sim's OpenAI-compatible app (``deliberate sim serve``), which
already has every knob a benchmark needs: time to first token, tokens per second,
failure rate and maximum concurrency (``ServerConfig``). It runs in a child process
(``python -m bench.latency_server``, which also serves it by hand) so that its CPU is
not charged to the engine being measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPO = HERE.parent


class LatencyServer:
    """``python -m bench.latency_server`` in a child process (its CPU must not share the
    engine's GIL): ``with LatencyServer(ttft_ms=50) as srv: ... srv.base_url, srv.stats()``.
    """

    def __init__(self, suite: str = "arithmetic", *, sim_params: str = "",
                 **server: Any) -> None:
        from deliberate.models.sim.server import ServerConfig

        self.suite = suite
        self.config = ServerConfig.model_validate(server)
        self.sim_params = sim_params
        self._proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> LatencyServer:
        cmd = [sys.executable, "-m", "bench.latency_server", "--suite", self.suite,
               "--sim", self.sim_params, "--config", self.config.model_dump_json()]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self._proc = subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("ready "):
            self._proc.kill()
            _, err = self._proc.communicate()
            raise RuntimeError(f"the latency server did not start: {(line + err).strip()}")
        self.base_url = line.split()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        self._proc = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "the latency server is not started"
        return self._proc.pid

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def reset_stats(self) -> None:
        httpx.post(self.root_url + "/stats/reset", timeout=30).raise_for_status()

    def stats(self) -> dict[str, int]:
        r = httpx.get(self.root_url + "/stats", timeout=30)
        r.raise_for_status()
        return dict(r.json())

    def cpu_s(self) -> float | None:
        return process_cpu_s(self.pid)

    def describe(self) -> dict[str, Any]:
        return {"suite": self.suite, "sim_params": self.sim_params or None,
                **self.config.model_dump(exclude={"api_key", "port"})}


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used, from /proc; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def own_cpu_s() -> float:
    """CPU seconds this process has used, all threads (the engine's whole cost), at the
    clock's full resolution (``os.times`` counts 10 ms ticks)."""
    return time.process_time()


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux), else the peak."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mb()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    """Wall and own-CPU seconds of a block: ``with timed() as t: ...; t["wall_s"]``."""
    out: dict[str, float] = {}
    w0, c0 = time.perf_counter(), own_cpu_s()
    try:
        yield out
    finally:
        out["wall_s"] = time.perf_counter() - w0
        out["cpu_s"] = own_cpu_s() - c0


async def limited(jobs: Sequence[Awaitable[T]], c: int) -> list[T]:
    """Await ``jobs`` with at most ``c`` in flight; their results in order."""
    sem = asyncio.Semaphore(c)

    async def one(job: Awaitable[T]) -> T:
        async with sem:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs))


def fmt(value: Any) -> str:
    """A figure for a summary: floats to three significant digits, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def targets_markdown(targets: Sequence[dict[str, Any]]) -> list[str]:
    """One line per target: met, missed or not judged, the measured value, and the note."""
    marks = {True: "met", False: "missed", None: "not judged"}
    return [f"- **{marks[t['met']]}**: {t['target']} (measured {fmt(t['value'])}, limit "
            f"{fmt(t['limit'])}). {t.get('note') or ''}".rstrip() for t in targets]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ratio(value: float | None, baseline: float | None, digits: int = 3) -> float | None:
    if value is None or baseline is None or baseline == 0:
        return None
    return round(value / baseline, digits)


def machine() -> dict[str, Any]:
    """The machine's state is part of a result."""
    import deliberate

    commit = _git_head(REPO)
    source = Path(deliberate.__file__).resolve().parent
    return {"cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "deliberate": deliberate.__version__,
            "commit": commit, "load_average": load_average(), "argv": sys.argv[1:],
            # the engine measured: normally this checkout, but a before-figure runs the
            # benchmark of this checkout on an older source tree (bench/README.md)
            "deliberate_source": str(source), "deliberate_commit": _git_head(source)}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _git_head(where: Path) -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def write_result(payload: dict[str, Any], out: Path | None) -> Path | None:
    """Write a result as indented JSON (creating its folder); None writes nothing."""
    if out is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return out
