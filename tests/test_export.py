"""Exports: dpo, kto and sft rows from hand-built trees, the filters, the split by task,
JSONL and Parquet, the dataset card, runs of real strategies on sim, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deliberate import RunConfig, Store
from deliberate.engine.runner import arun
from deliberate.errors import DataError, MissingDependencyError, UnknownNameError, UsageError
from deliberate.export import dpo, kto, sft
from deliberate.export.base import Example, ExportOptions, ExportTree
from deliberate.export.candidates import joiner
from deliberate.export.kinds import kind_names
from deliberate.export.runner import Filters, aexport_run, row_group, split_of
from deliberate.export.writers import ParquetWriter, require_format
from deliberate.tree import (
    AttemptRecord,
    JudgementRecord,
    ModelCallRecord,
    NodeRecord,
    RunRecord,
    make_id,
)

RUN = "run-x"
SYSTEM = "Solve it. End with Answer: N."


# ---------------------------------------------------------------- hand-built trees


@dataclass
class Builder:
    """A task's tree written by hand: nodes in creation order, grades, recorded calls."""

    task: str = "t1"
    prompt: str = "What is 2 + 2?"
    nodes: list[NodeRecord] = field(default_factory=list)
    judgements: list[JudgementRecord] = field(default_factory=list)
    calls: dict[str, ModelCallRecord] = field(default_factory=dict)
    final: str | None = None

    def __post_init__(self) -> None:
        self.root = self.node(None, "root", self.prompt, role="task")

    def node(self, parent: NodeRecord | None, operator: str, text: str, *,
             value: float | None = None, role: str = "generator", call: str | None = None,
             **meta: Any) -> NodeRecord:
        n = NodeRecord(id=make_id(self.task, len(self.nodes), text), run_id=RUN,
                       task_id=self.task, parent_id=parent.id if parent else None, role=role,
                       operator=operator, text=text, depth=0 if parent is None else
                       parent.depth + 1, value=value, call_id=call, meta=dict(meta),
                       created_at=1000.0 + len(self.nodes))
        self.nodes.append(n)
        return n

    def judge(self, node: NodeRecord, role: str, verdict: str | None, *,
              source: str = "verifier:answer_match", score: float | None = None) -> None:
        self.judgements.append(JudgementRecord(
            id=make_id(node.id, role, len(self.judgements)), run_id=RUN, task_id=self.task,
            node_id=node.id, source=source, role=role, score=score, scale_min=0.0,
            scale_max=1.0, verdict=verdict, created_at=2000.0 + len(self.judgements)))

    def grade(self, node: NodeRecord, right: bool) -> None:
        self.judge(node, "grader", "correct" if right else "incorrect")

    def call(self, call_id: str, user: str | None = None) -> str:
        msgs = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": user or self.prompt}]
        self.calls[call_id] = ModelCallRecord(
            id=call_id, run_id=RUN, task_id=self.task, node_id=self.root.id, key=call_id,
            model="sim", role="generator", request={"messages": msgs}, response={})
        return call_id

    def tree(self) -> ExportTree:
        att = AttemptRecord(run_id=RUN, task_id=self.task, status="done", root_id=self.root.id,
                            final_node_id=self.final)
        return ExportTree(RUN, att, self.nodes, self.judgements, self.calls)

    def save(self, st: Store) -> None:
        att = self.tree().attempt
        st.put_attempt(att)
        for n in self.nodes:
            st.put_node(n)
        for j in self.judgements:
            st.put_judgement(j)


async def write_store(path: Path, builders: list[Builder]) -> str:
    url = str(path)
    async with await Store.aopen(url) as st:
        await st.create_run(RunRecord(id=RUN, config={"strategy": "hand", "suite": "made"}))
        for b in builders:
            b.save(st)
            for c in b.calls.values():
                await st.record_call(c)
    return url


def pairs(rows: Iterator[Example]) -> list[tuple[str, str, str]]:
    """(pair type, chosen text, rejected text) of each dpo row, in order."""
    out = []
    for ex in rows:
        ch, rj = ex.data["chosen"], ex.data["rejected"]
        out.append((ex.provenance["pair_type"], ch if isinstance(ch, str) else ch[0]["content"],
                    rj if isinstance(rj, str) else rj[0]["content"]))
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- dpo


def test_sibling_pairs_by_label_and_ties_make_none() -> None:
    b = Builder()
    c = b.call("c0")
    a1 = b.node(b.root, "generate", "A right", call=c)
    a2 = b.node(b.root, "generate", "B wrong", call=c)
    a3 = b.node(b.root, "generate", "C right", call=c)
    for n, right in ((a1, True), (a2, False), (a3, True)):
        b.grade(n, right)
    rows = list(dpo.extract(b.tree(), ExportOptions()))
    # A vs C tie (both right); best vs worst is A vs B, already a sibling pair
    assert pairs(iter(rows)) == [("sibling", "A right", "B wrong"),
                                 ("sibling", "C right", "B wrong")]
    p = rows[0].provenance
    assert (p["chosen_node"], p["rejected_node"], p["parent_node"]) == (a1.id, a2.id, b.root.id)
    assert (p["margin"], p["signal"], p["source"], p["level"]) == (
        1.0, "label", "verifier:answer_match", "answer")
    assert rows[0].data["prompt"] == f"{SYSTEM}\n\nWhat is 2 + 2?"  # the recorded call


def test_labels_decide_over_values_and_values_decide_without_labels() -> None:
    b = Builder()
    right = b.node(b.root, "generate", "right low", value=0.1)
    wrong = b.node(b.root, "generate", "wrong high", value=0.9)
    b.grade(right, True)
    b.grade(wrong, False)
    b.node(right, "refine", "kid unlabelled", value=0.75, role="refiner")
    sub2 = b.node(right, "refine", "kid right", value=0.25, role="refiner")
    b.grade(sub2, True)
    rows = list(dpo.extract(b.tree(), ExportOptions()))
    got = [(t, c, r, ex.provenance["signal"]) for (t, c, r), ex in zip(pairs(iter(rows)), rows,
                                                                       strict=True)]
    assert got == [
        ("sibling", "right low", "wrong high", "label"),
        # one side has no label: the values decide (0.75 > 0.25)
        ("sibling", "kid unlabelled", "kid right", "value"),
        # best right (highest value: kid right 0.25 > right low 0.1) vs worst wrong
        ("best_worst", "kid right", "wrong high", "label"),
    ]
    assert rows[1].provenance["margin"] == pytest.approx(0.5)


@pytest.mark.parametrize(("margin", "expected"), [(0.0, 2), (0.24, 2), (0.25, 0), (0.3, 0)])
def test_value_margin_just_below_and_above(margin: float, expected: int) -> None:
    b = Builder()
    b.node(b.root, "generate", "high", value=0.75)
    b.node(b.root, "generate", "low a", value=0.5)
    b.node(b.root, "generate", "low b", value=0.5)  # ties with "low a": never a pair
    rows = list(dpo.extract(b.tree(), ExportOptions(margin=margin)))
    assert len(rows) == expected
    if expected:
        assert pairs(iter(rows)) == [("sibling", "high", "low a"), ("sibling", "high", "low b")]
        assert {ex.provenance["margin"] for ex in rows} == {0.25}


def test_refinement_pairs_fixed_and_broke_then_best_worst() -> None:
    b = Builder()
    c = b.call("gen")
    g1 = b.node(b.root, "generate", "G1 wrong", value=0.375, call=c)
    g2 = b.node(b.root, "generate", "G2 wrong", value=0.625, call=c)
    r1 = b.node(g1, "refine", "R1 right", value=0.75, role="refiner", call=b.call("ref1", "fix"))
    r2 = b.node(g2, "refine", "R2 wrong", role="refiner")
    r1b = b.node(r1, "refine", "R1b wrong", role="refiner")
    for n, right in ((g1, False), (g2, False), (r1, True), (r2, False), (r1b, False)):
        b.grade(n, right)
    rows = list(dpo.extract(b.tree(), ExportOptions()))
    assert pairs(iter(rows)) == [
        ("refinement", "R1 right", "G1 wrong"),
        ("refinement", "R1 right", "R1b wrong"),
        ("best_worst", "R1 right", "R2 wrong"),  # worst: the wrong one with the lowest value
    ]
    assert [ex.provenance["direction"] for ex in rows] == ["fixed", "broke", None]
    assert [ex.provenance["parent_node"] for ex in rows] == [g1.id, r1.id, None]
    # a best vs worst pair that repeats a refinement pair is left out
    one = Builder()
    g = one.node(one.root, "generate", "first wrong")
    r = one.node(g, "refine", "then right", role="refiner")
    one.grade(g, False)
    one.grade(r, True)
    assert pairs(dpo.extract(one.tree(), ExportOptions())) == [
        ("refinement", "then right", "first wrong")]
    # the prompt is the question (the generator's call), not the refiner's prompt
    assert {ex.data["prompt"] for ex in rows} == {f"{SYSTEM}\n\nWhat is 2 + 2?"}


def test_conversational_form_is_message_lists() -> None:
    b = Builder()
    c = b.call("c0")
    x = b.node(b.root, "generate", "yes", call=c)
    y = b.node(b.root, "generate", "no", call=c)
    b.grade(x, True)
    b.grade(y, False)
    (row,) = dpo.extract(b.tree(), ExportOptions(conversational=True))
    assert row.data == {
        "prompt": [{"role": "system", "content": SYSTEM},
                   {"role": "user", "content": "What is 2 + 2?"}],
        "chosen": [{"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "assistant", "content": "no"}],
    }


def test_step_pairs_use_the_shared_prefix() -> None:
    b = Builder(prompt="Add 2 and 2, then double.")
    c1 = b.call("c1", "first step please")
    s1 = b.node(b.root, "step", "2 + 2 = 4.", value=1.0, role="step_proposer", call=c1)
    b.node(b.root, "step", "2 + 2 = 5.", value=0.0, role="step_proposer", call=c1)
    # the proposer's call of the second level was not recorded: task + steps so far
    good = b.node(s1, "step", "4 * 2 = 8.", value=1.0, role="step_proposer", call="gone")
    b.node(s1, "step", "4 * 2 = 6.", value=0.5, role="step_proposer", call="gone")
    fin = b.node(good, "step", "Answer: 8", role="step_proposer", final=True,
                 candidate="2 + 2 = 4.\n4 * 2 = 8.\nAnswer: 8")
    b.grade(fin, True)
    b.final = fin.id
    tree = b.tree()
    rows = list(dpo.extract(tree, ExportOptions()))
    assert pairs(iter(rows)) == [("sibling", "2 + 2 = 4.", "2 + 2 = 5."),
                                 ("sibling", "4 * 2 = 8.", "4 * 2 = 6.")]
    assert rows[0].data["prompt"] == f"{SYSTEM}\n\nfirst step please"
    assert rows[1].data["prompt"] == "Add 2 and 2, then double.\n\n2 + 2 = 4."
    assert all(ex.provenance["level"] == "step" for ex in rows)
    assert rows[1].provenance["parent_node"] == s1.id
    assert rows[1].provenance["margin"] == 0.5
    # the joiner is read off the kept candidate; kto sees the final node's whole path
    assert joiner(tree) == "\n"
    (k,) = kto.extract(tree, ExportOptions())
    assert (k.data["completion"], k.data["label"]) == ("2 + 2 = 4.\n4 * 2 = 8.\nAnswer: 8", True)


def test_blank_line_joiner_is_read_from_the_kept_candidate() -> None:
    b = Builder()
    s1 = b.node(b.root, "step", "one", role="step_proposer")
    s2 = b.node(s1, "step", "two", role="step_proposer", final=True, candidate="one\n\ntwo")
    s3 = b.node(s1, "step", "three", role="step_proposer", final=True)
    b.grade(s2, True)
    b.grade(s3, False)
    tree = b.tree()
    assert joiner(tree) == "\n\n"
    texts = {ex.data["completion"]: ex.data["label"] for ex in kto.extract(tree, ExportOptions())}
    assert texts == {"one\n\ntwo": True, "one\n\nthree": False}


# ---------------------------------------------------------------- kto and sft


def test_kto_labels_from_the_grader_and_critic_only_when_asked() -> None:
    b = Builder()
    c = b.call("c0")
    r = b.node(b.root, "generate", "right one", call=c, value=0.5)
    w = b.node(b.root, "generate", "wrong one", call=c)
    u = b.node(b.root, "generate", "unjudged", call=c)
    b.node(r, "finding", "not a candidate", role="auditor")
    b.grade(r, True)
    b.judge(w, "critic", "correct", source="model:sim")  # the grader outranks the critic
    b.grade(w, False)
    b.judge(u, "critic", "incorrect", source="model:sim")
    b.final = r.id
    rows = list(kto.extract(b.tree(), ExportOptions()))
    assert [(ex.data["completion"], ex.data["label"]) for ex in rows] == [
        ("right one", True), ("wrong one", False)]
    assert rows[0].data["prompt"] == f"{SYSTEM}\n\nWhat is 2 + 2?"
    assert rows[0].provenance["chosen"] is True
    assert rows[1].provenance["source"] == "verifier:answer_match"
    with_critic = list(kto.extract(b.tree(), ExportOptions(kto_critic=True)))
    assert [(ex.data["completion"], ex.data["label"], ex.provenance["signal"])
            for ex in with_critic] == [("right one", True, "label"),
                                       ("wrong one", False, "label"),
                                       ("unjudged", False, "critic")]
    conv = next(kto.extract(b.tree(), ExportOptions(conversational=True)))
    assert conv.data["completion"] == [{"role": "assistant", "content": "right one"}]
    assert [m["role"] for m in conv.data["prompt"]] == ["system", "user"]


def sft_case(labels: list[bool | None], values: list[float | None], chosen: int,
             opts: ExportOptions | None = None) -> tuple[str, str] | None:
    b = Builder()
    c = b.call("c0")
    nodes = []
    for i, (lab, v) in enumerate(zip(labels, values, strict=True)):
        n = b.node(b.root, "generate", f"cand {i}", value=v, call=c)
        if lab is not None:
            b.grade(n, lab)
        nodes.append(n)
    b.final = nodes[chosen].id
    rows = list(sft.extract(b.tree(), opts or ExportOptions()))
    if not rows:
        return None
    (row,) = rows
    msgs = row.data["messages"]
    assert msgs[:2] == [{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": "What is 2 + 2?"}]
    assert msgs[2]["role"] == "assistant"
    return msgs[2]["content"], row.provenance["choice"]


def test_sft_choice_rules() -> None:
    # the chosen candidate when it is verified right, even if another has a higher value
    assert sft_case([True, True], [0.2, 0.9], chosen=0) == ("cand 0", "chosen")
    # else the right candidate with the highest value (earliest of equals)
    assert sft_case([False, True, True], [0.9, 0.4, 0.7], chosen=0) == ("cand 2", "verified")
    assert sft_case([False, True, True], [0.9, 0.5, 0.5], chosen=0) == ("cand 1", "verified")
    # nothing right: no row, whatever the options
    assert sft_case([False, False], [0.9, 0.1], chosen=0) is None
    assert sft_case([False, None], [0.9, 0.1], chosen=1,
                    opts=ExportOptions(sft_unverified=True)) is None
    # no verifier at all: only with sft_unverified
    assert sft_case([None, None], [0.1, 0.9], chosen=0) is None
    assert sft_case([None, None], [0.1, 0.9], chosen=0,
                    opts=ExportOptions(sft_unverified=True)) == ("cand 0", "unverified")


# ---------------------------------------------------------------- filters and split


def example(chosen: str, rejected: str = "no", margin: float = 1.0) -> Example:
    return Example("dpo", "t", {"prompt": "p", "chosen": chosen, "rejected": rejected},
                   {"margin": margin, "pair_type": "sibling"})


def test_filters_count_what_each_drops() -> None:
    f = Filters(ExportOptions(margin=0.25, min_chars=2, max_chars=5))
    assert f.reason(example("ok")) is None
    assert f.reason(example("ok")) == "duplicate"
    assert f.reason(example("fine", margin=0.25)) == "margin"
    assert f.reason(example("fine", margin=0.26)) is None
    assert f.reason(example("x")) == "length"  # 1 < min_chars
    assert f.reason(example("12345", "abcde")) is None  # max_chars is inclusive
    assert f.reason(example("123456")) == "length"
    assert f.reason(example("ok2", "123456")) == "length"  # rejected counts too
    assert dict(f.dropped) == {"margin": 1, "length": 3, "duplicate": 1}
    g = Filters(ExportOptions(dedup=False))
    assert g.reason(example("ok")) is None and g.reason(example("ok")) is None
    msgs = Example("sft", "t", {"messages": [{"role": "user", "content": "long question"},
                                             {"role": "assistant", "content": "a"}]}, {})
    assert Filters(ExportOptions(min_chars=2)).reason(msgs) == "length"  # the answer only
    assert row_group(msgs) == "sft"
    assert row_group(Example("kto", "t", {"label": False}, {})) == "undesirable"


def test_split_is_by_task_and_independent_of_other_tasks() -> None:
    opts = ExportOptions(test_share=0.3, split_seed=7)
    ids = [f"task-{i}" for i in range(400)]
    test = [t for t in ids if split_of(t, opts) == "test"]
    assert 0.2 < len(test) / len(ids) < 0.4
    assert [split_of(t, opts) for t in ids] == [split_of(t, opts) for t in ids]
    other = [t for t in ids if split_of(t, ExportOptions(test_share=0.3, split_seed=8)) == "test"]
    assert other != test
    assert all(split_of(t, ExportOptions()) == "train" for t in ids)


def many_tasks(n: int) -> list[Builder]:
    out = []
    for i in range(n):
        b = Builder(task=f"q{i:03d}", prompt=f"What is {i} + {i}?")
        c = b.call(f"call{i}")
        x = b.node(b.root, "generate", f"Answer: {2 * i}", call=c, value=0.75)
        y = b.node(b.root, "generate", f"Answer: {2 * i + 1}", call=c, value=0.25)
        b.grade(x, True)
        b.grade(y, False)
        b.final = x.id
        out.append(b)
    return out


async def test_export_split_files_card_and_subsets(tmp_path: Path, monkeypatch:
                                                   pytest.MonkeyPatch) -> None:
    from deliberate.export import runner

    monkeypatch.setattr(runner, "PAGE", 7)  # several pages of attempts
    url = await write_store(tmp_path / "s.db", many_tasks(30))
    opts = ExportOptions(test_share=0.4, split_seed=3)
    res = await aexport_run(url, RUN, "dpo", tmp_path / "out", options=opts)
    train, test = read_jsonl(res.files["train"]), read_jsonl(res.files["test"])
    t_train = {r["provenance"]["task_id"] for r in train}
    t_test = {r["provenance"]["task_id"] for r in test}
    assert t_train and t_test and not t_train & t_test
    assert len(t_train | t_test) == 30 == res.tasks_read
    assert res.rows == {"train": len(train), "test": len(test)}
    assert len(train) + len(test) == 30  # one sibling pair per task
    assert all(split_of(t, opts) == "test" for t in t_test)
    # the card's counts are the files' rows
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"| train | `train.jsonl` | {len(train)} | {len(t_train)} | {len(t_train)} |" in card
    assert f"| test | `test.jsonl` | {len(test)} | {len(t_test)} | {len(t_test)} |" in card
    assert f"| sibling | {len(train)} | {len(test)} |" in card
    assert "deliberate export dpo --run run-x" in card and "--test-share 0.4" in card
    assert "DPOTrainer" in card and "- split: test" in card
    # a subset of the tasks: each keeps its split
    some = sorted(t_test)[:2] + sorted(t_train)[:2]
    sub = await aexport_run(url, RUN, "dpo", tmp_path / "sub", options=opts, tasks=some)
    assert {r["provenance"]["task_id"] for r in read_jsonl(sub.files["test"])} == set(some[:2])
    assert {r["provenance"]["task_id"] for r in read_jsonl(sub.files["train"])} == set(some[2:])


async def test_dedup_and_length_and_margin_through_the_runner(tmp_path: Path) -> None:
    twins = []
    for t in ("a", "b"):  # two tasks with the same prompt and candidates
        b = Builder(task=t)
        x = b.node(b.root, "generate", "Answer: 4", value=0.75)
        y = b.node(b.root, "generate", "Answer: five", value=0.5)
        b.grade(x, True)
        b.grade(y, False)
        twins.append(b)
    url = await write_store(tmp_path / "s.db", twins)
    res = await aexport_run(url, RUN, "dpo", tmp_path / "o1")
    assert (res.total_rows, res.extracted, res.dropped["duplicate"]) == (1, 2, 1)
    res = await aexport_run(url, RUN, "dpo", tmp_path / "o2", options=ExportOptions(dedup=False))
    assert (res.total_rows, res.dropped["duplicate"]) == (2, 0)
    res = await aexport_run(url, RUN, "dpo", tmp_path / "o3",
                            options=ExportOptions(dedup=False, max_chars=12))
    assert (res.total_rows, res.dropped["length"]) == (2, 0)
    res = await aexport_run(url, RUN, "dpo", tmp_path / "o4",
                            options=ExportOptions(dedup=False, max_chars=11))
    assert (res.total_rows, res.dropped["length"], res.files) == (0, 2, {})
    res = await aexport_run(url, RUN, "kto", tmp_path / "o5",
                            options=ExportOptions(min_chars=10))
    assert (res.total_rows, res.dropped) == (1, {"margin": 0, "length": 2, "duplicate": 1})
    res = await aexport_run(url, RUN, "dpo", tmp_path / "o6", options=ExportOptions(margin=1.0))
    assert (res.total_rows, res.dropped["margin"]) == (0, 2)  # label pairs count margin 1


# ---------------------------------------------------------------- formats


async def test_parquet_round_trip_equals_jsonl(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    url = await write_store(tmp_path / "s.db", many_tasks(12))
    for conv in (False, True):
        opts = ExportOptions(test_share=0.3, conversational=conv)
        js = await aexport_run(url, RUN, "dpo", tmp_path / f"j{conv}", options=opts)
        pa_ = await aexport_run(url, RUN, "dpo", tmp_path / f"p{conv}", fmt="parquet",
                                options=opts)
        assert js.rows == pa_.rows and set(pa_.files) == {"train", "test"}
        schemas = set()
        for split in ("train", "test"):
            table = pq.read_table(pa_.files[split])
            schemas.add(table.schema.to_string())
            rows = table.to_pylist()
            for r in rows:
                r["provenance"] = json.loads(r["provenance"])
            assert rows == read_jsonl(js.files[split])
        assert len(schemas) == 1  # one schema for both splits
        assert not list((tmp_path / f"p{conv}").glob(".*partial"))


def test_parquet_writer_waits_for_a_typed_value(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    w = ParquetWriter(tmp_path / "x.parquet", batch_rows=2)
    rows = [{"a": "x", "flag": None}, {"a": "y", "flag": None}, {"a": "z", "flag": True}]
    for r in rows:
        w.write(r)
    w.close()
    table = pq.read_table(tmp_path / "x.parquet")
    assert str(table.schema.field("flag").type) == "bool"
    assert table.to_pylist() == rows
    bad = ParquetWriter(tmp_path / "y.parquet", batch_rows=1)
    bad.write({"a": "x"})
    with pytest.raises(DataError, match="do not fit"):
        bad.write({"a": 3})
    bad.abort()
    assert not list(tmp_path.glob(".*partial"))


def test_missing_pyarrow_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingDependencyError, match=r"deliberate\[parquet\]"):
        require_format("parquet")
    assert require_format("jsonl") == "jsonl"
    with pytest.raises(DataError, match="jsonl or parquet"):
        require_format("csv")


async def test_bad_input_is_refused_before_writing(tmp_path: Path) -> None:
    url = await write_store(tmp_path / "s.db", many_tasks(2))
    with pytest.raises(UsageError, match="no run 'nope'"):
        await aexport_run(url, "nope", "dpo", tmp_path / "a")
    with pytest.raises(UnknownNameError, match="unknown export kind 'nope'"):
        await aexport_run(url, RUN, "nope", tmp_path / "a")
    with pytest.raises(UsageError, match="has no task 'zz'"):
        await aexport_run(url, RUN, "dpo", tmp_path / "a", tasks=["zz"])
    assert not (tmp_path / "a").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        await aexport_run(url, RUN, "dpo", tmp_path / "full")
    res = await aexport_run(url, RUN, "dpo", tmp_path / "full", force=True)
    assert res.total_rows == 2 and (tmp_path / "full" / "notes.txt").read_text() == "mine"
    res = await aexport_run(url, RUN, "sft", tmp_path / "full", force=True, fmt="parquet")
    assert not (tmp_path / "full" / "train.jsonl").exists()  # the earlier export's files go
    with pytest.raises(UsageError, match="is a file"):
        await aexport_run(url, RUN, "dpo", tmp_path / "full" / "notes.txt")


# ---------------------------------------------------------------- real runs on sim


@pytest.fixture(scope="module")
def sim_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    import asyncio

    db = str(tmp_path_factory.mktemp("runs") / "runs.db")
    runs = {
        "bon": ("best_of_n", {"n": 4}),
        "refine": ("refine", {"max_rounds": 2}),
        "mcts": ("mcts", {"iterations": 4, "k": 2, "threshold": None}),
        "steps": ("mcts", {"space": "steps", "iterations": 6, "k": 3, "threshold": None}),
    }

    async def make() -> None:
        for rid, (strategy, params) in runs.items():
            cfg = RunConfig.model_validate({
                "suite": "arithmetic", "limit": 4, "strategy": strategy,
                "strategy_params": params, "model": "sim?skill=0.2", "store": db,
                "cache": False, "seed": 3})
            await arun(cfg, run_id=rid)

    asyncio.run(make())
    return db, list(runs)


async def test_every_kind_exports_from_strategy_runs(sim_runs: tuple[str, list[str]],
                                                     tmp_path: Path) -> None:
    db, runs = sim_runs
    async with await Store.aopen(db) as st:
        for rid in runs:
            trees = {}
            for a in await st.get_attempts(rid):
                nodes, judgements, _ = await st.load_task(rid, a.task_id)
                ids = {n.id for n in nodes}
                grader = {j.node_id: j.verdict == "correct" for j in judgements
                          if j.role == "grader"}
                trees[a.task_id] = (ids, grader)
            for kind in kind_names():
                res = await aexport_run(st, rid, kind, tmp_path / rid / kind,
                                        options=ExportOptions(test_share=0.5))
                got = 0
                for split, path in res.files.items():
                    rows = read_jsonl(path)
                    got += len(rows)
                    assert len(rows) == res.rows[split]
                    for r in rows:
                        ids, grader = trees[r["provenance"]["task_id"]]
                        check_row(kind, r, ids, grader)
                assert got == res.total_rows
                card = (tmp_path / rid / kind / "README.md").read_text()
                assert f"{res.total_rows} rows from 4 tasks read" in card
    # each strategy gives the pairs its tree holds
    expect = {"bon": "sibling", "refine": "refinement", "mcts": "refinement", "steps": "sibling"}
    for rid, pair_type in expect.items():
        res = await aexport_run(db, rid, "dpo", tmp_path / rid / "dpo2")
        assert res.groups["train"].get(pair_type, 0) > 0, (rid, res.groups)
        if rid == "steps":
            rows = read_jsonl(res.files["train"])
            assert {r["provenance"]["level"] for r in rows} == {"step"}


def check_row(kind: str, r: dict[str, Any], ids: set[str], grader: dict[str, bool]) -> None:
    """A row names real nodes of its task, and its labels are the grader's."""
    p = r["provenance"]
    named = [v for k, v in p.items() if k.endswith(("node", "node_id")) and isinstance(v, str)]
    assert named and all(n in ids for n in named), p
    if kind == "dpo" and p["signal"] == "label":
        assert grader[p["chosen_node"]] is True and grader[p["rejected_node"]] is False
    if kind == "kto":
        assert r["label"] is grader[p["node"]]
    if kind == "sft":
        assert grader[p["node"]] is True
        assert r["messages"][-1]["role"] == "assistant"


# ---------------------------------------------------------------- CLI


def test_cli_exports_and_reports_errors_in_one_line(sim_runs: tuple[str, list[str]],
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = sim_runs
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "deliberate", "export", "dpo", "--run", "bon", "--store", db,
           "--out", str(out), "--conversational", "--test-share", "0.5"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "dpo export of run bon" in r.stdout and "dataset card" in r.stdout
    rows = [json.loads(x) for f in out.glob("*.jsonl") for x in f.read_text().splitlines()]
    assert rows and all(isinstance(x["prompt"], list) for x in rows)
    assert "--conversational" in (out / "README.md").read_text()
    from deliberate.cli import main

    for args, msg in (
        (["dpo", "--run", "bon", "--out", str(out)], "not empty"),
        (["nope", "--run", "bon", "--out", str(tmp_path / "n")], "unknown export kind"),
        (["dpo", "--run", "nope", "--out", str(tmp_path / "n")], "no run 'nope'"),
        (["dpo", "--run", "bon", "--out", str(tmp_path / "n"), "--test-share", "1.5"],
         "--test-share"),
        (["dpo", "--run", "bon", "--out", str(tmp_path / "n"), "-o", "margin=2"],
         "not an export option"),
        (["kto", "--run", "bon", "--out", str(tmp_path / "n"), "--format", "csv"],
         "jsonl or parquet"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["export", *args, "--store", db])
        err = capsys.readouterr().err
        assert exit_.value.code == 2, (args, err)
        assert msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "n").exists()
    main(["export", "kto", "--run", "bon", "--store", db, "--out", str(tmp_path / "k"),
          "--format", "parquet", "-o", "step_form=prm"])
    assert "kto export of run bon" in capsys.readouterr().out
    assert (tmp_path / "k" / "train.parquet").exists()


# ---------------------------------------------------------------- the memory benchmark


def test_memory_benchmark_quick_run_writes_what_it_documents(tmp_path: Path) -> None:
    """bench/export_memory.py --quick: runs of 500 and 2,000 nodes exported in children."""
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "mem.json"
    r = subprocess.run([sys.executable, str(repo / "bench" / "export_memory.py"), "--quick",
                        "--out", str(out)], capture_output=True, text=True, timeout=300,
                       cwd=repo)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert [(run["nodes"], run["tasks"], run["judgements"], run["calls"]) for run in res["runs"]
            ] == [(500, 50, 900, 200), (2000, 200, 3600, 800)]
    cases = res["cases"]
    assert {(c["kind"], c["fmt"]) for c in cases} == {("dpo", "jsonl"), ("dpo", "parquet")}
    for c in cases:
        assert c["tasks_read"] * 10 == c["nodes"] and c["rows"] > 0
        assert c["peak_rss_mb"] >= c["rss_before_mb"] > 0
    big = [c for c in cases if c["nodes"] == 2000]
    assert all(c["rows_ratio"] > 3 and c["peak_ratio"] > 0 for c in big)
    assert res["machine"]["cpu_count"] and "--quick" in res["command"]
