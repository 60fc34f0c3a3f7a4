"""What every export kind reads and writes: one task's stored tree, and examples.

An export walks a run task by task (never the whole run at once, so memory follows
the largest tree, not the run), gives each kind an :class:`ExportTree` — the
task's nodes, judgements, model calls and attempt, with the questions every kind
asks of them — and streams the :class:`Example` rows the kind yields to a writer.

Labels come only from what is stored: a node is *right* or *wrong* by its
``grader`` judgement (the run's grading verifier against the reference), else by
a ``verifier`` judgement; critics' and values' opinions are kept apart as
``source``-named evidence, never silently promoted to ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from deliberate.tree import AttemptRecord, JudgementRecord, ModelCallRecord, NodeRecord

__all__ = [
    "CANDIDATE_OPERATORS",
    "Example",
    "ExportOptions",
    "ExportTree",
    "Extractor",
]

CANDIDATE_OPERATORS = frozenset({"generate", "refine", "debate"})
"""Operators whose node text is a whole candidate (not one step or action)."""

Message = dict[str, str]


@dataclass(slots=True)
class Example:
    """One row of an export: the trainer's columns, and where they came from.

    ``data`` holds exactly the columns a TRL trainer reads for the kind (e.g.
    ``prompt``/``chosen``/``rejected``); ``provenance`` says which run, task and
    nodes it came from, the margin, and the source of the judgement behind it.
    """

    kind: str
    task_id: str
    data: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)


class ExportOptions(BaseModel):
    """Filters shared by every kind (a kind ignores what does not apply to it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    margin: float = Field(0.0, ge=0, description="least value/score gap for a preference "
                          "pair, on the [0, 1] scale")
    min_chars: int = Field(1, ge=0, description="drop completions shorter than this")
    max_chars: int | None = Field(None, ge=1, description="drop completions longer than this")
    dedup: bool = Field(True, description="drop rows whose columns repeat an earlier row's")
    conversational: bool = Field(False, description="prompt and completions as chat message "
                                 "lists instead of plain strings")
    test_share: float = Field(0.0, ge=0, lt=1, description="share of tasks held out as the "
                              "test split (by task: no task is in both)")
    split_seed: int = Field(0, description="seed of the task split")
    critique_form: Literal["labelled", "pairs"] = Field(
        "labelled", description="critique: one row per critique with its outcome (messages, "
        "label, outcome), or effective-vs-ineffective critique pairs (prompt, chosen, rejected)")
    step_source: Literal["auto", "critic", "mc"] = Field(
        "auto", description="steps/revision: where the first wrong step comes from: Monte "
        "Carlo labels (mc_steps), the step critic, or auto (mc when present, else the critic)")
    step_form: Literal["processbench", "prm"] = Field(
        "processbench", description="steps: ProcessBench rows (problem, steps, label) or "
        "TRL's stepwise PRM rows (prompt, completions, labels)")
    kto_critic: bool = Field(False, description="kto: label a candidate no verifier judged "
                             "by the critic's (or judge's) verdict")
    sft_unverified: bool = Field(False, description="sft: when no verifier judged any "
                                 "candidate of a task, use the chosen candidate unverified")


@dataclass(slots=True)
class ExportTree:
    """One task's stored tree, indexed for the questions exports ask."""

    run_id: str
    attempt: AttemptRecord
    nodes: list[NodeRecord]
    judgements: list[JudgementRecord]
    calls: Mapping[str, ModelCallRecord] = field(default_factory=dict)
    """Model calls by call id (empty when the export does not need prompts)."""
    by_id: dict[str, NodeRecord] = field(init=False)
    children: dict[str | None, list[NodeRecord]] = field(init=False)
    judged: dict[str, list[JudgementRecord]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = {n.id: n for n in self.nodes}
        self.children = {}
        for n in self.nodes:
            self.children.setdefault(n.parent_id, []).append(n)
        self.judged = {}
        for j in self.judgements:
            self.judged.setdefault(j.node_id, []).append(j)

    @property
    def task_id(self) -> str:
        return self.attempt.task_id

    @property
    def root(self) -> NodeRecord:
        return self.children[None][0]

    @property
    def task_prompt(self) -> str:
        """The task as the root holds it."""
        return self.root.text

    def kids(self, node: NodeRecord) -> list[NodeRecord]:
        """Children in creation order."""
        return self.children.get(node.id, [])

    def path(self, node: NodeRecord) -> list[NodeRecord]:
        """Root→node, inclusive."""
        out = [node]
        while out[-1].parent_id is not None:
            out.append(self.by_id[out[-1].parent_id])
        return out[::-1]

    def judgements_of(self, node: NodeRecord, role: str | None = None) -> list[JudgementRecord]:
        return [j for j in self.judged.get(node.id, []) if role is None or j.role == role]

    def label(self, node: NodeRecord) -> tuple[bool | None, str]:
        """Whether the node's candidate is right, and the judgement source that says so.

        The grader (the run's grading verifier) first, then a scoring verifier;
        (None, "") when neither judged it.
        """
        for role in ("grader", "verifier"):
            for j in reversed(self.judgements_of(node, role)):
                if j.verdict in ("correct", "incorrect"):
                    return j.verdict == "correct", j.source
        return None, ""

    def is_candidate(self, node: NodeRecord) -> bool:
        """Whether the node's own text is a whole candidate (not a step or an action)."""
        return node.parent_id is not None and node.operator in CANDIDATE_OPERATORS

    def candidate_text(self, node: NodeRecord) -> str:
        """The whole candidate a node stands for (a search keeps it in meta)."""
        whole = node.meta.get("candidate")
        return whole if isinstance(whole, str) and whole else node.text

    def prompt_messages(self, node: NodeRecord) -> list[Message]:
        """The messages the model saw when it wrote ``node`` (from its recorded call);
        the task as one user message when the call is not available."""
        call = self.calls.get(node.call_id or "")
        if call is not None:
            msgs = call.request.get("messages")
            if isinstance(msgs, list) and msgs:
                return [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs]
        return [{"role": "user", "content": self.task_prompt}]


Extractor = Callable[[ExportTree, ExportOptions], Iterator[Example]]
"""A kind: every example one task's tree gives."""


def as_prompt(messages: Sequence[Message], conversational: bool) -> str | list[Message]:
    """A prompt column: the message list, or (plain) its user turns joined."""
    if conversational:
        return list(messages)
    return "\n\n".join(m["content"] for m in messages if m["role"] != "assistant")


def as_completion(text: str, conversational: bool) -> str | list[Message]:
    """A completion column: one assistant message, or the plain text."""
    return [{"role": "assistant", "content": text}] if conversational else text


def provenance(tree: ExportTree, **extra: Any) -> dict[str, Any]:
    """The provenance every row carries: run, task, plus the kind's own fields."""
    return {"run_id": tree.run_id, "task_id": tree.task_id, **extra}


def keep_text(text: str, opts: ExportOptions) -> bool:
    """The length filter on one completion."""
    if len(text) < opts.min_chars:
        return False
    return opts.max_chars is None or len(text) <= opts.max_chars


def describe(obj: Mapping[str, Any]) -> str:
    """A stable one-line rendering (for dedup keys)."""
    import json

    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
