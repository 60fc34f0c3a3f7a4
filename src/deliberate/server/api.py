"""The JSON API for runs, tasks, trees, nodes and exports: what the web view reads.

Routes (all ``GET``, under ``/api``)::

    /api/runs?limit=N                                   runs, newest first, with metrics
    /api/runs/{run_id}                                  a run, its config and summary, its tasks
    /api/runs/{run_id}/tasks/{task_id}/tree             a task's tree, one light row per node
    /api/runs/{run_id}/tasks/{task_id}/nodes/{node_id}  one node in full: judgements, model
                                                        calls, a word diff against its parent
    /api/runs/{run_id}/export/{kind}?format=jsonl       an export kind, streamed as a download

Errors are ``{"error": {"message", "type", "code"}}`` with the status (404 for an
unknown run, task, node or export kind; 400 for bad export options), built here
rather than by the app's handlers so the shape holds in any app that mounts
:data:`router`.

**The store.** Every route reads the :class:`~deliberate.store.Store` through the
dependency :func:`get_store`, which returns ``request.app.state.store``: the app
that mounts this router (``server.app.create_app``, or a test's own app) opens the
store in its lifespan and sets that attribute. Nothing here holds state of its own.

Reads go through the Store's public methods only. A node's detail reads that node,
its parent, its judgements and its calls (``Store.load_node``), not its task: a
5,000-node task holds thousands of model calls with their full requests
(``docs/web.md`` gives the times on such a tree).
"""

from __future__ import annotations

import asyncio
import difflib
import json
import math
import re
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from deliberate.errors import UnknownNameError, UsageError
from deliberate.export.base import ExportOptions, ExportTree
from deliberate.export.runner import PAGE, Filters, aexport_run, load_kind, split_of
from deliberate.store import Store
from deliberate.tree import (
    AttemptRecord,
    JudgementRecord,
    ModelCallRecord,
    NodeRecord,
    RunRecord,
)

__all__ = [
    "TEXT_PREVIEW",
    "CallOut",
    "DiffOp",
    "NodeDetail",
    "RunOut",
    "RunRow",
    "RunsOut",
    "TaskRow",
    "TreeNode",
    "TreeOut",
    "build_node_detail",
    "build_run",
    "build_runs",
    "build_tree",
    "get_store",
    "router",
    "word_diff",
]

TEXT_PREVIEW = 300
"""Characters of a node's text in the tree (the node's detail has all of it)."""

router = APIRouter(prefix="/api", tags=["runs"])


# ------------------------------------------------------------------ the store


def get_store(request: Request) -> Store:
    """The app's open Store (``app.state.store``, set by the app's lifespan)."""
    store = getattr(request.app.state, "store", None)
    if not isinstance(store, Store):
        raise RuntimeError("app.state.store is not set: the app that mounts the deliberate "
                           "API must open a Store in its lifespan and set app.state.store")
    return store


StoreDep = Annotated[Store, Depends(get_store)]


# ------------------------------------------------------------------ errors


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None


class ErrorBody(BaseModel):
    """The OpenAI error shape, used by every route of the server."""

    error: ErrorDetail


def error_response(status: int, message: str, code: str,
                   type_: str = "invalid_request_error") -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(message=message, type=type_, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


def _not_found(what: str, name: str, where: str = "") -> JSONResponse:
    return error_response(404, f"no {what} {name!r}{where}", f"{what}_not_found")


ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody,
                                                 "description": "unknown run, task or node"}}


# ------------------------------------------------------------------ shapes


class RunRow(BaseModel):
    """One run in the list; a sweep is one row (``kind="sweep"``), its cells ``"cell"``."""

    id: str
    created_at: float
    status: str
    strategy: str | None
    suite: str | None
    model: str | None
    tasks: int | None
    accuracy: float | None
    tokens: int | None
    cost: float | None
    kind: Literal["run", "sweep", "cell"]


class RunsOut(BaseModel):
    runs: list[RunRow]


class RunInfo(BaseModel):
    id: str
    status: str
    created_at: float
    config: dict[str, Any]
    summary: dict[str, Any]


class TaskRow(BaseModel):
    task_id: str
    status: str
    answer: str | None
    correct: bool | None
    tokens: int
    calls: int
    nodes: int | None
    latency_s: float
    cost: float


class RunOut(BaseModel):
    run: RunInfo
    tasks: list[TaskRow]


class JudgementBrief(BaseModel):
    role: str
    score: float | None
    scale_min: float | None
    scale_max: float | None
    verdict: str | None


class TreeNode(BaseModel):
    """A node as the tree view draws it; ``text`` is cut to :data:`TEXT_PREVIEW`."""

    id: str
    parent_id: str | None
    role: str
    operator: str
    depth: int
    text: str
    answer: str | None
    value: float | None
    visits: int
    reward: float | None
    prior: float | None
    chosen: bool
    label: Literal["correct", "incorrect"] | None
    judgements: list[JudgementBrief]


class TreeOut(BaseModel):
    task_id: str
    root_id: str | None
    stats: dict[str, Any]
    attempt: AttemptRecord
    nodes: list[TreeNode]


class ParentBrief(BaseModel):
    id: str
    text: str


class DiffOp(BaseModel):
    op: Literal["equal", "insert", "delete"]
    text: str


class CallOut(BaseModel):
    id: str
    role: str
    model: str
    messages: list[dict[str, Any]]
    response_text: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cost: float
    cached: bool
    error: str | None


class NodeDetail(BaseModel):
    node: NodeRecord
    parent: ParentBrief | None
    diff: list[DiffOp]
    judgements: list[JudgementRecord]
    calls: list[CallOut]


# ------------------------------------------------------------------ helpers


def _finite(x: object) -> float | None:
    """A plain finite number, else None (JSON has no NaN; booleans are not scores)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def _int(x: object) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def _joined(values: Iterable[object]) -> str | None:
    """Distinct values in first-seen order, comma-separated (a sweep's strategies)."""
    seen = dict.fromkeys(str(v) for v in values if v not in (None, ""))
    return ", ".join(seen) if seen else None


_CELL_ID = re.compile(r"(?P<sweep>.+)\.\d{3}")


def _is_sweep(run: RunRecord | None) -> bool:
    return run is not None and run.config.get("kind") == "sweep"


def _run_row(run: RunRecord, kind: Literal["run", "sweep", "cell"]) -> RunRow:
    cfg, s = run.config, run.summary
    if kind == "sweep":
        cells = [c for c in cfg.get("cells", []) if isinstance(c, dict)]
        strategy = _joined(c.get("strategy") for c in cells)
        suite = _joined(c.get("suite") for c in cells)
        model = _joined(c.get("model") for c in cells)
        graded, correct = _int(s.get("graded")), _int(s.get("correct"))
        accuracy = correct / graded if graded and correct is not None else None
    else:
        strategy, suite = cfg.get("strategy"), cfg.get("suite")
        model = cfg.get("model") or s.get("model")
        accuracy = _finite(s.get("accuracy"))
    pt, ct = _int(s.get("prompt_tokens")), _int(s.get("completion_tokens"))
    return RunRow(
        id=run.id, created_at=run.created_at, status=run.status,
        strategy=None if strategy is None else str(strategy),
        suite=None if suite is None else str(suite),
        model=None if model is None else str(model),
        tasks=_int(s.get("tasks")), accuracy=accuracy,
        tokens=None if pt is None and ct is None else (pt or 0) + (ct or 0),
        cost=_finite(s.get("cost")), kind=kind)


def _task_row(a: AttemptRecord) -> TaskRow:
    return TaskRow(task_id=a.task_id, status=a.status, answer=a.answer, correct=a.correct,
                   tokens=a.prompt_tokens + a.completion_tokens, calls=a.calls,
                   nodes=_int(a.stats.get("nodes")), latency_s=a.latency_s, cost=a.cost)


def _label(judgements: Sequence[JudgementRecord]) -> Literal["correct", "incorrect"] | None:
    """The grader's verdict on a node (the last one, should it have been graded twice)."""
    for j in reversed(judgements):
        if j.role == "grader" and j.verdict in ("correct", "incorrect"):
            return "correct" if j.verdict == "correct" else "incorrect"
    return None


def _whole(node: NodeRecord) -> str:
    """What a node stands for: its whole candidate when a search kept one."""
    whole = node.meta.get("candidate")
    return whole if isinstance(whole, str) and whole else node.text


_TOKEN = re.compile(r"\s+|[^\s]+")


def word_diff(old: str, new: str) -> list[DiffOp]:
    """A word-level diff: the ``equal`` and ``delete`` texts spell ``old``, the ``equal``
    and ``insert`` texts spell ``new`` (whitespace is kept, as its own tokens)."""
    a, b = _TOKEN.findall(old), _TOKEN.findall(new)
    ops: list[DiffOp] = []

    def emit(op: Literal["equal", "insert", "delete"], words: Sequence[str]) -> None:
        text = "".join(words)
        if not text:
            return
        if ops and ops[-1].op == op:
            ops[-1] = DiffOp(op=op, text=ops[-1].text + text)
        else:
            ops.append(DiffOp(op=op, text=text))

    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            emit("equal", a[i1:i2])
        else:
            emit("delete", a[i1:i2])
            emit("insert", b[j1:j2])
    return ops


def _is_refinement(node: NodeRecord, parent: NodeRecord | None) -> bool:
    return (parent is not None and parent.parent_id is not None
            and (node.operator == "refine" or node.role == "refiner"))


def _response_text(call: ModelCallRecord, node: NodeRecord) -> str | None:
    """The call's completion; of an ``n``-sample call, the sample that made the node when
    it did, else every sample, separated by a rule."""
    completions = (call.response or {}).get("completions")
    if not isinstance(completions, list) or not completions:
        return None
    texts = [(c.get("sample_index"), str(c.get("text", ""))) for c in completions
             if isinstance(c, dict)]
    if len(texts) == 1:
        return texts[0][1]
    if call.id == node.call_id and node.sample_index is not None:
        for index, text in texts:
            if index == node.sample_index:
                return text
    return "\n\n---\n\n".join(text for _, text in texts)


def _call_out(call: ModelCallRecord, node: NodeRecord) -> CallOut:
    messages = call.request.get("messages")
    return CallOut(
        id=call.id, role=call.role, model=call.model,
        messages=[m for m in messages if isinstance(m, dict)] if isinstance(messages, list)
        else [],
        response_text=_response_text(call, node), prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens, latency_s=call.latency_s, cost=call.cost,
        cached=call.cached, error=call.error)


# ------------------------------------------------------------------ builders


async def build_runs(store: Store, limit: int = 50) -> RunsOut:
    """The newest runs; a run whose id is ``SWEEP.NNN`` of a stored sweep is its cell."""
    runs = await store.list_runs(limit=limit)
    by_id = {r.id: r for r in runs}
    sweeps: dict[str, bool] = {}
    rows: list[RunRow] = []
    for r in runs:
        kind: Literal["run", "sweep", "cell"] = "sweep" if _is_sweep(r) else "run"
        m = _CELL_ID.fullmatch(r.id)
        if kind == "run" and m is not None:
            parent = m["sweep"]
            if parent not in sweeps:
                sweeps[parent] = _is_sweep(by_id.get(parent) or await store.get_run(parent))
            kind = "cell" if sweeps[parent] else "run"
        rows.append(_run_row(r, kind))
    return RunsOut(runs=rows)


async def build_run(store: Store, run_id: str) -> RunOut | None:
    run = await store.get_run(run_id)
    if run is None:
        return None
    attempts = await store.get_attempts(run_id)
    return RunOut(run=RunInfo(id=run.id, status=run.status, created_at=run.created_at,
                              config=run.config, summary=run.summary),
                  tasks=[_task_row(a) for a in attempts])


async def build_tree(store: Store, run_id: str, task_id: str) -> TreeOut | None:
    attempt = await store.get_attempt(run_id, task_id)
    if attempt is None:
        return None
    nodes, judgements = await store.load_tree(run_id, task_id)
    by_node: dict[str, list[JudgementRecord]] = {}
    for j in judgements:
        by_node.setdefault(j.node_id, []).append(j)
    out: list[TreeNode] = []
    for n in nodes:
        js = by_node.get(n.id, [])
        out.append(TreeNode(
            id=n.id, parent_id=n.parent_id, role=n.role, operator=n.operator, depth=n.depth,
            text=n.text[:TEXT_PREVIEW], answer=n.answer, value=_finite(n.value),
            visits=n.visits, reward=_finite(n.meta.get("reward")),
            prior=_finite(n.meta.get("prior")), chosen=bool(n.meta.get("chosen")),
            label=_label(js),
            judgements=[JudgementBrief(role=j.role, score=_finite(j.score),
                                       scale_min=_finite(j.scale_min),
                                       scale_max=_finite(j.scale_max), verdict=j.verdict)
                        for j in js]))
    root_id = attempt.root_id or next((n.id for n in nodes if n.parent_id is None), None)
    return TreeOut(task_id=task_id, root_id=root_id, stats=attempt.stats, attempt=attempt,
                   nodes=out)


async def build_node_detail(store: Store, run_id: str, task_id: str,
                            node_id: str) -> NodeDetail | None:
    view = await store.load_node(run_id, task_id, node_id)
    if view is None:
        return None
    node, parent, own, calls = view.node, view.parent, view.judgements, view.calls
    # The call that made the node, the calls made for it, and those its judgements cite
    # (a call shared by identical requests is recorded once, under the first node).
    wanted: dict[str, None] = {}
    if node.call_id is not None:
        wanted[node.call_id] = None
    for c in calls.values():  # in creation order
        if c.node_id == node_id:
            wanted[c.id] = None
    for j in own:
        ids = j.meta.get("call_ids")
        if isinstance(ids, list):
            wanted.update(dict.fromkeys(str(i) for i in ids))
    diff = word_diff(_whole(parent), _whole(node)) if (
        parent is not None and _is_refinement(node, parent)) else []
    return NodeDetail(
        node=node,
        parent=None if parent is None else ParentBrief(id=parent.id, text=_whole(parent)),
        diff=diff, judgements=own,
        calls=[_call_out(calls[i], node) for i in wanted if i in calls])


# ------------------------------------------------------------------ routes


@router.get("/runs", name="api_runs", response_model=RunsOut, summary="Runs, newest first, with metrics")
async def list_runs(store: StoreDep,
                    limit: Annotated[int, Query(ge=1, le=10_000)] = 50) -> RunsOut:
    return await build_runs(store, limit)


@router.get("/runs/{run_id}", name="api_run", response_model=RunOut, responses=ERRORS,
            summary="A run: config, summary and its tasks")
async def get_run(run_id: str, store: StoreDep) -> RunOut | JSONResponse:
    out = await build_run(store, run_id)
    return _not_found("run", run_id) if out is None else out


async def _missing(store: Store, run_id: str, task_id: str) -> JSONResponse:
    if await store.get_run(run_id) is None:
        return _not_found("run", run_id)
    return _not_found("task", task_id, f" in run {run_id}")


@router.get("/runs/{run_id}/tasks/{task_id}/tree", name="api_tree", response_model=TreeOut, responses=ERRORS,
            summary="A task's tree: one light row per node")
async def get_tree(run_id: str, task_id: str, store: StoreDep) -> TreeOut | JSONResponse:
    out = await build_tree(store, run_id, task_id)
    return await _missing(store, run_id, task_id) if out is None else out


@router.get("/runs/{run_id}/tasks/{task_id}/nodes/{node_id}", name="api_node",
            response_model=NodeDetail,
            responses=ERRORS, summary="One node in full")
async def get_node(run_id: str, task_id: str, node_id: str,
                   store: StoreDep) -> NodeDetail | JSONResponse:
    if await store.get_attempt(run_id, task_id) is None:
        return await _missing(store, run_id, task_id)
    out = await build_node_detail(store, run_id, task_id, node_id)
    return _not_found("node", node_id, f" in task {task_id} of run {run_id}") if out is None \
        else out


# ------------------------------------------------------------------ export

_EXPORT_PARAMS = frozenset(ExportOptions.model_fields)


async def _export_rows(store: Store, run_id: str, kind: str, opts: ExportOptions,
                       split: str | None) -> AsyncIterator[bytes]:
    """The export's rows as JSON lines, as ``deliberate export`` writes them, a task at a
    time (the filters apply after the extractor, as in the export driver)."""
    k = load_kind(kind)
    raw = opts.model_copy(update={"margin": 0.0, "min_chars": 0, "max_chars": None,
                                  "dedup": False})
    filters = Filters(opts)
    after: str | None = None
    while True:
        page = await store.page_attempts(run_id, after=after, limit=PAGE)
        for attempt in page:
            if split is not None and split_of(attempt.task_id, opts) != split:
                continue
            nodes, judgements, calls = await store.load_task(run_id, attempt.task_id)
            if not any(n.parent_id is None for n in nodes):
                continue
            tree = ExportTree(run_id, attempt, nodes, judgements, calls)
            lines = [json.dumps({**ex.data, "provenance": ex.provenance}, ensure_ascii=False,
                                default=str) + "\n"
                     for ex in k.extract(tree, raw) if filters.reason(ex) is None]
            if lines:
                yield "".join(lines).encode()
        if len(page) < PAGE:
            return
        after = page[-1].task_id


async def _parquet_file(store: Store, run_id: str, kind: str, opts: ExportOptions,
                        split: str) -> AsyncIterator[bytes]:
    """Write the export with the export driver into a scratch directory, then send the
    split's Parquet file (Parquet is written whole, so this one is not row-streamed)."""
    with tempfile.TemporaryDirectory(prefix="deliberate-export-") as tmp:
        res = await aexport_run(store, run_id, kind, tmp, fmt="parquet", options=opts,
                                force=True)
        path = res.files.get(split)
        if path is None:
            return
        data = await asyncio.to_thread(Path(path).read_bytes)
    yield data


@router.get("/runs/{run_id}/export/{kind}", name="api_export", response_model=None, responses={
    **ERRORS, 400: {"model": ErrorBody, "description": "bad export options"},
    200: {"content": {"application/x-ndjson": {}, "application/vnd.apache.parquet": {}},
          "description": "the rows, as a download"}},
    summary="Export a run's trees as training data (streamed)")
async def export(run_id: str, kind: str, request: Request, store: StoreDep,
                 format: Annotated[Literal["jsonl", "parquet"], Query()] = "jsonl",
                 split: Annotated[Literal["train", "test"] | None, Query()] = None,
                 ) -> StreamingResponse | JSONResponse:
    """Any :class:`~deliberate.export.ExportOptions` field may be given as a query
    parameter (``margin``, ``min_chars``, ``test_share``, …). ``split`` keeps one split
    (JSON Lines: all rows when absent; Parquet: ``train`` when absent)."""
    if await store.get_run(run_id) is None:
        return _not_found("run", run_id)
    try:
        load_kind(kind)
    except UnknownNameError as exc:
        return error_response(404, str(exc), "export_kind_not_found")
    extra = {k: v for k, v in request.query_params.items()
             if k not in ("format", "split")}
    unknown = sorted(set(extra) - _EXPORT_PARAMS)
    if unknown:
        return error_response(400, f"unknown export option {unknown[0]!r}; options: "
                              f"{', '.join(sorted(_EXPORT_PARAMS))}", "invalid_export_option")
    try:
        opts = ExportOptions.model_validate(extra)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return error_response(400, f"export option {where}: {first['msg']}",
                              "invalid_export_option")
    if format == "parquet":
        try:
            from deliberate.export.writers import require_format

            require_format("parquet")
        except UsageError as exc:
            return error_response(400, str(exc), "parquet_unavailable")
        name = f"{run_id}-{kind}-{split or 'train'}.parquet"
        body = _parquet_file(store, run_id, kind, opts, split or "train")
        media = "application/vnd.apache.parquet"
    else:
        name = f"{run_id}-{kind}{'-' + split if split else ''}.jsonl"
        body = _export_rows(store, run_id, kind, opts, split)
        media = "application/x-ndjson"
    return StreamingResponse(body, media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})
