"""The step proposer: given a task and the steps so far, writes the next step.

Step-wise search (``search/step_space.py``) grows a tree one reasoning step at a
time; this role is the expansion. One request with ``n`` samples gives ``n``
alternative next steps. The reply is free text: the space keeps its first step
(by its splitting mode), so a model that writes on is cut back to one step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from deliberate.models.base import ChatResponse, Message
from deliberate.roles.roles import RoleBase, node_tags
from deliberate.tasks.task import Task


@dataclass(frozen=True, slots=True)
class StepProposer(RoleBase):
    """Proposes the next step of a partial solution (or its final answer line)."""

    template: ClassVar[str] = "step_proposer"

    def messages(self, task: Task, steps: Sequence[str], *, advice: Sequence[str] = (),
                 siblings: Sequence[str] = ()) -> tuple[Message, ...]:
        ctx = {"task": task, "steps": list(steps), "advice": list(advice),
               "siblings": list(siblings)}
        return self.chat(self.template, **ctx)

    async def propose(self, task: Task, steps: Sequence[str], n: int, *, offset: int = 0,
                      node_id: str | None = None, advice: Sequence[str] = (),
                      siblings: Sequence[str] = ()) -> ChatResponse:
        """``n`` sampled next steps in one request (may raise BudgetExceeded)."""
        tags = node_tags(self.template, node_id)
        msgs = self.messages(task, steps, advice=advice, siblings=siblings)
        return await self.model.complete(self.request(msgs, n=n, offset=offset, tags=tags))
