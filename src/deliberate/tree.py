"""The one data model: runs, task attempts, nodes, judgements and model calls.

These records are what the store persists and what strategies, exports, evaluation,
the server and the viewer read. Ids are deterministic (derived from the run, the
task and the node's place in the tree), so a resumed run re-creates exactly the
ids it had and writes become idempotent.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Literal

NodeStatus = Literal["open", "done", "failed", "pruned"]
AttemptStatus = Literal["pending", "running", "done", "failed", "budget_limited"]
RunStatus = Literal["running", "done", "failed", "interrupted"]


def make_id(*parts: object) -> str:
    """A short stable id from its parts (20 hex chars of sha256)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode())
    return h.hexdigest()[:20]


def now() -> float:
    return time.time()


@dataclass(slots=True)
class RunRecord:
    id: str
    config: dict[str, Any]
    status: RunStatus = "running"
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class AttemptRecord:
    """One task inside a run: its outcome and its accounting."""

    run_id: str
    task_id: str
    status: AttemptStatus = "pending"
    root_id: str | None = None
    final_node_id: str | None = None
    answer: str | None = None
    correct: bool | None = None
    budget_limited: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    updated_at: float = field(default_factory=now)


@dataclass(slots=True)
class NodeRecord:
    """One attempt: a whole candidate or one step of a multi-step solution."""

    id: str
    run_id: str
    task_id: str
    parent_id: str | None
    role: str
    operator: str
    text: str = ""
    answer: str | None = None
    depth: int = 0
    status: NodeStatus = "done"
    visits: int = 0
    value: float | None = None
    call_id: str | None = None
    sample_index: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=now)


@dataclass(slots=True)
class JudgementRecord:
    """What a critic, judge, value function or verifier said about a node."""

    id: str
    run_id: str
    task_id: str
    node_id: str
    source: str  # "model:<model_id>" or "verifier:<name>"
    role: str  # judge, critic, value, step_critic, verifier
    score: float | None = None
    scale_min: float | None = None
    scale_max: float | None = None
    verdict: str | None = None  # e.g. correct / incorrect / parse_failure
    critique: str | None = None
    first_wrong_step: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=now)

    @property
    def normalised(self) -> float | None:
        """Score mapped to [0, 1] using its declared scale."""
        if self.score is None:
            return None
        lo = self.scale_min if self.scale_min is not None else 0.0
        hi = self.scale_max if self.scale_max is not None else 1.0
        if hi == lo:
            return None
        return (self.score - lo) / (hi - lo)


@dataclass(slots=True)
class ModelCallRecord:
    """One request to a model, persisted before its result is used.

    ``key`` is the journal key: the sample key of the request's first sample, which
    together with ``n`` identifies the call within a task attempt on resume.
    """

    id: str
    run_id: str
    task_id: str
    node_id: str | None
    key: str
    model: str
    role: str
    request: dict[str, Any]
    response: dict[str, Any] | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    cached: bool = False
    error: str | None = None
    created_at: float = field(default_factory=now)
