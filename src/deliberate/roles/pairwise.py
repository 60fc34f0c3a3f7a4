"""The pairwise judge: which of two candidates answers the task better?

LLM judges prefer one position far more often than chance (METHODS.md §2, §7), so
:meth:`PairwiseJudge.compare` asks twice with the order swapped and counts a win
only when both orders agree; anything else (disagreement, a tie, an unreadable
reply) is a tie, and both raw verdicts travel with the result. :meth:`PairwiseJudge.ask`
is the single-order question, for measuring the judge with and without the swap.

The tournaments at the bottom are pure bracket logic over indices and an async
``play`` callback, so strategies decide what a match records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, field_validator

from deliberate.models.base import Message
from deliberate.parsing import parse_structured
from deliberate.roles.roles import RoleBase, Structured, ask_structured, node_tags
from deliberate.tasks.task import Task

Position = Literal["A", "B", "tie"]
Outcome = Literal["x", "y", "tie"]
Tournament = Literal["knockout", "round_robin"]

T = TypeVar("T")

_TIE_WORDS = {"tie", "draw", "equal", "both", "neither", "none"}


# ---------------------------------------------------------------- the pairwise judge


class PairVerdict(BaseModel):
    """What the pairwise judge must return."""

    winner: Position
    reason: str = ""

    @field_validator("winner", mode="before")
    @classmethod
    def _winner(cls, v: object) -> object:
        if not isinstance(v, str):
            return v
        word = v.strip().strip(".()[]'\"").lower()
        for prefix in ("candidate ", "response ", "output ", "answer "):
            word = word.removeprefix(prefix)
        if word in ("a", "b"):
            return word.upper()
        return "tie" if word in _TIE_WORDS else v


def parse_pair_verdict(text: str) -> PairVerdict:
    return parse_structured(text, PairVerdict)


@dataclass(slots=True)
class Comparison:
    """The outcome of comparing ``x`` with ``y`` in both orders.

    ``first`` showed x as A, ``second`` showed y as A (None when the swap was off).
    ``winner`` is x or y only if every order asked agreed; otherwise a tie.
    """

    winner: Outcome
    first: Structured[PairVerdict]
    second: Structured[PairVerdict] | None = None

    @property
    def swapped(self) -> bool:
        return self.second is not None

    @property
    def parse_failure(self) -> bool:
        return any(r is not None and r.value is None for r in (self.first, self.second))

    @property
    def consistent(self) -> bool | None:
        """Both orders named the same candidate (or both a tie); None without a swap
        or when a reply could not be read."""
        if self.second is None or self.parse_failure:
            return None
        assert self.first.value is not None and self.second.value is not None
        return _as_outcome(self.first.value.winner, False) == _as_outcome(
            self.second.value.winner, True)

    @property
    def call_ids(self) -> list[str]:
        return self.first.call_ids + (self.second.call_ids if self.second else [])

    def meta(self) -> dict[str, Any]:
        """Both raw verdicts, what each order said and whether they agreed."""
        orders = [("x_first", self.first)]
        if self.second is not None:
            orders.append(("y_first", self.second))
        out: dict[str, Any] = {"swapped": self.swapped, "consistent": self.consistent,
                               "call_ids": self.call_ids}
        for name, r in orders:
            out[name] = {"winner": r.value.winner if r.value else None,
                         "reason": r.value.reason if r.value else None,
                         "raw": r.raw, "error": r.error, "repaired": r.repaired}
        return out


def _as_outcome(position: Position, swapped: bool) -> Outcome:
    if position == "tie":
        return "tie"
    return ("x" if position == "A" else "y") if not swapped else (
        "y" if position == "A" else "x")


@dataclass(frozen=True, slots=True)
class PairwiseJudge(RoleBase):
    """Compares two candidates for one task (templates ``pairwise_{system,user}.j2``)."""

    template: ClassVar[str] = "pairwise"
    hint: ClassVar[str] = ('Reply again with only the JSON object {"winner": "A" or "B" or '
                           '"tie", "reason": "..."}.')

    def messages(self, task: Task, a: str, b: str) -> tuple[Message, ...]:
        ctx = {"task": task, "candidate_a": a, "candidate_b": b}
        return self.chat(self.template, **ctx)

    async def ask(self, task: Task | str, a: str, b: str, *, node_id: str | None = None,
                  sample: int = 0) -> Structured[PairVerdict]:
        """One order only: ``a`` shown first (position A)."""
        tags = node_tags("pairwise_judge", node_id)
        return await ask_structured(
            self, self.messages(as_task(task), a, b), parse_pair_verdict, tags=tags,
            sample=sample, hint=self.hint, response_format=self.schema_format("pairwise_verdict", PairVerdict))

    async def compare(self, task: Task | str, x: str, y: str, *, swap: bool = True,
                      node_id: str | None = None, sample: int = 0) -> Comparison:
        """Is ``x`` or ``y`` better? With ``swap`` (the default) both orders are asked
        concurrently and a win needs both to agree."""
        if not swap:
            only = await self.ask(task, x, y, node_id=node_id, sample=sample)
            winner = _as_outcome(only.value.winner, False) if only.value else "tie"
            return Comparison(winner, only)
        first, second = await asyncio.gather(
            self.ask(task, x, y, node_id=node_id, sample=sample),
            self.ask(task, y, x, node_id=node_id, sample=sample),
        )
        outcome: Outcome = "tie"
        if first.value is not None and second.value is not None:
            a = _as_outcome(first.value.winner, False)
            b = _as_outcome(second.value.winner, True)
            outcome = a if a == b else "tie"
        return Comparison(outcome, first, second)


def as_task(task: Task | str) -> Task:
    """A plain input text as a task, so the judge works without a suite (LLMBar)."""
    return task if isinstance(task, Task) else Task(id="input", prompt=task, kind="text")


# ---------------------------------------------------------------- tournaments

Play = Callable[[int, int, int], Awaitable[Outcome | None]]
"""``play(round, i, j)``: the outcome of i (as x) against j (as y); None if it could
not be played (budget), which ends the tournament with the standings so far."""


@dataclass(slots=True)
class Standing:
    """Where a tournament ended: the winner's index, points and matches per entrant."""

    winner: int
    points: list[float]
    played: list[int]
    complete: bool = True

    def share(self, i: int) -> float | None:
        return self.points[i] / self.played[i] if self.played[i] else None


async def knockout(n: int, play: Play) -> Standing:
    """Single elimination: 0 v 1, 2 v 3, … each round, an odd last entrant gets a bye.

    A tie sends the earlier entrant through (entrants are in sample order, which
    carries no information, so this is a fair coin fixed in advance). n - 1 matches.
    """
    if n < 1:
        raise ValueError("a tournament needs at least one entrant")
    points, played = [0.0] * n, [0] * n
    alive = list(range(n))
    rnd = 0
    while len(alive) > 1:
        pairs = [(alive[k], alive[k + 1]) for k in range(0, len(alive) - 1, 2)]
        results = await asyncio.gather(*(play(rnd, i, j) for i, j in pairs))
        survivors: list[int] = []
        stopped = False
        for (i, j), r in zip(pairs, results, strict=True):
            if r is None:
                survivors += [i, j]
                stopped = True
                continue
            _score(points, played, i, j, r)
            survivors.append(j if r == "y" else i)
        if len(alive) % 2:
            survivors.append(alive[-1])
        alive = survivors
        if stopped:
            return Standing(alive[0], points, played, complete=False)
        rnd += 1
    return Standing(alive[0], points, played)


async def round_robin(n: int, play: Play) -> Standing:
    """Every pair once (all concurrently): 1 point a win, 0.5 a tie; most points wins,
    ties to the earlier entrant. n(n-1)/2 matches."""
    if n < 1:
        raise ValueError("a tournament needs at least one entrant")
    points, played = [0.0] * n, [0] * n
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    results = await asyncio.gather(*(play(0, i, j) for i, j in pairs))
    complete = True
    for (i, j), r in zip(pairs, results, strict=True):
        if r is None:
            complete = False
            continue
        _score(points, played, i, j, r)
    winner = max(range(n), key=lambda k: (points[k], -k))
    return Standing(winner, points, played, complete)


def _score(points: list[float], played: list[int], i: int, j: int, r: Outcome) -> None:
    played[i] += 1
    played[j] += 1
    if r == "x":
        points[i] += 1.0
    elif r == "y":
        points[j] += 1.0
    else:
        points[i] += 0.5
        points[j] += 0.5


async def run_tournament(kind: Tournament, n: int, play: Play) -> Standing:
    return await (knockout(n, play) if kind == "knockout" else round_robin(n, play))

