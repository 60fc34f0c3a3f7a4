"""bench/engine_overhead.py and the latency server it shares: a --quick run's JSON, the
replayed request bodies, and the server's knobs. Nothing here asserts on time."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from bench import engine_overhead
from bench._harness import REPO, LatencyServer


def test_replayed_body_is_what_the_backend_sends() -> None:
    from deliberate.models.openai_backend import SampleCall, request_body

    rec = {"messages": [{"role": "user", "content": "2+2?"}], "temperature": 0.7,
           "top_p": None, "max_tokens": 64, "stop": ["\n\n"], "seed": 5,
           "response_format": None, "extra": {}, "n": 3, "sample_offset": 0, "tags": {}}
    req = engine_overhead.chat_request(rec)
    sent = {"model": "sim", "messages": rec["messages"],
            **request_body(req, SampleCall(offset=0, n=3, seed=5))}
    assert engine_overhead.body_of(rec) == sent


def test_quick_run_writes_consistent_figures(tmp_path: Path) -> None:
    out = tmp_path / "eo.json"
    r = subprocess.run([sys.executable, "-m", "bench.engine_overhead", "--quick", "--out",
                        str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["benchmark"] == "engine_overhead" and res["machine"]["cpu_count"]
    (row,) = res["results"]
    # every client made the same calls, counted by the server
    for client in ("engine", "backend", "bare"):
        calls = [p["calls"] for p in row["passes"][client]]
        assert calls == row["calls_per_repeat"] and min(calls) > 0
        assert all(p["cpu_s"] > 0 for p in row["passes"][client])
    c = row["cpu_ms_per_call"]
    assert row["overhead_ms_per_call"] == pytest.approx(c["engine"] - c["bare"], abs=1e-3)
    assert row["above_backend_ms_per_call"] == pytest.approx(c["engine"] - c["backend"],
                                                             abs=1e-3)
    assert row["engine_over_bare"] == pytest.approx(c["engine"] / c["bare"], abs=2e-3)
    (target,) = res["targets"]
    assert target["met"] == (target["value"] <= target["limit"])
    md = engine_overhead.markdown(res)
    assert md.startswith("## Engine overhead") and "python -m bench.engine_overhead" in md


def test_latency_server_applies_its_knobs() -> None:
    with LatencyServer(fail_rate=1.0, fail_statuses=[503]) as srv:
        r = httpx.post(srv.base_url + "/chat/completions", timeout=30,
                       json={"model": "sim", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503
        assert srv.stats()["injected_failures"] == 1
        assert srv.cpu_s() is not None
        assert srv.describe()["fail_rate"] == 1.0
    with LatencyServer(max_concurrency=1, ttft_ms=300) as srv:
        async_results: list[int] = []

        async def two() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                body = {"model": "sim", "messages": [{"role": "user", "content": "2+2?"}]}
                rs = await asyncio.gather(*(client.post(srv.base_url + "/chat/completions",
                                                        json=body) for _ in range(2)))
                async_results.extend(x.status_code for x in rs)

        asyncio.run(two())
        assert sorted(async_results) == [200, 429]


def test_latency_server_bad_flag_is_one_line() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.latency_server", "--fail-rate", "2"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("latency_server:") and "Traceback" not in r.stderr
