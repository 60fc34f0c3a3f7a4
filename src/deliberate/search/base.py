"""What every tree search shares: a search space, a value function, and search nodes.

The space knows the task's world (how to grow children, what is terminal, what a
node's whole candidate is); the value function scores a node; the algorithm
(``strategies/mcts.py``, ``beam.py``, ``best_first.py``) knows neither. All search
state lives in the tree: visits and values are the nodes' own fields, so a
search re-run from its journal rebuilds the same tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from deliberate.engine.context import TaskContext
from deliberate.tree import NodeRecord


@dataclass(frozen=True, slots=True)
class Valuation:
    """A value function's verdict on a node.

    ``value`` is normalised to [0, 1] (the raw score and its scale are kept in the
    judgement); ``explanation`` and ``advice`` are the words of the hybrid value
    (SWE-Search): why this value, and what a sibling should try instead.
    """

    value: float
    explanation: str = ""
    advice: str = ""
    judgement_id: str | None = None


@dataclass(frozen=True, slots=True)
class Feedback:
    """What an expansion may be told: advice from the value of a sibling or of the
    node itself, and the texts of siblings already tried (to avoid repeating them)."""

    advice: tuple[str, ...] = ()
    siblings: tuple[str, ...] = ()


class SearchSpace(Protocol):
    """How a tree grows for one task."""

    name: str

    async def expand(self, ctx: TaskContext, node: NodeRecord, k: int, *,
                     feedback: Feedback | None = None, key: object = 0) -> list[NodeRecord]:
        """Add up to ``k`` children under ``node`` to ``ctx.tree`` and return them.

        ``key`` distinguishes repeated expansions of the same node (node ids derive
        from it). Fewer (or no) children come back when the budget ends. A child may
        carry a prior in ``meta["prior"]`` (for PUCT).
        """
        ...

    def is_terminal(self, ctx: TaskContext, node: NodeRecord) -> bool:
        """Whether ``node`` holds a finished candidate (a final answer)."""
        ...

    def can_expand(self, ctx: TaskContext, node: NodeRecord) -> bool:
        """Whether ``node`` may grow children (a refined answer may; a final step may not)."""
        ...

    def candidate(self, ctx: TaskContext, node: NodeRecord) -> str:
        """The whole candidate text the node stands for (step-wise: its steps joined)."""
        ...


class ValueFunction(Protocol):
    """Scores a node; records its judgement in the tree."""

    name: str

    async def evaluate(self, ctx: TaskContext, space: SearchSpace,
                       node: NodeRecord) -> Valuation | None:
        """The node's valuation, or None when it could not be had (budget, parse failure)."""
        ...


@dataclass(slots=True)
class SearchStats:
    """What a search did, recorded on the task attempt."""

    iterations: int = 0
    expansions: int = 0
    evaluations: int = 0
    stopped_by: str = ""
    extra: dict[str, object] = field(default_factory=dict)
