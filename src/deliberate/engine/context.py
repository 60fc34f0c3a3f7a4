"""What a strategy gets for one task: the task, its tree, its roles and its verifiers.

Strategies do no I/O themselves; they grow the tree through :class:`TaskTree` and
ask for model calls and verifications through :class:`TaskContext`, so the same
strategy runs live, from replay and on resume.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from deliberate.config import RunConfig
from deliberate.errors import BudgetExceeded
from deliberate.models.base import ChatModel, ChatResponse
from deliberate.models.budget import Ledger
from deliberate.roles.prompts import Prompts
from deliberate.roles.roles import Generator, Judge, JudgeResult, RoleBase
from deliberate.tasks.task import Task
from deliberate.tree import JudgementRecord, NodeRecord, NodeStatus, make_id
from deliberate.verifiers.base import Verifier, parse_answer


class TreeSink(Protocol):
    def put_node(self, node: NodeRecord) -> None: ...

    def put_judgement(self, judgement: JudgementRecord) -> None: ...


class TaskTree:
    """The in-memory tree of one task attempt, written through to the store.

    Node ids derive from the run, the task, the parent, the operator and a key the
    strategy gives (a sample index, a round number), so a rerun makes the same ids.
    """

    def __init__(self, sink: TreeSink, run_id: str, task: Task) -> None:
        self.sink = sink
        self.run_id = run_id
        self.task = task
        self.nodes: dict[str, NodeRecord] = {}
        self.children: dict[str, list[str]] = {}
        self.judgements: dict[str, list[JudgementRecord]] = {}
        self.root = self._put(
            NodeRecord(
                id=make_id(run_id, task.id, "root"),
                run_id=run_id,
                task_id=task.id,
                parent_id=None,
                role="task",
                operator="root",
                text=task.prompt,
                depth=0,
            )
        )

    def _put(self, node: NodeRecord) -> NodeRecord:
        if node.id not in self.nodes and node.parent_id is not None:
            self.children.setdefault(node.parent_id, []).append(node.id)
        self.nodes[node.id] = node
        self.sink.put_node(node)
        return node

    def add(
        self,
        parent: NodeRecord,
        *,
        role: str,
        operator: str,
        key: object,
        text: str,
        answer: str | None = None,
        call_id: str | None = None,
        sample_index: int | None = None,
        status: NodeStatus = "done",
        meta: dict[str, Any] | None = None,
    ) -> NodeRecord:
        return self._put(
            NodeRecord(
                id=make_id(self.run_id, self.task.id, parent.id, operator, key),
                run_id=self.run_id,
                task_id=self.task.id,
                parent_id=parent.id,
                role=role,
                operator=operator,
                text=text,
                answer=answer,
                depth=parent.depth + 1,
                status=status,
                call_id=call_id,
                sample_index=sample_index,
                meta=meta or {},
            )
        )

    def update(self, node: NodeRecord) -> None:
        """Persist changed mutable fields (value, visits, status, meta)."""
        self._put(node)

    def judge(
        self,
        node: NodeRecord,
        *,
        source: str,
        role: str,
        key: object = 0,
        score: float | None = None,
        scale: tuple[float, float] | None = None,
        verdict: str | None = None,
        critique: str | None = None,
        first_wrong_step: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> JudgementRecord:
        j = JudgementRecord(
            id=make_id(node.id, role, source, key),
            run_id=self.run_id,
            task_id=self.task.id,
            node_id=node.id,
            source=source,
            role=role,
            score=score,
            scale_min=scale[0] if scale else None,
            scale_max=scale[1] if scale else None,
            verdict=verdict,
            critique=critique,
            first_wrong_step=first_wrong_step,
            meta=meta or {},
        )
        self.judgements.setdefault(node.id, []).append(j)
        self.sink.put_judgement(j)
        return j

    def kids(self, node: NodeRecord) -> list[NodeRecord]:
        return [self.nodes[i] for i in self.children.get(node.id, [])]

    def stats(self) -> dict[str, Any]:
        depth = max((n.depth for n in self.nodes.values()), default=0)
        inner = [len(v) for v in self.children.values() if v]
        return {
            "nodes": len(self.nodes),
            "depth": depth,
            "branching": (sum(inner) / len(inner)) if inner else 0.0,
            "judgements": sum(len(v) for v in self.judgements.values()),
        }


R = TypeVar("R", bound=RoleBase)


class RoleFactory:
    """Builds the roles of one task attempt, each bound to its own model and settings.

    ``bind(name)`` returns the model for a role name, already wrapped in the task's
    budget and journal; settings come from :meth:`RunConfig.role`, so a small model
    can generate while a large one critiques.
    """

    def __init__(self, config: RunConfig, prompts: Prompts, bind: Callable[[str], ChatModel],
                 seed: int) -> None:
        self.config = config
        self.prompts = prompts
        self._bind = bind
        self._seed = seed
        self._models: dict[str, ChatModel] = {}

    def model(self, name: str) -> ChatModel:
        if name not in self._models:
            self._models[name] = self._bind(name)
        return self._models[name]

    def seed(self, name: str) -> int:
        return int(make_id(self._seed, name)[:8], 16)

    def make(self, cls: type[R], name: str, **kwargs: Any) -> R:
        """``cls`` (a role class) for the role called ``name``."""
        return cls(self.model(name), self.config.role(name), self.prompts, self.seed(name),
                   **kwargs)


@dataclass(slots=True)
class TaskContext:
    """Everything one strategy run on one task may use."""

    task: Task
    tree: TaskTree
    generator: Generator
    judge: Judge
    ledger: Ledger
    seed: int
    roles: RoleFactory
    scoring_verifier: Verifier | None = None
    notes: list[str] = field(default_factory=list)
    # What the strategy wants recorded on the task attempt (e.g. search statistics).
    stats: dict[str, Any] = field(default_factory=dict)

    def rng(self, *parts: object) -> random.Random:
        """A private random stream for one decision of the strategy."""
        return random.Random(int(make_id(self.seed, self.task.id, *parts)[:12], 16))

    @property
    def budget_limited(self) -> bool:
        return self.ledger.limited

    async def sample_candidates(
        self, n: int, *, parent: NodeRecord | None = None, offset: int = 0
    ) -> list[NodeRecord]:
        """Ask the generator for ``n`` whole candidates and add them under ``parent``.

        Under a budget this may return fewer (or none); the ledger says why.
        """
        parent = parent or self.tree.root
        try:
            resp: ChatResponse = await self.generator.generate(
                self.task, n, offset=offset, node_id=parent.id
            )
        except BudgetExceeded:
            return []
        call_id = resp.call_ids[0] if resp.call_ids else None
        nodes = []
        for c in sorted(resp.completions, key=lambda c: c.sample_index):
            nodes.append(
                self.tree.add(
                    parent,
                    role="generator",
                    operator="generate",
                    key=c.sample_index,
                    text=c.text,
                    answer=parse_answer(self.task, c.text),
                    call_id=call_id,
                    sample_index=c.sample_index,
                    meta={"finish_reason": c.finish_reason} if c.finish_reason != "stop" else {},
                )
            )
        return nodes

    async def judge_node(self, node: NodeRecord, *, key: object = 0,
                         text: str | None = None) -> JudgementRecord | None:
        """Judge a node (or ``text``, its whole candidate) with the LLM judge; None if
        the budget stopped it.

        A reply that cannot be parsed, even after one repair request, is recorded
        as a ``parse_failure`` judgement without a score.
        """
        try:
            res: JudgeResult = await self.judge.judge(
                self.task, node.text if text is None else text, node_id=node.id)
        except BudgetExceeded:
            return None
        source = f"model:{self.judge.model.model_id}"
        meta: dict[str, Any] = {"call_ids": res.call_ids}
        if res.repaired:
            meta["repaired"] = True
        if res.verdict is None:
            meta["raw"] = res.raw
            return self.tree.judge(node, source=source, role="judge", key=key,
                                   verdict="parse_failure", critique=res.error,
                                   scale=self.judge.scale, meta=meta)
        v = res.verdict
        return self.tree.judge(node, source=source, role="judge", key=key, score=v.score,
                               scale=self.judge.scale, verdict=v.verdict, critique=v.critique,
                               meta=meta)

    async def judge_nodes(self, nodes: Sequence[NodeRecord], *,
                          texts: Sequence[str] | None = None) -> list[JudgementRecord | None]:
        """Judge several nodes concurrently; order of the result follows ``nodes``."""
        if texts is None:
            return list(await asyncio.gather(*(self.judge_node(n) for n in nodes)))
        return list(await asyncio.gather(*(self.judge_node(n, text=t)
                                           for n, t in zip(nodes, texts, strict=True))))

    async def verify_node(self, node: NodeRecord, *,
                          text: str | None = None) -> JudgementRecord | None:
        """Score a node (or ``text``, its whole candidate) with the strategy's verifier."""
        if self.scoring_verifier is None:
            return None
        v = self.scoring_verifier
        if text is None or text == node.text:
            res = await v.verify(self.task, node.text, node.answer)
        else:
            res = await v.verify(self.task, text, node.answer or parse_answer(self.task, text))
        verdict = None if res.passed is None else ("correct" if res.passed else "incorrect")
        return self.tree.judge(node, source=f"verifier:{v.name}", role="verifier",
                               score=res.score, scale=(0.0, 1.0), verdict=verdict,
                               critique=res.details)
