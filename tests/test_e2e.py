"""End to end on loopback: the real openai client path against the sim server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from deliberate import RunConfig, Store
from deliberate.engine.runner import Engine, arun
from deliberate.models.sim import SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.tasks import load_suite
from deliberate.tasks.task import Suite

FAST_RETRY = {"max_attempts": 10, "base_delay_s": 0.01, "max_delay_s": 0.05}


def stats(srv: SimServer) -> dict[str, Any]:
    return dict(httpx.get(srv.url + "/stats").json())


def config(tmp_path: Path, model: str, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {
        "suite": "arithmetic", "limit": 10, "strategy": "best_of_n",
        "strategy_params": {"n": 4}, "model": model, "store": str(tmp_path / "runs.db"),
        "retry": FAST_RETRY, "seed": 7,
    }
    base.update(kw)
    return RunConfig.model_validate(base)


def outcome(res: Any) -> list[tuple[str, str | None, bool | None]]:
    return [(a.task_id, a.answer, a.correct) for a in res.attempts]


async def test_openai_backend_against_sim_server_survives_injected_faults(tmp_path: Path) -> None:
    suite = load_suite("arithmetic")
    with SimServer(suite, SimParams(), ServerConfig()) as clean:
        ref = await arun(config(tmp_path, f"openai:sim@{clean.base_url}", cache=False))
        clean_stats = stats(clean)
    faulty_cfg = ServerConfig(fail_rate=0.3, fail_statuses=(429, 500, 503), retry_after_s=0.0,
                              hang_rate=0.05, hang_s=1.5, fault_seed=3)
    with SimServer(suite, SimParams(), faulty_cfg) as faulty:
        res = await arun(config(tmp_path, f"openai:sim@{faulty.base_url}?timeout=0.5",
                                cache=False))
        s = stats(faulty)
    assert s["injected_failures"] > 0 and s["hung"] > 0
    assert res.summary["failed"] == 0
    assert outcome(res) == outcome(ref)  # same answers despite 429s, 500s and timeouts
    # every call paid once: identical requests within a task share one provider call
    assert res.summary["paid_calls"] == ref.summary["paid_calls"] == clean_stats["completed"]
    # n > 1 went out as one request per candidate set: 1 generation + 4 judge calls per task
    assert ref.summary["calls"] == 10 * 5


async def test_fan_out_when_the_endpoint_cannot_do_n(tmp_path: Path) -> None:
    suite = load_suite("arithmetic")
    with SimServer(suite, SimParams(), ServerConfig(supports_n=False)) as srv:
        res = await arun(config(tmp_path, f"openai:sim@{srv.base_url}?supports_n=false",
                                cache=False, limit=3, strategy="self_consistency"))
        s = stats(srv)
    assert res.summary["failed"] == 0
    assert s["requests"] == 3 * 4  # four single-sample requests per task
    assert all(a.answer is not None for a in res.attempts)


async def test_unreachable_endpoint_fails_fast_with_one_message(tmp_path: Path) -> None:
    from deliberate.errors import ModelConnectionError

    cfg = config(tmp_path, "openai:x@http://127.0.0.1:9/v1", retry={"max_attempts": 2,
                 "base_delay_s": 0.01, "max_delay_s": 0.01}, cache=False)
    with pytest.raises(ModelConnectionError, match=r"127\.0\.0\.1:9"):
        await arun(cfg)
    st = Store.open(str(tmp_path / "runs.db"))
    async with st:
        runs = await st.list_runs()
    assert runs[0].status == "failed"


async def test_same_seeded_run_twice_makes_no_model_call_the_second_time(tmp_path: Path) -> None:
    suite = load_suite("arithmetic")
    with SimServer(suite, SimParams(), ServerConfig()) as srv:
        first = await arun(config(tmp_path, f"openai:sim@{srv.base_url}"))
        after_first = stats(srv)["requests"]
        second = await arun(config(tmp_path, f"openai:sim@{srv.base_url}"))
        after_second = stats(srv)["requests"]
    assert after_first > 0 and after_second == after_first  # zero calls the second time
    assert outcome(first) == outcome(second)
    assert second.summary["paid_calls"] == 0
    assert second.summary["cached_calls"] == first.summary["calls"]


@pytest.mark.parametrize("seed", range(12))
async def test_token_budget_never_exceeded_and_tasks_marked(tmp_path: Path, seed: int) -> None:
    budget = 700 + 100 * seed
    res = await arun(config(tmp_path, "sim", seed=seed, cache=False, limit=6,
                            task_budget={"max_tokens": budget},
                            strategy_params={"n": 8 + seed % 5},
                            generator={"max_tokens": 160}, judge={"max_tokens": 120}))
    for a in res.attempts:
        assert a.prompt_tokens + a.completion_tokens <= budget
        if a.budget_limited:
            assert a.status == "budget_limited"
    assert any(a.status == "budget_limited" for a in res.attempts)


async def test_run_budget_is_a_hard_cap_across_tasks(tmp_path: Path) -> None:
    res = await arun(config(tmp_path, "sim", cache=False, limit=10,
                            run_budget={"max_tokens": 8000}))
    total = res.summary["prompt_tokens"] + res.summary["completion_tokens"]
    assert total <= 8000
    assert res.summary["budget_limited"] >= 1


async def test_tree_and_calls_are_linked_in_the_store(tmp_path: Path) -> None:
    res = await arun(config(tmp_path, "sim", cache=False, limit=2))
    st = Store.open(str(tmp_path / "runs.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, res.attempts[0].task_id)
        calls = await st.load_calls(res.run_id, res.attempts[0].task_id)
    root = [n for n in nodes if n.parent_id is None]
    assert len(root) == 1 and len(nodes) == 5
    call_ids = {c.id for c in calls.values()}
    gen = [n for n in nodes if n.operator == "generate"]
    assert all(n.call_id in call_ids for n in gen)
    for j in judgements:
        if j.role == "judge":
            assert set(j.meta["call_ids"]) <= call_ids
    assert {c.role for c in calls.values()} == {"generator", "judge"}
    assert all(c.response is not None and c.prompt_tokens > 0 for c in calls.values())


def test_sim_accuracy_rises_with_skill(tmp_path: Path) -> None:
    def acc(skill: float) -> float:
        res = asyncio.run(arun(config(tmp_path, f"sim?skill={skill}", cache=False, limit=30,
                                      strategy="self_consistency",
                                      strategy_params={"n": 1})))
        value = res.summary["accuracy"]
        assert isinstance(value, float)
        return value

    assert acc(0.2) < acc(0.9)


async def test_resuming_with_other_tasks_runs_every_unfinished_one(tmp_path: Path) -> None:
    """A run resumed over a suite that does not hold its finished tasks still runs every
    task of the new suite: the worker count comes from what is left to do, not from
    the suite's size minus the finished attempts."""
    tasks = load_suite("arithmetic").tasks
    cfg = config(tmp_path, "sim", cache=False, strategy="self_consistency",
                 strategy_params={"n": 1}, concurrency=2)
    await arun(cfg, run_id="r2", suite=Suite.of("first", tasks[:3]))
    again = await arun(cfg, run_id="r2", suite=Suite.of("second", tasks[3:5]))
    assert [a.task_id for a in again.attempts] == [t.id for t in tasks[3:5]]
    assert all(a.status == "done" for a in again.attempts)


async def test_engine_counts_replayed_calls_on_resume_in_process(tmp_path: Path) -> None:
    """A task whose calls are all journalled is re-run from the journal alone."""
    cfg = config(tmp_path, "sim", cache=False, limit=3)
    first = await arun(cfg, run_id="r1")
    st = Store.open(str(tmp_path / "runs.db"))
    async with st:
        # Pretend the process died before the attempts were marked done.
        for a in first.attempts:
            a.status = "running"
            st.put_attempt(a)
        await st.flush()
        engine = Engine(cfg, store=st)
        again = await engine.run("r1")
    assert engine.recorded_calls == 0 and engine.replayed_calls == first.summary["calls"]
    assert outcome(again) == outcome(first)
    assert json.dumps(again.summary["accuracy"]) == json.dumps(first.summary["accuracy"])
