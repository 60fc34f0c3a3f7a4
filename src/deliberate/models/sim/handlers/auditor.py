"""The sim as GPTLens's auditor: the most severe findings of a contract, as JSON.

Matches the ``<audit>`` block of the auditor's template. For a task with labelled
findings (``metadata["findings"]``) a sample is right with the sim's ``p_correct``
(skill against the task's difficulty) and then reports every labelled finding, in
natural words ("Integer overflow", "Unchecked send return value") with the function
that holds it; otherwise it misses some and reports invented ones, in one of the
task's recurring wrong ways (``SimModel.mode``). Either way each slot left up to the
``top_k`` the prompt asks for is filled with an invented finding with probability
:data:`PAD_RATE`: asked for three, an auditor tends to name three, which is why
GPTLens's auditors alone have many false positives.

An invented finding names a real function of the contract and a category that does
not match any label there (under the detection matching rule), so it is a false
positive by construction. The source may reach the sim with comments stripped
(GPTLens's preprocessing), which hides the task's prompt from the sim's usual
lookup; :func:`audited_task` then finds the task by comparing stripped sources.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping
from typing import Any

from deliberate.models._matching import normalise_text
from deliberate.models.sim.core import HandlerContext
from deliberate.tasks.smartbugs import SourceFunction, solidity_functions, strip_comments
from deliberate.tasks.task import Task
from deliberate.verifiers.detection import Label, finding_matches, labels_of, prediction_of

PAD_RATE = 0.6
"""P(an auditor fills a free slot of its top-k with an invented finding)."""

LINES_RATE = 0.5
"""P(an auditor cites line numbers for a finding)."""

NATURAL_NAMES: Mapping[str, tuple[str, ...]] = {
    "reentrancy": ("Reentrancy", "Re-entrancy attack", "Reentrancy vulnerability"),
    "access_control": ("Missing access control", "Access control", "Unprotected function"),
    "arithmetic": ("Integer overflow", "Integer underflow", "Arithmetic overflow"),
    "unchecked_low_level_calls": ("Unchecked low-level call", "Unchecked send return value",
                                  "Unchecked call return value"),
    "denial_of_service": ("Denial of service", "DoS with block gas limit",
                          "Denial of service by failed call"),
    "bad_randomness": ("Predictable randomness", "Bad randomness", "Weak source of randomness"),
    "front_running": ("Front-running", "Transaction order dependence"),
    "time_manipulation": ("Timestamp dependence", "Block timestamp manipulation"),
    "short_addresses": ("Short address attack",),
    "other": ("Uninitialized storage pointer",),
}

_REASONS: Mapping[str, str] = {
    "reentrancy": "{fn} sends ether with an external call before it updates the balance, "
                  "so the callee can call back into {fn} and withdraw again.",
    "access_control": "{fn} changes critical state without checking who calls it, so any "
                      "account can take it over.",
    "arithmetic": "The arithmetic in {fn} is unchecked, so a large value wraps around and "
                  "corrupts the balance.",
    "unchecked_low_level_calls": "{fn} ignores the boolean returned by a low-level call, so a "
                                 "failed transfer goes unnoticed and the state is wrong.",
    "denial_of_service": "{fn} can be made to revert or run out of gas for everyone, locking "
                         "the contract.",
    "bad_randomness": "{fn} derives its random number from block data a miner or caller can "
                      "predict, so the outcome can be chosen.",
    "front_running": "The outcome of {fn} depends on transaction order, so an observer can "
                     "submit a competing transaction first.",
    "time_manipulation": "{fn} relies on block.timestamp, which a miner can shift to its "
                         "advantage.",
    "short_addresses": "{fn} does not check the length of its input, so a short address "
                       "shifts the amount.",
    "other": "{fn} writes through an uninitialized storage pointer and overwrites state.",
}

_INVENTED = ("reentrancy", "arithmetic", "access_control", "unchecked_low_level_calls",
             "denial_of_service", "time_manipulation", "front_running", "bad_randomness")
_TOP_K = re.compile(r"\b(?:the|top)\s+(\d+)\s+most severe", re.IGNORECASE)


def block(text: str, tag: str) -> str | None:
    """The contents of ``<tag>…</tag>`` (first opening to last closing)."""
    start = text.find(f"<{tag}>")
    end = text.rfind(f"</{tag}>")
    if start < 0 or end < start:
        return None
    return text[start + len(tag) + 2 : end].strip("\n")


def audited_task(ctx: HandlerContext, tag: str) -> Task | None:
    """The task the prompt is about: the sim's own lookup, else by stripped source."""
    if ctx.task is not None:
        return ctx.task
    shown = block(ctx.parsed.text, tag)
    if not shown:
        return None
    target = normalise_text(strip_comments(shown))
    for task in ctx.sim.suite:
        if normalise_text(strip_comments(task.prompt)) == target:
            return task
    return None


def stable_rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _function_of(label: Mapping[str, Any], functions: list[SourceFunction]) -> str:
    if label.get("function"):
        return str(label["function"])
    lines = label.get("lines") or []
    for f in functions:
        if any(f.start <= int(x) <= f.end for x in lines):
            return f.name
    return ""


def _reported(category: str, fn: str, lines: list[int], rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {
        "function_name": fn,
        "vulnerability": rng.choice(NATURAL_NAMES.get(category, (category,))),
        "reason": _REASONS.get(category, "{fn} is exploitable.").format(fn=fn or "The contract"),
    }
    if lines and (not fn or rng.random() < LINES_RATE):
        out["lines"] = lines
    return out


def invented_finding(functions: list[SourceFunction], labels: list[Label],
                     rng: random.Random) -> dict[str, Any] | None:
    """A plausible finding that matches no label (None if none could be made)."""
    for _ in range(20):
        category = rng.choice(_INVENTED)
        if functions:
            f = rng.choice(functions)
            fn, lines = f.name, [rng.randint(f.start, f.end)]
        else:
            fn, lines = "", []
        item = _reported(category, fn, lines, rng)
        pred = prediction_of(item)
        if not any(finding_matches(pred, lab) for lab in labels):
            return item
    return None


def _respond(ctx: HandlerContext) -> str:
    text = ctx.parsed.text
    m = _TOP_K.search(text)
    top_k = int(m.group(1)) if m else 3
    task = audited_task(ctx, "audit")
    source = task.prompt if task is not None else (block(text, "audit") or "")
    functions = [f for f in solidity_functions(source) if f.name not in ("modifier",)]
    raw = task.metadata.get("findings") if task is not None else None
    raw_labels = [x for x in raw if isinstance(x, Mapping)] if isinstance(raw, list) else []
    labels = (labels_of(task) or []) if task is not None else []
    rng = ctx.draws.rng("audit")
    found: list[dict[str, Any]] = []
    if task is not None and raw_labels:
        right = ctx.draws.uniform("correct") < ctx.sim.p_correct(task)
        keep = list(raw_labels)
        invented: list[dict[str, Any]] = []
        if not right:
            # A recurring wrong way for this task: which labels it misses and what it
            # invents depend only on (seed, task, mode), as a model's blind spots do.
            wrong = stable_rng("audit-mode", ctx.sim.params.seed, task.id,
                                ctx.sim.mode(ctx.draws))
            keep = [x for x in keep if wrong.random() < 0.4]
            if len(keep) == len(raw_labels):
                keep = keep[:-1]
            for _ in range(wrong.choice((1, 1, 2))):
                extra = invented_finding(functions, labels, wrong)
                if extra is not None:
                    invented.append(extra)
        for label in keep:
            category = str(label.get("category", "other"))
            lines = sorted(int(x) for x in label.get("lines") or [])
            found.append(_reported(category, _function_of(label, functions), lines, rng))
        found += invented
    while len(found) < top_k and rng.random() < PAD_RATE:
        extra = invented_finding(functions, labels, rng)
        if extra is None or any(extra["function_name"] == f["function_name"]
                                and extra["vulnerability"] == f["vulnerability"] for f in found):
            break
        found.append(extra)
    found = found[:top_k]
    body = "[\n" + ",\n".join("  " + json.dumps(f) for f in found) + "\n]" if found else "[]"
    if rng.random() < 0.2:
        return f"```json\n{body}\n```"
    return body


class _AuditorHandler:
    name = "auditor"

    def matches(self, text: str) -> bool:
        return "<audit>" in text and "</audit>" in text

    def respond(self, ctx: HandlerContext) -> str:
        return _respond(ctx)


HANDLER = _AuditorHandler()
