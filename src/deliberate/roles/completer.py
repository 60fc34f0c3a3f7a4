"""The completer: continues a partial solution to its end (Monte Carlo rollouts).

Math-Shepherd estimates how good a step is by rolling out ``m`` completions from
the prefix that ends with it and counting how many reach the reference answer.
This role writes those completions: given a task and the steps so far, one
request with ``n`` samples returns ``n`` continuations, each meant to start at the
next step and end with the final answer. The reply is free text; the strategy
joins it to the prefix and grades the whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from deliberate.models.base import ChatResponse, Message
from deliberate.roles.roles import RoleBase, node_tags
from deliberate.tasks.task import Task


@dataclass(frozen=True, slots=True)
class Completer(RoleBase):
    """Continues the steps of a partial solution to the final answer."""

    template: ClassVar[str] = "completer"

    def messages(self, task: Task, steps: Sequence[str], *,
                 joiner: str = "\n") -> tuple[Message, ...]:
        """The prompt: the task, then the prefix as written (its steps joined by
        ``joiner``, the way the solution separated them)."""
        return self.chat(self.template, task=task, steps=list(steps),
                         prefix=joiner.join(steps))

    async def continue_from(self, task: Task, steps: Sequence[str], n: int, *,
                            offset: int = 0, node_id: str | None = None,
                            joiner: str = "\n") -> ChatResponse:
        """``n`` sampled continuations of ``steps`` in one request (may raise
        BudgetExceeded; under a budget the response may hold fewer than ``n``)."""
        tags = node_tags(self.template, node_id)
        msgs = self.messages(task, steps, joiner=joiner)
        return await self.model.complete(self.request(msgs, n=n, offset=offset, tags=tags))
