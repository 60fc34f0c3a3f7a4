"""Step labels: where a solution first goes wrong, for process reward models.

A node's **step label** is its solution's steps and the first wrong one, from one of
two sources (``ExportOptions.step_source``):

- ``critic``: the step critic's judgement (role ``step_critic``; ProcessBench's
  question, answered by a model). On a step-space node the judged solution is the
  path root→node, one step per node; on a whole candidate (``route``) it is the
  candidate cut one step per non-empty line, a leading ``Step k:`` dropped, as the
  critic saw it (a judgement whose recorded step count disagrees is skipped);
- ``mc``: Monte Carlo labels (role ``mc_steps``, Math-Shepherd's hard estimation:
  the first step from whose prefix none of m rollouts reached the reference
  answer), with the steps and per-step estimates in the judgement's meta;
- ``auto`` (default): mc where a node has it, else the critic.

Judgements store steps **1-based** (-1: none wrong); ProcessBench labels are
**0-based** indexes into ``steps`` (-1: none wrong). The ``steps`` kind writes one
row per labelled solution, in one of two forms (``ExportOptions.step_form``):

- ``processbench``: ``problem``, ``steps``, ``label`` (0-based or -1) and
  ``final_answer_correct`` (the grader's label of the solution, None when it has none);
- ``prm``: TRL's stepwise-supervision rows ``prompt``, ``completions`` (the steps)
  and ``labels`` (one bool per step: True before the first wrong step, False from
  it on, ProcessBench's reading of a first error). Always plain strings: TRL's PRM
  trainer takes no chat form.

Which nodes give rows: every labelled whole candidate; on a step-space tree a
labelled step node only when no node below it is labelled too (the deeper review
saw a longer solution that starts with the same steps, so the shorter prefix adds a
near-duplicate row). The provenance names the node, the judgement and its source.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from deliberate.export.base import Example, ExportOptions, ExportTree, keep_text, provenance
from deliberate.export.kinds import Kind
from deliberate.tree import JudgementRecord, NodeRecord

__all__ = [
    "KIND",
    "NO_ERROR",
    "StepLabel",
    "extract",
    "label_provenance",
    "labelled_solutions",
    "prm_labels",
    "same_step",
    "solution_steps",
    "split_lines",
    "step_label",
    "step_path",
    "to_processbench",
]

NO_ERROR = -1
"""``first_wrong_step`` when every step is right (ProcessBench's convention)."""

StepSource = Literal["auto", "critic", "mc"]

_STEP_PREFIX = re.compile(r"^\s*step\s+\d+\s*[:.)]\s*", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class StepLabel:
    """A solution's steps and its first wrong step, and the judgement that says so.

    ``path`` holds the step nodes root→node (root excluded) when the solution is a
    step-space path, one node per step; it is empty for a whole candidate.
    """

    node: NodeRecord
    steps: list[str]
    first_wrong: int
    """1-based, or -1 when no step is wrong."""
    source: Literal["critic", "mc"]
    judgement: JudgementRecord
    path: list[NodeRecord]

    @property
    def reason(self) -> str:
        """Why the step is wrong, when a critic said so ("" for Monte Carlo labels)."""
        return (self.judgement.critique or "").strip() if self.source == "critic" else ""

    @property
    def joiner(self) -> str:
        """What goes between steps written out: a blank line when Monte Carlo labels cut
        the solution by paragraphs, else a line break."""
        return "\n\n" if self.source == "mc" and self.judgement.meta.get("split") == "blank" \
            else "\n"

    @property
    def estimates(self) -> list[float] | None:
        est = self.judgement.meta.get("estimates")
        return [float(e) for e in est] if isinstance(est, list) else None


def split_lines(text: str) -> list[str]:
    """One step per non-empty line, a leading ``Step k:`` dropped: how the step critic
    cuts a whole candidate (the same rule as ``roles.step_critic.split_steps``, kept
    here because exports read the store only)."""
    steps = []
    for line in text.splitlines():
        if line.strip():
            steps.append(_STEP_PREFIX.sub("", line.rstrip()) or line.strip())
    return steps


def same_step(a: str, b: str) -> bool:
    """Whether two steps say the same: whitespace collapsed, a ``Step k:`` label ignored."""
    return _plain(a) == _plain(b)


def _plain(step: str) -> str:
    return re.sub(r"\s+", " ", _STEP_PREFIX.sub("", step.strip())).strip()


def is_step_node(node: NodeRecord) -> bool:
    return node.operator == "step"


def step_path(tree: ExportTree, node: NodeRecord) -> list[NodeRecord]:
    """The step nodes root→node ([] when the path holds anything but steps)."""
    path = tree.path(node)[1:]
    return path if path and all(is_step_node(n) for n in path) else []


def solution_steps(tree: ExportTree, node: NodeRecord) -> list[str]:
    """A node's solution as steps: its step path, or its candidate cut into lines
    (a Monte Carlo judgement's own steps when it has one)."""
    path = step_path(tree, node)
    if path:
        return [n.text for n in path]
    for j in reversed(tree.judgements_of(node, "mc_steps")):
        steps = j.meta.get("steps")
        if isinstance(steps, list) and steps:
            return [str(s) for s in steps]
    return split_lines(tree.candidate_text(node))


def _critic_label(tree: ExportTree, node: NodeRecord) -> StepLabel | None:
    for j in reversed(tree.judgements_of(node, "step_critic")):
        k = j.first_wrong_step
        if j.verdict == "parse_failure" or k is None:
            continue
        path = step_path(tree, node)
        if path:
            steps = [n.text for n in path]
        elif tree.is_candidate(node):
            steps = split_lines(tree.candidate_text(node))
        else:
            return None
        n = j.meta.get("steps")
        if isinstance(n, int) and n != len(steps):
            continue  # the critic saw other steps than these: its index would not fit
        if k != NO_ERROR and not 1 <= k <= len(steps):
            continue
        return StepLabel(node, steps, k, "critic", j, path)
    return None


def _mc_label(tree: ExportTree, node: NodeRecord) -> StepLabel | None:
    for j in reversed(tree.judgements_of(node, "mc_steps")):
        steps = j.meta.get("steps")
        k = j.first_wrong_step
        if not isinstance(steps, list) or not steps or k is None:
            continue
        steps = [str(s) for s in steps]
        if k != NO_ERROR and not 1 <= k <= len(steps):
            continue
        est = j.meta.get("estimates")
        if isinstance(est, list) and len(est) != len(steps):
            continue
        path = step_path(tree, node)
        if path and [n.text.strip() for n in path] != [s.strip() for s in steps]:
            path = []  # labelled steps that are not this path's: no node per step
        return StepLabel(node, steps, k, "mc", j, path)
    return None


def step_label(tree: ExportTree, node: NodeRecord, source: StepSource = "auto") -> StepLabel | None:
    """The node's step label from ``source`` (auto: mc when present, else the critic);
    the latest readable judgement of that source; None when there is none."""
    if source in ("auto", "mc"):
        mc = _mc_label(tree, node)
        if mc is not None or source == "mc":
            return mc
    return _critic_label(tree, node)


def to_processbench(first_wrong: int) -> int:
    """A 1-based first wrong step (or -1) as ProcessBench's 0-based label (or -1)."""
    return NO_ERROR if first_wrong == NO_ERROR else first_wrong - 1


def prm_labels(first_wrong: int, n_steps: int) -> list[bool]:
    """Per-step labels: True before the first wrong step, False from it on."""
    if first_wrong == NO_ERROR:
        return [True] * n_steps
    return [i < first_wrong - 1 for i in range(n_steps)]


def labelled_solutions(tree: ExportTree, source: StepSource) -> Iterator[StepLabel]:
    """Every labelled solution that gives a row, in creation order (see the module doc)."""
    labels: dict[str, StepLabel] = {}
    for n in tree.nodes:
        if n.parent_id is not None:
            lab = step_label(tree, n, source)
            if lab is not None:
                labels[n.id] = lab
    covered: dict[str, bool] = {}  # a step node with a labelled step node below it
    for n in reversed(tree.nodes):  # children come after their parents
        covered[n.id] = any(is_step_node(c) and (c.id in labels or covered.get(c.id, False))
                            for c in tree.kids(n))
    for n in tree.nodes:
        lab = labels.get(n.id)
        if lab is not None and not (is_step_node(n) and covered[n.id]):
            yield lab


def row(tree: ExportTree, lab: StepLabel, opts: ExportOptions) -> dict[str, object]:
    """The columns of one solution's row in the chosen form."""
    if opts.step_form == "prm":
        return {"prompt": tree.task_prompt, "completions": list(lab.steps),
                "labels": prm_labels(lab.first_wrong, len(lab.steps))}
    correct, _ = tree.label(lab.node)
    return {"problem": tree.task_prompt, "steps": list(lab.steps),
            "label": to_processbench(lab.first_wrong), "final_answer_correct": correct}


def label_provenance(lab: StepLabel) -> dict[str, object]:
    """Where a step label came from (shared with the revision kind)."""
    out: dict[str, object] = {"label_source": lab.source, "label_judgement": lab.judgement.id,
                              "judged_by": lab.judgement.source,
                              "first_wrong_step": lab.first_wrong}
    if lab.source == "mc":
        out["m"] = lab.judgement.meta.get("m")
        out["estimates"] = lab.estimates
    return out


def extract(tree: ExportTree, opts: ExportOptions) -> Iterator[Example]:
    """One row per labelled solution (see the module doc)."""
    for lab in labelled_solutions(tree, opts.step_source):
        if not keep_text("\n".join(lab.steps), opts):
            continue
        group = "correct" if lab.first_wrong == NO_ERROR else "erroneous"
        yield Example("steps", tree.task_id, row(tree, lab, opts),
                      provenance(tree, node_id=lab.node.id, n_steps=len(lab.steps),
                                 group=group, **label_provenance(lab)))


KIND = Kind(
    name="steps",
    extract=extract,
    description="step labels: the first wrong step of each labelled solution, from the "
                "step critic or Monte Carlo estimation, as ProcessBench rows (problem, steps, "
                "0-based label) or, with step_form=prm, TRL stepwise rows (prompt, "
                "completions, per-step labels)",
    columns=("problem", "steps", "label", "final_answer_correct"),
)
