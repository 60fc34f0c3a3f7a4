"""The environment policy: picks the most promising of an environment's legal actions.

Search over a user's environment (``search/env.py``) grows one node per action.
When a state has more legal actions than the search wants children, this role
chooses: it sees the task, the actions taken so far, the state as the
environment renders it and the numbered legal actions, and replies
``{"reason": "...", "actions": [<k distinct numbers, best first>]}``. The order
is the policy's ranking, which becomes the children's PUCT prior (Agent Q's
self-ranking of proposed actions). Like every structured role it asks once more
on an unreadable reply; a second failure is a recorded failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel

from deliberate.models.base import Message
from deliberate.parsing import ParseError, parse_structured
from deliberate.roles.roles import RoleBase, Structured, ask_structured, node_tags
from deliberate.tasks.task import Task


class ActionChoice(BaseModel):
    """What the policy must return: action numbers (1-based), best first."""

    actions: list[int]
    reason: str = ""


def parse_choice(text: str, n: int, k: int) -> ActionChoice:
    """``k`` distinct action numbers in 1..n, best first; else ParseError.

    A longer ranking of distinct valid numbers is cut to its first ``k`` (it still
    answers the question); fewer than ``k``, a repeat or a number off the list is
    an error the model is shown on its repair request.
    """
    choice = parse_structured(text, ActionChoice)
    nums = choice.actions
    bad = [a for a in nums if not 1 <= a <= n]
    if bad:
        raise ParseError(f"action numbers must be between 1 and {n}; got {bad}")
    if len(set(nums)) != len(nums):
        raise ParseError(f"each action may be listed once; got {nums}")
    if len(nums) < k:
        raise ParseError(f"list {k} distinct action numbers; got {len(nums)}")
    return ActionChoice(actions=nums[:k], reason=choice.reason)


def choice_prior(k: int) -> list[float]:
    """The prior of the children at ranks 0..k-1: ∝ 1/(rank+1), summing to 1."""
    weights = [1.0 / (r + 1) for r in range(k)]
    total = sum(weights)
    return [w / total for w in weights]


@dataclass(frozen=True, slots=True)
class EnvPolicy(RoleBase):
    """Chooses ``k`` of the legal actions of a state, best first."""

    template: ClassVar[str] = "env_policy"

    def messages(self, task: Task, state: str, actions: Sequence[str], k: int, *,
                 history: Sequence[str] = (), tried: Sequence[str] = (),
                 advice: Sequence[str] = (), siblings: Sequence[str] = ()
                 ) -> tuple[Message, ...]:
        ctx: dict[str, Any] = {"task": task, "state": state, "actions": list(actions),
                               "k": k, "history": list(history), "tried": list(tried),
                               "advice": list(advice), "siblings": list(siblings)}
        return self.chat(self.template, **ctx)

    async def choose(self, task: Task, state: str, actions: Sequence[str], k: int, *,
                     history: Sequence[str] = (), tried: Sequence[str] = (),
                     advice: Sequence[str] = (), siblings: Sequence[str] = (),
                     node_id: str | None = None, sample: int = 0) -> Structured[ActionChoice]:
        """The policy's pick of ``k`` of ``actions`` (may raise BudgetExceeded).

        ``history``: the actions taken so far; ``tried``: actions already taken from
        this state (not offered again); ``advice`` and ``siblings``: the search's
        feedback (advice from valued nodes, the actions tried in place of the last one).
        """
        n = len(actions)
        msgs = self.messages(task, state, actions, k, history=history, tried=tried,
                             advice=advice, siblings=siblings)
        return await ask_structured(
            self, msgs, lambda t: parse_choice(t, n, k), tags=node_tags(self.template, node_id),
            sample=sample, response_format=self.schema_format("action_choice", ActionChoice),
            hint=f"Reply again with only the JSON object listing {k} distinct action numbers "
                 f"from 1 to {n}, best first.",
        )
