"""``dpo``: preference pairs from a task's tree, in TRL's ``prompt``/``chosen``/``rejected``.

Three kinds of pair (``provenance["pair_type"]``), in this order per task:

- ``sibling``: two children of one node (two answers to the same prompt, or two
  next steps of the same prefix — a step-level pair). Prompt: the messages the
  model saw when it wrote them (their recorded call) when both saw the same;
  otherwise the question (answers) or the task plus the steps root→parent
  (steps). Every pair of siblings of the same level whose grades differ.
- ``refinement``: a refined version against the version it repaired, when their
  labels differ: refined ≻ initial when the refinement fixed it
  (``direction="fixed"``), the reverse when it broke it (``"broke"``). Prompt:
  the question both answer.
- ``best_worst``: the task's best and worst finished candidates — the right one
  with the highest value against the wrong one with the lowest when the labels
  contrast; the highest against the lowest value when no candidate is labelled.
  Prompt: the question. Skipped when those two already made a pair above.

Grades (:mod:`deliberate.export.candidates`): labels first — two labelled nodes
pair only when one is right and the other wrong (margin 1, ``signal="label"``,
``source`` = the grader's name); otherwise values, when both have one and they
differ (``signal="value"`` or ``"reward"``, margin = the gap). Equal grades are a
tie and never a pair. The ``margin`` filter keeps pairs whose margin exceeds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from deliberate.export.base import (
    CANDIDATE_OPERATORS,
    Example,
    ExportOptions,
    ExportTree,
    Message,
    as_completion,
    as_prompt,
    keep_text,
    provenance,
)
from deliberate.export.candidates import (
    PAIRABLE_OPERATORS,
    STEP_OPERATORS,
    Grade,
    final_candidates,
    grade,
    joiner,
    question_messages,
    shared_prompt,
    step_prompt_messages,
    whole_text,
)
from deliberate.export.kinds import Kind
from deliberate.tree import NodeRecord

__all__ = ["KIND", "Preference", "extract", "prefer"]

LABEL_MARGIN = 1.0
"""The margin of a pair decided by labels (right 1, wrong 0)."""


@dataclass(frozen=True, slots=True)
class Preference:
    """Which of two nodes is better, by how much, and on whose word."""

    chosen: NodeRecord
    rejected: NodeRecord
    chosen_grade: Grade
    rejected_grade: Grade
    margin: float
    signal: str
    source: str


def prefer(tree: ExportTree, a: NodeRecord, b: NodeRecord) -> Preference | None:
    """The preference between two nodes, or None on a tie or missing evidence.

    Both labelled: right ≻ wrong, equal labels tie. Otherwise both values must be
    known and differ.
    """
    ga, gb = grade(tree, a), grade(tree, b)
    if ga.label is not None and gb.label is not None:
        if ga.label == gb.label:
            return None
        win, lose, gw, gl = (a, b, ga, gb) if ga.label else (b, a, gb, ga)
        return Preference(win, lose, gw, gl, LABEL_MARGIN, "label", gw.label_source)
    if ga.value is None or gb.value is None or ga.value == gb.value:
        return None
    win, lose, gw, gl = (a, b, ga, gb) if ga.value > gb.value else (b, a, gb, ga)
    assert gw.value is not None and gl.value is not None
    signal = gw.value_source if gw.value_source == gl.value_source else "value"
    return Preference(win, lose, gw, gl, gw.value - gl.value, signal, signal)


def _level(node: NodeRecord) -> str:
    return "step" if node.operator in STEP_OPERATORS else "answer"


def _recorded(tree: ExportTree, node: NodeRecord) -> list[Message] | None:
    if node.call_id and node.call_id in tree.calls:
        return tree.prompt_messages(node)
    return None


def _pair(tree: ExportTree, pref: Preference, pair_type: str, prompt: list[Message],
          chosen: str, rejected: str, opts: ExportOptions, **extra: object) -> Example | None:
    if pref.margin <= opts.margin:
        return None
    if not (keep_text(chosen, opts) and keep_text(rejected, opts)):
        return None
    conv = opts.conversational
    data = {"prompt": as_prompt(prompt, conv), "chosen": as_completion(chosen, conv),
            "rejected": as_completion(rejected, conv)}
    prov = provenance(
        tree, pair_type=pair_type, level=_level(pref.chosen), chosen_node=pref.chosen.id,
        rejected_node=pref.rejected.id, parent_node=None, margin=pref.margin,
        signal=pref.signal, source=pref.source, chosen_label=pref.chosen_grade.label,
        rejected_label=pref.rejected_grade.label, chosen_value=pref.chosen_grade.value,
        rejected_value=pref.rejected_grade.value, direction=None)
    prov.update(extra)
    return Example("dpo", tree.task_id, data, prov)


def sibling_pairs(tree: ExportTree, opts: ExportOptions, sep: str) -> Iterator[Example]:
    """Pairs among the children of each node, answers with answers, steps with steps."""
    for parent in tree.nodes:
        kids = [k for k in tree.kids(parent) if k.operator in PAIRABLE_OPERATORS]
        for i, a in enumerate(kids):
            for b in kids[i + 1:]:
                if _level(a) != _level(b):
                    continue
                pref = prefer(tree, a, b)
                if pref is None:
                    continue
                ra, rb = _recorded(tree, a), _recorded(tree, b)
                step = _level(a) == "step"
                if step:
                    fallback = step_prompt_messages(tree, parent, sep)
                    texts = (pref.chosen.text, pref.rejected.text)
                else:
                    fallback = shared_prompt(question_messages(tree, a),
                                             question_messages(tree, b),
                                             [{"role": "user", "content": tree.task_prompt}])
                    texts = (whole_text(tree, pref.chosen, sep),
                             whole_text(tree, pref.rejected, sep))
                prompt = shared_prompt(ra, rb, fallback) if ra and rb else fallback
                ex = _pair(tree, pref, "sibling", prompt, *texts, opts, parent_node=parent.id)
                if ex is not None:
                    yield ex


def best_worst_pair(tree: ExportTree) -> Preference | None:
    """The best and the worst finished candidates, when the evidence separates them."""
    cands = final_candidates(tree)
    grades = {n.id: grade(tree, n) for n in cands}

    def value(n: NodeRecord) -> float:
        v = grades[n.id].value
        return float("-inf") if v is None else v

    right = [n for n in cands if grades[n.id].label is True]
    wrong = [n for n in cands if grades[n.id].label is False]
    if right and wrong:
        best = max(right, key=value)  # max/min keep the earliest of equals
        worst = min(wrong, key=value)
    elif not right and not wrong:
        valued = [n for n in cands if grades[n.id].value is not None]
        if len(valued) < 2:
            return None
        best, worst = max(valued, key=value), min(valued, key=value)
    else:
        return None
    if best.id == worst.id:
        return None
    return prefer(tree, best, worst)


def refinement_pairs(tree: ExportTree) -> Iterator[tuple[Preference, NodeRecord, NodeRecord]]:
    """(preference, refined, initial) for every refinement whose label differs from the
    label of the version it repaired."""
    for node in tree.nodes:
        if node.operator != "refine" or node.parent_id is None:
            continue
        parent = tree.by_id.get(node.parent_id)
        if parent is None or parent.operator not in CANDIDATE_OPERATORS:
            continue
        ln, lp = tree.label(node)[0], tree.label(parent)[0]
        if ln is None or lp is None or ln == lp:
            continue
        pref = prefer(tree, node, parent)
        assert pref is not None
        yield pref, node, parent


def extract(tree: ExportTree, opts: ExportOptions) -> Iterator[Example]:
    """Every preference pair of one task: siblings, refinements, best vs worst."""
    sep = joiner(tree)
    seen: set[tuple[str, str]] = set()
    for sib in sibling_pairs(tree, opts, sep):
        seen.add(_key(sib))
        yield sib
    for pref, refined, initial in refinement_pairs(tree):
        if _ids(pref) in seen:
            continue
        ex = _pair(tree, pref, "refinement", question_messages(tree, refined),
                   whole_text(tree, pref.chosen, sep), whole_text(tree, pref.rejected, sep),
                   opts, parent_node=initial.id,
                   direction="fixed" if pref.chosen is refined else "broke")
        if ex is not None:
            seen.add(_ids(pref))
            yield ex
    best = best_worst_pair(tree)
    if best is not None and _ids(best) not in seen:
        prompt = shared_prompt(question_messages(tree, best.chosen),
                               question_messages(tree, best.rejected),
                               [{"role": "user", "content": tree.task_prompt}])
        ex = _pair(tree, best, "best_worst", prompt, whole_text(tree, best.chosen, sep),
                   whole_text(tree, best.rejected, sep), opts)
        if ex is not None:
            yield ex


def _ids(pref: Preference) -> tuple[str, str]:
    a, b = sorted((pref.chosen.id, pref.rejected.id))
    return a, b


def _key(ex: Example) -> tuple[str, str]:
    a, b = sorted((str(ex.provenance["chosen_node"]), str(ex.provenance["rejected_node"])))
    return a, b


KIND = Kind(
    name="dpo",
    extract=extract,
    description="preference pairs: siblings (answers or steps), best vs worst candidate, "
                "initial vs refined",
    columns=("prompt", "chosen", "rejected"),
)
