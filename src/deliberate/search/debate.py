"""The debate discriminator: several judges vote over rounds for the best finalist.

SWE-Search can choose its final answer by a multi-agent debate (5 agents, 3
rounds; METHODS.md §4). :func:`debate` runs one over finalists a search passes in
(best first):

- **Round 1**: every judge votes independently, all at once. The prompt is the
  same for every judge; judge *a* in round *r* asks for sample index
  ``(r - 1) * agents + a``, so the votes are independent samples and never one
  cached answer.
- **Rounds 2..R**: every judge sees its own previous vote and the others' votes of
  the previous round, with their reasons, and votes again.
- **Winner**: the plurality of the final votes, where a judge's final vote is the
  one from the last round it was asked in (normally the last round; a round cut
  short by the budget leaves the judges it did not reach with their previous
  vote). An unreadable vote counts for nobody. A tie goes to the finalist with
  more votes in the round before, then the one before that, then to the earlier
  finalist (the caller's best-first order).

Differences from SWE-Search: the debate stops early once every judge gave a
readable vote for the same finalist (``stop_on_agreement``, on by default), since
a unanimous panel shown its own unanimity has nothing to revise; turn it off for
exactly R rounds. Judges take the role's settings (``RunConfig.role(name)``: the
judge's unless ``roles.<name>`` is set); as the judge samples greedily by default,
which would make all judges one, a role without settings of its own that
inherits temperature 0 samples at :data:`DEBATE_TEMPERATURE` instead.

Recording: each vote is one judgement (role ``debate_judge``, source
``model:<id>``, key ``r<round>a<agent>``) on the finalist it chose, verdict
``vote``, critique the judge's reason, meta ``round`` (1-based), ``agent``
(0-based), ``choice`` (the 1-based finalist number the judge gave),
``finalists`` (the node ids in the order shown) and ``call_ids``. A vote that
could not be read even after the one repair request is a judgement on the first
finalist with verdict ``parse_failure``, the parse error as critique and meta
``raw``. Calls are tagged with the role name, ``round``, ``agent`` and the first
finalist's node id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from deliberate.engine.context import TaskContext
from deliberate.errors import BudgetExceeded
from deliberate.roles.debate_judge import DebateJudge, DebateVote, SeenVote
from deliberate.roles.roles import Structured
from deliberate.tree import NodeRecord

DEBATE_TEMPERATURE = 0.7
"""Sampling temperature of judges whose role inherits a greedy (0) temperature."""


@dataclass(frozen=True, slots=True)
class Ballot:
    """One judge's vote in one round. ``choice`` is a 0-based index into the finalists,
    None when the reply could not be read."""

    round: int
    agent: int
    choice: int | None
    reason: str
    judgement_id: str


@dataclass(slots=True)
class DebateOutcome:
    """What the debate decided: ``winner`` indexes the finalists (None: no readable vote).

    ``votes`` holds one list per round that was asked (by agent; a round cut short
    by the budget holds only the judges it reached), ``tallies`` the readable votes
    per finalist in each of those rounds, ``final`` the tally the winner came from.
    """

    winner: int | None
    votes: list[list[Ballot]] = field(default_factory=list)
    tallies: list[list[int]] = field(default_factory=list)
    final: list[int] = field(default_factory=list)
    note: str = ""
    stopped_by: str | None = None


def debate_role(ctx: TaskContext, name: str = "debate_judge") -> DebateJudge:
    """The judges' role: ``name``'s settings, sampling where they would be greedy."""
    role = ctx.roles.make(DebateJudge, name)
    if role.config.temperature <= 0 and name not in ctx.roles.config.roles:
        role = replace(role, config=role.config.model_copy(
            update={"temperature": DEBATE_TEMPERATURE}))
    return role


async def debate(ctx: TaskContext, nodes: Sequence[NodeRecord], texts: Sequence[str], *,
                 agents: int = 5, rounds: int = 3, role: str = "debate_judge",
                 stop_on_agreement: bool = True) -> DebateOutcome:
    """Let ``agents`` judges debate for up to ``rounds`` rounds which finalist is best.

    ``nodes`` are the finalists best first, ``texts`` the whole candidate each stands
    for (what the judges read). A single finalist wins without a call. The budget
    ends the debate early; the winner then comes from the votes gathered.
    """
    if not nodes or len(nodes) != len(texts):
        raise ValueError("a debate needs at least one finalist, and one text per finalist")
    if agents < 1 or rounds < 1:
        raise ValueError("a debate needs at least one judge and one round")
    if len(nodes) == 1:
        return DebateOutcome(0, note="one finalist: no debate")
    judge = debate_role(ctx, role)
    m = len(nodes)
    votes: list[list[Ballot]] = []
    stopped_by: str | None = None
    for r in range(1, rounds + 1):
        prev = {b.agent: b for b in votes[-1]} if votes else {}
        replies = await asyncio.gather(*(
            _ask(ctx, judge, nodes, texts, r, a, agents, prev, role) for a in range(agents)))
        ballots = [_record(ctx, judge, nodes, r, a, res)
                   for a, res in enumerate(replies) if res is not None]
        if ballots:
            votes.append(ballots)
        if len(ballots) < agents:
            stopped_by = "budget"
            break
        if stop_on_agreement and _unanimous(ballots):
            if r < rounds:
                stopped_by = "agreement"
            break
    return _decide(votes, m, stopped_by)


async def _ask(ctx: TaskContext, judge: DebateJudge, nodes: Sequence[NodeRecord],
               texts: Sequence[str], r: int, agent: int, agents: int,
               prev: dict[int, Ballot], role: str) -> Structured[DebateVote] | None:
    """One judge's vote in round ``r``; None when the budget stopped it."""
    own = prev.get(agent)
    seen_own = _seen(own) if own is not None else None
    others = [s for b in prev.values() if b.agent != agent and (s := _seen(b)) is not None]
    others.sort(key=lambda s: s.agent)
    try:
        return await judge.vote(ctx.task, texts, round=r, agent=agent, own=seen_own,
                                others=others, sample=(r - 1) * agents + agent,
                                node_id=nodes[0].id, role_name=role)
    except BudgetExceeded:
        return None


def _seen(b: Ballot) -> SeenVote | None:
    return None if b.choice is None else SeenVote(b.agent, b.choice + 1, b.reason)


def _record(ctx: TaskContext, judge: DebateJudge, nodes: Sequence[NodeRecord], r: int,
            agent: int, res: Structured[DebateVote]) -> Ballot:
    """The vote as a judgement on the finalist it chose (see the module docstring)."""
    source = f"model:{judge.model.model_id}"
    meta: dict[str, Any] = {"round": r, "agent": agent, "finalists": [n.id for n in nodes],
                            "call_ids": res.call_ids}
    if res.repaired:
        meta["repaired"] = True
    key = f"r{r}a{agent}"
    if res.value is None:
        j = ctx.tree.judge(nodes[0], source=source, role="debate_judge", key=key,
                           verdict="parse_failure", critique=res.error,
                           meta={**meta, "raw": res.raw})
        return Ballot(r, agent, None, "", j.id)
    v = res.value
    j = ctx.tree.judge(nodes[v.choice - 1], source=source, role="debate_judge", key=key,
                       verdict="vote", critique=v.reason, meta={**meta, "choice": v.choice})
    return Ballot(r, agent, v.choice - 1, v.reason, j.id)


def _unanimous(ballots: list[Ballot]) -> bool:
    return len({b.choice for b in ballots}) == 1 and ballots[0].choice is not None


def _tally(ballots: Sequence[Ballot], m: int) -> list[int]:
    out = [0] * m
    for b in ballots:
        if b.choice is not None:
            out[b.choice] += 1
    return out


def _decide(votes: list[list[Ballot]], m: int, stopped_by: str | None) -> DebateOutcome:
    """Plurality of each judge's last vote; ties by earlier rounds' tallies, then position."""
    tallies = [_tally(rnd, m) for rnd in votes]
    last: dict[int, Ballot] = {}
    for rnd in votes:
        last.update({b.agent: b for b in rnd})
    final = _tally(list(last.values()), m)
    rounds_run = len(votes)
    why = {"budget": "; stopped by the budget", "agreement": "; stopped early: unanimous"}
    tail = why.get(stopped_by or "", "")
    if not any(any(t) for t in tallies):
        note = ("the budget allowed no vote" if not votes else "no readable vote") + tail
        return DebateOutcome(None, votes, tallies, final, note, stopped_by)
    tied = list(range(m))
    for t in [final, *reversed(tallies[:-1])]:
        top = max(t[i] for i in tied)
        tied = [i for i in tied if t[i] == top]
        if len(tied) == 1:
            break
    winner = tied[0]
    unread = sum(b.choice is None for b in last.values())
    note = (f"debate: finalist {winner + 1} of {m} with {final[winner]} of {len(last)} votes "
            f"after {rounds_run} round(s)" + (f", {unread} unreadable" if unread else "") + tail)
    return DebateOutcome(winner, votes, tallies, final, note, stopped_by)
