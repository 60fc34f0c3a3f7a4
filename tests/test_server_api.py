"""The JSON API of the server (deliberate.server.api) against a store filled by real runs.

Every field of the contract is checked against what the store holds, for a run made by
MCTS on the sim model (in process, and once through the openai client path against the
sim server), and for a sweep.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from deliberate.config import RunConfig
from deliberate.engine.runner import arun
from deliberate.evals.sweep import SweepConfig, arun_sweep
from deliberate.export import ExportOptions, aexport_run
from deliberate.models.sim import SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.server import api, pages
from deliberate.store import Store
from deliberate.tasks import load_suite
from deliberate.tree import JudgementRecord, NodeRecord

RUN_KEYS = {"id", "created_at", "status", "strategy", "suite", "model", "tasks", "accuracy",
            "tokens", "cost", "kind"}
TASK_KEYS = {"task_id", "status", "answer", "correct", "tokens", "calls", "nodes", "latency_s",
             "cost"}
TREE_NODE_KEYS = {"id", "parent_id", "role", "operator", "depth", "text", "answer", "value",
                  "visits", "reward", "prior", "chosen", "label", "judgements"}
CALL_KEYS = {"id", "role", "model", "messages", "response_text", "prompt_tokens",
             "completion_tokens", "latency_s", "cost", "cached", "error"}
ERROR_KEYS = {"message", "type", "code"}


def mcts_config(tmp_path: Path, model: str = "sim?skill=-0.3", **kw: Any) -> RunConfig:
    """MCTS with a weak sim: wrong and right candidates, and refinements that change text."""
    base: dict[str, Any] = {"suite": "arithmetic", "limit": 4, "strategy": "mcts",
                            "strategy_params": {"iterations": 8, "k": 2}, "model": model,
                            "store": str(tmp_path / "runs.db"), "cache": False, "seed": 5}
    base.update(kw)
    return RunConfig.model_validate(base)


def make_app(store: Store) -> FastAPI:
    """The smallest app mounting both routers; the real one opens the store in its lifespan."""
    app = FastAPI()
    app.state.store = store
    app.include_router(api.router)
    app.include_router(pages.router)
    return app


@pytest.fixture
async def run_id(tmp_path: Path) -> str:
    res = await arun(mcts_config(tmp_path))
    return res.run_id


@pytest.fixture
async def store(tmp_path: Path, run_id: str) -> AsyncIterator[Store]:
    async with await Store.aopen(str(tmp_path / "runs.db")) as s:
        yield s


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://deliberate.test") as c:
        yield c


async def get_json(client: httpx.AsyncClient, url: str, status: int = 200) -> Any:
    r = await client.get(url)
    assert r.status_code == status, r.text
    return r.json()


def grader_label(judgements: list[JudgementRecord]) -> str | None:
    verdicts = [j.verdict for j in judgements if j.role == "grader"]
    return verdicts[-1] if verdicts else None


# ------------------------------------------------------------------ runs and tasks


async def test_runs_list_matches_the_store(client: httpx.AsyncClient, store: Store,
                                           run_id: str) -> None:
    body = await get_json(client, "/api/runs?limit=10")
    assert set(body) == {"runs"}
    (row,) = body["runs"]
    assert set(row) == RUN_KEYS
    run = await store.get_run(run_id)
    assert run is not None
    attempts = await store.get_attempts(run_id)
    graded = [a for a in attempts if a.correct is not None]
    assert row["id"] == run_id and row["kind"] == "run"
    assert row["created_at"] == run.created_at and row["status"] == run.status == "done"
    assert (row["strategy"], row["suite"], row["model"]) == ("mcts", "arithmetic",
                                                             "sim?skill=-0.3")
    assert row["tasks"] == len(attempts) == 4
    assert row["accuracy"] == pytest.approx(sum(bool(a.correct) for a in graded) / len(graded))
    assert 0 < row["accuracy"] < 1  # the weak sim gets some tasks wrong
    assert row["tokens"] == sum(a.prompt_tokens + a.completion_tokens for a in attempts)
    assert row["cost"] == pytest.approx(sum(a.cost for a in attempts))


async def test_runs_list_honours_its_limit_newest_first(tmp_path: Path, store: Store,
                                                        client: httpx.AsyncClient) -> None:
    second = await arun(mcts_config(tmp_path, limit=1, seed=6), store=store)
    body = await get_json(client, "/api/runs?limit=1")
    assert [r["id"] for r in body["runs"]] == [second.run_id]
    assert len((await get_json(client, "/api/runs"))["runs"]) == 2
    bad = await client.get("/api/runs?limit=0")
    assert bad.status_code == 422


async def test_run_detail_matches_the_store(client: httpx.AsyncClient, store: Store,
                                            run_id: str) -> None:
    body = await get_json(client, f"/api/runs/{run_id}")
    assert set(body) == {"run", "tasks"}
    run = await store.get_run(run_id)
    assert run is not None
    assert body["run"] == {"id": run.id, "status": run.status, "created_at": run.created_at,
                           "config": run.config, "summary": run.summary}
    attempts = await store.get_attempts(run_id)
    assert [t["task_id"] for t in body["tasks"]] == [a.task_id for a in attempts]
    for row, a in zip(body["tasks"], attempts, strict=True):
        assert set(row) == TASK_KEYS
        assert row == {"task_id": a.task_id, "status": a.status, "answer": a.answer,
                       "correct": a.correct, "tokens": a.prompt_tokens + a.completion_tokens,
                       "calls": a.calls, "nodes": a.stats["nodes"], "latency_s": a.latency_s,
                       "cost": a.cost}
    assert {row["correct"] for row in body["tasks"]} == {True, False}


# ------------------------------------------------------------------ trees and nodes


async def test_tree_matches_the_store(client: httpx.AsyncClient, store: Store,
                                      run_id: str) -> None:
    for attempt in await store.get_attempts(run_id):
        body = await get_json(client, f"/api/runs/{run_id}/tasks/{attempt.task_id}/tree")
        assert set(body) == {"task_id", "root_id", "stats", "attempt", "nodes"}
        assert body["task_id"] == attempt.task_id
        assert body["root_id"] == attempt.root_id is not None
        assert body["stats"] == attempt.stats
        assert body["attempt"] == dataclasses.asdict(attempt)
        nodes, judgements = await store.load_tree(run_id, attempt.task_id)
        by_node: dict[str, list[JudgementRecord]] = {}
        for j in judgements:
            by_node.setdefault(j.node_id, []).append(j)
        assert [n["id"] for n in body["nodes"]] == [n.id for n in nodes]
        for got, n in zip(body["nodes"], nodes, strict=True):
            assert set(got) == TREE_NODE_KEYS
            js = by_node.get(n.id, [])
            assert got == {
                "id": n.id, "parent_id": n.parent_id, "role": n.role, "operator": n.operator,
                "depth": n.depth, "text": n.text[: api.TEXT_PREVIEW], "answer": n.answer,
                "value": n.value, "visits": n.visits, "reward": n.meta.get("reward"),
                "prior": n.meta.get("prior"), "chosen": bool(n.meta.get("chosen")),
                "label": grader_label(js),
                "judgements": [{"role": j.role, "score": j.score, "scale_min": j.scale_min,
                                "scale_max": j.scale_max, "verdict": j.verdict} for j in js]}
        # The chosen path runs from the root to the chosen node, one node per level.
        chosen = [n for n in body["nodes"] if n["chosen"]]
        ids = {n["id"] for n in chosen}
        assert len(chosen) >= 2 and attempt.final_node_id in ids and body["root_id"] in ids
        assert all(n["parent_id"] in ids for n in chosen if n["parent_id"] is not None)
        assert sorted(n["depth"] for n in chosen) == list(range(len(chosen)))
        labels = {n["label"] for n in body["nodes"] if n["operator"] != "root"}
        assert labels <= {"correct", "incorrect"} and labels


async def test_node_detail_matches_the_store(client: httpx.AsyncClient, store: Store,
                                             run_id: str) -> None:
    changed = 0
    for attempt in await store.get_attempts(run_id):
        nodes, judgements, calls = await store.load_task(run_id, attempt.task_id)
        by_id = {n.id: n for n in nodes}
        for n in nodes:
            body = await get_json(
                client, f"/api/runs/{run_id}/tasks/{attempt.task_id}/nodes/{n.id}")
            assert set(body) == {"node", "parent", "diff", "judgements", "calls"}
            assert body["node"] == dataclasses.asdict(n)
            parent = by_id.get(n.parent_id or "")
            assert body["parent"] == (None if parent is None else
                                      {"id": parent.id, "text": parent.text})
            own = [j for j in judgements if j.node_id == n.id]
            assert body["judgements"] == [dataclasses.asdict(j) for j in own]
            # The call that made the node, and every call recorded for it or cited by its
            # judgements, each once.
            expected = {c.id for c in calls.values() if c.node_id == n.id}
            expected |= {n.call_id} if n.call_id else set()
            expected |= {i for j in own for i in j.meta.get("call_ids", [])}
            got_ids = [c["id"] for c in body["calls"]]
            assert len(got_ids) == len(set(got_ids)) and set(got_ids) == expected
            for c in body["calls"]:
                assert set(c) == CALL_KEYS
                rec = calls[c["id"]]
                assert c["messages"] == rec.request["messages"]
                assert (c["role"], c["model"], c["prompt_tokens"], c["completion_tokens"],
                        c["latency_s"], c["cost"], c["cached"], c["error"]) == (
                    rec.role, rec.model, rec.prompt_tokens, rec.completion_tokens,
                    rec.latency_s, rec.cost, rec.cached, rec.error)
                texts = [x["text"] for x in (rec.response or {})["completions"]]
                assert c["response_text"] in texts or c["response_text"] == "\n\n---\n\n".join(
                    texts)
                if rec.id == n.call_id and n.operator in ("generate", "refine"):
                    assert c["response_text"] == n.text  # the completion that made the node
            if n.operator == "refine" and parent is not None and parent.parent_id is not None:
                ops = body["diff"]
                assert ops and all(op["op"] in ("equal", "insert", "delete") for op in ops)
                assert "".join(o["text"] for o in ops if o["op"] != "insert") == parent.text
                assert "".join(o["text"] for o in ops if o["op"] != "delete") == n.text
                changed += any(o["op"] != "equal" for o in ops)
            else:
                assert body["diff"] == []
    assert changed > 0  # some refinement changed its parent's text


async def test_unknown_run_task_node_and_kind_are_404_in_the_error_shape(
        client: httpx.AsyncClient, run_id: str, store: Store) -> None:
    task = (await store.get_attempts(run_id))[0].task_id
    cases = {
        "/api/runs/nope": "run_not_found",
        "/api/runs/nope/tasks/x/tree": "run_not_found",
        f"/api/runs/{run_id}/tasks/nope/tree": "task_not_found",
        f"/api/runs/{run_id}/tasks/nope/nodes/x": "task_not_found",
        f"/api/runs/{run_id}/tasks/{task}/nodes/nope": "node_not_found",
        "/api/runs/nope/export/dpo": "run_not_found",
        f"/api/runs/{run_id}/export/nope": "export_kind_not_found",
    }
    for url, code in cases.items():
        body = await get_json(client, url, status=404)
        assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, url
        assert body["error"]["code"] == code, url
        assert body["error"]["type"] == "invalid_request_error"
        assert "nope" in body["error"]["message"]
    for query, what in (("margin=-1", "margin"), ("bogus=1", "bogus"),
                        ("min_chars=many", "min_chars")):
        body = await get_json(client, f"/api/runs/{run_id}/export/dpo?{query}", status=400)
        assert body["error"]["code"] == "invalid_export_option" and what in body["error"][
            "message"]


async def test_get_store_names_the_missing_setup() -> None:
    app = FastAPI()
    app.include_router(api.router)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        with pytest.raises(RuntimeError, match=r"app\.state\.store"):
            await c.get("/api/runs")


# ------------------------------------------------------------------ exports


def jsonl_rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


@pytest.mark.parametrize(("kind", "query", "options"), [
    ("dpo", "", ExportOptions()),
    ("sft", "", ExportOptions()),
    ("kto", "margin=0.1&dedup=false", ExportOptions(margin=0.1, dedup=False)),
])
async def test_export_streams_what_the_export_driver_writes(
        client: httpx.AsyncClient, store: Store, run_id: str, tmp_path: Path, kind: str,
        query: str, options: ExportOptions) -> None:
    r = await client.get(f"/api/runs/{run_id}/export/{kind}?format=jsonl&{query}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert r.headers["content-disposition"] == f'attachment; filename="{run_id}-{kind}.jsonl"'
    res = await aexport_run(store, run_id, kind, tmp_path / kind, options=options)
    written = (res.files["train"].read_text(encoding="utf-8") if "train" in res.files else "")
    assert r.text == written
    assert len(jsonl_rows(r.text)) == res.total_rows > 0


async def test_export_split_keeps_one_split(client: httpx.AsyncClient, store: Store,
                                            run_id: str, tmp_path: Path) -> None:
    opts = ExportOptions(test_share=0.5, split_seed=1)
    res = await aexport_run(store, run_id, "sft", tmp_path / "sft", options=opts)
    for split in ("train", "test"):
        r = await client.get(f"/api/runs/{run_id}/export/sft?test_share=0.5&split_seed=1"
                             f"&split={split}")
        assert r.status_code == 200
        want = res.files[split].read_text(encoding="utf-8") if split in res.files else ""
        assert r.text == want
    assert set(res.files) == {"train", "test"}  # the seed splits these four tasks both ways


async def test_export_parquet_is_the_driver_s_file(client: httpx.AsyncClient, store: Store,
                                                   run_id: str, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    r = await client.get(f"/api/runs/{run_id}/export/dpo?format=parquet")
    assert r.status_code == 200
    res = await aexport_run(store, run_id, "dpo", tmp_path / "dpo", fmt="parquet")
    import pyarrow.parquet as pq

    path = tmp_path / "got.parquet"
    path.write_bytes(r.content)
    assert pq.read_table(path).to_pylist() == pq.read_table(res.files["train"]).to_pylist()


# ------------------------------------------------------------------ sweeps, the wire


async def test_a_sweep_is_marked_and_summed_and_its_cells_are_marked(
        tmp_path: Path, store: Store, client: httpx.AsyncClient, run_id: str) -> None:
    cfg = SweepConfig.from_mapping({"base": {"limit": 2, "cache": False, "seed": 5},
                                    "strategies": ["best_of_n:n=1,2"],
                                    "models": ["sim?skill=0.3"]})
    res = await arun_sweep(cfg, sweep_id="sw1", store=store)
    rows = {r["id"]: r for r in (await get_json(client, "/api/runs"))["runs"]}
    assert rows[run_id]["kind"] == "run"
    sweep = rows["sw1"]
    assert sweep["kind"] == "sweep" and sweep["status"] == res.status == "done"
    cells = ["sw1.000", "sw1.001"]
    assert all(rows[c]["kind"] == "cell" for c in cells)
    assert sweep["strategy"] == "best_of_n" and sweep["model"] == "sim?skill=0.3"
    assert sweep["tasks"] == sum(rows[c]["tasks"] for c in cells) == 4
    assert sweep["tokens"] == sum(rows[c]["tokens"] for c in cells)
    correct = 0
    for c in cells:
        correct += sum(a.correct is True for a in await store.get_attempts(c))
    assert sweep["accuracy"] == pytest.approx(correct / 4)
    detail = await get_json(client, "/api/runs/sw1")
    assert detail["tasks"] == [] and [c["run_id"] for c in detail["run"]["config"]["cells"]] \
        == cells


async def test_a_run_made_through_the_openai_client_path(tmp_path: Path) -> None:
    suite = load_suite("arithmetic")
    with SimServer(suite, SimParams(skill=-0.3), ServerConfig()) as srv:
        model = f"openai:sim@{srv.base_url}"
        res = await arun(mcts_config(tmp_path, model, limit=1, seed=2))
    async with await Store.aopen(str(tmp_path / "runs.db")) as s:
        transport = httpx.ASGITransport(app=make_app(s))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            (row,) = (await get_json(c, "/api/runs"))["runs"]
            assert row["model"] == model and row["id"] == res.run_id
            tree = await get_json(c, f"/api/runs/{res.run_id}/tasks/arith-01/tree")
            node = next(n for n in tree["nodes"] if n["operator"] == "generate")
            detail = await get_json(c, f"/api/runs/{res.run_id}/tasks/arith-01/nodes/"
                                       f"{node['id']}")
    maker = next(c for c in detail["calls"] if c["id"] == detail["node"]["call_id"])
    assert maker["model"] == model and maker["response_text"] == detail["node"]["text"]
    assert maker["prompt_tokens"] > 0 and maker["messages"][-1]["role"] == "user"


# ------------------------------------------------------------------ the diff


words = st.lists(st.sampled_from(["a", "b", "cc", "the", "15", "Answer:", " ", "\n", "  "]),
                 max_size=30).map("".join)


@given(words, words)
def test_word_diff_spells_both_texts(old: str, new: str) -> None:
    ops = api.word_diff(old, new)
    assert "".join(o.text for o in ops if o.op != "insert") == old
    assert "".join(o.text for o in ops if o.op != "delete") == new
    assert all(o.text for o in ops)
    assert all(a.op != b.op for a, b in itertools.pairwise(ops))


def test_word_diff_marks_whole_words() -> None:
    ops = [(o.op, o.text) for o in api.word_diff("so 24 - 9 = 13 here", "so 24 - 9 = 15 here")]
    assert ops == [("equal", "so 24 - 9 = "), ("delete", "13"), ("insert", "15"),
                   ("equal", " here")]
    assert api.word_diff("same", "same") == [api.DiffOp(op="equal", text="same")]


def test_tree_rows_drop_what_json_cannot_hold() -> None:
    n = NodeRecord(id="n", run_id="r", task_id="t", parent_id=None, role="task",
                   operator="root", value=float("nan"), meta={"reward": float("inf"),
                                                             "prior": True})
    assert api._finite(n.value) is None and api._finite(n.meta["reward"]) is None
    assert api._finite(n.meta["prior"]) is None and api._finite(3) == 3.0
