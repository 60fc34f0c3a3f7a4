"""Auditor and finding critic: GPTLens's two roles (METHODS.md §1).

- :class:`Auditor` (a generator for findings tasks) reads the source and returns its
  ``top_k`` most severe findings as a JSON list of ``{"function_name",
  "vulnerability", "reason", "lines"?}``. ``n`` auditors are ``n`` samples of one
  request.
- :class:`FindingCritic` judges **all** findings of a task in one call: each finding
  is shown under an identifier (``F1``, ``F2``, …) and gets ``correctness``,
  ``severity`` and ``profitability`` on 0–9 and a ``criticism``, returned as a JSON
  object keyed by identifier. Scores are matched to findings **by identifier**,
  never by list position (the original matched by position, which silently shifts
  every score when the critic skips or reorders one).

Both parse robustly (:mod:`deliberate.parsing`), ask once more showing the
problem, and then record the failure: a finding the critic did not score has no
score, never a default one.

Temperatures: each role takes its sampling settings from its ``RoleConfig``
(``RunConfig.role("auditor")``, ``RunConfig.critic``); a non-None ``temperature``
field on the role overrides the config's for every request it builds, which is how
a strategy preset pins the original settings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from deliberate.models.base import ChatRequest, ChatResponse, Message
from deliberate.parsing import (
    ParseError,
    coerce_score,
    describe_validation_error,
    json_values,
    parse_structured,
    strict_json_schema,
)
from deliberate.roles.roles import RoleBase, node_tags
from deliberate.tasks.smartbugs import strip_comments
from deliberate.tasks.task import Task

__all__ = [
    "SCORE_SCALE",
    "AuditReading",
    "Auditor",
    "CriticReading",
    "Finding",
    "FindingCritic",
    "FindingScore",
    "finding_ids",
    "parse_findings",
    "parse_scores",
]

SCORE_SCALE: tuple[float, float] = (0.0, 9.0)
"""The scale of correctness, severity and profitability (GPTLens's 0–9)."""


def _lines(value: object) -> list[int]:
    items = value if isinstance(value, list | tuple) else [value]
    out: set[int] = set()
    for item in items:
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            out.add(item)
        elif isinstance(item, float) and item.is_integer():
            out.add(int(item))
        elif isinstance(item, str):
            for a, b in re.findall(r"(\d+)(?:\s*(?:-|–|to)\s*(\d+))?", item):
                lo, hi = sorted((int(a), int(b or a)))
                out.update(range(lo, min(hi, lo + 200) + 1))
    return sorted(x for x in out if x > 0)


class Finding(BaseModel):
    """One reported finding, in the auditor's shape (other common spellings accepted)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    function_name: str = Field("", validation_alias=AliasChoices(
        "function_name", "function", "func", "method", "location"))
    vulnerability: str = Field(validation_alias=AliasChoices(
        "vulnerability", "type", "category", "vulnerability_type", "title", "issue"))
    reason: str = Field("", validation_alias=AliasChoices(
        "reason", "explanation", "description", "why", "details"))
    lines: list[int] = Field(default_factory=list, validation_alias=AliasChoices(
        "lines", "line", "line_numbers"))

    @field_validator("function_name", "reason", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        if v is None:
            return ""
        if isinstance(v, list):
            return ", ".join(str(x) for x in v)
        return v

    @field_validator("vulnerability")
    @classmethod
    def _named(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the vulnerability type is empty")
        return v.strip()

    @field_validator("lines", mode="before")
    @classmethod
    def _line_numbers(cls, v: object) -> list[int]:
        return _lines(v)

    def as_dict(self) -> dict[str, Any]:
        """The auditor's JSON shape (``lines`` only when given)."""
        out: dict[str, Any] = {"function_name": self.function_name,
                               "vulnerability": self.vulnerability, "reason": self.reason}
        if self.lines:
            out["lines"] = list(self.lines)
        return out


class _FindingList(BaseModel):
    """An object holding the list (``{"findings": [...]}``, GPTLens's ``output_list``)."""

    model_config = ConfigDict(extra="ignore")

    findings: list[Finding] = Field(validation_alias=AliasChoices(
        "findings", "vulnerabilities", "output_list", "results"))


class _FindingOut(BaseModel):
    function_name: str
    vulnerability: str
    reason: str
    lines: list[int]


class _AuditOut(BaseModel):
    findings: list[_FindingOut]


def parse_findings(text: str, top_k: int | None = None) -> list[Finding]:
    """The findings in an auditor's reply, at most ``top_k`` (the first ones).

    A bare list, or an object holding one. Raises :class:`ParseError` naming the
    problem when neither fits.
    """
    try:
        found = parse_structured(text, list[Finding])
    except ParseError as as_list:
        try:
            found = parse_structured(text, _FindingList).findings
        except ParseError:
            raise as_list from None
    return found[:top_k] if top_k is not None else found


class FindingScore(BaseModel):
    """The critic's judgement of one finding."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    criticism: str = Field("", validation_alias=AliasChoices(
        "criticism", "critique", "comment", "reason"))
    correctness: float
    severity: float
    profitability: float

    @field_validator("criticism", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        return "" if v is None else v

    @field_validator("correctness", "severity", "profitability", mode="before")
    @classmethod
    def _score(cls, v: object) -> float:
        try:
            value = coerce_score(v, SCORE_SCALE)
        except ParseError as exc:
            raise ValueError(str(exc)) from exc
        lo, hi = SCORE_SCALE
        if not lo <= value <= hi:
            raise ValueError(f"{value:g} is outside {lo:g}..{hi:g}")
        return value


class _ScoreOut(BaseModel):
    criticism: str
    correctness: int
    severity: int
    profitability: int


_ID = re.compile(r"\bF\s*(\d+)\b", re.IGNORECASE)


def finding_ids(k: int) -> list[str]:
    """``F1`` … ``Fk``: identifiers a critic sees instead of list positions."""
    return [f"F{i}" for i in range(1, k + 1)]


def _canonical_id(key: object) -> str | None:
    if not isinstance(key, str):
        return None
    m = _ID.fullmatch(key.strip().strip("[]()#:"))
    return f"F{int(m.group(1))}" if m else None


def _by_id(value: Any) -> dict[str, Any] | None:
    """Scores keyed by identifier, from ``{"F1": {...}}``, ``{"findings": {...}}`` or a
    list of objects each with an ``id``."""
    if isinstance(value, dict):
        for key in ("findings", "scores", "judgements", "results"):
            if isinstance(value.get(key), dict | list):
                inner = _by_id(value[key])
                if inner:
                    return inner
        keyed = {cid: v for k, v in value.items() if (cid := _canonical_id(k)) is not None}
        return keyed or None
    if isinstance(value, list):
        out: dict[str, Any] = {}
        for item in value:
            if isinstance(item, dict):
                cid = _canonical_id(item.get("id") or item.get("identifier"))
                if cid is not None and cid not in out:
                    out[cid] = item
        return out or None
    return None


def parse_scores(text: str, ids: Sequence[str]) -> tuple[dict[str, FindingScore], dict[str, str]]:
    """(scores by id, problem by id) for the identifiers asked about.

    Scores are read by identifier; ids the reply does not mention, or whose entry does
    not validate, are problems. Raises :class:`ParseError` when the reply holds no
    object keyed by identifiers at all.
    """
    keyed: dict[str, Any] | None = None
    for value in json_values(text or ""):
        keyed = _by_id(value)
        if keyed:
            break
    if not keyed:
        if not (text or "").strip():
            raise ParseError("the reply was empty; expected a JSON object keyed by "
                             "finding identifier")
        raise ParseError("the reply holds no JSON object keyed by finding identifier "
                         f"({', '.join(ids)})")
    scores: dict[str, FindingScore] = {}
    problems: dict[str, str] = {}
    for fid in ids:
        if fid not in keyed:
            problems[fid] = "missing"
            continue
        entry = keyed[fid]
        if not isinstance(entry, dict):
            problems[fid] = "not an object"
            continue
        try:
            scores[fid] = FindingScore.model_validate(entry)
        except ValidationError as exc:
            problems[fid] = describe_validation_error(exc)
    return scores, problems


# ---------------------------------------------------------------------------------
# Roles


def _pinned(request: ChatRequest, temperature: float | None) -> ChatRequest:
    return request if temperature is None else replace(request, temperature=temperature)


@dataclass(slots=True)
class AuditReading:
    """One auditor sample read: its findings, or a recorded failure (``findings`` None)."""

    findings: list[Finding] | None
    raw: str
    error: str | None = None
    call_ids: list[str] = field(default_factory=list)
    repaired: bool = False


@dataclass(frozen=True, slots=True)
class Auditor(RoleBase):
    """Returns the ``top_k`` most severe findings of a task's source as JSON.

    ``strip_comments`` shows the source as GPTLens did (comments removed, whitespace
    collapsed, line breaks kept so line numbers still hold); ``temperature``, when
    set, overrides the role config's.
    """

    top_k: int = 3
    strip_comments: bool = False
    temperature: float | None = None

    def source(self, task: Task) -> str:
        return strip_comments(task.prompt) if self.strip_comments else task.prompt

    def messages(self, task: Task) -> tuple[Message, ...]:
        ctx = {"task": task, "source": self.source(task), "top_k": self.top_k}
        return self.chat("auditor", **ctx)

    def _request(self, messages: tuple[Message, ...], *, n: int = 1, offset: int = 0,
                 tags: dict[str, str]) -> ChatRequest:
        fmt = None
        if self.model.profile.supports_json_schema:
            fmt = {"type": "json_schema", "json_schema": {
                "name": "findings", "schema": strict_json_schema(_AuditOut), "strict": True}}
        req = RoleBase.request(self, messages, n=n, offset=offset, tags=tags,
                               response_format=fmt)
        return _pinned(req, self.temperature)

    async def audit(self, task: Task, n: int, *, offset: int = 0,
                    node_id: str | None = None) -> ChatResponse:
        """``n`` auditors as ``n`` samples of one request."""
        tags = node_tags("auditor", node_id)
        return await self.model.complete(
            self._request(self.messages(task), n=n, offset=offset, tags=tags))

    async def read(self, task: Task, text: str, *, sample: int = 0,
                   node_id: str | None = None) -> AuditReading:
        """Parse one sample; on failure ask once more with the error, then record it."""
        try:
            return AuditReading(parse_findings(text, self.top_k), text)
        except ParseError as first:
            tags = {**node_tags("auditor", node_id), "repair": "1"}
            repair = (
                *self.messages(task),
                Message("assistant", text),
                Message("user", f"Your reply could not be read: {first}. Reply again with only "
                                f"the JSON list of at most {self.top_k} findings, each an object "
                                'with "function_name", "vulnerability" and "reason".'),
            )
            resp = await self.model.complete(self._request(repair, offset=sample, tags=tags))
            text2 = resp.texts[0] if resp.completions else ""
            try:
                return AuditReading(parse_findings(text2, self.top_k), text2,
                                    call_ids=list(resp.call_ids), repaired=True)
            except ParseError as second:
                return AuditReading(None, text2, error=str(second),
                                    call_ids=list(resp.call_ids), repaired=True)


@dataclass(slots=True)
class CriticReading:
    """The critic's scores by finding id; ``problems`` are ids left unscored (and why)."""

    scores: dict[str, FindingScore]
    problems: dict[str, str]
    raw: str
    call_ids: list[str] = field(default_factory=list)
    repaired: bool = False


@dataclass(frozen=True, slots=True)
class FindingCritic(RoleBase):
    """Judges every finding of one task in one call, harshly, keyed by identifier."""

    strip_comments: bool = False
    temperature: float | None = None

    def messages(self, task: Task, findings: Mapping[str, Finding]) -> tuple[Message, ...]:
        shown = [{"id": fid, **f.as_dict()} for fid, f in findings.items()]
        ctx = {
            "task": task,
            "source": strip_comments(task.prompt) if self.strip_comments else task.prompt,
            "findings_json": "[\n" + ",\n".join("  " + json.dumps(x) for x in shown) + "\n]",
            "ids": list(findings),
            "scale_min": f"{SCORE_SCALE[0]:g}",
            "scale_max": f"{SCORE_SCALE[1]:g}",
        }
        return self.chat("finding_critic", **ctx)

    def _request(self, messages: tuple[Message, ...], ids: Sequence[str],
                 tags: dict[str, str]) -> ChatRequest:
        fmt = None
        if self.model.profile.supports_json_schema:
            one = strict_json_schema(_ScoreOut)
            fmt = {"type": "json_schema", "json_schema": {"name": "finding_scores", "strict": True,
                   "schema": {"type": "object", "properties": {i: one for i in ids},
                              "required": list(ids), "additionalProperties": False}}}
        return _pinned(RoleBase.request(self, messages, tags=tags, response_format=fmt),
                       self.temperature)

    async def judge_findings(self, task: Task, findings: Mapping[str, Finding], *,
                             node_id: str | None = None) -> CriticReading:
        """Scores for ``findings`` (id → finding), with one repair request for any id the
        reply left out or got wrong; what is still missing after it stays unscored."""
        ids = list(findings)
        tags = node_tags("critic", node_id)
        messages = self.messages(task, findings)
        resp = await self.model.complete(self._request(messages, ids, tags))
        text = resp.texts[0] if resp.completions else ""
        call_ids = list(resp.call_ids)
        try:
            scores, problems = parse_scores(text, ids)
            complaint = "it did not give valid scores for " + "; ".join(
                f"{i} ({why})" for i, why in problems.items())
        except ParseError as exc:
            scores, problems = {}, dict.fromkeys(ids, str(exc))
            complaint = str(exc)
        if not problems:
            return CriticReading(scores, {}, text, call_ids)
        again = list(problems)
        repair = (
            *messages,
            Message("assistant", text),
            Message("user", f"Your reply could not be fully read: {complaint}. Reply again with "
                            f"only a JSON object keyed by identifier for {', '.join(again)}, each "
                            'with "criticism", "correctness", "severity" and "profitability" '
                            f"from {SCORE_SCALE[0]:g} to {SCORE_SCALE[1]:g}."),
        )
        resp2 = await self.model.complete(self._request(repair, again, {**tags, "repair": "1"}))
        text2 = resp2.texts[0] if resp2.completions else ""
        call_ids += resp2.call_ids
        try:
            more, still = parse_scores(text2, again)
        except ParseError as exc:
            more, still = {}, dict.fromkeys(again, str(exc))
        scores.update(more)
        return CriticReading(scores, still, text + "\n\n" + text2, call_ids, repaired=True)
