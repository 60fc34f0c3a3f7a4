"""What the ``dpo``, ``kto`` and ``sft`` kinds ask of a tree: candidates, grades, prompts.

A tree holds two kinds of pairable nodes: *answers* (operators ``generate``,
``refine``, ``debate``: the node's text is a whole candidate) and *steps*
(``step``, ``act``: one piece of a path; the whole candidate is the path). Every
such node has a grade made of two pieces of evidence kept apart:

- its **label**: right/wrong from the ``grader`` (else a ``verifier``) judgement —
  the ground truth (:meth:`ExportTree.label`);
- its **value**: the strategy's number on [0, 1] — ``node.value`` (the backed-up
  mean in MCTS, the normalised judge or critic score in best-of-N and refine, the
  step score in beam), else its own ``meta["reward"]``.

Labels win: two labelled nodes are compared by their labels only (equal labels are
a tie, whatever their values say); values decide only when a label is missing.

The prompt of a whole candidate is the *question* it answers: the messages the
generator saw (the recorded call of the first ``generate`` node on its path, so a
refined version is paired with the question, not with the refiner's prompt), else
the task as one user message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deliberate.export.base import CANDIDATE_OPERATORS, ExportTree, Message
from deliberate.tree import NodeRecord

__all__ = [
    "CRITIC_ROLES",
    "PAIRABLE_OPERATORS",
    "STEP_OPERATORS",
    "Grade",
    "final_candidates",
    "grade",
    "joiner",
    "question_messages",
    "shared_prompt",
    "step_prompt_messages",
    "steps_of",
    "whole_text",
]

STEP_OPERATORS = frozenset({"step", "act"})
"""Operators whose node text is one piece of a path (a step, an action)."""

PAIRABLE_OPERATORS = CANDIDATE_OPERATORS | STEP_OPERATORS
"""Nodes that are alternatives to their siblings (not findings, tests or rankings)."""

CRITIC_ROLES = ("critic", "judge")
"""Judgement roles whose verdict a ``kto`` export may use when asked (``kto_critic``)."""


@dataclass(frozen=True, slots=True)
class Grade:
    """A node's evidence: its ground-truth label and its value, each with its source."""

    label: bool | None
    label_source: str
    value: float | None
    value_source: str


def grade(tree: ExportTree, node: NodeRecord) -> Grade:
    """The node's label (grader, else verifier) and value (``node.value``, else reward)."""
    label, source = tree.label(node)
    if node.value is not None:
        return Grade(label, source, float(node.value), "value")
    r = node.meta.get("reward")
    if isinstance(r, int | float) and not isinstance(r, bool):
        return Grade(label, source, float(r), "reward")
    return Grade(label, source, None, "")


def steps_of(tree: ExportTree, node: NodeRecord) -> list[str]:
    """The texts root→node, the root (the task) left out."""
    return [n.text for n in tree.path(node)[1:]]


def joiner(tree: ExportTree) -> str:
    """What the run put between steps, read off a kept whole candidate; ``\\n`` otherwise.

    A search keeps the chosen path's whole text in ``meta["candidate"]``; the gap
    between its first two steps there is the run's joiner (``\\n`` for line
    steps, a blank line for paragraph steps, a custom delimiter).
    """
    for n in tree.nodes:
        whole = n.meta.get("candidate")
        if n.operator not in STEP_OPERATORS or not isinstance(whole, str):
            continue
        steps = steps_of(tree, n)
        if len(steps) >= 2 and whole.startswith(steps[0]):
            rest = whole[len(steps[0]):]
            k = rest.find(steps[1])
            if k > 0:
                return rest[:k]
    return "\n"


def whole_text(tree: ExportTree, node: NodeRecord, sep: str | None = None) -> str:
    """The whole candidate a node stands for: kept text, the path of a step, or its text."""
    whole = node.meta.get("candidate")
    if isinstance(whole, str) and whole:
        return whole
    if node.operator in STEP_OPERATORS:
        return (joiner(tree) if sep is None else sep).join(steps_of(tree, node))
    return node.text


def final_candidates(tree: ExportTree) -> list[NodeRecord]:
    """Finished candidates in creation order: answers, final steps, and graded nodes."""
    out = []
    for n in tree.nodes:
        if n.parent_id is None:
            continue
        if (tree.is_candidate(n) or n.meta.get("final") is True
                or isinstance(n.meta.get("candidate"), str)
                or (n.operator in PAIRABLE_OPERATORS and tree.label(n)[0] is not None)):
            out.append(n)
    return out


def question_messages(tree: ExportTree, node: NodeRecord) -> list[Message]:
    """The question a whole candidate answers: the generator's recorded prompt on its
    path (first ``generate`` node with a call), else the task as one user message."""
    for n in tree.path(node)[1:]:
        if n.operator == "generate" and n.call_id and n.call_id in tree.calls:
            return tree.prompt_messages(n)
    return [{"role": "user", "content": tree.task_prompt}]


def step_prompt_messages(tree: ExportTree, parent: NodeRecord, sep: str) -> list[Message]:
    """The prefix a next step continues, as one user message: the task, then the steps
    root→parent (used when the proposer's recorded prompt is not available)."""
    steps = steps_of(tree, parent)
    text = tree.task_prompt if not steps else f"{tree.task_prompt}\n\n{sep.join(steps)}"
    return [{"role": "user", "content": text}]


def shared_prompt(first: Sequence[Message], second: Sequence[Message],
                  fallback: Sequence[Message]) -> list[Message]:
    """One prompt for two completions: theirs when they saw the same, else ``fallback``."""
    return list(first) if list(first) == list(second) else list(fallback)
