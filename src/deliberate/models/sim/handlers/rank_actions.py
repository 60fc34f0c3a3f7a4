"""The sim ranking its own proposed solutions (Agent Q's prior for PUCT).

Matches the ``<rank_actions>`` block. Each proposed solution is judged on its own
with the critic's error rates (a wrong one is seen as wrong with probability
``sensitivity``, a right one as right with probability ``specificity``); those it
thinks right come first, ties in the order shown.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from deliberate.models.sim.core import HandlerContext

_BLOCK = re.compile(r"<rank_actions>(.*)</rank_actions>", re.DOTALL)
_ACTION = re.compile(r'<action n="(\d+)">\n?(.*?)\n?</action>', re.DOTALL)


def read_actions(text: str) -> list[str]:
    block = _BLOCK.search(text)
    if block is None:
        return []
    return [body for _, body in sorted((int(n), b) for n, b in _ACTION.findall(block.group(1)))]


@dataclass(frozen=True, slots=True)
class RankActionsHandler:
    name: str = "rank_actions"

    def matches(self, text: str) -> bool:
        return "<rank_actions>" in text

    def respond(self, ctx: HandlerContext) -> str:
        actions = read_actions(ctx.parsed.text)
        p = ctx.sim.params
        good: list[bool] = []
        for i, a in enumerate(actions, start=1):
            u = ctx.draws.uniform(f"rank:{i}")
            if ctx.behaviour is None:
                good.append(u < 0.5)
            elif ctx.behaviour.is_right(a):
                good.append(u < p.specificity)
            else:
                good.append(u >= p.sensitivity)
        order = sorted(range(1, len(actions) + 1), key=lambda i: (not good[i - 1], i))
        return json.dumps({"reason": "The first ones look right; the others have mistakes.",
                           "ranking": order})


HANDLER = RankActionsHandler()
