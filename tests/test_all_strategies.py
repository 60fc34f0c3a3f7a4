"""Every registered strategy, on the sim: budgets hold, trees grow, runs are reproducible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deliberate import RunConfig, Store
from deliberate.engine.runner import arun
from deliberate.strategies.base import available_strategies

SUITE_FOR = {"auditor_critic": "solidity", "codet": "python", "evidence_refine": "evidence"}


def config(tmp_path: Path, name: str, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {"suite": SUITE_FOR.get(name, "arithmetic"), "strategy": name,
                            "model": "sim", "limit": 4, "cache": False,
                            "store": str(tmp_path / f"{name}.db"), "seed": 5}
    base.update(kw)
    return RunConfig.model_validate(base)


@pytest.mark.parametrize("name", sorted(available_strategies()))
async def test_strategy_respects_a_tight_token_budget(tmp_path: Path, name: str) -> None:
    budget = 1500
    res = await arun(config(tmp_path, name, task_budget={"max_tokens": budget}))
    assert res.summary["failed"] == 0
    for a in res.attempts:
        assert a.prompt_tokens + a.completion_tokens <= budget, (name, a.task_id)
        assert a.status in ("done", "budget_limited")
        if a.budget_limited:
            assert a.status == "budget_limited"


@pytest.mark.parametrize("name", sorted(available_strategies()))
async def test_strategy_grows_a_tree_and_is_deterministic(tmp_path: Path, name: str) -> None:
    first = await arun(config(tmp_path, name, limit=2))
    second = await arun(config(tmp_path, name, limit=2))
    assert [(a.task_id, a.answer) for a in first.attempts] == [
        (a.task_id, a.answer) for a in second.attempts]
    st = Store.open(str(tmp_path / f"{name}.db"))
    async with st:
        nodes, _ = await st.load_tree(first.run_id, first.attempts[0].task_id)
    assert len(nodes) >= 2  # the root and at least one candidate
    assert all(n.parent_id in {m.id for m in nodes} for n in nodes if n.parent_id)
    assert first.attempts[0].final_node_id in {n.id for n in nodes}
