"""Revision trajectories (Agent-R): go wrong, notice, and recover from the same point.

For every **failed** solution (a node the grader, else a verifier, labels wrong)
whose first wrong step is known (:mod:`deliberate.export.steps`: Monte Carlo labels
or the step critic, per ``ExportOptions.step_source``), the row is one assistant
turn answering the task:

    steps before the error + the wrong step + a reflection + a correct continuation

- **the cut**: at the first wrong step k (1-based); a label of -1 (no step wrong,
  although the answer is) gives no row: there is no step to recover from;
- **the reflection**: one templated sentence naming step k and, when the step
  critic said why, its reason (no model is called: exports read the store only);
- **the splice**: a right-labelled path that shares the failed one's first k-1
  steps and differs at step k (the first found, in creation order); its steps from
  k on are the continuation. None: no row.

Three kinds of tree are supported:

- **step-space** trees (``mcts``/``beam``/``best_first`` with ``space=steps``): a
  path's nodes are its steps, so the wrong step is a node and the splice point is
  its parent; the correct path runs from that parent through a sibling of the wrong
  step to a right-labelled finished node. The failed node's own label is used,
  else (it was never reviewed) that of its deepest labelled ancestor. Step nodes are
  labelled right/wrong only where a grader or verifier judged them: the chosen one,
  and every finished one under ``value=mix`` or ``value=verifier``;
- **Monte Carlo** trees (``mc_label``): a failed solution's rollouts are its
  children (operator ``rollout``, ``meta["prefix_steps"]``), so a right rollout from
  the prefix of its first k-1 steps is exactly a correct path sharing the cut's
  parent (one exists whenever hard estimation put the first error at k >= 2: step
  k-1's estimate is above 0). The splice point is the solution itself;
- **whole-candidate** trees (``route``, ``mc_label`` for k = 1, or any strategy
  whose candidates carry a step critic or Monte Carlo judgement): the continuation
  comes from a sibling candidate (same parent node) whose steps (one per line, or
  its Monte Carlo judgement's own) equal the failed one's before step k and differ
  at k, compared with whitespace collapsed and ``Step k:`` labels ignored. With k = 1
  any right sibling whose first step differs qualifies.

Steps are joined one per line (the generator templates' convention; a blank line
when Monte Carlo labels cut by paragraphs). Columns: ``messages`` (user: the task;
assistant: the spliced trajectory). Provenance: the failed node, the wrong step's
node (the failed candidate itself outside step space), the splice point, the good
leaf and how it was found (``spliced_from``: step_path, rollout, sibling), and the
source of the first-error label.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from deliberate.export.base import Example, ExportOptions, ExportTree, keep_text, provenance
from deliberate.export.kinds import Kind
from deliberate.export.steps import (
    NO_ERROR,
    StepLabel,
    label_provenance,
    same_step,
    solution_steps,
    step_label,
    step_path,
)
from deliberate.tree import NodeRecord

__all__ = ["KIND", "Splice", "extract", "reflection", "splices"]


@dataclass(frozen=True, slots=True)
class Splice:
    """One revision trajectory and the nodes it was cut and joined at."""

    failed: NodeRecord
    label: StepLabel
    bad_node: NodeRecord
    """The wrong step's node (step space) or the failed candidate itself."""
    splice_point: NodeRecord
    """Where both solutions part: the wrong step's parent, or the candidates' parent."""
    good: NodeRecord
    continuation: list[str]
    via: str
    """``step_path`` (a sibling step's path), ``rollout`` (a Monte Carlo rollout from the
    prefix before the wrong step) or ``sibling`` (a sibling candidate)."""

    @property
    def k(self) -> int:
        return self.label.first_wrong

    @property
    def trajectory(self) -> str:
        steps = self.label.steps
        return self.label.joiner.join([*steps[: self.k], reflection(self.k, self.label.reason),
                                       *self.continuation])


def reflection(k: int, reason: str = "") -> str:
    """The sentence spliced in after the wrong step."""
    why = reason.strip()
    if why and why[-1] not in ".!?":
        why += "."
    middle = f" {why}" if why else ""
    return f"Wait: step {k} is wrong.{middle} Let me redo it from there."


def failure_label(tree: ExportTree, node: NodeRecord, opts: ExportOptions) -> StepLabel | None:
    """The first-error label of a failed node: its own, else (a step node never
    reviewed) its deepest labelled ancestor's."""
    lab = step_label(tree, node, opts.step_source)
    if lab is not None or node.operator != "step":
        return lab
    for anc in reversed(step_path(tree, node)[:-1]):
        lab = step_label(tree, anc, opts.step_source)
        if lab is not None:
            return lab
    return None


def splices(tree: ExportTree, opts: ExportOptions) -> Iterator[Splice]:
    """Every failed solution with a known first error and a correct path to splice on."""
    below: dict[str, tuple[int, NodeRecord]] | None = None  # on the first step-space failure
    for node in tree.nodes:
        if node.parent_id is None or tree.label(node)[0] is not False:
            continue
        lab = failure_label(tree, node, opts)
        if lab is None or lab.first_wrong == NO_ERROR:
            continue
        if lab.path:
            below = right_below(tree) if below is None else below
            found = _step_splice(tree, node, lab, below)
        else:
            found = _candidate_splice(tree, node, lab)
        if found is not None:
            yield found


def right_below(tree: ExportTree) -> dict[str, tuple[int, NodeRecord]]:
    """For each step node, the first-made right-labelled step node in its subtree (itself
    included, reached through step nodes only) and its creation index; one pass over
    the nodes, children before parents."""
    best: dict[str, tuple[int, NodeRecord]] = {}
    for i in range(len(tree.nodes) - 1, -1, -1):
        n = tree.nodes[i]
        if n.operator != "step":
            continue
        found = [best[c.id] for c in tree.kids(n) if c.id in best]
        if tree.label(n)[0] is True:
            found.append((i, n))
        if found:
            best[n.id] = min(found, key=lambda f: f[0])
    return best


def _step_splice(tree: ExportTree, failed: NodeRecord, lab: StepLabel,
                 below: dict[str, tuple[int, NodeRecord]]) -> Splice | None:
    k = lab.first_wrong
    bad = lab.path[k - 1]
    parent = tree.by_id[bad.parent_id or ""]
    goods = [below[c.id] for c in tree.kids(parent) if c.id != bad.id and c.id in below]
    if not goods:
        return None
    _, good = min(goods, key=lambda f: f[0])
    steps = tree.path(good)[parent.depth + 1:]  # depth = index on the root→node path
    return Splice(failed, lab, bad, parent, good, [n.text for n in steps], "step_path")


def _candidate_splice(tree: ExportTree, failed: NodeRecord, lab: StepLabel) -> Splice | None:
    if not tree.is_candidate(failed) or failed.parent_id is None:
        return None
    k = lab.first_wrong
    shared = lab.steps[: k - 1]
    if k > 1 and _rollout_prefixes(tree, failed, shared):
        for kid in tree.kids(failed):
            if (kid.operator == "rollout" and kid.meta.get("prefix_steps") == k - 1
                    and tree.label(kid)[0] is True and kid.text.strip()):
                return Splice(failed, lab, failed, failed, kid, [kid.text.strip()], "rollout")
    parent = tree.by_id[failed.parent_id]
    for sib in tree.kids(parent):
        if sib.id == failed.id or not tree.is_candidate(sib) or tree.label(sib)[0] is not True:
            continue
        steps = solution_steps(tree, sib)
        if (len(steps) >= k and all(map(same_step, steps[: k - 1], shared))
                and not same_step(steps[k - 1], lab.steps[k - 1])):
            return Splice(failed, lab, failed, parent, sib, steps[k - 1:], "sibling")
    return None


def _rollout_prefixes(tree: ExportTree, node: NodeRecord, shared: list[str]) -> bool:
    """Whether the node's rollouts continue these steps: its rollouts start from prefixes
    of its Monte Carlo judgement's steps, which must begin with ``shared``."""
    for j in reversed(tree.judgements_of(node, "mc_steps")):
        steps = j.meta.get("steps")
        if isinstance(steps, list) and len(steps) >= len(shared):
            return all(same_step(str(a), b) for a, b in zip(steps, shared, strict=False))
    return False


def extract(tree: ExportTree, opts: ExportOptions) -> Iterator[Example]:
    """One revision trajectory per failed solution that can be cut and spliced."""
    for sp in splices(tree, opts):
        text = sp.trajectory
        if not keep_text(text, opts):
            continue
        _, failed_by = tree.label(sp.failed)
        _, good_by = tree.label(sp.good)
        yield Example(
            "revision", tree.task_id,
            {"messages": [{"role": "user", "content": tree.task_prompt},
                          {"role": "assistant", "content": text}]},
            provenance(tree, failed_node=sp.failed.id, bad_node=sp.bad_node.id,
                       bad_step=sp.label.steps[sp.k - 1], splice_point=sp.splice_point.id,
                       shared_steps=sp.k - 1, good_leaf=sp.good.id, spliced_from=sp.via,
                       failed_label_source=failed_by, good_label_source=good_by,
                       tree_form="steps" if sp.label.path else "candidates",
                       group=f"{sp.label.source} label", **label_provenance(sp.label)),
        )


KIND = Kind(
    name="revision",
    extract=extract,
    description="Agent-R revision trajectories: a failed solution cut at its first wrong "
                "step (step critic or Monte Carlo labels), a one-sentence reflection, and "
                "the correct path from the same parent spliced on, as chat messages",
    columns=("messages",),
)
