"""The model-driven roles: generator, judge (a critic that also scores), refiner.

Each role owns its prompt templates, its sampling settings and the parsing of its
output. Roles do no I/O of their own beyond asking their model: the model they are
given is already wrapped with the run's budget, journal and cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationInfo, field_validator, model_validator

from deliberate.config import RoleConfig
from deliberate.models.base import ChatModel, ChatRequest, ChatResponse, Message
from deliberate.parsing import ParseError, coerce_score, json_schema_format, parse_structured
from deliberate.roles.prompts import Prompts
from deliberate.tasks.task import Task


@dataclass(frozen=True, slots=True)
class RoleBase:
    model: ChatModel
    config: RoleConfig
    prompts: Prompts
    seed: int | None = None

    def request(
        self, messages: tuple[Message, ...], *, n: int = 1, offset: int = 0,
        tags: dict[str, str] | None = None,
        response_format: Mapping[str, Any] | None = None,
    ) -> ChatRequest:
        return ChatRequest(
            messages=messages,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_tokens=self.config.max_tokens,
            seed=self.seed,
            n=n,
            sample_offset=offset,
            tags=tags or {},
            response_format=response_format,
        )


    def chat(self, template: str, **context: Any) -> tuple[Message, ...]:
        """The system and user messages of ``template`` (``<template>_system.j2`` and
        ``<template>_user.j2``), rendered with ``context``."""
        return (
            Message("system", self.prompts.render(f"{template}_system.j2", **context)),
            Message("user", self.prompts.render(f"{template}_user.j2", **context)),
        )

    def schema_format(self, name: str, model: type[BaseModel]) -> dict[str, Any] | None:
        """A JSON-schema response format for ``model`` where this role's backend honours one."""
        if self.model.profile.supports_json_schema:
            return json_schema_format(name, model)
        return None


T = TypeVar("T")


def node_tags(role: str, node_id: str | None = None) -> dict[str, str]:
    """The record tags of a call: which role asks, and for which node."""
    return {"role": role, "node": node_id} if node_id else {"role": role}


@dataclass(slots=True)
class Structured(Generic[T]):
    """A parsed reply, or a recorded parse failure (``value`` None, ``error`` set)."""

    value: T | None
    raw: str
    error: str | None = None
    call_ids: list[str] = field(default_factory=list)
    repaired: bool = False


async def ask_structured(
    role: RoleBase,
    messages: tuple[Message, ...],
    parse: Callable[[str], T],
    *,
    tags: dict[str, str],
    hint: str,
    sample: int = 0,
    response_format: Mapping[str, Any] | None = None,
) -> Structured[T]:
    """Ask ``role``'s model; on an unreadable reply ask once more, showing the error.

    The one repair request every structured role makes: a second failure comes back
    as a recorded failure, never as a default value.
    """
    request = role.request(messages, offset=sample, tags=tags, response_format=response_format)
    resp = await role.model.complete(request)
    text = resp.texts[0] if resp.completions else ""
    call_ids = list(resp.call_ids)
    try:
        return Structured(parse(text), text, call_ids=call_ids)
    except ParseError as first:
        repair = (*messages, Message("assistant", text),
                  Message("user", f"Your reply could not be read: {first}. {hint}"))
        resp2 = await role.model.complete(
            replace(request, messages=repair, tags={**tags, "repair": "1"}))
        call_ids += resp2.call_ids
        text2 = resp2.texts[0] if resp2.completions else ""
        try:
            return Structured(parse(text2), text2, call_ids=call_ids, repaired=True)
        except ParseError as second:
            return Structured(None, text2, error=str(second), call_ids=call_ids,
                              repaired=True)


class Generator(RoleBase):
    """Proposes whole candidate solutions."""

    def messages(self, task: Task) -> tuple[Message, ...]:
        return self.chat("generator", task=task)

    async def generate(self, task: Task, n: int, *, offset: int = 0,
                       node_id: str | None = None) -> ChatResponse:
        tags = node_tags("generator", node_id)
        return await self.model.complete(self.request(self.messages(task), n=n, offset=offset,
                                                      tags=tags))


class ScoredVerdict(BaseModel):
    """A verdict and a score on a declared scale: the core of every judging reply.

    Validated with ``context={"scale": (lo, hi)}`` (as :func:`parse_verdict` does),
    the score must lie on the scale and a ratio such as "7/10" must be out of ``hi``.
    """

    verdict: Literal["correct", "incorrect"]
    score: float

    @field_validator("verdict", mode="before")
    @classmethod
    def _verdict(cls, v: object) -> object:
        return v.strip().strip(".!").lower() if isinstance(v, str) else v

    @field_validator("score", mode="before")
    @classmethod
    def _score(cls, v: object, info: ValidationInfo) -> float:
        try:
            return coerce_score(v, _scale(info))
        except ParseError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _on_scale(self, info: ValidationInfo) -> ScoredVerdict:
        scale = _scale(info)
        if scale is not None and not scale[0] <= self.score <= scale[1]:
            raise ValueError(f"score {self.score:g} is outside the scale "
                             f"{scale[0]:g}..{scale[1]:g}")
        return self


class Verdict(ScoredVerdict):
    """What a judge or critic must return: a critique beside the verdict and score."""

    critique: str = ""


def _scale(info: ValidationInfo) -> tuple[float, float] | None:
    ctx = info.context
    if isinstance(ctx, Mapping) and ctx.get("scale") is not None:
        lo, hi = ctx["scale"]
        return float(lo), float(hi)
    return None


@dataclass(slots=True)
class JudgeResult:
    """A parsed verdict, or a recorded parse failure (``verdict`` None, ``error`` set)."""

    verdict: Verdict | None
    raw: str
    error: str | None = None
    call_ids: list[str] = field(default_factory=list)
    repaired: bool = False


def parse_verdict(text: str, scale: tuple[float, float]) -> Verdict:
    """The first JSON object in ``text`` that is a verdict on ``scale``; else ParseError."""
    return parse_structured(text, Verdict, context={"scale": scale})


@dataclass(frozen=True, slots=True)
class Judge(RoleBase):
    """Judges one candidate in words and a score on a declared scale.

    The critic role uses the same contract with its own templates. On unparseable
    output the judge asks once more, showing the parse error; a second failure is
    returned as a recorded parse failure, never as a default score.
    """

    scale: tuple[float, float] = (1.0, 10.0)
    template: ClassVar[str] = "judge"

    def response_format(self) -> dict[str, Any] | None:
        """The verdict's JSON schema where the model's profile says it can honour one."""
        return self.schema_format("verdict", Verdict)

    def messages(self, task: Task, candidate: str) -> tuple[Message, ...]:
        ctx = {"task": task, "candidate": candidate,
               "scale_min": _fmt(self.scale[0]), "scale_max": _fmt(self.scale[1])}
        return self.chat(self.template, **ctx)

    async def judge(self, task: Task, candidate: str, *, node_id: str | None = None,
                    sample: int = 0) -> JudgeResult:
        tags = node_tags(self.template, node_id)
        lo, hi = _fmt(self.scale[0]), _fmt(self.scale[1])
        res = await ask_structured(
            self, self.messages(task, candidate), lambda t: parse_verdict(t, self.scale),
            tags=tags, sample=sample, response_format=self.response_format(),
            hint=f"Reply again with only the JSON object, with a score from {lo} to {hi}.",
        )
        return JudgeResult(res.value, res.raw, res.error, res.call_ids, res.repaired)


@dataclass(frozen=True, slots=True)
class Critic(Judge):
    template: ClassVar[str] = "critic"


class Refiner(RoleBase):
    """Repairs a candidate given a critique."""

    def messages(self, task: Task, candidate: str, critique: str) -> tuple[Message, ...]:
        ctx = {"task": task, "candidate": candidate, "critique": critique}
        return self.chat("refiner", **ctx)

    async def refine(self, task: Task, candidate: str, critique: str, *,
                     node_id: str | None = None, sample: int = 0) -> ChatResponse:
        tags = node_tags("refiner", node_id)
        return await self.model.complete(
            self.request(self.messages(task, candidate, critique), offset=sample, tags=tags)
        )


def _fmt(x: float) -> str:
    return f"{x:g}"
