"""critique, revision and steps exports: exact rows from hand-built trees, then real runs.

Hand-built trees pin down which critiques are effective and their outcomes, the
critique pairs, the first-error cut (critic vs Monte Carlo labels), the splice point,
ProcessBench's 0-based labels and PRM per-step labels. Runs on ``sim`` (in-process
and through the OpenAI client against ``SimServer``) check that rows reference real
judgements and agree with the grader, and that refinement nodes record the
judgements that drove them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from deliberate import RunConfig, Store
from deliberate.engine.runner import arun
from deliberate.export import critique, revision, steps
from deliberate.export.base import Example, ExportOptions, ExportTree
from deliberate.export.kinds import get_kind
from deliberate.models.sim import SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.roles.step_critic import split_steps
from deliberate.tasks import load_suite
from deliberate.tree import AttemptRecord, JudgementRecord, ModelCallRecord, NodeRecord
from deliberate.verifiers.base import parse_answer

TASK = "Tom has 3 apples and buys 4 more. How many apples does he have?"


class Builder:
    """A task's tree by hand: nodes and judgements named by readable ids, made in order."""

    def __init__(self) -> None:
        self.clock = 0.0
        self.nodes: list[NodeRecord] = []
        self.judgements: list[JudgementRecord] = []
        self.calls: dict[str, ModelCallRecord] = {}
        self.root = self._add("root", None, "task", "root", TASK, {})

    def _tick(self) -> float:
        self.clock += 1.0
        return self.clock

    def _add(self, nid: str, parent: NodeRecord | None, role: str, op: str, text: str,
             meta: dict[str, Any]) -> NodeRecord:
        n = NodeRecord(id=nid, run_id="r", task_id="t", parent_id=parent.id if parent else None,
                       role=role, operator=op, text=text,
                       depth=parent.depth + 1 if parent else 0, meta=meta,
                       created_at=self._tick())
        self.nodes.append(n)
        return n

    def cand(self, nid: str, parent: NodeRecord, text: str, *, op: str = "generate",
             ok: bool | None = None, **meta: Any) -> NodeRecord:
        n = self._add(nid, parent, "refiner" if op == "refine" else "generator", op, text, meta)
        if ok is not None:
            self.grade(n, ok)
        return n

    def step(self, nid: str, parent: NodeRecord, text: str, *, ok: bool | None = None,
             by: str = "grader") -> NodeRecord:
        n = self._add(nid, parent, "step_proposer", "step", text, {})
        if ok is not None:
            self.grade(n, ok, role=by)
        return n

    def judge(self, jid: str, node: NodeRecord, role: str, **fields: Any) -> JudgementRecord:
        j = JudgementRecord(id=jid, run_id="r", task_id="t", node_id=node.id,
                            source=fields.pop("source", "model:m"), role=role,
                            created_at=self._tick(), **fields)
        self.judgements.append(j)
        return j

    def grade(self, node: NodeRecord, ok: bool, role: str = "grader") -> None:
        self.judge(f"{role}-{node.id}", node, role, source="verifier:math",
                   verdict="correct" if ok else "incorrect", score=float(ok))

    def critic(self, jid: str, node: NodeRecord, words: str, *, verdict: str = "incorrect",
               score: float = 3.0, **meta: Any) -> JudgementRecord:
        return self.judge(jid, node, "critic", verdict=verdict, score=score, scale_min=1.0,
                          scale_max=10.0, critique=words, meta=meta)

    def step_critic(self, jid: str, node: NodeRecord, k: int, reason: str = "",
                    n: int | None = None, **meta: Any) -> JudgementRecord:
        if n is not None:
            meta["steps"] = n
        return self.judge(jid, node, "step_critic", first_wrong_step=k, critique=reason,
                          verdict="correct" if k == -1 else "incorrect", meta=meta)

    def mc(self, jid: str, node: NodeRecord, step_texts: list[str],
           estimates: list[float], m: int = 4) -> JudgementRecord:
        k = next((i + 1 for i, e in enumerate(estimates) if e == 0), -1)
        return self.judge(jid, node, "mc_steps", source=f"mc:m={m}", first_wrong_step=k,
                          meta={"steps": step_texts, "estimates": estimates, "m": m})

    def call(self, cid: str, messages: list[dict[str, str]], reply: str) -> None:
        self.calls[cid] = ModelCallRecord(
            id=cid, run_id="r", task_id="t", node_id=None, key=cid, model="m", role="critic",
            request={"messages": messages}, response={"completions": [{"text": reply}]})

    def tree(self) -> ExportTree:
        return ExportTree("r", AttemptRecord(run_id="r", task_id="t"), list(self.nodes),
                          list(self.judgements), dict(self.calls))


def rows(kind: Any, tree: ExportTree, **opts: Any) -> list[Example]:
    return list(kind.extract(tree, ExportOptions(**opts)))


# ---------------------------------------------------------------- critique


def refine_tree() -> Builder:
    """Four refinements, one per outcome, each with the critique that drove it."""
    b = Builder()
    c0 = b.cand("c0", b.root, "3 + 4 = 8\nAnswer: 8", ok=False)
    j0 = b.critic("j0", c0, "3 + 4 is 7, not 8.", round=0)
    r1 = b.cand("r1", c0, "3 + 4 = 7\nAnswer: 7", op="refine", ok=True, round=1,
                feedback_ids=["j0"])
    b.critic("j1", r1, "Check the sum again.", round=1)
    b.cand("r2", r1, "3 + 4 = 6\nAnswer: 6", op="refine", ok=False, round=2,
           feedback_ids=["j1"])
    c1 = b.cand("c1", b.root, "3 * 4 = 12\nAnswer: 12", ok=False)
    b.critic("j2", c1, "Looks fine.", verdict="correct", score=9.0)
    b.cand("r3", c1, "3 * 4 = 12\nAnswer: 12", op="refine", ok=False, feedback_ids=["j2"])
    c2 = b.cand("c2", b.root, "3 + 4 = 7\nAnswer: 7", ok=True)
    b.critic("j3", c2, "Say the unit.")
    b.cand("r4", c2, "3 + 4 = 7 apples\nAnswer: 7", op="refine", ok=True, feedback_ids=["j3"])
    assert j0.id == "j0"
    return b


def test_critique_effectiveness_and_outcomes() -> None:
    got = rows(critique, refine_tree().tree())
    assert [(e.provenance["judgement_id"], e.data["label"], e.data["outcome"]) for e in got] == [
        ("j0", True, "fixed"), ("j1", False, "broke"), ("j2", False, "stayed_wrong"),
        ("j3", True, "stayed_right")]
    first = got[0]
    assert first.provenance["node_id"] == "c0" and first.provenance["refined_node"] == "r1"
    assert first.provenance["linked_by"] == "feedback_ids"
    assert first.provenance["prompt_from"] == "plain"
    user, assistant = first.data["messages"]
    assert user["role"] == "user" and TASK in user["content"]
    assert "3 + 4 = 8\nAnswer: 8" in user["content"]
    assert assistant == {"role": "assistant",
                         "content": "Verdict: incorrect (score 3 on a scale from 1 to 10)\n"
                                    "3 + 4 is 7, not 8."}


def test_critique_rows_need_both_labels_and_a_readable_critique() -> None:
    b = Builder()
    c0 = b.cand("c0", b.root, "Answer: 8")  # never graded
    b.critic("j0", c0, "wrong")
    b.cand("r1", c0, "Answer: 7", op="refine", ok=True, feedback_ids=["j0"])
    c1 = b.cand("c1", b.root, "Answer: 9", ok=False)
    b.judge("bad", c1, "critic", verdict="parse_failure", critique="no JSON")
    b.cand("r2", c1, "Answer: 7", op="refine", ok=True, feedback_ids=["bad"])
    c2 = b.cand("c2", b.root, "Answer: 5", ok=False)
    b.critic("j2", c2, "wrong")
    b.cand("r3", c2, "Answer: 7", op="refine", feedback_ids=["j2"])  # never graded
    assert rows(critique, b.tree()) == []


def test_feedback_ids_keep_only_critiques_of_the_refined_node() -> None:
    b = Builder()
    root = b.root
    sib = b.cand("sib", root, "Answer: 6", ok=False)
    b.judge("adv", sib, "value", score=-50.0, scale_min=-100.0, scale_max=100.0,
            critique="too small", meta={"advice": "add, do not subtract"})
    c0 = b.cand("c0", root, "Answer: 8", ok=False)
    b.judge("val", c0, "value", score=-20.0, scale_min=-100.0, scale_max=100.0,
            critique="off by one", meta={"advice": "recount"})
    b.judge("ver", c0, "verifier", source="verifier:math", verdict="incorrect", score=0.0)
    b.cand("r1", c0, "Answer: 7", op="refine", ok=True, feedback_ids=["val", "ver", "adv"])
    got = rows(critique, b.tree())
    assert [e.provenance["judgement_id"] for e in got] == ["val"]
    assert got[0].data["messages"][-1]["content"] == (
        "Score: -20 on a scale from -100 to 100\noff by one\nAdvice: recount")


def test_fallback_without_feedback_ids() -> None:
    """Old runs: the previous round's critique of the refined node, merged first."""
    b = Builder()
    c0 = b.cand("c0", b.root, "Answer: 8", ok=False, round=0)
    b.critic("a0", c0, "critic a", round=0, critic="critic")
    b.judge("m0", c0, "merged_critique", source="strategy:multi_critic", verdict="incorrect",
            score=0.2, critique="merged", meta={"round": 0})
    b.cand("r1", c0, "Answer: 7", op="refine", ok=True, round=1)
    c1 = b.cand("c1", b.root, "one\ntwo\nAnswer: 9", ok=False, round=0)
    b.step_critic("s0", c1, 2, "two is wrong", round=0)
    b.step_critic("s0x", c1, 1, "later", round=1)  # a later round: not what drove r2
    b.cand("r2", c1, "one\nthree\nAnswer: 7", op="refine", ok=True, round=1)
    c2 = b.cand("c2", b.root, "Answer: 4", ok=False)  # no rounds: the latest before it
    b.critic("e0", c2, "first look")
    b.critic("e1", c2, "second look")
    b.cand("r3", c2, "Answer: 7", op="refine", ok=True)
    b.critic("e2", c2, "after the refinement")
    got = rows(critique, b.tree())
    assert [(e.provenance["judgement_id"], e.provenance["linked_by"]) for e in got] == [
        ("m0", "fallback"), ("s0", "fallback"), ("e1", "fallback")]
    assert got[1].data["messages"][-1]["content"] == (
        "Verdict: incorrect. Step 2 is the first wrong step.\ntwo is wrong")


def test_recorded_call_gives_the_critic_prompt_and_the_repaired_reply() -> None:
    b = refine_tree()
    msgs = [{"role": "system", "content": "You are a critic."},
            {"role": "user", "content": "Critique <candidate>3 + 4 = 8</candidate>"}]
    b.call("call-1", msgs, "not json")
    b.call("call-2", [*msgs, {"role": "assistant", "content": "not json"},
                      {"role": "user", "content": "JSON only"}],
           '{"verdict": "incorrect", "score": 3, "critique": "3 + 4 is 7"}')
    b.judgements[[j.id for j in b.judgements].index("j0")].meta["call_ids"] = ["call-1", "call-2"]
    got = rows(critique, b.tree())[0]
    assert got.provenance["prompt_from"] == "call"
    assert got.data["messages"] == [
        *msgs, {"role": "assistant",
                "content": '{"verdict": "incorrect", "score": 3, "critique": "3 + 4 is 7"}'}]


def pairs_tree() -> Builder:
    b = Builder()
    p = b.cand("p", b.root, "3 + 4 = 8\nAnswer: 8", ok=False)
    for jid, outcomes in (("A", [True]), ("B", [False]), ("C", [False]), ("D", [True, False])):
        b.critic(jid, p, f"critique {jid}")
        for i, ok in enumerate(outcomes):
            b.cand(f"r{jid}{i}", p, f"Answer: {7 if ok else 9}", op="refine", ok=ok,
                   feedback_ids=[jid])
    q = b.cand("q", b.root, "3 + 4 = 7\nAnswer: 7", ok=True)
    for jid in ("E", "F"):  # both effective: no pair
        b.critic(jid, q, f"critique {jid}")
        b.cand(f"r{jid}", q, "Answer: 7", op="refine", ok=True, feedback_ids=[jid])
    return b


def test_critique_pairs_effective_over_ineffective() -> None:
    got = rows(critique, pairs_tree().tree(), critique_form="pairs")
    assert [(e.provenance["chosen_judgement"], e.provenance["rejected_judgement"])
            for e in got] == [("A", "B"), ("A", "C")]
    first = got[0]
    assert first.provenance["node_id"] == "p"
    assert first.provenance["chosen_outcomes"] == ["fixed"]
    assert first.provenance["rejected_outcomes"] == ["stayed_wrong"]
    assert isinstance(first.data["prompt"], str) and "3 + 4 = 8" in first.data["prompt"]
    assert first.data["chosen"].endswith("critique A")
    assert first.data["rejected"].endswith("critique B")
    conv = rows(critique, pairs_tree().tree(), critique_form="pairs", conversational=True)[0]
    assert conv.data["prompt"][0]["role"] == "user"
    assert conv.data["chosen"] == [{"role": "assistant", "content": first.data["chosen"]}]


def test_critique_pairs_use_the_recorded_prompt_when_shared() -> None:
    b = pairs_tree()
    msgs = [{"role": "user", "content": "Critique this."}]
    b.call("ca", msgs, "reply A")
    b.call("cb", msgs, "reply B")
    b.call("cc", [{"role": "user", "content": "Another prompt."}], "reply C")
    for j in b.judgements:
        j.meta["call_ids"] = {"A": ["ca"], "B": ["cb"], "C": ["cc"]}.get(j.id, [])
    got = rows(critique, b.tree(), critique_form="pairs")
    first = got[0]
    assert (first.data["prompt"], first.data["chosen"], first.data["rejected"],
            first.provenance["prompt_from"]) == ("Critique this.", "reply A", "reply B", "call")
    assert got[1].provenance["prompt_from"] == "plain"  # A and C saw different prompts
    assert got[1].data["rejected"].endswith("critique C")


# ---------------------------------------------------------------- step labels


def step_tree() -> tuple[Builder, dict[str, NodeRecord]]:
    """A step-space tree: root → a1 → {b_bad → c_bad (wrong), b_ok → c_ok (right)};
    root → a2 → d2 (right). Critic and Monte Carlo disagree on c_bad's first error."""
    b = Builder()
    a1 = b.step("a1", b.root, "Apples at first: 3.")
    b_bad = b.step("b_bad", a1, "After buying: 3 + 4 = 8.")
    c_bad = b.step("c_bad", b_bad, "Answer: 8", ok=False)
    b_ok = b.step("b_ok", a1, "After buying: 3 + 4 = 7.")
    c_ok = b.step("c_ok", b_ok, "Answer: 7", ok=True, by="verifier")
    a2 = b.step("a2", b.root, "He buys 4 more apples.")
    d2 = b.step("d2", a2, "Answer: 7", ok=True, by="verifier")
    return b, {n.id: n for n in (a1, b_bad, c_bad, b_ok, c_ok, a2, d2)}


def test_revision_cuts_at_the_critics_first_error_and_splices_the_sibling_path() -> None:
    b, n = step_tree()
    b.step_critic("sc", n["c_bad"], 2, "3 + 4 is 7", n=3)
    got = rows(revision, b.tree())
    assert len(got) == 1
    e = got[0]
    assert e.data["messages"] == [
        {"role": "user", "content": TASK},
        {"role": "assistant", "content": "Apples at first: 3.\nAfter buying: 3 + 4 = 8.\n"
         "Wait: step 2 is wrong. 3 + 4 is 7. Let me redo it from there.\n"
         "After buying: 3 + 4 = 7.\nAnswer: 7"}]
    p = e.provenance
    assert (p["failed_node"], p["bad_node"], p["splice_point"], p["good_leaf"]) == (
        "c_bad", "b_bad", "a1", "c_ok")
    assert (p["label_source"], p["label_judgement"], p["first_wrong_step"], p["shared_steps"]) \
        == ("critic", "sc", 2, 1)
    assert p["failed_label_source"] == "verifier:math" and p["tree_form"] == "steps"


def test_revision_with_monte_carlo_labels_cuts_where_they_say() -> None:
    b, n = step_tree()
    b.step_critic("sc", n["c_bad"], 2, "3 + 4 is 7", n=3)
    texts = ["Apples at first: 3.", "After buying: 3 + 4 = 8.", "Answer: 8"]
    b.mc("mc", n["c_bad"], texts, [0.0, 0.0, 0.0])  # first error at step 1
    for source, bad, point, good, text in (
            ("auto", "a1", "root", "d2", "Apples at first: 3.\nWait: step 1 is wrong. Let me "
             "redo it from there.\nHe buys 4 more apples.\nAnswer: 7"),
            ("mc", "a1", "root", "d2", None),
            ("critic", "b_bad", "a1", "c_ok", None)):
        [e] = rows(revision, b.tree(), step_source=source)
        p = e.provenance
        assert (p["bad_node"], p["splice_point"], p["good_leaf"]) == (bad, point, good), source
        assert p["label_source"] == ("critic" if source == "critic" else "mc")
        if text is not None:
            assert e.data["messages"][1]["content"] == text
    assert rows(revision, b.tree())[0].provenance["m"] == 4


def test_no_revision_without_an_error_or_a_correct_sibling_path() -> None:
    b, n = step_tree()
    b.step_critic("sc", n["c_bad"], -1, n=3)  # the critic finds no wrong step
    assert rows(revision, b.tree()) == []

    b = Builder()
    a1 = b.step("a1", b.root, "Apples at first: 3.")
    bad = b.step("bad", a1, "After buying: 3 + 4 = 8.")
    leaf = b.step("leaf", bad, "Answer: 8", ok=False)
    b.step("under_bad", bad, "Answer: 7", ok=True)  # below the wrong step: not a sibling path
    other = b.step("other", b.root, "Apples: 3 + 4 = 7.")
    b.step("other_end", other, "Answer: 7", ok=True)  # right, but not under the cut's parent
    b.step_critic("sc", leaf, 2, "wrong sum", n=3)
    assert rows(revision, b.tree()) == []
    b.step("fix", a1, "After buying: 3 + 4 = 7.", ok=None)
    assert rows(revision, b.tree()) == []  # a sibling step, but no right finished node below
    b.step("fix_end", b.nodes[-1], "Answer: 7", ok=True)
    [e] = rows(revision, b.tree())
    assert (e.provenance["splice_point"], e.provenance["good_leaf"]) == ("a1", "fix_end")


def test_revision_uses_the_deepest_labelled_ancestor_of_an_unreviewed_leaf() -> None:
    b, n = step_tree()
    b.step_critic("mid", n["b_bad"], 2, "wrong sum", n=2)
    [e] = rows(revision, b.tree())
    assert (e.provenance["label_judgement"], e.provenance["bad_node"]) == ("mid", "b_bad")


def test_revision_on_whole_candidates_needs_a_sibling_sharing_the_prefix() -> None:
    b = Builder()
    bad = b.cand("bad", b.root, "Apples: 3.\nStep 2: 3 + 4 = 8.\nAnswer: 8", ok=False)
    b.cand("far", b.root, "Apples: three.\n3 + 4 = 7.\nAnswer: 7", ok=True)  # differs at 1
    b.step_critic("sc", bad, 2, "3 + 4 is 7", n=3)
    assert rows(revision, b.tree()) == []
    b.cand("near", b.root, "Step 1: Apples:   3.\n3 + 4 = 7.\nAnswer: 7", ok=True)
    [e] = rows(revision, b.tree())
    assert e.data["messages"][1]["content"] == (
        "Apples: 3.\n3 + 4 = 8.\nWait: step 2 is wrong. 3 + 4 is 7. Let me redo it from "
        "there.\n3 + 4 = 7.\nAnswer: 7")
    p = e.provenance
    assert (p["failed_node"], p["bad_node"], p["splice_point"], p["good_leaf"],
            p["tree_form"]) == ("bad", "bad", "root", "near", "candidates")
    # cut at step 1 instead: any right sibling will do, the first made
    for j in b.judgements:
        if j.id == "sc":
            j.first_wrong_step = 1
    [e] = rows(revision, b.tree())
    assert e.provenance["good_leaf"] == "far"


def test_revision_on_monte_carlo_labels_splices_a_right_rollout_from_the_prefix() -> None:
    b = Builder()
    sol = b.cand("sol", b.root, "Apples: 3.\n3 + 4 = 8.\nAnswer: 8", ok=False)
    mcj = b.mc("mc", sol, ["Apples: 3.", "3 + 4 = 8.", "Answer: 8"], [0.5, 0.0, 0.0])
    b.cand("same", b.root, "Apples: 3.\n3 + 4 = 7.\nAnswer: 7", ok=True)
    b.cand("sib", b.root, "He has 3, then 7.\nAnswer: 7", ok=True)
    for rid, k, ok, text in (("x1", 1, False, "3 + 4 = 9.\nAnswer: 9"),
                             ("y1", 1, True, "3 + 4 = 7.\nSo: 7 apples.\nAnswer: 7"),
                             ("z2", 2, True, "Answer: 7")):
        n = b._add(rid, sol, "completer", "rollout", text, {"prefix_steps": k})
        b.grade(n, ok, role="verifier")
    [e] = rows(revision, b.tree())
    p = e.provenance
    assert (p["good_leaf"], p["spliced_from"], p["splice_point"], p["label_source"]) == (
        "y1", "rollout", "sol", "mc")
    assert e.data["messages"][1]["content"] == (
        "Apples: 3.\n3 + 4 = 8.\nWait: step 2 is wrong. Let me redo it from there.\n"
        "3 + 4 = 7.\nSo: 7 apples.\nAnswer: 7")
    mcj.meta["split"] = "blank"  # steps were paragraphs
    assert "3 + 4 = 8.\n\nWait" in rows(revision, b.tree())[0].data["messages"][1]["content"]
    mcj.first_wrong_step = 1  # no prefix before step 1: the sibling differing at step 1
    [e] = rows(revision, b.tree())
    assert (e.provenance["good_leaf"], e.provenance["spliced_from"]) == ("sib", "sibling")


def test_a_critic_judgement_on_other_steps_is_not_used() -> None:
    b = Builder()
    bad = b.cand("bad", b.root, "one\ntwo\nAnswer: 8", ok=False)
    b.step_critic("sc", bad, 2, n=4)  # the critic saw 4 steps; the text has 3
    assert steps.step_label(b.tree(), bad) is None
    assert rows(steps, b.tree()) == []


def test_processbench_labels_are_zero_based() -> None:
    b = Builder()
    c1 = b.cand("c1", b.root, "a\nb\nc\nAnswer: 8", ok=False)
    b.step_critic("s1", c1, 3, "c is wrong", n=4)
    c2 = b.cand("c2", b.root, "a\nb\nAnswer: 7", ok=True)
    b.step_critic("s2", c2, -1, n=3)
    c3 = b.cand("c3", b.root, "x\nAnswer: 5")
    b.step_critic("s3", c3, 1, n=2)
    got = rows(steps, b.tree())
    assert [e.data for e in got] == [
        {"problem": TASK, "steps": ["a", "b", "c", "Answer: 8"], "label": 2,
         "final_answer_correct": False},
        {"problem": TASK, "steps": ["a", "b", "Answer: 7"], "label": -1,
         "final_answer_correct": True},
        {"problem": TASK, "steps": ["x", "Answer: 5"], "label": 0,
         "final_answer_correct": None}]
    assert [(e.provenance["first_wrong_step"], e.provenance["label_source"]) for e in got] == [
        (3, "critic"), (-1, "critic"), (1, "critic")]


def test_prm_labels_true_before_the_error_false_from_it() -> None:
    b = Builder()
    c1 = b.cand("c1", b.root, "a\nb\nc\nAnswer: 8", ok=False)
    b.step_critic("s1", c1, 2, n=4)
    c2 = b.cand("c2", b.root, "a\nAnswer: 7", ok=True)
    b.step_critic("s2", c2, -1, n=2)
    got = rows(steps, b.tree(), step_form="prm")
    assert [e.data for e in got] == [
        {"prompt": TASK, "completions": ["a", "b", "c", "Answer: 8"],
         "labels": [True, False, False, False]},
        {"prompt": TASK, "completions": ["a", "Answer: 7"], "labels": [True, True]}]
    assert steps.prm_labels(1, 3) == [False, False, False]


def test_step_source_auto_prefers_monte_carlo() -> None:
    b = Builder()
    c1 = b.cand("c1", b.root, "a\nb\nAnswer: 8", ok=False)
    b.step_critic("s1", c1, 3, "the answer", n=3)
    b.mc("mc1", c1, ["a", "b", "Answer: 8"], [0.75, 0.0, 0.0], m=8)
    c2 = b.cand("c2", b.root, "a\nAnswer: 9", ok=False)
    b.step_critic("s2", c2, 2, n=2)  # no Monte Carlo labels: the critic
    auto = rows(steps, b.tree())
    assert [(e.data["label"], e.provenance["label_source"], e.provenance["label_judgement"])
            for e in auto] == [(1, "mc", "mc1"), (1, "critic", "s2")]
    assert auto[0].provenance["m"] == 8 and auto[0].provenance["estimates"] == [0.75, 0.0, 0.0]
    assert auto[0].provenance["judged_by"] == "mc:m=8"
    assert [e.data["label"] for e in rows(steps, b.tree(), step_source="critic")] == [2, 1]
    assert [e.provenance["node_id"] for e in rows(steps, b.tree(), step_source="mc")] == ["c1"]


def test_step_space_rows_are_the_deepest_labelled_prefixes() -> None:
    b, n = step_tree()
    b.step_critic("p1", n["a1"], -1, n=1)  # covered by the deeper reviews below it
    b.step_critic("p2", n["b_bad"], 2, n=2)
    b.step_critic("p3", n["c_bad"], 2, n=3)
    b.step_critic("p4", n["b_ok"], -1, n=2)  # its child c_ok is not reviewed: kept
    b.step_critic("p5", n["a2"], -1, n=1)
    b.step_critic("p6", n["d2"], -1, n=2)
    got = rows(steps, b.tree())
    assert [(e.provenance["node_id"], e.data["steps"], e.data["label"]) for e in got] == [
        ("c_bad", ["Apples at first: 3.", "After buying: 3 + 4 = 8.", "Answer: 8"], 1),
        ("b_ok", ["Apples at first: 3.", "After buying: 3 + 4 = 7."], -1),
        ("d2", ["He buys 4 more apples.", "Answer: 7"], -1)]
    assert got[0].data["final_answer_correct"] is False
    assert got[1].data["final_answer_correct"] is None


def test_whole_candidates_and_their_refinements_each_give_a_row() -> None:
    b = Builder()
    c = b.cand("c", b.root, "a\nAnswer: 8", ok=False)
    b.step_critic("s1", c, 2, n=2)
    r = b.cand("r", c, "a\nAnswer: 7", op="refine", ok=True)
    b.step_critic("s2", r, -1, n=2)
    assert [e.provenance["node_id"] for e in rows(steps, b.tree())] == ["c", "r"]


def test_length_filter_applies_to_the_solution() -> None:
    b = Builder()
    c = b.cand("c", b.root, "a\nAnswer: 8", ok=False)
    b.step_critic("s1", c, 2, n=2)
    assert rows(steps, b.tree(), max_chars=5) == []
    assert len(rows(steps, b.tree(), max_chars=50)) == 1


@pytest.mark.parametrize("text", [
    "Step 1: a = 3\n\n  Step 2) b = 4  \nAnswer: 7", "one\n   \ntwo", "step 3. x\nStep 4:\n",
])
def test_line_split_matches_the_step_critic(text: str) -> None:
    assert steps.split_lines(text) == split_steps(text)


def test_kinds_are_registered() -> None:
    for name in ("critique", "revision", "steps"):
        kind = get_kind(name)
        assert kind.name == name and kind.columns and kind.description


# ---------------------------------------------------------------- runs on sim


async def export_trees(db: str, run_id: str) -> AsyncIterator[ExportTree]:
    """Every task's tree of a run, calls keyed by id (as an export reads it)."""
    st = Store.open(db)
    async with st:
        for a in await st.get_attempts(run_id):
            nodes, js = await st.load_tree(run_id, a.task_id)
            calls = {c.id: c for c in (await st.load_calls(run_id, a.task_id)).values()}
            yield ExportTree(run_id, a, nodes, js, calls)


def run_config(tmp_path: Path, strategy: str, params: dict[str, Any], *, limit: int,
               model: str = "sim:arithmetic?skill=0.0") -> RunConfig:
    return RunConfig.model_validate({
        "suite": "arithmetic", "limit": limit, "strategy": strategy, "strategy_params": params,
        "model": model, "store": str(tmp_path / "runs.db"), "cache": False, "seed": 3})


def check_critique_rows(tree: ExportTree, got: list[Example]) -> None:
    by_id = {j.id: j for j in tree.judgements}
    for e in got:
        p = e.provenance
        j = by_id[p["judgement_id"]]
        refined = tree.by_id[p["refined_node"]]
        assert j.node_id == refined.parent_id == p["node_id"]
        assert j.id in refined.meta["feedback_ids"] and p["linked_by"] == "feedback_ids"
        ok, _ = tree.label(refined)
        was, _ = tree.label(tree.by_id[p["node_id"]])
        assert e.data["label"] is ok is p["refined_correct"]
        assert e.data["outcome"] == critique.outcome(bool(was), bool(ok))
        assert p["prompt_from"] == "call"
        reply = tree.calls[j.meta["call_ids"][-1]].response
        assert reply is not None
        assert e.data["messages"][-1]["content"] == reply["completions"][0]["text"]


async def test_refine_run_through_the_server_gives_critiques_with_their_outcomes(
        tmp_path: Path) -> None:
    with SimServer(load_suite("arithmetic"), SimParams(skill=0.0), ServerConfig()) as srv:
        res = await arun(run_config(tmp_path, "refine", {"max_rounds": 3}, limit=12,
                                    model=f"openai:sim@{srv.base_url}"))
    outcomes: list[str] = []
    async for tree in export_trees(str(tmp_path / "runs.db"), res.run_id):
        for n in tree.nodes:
            if n.operator == "refine":  # each refinement names the critique it was given
                parent_critics = [j for j in tree.judgements_of(tree.by_id[n.parent_id or ""],
                                                                "critic")
                                  if j.meta["round"] == n.meta["round"] - 1]
                assert n.meta["feedback_ids"] == [j.id for j in parent_critics]
        got = rows(critique, tree)
        check_critique_rows(tree, got)
        outcomes += [e.data["outcome"] for e in got]
    assert "fixed" in outcomes and len(outcomes) >= 3


async def test_multi_critic_refinements_name_the_merged_critique_and_its_critics(
        tmp_path: Path) -> None:
    res = await arun(run_config(tmp_path, "multi_critic", {"max_rounds": 2}, limit=8))
    seen = 0
    async for tree in export_trees(str(tmp_path / "runs.db"), res.run_id):
        by_id = {j.id: j for j in tree.judgements}
        for n in tree.nodes:
            if n.operator != "refine":
                continue
            merged, *behind = [by_id[i] for i in n.meta["feedback_ids"]]
            assert merged.role == "merged_critique" and merged.node_id == n.parent_id
            assert merged.meta["round"] == n.meta["round"] - 1
            raised = {who for p in merged.meta["points"] for who in p["raised_by"]}
            assert sorted(j.meta["critic"] for j in behind) == sorted(raised)
            assert all(j.role == "critic" and j.node_id == n.parent_id for j in behind)
            seen += 1
        got = rows(critique, tree)
        assert {e.provenance["critic_role"] for e in got} <= {"merged_critique", "critic"}
        for e in got:
            assert e.provenance["prompt_from"] == (
                "plain" if e.provenance["critic_role"] == "merged_critique" else "call")
    assert seen >= 1


async def test_answer_space_refinements_name_the_valuation(tmp_path: Path) -> None:
    res = await arun(run_config(tmp_path, "mcts", {"iterations": 6, "k": 2}, limit=3))
    rows_seen = 0
    async for tree in export_trees(str(tmp_path / "runs.db"), res.run_id):
        by_id = {j.id: j for j in tree.judgements}
        for n in tree.nodes:
            if n.operator != "refine":
                continue
            parent = tree.by_id[n.parent_id or ""]
            own = [j.id for j in tree.judgements_of(parent, "value")
                   if j.verdict != "parse_failure"]
            ids = n.meta["feedback_ids"]
            assert ids[: len(own)] == own  # the node's own valuation first
            for i in ids[len(own):]:  # then siblings whose advice was passed on
                assert by_id[i].meta["advice"] in n.meta["critique"]
        got = rows(critique, tree)
        check_critique_rows(tree, got)
        assert all(e.provenance["critic_role"] == "value" for e in got)
        rows_seen += len(got)
    assert rows_seen >= 1


async def test_step_search_run_gives_step_labels_and_revisions_ending_right(
        tmp_path: Path) -> None:
    params = {"space": "steps", "value": "mix", "iterations": 20, "k": 3}
    res = await arun(run_config(tmp_path, "mcts", params, limit=6,
                                model="sim:arithmetic?skill=0.3"))
    n_steps = n_rev = 0
    async for tree in export_trees(str(tmp_path / "runs.db"), res.run_id):
        by_id = {j.id: j for j in tree.judgements}
        for e in rows(steps, tree):
            j = by_id[e.provenance["label_judgement"]]
            node = tree.by_id[e.provenance["node_id"]]
            assert j.role == "step_critic" and j.node_id == node.id
            assert e.data["steps"] == [x.text for x in tree.path(node)[1:]]
            assert e.data["label"] == (-1 if j.first_wrong_step == -1 else
                                       (j.first_wrong_step or 0) - 1)
            n_steps += 1
        for e in rows(revision, tree):
            text = e.data["messages"][1]["content"]
            task = load_task(tree.task_id)
            assert text.splitlines()[-1].startswith("Answer:")
            assert parse_answer(task, text) == task.answer  # the spliced path ends right
            good = tree.by_id[e.provenance["good_leaf"]]
            assert tree.label(good)[0] is True
            bad = tree.by_id[e.provenance["bad_node"]]
            assert bad.parent_id == e.provenance["splice_point"]
            assert f"Wait: step {e.provenance['first_wrong_step']} is wrong." in text
            n_rev += 1
    assert n_steps >= 3 and n_rev >= 1


async def test_route_run_gives_whole_candidate_revisions(tmp_path: Path) -> None:
    res = await arun(run_config(tmp_path, "route", {"k": 5}, limit=12))
    n_rev = 0
    async for tree in export_trees(str(tmp_path / "runs.db"), res.run_id):
        for e in rows(revision, tree):
            p = e.provenance
            assert p["tree_form"] == "candidates" and p["bad_node"] == p["failed_node"]
            failed, good = tree.by_id[p["failed_node"]], tree.by_id[p["good_leaf"]]
            assert failed.parent_id == good.parent_id == p["splice_point"]
            k = p["first_wrong_step"]
            assert split_steps(failed.text)[: k - 1] == split_steps(good.text)[: k - 1]
            text = e.data["messages"][1]["content"]
            assert text.endswith("\n".join(split_steps(good.text)[k - 1:]))
            assert parse_answer(load_task(tree.task_id), text) == good.answer
            n_rev += 1
        got = rows(critique, tree)  # route records the step reviews behind each refinement
        assert all(e.provenance["linked_by"] == "feedback_ids" for e in got)
        assert all(e.provenance["critic_role"] == "step_critic" for e in got)
    assert n_rev >= 1


def load_task(task_id: str) -> Any:
    return next(t for t in load_suite("arithmetic").tasks if t.id == task_id)



def test_cli_exports_the_three_kinds_as_the_extractors_give_them(
        tmp_path: Path, clean_env: Path) -> None:
    """``deliberate export KIND`` (the driver, its filters off) writes exactly these rows."""
    import asyncio
    import json

    from tests.test_cli import cli

    res = asyncio.run(arun(run_config(tmp_path, "route", {"k": 5}, limit=12)))
    db = str(tmp_path / "runs.db")

    async def expected(kind: Any, **opts: Any) -> list[str]:
        return sorted([json.dumps(e.data, sort_keys=True) async for t in
                       export_trees(db, res.run_id) for e in rows(kind, t, **opts)])

    for name, kind, opts in (("steps", steps, {"step_form": "prm"}), ("revision", revision, {}),
                             ("critique", critique, {})):
        out = tmp_path / name
        r = cli("export", name, "--run", res.run_id, "--store", db, "--out", str(out),
                "--no-dedup", *[f"-o{k}={v}" for k, v in opts.items()], env_home=clean_env)
        assert r.returncode == 0, r.stderr
        lines = (out / "train.jsonl").read_text().splitlines()
        got = sorted(json.dumps({k: v for k, v in json.loads(line).items() if k != "provenance"},
                                sort_keys=True) for line in lines)
        assert got and got == asyncio.run(expected(kind, **opts)), name


async def test_mc_label_run_gives_monte_carlo_step_rows_and_revisions(tmp_path: Path) -> None:
    res = await arun(run_config(tmp_path, "mc_label", {"n": 4, "m": 4}, limit=6,
                                model="sim:arithmetic?skill=0.3"))
    n_steps = n_rev = 0
    async for tree in export_trees(str(tmp_path / "runs.db"), res.run_id):
        by_id = {j.id: j for j in tree.judgements}
        for e in rows(steps, tree, step_form="prm"):
            j = by_id[e.provenance["label_judgement"]]
            assert j.role == "mc_steps" and e.provenance["label_source"] == "mc"
            assert e.data["completions"] == j.meta["steps"]
            k = j.first_wrong_step
            assert e.data["labels"] == [k == -1 or i < (k or 0) - 1
                                        for i in range(len(j.meta["steps"]))]
            n_steps += 1
        for e in rows(revision, tree):
            text = e.data["messages"][1]["content"]
            task = load_task(tree.task_id)
            assert parse_answer(task, text) == task.answer  # the spliced path ends right
            assert tree.label(tree.by_id[e.provenance["good_leaf"]])[0] is True
            assert e.provenance["spliced_from"] in ("rollout", "sibling")
            n_rev += 1
    assert n_steps >= 6 and n_rev >= 1


async def test_evidence_refine_refinements_name_the_evidence_critique(tmp_path: Path) -> None:
    cfg = RunConfig.model_validate({
        "suite": "evidence", "limit": 8, "strategy": "evidence_refine",
        "strategy_params": {"rounds": 2}, "model": "sim:evidence?skill=0.2",
        "store": str(tmp_path / "runs.db"), "cache": False, "seed": 3})
    res = await arun(cfg)
    refined = 0
    async for tree in export_trees(str(tmp_path / "runs.db"), res.run_id):
        for n in tree.nodes:
            if n.operator == "refine":
                [j] = tree.judgements_of(tree.by_id[n.parent_id or ""], "critic")
                assert n.meta["feedback_ids"] == [j.id]
                refined += 1
        check_critique_rows(tree, rows(critique, tree))
    assert refined >= 1
