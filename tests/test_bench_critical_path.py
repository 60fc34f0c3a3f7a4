"""bench/critical_path.py: the dependency rules, the schedules, the replay order, and a
--quick run that writes what it documents.

Speed is the benchmark's business: nothing here asserts on wall-clock time.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench import critical_path as cp
from bench import parallel_rollouts

from deliberate.tree import JudgementRecord, ModelCallRecord, NodeRecord

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ synthetic runs


def node(nid: str, parent: str | None, call: str | None = None, **meta: Any) -> NodeRecord:
    return NodeRecord(
        id=nid,
        run_id="r",
        task_id="t",
        parent_id=parent,
        role="x",
        operator="x",
        call_id=call,
        meta=dict(meta),
    )


def rec(
    cid: str, about: str | None, start: float, end: float, role: str = "judge", n: int = 1
) -> ModelCallRecord:
    request = {
        "messages": [{"role": "user", "content": f"about {about}"}],
        "temperature": 0.5,
        "top_p": None,
        "max_tokens": 64,
        "stop": [],
        "seed": 7,
        "response_format": None,
        "extra": {},
        "n": n,
        "sample_offset": 0,
    }
    return ModelCallRecord(
        id=cid,
        run_id="r",
        task_id="t",
        node_id=about,
        key=cid,
        model="m",
        role=role,
        request=request,
        response={},
        latency_s=end - start,
        created_at=end,
    )


def judged(on: str, *calls: str) -> JudgementRecord:
    return JudgementRecord(
        id=f"j-{on}-{calls[0]}",
        run_id="r",
        task_id="t",
        node_id=on,
        source="model:m",
        role="judge",
        meta={"call_ids": list(calls)},
    )


def best_of_n(k: int) -> tuple[list[NodeRecord], list[JudgementRecord], list[ModelCallRecord]]:
    """Root; one generation call g makes k candidates; each judged by one call."""
    nodes = [node("root", None)] + [node(f"c{i}", "root", "g") for i in range(k)]
    calls = [rec("g", "root", 0.0, 1.0, "generator", n=k)]
    calls += [rec(f"j{i}", f"c{i}", 1.01, 2.0) for i in range(k)]
    return nodes, [judged(f"c{i}", f"j{i}") for i in range(k)], calls


def test_best_of_n_is_two_waves() -> None:
    nodes, judgements, records = best_of_n(4)
    p = cp.plan("best_of_n", nodes, judgements, records)
    assert p.chain_calls == 2 and p.bound_waves == 2 and p.calls == 5
    assert p.waves == [["g"], ["j0", "j1", "j2", "j3"]]
    assert p.edges == 4 and p.dropped_edges == 0


def test_refine_is_one_chain() -> None:
    """generate v0, critic on v0, refine v0 -> v1, critic on v1: four calls in a row."""
    nodes = [node("root", None), node("v0", "root", "g"), node("v1", "v0", "r0")]
    records = [
        rec("g", "root", 0, 1, "generator"),
        rec("c0", "v0", 1.1, 2, "critic"),
        rec("r0", "v0", 2.1, 3, "refiner"),
        rec("c1", "v1", 3.1, 4, "critic"),
    ]
    p = cp.plan("refine", nodes, [], records)
    assert p.chain_calls == 4
    assert p.waves == [["g"], ["c0"], ["r0"], ["c1"]]


def test_an_expansion_needs_its_siblings_values() -> None:
    """Beam/MCTS choose X among its siblings: X's expansion waits for all their values,
    even one that came back later than X's own."""
    nodes = [
        node("root", None),
        node("a", "root", "g"),
        node("b", "root", "g"),
        node("a1", "a", "ra"),
    ]
    records = [
        rec("g", "root", 0, 1, "generator"),
        rec("va", "a", 1.1, 2, "value"),
        rec("vb", "b", 1.1, 2.5, "value"),
        rec("ra", "a", 2.6, 3, "refiner"),
        rec("va1", "a1", 3.1, 4, "value"),
    ]
    deps = cp.dependencies(nodes, [], cp.calls_of(records))
    assert deps.needs["ra"] == {"g", "va", "vb"}
    assert deps.needs["va1"] == {"ra"}
    assert cp.plan("beam", nodes, [], records).chain_calls == 4


def test_a_repair_request_follows_the_one_it_repairs() -> None:
    nodes, _, records = best_of_n(1)
    records.append(rec("j0fix", "c0", 2.1, 3.0))
    p = cp.plan("best_of_n", nodes, [judged("c0", "j0", "j0fix")], records)
    assert p.chain_calls == 3


def test_an_edge_the_clock_contradicts_is_dropped() -> None:
    """A judge call that started before its candidate's call ended did not need it."""
    nodes, judgements, records = best_of_n(2)
    records[1] = rec("j0", "c0", 0.5, 2.0)
    p = cp.plan("best_of_n", nodes, judgements, records)
    assert p.dropped_edges == 1 and p.chain_calls == 2
    assert p.waves == [["g", "j0"], ["j1"]]


def test_failed_and_cached_calls_cost_nothing() -> None:
    nodes, judgements, records = best_of_n(2)
    records[1].error = "ModelHTTPError: 500"
    records[2].cached = True
    assert cp.plan("best_of_n", nodes, judgements, records).calls == 1


def random_forest(rng: random.Random, size: int) -> dict[str, str | None]:
    parent: dict[str, str | None] = {"r0": None}
    for i in range(1, size):
        parent[f"r{i}"] = f"r{rng.randrange(i)}" if rng.random() > 0.05 else None
    return parent


@pytest.mark.parametrize("seed", range(12))
def test_hu_rounds_are_a_valid_schedule_of_the_counted_length(seed: int) -> None:
    rng = random.Random(seed)
    parent = random_forest(rng, rng.randrange(1, 80))
    for p in (1, 2, 3, 8, 16):
        rounds = cp.hu_rounds(parent, p)
        assert len(rounds) == parallel_rollouts.critical_path_waves(parent, p)
        when = {r: i for i, rnd in enumerate(rounds) for r in rnd}
        assert sorted(when) == sorted(parent)  # every rollout exactly once
        assert all(len(rnd) <= p for rnd in rounds)
        assert all(q is None or when[q] < when[r] for r, q in parent.items())


def mcts_run() -> tuple[list[NodeRecord], list[ModelCallRecord]]:
    """Root expanded (g, 3 children a, b, c, valued); then a and b each expanded by
    one refine call, their children valued: three rollouts, a forest root -> a, b."""
    nodes = [node("root", None)] + [node(x, "root", "g", rollout=0) for x in "abc"]
    nodes += [node("a1", "a", "ra", rollout=1), node("b1", "b", "rb", rollout=2)]
    records = [rec("g", "root", 0, 1, "generator", n=3)]
    records += [rec(f"v{x}", x, 1.1, 2, "value") for x in "abc"]
    records += [
        rec("ra", "a", 2.1, 3, "refiner"),
        rec("rb", "b", 2.1, 3, "refiner"),
        rec("va1", "a1", 3.1, 4, "value"),
        rec("vb1", "b1", 3.1, 4, "value"),
    ]
    return nodes, records


def test_mcts_waves_follow_hu_rounds_at_p() -> None:
    nodes, records = mcts_run()
    wide = cp.plan("mcts", nodes, [], records, parallel=2)
    assert wide.rollout_rounds == wide.critical_path_waves == 2
    assert wide.bound_waves == 4 and wide.chain_calls == 4
    assert wide.waves == [["g"], ["va", "vb", "vc"], ["ra", "rb"], ["va1", "vb1"]]
    assert wide.rollout_calls["a"] == [["ra"], ["va1"]]
    assert wide.rollout_parent == {"root": None, "a": "root", "b": "root"}
    narrow = cp.plan("mcts", nodes, [], records, parallel=1)
    assert narrow.rollout_rounds == 3 and narrow.bound_waves == 6
    assert narrow.chain_calls == 4  # the chain does not know P
    assert narrow.inorder_rounds == 3


def test_http_bodies_are_what_the_backend_sends() -> None:
    one = cp.http_bodies(rec("g", "root", 0, 1, n=4))
    assert len(one) == 1
    assert one[0]["model"] == "sim" and one[0]["n"] == 4 and one[0]["seed"] == 7
    assert one[0]["messages"] == [{"role": "user", "content": "about root"}]
    assert "top_p" not in one[0] and "stop" not in one[0]
    many = cp.http_bodies(rec("g", "root", 0, 1, n=200))  # the profile's max_n is 128
    assert [b["n"] for b in many] == [128, 72]


def test_play_keeps_dependencies_and_the_slot_limit() -> None:
    """Rollouts wait for the one they grow from and hold one of P slots; waves go out
    one after another."""
    parent: dict[str, str | None] = {"root": None, "a": "root", "b": "root", "c": "root", "a1": "a"}
    rollouts = {r: [[{"r": r, "lv": 0}, {"r": r, "lv": 0}], [{"r": r, "lv": 1}]] for r in parent}
    sc = cp.Script(
        [[{"r": "tail", "lv": 0}]], rollouts, parent, ["root", "a", "b", "c", "a1"], parallel=2
    )
    assert sc.requests == 16
    log: list[tuple[str, str, int]] = []
    live: set[str] = set()
    peak = 0

    async def post(b: dict[str, Any]) -> None:
        nonlocal peak
        live.add(b["r"])
        peak = max(peak, len(live))
        log.append(("start", b["r"], b["lv"]))
        await asyncio.sleep(0.001)
        log.append(("end", b["r"], b["lv"]))
        if b["lv"] == 1 or b["r"] == "tail":
            live.discard(b["r"])

    asyncio.run(cp.play(sc, post))
    first_start = {r: log.index(("start", r, 0)) for r in [*parent, "tail"]}
    last_end = {r: max(i for i, e in enumerate(log) if e[0] == "end" and e[1] == r) for r in parent}
    assert all(q is None or last_end[q] < first_start[r] for r, q in parent.items())
    assert all(last_end[r] < first_start["tail"] for r in parent)
    assert peak <= 2
    assert len(log) == 2 * sc.requests


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--tasks", "0"],
        ["--strategies", "best_of_n,nope"],
        ["--ttft-ms", "x"],
        ["--n", "5000"],
    ):
        with pytest.raises(SystemExit) as exc:
            cp.main(argv)
        assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


# ------------------------------------------------------------------ the --quick run


def test_quick_run_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "critical_path.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.critical_path", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["benchmark"] == "critical_path"
    assert result["machine"]["cpu_count"] and "load_average" in result["machine"]
    cfg = result["config"]
    assert cfg["cache"] is False and cfg["max_inflight_calls"] > cfg["n"]
    latency = cfg["ttft_ms"] / 1000
    rows = {r["strategy"]: r for r in result["results"]}
    assert list(rows) == list(cp.STRATEGIES)
    for r in rows.values():
        assert r["failed_tasks"] == 0 and r["calls"] > 0
        # every recorded call reached the server once, and both replays sent the same
        assert r["one_request_per_call"] is True
        assert r["server_requests"] == r["http_requests"] == r["calls"]
        assert r["replay_server_requests"] == r["raw_replay_server_requests"] == r["calls"]
        assert r["dropped_edges"] == 0  # no rule claimed a dependency the clock denies
        assert 1 <= r["chain_calls"] <= r["bound_waves"] <= r["calls"]
        assert r["bound_s"] == pytest.approx(r["bound_waves"] * latency)
        assert r["wall_over_bound"] == round(r["wall_s"] / r["bound_s"], 3)
        assert r["replay_over_bound"] == round(r["replay_wall_s"] / r["bound_s"], 3)
        assert r["wall_over_replay"] == round(r["wall_s"] / r["replay_wall_s"], 3)
        assert r["raw_replay_over_bound"] == round(r["raw_replay_wall_s"] / r["bound_s"], 3)
        assert r["same_bound_every_run"] is True
        split = r["excess_split_ms_per_wave"]
        assert sum(split.values()) == pytest.approx(r["excess_ms_per_wave"])
        assert result["headline"][f"{r['strategy']}_wall_over_bound"] == r["wall_over_bound"]
    bon = rows["best_of_n"]
    assert bon["chain_calls"] == bon["bound_waves"] == 2
    assert bon["calls"] == cfg["n"] + 1 and bon["widest_wave"] == cfg["n"]
    assert bon["samples"] == 2 * cfg["n"]  # the n samples came in one call
    refine = rows["refine"]
    assert refine["chain_calls"] == refine["calls"] == 2 * cfg["rounds"] + 2
    beam = rows["beam"]
    assert beam["chain_calls"] == 2 * cfg["beam_depth"]
    mcts = rows["mcts"]
    assert mcts["rollouts"] == cfg["iterations"]
    assert mcts["rollout_rounds"] == mcts["critical_path_waves"]
    assert mcts["bound_waves"] >= 2 * mcts["rollout_rounds"]
    assert mcts["replay_server_max_in_flight"] <= cfg["parallel"] * cfg["k"]
    targets = {t["target"]: t for t in result["targets"]}
    assert len(targets) == 2
    for t in targets.values():
        assert t["limit"] == cp.TARGET and t["met"] == (t["value"] <= cp.TARGET)
        assert t["note"]
    md = cp.markdown(result)
    assert md.startswith("## ") and "| best_of_n |" in md and "python -m bench.critical_path" in md
