"""The sim model: a chat model of configurable skill over tasks whose answers are known.

It sees only messages, finds the task they are about, recognises the role it is
asked to play from the built-in templates, and answers the way a model of the
configured skill would: right with a probability that falls with the task's
difficulty, wrong in a few recurring ways per task, judging and repairing with
configured error rates. Every choice comes from a hash of the request and the
sample index, so the same request always gets the same answer, in any order and
at any concurrency, and runs on it are reproducible bit for bit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deliberate.errors import ConfigError, UsageError
from deliberate.models._matching import PromptIndex
from deliberate.models.base import (
    ChatRequest,
    ChatResponse,
    Completion,
    Message,
    ModelProfile,
    StreamEvent,
    TextDelta,
    Usage,
)
from deliberate.models.sim.code_mutate import describe_difference, mutate_code, same_program
from deliberate.models.sim.math_errors import (
    first_divergence,
    format_number,
    fraction_of,
    normalise_solution,
    step_results,
    wrong_math_solution,
)
from deliberate.models.sim.protocol import (
    ParsedPrompt,
    extract_code,
    extract_json,
    parse_prompt,
    parse_verdict,
)
from deliberate.models.tokens import count_tokens, token_pieces, truncate_tokens
from deliberate.models.tokens import prompt_tokens as count_prompt_tokens
from deliberate.tasks.task import FINDING_CATEGORIES, Suite, Task
from deliberate.verifiers.answer import answers_match, extract_answer

__all__ = [
    "SimModel",
    "SimParams",
    "count_tokens",
    "token_pieces",
]


class SimParams(BaseModel):
    """How good the simulated model is, and how it is seeded. See docs/sim.md."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    skill: float = Field(default=0.6, description="Ability on the task-difficulty scale [0, 1].")
    sharpness: float = Field(
        default=6.0,
        gt=0,
        description="Slope of the logistic from skill - difficulty to P(correct).",
    )
    task_noise: float = Field(
        default=0.5, ge=0, description="Std. dev. of a per-task offset added to skill - difficulty."
    )
    sensitivity: float = Field(
        default=0.8, ge=0, le=1, description="P(judge says incorrect | candidate wrong)."
    )
    specificity: float = Field(
        default=0.85, ge=0, le=1, description="P(judge says correct | candidate right)."
    )
    fix_rate: float = Field(
        default=0.6,
        ge=0,
        le=1,
        description="P(refiner repairs a wrong candidate | critique right).",
    )
    fix_rate_wrong_critique: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="P(refiner repairs a wrong candidate | critique wrong).",
    )
    break_rate: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="P(refiner breaks a right candidate | critique says incorrect).",
    )
    seed: int = Field(default=0, description="Seed of every random choice the sim makes.")
    latency_ms: float = Field(default=0.0, ge=0, description="Delay before each response, in ms.")
    name: str = Field(
        default="sim", min_length=1, description="Display name (and server model id)."
    )

    def query(self) -> str:
        """Canonical ``k=v&...`` of the non-default parameters that shape outputs.

        ``latency_ms`` is left out: it changes timing, not what the model says, so it
        must not split caches.
        """
        items: list[tuple[str, str]] = []
        for key, info in type(self).model_fields.items():
            value = getattr(self, key)
            if key == "latency_ms" or value == info.default:
                continue
            items.append((key, repr(value) if isinstance(value, float) else str(value)))
        return urlencode(sorted(items))

    @classmethod
    def from_query(cls, query: str) -> SimParams:
        """Parse ``skill=0.8&seed=3`` (the part after ``?`` of a ``sim:`` model string)."""
        try:
            return cls.model_validate(dict(parse_qsl(query, strict_parsing=bool(query))))
        except (ValidationError, ValueError) as exc:
            raise ConfigError(f"bad sim parameters {query!r}: {exc}") from exc


# ---------------------------------------------------------------- tokens

def _apply_stop(text: str, stop: Sequence[str]) -> str:
    cuts = [i for s in stop if s and (i := text.find(s)) >= 0]
    return text[: min(cuts)] if cuts else text


# ---------------------------------------------------------------- randomness


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(repr(p) for p in parts).encode()).digest()


def _rng(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(_digest(*parts)[:8], "big"))


class Draws:
    """Independent, named random streams for one sample, so adding one never shifts another."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def rng(self, label: str) -> random.Random:
        return _rng(self._key, label)

    def uniform(self, label: str) -> float:
        return self.rng(label).random()


_MODE_WEIGHTS = (0.6, 0.3, 0.1)
"""How often each of a task's recurring wrong answers is produced."""


def _logistic(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


# ---------------------------------------------------------------- behaviours per task kind


class Behaviour(Protocol):
    """What the sim knows how to do for one task: answer, break, check and review."""

    def correct(self, rng: random.Random) -> str: ...

    def wrong(self, mode: int, rng: random.Random) -> str: ...

    def is_right(self, candidate: str) -> bool: ...

    def explain(self, candidate: str) -> str: ...

    def complain(self, candidate: str, rng: random.Random) -> str: ...

    def approve(self, candidate: str, rng: random.Random) -> str: ...


def _mode_rng(seed: int, task_id: str, mode: int) -> random.Random:
    return _rng("mode", seed, task_id, mode)


_MUL_BETWEEN_RE = re.compile(r"(?<=\d) ?[x×*] ?(?=\d)|(?<=\d )[x×*](?= \d)")


def _style_math(text: str, rng: random.Random) -> str:
    """Light variation of a worked solution that keeps its lines and numbers."""
    lines = text.splitlines()
    style = rng.random()
    if style < 0.2:
        sign = rng.choice(("*", "×", "x"))
        lines = [_MUL_BETWEEN_RE.sub(f" {sign} ", ln) for ln in lines]
    elif style < 0.4:
        lines = [
            ln if ln.lower().startswith("answer:") else f"Step {i}: {ln.strip()}"
            for i, ln in enumerate(lines, start=1)
        ]
    return "\n".join(lines)


class _MathBehaviour:
    def __init__(self, task: Task, seed: int) -> None:
        self.task = task
        self.seed = seed
        answer = task.answer
        if task.solution:
            self.reference = normalise_solution(task.solution, answer)
        else:
            self.reference = f"Answer: {answer}"
        self.answer = answer if answer is not None else extract_answer(self.reference)

    @cached_property
    def _wrong_texts(self) -> list[str]:
        out = []
        for m in range(len(_MODE_WEIGHTS)):
            text = wrong_math_solution(self.reference, _mode_rng(self.seed, self.task.id, m))[0]
            if self.is_right(text):
                # An answer format the step editor could not break: break the last line.
                number = fraction_of(self.answer or "")
                wrong = format_number(number + 1) if number is not None else f"-({self.answer})"
                text = f"{text}\nAnswer: {wrong}"
            out.append(text)
        return out

    def correct(self, rng: random.Random) -> str:
        return _style_math(self.reference, rng)

    def wrong(self, mode: int, rng: random.Random) -> str:
        return _style_math(self._wrong_texts[mode], rng)

    def is_right(self, candidate: str) -> bool:
        return answers_match(extract_answer(candidate), self.answer)

    def explain(self, candidate: str) -> str:
        found = first_divergence(candidate, self.reference)
        if found is not None:
            return found[1] + " The error carries through to the final answer."
        got = extract_answer(candidate)
        return f"The final answer {got} does not solve the problem; recheck the last steps."

    def complain(self, candidate: str, rng: random.Random) -> str:
        steps = step_results(candidate)
        if steps:
            k, expr, result = rng.choice(steps)
            return rng.choice(
                (
                    f"Step {k} looks wrong: {expr} = {format_number(result)} uses the wrong "
                    "quantity from the problem, so the final answer is off.",
                    f"Step {k} misreads the problem: {expr} should not be computed here.",
                )
            )
        return "The solution skips the key step, so the final answer is not justified."

    def approve(self, candidate: str, rng: random.Random) -> str:
        got = extract_answer(candidate)
        return rng.choice(
            (
                f"Each step follows from the previous one and the arithmetic checks out; "
                f"the final answer {got} is right.",
                f"The solution is correct: every computation checks out and it ends with {got}.",
                "All steps are consistent with the problem statement and the answer is correct.",
            )
        )


def _fence(code: str, rng: random.Random) -> str:
    intro = rng.choice(("", "", "Here is the implementation:\n\n", "Here is a solution:\n\n"))
    return f"{intro}```python\n{code.rstrip()}\n```"


class _CodeBehaviour:
    def __init__(self, task: Task, reference: str, seed: int) -> None:
        self.task = task
        self.reference = reference
        self.seed = seed

    @cached_property
    def _wrong_programs(self) -> list[str]:
        out: list[str] = []
        for m in range(len(_MODE_WEIGHTS)):
            mutant = mutate_code(self.reference, _mode_rng(self.seed, self.task.id, m))
            out.append(mutant.source if mutant else "def solution():\n    return None\n")
        return out

    def correct(self, rng: random.Random) -> str:
        return _fence(self.reference, rng)

    def wrong(self, mode: int, rng: random.Random) -> str:
        return _fence(self._wrong_programs[mode], rng)

    def is_right(self, candidate: str) -> bool:
        return same_program(extract_code(candidate), self.reference, self.task.prompt)

    def explain(self, candidate: str) -> str:
        found = describe_difference(extract_code(candidate), self.reference)
        return found or "The implementation does not do what the task asks."

    def complain(self, candidate: str, rng: random.Random) -> str:
        code = extract_code(candidate)
        lines = [ln.strip() for ln in code.splitlines() if re.match(r"\s*(if|while|return)\b", ln)]
        options = [
            "The function does not handle an empty input correctly.",
            "There is an off-by-one error in the loop bounds.",
            "The result has the wrong type for some inputs.",
        ]
        if lines:
            options.append(f"The condition in `{rng.choice(lines)}` looks inverted.")
        return rng.choice(options)

    def approve(self, candidate: str, rng: random.Random) -> str:
        return rng.choice(
            (
                "The implementation is correct and handles the edge cases.",
                "The code does what the docstring asks; I see no bugs.",
                "Correct: the logic matches the specification for all the examples.",
            )
        )




def _finding_key(item: Mapping[str, Any]) -> tuple[str, tuple[int, ...]] | None:
    category = item.get("category")
    lines = item.get("lines", ())
    if not isinstance(category, str):
        return None
    if isinstance(lines, int):
        lines = [lines]
    try:
        nums = tuple(sorted(int(x) for x in lines))
    except (TypeError, ValueError):
        return None
    return category.strip().lower(), nums


def _findings_json(findings: Sequence[Mapping[str, Any]]) -> str:
    """One finding per line, as an auditor model would print the list."""
    if not findings:
        return "[]"
    return "[\n" + ",\n".join(f"  {json.dumps(dict(f))}" for f in findings) + "\n]"


def _lines_text(lines: Sequence[int]) -> str:
    return ", ".join(str(x) for x in lines) or "?"


class _FindingsBehaviour:
    def __init__(self, task: Task, seed: int) -> None:
        self.task = task
        self.seed = seed
        raw = task.metadata.get("findings") or []
        self.findings: list[dict[str, Any]] = []
        for item in raw if isinstance(raw, list) else []:
            if isinstance(item, Mapping) and _finding_key(item) is not None:
                key = _finding_key(item)
                assert key is not None
                out: dict[str, Any] = {"category": key[0], "lines": list(key[1])}
                if item.get("function"):
                    out["function"] = str(item["function"])
                self.findings.append(out)
        self.keys = {_finding_key(f) for f in self.findings}
        self.functions = re.findall(r"\bfunction\s+(\w+)|\bdef\s+(\w+)", task.prompt)
        self.n_lines = max(1, task.prompt.count("\n") + 1)

    def _invented(self, rng: random.Random) -> dict[str, Any]:
        names = [a or b for a, b in self.functions]
        out: dict[str, Any] = {
            "category": rng.choice(FINDING_CATEGORIES),
            "lines": [rng.randint(1, self.n_lines)],
        }
        if names:
            out["function"] = rng.choice(names)
        return out

    @cached_property
    def _wrong_lists(self) -> list[list[dict[str, Any]]]:
        out: list[list[dict[str, Any]]] = []
        for m in range(len(_MODE_WEIGHTS)):
            rng = _mode_rng(self.seed, self.task.id, m)
            found = [dict(f) for f in self.findings]
            if found and rng.random() < 0.5:
                found.pop(rng.randrange(len(found)))
            if not found or rng.random() < 0.6:
                for _ in range(10):
                    extra = self._invented(rng)
                    if _finding_key(extra) not in self.keys:
                        found.append(extra)
                        break
            out.append(found)
        return out

    def correct(self, rng: random.Random) -> str:
        return _findings_json(self.findings)

    def wrong(self, mode: int, rng: random.Random) -> str:
        return _findings_json(self._wrong_lists[mode])

    def _parsed(self, candidate: str) -> set[tuple[str, tuple[int, ...]]] | None:
        obj = extract_json(candidate)
        if isinstance(obj, dict):
            obj = obj.get("findings")
        if not isinstance(obj, list):
            return None
        keys = {_finding_key(x) for x in obj if isinstance(x, Mapping)}
        return {k for k in keys if k is not None}

    def is_right(self, candidate: str) -> bool:
        return self._parsed(candidate) == self.keys

    def explain(self, candidate: str) -> str:
        got = self._parsed(candidate)
        if got is None:
            return "The reply is not a JSON list of findings."
        missed = sorted(k for k in self.keys if k is not None and k not in got)
        false = sorted(got - {k for k in self.keys if k is not None})
        parts = [f"It misses the {c} issue at line {_lines_text(ln)}." for c, ln in missed[:2]]
        parts += [
            f"The {c} finding at line {_lines_text(ln)} is a false positive." for c, ln in false[:2]
        ]
        return " ".join(parts) or "The findings do not match the contract's real issues."

    def complain(self, candidate: str, rng: random.Random) -> str:
        got = sorted(self._parsed(candidate) or ())
        if got:
            c, ln = rng.choice(got)
            return f"The {c} finding at line {_lines_text(ln)} is not exploitable; it is a false positive."
        return "The audit misses an obvious issue in the contract."

    def approve(self, candidate: str, rng: random.Random) -> str:
        return "The findings are accurate and complete."


_OPTION_RE = re.compile(r"(?m)^\s*\(?([A-J])[).:]\s+")


class _AnswerBehaviour:
    """Choice and short-answer tasks: right is the reference answer, wrong a distractor."""

    def __init__(self, task: Task, seed: int) -> None:
        self.task = task
        self.seed = seed
        self.answer = task.answer
        letters = list(dict.fromkeys(_OPTION_RE.findall(task.prompt)))
        self.options = letters if len(letters) >= 2 else list("ABCD")

    @cached_property
    def _distractors(self) -> list[str]:
        out: list[str] = []
        ans = (self.answer or "").strip()
        number = fraction_of(ans) if ans else None
        for m in range(len(_MODE_WEIGHTS)):
            rng = _mode_rng(self.seed, self.task.id, m)
            if self.task.kind == "choice":
                others = [o for o in self.options if o.lower() != ans.lower()] or ["A"]
                out.append(rng.choice(others))
            elif number is not None:
                out.append(format_number(number + rng.choice((1, -1, 2, 10))))
            else:
                out.append(rng.choice(("none of the above", "it cannot be determined", "unknown")))
        return out

    def correct(self, rng: random.Random) -> str:
        if self.task.kind == "choice" and self.answer:
            return f"Weighing each option against the question, {self.answer} fits.\nAnswer: {self.answer}"
        if self.task.solution:
            return self.task.solution
        if self.answer is not None:
            return f"Answer: {self.answer}"
        return rng.choice(("Here is a concise answer to your question.", "Done: see above."))

    def wrong(self, mode: int, rng: random.Random) -> str:
        if self.answer is None:
            return "I am not sure; it depends on details the question does not give."
        d = self._distractors[mode]
        if self.task.kind == "choice":
            return f"Weighing each option against the question, {d} fits.\nAnswer: {d}"
        return f"Answer: {d}"

    def is_right(self, candidate: str) -> bool:
        if self.answer is None:
            return True  # no ground truth: nothing to be wrong about
        return answers_match(extract_answer(candidate), self.answer) or answers_match(
            candidate.strip(), self.answer
        )

    def explain(self, candidate: str) -> str:
        return f"The answer {extract_answer(candidate) or candidate.strip()[:40]!r} is not right."

    def complain(self, candidate: str, rng: random.Random) -> str:
        return "The reasoning does not rule out the other options, so the answer is doubtful."

    def approve(self, candidate: str, rng: random.Random) -> str:
        return "The answer is correct."


def _behaviour_for(task: Task, seed: int) -> Behaviour:
    if task.kind == "math" and (task.solution or task.answer is not None):
        return _MathBehaviour(task, seed)
    if task.kind == "code" and task.solution and same_program(task.solution, task.solution):
        return _CodeBehaviour(task, task.solution, seed)
    if task.kind == "findings" and isinstance(task.metadata.get("findings"), list):
        return _FindingsBehaviour(task, seed)
    return _AnswerBehaviour(task, seed)


# ---------------------------------------------------------------- the model


class SimModel:
    """A simulated chat model over a suite; implements :class:`~deliberate.models.base.ChatModel`."""

    def __init__(self, suite: Suite, params: SimParams | None = None) -> None:
        self.suite = suite
        self.params = params or SimParams()
        self._index = PromptIndex((t.id, t.prompt) for t in suite)
        self._tasks = {t.id: t for t in suite}
        self._behaviours = {t.id: _behaviour_for(t, self.params.seed) for t in suite}
        query = self.params.query()
        self._model_id = f"sim:{suite.name}" + (f"?{query}" if query else "")
        self._profile = ModelProfile(supports_n=True, max_n=128, supports_seed=True)
        self._handlers = load_handlers()

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def profile(self) -> ModelProfile:
        return self._profile

    async def aclose(self) -> None:
        return None

    # -- skill

    def task_offset(self, task: Task) -> float:
        """The task's fixed luck, Normal(0, task_noise), drawn once per (seed, task id)."""
        if self.params.task_noise == 0:
            return 0.0
        return _rng("offset", self.params.seed, task.id).gauss(0.0, self.params.task_noise)

    def p_correct(self, task: Task) -> float:
        """P(a generator sample is right) = logistic(sharpness * (skill - difficulty + offset))."""
        p = self.params
        return _logistic(p.sharpness * (p.skill - task.difficulty + self.task_offset(task)))

    def behaviour(self, task: Task | None) -> Behaviour | None:
        """How the sim answers ``task`` (its right and wrong answers), if it knows it."""
        return self._behaviours.get(task.id) if task is not None else None

    def find_task(self, messages: Sequence[Message]) -> Task | None:
        """The suite task the conversation is about, as the model would recognise it."""
        parsed = parse_prompt(messages)
        return self._find(messages, parsed)

    def _find(self, messages: Sequence[Message], parsed: ParsedPrompt) -> Task | None:
        key = self._index.find_in_text(parsed.task_text) if parsed.task_text else None
        if key is None:
            key = self._index.find(messages)
        return self._tasks.get(key) if key is not None else None

    # -- sampling

    def _base_key(self, request: ChatRequest) -> tuple[bytes, bool]:
        """Hash of what determines a sample, and whether it is greedy (index-independent).

        ``max_tokens`` and ``stop`` only cut the text, so they stay out: a truncated
        sample is a prefix of the same sample uncut, as with a real model and a seed.
        """
        canon = request.canonical("")
        greedy = request.temperature <= 0
        for k in ("model", "max_tokens", "stop"):
            canon.pop(k, None)
        if greedy:
            canon["seed"] = None
        blob = json.dumps(canon, sort_keys=True, separators=(",", ":"), default=str)
        return _digest("sim", self.params.seed, blob), greedy

    def _draws(self, base: bytes, greedy: bool, index: int) -> Draws:
        return Draws(_digest(base, 0 if greedy else index))

    def _mode(self, draws: Draws) -> int:
        return draws.rng("mode").choices(range(len(_MODE_WEIGHTS)), _MODE_WEIGHTS)[0]

    def _text(self, parsed: ParsedPrompt, task: Task | None, draws: Draws) -> str:
        if task is None:
            return self._unknown(parsed, draws)
        b = self._behaviours[task.id]
        rng = draws.rng("text")
        if parsed.role == "generator":
            if draws.uniform("correct") < self.p_correct(task):
                return b.correct(rng)
            return b.wrong(self._mode(draws), rng)
        candidate = parsed.candidate or ""
        truth = b.is_right(candidate)
        if parsed.role == "critic":
            return self._judge(b, candidate, truth, parsed.scale, draws)
        said = parse_verdict(parsed.critique or "") or "incorrect"
        critique_right = (said == "incorrect") != truth
        u = draws.uniform("refine")
        p = self.params
        if not truth:
            fix = p.fix_rate if critique_right else p.fix_rate_wrong_critique
            return b.correct(rng) if u < fix else b.wrong(self._mode(draws), rng)
        if said == "incorrect" and u < p.break_rate:
            return b.wrong(self._mode(draws), rng)
        return candidate

    def judge_text(
        self, b: Behaviour, candidate: str, scale: tuple[float, float], draws: Draws
    ) -> str:
        """A critic's JSON reply on ``candidate``, with the sim's error rates."""
        return self._judge(b, candidate, b.is_right(candidate), scale, draws)

    def mode(self, draws: Draws) -> int:
        """A wrong-answer mode (which recurring mistake a wrong sample makes)."""
        return self._mode(draws)

    def _judge(
        self,
        b: Behaviour,
        candidate: str,
        truth: bool,
        scale: tuple[float, float],
        draws: Draws,
    ) -> str:
        u = draws.uniform("verdict")
        p = self.params
        says_correct = u < p.specificity if truth else u >= p.sensitivity
        rng = draws.rng("critique")
        if says_correct:
            critique = b.approve(candidate, rng)
        elif truth:
            critique = b.complain(candidate, rng)
        else:
            critique = b.explain(candidate)
        score = _score(says_correct, says_correct == truth, scale, draws.rng("score"))
        verdict = "correct" if says_correct else "incorrect"
        return json.dumps({"critique": critique, "verdict": verdict, "score": score})

    def _unknown(self, parsed: ParsedPrompt, draws: Draws) -> str:
        rng = draws.rng("text")
        if parsed.role == "critic":
            says_correct = rng.random() < 0.5
            return json.dumps(
                {
                    "critique": "I cannot check this against the task with confidence.",
                    "verdict": "correct" if says_correct else "incorrect",
                    "score": _score(says_correct, False, parsed.scale, draws.rng("score")),
                }
            )
        if parsed.role == "refiner":
            return parsed.candidate or ""
        return rng.choice(
            (
                "I'm not sure I understand the question; could you give more detail?",
                "I don't have enough information to answer that precisely.",
                "That depends on details the question does not give.",
            )
        )

    def _finish(self, text: str, request: ChatRequest, index: int) -> Completion:
        text = _apply_stop(text, request.stop)
        truncated = False
        if request.max_tokens is not None:
            text, truncated = truncate_tokens(text, request.max_tokens)
        return Completion(
            text=text,
            sample_index=index,
            finish_reason="length" if truncated else "stop",
            completion_tokens=count_tokens(text),
        )

    def respond(self, request: ChatRequest) -> ChatResponse:
        """The response to ``request``, computed at once (``complete`` adds the latency)."""
        if request.n < 1 or request.n > self._profile.max_n:
            raise UsageError(f"sim: n must be in 1..{self._profile.max_n}, got {request.n}")
        parsed = parse_prompt(request.messages)
        task = self._find(request.messages, parsed)
        base, greedy = self._base_key(request)
        handler = next((h for h in self._handlers if h.matches(parsed.text)), None)
        completions = []
        for i in request.sample_indices:
            draws = self._draws(base, greedy, i)
            if handler is not None:
                ctx = HandlerContext(self, parsed, task, self.behaviour(task), draws,
                                     request.messages)
                text = handler.respond(ctx)
            else:
                text = self._text(parsed, task, draws)
            completions.append(self._finish(text, request, i))
        prompt_tokens = count_prompt_tokens(request.messages)
        usage = Usage(prompt_tokens, sum(c.completion_tokens or 0 for c in completions))
        return ChatResponse(completions=completions, usage=usage, model=self._model_id)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        start = time.perf_counter()
        if self.params.latency_ms > 0:
            await asyncio.sleep(self.params.latency_ms / 1000.0)
        response = self.respond(request)
        response.latency_s = time.perf_counter() - start
        return response

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """The response of :meth:`complete`, one token per sample per step, then whole.

        The loop yields control between steps, as a network stream would, so a
        consumer sees the first piece before the last is handed out.
        """
        start = time.perf_counter()
        if self.params.latency_ms > 0:
            await asyncio.sleep(self.params.latency_ms / 1000.0)
        response = self.respond(request)
        pieces = [(c.sample_index, token_pieces(c.text)) for c in response.completions]
        for t in range(max((len(p) for _, p in pieces), default=0)):
            for index, p in pieces:
                if t < len(p):
                    yield TextDelta(index, p[t])
            await asyncio.sleep(0)
        response.latency_s = time.perf_counter() - start
        yield response


def _score(
    says_correct: bool, confident: bool, scale: tuple[float, float], rng: random.Random
) -> float | int:
    """A score consistent with the verdict: top 30% of the scale if correct, bottom 40% if not.

    A judge that is right tends toward the extreme of its band and one that is
    wrong toward the middle, so scores carry a little more signal than verdicts.
    """
    lo, hi = scale
    u1, u2 = rng.random(), rng.random()
    c = max(u1, u2) if confident else min(u1, u2)
    frac = 0.7 + 0.3 * c if says_correct else 0.4 * (1.0 - c)
    raw = lo + (hi - lo) * frac
    if float(lo).is_integer() and float(hi).is_integer() and hi - lo >= 2:
        value = math.ceil(raw) if says_correct else math.floor(raw)
        return int(min(hi, max(lo, value)))
    return round(min(hi, max(lo, raw)), 2)


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a role handler may use to answer one sample."""

    sim: SimModel
    parsed: ParsedPrompt
    task: Task | None
    behaviour: Behaviour | None
    draws: Draws
    # The whole request (``parsed`` holds only the last user message): some formats
    # refer to "the above response" in an earlier message.
    messages: tuple[Message, ...] = ()


class RoleHandler(Protocol):
    """A role the sim can play beyond generator/critic/refiner (see ``sim/handlers``).

    ``matches`` looks at the last user message (the tags of the role's template);
    the first handler that matches answers every sample of the request.
    """

    name: str

    def matches(self, text: str) -> bool: ...

    def respond(self, ctx: HandlerContext) -> str: ...


def load_handlers() -> tuple[RoleHandler, ...]:
    """Every ``HANDLER`` in the modules of ``deliberate.models.sim.handlers``, by name."""
    import importlib
    import pkgutil

    from deliberate.models.sim import handlers as pkg

    found: list[RoleHandler] = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        handler = getattr(mod, "HANDLER", None)
        if handler is not None:
            found.append(handler)
    return tuple(found)
