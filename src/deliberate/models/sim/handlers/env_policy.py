"""The sim as an environment policy: picks k of the legal actions it is shown.

Matches the ``<legal_actions>`` block of the env policy's template. The sim has
no model of a user's environment, so it cannot tell a good action from a bad
one: it orders the listed actions by a seeded hash (a draw per action text,
fixed per request and sample) and returns the first ``k``. With ``sim``, a search
over an environment is therefore driven by the environment's reward, not by
the policy's skill.

One exception gives the sim a configurable skill where the truth is known: when
the task carries a reference plan (``task.solution``, one action per line) and
the actions taken so far follow it, the plan's next action, if listed, is put
first with probability ``p_correct(task) ** (1 / plan length)`` (so a whole
plan is followed about as often as a generator sample is right). Off the
reference path the hash order stands.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from deliberate.models.sim.core import HandlerContext

_LEGAL = re.compile(r"<legal_actions>(.*?)</legal_actions>", re.DOTALL)
_ACTION = re.compile(r'<action n="(\d+)">(.*?)</action>', re.DOTALL)
_TAKEN_BLOCK = re.compile(r"<actions_taken>(.*?)</actions_taken>", re.DOTALL)
_TAKEN = re.compile(r'<taken n="(\d+)">(.*?)</taken>', re.DOTALL)
_CHOOSE = re.compile(r"Choose (\d+) of the (\d+) legal actions")


def _numbered(block: re.Pattern[str], item: re.Pattern[str], text: str) -> list[str]:
    found = block.search(text)
    if found is None:
        return []
    pairs = sorted((int(n), body.strip()) for n, body in item.findall(found.group(1)))
    return [body for _, body in pairs]


def read_legal(text: str) -> list[str]:
    """The numbered legal actions, in their order."""
    return _numbered(_LEGAL, _ACTION, text)


def read_taken(text: str) -> list[str]:
    """The actions taken so far, in their order."""
    return _numbered(_TAKEN_BLOCK, _TAKEN, text)


def wanted(text: str, n: int) -> int:
    """How many actions the prompt asks for (1 when it does not say)."""
    m = _CHOOSE.search(text)
    k = int(m.group(1)) if m else 1
    return max(1, min(k, n))


@dataclass(frozen=True, slots=True)
class EnvPolicyHandler:
    name: str = "env_policy"

    def matches(self, text: str) -> bool:
        return "<legal_actions>" in text

    def respond(self, ctx: HandlerContext) -> str:
        text = ctx.parsed.text
        legal = read_legal(text)
        if not legal:
            return json.dumps({"reason": "No legal actions were listed.", "actions": []})
        k = wanted(text, len(legal))
        order = sorted(range(1, len(legal) + 1),
                       key=lambda i: (ctx.draws.uniform(f"env_policy:{legal[i - 1]}"), i))
        reason = "No action stands out from this state; these look as good as any."
        task = ctx.task
        plan = [ln.strip() for ln in (task.solution or "").splitlines() if ln.strip()] \
            if task is not None else []
        taken = read_taken(text)
        if task is not None and plan and taken == plan[:len(taken)] and len(taken) < len(plan):
            nxt = plan[len(taken)]
            if nxt in legal:
                q = ctx.sim.p_correct(task) ** (1.0 / len(plan))
                if ctx.draws.uniform("env_policy:follow") < q:
                    best = legal.index(nxt) + 1
                    order = [best, *(i for i in order if i != best)]
                    reason = f"'{nxt}' moves toward the goal."
        return json.dumps({"reason": reason, "actions": order[:k]})


HANDLER = EnvPolicyHandler()
