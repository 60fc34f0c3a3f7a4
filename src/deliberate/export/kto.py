"""``kto``: single whole candidates labelled desirable or not, in TRL's
``prompt``/``completion``/``label``.

Every finished candidate of the task (answers, final steps' paths, graded nodes)
with a label becomes a row: ``label`` is True when the grader (else a scoring
verifier) judged it right. A candidate no verifier judged is left out, unless the
``kto_critic`` option is on: then the latest critic or judge verdict
(``correct``/``incorrect``) labels it, and ``provenance["signal"]`` says
``critic`` so such rows can be told apart (critics are often wrong). The prompt is
the question the candidate answers (the generator's recorded prompt, else the
task).
"""

from __future__ import annotations

from collections.abc import Iterator

from deliberate.export.base import (
    Example,
    ExportOptions,
    ExportTree,
    as_completion,
    as_prompt,
    keep_text,
    provenance,
)
from deliberate.export.candidates import (
    CRITIC_ROLES,
    final_candidates,
    joiner,
    question_messages,
    whole_text,
)
from deliberate.export.kinds import Kind
from deliberate.tree import NodeRecord

__all__ = ["KIND", "critic_label", "extract"]


def critic_label(tree: ExportTree, node: NodeRecord) -> tuple[bool | None, str]:
    """The latest critic/judge verdict on the node, and who gave it."""
    for j in reversed(tree.judgements_of(node)):
        if j.role in CRITIC_ROLES and j.verdict in ("correct", "incorrect"):
            return j.verdict == "correct", j.source
    return None, ""


def extract(tree: ExportTree, opts: ExportOptions) -> Iterator[Example]:
    """One row per labelled finished candidate, in creation order."""
    sep = joiner(tree)
    use_critic = opts.kto_critic
    for node in final_candidates(tree):
        label, source = tree.label(node)
        signal = "label"
        if label is None and use_critic:
            label, source = critic_label(tree, node)
            signal = "critic"
        if label is None:
            continue
        text = whole_text(tree, node, sep)
        if not keep_text(text, opts):
            continue
        conv = opts.conversational
        data = {"prompt": as_prompt(question_messages(tree, node), conv),
                "completion": as_completion(text, conv), "label": label}
        yield Example("kto", tree.task_id, data, provenance(
            tree, node=node.id, operator=node.operator, signal=signal, source=source,
            value=node.value, chosen=node.id == tree.attempt.final_node_id))


KIND = Kind(
    name="kto",
    extract=extract,
    description="whole candidates labelled desirable/undesirable by the grader or verifier "
                "(optionally by the critic where none judged)",
    columns=("prompt", "completion", "label"),
)
