"""The debater: answers a task, then revises after reading the other debaters' answers.

Round 0 is plain independent answering with the generator's templates (so a
debater's first answer is exactly a generator sample from its own model); later
rounds use ``debater_{system,user}.j2``, which show the debater its own latest
answer and the others' (``<other_answers>``), and ask for an updated answer.
The prompt asks for cooperation, not opposition: METHODS.md §3 notes that too
much adversarial pressure hurts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deliberate.models.base import ChatResponse, Message
from deliberate.roles.roles import RoleBase, node_tags
from deliberate.tasks.task import Task


@dataclass(frozen=True, slots=True)
class Debater(RoleBase):
    def first_messages(self, task: Task) -> tuple[Message, ...]:
        return self.chat("generator", task=task)

    def revise_messages(self, task: Task, own: str, others: Sequence[str]
                        ) -> tuple[Message, ...]:
        ctx = {"task": task, "own": own, "others": list(others)}
        return self.chat("debater", **ctx)

    async def answer(self, task: Task, n: int = 1, *, offset: int = 0,
                     node_id: str | None = None) -> ChatResponse:
        """Round 0: ``n`` independent answers (sample indices from ``offset``)."""
        return await self.model.complete(self.request(
            self.first_messages(task), n=n, offset=offset, tags=_tags("0", node_id)))

    async def revise(self, task: Task, own: str, others: Sequence[str], *, round: int,
                     sample: int = 0, node_id: str | None = None) -> ChatResponse:
        """A later round: one updated answer given the others' latest answers.

        ``sample`` keeps debaters whose prompts happen to coincide independent.
        """
        return await self.model.complete(self.request(
            self.revise_messages(task, own, others), offset=sample,
            tags=_tags(str(round), node_id)))


def _tags(round: str, node_id: str | None) -> dict[str, str]:
    tags = {**node_tags("debater", node_id), "round": round}
    return tags
