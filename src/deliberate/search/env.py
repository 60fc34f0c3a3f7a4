"""A user's environment as a search space: a node is one action, a path is a plan.

An :class:`Environment` is the task's world, written by the user (see
``docs/search-spaces.md`` and the Blocksworld example in ``examples/blocksworld``):
an initial state per task, the legal actions of a state, a deterministic
``apply``, a terminal test, a reward in [0, 1] and a rendering of the state for
a model. :class:`EnvSpace` grows a tree over it for the tree searches; the
search algorithms know nothing of the environment.

**The tree is the state.** A node's text is the action it takes; the state of a
node is rebuilt by replaying the actions root→node from
``env.initial_state(task)``, so a resumed run (which rebuilds the tree from its
journal) reaches exactly the same states. States are cached per node id only
to save replays.

**Expansion** of a node into ``k`` children: the legal actions of its state,
less those already taken from it (its existing children), are the options. With
at most ``k`` options every one becomes a child, in the environment's order, with
a uniform prior and no model call (role ``env``). Otherwise the policy role
(:class:`~deliberate.roles.env_policy.EnvPolicy`) picks ``k`` of them, best first,
and the child at rank ``r`` gets ``meta["prior"]`` ∝ 1/(r+1) (Agent Q's ranking
prior for PUCT; role ``env_policy``). An unreadable pick, after the one repair
request, is recorded as a ``parse_failure`` judgement on the node and ``k``
options are drawn with ``ctx.rng`` instead (role ``env``, uniform prior,
``meta["fallback"]``). A budget stop returns no children.

A child whose state is terminal holds the whole plan (the actions root→child,
one per line) as its ``answer``, which is what a plan verifier grades;
``candidate`` gives the same text for any node.

**Reward** (:class:`EnvReward`, the value ``env``): the environment's own
reward of the node's state, recorded as an ``env_reward`` judgement.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from deliberate.engine.context import TaskContext
from deliberate.errors import BudgetExceeded, ConfigError
from deliberate.roles.env_policy import EnvPolicy, choice_prior
from deliberate.search.base import Feedback, SearchSpace, Valuation
from deliberate.tasks.task import Task
from deliberate.tree import NodeRecord
from deliberate.verifiers.custom import load_object

ENV_METHODS = ("initial_state", "actions", "apply", "is_terminal", "reward", "render")
"""The methods every environment must have."""

PLAN_JOINER = "\n"
"""Between the actions of a plan (a node's whole candidate)."""


class Environment(Protocol):
    """A task's world, for search over actions (the user's side of :class:`EnvSpace`).

    States may be any Python value; they must not be mutated (``apply`` returns
    a new one). One environment object serves every task of a run, so it must
    keep no per-task state of its own: everything a state needs (the goal, say)
    belongs in the state, built by ``initial_state`` from the task.
    """

    name: str

    def initial_state(self, task: Task) -> Any:
        """The state a task starts from (read it from ``task.metadata``)."""
        ...

    def actions(self, state: Any) -> Sequence[str]:
        """The legal actions of ``state`` in a stable order; [] is a dead end."""
        ...

    def apply(self, state: Any, action: str) -> Any:
        """The state after ``action`` (one of ``actions(state)``); deterministic,
        leaving ``state`` unchanged."""
        ...

    def is_terminal(self, state: Any) -> bool:
        """Whether the episode is over (the goal reached, or failed for good)."""
        ...

    def reward(self, state: Any) -> float | None:
        """The state's reward in [0, 1] (1: solved); None when it cannot be known here."""
        ...

    def render(self, state: Any) -> str:
        """The state as a model should see it."""
        ...


def load_environment(spec: str) -> Environment:
    """The environment ``spec`` names: ``package.module:Name`` or ``path/to/file.py:Name``.

    ``Name`` may be a class (built with no arguments), a factory called with no
    arguments, or an environment object. A spec that cannot be found, fails to
    build, or names something without every method of :class:`Environment` is a
    one-line :class:`~deliberate.errors.UsageError`.
    """
    label = f"environment {spec}"
    obj = load_object(spec, label=label, form="package.module:Name or path/to/file.py:Name")
    if inspect.isclass(obj) or (callable(obj) and not _has_methods(obj)):
        what = getattr(obj, "__name__", repr(obj))
        try:
            obj = obj()
        except Exception as exc:
            raise ConfigError(f"{label}: {what}() failed: {type(exc).__name__}: {exc}") from exc
    missing = [m for m in ENV_METHODS if not callable(getattr(obj, m, None))]
    if missing:
        raise ConfigError(f"{label}: {type(obj).__name__} lacks {', '.join(missing)} "
                          f"(an environment needs {', '.join(ENV_METHODS)})")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{label}: {type(obj).__name__} needs a non-empty string 'name'")
    env: Environment = obj
    return env


def _has_methods(obj: object) -> bool:
    return all(callable(getattr(obj, m, None)) for m in ENV_METHODS)


def checked_reward(env: Environment, value: object) -> float | None:
    """A reward as the interface promises it (None, or a number in [0, 1]); a
    reward outside that is the environment's bug, reported as a usage error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"environment {env.name}: reward must be None or a number in "
                          f"[0, 1], got {value!r}")
    return float(value)


@dataclass(slots=True)
class EnvSpace:
    """Search over the actions of an environment (a SearchSpace; see the module doc)."""

    env: Environment
    policy: EnvPolicy
    max_depth: int = 20
    name: str = "env"
    _states: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def for_context(cls, ctx: TaskContext, env: Environment, *, max_depth: int = 20,
                    role: str = "env_policy") -> EnvSpace:
        return cls(env, ctx.roles.make(EnvPolicy, role), max_depth)

    def plan(self, ctx: TaskContext, node: NodeRecord) -> list[str]:
        """The actions root→node (the root itself holds the task, not an action)."""
        out: list[str] = []
        cur: NodeRecord | None = node
        while cur is not None and cur.parent_id is not None:
            out.append(cur.text)
            cur = ctx.tree.nodes.get(cur.parent_id)
        return out[::-1]

    def state(self, ctx: TaskContext, node: NodeRecord) -> Any:
        """The node's state: its actions replayed from the task's initial state.

        Each replayed action is checked against the legal actions of the state it
        is applied to, so a tree grown with a different environment fails loudly
        instead of searching from wrong states.
        """
        chain: list[NodeRecord] = []
        cur = node
        while cur.id not in self._states:
            if cur.parent_id is None:
                self._states[cur.id] = self.env.initial_state(ctx.task)
                break
            chain.append(cur)
            cur = ctx.tree.nodes[cur.parent_id]
        state = self._states[cur.id]
        for n in reversed(chain):
            if n.text not in self.env.actions(state):
                raise ConfigError(f"environment {self.env.name}: the action {n.text!r} of node "
                                  f"{n.id} is not legal in its parent's state (was the tree "
                                  "grown with another environment?)")
            state = self.env.apply(state, n.text)
            self._states[n.id] = state
        return state

    def is_terminal(self, ctx: TaskContext, node: NodeRecord) -> bool:
        if node.parent_id is None:
            return False
        return bool(self.env.is_terminal(self.state(ctx, node)))

    def can_expand(self, ctx: TaskContext, node: NodeRecord) -> bool:
        if node.depth >= self.max_depth or self.is_terminal(ctx, node):
            return False
        return len(self.env.actions(self.state(ctx, node))) > 0

    def candidate(self, ctx: TaskContext, node: NodeRecord) -> str:
        """The plan: the actions root→node, one per line."""
        return PLAN_JOINER.join(self.plan(ctx, node))

    def reward(self, ctx: TaskContext, node: NodeRecord) -> float | None:
        return checked_reward(self.env, self.env.reward(self.state(ctx, node)))

    async def expand(self, ctx: TaskContext, node: NodeRecord, k: int, *,
                     feedback: Feedback | None = None, key: object = 0) -> list[NodeRecord]:
        """Up to ``k`` children, one action each; [] when the node cannot grow, every
        legal action is already a child, or the budget stops the policy."""
        if k < 1 or not self.can_expand(ctx, node):
            return []
        state = self.state(ctx, node)
        legal = list(self.env.actions(state))
        taken = {kid.text for kid in ctx.tree.kids(node)}
        options = [i for i, a in enumerate(legal) if a not in taken]
        if not options:
            return []
        history = self.plan(ctx, node)
        role, call_id, fallback = "env", None, False
        if len(options) <= k:
            picks = options
            priors = [1.0 / len(options)] * len(options)
        else:
            fb = feedback or Feedback()
            try:
                res = await self.policy.choose(
                    ctx.task, self.env.render(state), [legal[i] for i in options], k,
                    history=history, tried=[a for a in legal if a in taken],
                    advice=fb.advice, siblings=fb.siblings, node_id=node.id,
                    sample=key if isinstance(key, int) else 0)
            except BudgetExceeded:
                return []
            source = f"model:{self.policy.model.model_id}"
            meta: dict[str, Any] = {"call_ids": res.call_ids, "options": len(options)}
            if res.repaired:
                meta["repaired"] = True
            call_id = res.call_ids[-1] if res.call_ids else None
            if res.value is None:
                ctx.tree.judge(node, source=source, role="env_policy", key=key,
                               verdict="parse_failure", critique=res.error,
                               meta={**meta, "raw": res.raw})
                picks = ctx.rng("env_fallback", node.id, key).sample(options, k)
                priors = [1.0 / k] * k
                fallback = True
            else:
                picks = [options[a - 1] for a in res.value.actions]
                priors = choice_prior(k)
                role = "env_policy"
                ctx.tree.judge(node, source=source, role="env_policy", key=key,
                               critique=res.value.reason,
                               meta={**meta, "choice": [legal[i] for i in picks]})
        out = []
        for index, prior in zip(picks, priors, strict=True):
            action = legal[index]
            after = self.env.apply(state, action)
            terminal = bool(self.env.is_terminal(after))
            kid_meta: dict[str, Any] = {"action_index": index, "prior": prior,
                                        "terminal": terminal}
            r = checked_reward(self.env, self.env.reward(after))
            if r is not None:
                kid_meta["env_reward"] = r
            if fallback:
                kid_meta["fallback"] = True
            kid = ctx.tree.add(
                node, role=role, operator="act", key=(key, index), text=action,
                answer=PLAN_JOINER.join([*history, action]) if terminal else None,
                call_id=call_id if role == "env_policy" else None, meta=kid_meta)
            self._states[kid.id] = after
            out.append(kid)
        return out


@dataclass(slots=True)
class EnvReward:
    """The environment's reward as the search's value (a ValueFunction for EnvSpace).

    Recorded as an ``env_reward`` judgement (source ``env:<name>``, scale 0..1).
    Its verdict: a terminal state is ``correct`` at reward 1 and ``incorrect``
    below; a dead end (no legal action, not terminal) is ``incorrect``; any other
    state has no verdict (a plan in progress is neither right nor wrong yet). A
    state whose reward is unknown (None) gets no value and no judgement, so in a
    mix (``value=mix``) the other part decides alone.
    """

    name: str = "env"

    async def evaluate(self, ctx: TaskContext, space: SearchSpace,
                       node: NodeRecord) -> Valuation | None:
        if not isinstance(space, EnvSpace):
            raise ConfigError(f"the environment's reward values only the env space, "
                              f"not {space.name!r}")
        r = space.reward(ctx, node)
        if r is None:
            return None
        terminal = space.is_terminal(ctx, node)
        dead_end = not terminal and not space.env.actions(space.state(ctx, node))
        advice = ""
        if terminal:
            verdict: str | None = "correct" if r >= 1.0 else "incorrect"
            words = f"finished with reward {r:g}"
            if r < 1.0:
                advice = f"The plan ending with {node.text!r} finishes short of the goal."
        elif dead_end:
            verdict, words = "incorrect", f"dead end (no legal action) at reward {r:g}"
            advice = f"{node.text!r} leads to a dead end; take another action there."
        else:
            verdict, words = None, f"reward {r:g} so far"
        j = ctx.tree.judge(node, source=f"env:{space.env.name}", role="env_reward", score=r,
                           scale=(0.0, 1.0), verdict=verdict, critique=words,
                           meta={"terminal": terminal, "dead_end": dead_end})
        return Valuation(r, words, advice, j.id)
