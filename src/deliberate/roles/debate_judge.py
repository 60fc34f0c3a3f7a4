"""The debate judge: one of several judges voting for the best of a few finalists.

SWE-Search can pick its final answer by a debate among judges (METHODS.md §4):
each judge votes for one finalist with a reason; from the second round on it also
sees its own previous vote and the other judges' latest votes and reasons, and
votes again. The rounds and the count live in :mod:`deliberate.search.debate`;
this role asks one judge for one vote.

The model replies ``{"choice": <finalist number, 1-based>, "reason": "..."}``.
Like every structured role it asks once more on an unreadable reply (including a
number that names no finalist); a second failure is a recorded failure, never a
default vote. The prompt asks the judges to weigh each other's reasons, not to
defer to a majority, for the same reason the debaters are asked to cooperate
rather than to argue sides (METHODS.md §3).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationInfo, field_validator, model_validator

from deliberate.models.base import Message
from deliberate.parsing import parse_structured
from deliberate.roles.roles import RoleBase, Structured, ask_structured, node_tags
from deliberate.tasks.task import Task

_NUMBERED = re.compile(r"\s*(?:finalist|candidate|answer|option|#)?\s*#?\s*(\d+)\s*\.?\s*",
                       re.IGNORECASE)


class DebateVote(BaseModel):
    """What a debate judge must return: a finalist's 1-based number and why.

    Validated with ``context={"finalists": m}`` (as :func:`parse_vote` does), the
    choice must name one of the finalists 1..m.
    """

    choice: int
    reason: str = ""

    @field_validator("choice", mode="before")
    @classmethod
    def _choice(cls, v: object) -> object:
        if isinstance(v, bool):
            raise ValueError("must be a finalist number, not true/false")
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str):
            m = _NUMBERED.fullmatch(v)
            if m is None:
                raise ValueError(f"must be a finalist number, got {v!r}")
            return int(m.group(1))
        return v

    @model_validator(mode="after")
    def _in_range(self, info: ValidationInfo) -> DebateVote:
        ctx = info.context
        m = ctx.get("finalists") if isinstance(ctx, dict) else None
        if isinstance(m, int) and not 1 <= self.choice <= m:
            raise ValueError(f"choice {self.choice} names no finalist; choose from 1 to {m}")
        return self


def parse_vote(text: str, finalists: int) -> DebateVote:
    """The first JSON object in ``text`` that is a vote for one of ``finalists``; else
    ParseError."""
    return parse_structured(text, DebateVote, context={"finalists": finalists})


@dataclass(frozen=True, slots=True)
class SeenVote:
    """A vote as a judge is shown it: whose (0-based agent), which finalist (1-based), why."""

    agent: int
    choice: int
    reason: str


@dataclass(frozen=True, slots=True)
class DebateJudge(RoleBase):
    """Votes for the best of ``m`` finalists (templates ``debate_judge_{system,user}.j2``)."""

    template: ClassVar[str] = "debate_judge"

    def messages(self, task: Task, finalists: Sequence[str], *, round: int = 1,
                 own: SeenVote | None = None, others: Sequence[SeenVote] = ()
                 ) -> tuple[Message, ...]:
        """Round 1 (no votes seen) is the same prompt for every judge, so servers that
        cache prefixes reuse it; later rounds append the votes after the finalists."""
        ctx: dict[str, Any] = {"task": task, "finalists": list(finalists), "round": round,
                               "own": own, "others": list(others)}
        return self.chat(self.template, **ctx)

    def hint(self, m: int) -> str:
        return (f'Reply again with only the JSON object {{"choice": <a finalist number from 1 '
                f'to {m}>, "reason": "..."}}.')

    async def vote(self, task: Task, finalists: Sequence[str], *, round: int = 1,
                   agent: int = 0, own: SeenVote | None = None,
                   others: Sequence[SeenVote] = (), sample: int = 0,
                   node_id: str | None = None, role_name: str = "debate_judge",
                   ) -> Structured[DebateVote]:
        """One judge's vote. ``sample`` must differ between judges (and rounds) so that
        identical prompts stay independent samples rather than one cached answer."""
        m = len(finalists)
        tags = {**node_tags(role_name, node_id), "round": str(round), "agent": str(agent)}
        return await ask_structured(
            self, self.messages(task, finalists, round=round, own=own, others=others),
            lambda t: parse_vote(t, m), tags=tags, sample=sample, hint=self.hint(m),
            response_format=self.schema_format("debate_vote", DebateVote),
        )
