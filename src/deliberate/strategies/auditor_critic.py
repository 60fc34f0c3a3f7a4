"""Auditor, then critic (GPTLens): generate findings freely, then filter them harshly.

``n`` auditors (``n`` samples of one request) each return their ``top_k`` most severe
findings as JSON; identical findings (same function and same normalised type) are
merged; **one** critic call scores every remaining finding for correctness, severity
and profitability on 0–9 with a criticism, matched **by identifier** (``F1`` …);
a ranker scores each finding

    score = w_correctness·correctness + w_severity·severity + w_profitability·profitability

(default 0.5 / 0.25 / 0.25), sorts by it (ties keep the auditors' order) and drops
findings scoring below ``threshold`` (default 5: "not a vulnerability"). The answer
is the JSON list of kept findings in rank order, so a detection verifier grades it.

The tree: each auditor's reply is a generator node under the root; each of its
findings a child (operator ``finding``, ``meta["duplicate_of"]`` on merged ones); each
critic judgement a judgement on its finding (role ``critic``, the ranker score on a
0–9 scale, the three scores and the id in ``meta``); the ranked list a node under the
root (role ``ranker``, operator ``rank``).

``preset="smart-contract"`` fills in GPTLens's settings wherever the run does not
set them: auditor temperature 0.7, ``top_k`` 3, critic temperature 0, weights
0.5/0.25/0.25, threshold 5, source shown with comments stripped and whitespace
collapsed. Temperatures otherwise come from the roles' configs
(``RunConfig.roles["auditor"]``, else the generator's; ``RunConfig.critic``); a
``auditor_temperature``/``critic_temperature`` given here (or by the preset)
overrides them in every request the role builds.

Where this differs from the original, deliberately:

- scores are matched to findings by identifier, not list position, and replies are
  parsed robustly with one repair request (the original's two known pitfalls);
- identical findings from several auditors are judged once, not once per auditor;
- a finding the critic leaves unscored even after the repair request is dropped and
  recorded as a parse failure (never given a default score); if the critic scores
  nothing at all (unreadable twice, or the budget ran out), the merged findings are
  returned unranked as the best so far, and the result's note says so;
- whitespace collapsing keeps line breaks, so line numbers an auditor cites still
  point into the original source;
- ``n`` defaults to 2 (the paper used 1 or 2 auditors) and the preset keeps it.

The strategy is generic: any task whose answers are lists of findings (bugs in code,
unsupported claims in a text) works; only the templates speak of vulnerabilities.
``critic=False`` returns the merged auditor findings unfiltered (auditor alone, for
comparison).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from deliberate.engine.context import TaskContext
from deliberate.errors import BudgetExceeded
from deliberate.models.base import Completion
from deliberate.roles.auditor import (
    SCORE_SCALE,
    Auditor,
    AuditReading,
    CriticReading,
    Finding,
    FindingCritic,
    FindingScore,
    finding_ids,
)
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.tree import NodeRecord
from deliberate.verifiers.base import parse_answer
from deliberate.verifiers.detection import normalise_category, normalise_function

SMART_CONTRACT_PRESET: dict[str, Any] = {
    "auditor_temperature": 0.7,
    "top_k": 3,
    "critic_temperature": 0.0,
    "w_correctness": 0.5,
    "w_severity": 0.25,
    "w_profitability": 0.25,
    "threshold": 5.0,
    "strip_comments": True,
}
"""GPTLens's settings (METHODS.md §1), applied by ``preset="smart-contract"``."""


class AuditorCriticConfig(StrategyConfig):
    preset: Literal["smart-contract"] | None = Field(
        None, description="'smart-contract': GPTLens's settings for every field not given")
    n: int = Field(2, ge=1, le=64, description="auditors (samples of one request)")
    top_k: int = Field(3, ge=1, le=50, description="findings each auditor returns")
    critic: bool = Field(True, description="score and filter findings with the critic")
    w_correctness: float = Field(0.5, ge=0, description="ranker weight of correctness")
    w_severity: float = Field(0.25, ge=0, description="ranker weight of severity")
    w_profitability: float = Field(0.25, ge=0, description="ranker weight of profitability")
    threshold: float = Field(5.0, description="findings scoring below this are dropped")
    auditor_temperature: float | None = Field(
        None, ge=0, le=2, description="overrides the auditor role's temperature")
    critic_temperature: float | None = Field(
        None, ge=0, le=2, description="overrides the critic role's temperature")
    strip_comments: bool = Field(
        False, description="show the source without comments, whitespace collapsed")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("preset"), str):
            preset = data["preset"].strip().lower().replace("_", "-")
            data = {**data, "preset": preset}
            if preset == "smart-contract":
                data = {**SMART_CONTRACT_PRESET, **data}
        return data

    @property
    def weights(self) -> tuple[float, float, float]:
        return (self.w_correctness, self.w_severity, self.w_profitability)


def rank_score(score: FindingScore, weights: tuple[float, float, float]) -> float:
    """The ranker's combination of the critic's three scores (same 0–9 scale)."""
    wc, ws, wp = weights
    return wc * score.correctness + ws * score.severity + wp * score.profitability


@dataclass(slots=True)
class Ranking:
    """Kept (id, score) in rank order, dropped (id, score) below threshold, unscored ids."""

    kept: list[tuple[str, float]] = field(default_factory=list)
    dropped: list[tuple[str, float]] = field(default_factory=list)
    unscored: list[str] = field(default_factory=list)


def rank_findings(scores: Sequence[tuple[str, FindingScore | None]],
                  weights: tuple[float, float, float], threshold: float) -> Ranking:
    """Sort by ranker score, highest first, ties in the given order; drop below threshold.

    A finding exactly at the threshold is kept ("below 5 is not a vulnerability").
    """
    out = Ranking()
    scored: list[tuple[str, float]] = []
    for fid, s in scores:
        if s is None:
            out.unscored.append(fid)
        else:
            scored.append((fid, rank_score(s, weights)))
    scored.sort(key=lambda x: -x[1])  # stable: ties keep the auditors' order
    for fid, value in scored:
        (out.kept if value >= threshold else out.dropped).append((fid, value))
    return out


def finding_key(f: Finding) -> tuple[tuple[str, ...], str]:
    """What makes two findings the same: function(s) and normalised vulnerability type."""
    category = normalise_category(f.vulnerability) or " ".join(f.vulnerability.lower().split())
    return tuple(sorted(normalise_function(f.function_name))), category


def findings_text(items: Sequence[dict[str, Any]]) -> str:
    """A JSON list, one finding per line."""
    if not items:
        return "[]"
    return "[\n" + ",\n".join("  " + json.dumps(x) for x in items) + "\n]"


@dataclass(slots=True)
class _Unique:
    fid: str
    node: NodeRecord
    finding: Finding


class AuditorCritic(Strategy):
    name: ClassVar[str] = "auditor_critic"
    Config: ClassVar[type[StrategyConfig]] = AuditorCriticConfig

    async def run(self, ctx: TaskContext) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, AuditorCriticConfig)
        task, tree = ctx.task, ctx.tree
        auditor = ctx.roles.make(Auditor, "auditor", top_k=cfg.top_k,
                                 strip_comments=cfg.strip_comments,
                                 temperature=cfg.auditor_temperature)
        try:
            resp = await auditor.audit(task, cfg.n, node_id=tree.root.id)
        except BudgetExceeded:
            return StrategyResult(None, "no audit: budget exhausted before the auditors ran")
        samples = sorted(resp.completions, key=lambda c: c.sample_index)

        async def read(c: Completion) -> AuditReading | None:
            try:
                return await auditor.read(task, c.text, sample=c.sample_index)
            except BudgetExceeded:
                return None

        readings = await asyncio.gather(*(read(c) for c in samples))
        call_id = resp.call_ids[0] if resp.call_ids else None
        source = f"model:{auditor.model.model_id}"
        unique: list[_Unique] = []
        seen: dict[tuple[tuple[str, ...], str], NodeRecord] = {}
        for c, reading in zip(samples, readings, strict=True):
            text = reading.raw if reading is not None and reading.findings is not None else c.text
            meta: dict[str, Any] = {"auditor": c.sample_index}
            if reading is not None and reading.repaired:
                meta["first_reply"] = c.text
                meta["repair_call_ids"] = reading.call_ids
            node = tree.add(tree.root, role="generator", operator="generate", key=c.sample_index,
                            text=text, answer=parse_answer(task, text), call_id=call_id,
                            sample_index=c.sample_index, meta=meta)
            if reading is None or reading.findings is None:
                why = reading.error if reading is not None else (
                    "unreadable, and the budget ended before a repair request")
                tree.judge(node, source=source, role="auditor", verdict="parse_failure",
                           critique=why, meta={"raw": reading.raw if reading else c.text})
                continue
            for j, f in enumerate(reading.findings):
                fnode = tree.add(node, role="auditor", operator="finding", key=j,
                                 text=json.dumps(f.as_dict()),
                                 meta={"finding": f.as_dict(), "rank_in_audit": j + 1,
                                       "category": normalise_category(f.vulnerability)})
                key = finding_key(f)
                if key in seen:
                    fnode.meta["duplicate_of"] = seen[key].id
                    tree.update(fnode)
                    continue
                seen[key] = fnode
                unique.append(_Unique("", fnode, f))
        if not any(r is not None and r.findings is not None for r in readings):
            return self._final(ctx, [], {"unreadable": True},
                               "no auditor reply could be read; answered with no findings")
        ids = finding_ids(len(unique))
        for u, fid in zip(unique, ids, strict=True):
            u.fid = fid
            u.node.meta["id"] = fid
            tree.update(u.node)
        if not unique:
            return self._final(ctx, [], {}, "the auditors reported no findings")
        if not cfg.critic:
            return self._final(ctx, [u.finding.as_dict() for u in unique], {"critic": False},
                               f"auditors only: {len(unique)} findings, unfiltered")

        critic = ctx.roles.make(FindingCritic, "critic", strip_comments=cfg.strip_comments,
                                temperature=cfg.critic_temperature)
        try:
            reading_c: CriticReading | None = await critic.judge_findings(
                task, {u.fid: u.finding for u in unique}, node_id=tree.root.id)
        except BudgetExceeded:
            reading_c = None
        if reading_c is None or not reading_c.scores:
            why = ("the budget ended before the critic ran" if reading_c is None
                   else "the critic's reply could not be read")
            meta = {"critic": "unavailable"}
            if reading_c is not None:
                self._record_unscored(ctx, critic, unique, reading_c)
                meta["critic_raw"] = reading_c.raw
            return self._final(ctx, [u.finding.as_dict() for u in unique], meta,
                               f"{why}; returned {len(unique)} findings unranked")
        return self._rank(ctx, critic, unique, reading_c)

    def _rank(self, ctx: TaskContext, critic: FindingCritic, unique: list[_Unique],
              reading: CriticReading) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, AuditorCriticConfig)
        source = f"model:{critic.model.model_id}"
        for u in unique:
            s = reading.scores.get(u.fid)
            if s is None:
                continue
            value = rank_score(s, cfg.weights)
            scores = {"correctness": s.correctness, "severity": s.severity,
                      "profitability": s.profitability}
            ctx.tree.judge(u.node, source=source, role="critic", score=value, scale=SCORE_SCALE,
                           verdict="correct" if value >= cfg.threshold else "incorrect",
                           critique=s.criticism,
                           meta={"id": u.fid, **scores, "call_ids": reading.call_ids,
                                 **({"repaired": True} if reading.repaired else {})})
            u.node.meta.update(scores=scores, rank_score=value)
            u.node.value = value / SCORE_SCALE[1]
            ctx.tree.update(u.node)
        self._record_unscored(ctx, critic, unique, reading)
        ranking = rank_findings([(u.fid, reading.scores.get(u.fid)) for u in unique],
                                cfg.weights, cfg.threshold)
        by_id = {u.fid: u for u in unique}
        kept = [{**by_id[fid].finding.as_dict(), "score": round(v, 4)} for fid, v in ranking.kept]
        meta: dict[str, Any] = {
            "ranking": [{"id": fid, "node": by_id[fid].node.id, "score": v}
                        for fid, v in ranking.kept],
            "dropped": [{"id": fid, "node": by_id[fid].node.id, "score": v}
                        for fid, v in ranking.dropped],
            "unscored": ranking.unscored,
            "weights": list(cfg.weights), "threshold": cfg.threshold,
            "critic_call_ids": reading.call_ids,
        }
        note = f"{len(ranking.kept)} of {len(unique)} findings kept (threshold {cfg.threshold:g})"
        if ranking.unscored:
            note += f"; {len(ranking.unscored)} left unscored by the critic and dropped"
        return self._final(ctx, kept, meta, note)

    @staticmethod
    def _record_unscored(ctx: TaskContext, critic: FindingCritic, unique: list[_Unique],
                         reading: CriticReading) -> None:
        source = f"model:{critic.model.model_id}"
        for u in unique:
            if u.fid in reading.problems and u.fid not in reading.scores:
                ctx.tree.judge(u.node, source=source, role="critic", verdict="parse_failure",
                               critique=f"no valid scores for {u.fid}: {reading.problems[u.fid]}",
                               scale=SCORE_SCALE, meta={"id": u.fid,
                                                        "call_ids": reading.call_ids})

    @staticmethod
    def _final(ctx: TaskContext, items: list[dict[str, Any]], meta: dict[str, Any],
               note: str) -> StrategyResult:
        text = findings_text(items)
        node = ctx.tree.add(ctx.tree.root, role="ranker", operator="rank", key=0, text=text,
                            answer=parse_answer(ctx.task, text), meta=meta)
        return StrategyResult(node, note)
