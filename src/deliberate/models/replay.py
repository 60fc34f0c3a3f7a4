"""Recorded completions served as a model: real outputs, offline and reproducible.

A replay file holds, for each task, a pool of completions some model once wrote
(see ``docs/replay-format.md``). :class:`ReplayModel` finds the task a request is
about from its messages, as any model must, and serves sample ``i`` from that
pool. Samples are drawn *without replacement*: index ``i`` maps through a seeded
permutation of the pool, fixed by (seed, task) alone, so the same sample index
gets the same completion whatever the order or batching of calls, and a pool
never repeats a completion as if it were a fresh sample.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from deliberate.errors import ConfigError, DataError, ModelResponseError
from deliberate.models._matching import PromptIndex, normalise_text
from deliberate.models.base import (
    ChatRequest,
    ChatResponse,
    Completion,
    Message,
    ModelProfile,
    Usage,
)
from deliberate.models.tokens import count_tokens
from deliberate.models.tokens import prompt_tokens as count_prompt_tokens

__all__ = [
    "RecordedCompletion",
    "ReplayModel",
    "ReplayOrder",
    "ReplayRecord",
    "count_tokens",
    "read_replay",
    "write_replay",
]

ReplayOrder = Literal["shuffled", "recorded"]
ReplayMatch = Literal["prompt", "task_id"]



@dataclass(frozen=True, slots=True)
class RecordedCompletion:
    """One recorded output, with its correctness label where the source had one."""

    text: str
    correct: bool | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "correct": self.correct}
        if self.meta:
            out["meta"] = dict(self.meta)
        return out


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    """The recorded pool of one task (one line of a replay file)."""

    completions: tuple[RecordedCompletion, ...]
    prompt: str | None = None
    task_id: str | None = None
    model: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Stable identity for seeding: the task id, else a hash of the normalised prompt."""
        if self.task_id is not None:
            return self.task_id
        digest = hashlib.sha256(normalise_text(self.prompt or "").encode()).hexdigest()
        return f"prompt:{digest[:16]}"

    @property
    def label(self) -> str:
        """How errors name this record: its task id, else its prompt's start."""
        return self.task_id if self.task_id is not None else repr(_snippet(self.prompt or ""))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.task_id is not None:
            out["task_id"] = self.task_id
        if self.prompt is not None:
            out["prompt"] = self.prompt
        out["completions"] = [c.to_json() for c in self.completions]
        if self.model is not None:
            out["model"] = self.model
        if self.meta:
            out["meta"] = dict(self.meta)
        return out


def _snippet(text: str, limit: int = 60) -> str:
    flat = normalise_text(text)
    return flat if len(flat) <= limit else flat[:limit] + "…"


# --------------------------------------------------------------------------- file I/O


def _open_text(path: Path, mode: Literal["r", "w"]) -> IO[str]:
    if path.suffix == ".gz":
        text_mode: Literal["rt", "wt"] = "rt" if mode == "r" else "wt"
        return gzip.open(path, text_mode, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def _parse_completion(obj: Any, where: str, i: int) -> RecordedCompletion:
    if isinstance(obj, str):
        return RecordedCompletion(text=obj)
    if not isinstance(obj, dict):
        raise DataError(f"{where}: completions[{i}] must be a string or an object with 'text'")
    text = obj.get("text")
    if not isinstance(text, str):
        raise DataError(f"{where}: completions[{i}].text must be a string")
    correct = obj.get("correct")
    if correct is not None and not isinstance(correct, bool):
        raise DataError(f"{where}: completions[{i}].correct must be true, false or null")
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError(f"{where}: completions[{i}].meta must be an object")
    return RecordedCompletion(text=text, correct=correct, meta=meta)


def _opt_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: '{key}' must be a string")
    return value


def parse_record(obj: Any, where: str = "record") -> ReplayRecord:
    """Validate one decoded JSON line; ``where`` names it in errors (file:line)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: a record must be a JSON object")
    comps = obj.get("completions")
    if not isinstance(comps, list) or not comps:
        raise DataError(f"{where}: 'completions' must be a non-empty list")
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError(f"{where}: 'meta' must be an object")
    record = ReplayRecord(
        completions=tuple(_parse_completion(c, where, i) for i, c in enumerate(comps)),
        prompt=_opt_str(obj, "prompt", where),
        task_id=_opt_str(obj, "task_id", where),
        model=_opt_str(obj, "model", where),
        meta=meta,
    )
    if record.prompt is None and record.task_id is None:
        raise DataError(f"{where}: a record needs a 'prompt' or a 'task_id'")
    return record


def iter_replay(path: str | Path) -> Iterator[ReplayRecord]:
    """Records of a replay file (``.jsonl`` or ``.jsonl.gz``); blank lines are skipped."""
    p = Path(path)
    try:
        fh = _open_text(p, "r")
    except OSError as exc:
        raise DataError(f"cannot read replay file {p}: {exc.strerror or exc}") from exc
    with fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{p}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not valid JSON ({exc.msg})") from exc
                yield parse_record(obj, where)
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read replay file {p}: {exc}") from exc


def read_replay(path: str | Path) -> list[ReplayRecord]:
    """All records of a replay file, validated; DataError names file and line."""
    return list(iter_replay(path))


def write_replay(path: str | Path, records: Iterable[ReplayRecord]) -> int:
    """Write records as replay JSONL (gzip when the name ends in .gz); returns the count."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with _open_text(p, "w") as fh:
        for record in records:
            fh.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


# --------------------------------------------------------------------------- model


class ReplayModel:
    """Serves recorded completions; a real backend, usable wherever a model is.

    ``order="shuffled"`` (default) draws without replacement through a
    permutation seeded by ``(seed, record.key)``; ``order="recorded"`` serves the
    pool in file order, for reproducing a recorded evaluation exactly.
    ``match="prompt"`` finds the record whose prompt appears in the request's
    user messages; ``match="task_id"`` reads ``request.extra["task_id"]`` instead,
    for harnesses that know the task and records that carry no prompt.
    Sampling parameters and ``request.seed`` are ignored: the pool is what it is,
    and this model's own seed is part of its ``model_id``.
    """

    def __init__(
        self,
        records: Iterable[ReplayRecord],
        *,
        seed: int = 0,
        order: ReplayOrder = "shuffled",
        match: ReplayMatch = "prompt",
        source: str = "<memory>",
    ) -> None:
        if order not in ("shuffled", "recorded"):
            raise ConfigError(f"replay order must be 'shuffled' or 'recorded', not {order!r}")
        if match not in ("prompt", "task_id"):
            raise ConfigError(f"replay match must be 'prompt' or 'task_id', not {match!r}")
        self.seed = seed
        self.order: ReplayOrder = order
        self.match: ReplayMatch = match
        self.source = source
        self._records: dict[str, ReplayRecord] = {}
        self._prompts: dict[str, str] = {}
        for record in records:
            if record.key in self._records:
                raise DataError(f"{source}: two records for task {record.label}")
            if match == "prompt":
                if record.prompt is None:
                    raise DataError(
                        f"{source}: record {record.label} has no prompt; "
                        "use match='task_id' to serve records by task id"
                    )
                norm = normalise_text(record.prompt)
                if norm in self._prompts:
                    raise DataError(
                        f"{source}: records {self._prompts[norm]} and {record.label} "
                        "have the same prompt"
                    )
                self._prompts[norm] = record.label
            elif record.task_id is None:
                raise DataError(f"{source}: record {record.label} has no task_id")
            self._records[record.key] = record
        self._index = PromptIndex(
            (key, r.prompt) for key, r in self._records.items() if r.prompt is not None
        )
        self._profile = ModelProfile(supports_n=True, max_n=1 << 30, supports_seed=True)

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        seed: int = 0,
        order: ReplayOrder = "shuffled",
        match: ReplayMatch = "prompt",
    ) -> ReplayModel:
        """Load a replay file; malformed lines raise DataError with file and line."""
        return cls(read_replay(path), seed=seed, order=order, match=match, source=str(path))

    @property
    def model_id(self) -> str:
        mid = f"replay:{self.source}?seed={self.seed}&order={self.order}"
        return mid if self.match == "prompt" else mid + f"&match={self.match}"

    @property
    def profile(self) -> ModelProfile:
        return self._profile

    @property
    def records(self) -> Mapping[str, ReplayRecord]:
        """Records by key (task id, or prompt hash for records without one)."""
        return self._records

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"ReplayModel({self.model_id!r}, {len(self)} tasks)"

    def find(self, request: ChatRequest) -> ReplayRecord | None:
        """The record a request is about, or None."""
        if self.match == "task_id":
            task_id = request.extra.get("task_id")
            return self._records.get(task_id) if isinstance(task_id, str) else None
        key = self._index.find(request.messages)
        return self._records[key] if key is not None else None

    def permutation(self, record: ReplayRecord) -> list[int]:
        """Pool position served at each sample index, fixed by (seed, record key)."""
        positions = list(range(len(record.completions)))
        if self.order == "shuffled":
            # A str seed goes through SHA-512 in random.seed: stable across runs and
            # platforms, unaffected by PYTHONHASHSEED.
            random.Random(f"deliberate-replay:{self.seed}:{record.key}").shuffle(positions)
        return positions

    def sample(self, record: ReplayRecord, index: int) -> RecordedCompletion:
        """The recorded completion served as sample ``index`` of this record."""
        pool = len(record.completions)
        if index < 0 or index >= pool:
            raise ModelResponseError(
                f"replay pool for task {record.label} has only {pool} completions; "
                f"asked for sample {index}"
            )
        return record.completions[self.permutation(record)[index]]

    async def complete(self, request: ChatRequest) -> ChatResponse:
        record = self.find(request)
        if record is None:
            raise ModelResponseError(self._no_match_message(request))
        pool = len(record.completions)
        last = request.sample_offset + request.n - 1
        if request.sample_offset < 0 or last >= pool:
            bad = request.sample_offset if request.sample_offset < 0 else last
            raise ModelResponseError(
                f"replay pool for task {record.label} has only {pool} completions; "
                f"asked for sample {bad}"
            )
        order = self.permutation(record)
        completions: list[Completion] = []
        total = 0
        for i in request.sample_indices:
            text = record.completions[order[i]].text
            tokens = count_tokens(text)
            total += tokens
            completions.append(
                Completion(
                    text=text, sample_index=i, finish_reason="stop", completion_tokens=tokens
                )
            )
        prompt_tokens = count_prompt_tokens(request.messages)
        return ChatResponse(
            completions=completions,
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=total),
            model=self.model_id,
        )

    async def aclose(self) -> None:
        """Nothing to release; present for the ChatModel protocol."""

    def _no_match_message(self, request: ChatRequest) -> str:
        if self.match == "task_id":
            task_id = request.extra.get("task_id")
            if task_id is None:
                return f"{self.model_id}: request has no extra['task_id'] to match on"
            return f"{self.model_id}: no recorded completions for task {task_id!r}"
        users = [m for m in request.messages if m.role == "user"]
        last: Message | None = users[-1] if users else None
        shown = _snippet(last.content) if last else "(no user message)"
        return f"{self.model_id}: no recorded completions for prompt {shown!r}"
