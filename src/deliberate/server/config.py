"""How ``deliberate serve`` is set up: where it listens, who may call it, which
upstream models it fronts, which strategies clients get by which model name, and
the limits every request is held to.

One :class:`ServeConfig` comes from a YAML file (``--config serve.yaml``), then
flags, then the environment (``DELIBERATE_SERVE_API_KEYS``); it is frozen, and
everything a request changes lives in that request's run.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deliberate.config import BudgetConfig, FrozenConfig, RunConfig, load_yaml
from deliberate.errors import ConfigError
from deliberate.tasks.task import TaskKind

__all__ = [
    "API_KEYS_ENV",
    "RouteConfig",
    "ServeConfig",
    "ServeLimits",
    "is_loopback",
    "over_cap",
    "upstream_name",
]

API_KEYS_ENV = "DELIBERATE_SERVE_API_KEYS"
"""Comma-separated client API keys, added to those of the config (never upstream keys)."""

# Fields of a run the server sets per request; a config's ``run`` may not set them.
SERVER_SET = frozenset({"suite", "limit", "strategy", "strategy_params", "model", "store",
                        "seed", "task_budget", "name"})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServeLimits(_Frozen):
    """What one request may ask for; beyond these it gets a 4xx, never a silent cut."""

    max_body_bytes: int = Field(1_048_576, ge=1024, description="request body size (413 beyond)")
    max_messages: int = Field(256, ge=1, description="messages in one request")
    max_n: int = Field(8, ge=1, le=128, description="choices per request (pass-through only)")
    max_tokens: int = Field(8192, ge=1, description="a client's max_tokens per completion")
    max_concurrent_requests: int = Field(
        256, ge=1, description="chat requests in flight at once; beyond: 429 with Retry-After")
    max_budget: BudgetConfig = Field(
        BudgetConfig(max_tokens=1_000_000, max_calls=1000, max_wall_s=600),
        description="caps of a request's budget; a request asking for more gets 400")


class RouteConfig(_Frozen):
    """A model name clients may ask for, standing for a strategy on an upstream."""

    strategy: str | None = Field(None, description="strategy name; null: pass-through")
    params: dict[str, Any] = Field(default_factory=dict, description="strategy parameters")
    upstream: str | None = Field(None, description="upstream name; null: the default one")
    budget: BudgetConfig | None = Field(None, description="this route's default budget")
    kind: TaskKind | None = Field(None, description="task kind; null: the server's")
    description: str = ""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def upstream_name(model: str) -> str:
    """The name an upstream given only as a model string is known by.

    ``sim:arithmetic`` → ``sim``; ``openai:gpt-4o-mini@http://…`` → ``gpt-4o-mini``.
    """
    from deliberate.models.registry import parse_model_spec

    spec = parse_model_spec(model)
    if spec.scheme == "sim" or not spec.name:
        return spec.scheme
    return spec.name


class ServeConfig(FrozenConfig):
    """Everything ``deliberate serve`` needs; see docs/server.md."""

    config_source: ClassVar[str] = "serve config"

    host: str = Field("127.0.0.1", description="interface to bind")
    port: int = Field(8000, ge=0, le=65535, description="port; 0 picks a free one")
    api_keys: tuple[str, ...] = Field(
        (), repr=False, description="bearer keys clients must send; none: loopback only")
    upstreams: dict[str, str] = Field(
        default_factory=dict,
        description="upstream name → model string (docs/models.md); none: the default model")
    default_upstream: str | None = Field(
        None, description="upstream of a model name that names none; null: the first")
    routes: dict[str, RouteConfig] = Field(
        default_factory=dict, description="model names standing for a configured strategy")
    strategy_defaults: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="parameters per strategy, under the request's own")
    budget: BudgetConfig = Field(
        BudgetConfig(max_tokens=200_000, max_calls=200, max_wall_s=300),
        description="a request's budget where neither it nor its route sets one")
    task_kind: TaskKind = Field(
        "text", description="kind of a request's task (its template, how answers are parsed "
        "and voted on) unless the request or route says otherwise")
    limits: ServeLimits = ServeLimits()
    run: dict[str, Any] = Field(
        default_factory=dict,
        description="RunConfig fields every request's run starts from (judge, critic, retry, "
        "prices, max_inflight_calls, cache, …)")
    store: str | None = Field(None, description="database URL or path; null: the default")
    upstream_concurrency: int = Field(
        256, ge=1, description="calls in flight to each upstream, over all requests")
    progress_events: bool = Field(
        True, description="stream the documented progress events (chunks with no choices)")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_not_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(len(k) < 8 or k != k.strip() for k in value):
            raise ValueError("API keys must be at least 8 characters, without spaces around")
        return value

    @field_validator("run")
    @classmethod
    def _run_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(SERVER_SET & set(value))
        if taken:
            raise ValueError(f"run may not set {', '.join(taken)}: the server sets them "
                             "per request")
        RunConfig.model_validate(value)
        return value

    @model_validator(mode="after")
    def _names_known(self) -> ServeConfig:
        ups = self.effective_upstreams()
        if self.default_upstream is not None and self.default_upstream not in ups:
            raise ValueError(f"default_upstream {self.default_upstream!r} is not an upstream; "
                             f"upstreams: {', '.join(ups)}")
        for name, route in self.routes.items():
            if route.upstream is not None and route.upstream not in ups:
                raise ValueError(f"route {name!r}: unknown upstream {route.upstream!r}; "
                                 f"upstreams: {', '.join(ups)}")
        budgets = [("budget", self.budget)] + [
            (f"routes.{name}.budget", r.budget) for name, r in self.routes.items() if r.budget]
        for where, budget in budgets:
            over = over_cap(budget, self.limits.max_budget)
            if over:
                raise ValueError(f"{where}.{over} is above limits.max_budget.{over}")
        return self

    # ------------------------------------------------------------------ derived

    def effective_upstreams(self) -> dict[str, str]:
        """The configured upstreams, or the default model under its name."""
        if self.upstreams:
            return dict(self.upstreams)
        from deliberate.models.registry import default_model_string

        model = default_model_string()
        if model == "sim":
            model = "sim:arithmetic"  # the sim needs tasks whose answers it knows
        return {upstream_name(model): model}

    def default_upstream_name(self) -> str:
        return self.default_upstream or next(iter(self.effective_upstreams()))

    def check_exposure(self) -> None:
        """Refuse to listen beyond loopback without client keys."""
        if not self.api_keys and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to listen on {self.host} without API keys: anyone who can reach "
                f"it could spend the upstream's tokens and read every run. Give --api-key "
                f"(or {API_KEYS_ENV}), or bind 127.0.0.1"
            )

    def base_run(self) -> RunConfig:
        """The run every request starts from (the response cache off unless asked for).

        A role whose ``model`` is an upstream's name gets that upstream's model
        string, so a small upstream can generate while a large one judges, both
        through the server's shared stacks.
        """
        ups = self.effective_upstreams()
        data: dict[str, Any] = {"cache": False, **self.run}
        for role in ("generator", "judge", "critic", "refiner"):
            if isinstance(data.get(role), dict) and data[role].get("model") in ups:
                data[role] = {**data[role], "model": ups[data[role]["model"]]}
        if isinstance(data.get("roles"), dict):
            data["roles"] = {
                name: ({**rc, "model": ups[rc["model"]]}
                       if isinstance(rc, dict) and rc.get("model") in ups else rc)
                for name, rc in data["roles"].items()
            }
        return RunConfig.model_validate(data)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path | None = None, *, overrides: dict[str, Any] | None = None,
             env: bool = True) -> ServeConfig:
        """The file's settings (if any), then ``overrides`` (flags), then the env's keys."""
        data: dict[str, Any] = dict(load_yaml(path)) if path is not None else {}
        for key, value in (overrides or {}).items():
            if value is None:
                continue
            if key == "upstreams":
                data["upstreams"] = {**data.get("upstreams", {}), **value}
            elif key == "api_keys":
                data["api_keys"] = (*_as_keys(data.get("api_keys")), *_as_keys(value))
            else:
                data[key] = value
        if env:
            extra = os.environ.get(API_KEYS_ENV, "")
            if extra.strip():
                data["api_keys"] = (*_as_keys(data.get("api_keys")), *_as_keys(extra))
        return cls.from_mapping(data, source=str(path) if path is not None else "serve options")


def over_cap(budget: BudgetConfig, cap: BudgetConfig) -> str | None:
    """The first field of ``budget`` set above ``cap`` (an unset field is filled from
    the cap when a request's budget is made, so it is never above it)."""
    for name in ("max_tokens", "max_calls", "max_cost", "max_wall_s"):
        mine, limit = getattr(budget, name), getattr(cap, name)
        if limit is not None and mine is not None and mine > limit:
            return str(name)
    return None


def _as_keys(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(k.strip() for k in value.split(",") if k.strip())
    if isinstance(value, list | tuple):
        return tuple(str(k) for k in value)
    raise ConfigError("api_keys must be a list of strings or a comma-separated string")
