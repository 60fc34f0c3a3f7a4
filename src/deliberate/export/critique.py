"""Critique data: critiques labelled by what the refinement they drove became.

A critique is **effective** when the refinement it drove is right (RealCritic's
closed-loop idea: a critique is as good as the correction it leads to). Each row
pairs a critique with its **outcome**, from the grader's labels of the critiqued
candidate and of its refinement: ``fixed`` (wrong → right), ``broke`` (right →
wrong), ``stayed_wrong``, ``stayed_right``.

Which critique drove a refinement (a child with operator ``refine``):

- the judgements named in the refinement's ``meta["feedback_ids"]`` (``refine``,
  ``multi_critic``, ``evidence_refine`` and answer-space search record them), of the
  critic roles (``critic``, ``merged_critique``, ``step_critic``, ``value``), that
  judge the refined node itself: advice copied from a sibling's valuation names
  another candidate, so it is provenance but not a row;
- without ``feedback_ids`` (older runs, and ``route``), the refined node's critique
  of the round before the refinement: the judgements of the first critic role
  present, in the order above, whose ``meta["round"]`` is one less than the
  refinement's, else the latest one made no later than the refinement.

A critique that could not be parsed is skipped (its words are not a critique), and
so is a refinement whose own or whose parent's right/wrong label is missing.

Forms (``ExportOptions.critique_form``):

- ``labelled`` (default): one row per (critique, refinement): ``messages`` (the
  critic's prompt and its reply: the recorded call's messages and reply when the
  calls are loaded, else a plain prompt with the task and candidate and the
  critique's words), ``label`` (effective) and ``outcome``;
- ``pairs``: for one candidate, every effective critique against every ineffective
  one (``prompt``/``chosen``/``rejected``). A critique counts as effective when all
  the refinements it drove are right and ineffective when all are wrong; one with
  mixed outcomes, or two critiques with the same outcome, make no pair. The prompt
  is the recorded one when both critics saw the same, else the plain one (and then
  both completions are the critiques' words). None of the built-in strategies
  critiques one candidate twice with separate refinements except answer-space
  search expanding a node more than once, so pairs are rare in their runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from deliberate.export.base import (
    Example,
    ExportOptions,
    ExportTree,
    as_completion,
    as_prompt,
    keep_text,
    provenance,
)
from deliberate.export.kinds import Kind
from deliberate.tree import JudgementRecord, NodeRecord

__all__ = ["CRITIC_ROLES", "KIND", "Critiqued", "critique_words", "driving", "extract",
           "outcome"]

CRITIC_ROLES = ("merged_critique", "critic", "step_critic", "value")
"""Roles whose judgements are critiques a refiner reads, in fallback preference order."""

Message = dict[str, str]


@dataclass(frozen=True, slots=True)
class Critiqued:
    """One critique, the refinement it drove, and how that turned out."""

    judgement: JudgementRecord
    candidate: NodeRecord
    refined: NodeRecord
    initial_correct: bool
    refined_correct: bool
    label_source: str
    via: str
    """``feedback_ids`` or ``fallback``: how the critique was tied to the refinement."""

    @property
    def effective(self) -> bool:
        return self.refined_correct

    @property
    def outcome(self) -> str:
        return outcome(self.initial_correct, self.refined_correct)


def outcome(initial: bool, refined: bool) -> str:
    """fixed / broke / stayed_right / stayed_wrong."""
    if initial != refined:
        return "fixed" if refined else "broke"
    return "stayed_right" if refined else "stayed_wrong"


def _usable(j: JudgementRecord) -> bool:
    return j.role in CRITIC_ROLES and j.verdict != "parse_failure"


def driving(tree: ExportTree, refined: NodeRecord,
            by_id: dict[str, JudgementRecord]) -> tuple[list[JudgementRecord], str]:
    """The critiques of the refined node that drove ``refined`` (see the module doc)."""
    parent = tree.by_id.get(refined.parent_id or "")
    if parent is None:
        return [], ""
    ids = refined.meta.get("feedback_ids")
    if isinstance(ids, list):
        found = [by_id[i] for i in ids if isinstance(i, str) and i in by_id]
        return [j for j in found if j.node_id == parent.id and _usable(j)], "feedback_ids"
    rnd = refined.meta.get("round")
    for role in CRITIC_ROLES:
        js = tree.judgements_of(parent, role)
        if not js:
            continue
        if isinstance(rnd, int):
            same = [j for j in js if j.meta.get("round") == rnd - 1]
            if same:
                return [j for j in same if _usable(j)], "fallback"
        before = [j for j in js if j.created_at <= refined.created_at] or js
        return [j for j in before[-1:] if _usable(j)], "fallback"
    return [], "fallback"


def critiques(tree: ExportTree) -> Iterator[Critiqued]:
    """Every (critique, refinement) with both labels known, in creation order."""
    by_id = {j.id: j for j in tree.judgements}
    for node in tree.nodes:
        if node.operator != "refine" or node.parent_id is None:
            continue
        parent = tree.by_id[node.parent_id]
        refined_ok, source = tree.label(node)
        initial_ok, _ = tree.label(parent)
        if refined_ok is None or initial_ok is None:
            continue
        js, via = driving(tree, node, by_id)
        for j in js:
            yield Critiqued(j, parent, node, initial_ok, refined_ok, source, via)


def critique_words(j: JudgementRecord) -> str:
    """A critique as text: verdict (and score, or the first wrong step), then its words."""
    lines: list[str] = []
    if j.role == "step_critic" and j.first_wrong_step is not None:
        k = j.first_wrong_step
        lines.append("Verdict: correct. No step is wrong." if k == -1
                     else f"Verdict: incorrect. Step {k} is the first wrong step.")
    else:
        head = f"Verdict: {j.verdict}" if j.verdict else ""
        if j.score is not None:
            scale = (f" on a scale from {j.scale_min:g} to {j.scale_max:g}"
                     if j.scale_min is not None and j.scale_max is not None else "")
            head = f"{head} (score {j.score:g}{scale})" if head else f"Score: {j.score:g}{scale}"
        if head:
            lines.append(head)
    if j.critique:
        lines.append(j.critique.strip())
    advice = j.meta.get("advice")
    if isinstance(advice, str) and advice.strip():
        lines.append(f"Advice: {advice.strip()}")
    return "\n".join(lines)


def plain_prompt(tree: ExportTree, candidate: NodeRecord) -> list[Message]:
    """The critic's prompt when its call is not loaded: the task and the candidate."""
    return [{"role": "user", "content": (
        f"{tree.task_prompt}\n\nCandidate answer:\n{tree.candidate_text(candidate)}\n\n"
        "Review the candidate: say whether it is correct and point out its errors.")}]


def recorded(tree: ExportTree, j: JudgementRecord) -> tuple[list[Message], str] | None:
    """The critic's prompt (its first call) and the reply that was read (its last call,
    the repaired one when a repair was asked); None when the calls are not loaded."""
    ids = j.meta.get("call_ids")
    if not isinstance(ids, list) or not ids:
        return None
    first, last = tree.calls.get(str(ids[0])), tree.calls.get(str(ids[-1]))
    if first is None or last is None or last.response is None:
        return None
    msgs = first.request.get("messages")
    comps = last.response.get("completions")
    if not isinstance(msgs, list) or not msgs or not isinstance(comps, list) or not comps:
        return None
    prompt = [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs
              if m.get("role") != "assistant"]
    return prompt, str(comps[0].get("text", ""))


def exchange(tree: ExportTree, c: Critiqued) -> tuple[list[Message], str, str]:
    """The critic's prompt, its critique, and where they came from (call / plain)."""
    rec = recorded(tree, c.judgement)
    if rec is not None:
        return rec[0], rec[1], "call"
    return plain_prompt(tree, c.candidate), critique_words(c.judgement), "plain"


def _provenance(tree: ExportTree, c: Critiqued, prompt_from: str) -> dict[str, Any]:
    return provenance(tree, judgement_id=c.judgement.id, critic_role=c.judgement.role,
                      critic=c.judgement.source, node_id=c.candidate.id,
                      refined_node=c.refined.id, initial_correct=c.initial_correct,
                      refined_correct=c.refined_correct, label_source=c.label_source,
                      linked_by=c.via, prompt_from=prompt_from)


def labelled(tree: ExportTree, opts: ExportOptions) -> Iterator[Example]:
    for c in critiques(tree):
        prompt, words, src = exchange(tree, c)
        if not keep_text(words, opts):
            continue
        yield Example("critique", tree.task_id,
                      {"messages": [*prompt, {"role": "assistant", "content": words}],
                       "label": c.effective, "outcome": c.outcome},
                      _provenance(tree, c, src))


def pairs(tree: ExportTree, opts: ExportOptions) -> Iterator[Example]:
    by_node: dict[str, dict[str, list[Critiqued]]] = {}
    for c in critiques(tree):
        by_node.setdefault(c.candidate.id, {}).setdefault(c.judgement.id, []).append(c)
    for node_id, per_critique in by_node.items():
        good = [cs for cs in per_critique.values() if all(c.effective for c in cs)]
        bad = [cs for cs in per_critique.values() if not any(c.effective for c in cs)]
        for g in good:
            for b in bad:
                yield from _pair(tree, opts, node_id, g, b)


def _pair(tree: ExportTree, opts: ExportOptions, node_id: str, good: list[Critiqued],
          bad: list[Critiqued]) -> Iterator[Example]:
    g, b = good[0], bad[0]
    rg, rb = recorded(tree, g.judgement), recorded(tree, b.judgement)
    if rg is not None and rb is not None and rg[0] == rb[0]:
        prompt, chosen, rejected, src = rg[0], rg[1], rb[1], "call"
    else:
        prompt, src = plain_prompt(tree, g.candidate), "plain"
        chosen, rejected = critique_words(g.judgement), critique_words(b.judgement)
    if chosen == rejected or not (keep_text(chosen, opts) and keep_text(rejected, opts)):
        return
    conv = opts.conversational
    yield Example(
        "critique", tree.task_id,
        {"prompt": as_prompt(prompt, conv), "chosen": as_completion(chosen, conv),
         "rejected": as_completion(rejected, conv)},
        provenance(tree, node_id=node_id, chosen_judgement=g.judgement.id,
                   rejected_judgement=b.judgement.id,
                   chosen_refined=[c.refined.id for c in good],
                   rejected_refined=[c.refined.id for c in bad],
                   chosen_outcomes=[c.outcome for c in good],
                   rejected_outcomes=[c.outcome for c in bad],
                   label_source=g.label_source, prompt_from=src),
    )


def extract(tree: ExportTree, opts: ExportOptions) -> Iterator[Example]:
    """Labelled critiques, or effective ≻ ineffective pairs (``critique_form``)."""
    yield from (pairs(tree, opts) if opts.critique_form == "pairs" else labelled(tree, opts))


KIND = Kind(
    name="critique",
    extract=extract,
    description="critiques that drove a refinement, as chat messages labelled effective "
                "when the refinement is right, with the outcome (fixed, broke, stayed_wrong, "
                "stayed_right); with critique_form=pairs, effective vs ineffective critiques "
                "of one candidate (prompt, chosen, rejected)",
    columns=("messages", "label", "outcome"),
)
