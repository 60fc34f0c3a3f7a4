"""Tasks and suites: what a strategy is asked to solve, and the ground truth to judge it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

TaskKind = Literal["math", "code", "findings", "text", "choice"]

# Finding categories of detection suites (SmartBugs-curated's ten).
FINDING_CATEGORIES = (
    "reentrancy",
    "access_control",
    "arithmetic",
    "unchecked_low_level_calls",
    "denial_of_service",
    "bad_randomness",
    "front_running",
    "time_manipulation",
    "short_addresses",
    "other",
)


@dataclass(frozen=True, slots=True)
class Task:
    """One problem.

    - ``prompt``: what the generator sees (for code: the function signature and docstring).
    - ``answer``: the reference final answer (math: a number as text; choice: a letter).
    - ``solution``: a reference worked solution (math: steps, one per line) or, for code,
      the complete reference program (prompt + body) that passes ``tests``.
    - ``tests``: for code, test code that raises on failure (asserts, or HumanEval's
      ``check`` already called on ``entry_point``).
    - ``metadata``: free-form; ``difficulty`` in [0, 1] is read by the ``sim`` model,
      ``findings`` (list of {category, lines}) by detection suites.
    """

    id: str
    prompt: str
    kind: TaskKind = "text"
    answer: str | None = None
    solution: str | None = None
    tests: str | None = None
    entry_point: str | None = None
    system: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def difficulty(self) -> float:
        d = self.metadata.get("difficulty", 0.5)
        try:
            return min(1.0, max(0.0, float(d)))
        except (TypeError, ValueError):
            return 0.5


@dataclass(frozen=True, slots=True)
class Suite:
    """A named, ordered collection of tasks with unique ids."""

    name: str
    tasks: tuple[Task, ...]
    description: str = ""

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for t in self.tasks:
            if t.id in seen:
                from deliberate.errors import DataError

                raise DataError(f"suite {self.name!r}: duplicate task id {t.id!r}")
            seen.add(t.id)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def get(self, task_id: str) -> Task:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise KeyError(task_id)

    def head(self, limit: int | None) -> Suite:
        if limit is None or limit >= len(self.tasks):
            return self
        return Suite(self.name, self.tasks[:limit], self.description)

    @classmethod
    def of(cls, name: str, tasks: Sequence[Task], description: str = "") -> Suite:
        return cls(name, tuple(tasks), description)
