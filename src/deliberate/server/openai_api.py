"""``POST /v1/chat/completions`` and ``GET /v1/models``: a strategy per request.

A request names a strategy and an upstream model through its model name (grammar
below) or the ``deliberate`` extension object of its body, and becomes one run in
the store: one task (the conversation), grown into a tree by the strategy, every
model call journalled and counted. The response is an ordinary chat completion
whose ``usage`` sums every call of the run, plus a ``deliberate`` object with the
run id and links to the run and its tree in the web view. docs/server.md is the
user's guide; this docstring is the contract.

**Model names**::

    ROUTE                               a name from the config's routes
    UPSTREAM                            pass-through: the messages go to the upstream as
                                        they are, and its answer comes back
    STRATEGY[:K=V[,K=V…]][/UPSTREAM]    a strategy with parameters on an upstream
                                        (the default upstream when none is named)

``UPSTREAM`` is a name from the config's upstreams (never a model string from the
client: that would let a client make the server connect anywhere or read files).
Parameter values are YAML scalars (``n=8``, ``weighted=true``, ``scorer=judge``).

**The extension object** (``"deliberate": {...}`` in the body; every field optional)
overrides the model name: ``strategy``, ``params`` (merged over the name's),
``upstream``, ``budget`` (``max_tokens``, ``max_calls``, ``max_cost``,
``max_wall_s``), ``reference`` (a reference answer: the run is then graded),
``kind`` (the task kind: ``text``, ``math``, ``code``, ``choice``; it picks the
generator's template and how answers are parsed and voted on), ``progress``
(stream progress events). Parameters stack: the config's ``strategy_defaults``,
then the route's, then the name's, then the body's.

**The task**: system (and developer) messages become the task's system prompt; a
single user message is the task prompt; a longer conversation is written out as a
transcript ending with the user's last message, which the strategy answers.
Pass-through sends the messages themselves. The client's ``temperature`` and
``top_p`` set the generator's; ``max_tokens`` (or ``max_completion_tokens``) caps
every answer the generator and refiner write; ``seed`` is the run's seed (a fresh
one is drawn without it); ``n`` > 1 and ``response_format`` are for pass-through.

**Streaming** (``stream: true``): the first chunk carries the assistant role and a
``deliberate`` object ``{"event": "run", "run_id", "url", "tree_url", …}``. Where
the strategy's last step is a generation (pass-through; any strategy that tags its
final call ``final``), the answer streams token by token as the upstream writes it.
Where the last step is a choice among finished candidates (best-of-N,
self-consistency, refine with its keep-best guard, the searches), the answer is
only known once the choice is made: progress events come first, then the chosen
answer in one content chunk. Progress events are chunks with ``choices: []`` and a
``deliberate`` object: ``{"event": "call", "role", "node", "n", "prompt_tokens",
"completion_tokens", "latency_s", "cached"}`` after every model call (``error``
instead of the counts when one failed) and ``{"event": "answer", "node", "note"}``
when the strategy has chosen; the last chunk before ``[DONE]`` has ``choices: []``,
the run's ``usage`` and ``{"event": "done", …}`` (the same object the non-streamed
response carries). An error after the stream began is sent as
``data: {"error": {...}}``, which OpenAI clients raise.

**Disconnects**: a client that goes away cancels its run: calls in flight are
cancelled, no further call is made, and the run is marked ``interrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import Field, ValidationError

from deliberate.config import BudgetConfig, RunConfig, describe_validation_error
from deliberate.engine.context import TaskContext
from deliberate.engine.observe import FINAL_TAG
from deliberate.engine.runner import RunResult, arun, new_run_id
from deliberate.errors import (
    BudgetExceeded,
    DeliberateError,
    ModelAuthError,
    ModelConnectionError,
    ModelError,
    ModelTimeoutError,
    StoreError,
    UsageError,
)
from deliberate.models.base import ChatModel, messages_from
from deliberate.server.config import RouteConfig, ServeConfig, over_cap
from deliberate.server.streaming import Event, RequestObserver, chunk, delta_choice, now, sse
from deliberate.server.wire import (
    ERRORS,
    UNSUPPORTED,
    ApiError,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    DeliberateOptions,
    ModelInfo,
    ModelList,
    ReplyMessage,
    RunInfo,
    UsageOut,
)
from deliberate.store import Store
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.tasks.task import Suite, Task, TaskKind
from deliberate.tree import AttemptRecord, NodeRecord
from deliberate.verifiers.base import parse_answer

__all__ = [
    "TASK_ID",
    "ApiError",
    "ChatCompletionRequest",
    "Passthrough",
    "Plan",
    "ServerState",
    "parse_model_name",
    "router",
]

log = logging.getLogger(__name__)

TASK_ID = "chat"
"""The id of a request's one task in its run."""

router = APIRouter(tags=["openai"])


# ------------------------------------------------------------------ errors


def upstream_error(exc: BaseException) -> ApiError:
    """A failure of the run as the client should see it (502/504 for the upstream's)."""
    if isinstance(exc, ModelTimeoutError):
        return ApiError(504, f"the upstream model did not answer in time: {exc}",
                        type="upstream_error", code="upstream_timeout")
    if isinstance(exc, ModelAuthError):
        return ApiError(502, f"the upstream model refused the server's credentials: {exc}",
                        type="upstream_error", code="upstream_auth")
    if isinstance(exc, ModelConnectionError):
        return ApiError(502, f"the upstream model cannot be reached: {exc}",
                        type="upstream_error", code="upstream_unreachable")
    if isinstance(exc, ModelError):
        return ApiError(502, f"the upstream model failed: {exc}", type="upstream_error",
                        code="upstream_error")
    if isinstance(exc, UsageError):
        return ApiError(400, str(exc))
    if isinstance(exc, StoreError):
        return ApiError(500, f"the server cannot write the run: {exc}", type="server_error",
                        code="store_error")
    return ApiError(500, "internal error", type="server_error", code="internal_error")


# ------------------------------------------------------------------ pass-through


class PassthroughConfig(StrategyConfig):
    n: int = Field(1, ge=1, le=128, description="choices")
    stop: tuple[str, ...] = Field((), description="stop sequences")
    response_format: dict[str, Any] | None = None


class Passthrough(Strategy):
    """The client's messages to the upstream as they are; its answer is the result.

    Its one step is a generation, tagged ``final``, so it streams as it is written.
    It lives with the server (not in ``deliberate.strategies``): it needs the
    request's messages, which only a server request carries.
    """

    name: ClassVar[str] = "passthrough"
    Config: ClassVar[type[StrategyConfig]] = PassthroughConfig

    async def run(self, ctx: TaskContext) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, PassthroughConfig)
        gen, root = ctx.generator, ctx.tree.root
        messages = messages_from(ctx.task.metadata.get("messages")
                                 or [{"role": "user", "content": ctx.task.prompt}])
        base = gen.request(messages, n=cfg.n,
                           tags={"role": "generator", "node": root.id, FINAL_TAG: "1"},
                           response_format=cfg.response_format)
        request = replace(base, stop=tuple(cfg.stop))
        try:
            resp = await gen.model.complete(request)
        except BudgetExceeded:
            return StrategyResult(None, "no answer: budget exhausted before generation")
        call_id = resp.call_ids[0] if resp.call_ids else None
        nodes = [
            ctx.tree.add(root, role="generator", operator="generate", key=c.sample_index,
                         text=c.text, answer=parse_answer(ctx.task, c.text), call_id=call_id,
                         sample_index=c.sample_index,
                         meta={"chosen": k == 0, "finish_reason": c.finish_reason})
            for k, c in enumerate(sorted(resp.completions, key=lambda c: c.sample_index))
        ]
        if not nodes:
            return StrategyResult(None, "the upstream returned no choice")
        return StrategyResult(nodes[0], "")


# ------------------------------------------------------------------ server state


@dataclass(slots=True)
class ServerState:
    """What every request shares: config, store, one model stack per upstream.

    ``models`` maps each upstream's model string to its shared stack (what the
    engine's ``models=`` override takes); a request's run wraps it in its own
    retry, budget and journal.
    """

    config: ServeConfig
    store: Store
    models: dict[str, ChatModel]
    upstreams: dict[str, str]
    strategies: dict[str, type[Strategy]]
    base_run: RunConfig
    in_flight: int = 0
    runs: set[asyncio.Task[RunResult]] = field(default_factory=set)


def get_state(request: Request) -> ServerState:
    state = getattr(request.app.state, "deliberate", None)
    if not isinstance(state, ServerState):
        raise RuntimeError("the app's lifespan did not set up the server state")
    return state


# ------------------------------------------------------------------ resolving


@dataclass(frozen=True, slots=True)
class Plan:
    """What a request asks for, resolved against the config."""

    strategy: str  # "passthrough" for none
    params: dict[str, Any]
    upstream: str
    budget: BudgetConfig
    kind: TaskKind
    route: str | None = None


def _params(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ApiError(400, f"strategy parameter {item!r} must look like key=value",
                           param="model", code="invalid_model")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ApiError(400, f"strategy parameter {item!r}: cannot read value {raw!r}",
                           param="model", code="invalid_model") from None
    return out


def parse_model_name(name: str, config: ServeConfig, strategies: Mapping[str, object]
                     ) -> tuple[str | None, dict[str, Any], str | None, str | None]:
    """(strategy or None, parameters, upstream or None, route or None) of a model name.

    Routes come first, then upstream names, then ``STRATEGY[:K=V,…][/UPSTREAM]``.
    """
    if name in config.routes:
        r = config.routes[name]
        return r.strategy, dict(r.params), r.upstream, name
    if name in config.effective_upstreams():
        return None, {}, name, None
    head, sep, tail = name.partition("/")
    strategy, _, query = head.partition(":")
    if strategy in strategies or strategy == Passthrough.name:
        return strategy, _params(query), (tail if sep else None), None
    raise ApiError(404, f"unknown model {name!r}: name a route, an upstream "
                   f"({', '.join(config.effective_upstreams())}) or STRATEGY[:K=V,…]/UPSTREAM; "
                   "GET /v1/models lists them", code="model_not_found", param="model")


def effective_budget(config: ServeConfig, route: RouteConfig | None,
                     asked: BudgetConfig | None) -> BudgetConfig:
    """The request's budget: its own fields, else its route's, else the server's; then
    the caps fill what is still unlimited, and a field above its cap is refused."""
    cap = config.limits.max_budget
    layers = [b for b in (asked, route.budget if route else None, config.budget) if b]
    values: dict[str, Any] = {}
    for name in ("max_tokens", "max_calls", "max_cost", "max_wall_s"):
        chosen = next((getattr(b, name) for b in layers if getattr(b, name) is not None), None)
        values[name] = chosen if chosen is not None else getattr(cap, name)
    budget = BudgetConfig(**values)
    over = over_cap(budget, cap)
    if over:
        raise ApiError(400, f"budget {over} {getattr(budget, over)} is above the server's cap "
                       f"of {getattr(cap, over)}", param=f"deliberate.budget.{over}",
                       code="budget_too_large")
    return budget


def resolve(body: ChatCompletionRequest, state: ServerState) -> Plan:
    """The strategy, parameters, upstream, budget and task kind a request asks for."""
    config = state.config
    ext = body.deliberate or DeliberateOptions()
    strategy, params, upstream, route_name = parse_model_name(body.model, config,
                                                              state.strategies)
    route = config.routes.get(route_name) if route_name else None
    if ext.strategy is not None:
        strategy = ext.strategy
    if strategy is not None and strategy != Passthrough.name and (
            strategy not in state.strategies):
        raise ApiError(404, f"unknown strategy {strategy!r}; known: "
                       f"{', '.join(sorted(state.strategies))}", code="strategy_not_found",
                       param="deliberate.strategy")
    upstream = ext.upstream or upstream or config.default_upstream_name()
    if upstream not in state.upstreams:
        raise ApiError(404, f"unknown upstream {upstream!r}; upstreams: "
                       f"{', '.join(state.upstreams)}", code="model_not_found", param="model")
    name = strategy or Passthrough.name
    merged = {**config.strategy_defaults.get(name, {}), **params, **ext.params}
    budget = effective_budget(config, route, ext.budget)
    kind: TaskKind = ext.kind or (route.kind if route and route.kind else config.task_kind)
    return Plan(name, merged, upstream, budget, kind, route_name)


def build_run_strategy(cfg: RunConfig, state: ServerState) -> Strategy:
    """The strategy object of a request's run, from its parameters."""
    cls: type[Strategy] = (Passthrough if cfg.strategy == Passthrough.name
                           else state.strategies[cfg.strategy])
    try:
        return cls(cls.Config.model_validate(cfg.strategy_params))
    except ValidationError as exc:
        raise ApiError(400, describe_validation_error(exc, f"strategy {cfg.strategy}"),
                       param="deliberate.params", code="invalid_strategy_params") from None


def conversation(body: ChatCompletionRequest) -> tuple[str | None, list[dict[str, str]]]:
    """The system prompt and the other messages as plain role/content dicts."""
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for m in body.messages:
        text = m.text()
        if m.role in ("system", "developer"):
            system.append(text)
        else:
            turns.append({"role": m.role, "content": text})
    return ("\n\n".join(system) if system else None), turns


def build_task(body: ChatCompletionRequest, plan: Plan) -> Task:
    """The request's conversation as the one task of its run."""
    system, turns = conversation(body)
    ext = body.deliberate or DeliberateOptions()
    passthrough = plan.strategy == Passthrough.name
    if not passthrough and (not turns or turns[-1]["role"] != "user"):
        raise ApiError(400, "a strategy answers the user: the last message must be the "
                       "user's", param="messages", code="invalid_messages")
    if not turns:
        prompt = system or ""
    elif len(turns) == 1:
        prompt = turns[0]["content"]
    else:
        said = {"user": "User", "assistant": "Assistant"}
        earlier = "\n\n".join(f"{said[t['role']]}: {t['content']}" for t in turns[:-1])
        prompt = (f"Conversation so far:\n\n{earlier}\n\nReply to the user's last "
                  f"message:\n\n{turns[-1]['content']}")
    messages = [m.model_dump(include={"role", "content"}) for m in body.messages]
    for m, src in zip(messages, body.messages, strict=True):
        m["content"] = src.text()
        if m["role"] == "developer":
            m["role"] = "system"
    return Task(id=TASK_ID, prompt=prompt, kind=plan.kind, answer=ext.reference,
                system=system, metadata={"messages": messages, "source": "serve"})


def check_limits(body: ChatCompletionRequest, plan: Plan, config: ServeConfig) -> None:
    lim = config.limits
    unsupported = [k for k in UNSUPPORTED if (body.model_extra or {}).get(k) is not None]
    if unsupported:
        raise ApiError(400, f"{unsupported[0]} is not supported by deliberate serve",
                       param=unsupported[0], code="unsupported_parameter")
    if body.logprobs:
        raise ApiError(400, "logprobs are not supported", param="logprobs",
                       code="unsupported_parameter")
    if len(body.messages) > lim.max_messages:
        raise ApiError(400, f"{len(body.messages)} messages; at most {lim.max_messages}",
                       param="messages", code="too_many_messages")
    n = body.n or 1
    passthrough = plan.strategy == Passthrough.name
    if n > 1 and not passthrough:
        raise ApiError(400, "a strategy returns one answer: n must be 1 (or use the "
                       "strategy's own parameters, e.g. best_of_n:n=8)", param="n",
                       code="unsupported_parameter")
    if n > lim.max_n:
        raise ApiError(400, f"n={n} is above the server's limit of {lim.max_n}", param="n",
                       code="invalid_value")
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None and max_tokens > lim.max_tokens:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise ApiError(400, f"{param}={max_tokens} is above the server's limit of "
                       f"{lim.max_tokens}", param=param, code="invalid_value")
    if body.response_format is not None and not passthrough:
        raise ApiError(400, "response_format works with pass-through only: a strategy's "
                       "roles write in their own formats", param="response_format",
                       code="unsupported_parameter")
    stops = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    if len(stops) > 4:
        raise ApiError(400, "at most 4 stop sequences", param="stop", code="invalid_value")


def run_config(body: ChatCompletionRequest, plan: Plan, state: ServerState) -> RunConfig:
    """The run of one request: the server's base run with the request's choices."""
    data = state.base_run.model_dump()
    gen = dict(data["generator"])
    if body.temperature is not None:
        gen["temperature"] = body.temperature
    if body.top_p is not None:
        gen["top_p"] = body.top_p
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None:
        gen["max_tokens"] = max_tokens
        data["refiner"] = {**data["refiner"], "max_tokens": max_tokens}
    params = dict(plan.params)
    if plan.strategy == Passthrough.name:
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        params = {"n": body.n or 1, "stop": stops, "response_format": body.response_format}
    data.update(
        suite="serve", strategy=plan.strategy, strategy_params=params,
        model=state.upstreams[plan.upstream], generator=gen,
        seed=body.seed if body.seed is not None else secrets.randbits(31),
        task_budget=plan.budget.model_dump(), name=f"serve {body.model}",
        grade_candidates=(body.deliberate is not None
                          and body.deliberate.reference is not None),
    )
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, describe_validation_error(exc, "request")) from None


# ------------------------------------------------------------------ the endpoints


def _model_info(name: str, **info: Any) -> ModelInfo:
    return ModelInfo(id=name, deliberate={k: v for k, v in info.items() if v is not None})


def list_model_infos(state: ServerState) -> list[ModelInfo]:
    cfg = state.config
    out = [_model_info(name, strategy=r.strategy or Passthrough.name,
                       upstream=r.upstream or cfg.default_upstream_name(),
                       description=r.description or None)
           for name, r in cfg.routes.items()]
    out += [_model_info(name, strategy=Passthrough.name, upstream=name)
            for name in state.upstreams]
    out += [_model_info(f"{s}/{u}", strategy=s, upstream=u)
            for s in sorted(state.strategies) for u in state.upstreams]
    return out


@router.get("/v1/models", response_model=ModelList, responses=ERRORS,
            summary="The model names clients may use")
async def list_models(request: Request) -> ModelList:
    """Routes, upstreams (pass-through) and ``STRATEGY/UPSTREAM`` for every strategy;
    strategy parameters may be added to any of the latter (``best_of_n:n=8/UPSTREAM``)."""
    return ModelList(data=list_model_infos(get_state(request)))


@router.get("/v1/models/{model:path}", response_model=ModelInfo, responses=ERRORS,
            summary="One model name, resolved")
async def get_model(model: str, request: Request) -> ModelInfo:
    state = get_state(request)
    strategy, params, upstream, route = parse_model_name(model, state.config, state.strategies)
    upstream = upstream or state.config.default_upstream_name()
    if upstream not in state.upstreams:
        raise ApiError(404, f"unknown upstream {upstream!r}", code="model_not_found",
                       param="model")
    return _model_info(model, strategy=strategy or Passthrough.name, params=params or None,
                       upstream=upstream, route=route)


STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {"description": "a chat completion; with stream=true, server-sent "
          "chat.completion.chunk events (see docs/server.md)",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    **ERRORS,
}


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse,
             responses=STREAM_DOC, summary="Answer a conversation with a strategy")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """Run the strategy the model name (or the ``deliberate`` object) asks for on the
    conversation, as one run in the store; see the module docs for the grammar."""
    state = get_state(request)
    plan = resolve(body, state)
    check_limits(body, plan, state.config)
    task = build_task(body, plan)
    cfg = run_config(body, plan, state)
    strategy = build_run_strategy(cfg, state)
    limit = state.config.limits.max_concurrent_requests
    if state.in_flight >= limit:
        raise ApiError(429, f"the server is running {limit} requests, its limit; retry "
                       "shortly", type="requests", code="rate_limit_exceeded",
                       headers={"Retry-After": "1"})
    progress = state.config.progress_events
    if body.deliberate is not None and body.deliberate.progress is not None:
        progress = body.deliberate.progress
    stream = bool(body.stream)
    observer = RequestObserver(stream=stream, progress=stream and progress)
    run_id = new_run_id() + "-" + secrets.token_hex(2)
    run = _start_run(state, cfg, task, strategy, observer, run_id)
    info = _run_info(run_id, plan)
    if stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _stream(run, observer, body.model, info, include_usage, plan),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                     "X-Deliberate-Run": run_id})
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({run, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not run.done():
        run.cancel()
        with contextlib.suppress(BaseException):
            await run
        return Response(status_code=499)  # nobody is listening any more
    result = _result(run)
    attempt = result.attempts[0]
    out = _final_info(info, attempt, observer)
    choices = _choices(observer, attempt, plan)
    resp = ChatCompletionResponse(
        id=f"chatcmpl-{run_id}", created=int(time.time()), model=body.model,
        choices=choices, usage=_usage(attempt), deliberate=out)
    return JSONResponse(resp.model_dump(), headers={"X-Deliberate-Run": run_id})


def _start_run(state: ServerState, cfg: RunConfig, task: Task, strategy: Strategy,
               observer: RequestObserver, run_id: str) -> asyncio.Task[RunResult]:
    """The run as a task of its own, holding one of the server's request slots until it
    ends (completed, failed or cancelled)."""
    state.in_flight += 1
    run = asyncio.ensure_future(arun(cfg, run_id=run_id, store=state.store,
                                     models=state.models, suite=Suite.of("serve", [task]),
                                     strategy=strategy, observer=observer))
    state.runs.add(run)

    def ended(t: asyncio.Task[RunResult]) -> None:
        state.in_flight -= 1
        state.runs.discard(t)
        observer.end()
        if not t.cancelled() and t.exception() is not None:
            exc = t.exception()
            if not isinstance(exc, DeliberateError):
                log.error("run %s failed", run_id, exc_info=exc)

    run.add_done_callback(ended)
    return run


async def _disconnected(request: Request) -> None:
    """Return once the client has gone away (the body is already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _result(run: asyncio.Task[RunResult]) -> RunResult:
    exc = run.exception()
    if exc is not None:
        raise upstream_error(exc) from exc
    return run.result()


def _run_info(run_id: str, plan: Plan) -> RunInfo:
    return RunInfo(event="run", run_id=run_id, task_id=TASK_ID, url=f"/runs/{run_id}",
                   tree_url=f"/runs/{run_id}/tasks/{TASK_ID}", strategy=plan.strategy,
                   upstream=plan.upstream)


def _final_info(info: RunInfo, attempt: AttemptRecord, observer: RequestObserver) -> RunInfo:
    """The run's outcome; raises the error the client should get when there is no answer."""
    if attempt.status == "failed":
        if observer.error is not None:
            raise upstream_error(observer.error)
        raise ApiError(502, f"the run failed: {attempt.error}", type="upstream_error",
                       code="upstream_error")
    node = observer.node
    if node is None and attempt.budget_limited:
        raise ApiError(400, f"no answer within the request's budget "
                       f"({attempt.stats.get('limited_by') or 'budget'} used up; run "
                       f"{info.run_id})", param="deliberate.budget", code="budget_exceeded")
    if node is None:
        raise ApiError(502, f"the strategy produced no answer ({observer.note or 'no note'}; "
                       f"run {info.run_id})", type="upstream_error", code="no_answer")
    return info.model_copy(update={
        "event": "done", "status": attempt.status, "calls": attempt.calls,
        "cost": attempt.cost, "budget_limited": attempt.budget_limited,
        "limited_by": attempt.stats.get("limited_by"), "note": observer.note or None,
        "node_id": node.id, "answer": attempt.answer, "correct": attempt.correct})


def _usage(attempt: AttemptRecord) -> UsageOut:
    return UsageOut(prompt_tokens=attempt.prompt_tokens,
                    completion_tokens=attempt.completion_tokens,
                    total_tokens=attempt.prompt_tokens + attempt.completion_tokens)


def _finish(node: NodeRecord) -> str:
    reason = node.meta.get("finish_reason")
    return reason if isinstance(reason, str) and reason else "stop"


def _choices(observer: RequestObserver, attempt: AttemptRecord, plan: Plan) -> list[Choice]:
    final = observer.final
    if plan.strategy == Passthrough.name and final is not None:
        return [Choice(index=i, message=ReplyMessage(content=c.text),
                       finish_reason=c.finish_reason or "stop")
                for i, c in enumerate(final.completions)]
    node = observer.node
    assert node is not None
    return [Choice(index=0, message=ReplyMessage(content=node.text), finish_reason=_finish(node))]


async def _stream(run: asyncio.Task[RunResult], observer: RequestObserver, model: str,
                  info: RunInfo, include_usage: bool, plan: Plan) -> AsyncIterator[str]:
    """The run as server-sent chunks (see the module docs); closing it cancels the run."""
    cid, created = f"chatcmpl-{info.run_id}", now()

    def out(choices: list[dict[str, Any]], **kw: Any) -> str:
        return sse(chunk(cid, model, created, choices, **kw))

    finished: set[int] = set()
    try:
        yield out([delta_choice(0, {"role": "assistant", "content": ""})],
                  deliberate=info.model_dump(exclude_none=True))
        while True:
            event: Event = await observer.queue.get()
            if event.kind == "delta":
                yield out([delta_choice(event.index, {"content": event.text})])
            elif event.kind == "call":
                yield out([], deliberate=event.info)
            elif event.kind == "answer":
                yield out([], deliberate={"event": "answer",
                                          "node": event.node.id if event.node else None,
                                          "note": event.info.get("note", "")})
                finals = _final_texts(observer, event.node, plan)
                for index, text, _ in finals:
                    if index not in observer.streamed and text:
                        yield out([delta_choice(index, {"content": text})])
                for index, _, reason in finals:
                    finished.add(index)
                    yield out([delta_choice(index, {}, reason)])
            elif event.kind == "end":
                break
        try:
            result = _result(run)
            done = _final_info(info, result.attempts[0], observer)
        except ApiError as err:
            yield sse(err.body())
            return
        usage = _usage(result.attempts[0]).model_dump()
        yield out([], usage=usage if include_usage else None,
                  deliberate=done.model_dump(exclude_none=True))
        yield sse("[DONE]")
    finally:
        if not run.done():
            run.cancel()


def _final_texts(observer: RequestObserver, node: NodeRecord | None,
                 plan: Plan) -> list[tuple[int, str, str]]:
    """(choice index, text, finish reason) of the answer once the strategy has chosen."""
    final = observer.final
    if plan.strategy == Passthrough.name and final is not None:
        return [(i, c.text, c.finish_reason or "stop") for i, c in enumerate(final.completions)]
    if node is None:
        return []
    return [(0, node.text, _finish(node))]
