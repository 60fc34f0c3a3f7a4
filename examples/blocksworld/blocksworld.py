"""Blocksworld as a deliberate environment, with a plan-checking verifier.

The planning domain of RAP and llm-reasoners: coloured blocks stand in stacks on
a table, a hand holds at most one block, and the goal is a set of facts "the X
block is on the Y block". Four kinds of action, in plain English:

- ``pick up the red block``: a clear block on the table, hand empty;
- ``unstack the red block from the blue block``: a clear block on another, hand empty;
- ``put down the red block``: the block in hand goes on the table;
- ``stack the red block on the blue block``: the block in hand goes on a clear block.

Used by the tree searches with
``-p space=env -p env=examples/blocksworld/blocksworld.py:Blocksworld``, and graded
with ``--verifier python:examples/blocksworld/blocksworld.py:check_plan``. A task
carries its start and goal in ``metadata``: ``initial`` (stacks, each listed
bottom to top) and ``goal`` (pairs ``[X, Y]``: X directly on Y). See README.md.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from deliberate.tasks.task import Task
from deliberate.verifiers.base import VerifierResult

Stack = tuple[str, ...]
Fact = tuple[str, str]

PARTIAL_CREDIT = 0.8
"""The most a state short of the goal can score (only the goal scores 1)."""


@dataclass(frozen=True, slots=True)
class World:
    """A Blocksworld state: the stacks (each bottom to top, sorted so that equal
    worlds compare equal), the block in hand, and the goal it is searched toward."""

    stacks: tuple[Stack, ...]
    holding: str | None
    goal: tuple[Fact, ...]

    @classmethod
    def make(cls, stacks: Iterable[Sequence[str]], holding: str | None,
             goal: Iterable[Sequence[str]]) -> World:
        kept = tuple(sorted(tuple(s) for s in stacks if len(s) > 0))
        facts = tuple((str(x), str(y)) for x, y in goal)
        return cls(kept, holding, facts)

    @property
    def blocks(self) -> list[str]:
        held = [self.holding] if self.holding else []
        return sorted([b for s in self.stacks for b in s] + held)

    def below(self, block: str) -> str | None:
        """The block directly under ``block`` (None: on the table or in hand)."""
        for s in self.stacks:
            if block in s:
                i = s.index(block)
                return s[i - 1] if i > 0 else None
        return None

    def clear(self) -> list[str]:
        """Blocks with nothing on them (the tops of the stacks), sorted."""
        return sorted(s[-1] for s in self.stacks)

    def holds(self, fact: Fact) -> bool:
        return self.below(fact[0]) == fact[1]

    def goal_reached(self) -> bool:
        return all(self.holds(f) for f in self.goal)


def _on_table(world: World, block: str) -> bool:
    return any(s[0] == block for s in world.stacks)


def successors(world: World) -> dict[str, World]:
    """Every legal action of ``world`` and the world it leads to, in a stable order:
    with an empty hand, pick up / unstack each clear block (by name); holding a
    block, put it down, then stack it on each clear block (by name)."""
    out: dict[str, World] = {}
    if world.holding is None:
        for top in world.clear():
            under = world.below(top)
            stacks = [s[:-1] if s[-1] == top else s for s in world.stacks]
            after = World.make(stacks, top, world.goal)
            if under is None:
                out[f"pick up the {top} block"] = after
            else:
                out[f"unstack the {top} block from the {under} block"] = after
        return out
    held = world.holding
    out[f"put down the {held} block"] = World.make([*world.stacks, (held,)], None, world.goal)
    for top in world.clear():
        stacks = [(*s, held) if s[-1] == top else s for s in world.stacks]
        out[f"stack the {held} block on the {top} block"] = World.make(stacks, None, world.goal)
    return out


def well_placed(world: World) -> int:
    """How many blocks are in their final position, never to be moved again.

    A block is well placed when it is not in the hand, sits where its goal fact
    says (a block without a fact may sit anywhere), the block under it is not
    meant to carry another block, and the block under it is well placed too (the
    table is). Every other block must still move at least once, so the count
    rises only with real progress and does not reward a tower that has to be
    taken apart again.
    """
    want = dict(world.goal)
    carries = {y: x for x, y in world.goal}
    memo: dict[str, bool] = {}

    def well(block: str) -> bool:
        if block not in memo:
            under = world.below(block)
            misplaced = block == world.holding or (block in want and under != want[block])
            in_the_way = under is not None and carries.get(under, block) != block
            memo[block] = not misplaced and not in_the_way and (under is None or well(under))
        return memo[block]

    return sum(1 for b in world.blocks if well(b))


def _describe(world: World) -> list[str]:
    lines = []
    for s in world.stacks:
        lines.append(f"The {s[0]} block is on the table.")
        lines += [f"The {top} block is on the {under} block." for under, top in pairwise(s)]
    clear = world.clear()
    if clear:
        lines.append("Clear (nothing on them): " + ", ".join(f"the {b} block" for b in clear)
                     + ".")
    lines.append(f"You are holding the {world.holding} block." if world.holding
                 else "The hand is empty.")
    return lines


def _fact_text(fact: Fact) -> str:
    return f"the {fact[0]} block on the {fact[1]} block"


class Blocksworld:
    """The Blocksworld environment (implements deliberate's ``Environment``)."""

    name = "blocksworld"

    def initial_state(self, task: Task) -> World:
        return world_of(task.metadata)

    def actions(self, state: World) -> list[str]:
        return list(successors(state))

    def apply(self, state: World, action: str) -> World:
        moves = successors(state)
        if action not in moves:
            raise ValueError(f"{action!r} is not legal here: {why_illegal(state, action)}")
        return moves[action]

    def is_terminal(self, state: World) -> bool:
        return state.goal_reached()

    def reward(self, state: World) -> float:
        """1 at the goal, else ``PARTIAL_CREDIT`` times the share of blocks already in
        their final position (:func:`well_placed`)."""
        if state.goal_reached():
            return 1.0
        return PARTIAL_CREDIT * well_placed(state) / max(1, len(state.blocks))

    def render(self, state: World) -> str:
        unmet = [_fact_text(f) for f in state.goal if not state.holds(f)]
        lines = _describe(state)
        lines.append("Goal: " + "; ".join(_fact_text(f) for f in state.goal) + ".")
        if unmet:
            lines.append("Not yet true: " + "; ".join(unmet) + ".")
        return "\n".join(lines)


def world_of(metadata: Mapping[str, Any]) -> World:
    """The start of a task from its metadata (``initial`` stacks, ``goal`` pairs)."""
    initial, goal = metadata.get("initial"), metadata.get("goal")
    if not isinstance(initial, list) or not all(isinstance(s, list) for s in initial):
        raise ValueError("a Blocksworld task needs metadata 'initial': a list of stacks, "
                         "each a list of block names from bottom to top")
    if not isinstance(goal, list) or not goal or \
            not all(isinstance(f, list) and len(f) == 2 for f in goal):
        raise ValueError("a Blocksworld task needs metadata 'goal': a non-empty list of "
                         "[X, Y] pairs (X directly on Y)")
    world = World.make(initial, None, goal)
    names = world.blocks
    if len(set(names)) != len(names):
        raise ValueError(f"a block appears twice in {initial}")
    unknown = sorted({b for f in world.goal for b in f} - set(names))
    if unknown:
        raise ValueError(f"the goal names blocks not on the table: {', '.join(unknown)}")
    return world


_PICK = re.compile(r"pick up the (\w+) block")
_UNSTACK = re.compile(r"unstack the (\w+) block from the (\w+) block")
_PUT = re.compile(r"put down the (\w+) block")
_STACK = re.compile(r"stack the (\w+) block on the (\w+) block")


def why_illegal(world: World, action: str) -> str:
    """A short reason why ``action`` cannot be taken in ``world``."""
    known = set(world.blocks)
    for pattern in (_PICK, _UNSTACK, _PUT, _STACK):
        m = pattern.fullmatch(action)
        if m is None:
            continue
        missing = [b for b in m.groups() if b not in known]
        if missing:
            return f"there is no {missing[0]} block"
        x = m.group(1)
        if pattern in (_PICK, _UNSTACK):
            if world.holding is not None:
                return f"the hand already holds the {world.holding} block"
            if x not in world.clear():
                return f"the {x} block is not clear"
            if pattern is _PICK:
                return f"the {x} block is not on the table (unstack it)"
            return f"the {x} block is not on the {m.group(2)} block"
        if world.holding != x:
            held = f"the {world.holding} block" if world.holding else "nothing"
            return f"the hand holds {held}, not the {x} block"
        return f"the {m.group(2)} block is not clear"
    return ("not an action; write 'pick up the X block', 'unstack the X block from the Y "
            "block', 'put down the X block' or 'stack the X block on the Y block'")


_LEAD = re.compile(r"^\s*(?:[-*•]\s*|(?:step\s*)?\d+\s*[.):]\s*)", re.IGNORECASE)


def normalise_action(line: str) -> str:
    """A plan line as an action: list markers, case, extra spaces and a final period go."""
    text = _LEAD.sub("", line).strip().rstrip(".").strip().lower()
    return " ".join(text.split())


def run_plan(world: World, plan: str) -> tuple[World, str | None]:
    """Replay a plan (one action per line; blank lines skipped): the world it
    reaches, and why it stopped early (None when every action was legal)."""
    steps = [ln for ln in plan.splitlines() if ln.strip()]
    for i, line in enumerate(steps, start=1):
        action = normalise_action(line)
        moves = successors(world)
        if action not in moves:
            return world, f"step {i} {line.strip()!r} is illegal: {why_illegal(world, action)}"
        world = moves[action]
    return world, None


def check_plan(task: Task, text: str, answer: str | None) -> VerifierResult:
    """Pass when the plan (``answer`` if given, else ``text``) is legal throughout and
    reaches the task's goal; an illegal step fails with the reason."""
    plan = answer if answer is not None else text
    try:
        start = world_of(task.metadata)
    except ValueError as exc:
        return VerifierResult(None, None, f"not a Blocksworld task: {exc}")
    end, error = run_plan(start, plan)
    if error is not None:
        return VerifierResult(False, 0.0, error)
    n = sum(1 for ln in plan.splitlines() if ln.strip())
    if end.goal_reached():
        return VerifierResult(True, 1.0, f"the goal holds after {n} actions")
    unmet = "; ".join(_fact_text(f) for f in end.goal if not end.holds(f))
    return VerifierResult(False, Blocksworld().reward(end),
                          f"after {n} legal actions the goal is not reached (not yet: {unmet})")


def shortest_plan(world: World) -> list[str] | None:
    """A shortest plan to the goal by breadth-first search (None if none exists);
    fine for the handful of blocks of the example tasks."""
    seen = {world}
    queue: deque[tuple[World, list[str]]] = deque([(world, [])])
    while queue:
        w, plan = queue.popleft()
        if w.goal_reached():
            return plan
        for action, nxt in successors(w).items():
            if nxt not in seen:
                seen.add(nxt)
                queue.append((nxt, [*plan, action]))
    return None
