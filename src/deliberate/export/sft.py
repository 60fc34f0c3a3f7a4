"""``sft``: the best trajectory of each task as chat ``messages`` (TRL's SFTTrainer).

The candidate, in order of preference:

1. the strategy's chosen candidate (``attempt.final_node_id``) when the grader
   (or a verifier) judged it right — ``choice="chosen"``;
2. else the right candidate with the highest value (the earliest of equals) —
   ``choice="verified"``;
3. else, with the ``sft_unverified`` option and only when no verifier judged any
   candidate of the task (a run without reference answers), the chosen candidate
   as it is — ``choice="unverified"``;
4. else nothing: the task gives no row.

``messages`` are the generator's recorded prompt (system and user turns) when
available, else the task as one user turn, followed by the candidate as the
assistant turn. A searched path (steps, actions) is its whole joined text.
"""

from __future__ import annotations

from collections.abc import Iterator

from deliberate.export.base import Example, ExportOptions, ExportTree, keep_text, provenance
from deliberate.export.candidates import (
    final_candidates,
    grade,
    joiner,
    question_messages,
    whole_text,
)
from deliberate.export.kinds import Kind
from deliberate.tree import NodeRecord

__all__ = ["KIND", "best_trajectory", "extract"]


def best_trajectory(tree: ExportTree, opts: ExportOptions) -> tuple[NodeRecord, str] | None:
    """The candidate to imitate and why it was picked, or None."""
    chosen = tree.by_id.get(tree.attempt.final_node_id or "")
    if chosen is not None and tree.label(chosen)[0] is True:
        return chosen, "chosen"
    cands = final_candidates(tree)
    right = [n for n in cands if tree.label(n)[0] is True]
    if right:
        def value(n: NodeRecord) -> float:
            v = grade(tree, n).value
            return float("-inf") if v is None else v

        return max(right, key=value), "verified"
    if (opts.sft_unverified and chosen is not None
            and all(tree.label(n)[0] is None for n in tree.nodes)):
        return chosen, "unverified"
    return None


def extract(tree: ExportTree, opts: ExportOptions) -> Iterator[Example]:
    """At most one row per task."""
    best = best_trajectory(tree, opts)
    if best is None:
        return
    node, choice = best
    text = whole_text(tree, node, joiner(tree))
    if not keep_text(text, opts):
        return
    messages = [*question_messages(tree, node), {"role": "assistant", "content": text}]
    label, source = tree.label(node)
    yield Example("sft", tree.task_id, {"messages": messages}, provenance(
        tree, node=node.id, operator=node.operator, choice=choice, label=label,
        source=source, value=node.value))


KIND = Kind(
    name="sft",
    extract=extract,
    description="the best verified trajectory of each task as chat messages",
    columns=("messages",),
)
